"""Cost model of one DeepMedic member (numpy only): multiply-accumulates for an output brick.

The runtime uses it to choose tile sizes when a card's ``runtime.cost_model``
has ``"kind": "deepmedic"``; the widths come from the card (see
:func:`ictus.models.deepmedic.card.card_runtime_block`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def member_gmac(
    out_size: Sequence[int],
    *,
    scale_factors: Sequence[int],
    feature_maps: Sequence[int],
    fully_connected: Sequence[int],
    num_classes: int,
    input_channels: int = 1,
    kernel_vox: int = 3,
) -> float:
    """Multiply-accumulates (G) of one DeepMedic member for an output brick (sizes
    multiples of every scale factor): each pathway on its valid crop (sub-sampled,
    ``len(feature_maps)`` valid ``kernel_vox``^3 convolutions), then the 1x1x1 head
    (``fully_connected`` widths, then ``num_classes``)."""
    total = 0.0
    shrink = len(feature_maps) * (kernel_vox - 1)
    taps = float(kernel_vox**3)
    for factor in scale_factors:
        side = [o // factor + shrink for o in out_size]  # pathway input after sub-sampling
        c_in = input_channels
        for i, c_out in enumerate(feature_maps):
            n = np.prod([s - (kernel_vox - 1) * (i + 1) for s in side])
            total += taps * c_in * c_out * n
            c_in = c_out
    widths = (feature_maps[-1] * len(scale_factors), *fully_connected, num_classes)
    head = sum(a * b for a, b in zip(widths, widths[1:]))
    total += float(np.prod(out_size)) * head
    return total / 1e9
