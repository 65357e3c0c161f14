"""The model card's ``patch`` and ``runtime`` blocks of a DeepMedic, derived from its architecture.

The runtime reads these blocks from the card and knows nothing of DeepMedic;
this module says what they are for a given architecture (e.g. the spec that
:func:`ictus.models.onnx_build.parse_spec` reads off a state dict), so a card
can be written or checked against the network it describes.
"""
from __future__ import annotations

import math
from typing import Any, Protocol, Sequence


class _Block(Protocol):
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]


class _Path(Protocol):
    name: str
    scale: tuple[int, ...]
    blocks: Sequence[_Block]


class DeepMedicLike(Protocol):
    """What these functions need of an architecture (``onnx_build.DeepMedicSpec`` has it)."""

    paths: Sequence[_Path]
    fully_connected: Sequence[_Block]


def _context_vox(spec: DeepMedicLike) -> int:
    first = spec.paths[0]
    shrink = sum(b.kernel[0] - 1 for b in first.blocks)
    return shrink * first.scale[0] // 2


def card_patch_block(spec: DeepMedicLike, *, output_size_vox: int | None = None) -> dict[str, Any]:
    """The card's ``patch`` block: valid input ``offset + k * step`` gives ``k * step``
    output voxels; tiles aligned to the least common multiple of the scale factors keep
    every pathway's sub-sampling phase."""
    context = _context_vox(spec)
    step = spec.paths[0].scale[0]
    phase = math.lcm(*(p.scale[0] for p in spec.paths))
    out = phase * 2 if output_size_vox is None else int(output_size_vox)
    return {
        "input_size_vox": out + 2 * context,
        "output_size_vox": out,
        "valid_input_offset_vox": 2 * context,
        "valid_input_step_vox": step,
        "context_vox": context,
        "tile_multiple_vox": phase,
    }


def int8_conv_patterns(spec: DeepMedicLike) -> list[str]:
    """Regular expressions (``re.search`` on ONNX node names) of the convolutions worth
    quantising: the full-resolution pathway's 3x3x3 layers 2..n (most of the compute)
    and the 1x1x1 head. The first layer (one input channel) and the sub-sampled
    pathways stay fp32: quantising every Conv flipped ~20% of the labels of a lesion
    window, this selection ~0.5%. Node names follow the state-dict keys
    (``path(1, 1, 1)2.path.N...``, ``fully_connected.N...``), as
    :func:`ictus.models.onnx_build.build_model` writes them."""
    full = [p for p in spec.paths if all(s == 1 for s in p.scale)]
    patterns = []
    if full:
        scale = str(tuple(full[0].scale)).replace("(", r"\(").replace(")", r"\)")
        patterns.append(rf"^(?!.*\.path\.1\.).*{scale}")
    patterns.append(r"^fully_connected")
    return patterns


def card_runtime_block(spec: DeepMedicLike) -> dict[str, Any]:
    """The card's ``runtime`` fields the runtime computes with: the cost model
    (kind ``deepmedic`` and its widths, see :func:`ictus.models.deepmedic.cost.member_gmac`),
    the candidate tile sizes and the int8 node selection."""
    first = spec.paths[0]
    phase = math.lcm(*(p.scale[0] for p in spec.paths))
    return {
        "tile_candidates_vox": [2 * phase, 3 * phase, 4 * phase, 6 * phase],
        "cost_model": {
            "kind": "deepmedic",
            "scale_factors": sorted(p.scale[0] for p in spec.paths),
            "feature_maps": [b.out_channels for b in first.blocks],
            "fully_connected": [b.out_channels for b in spec.fully_connected[:-1]],
            "num_classes": spec.fully_connected[-1].out_channels,
            "input_channels": first.blocks[0].in_channels,
            "kernel_vox": first.blocks[0].kernel[0],
        },
        "int8": {"conv_name_patterns": int8_conv_patterns(spec)},
    }
