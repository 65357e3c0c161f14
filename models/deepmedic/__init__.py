"""DeepMedic (BLAST-CT's network): everything specific to it, in one package.

- :mod:`.network`: our torch port (extra ``train``), loaded on first use of
  :class:`DeepMedic` / :func:`deepmedic_for_state_dict`, so importing this
  package needs no torch.
- :mod:`.cost`: multiply-accumulates of one member for an output brick (the
  runtime's ``cost_model`` kind ``"deepmedic"``, parameters from the card).
- :mod:`.card`: the card's ``patch`` and ``runtime`` blocks derived from an
  architecture (context, phase, valid sizes, cost parameters, int8 node names),
  which is how the shipped BLAST-CT card's numbers are checked.

The runtime (:mod:`ictus.models.runtime`) knows none of this: it reads the
geometry and the cost parameters from the model card.
"""
from __future__ import annotations

from typing import Any

from ictus.models.deepmedic.card import card_patch_block, card_runtime_block, int8_conv_patterns
from ictus.models.deepmedic.cost import member_gmac

__all__ = [
    "DeepMedic",
    "card_patch_block",
    "card_runtime_block",
    "deepmedic_for_state_dict",
    "int8_conv_patterns",
    "member_gmac",
]

_TORCH_NAMES = {"DeepMedic", "PreActBlock", "Pathway", "DownSample", "UpSample", "deepmedic_for_state_dict",
                "SCALE_FACTORS", "FEATURE_MAPS", "FULLY_CONNECTED", "DROPOUT"}


def __getattr__(name: str) -> Any:
    """The torch port's names, imported on first use (torch only then)."""
    if name in _TORCH_NAMES:
        from ictus.models.deepmedic import network

        return getattr(network, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
