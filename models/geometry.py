"""How the runtime tiles a model's input, read from the model card (plain data, numpy only).

The card's ``patch`` block gives the geometry and its ``runtime`` block the
tile sizes to try and the cost model:

- ``context_vox``: input voxels the runtime adds on every side of an output tile;
- ``tile_multiple_vox``: tiles start on, and measure, multiples of this in the
  model's full grid (the network's sub-sampling phase or size alignment);
- ``valid_input_offset_vox`` / ``valid_input_step_vox``: the input/output
  relation; an input of ``offset + k * step`` voxels per axis gives
  ``k * step`` output voxels, so the network itself crops ``offset / 2`` per
  side (DeepMedic: 80 and 5; a same-size network such as SegResNet: 0 and 2^depth);
- ``input_size_vox``: the training patch input (int8 calibration windows);
- ``runtime.tile_candidates_vox``: tile sizes the runtime chooses from
  (default 2, 3, 4 and 6 times ``tile_multiple_vox``);
- ``runtime.cost_model``: ``{"kind": ..., parameters}`` to estimate the
  multiply-accumulates of one member for an output brick: ``deepmedic``
  (:func:`ictus.models.deepmedic.cost.member_gmac`) or ``per_input_voxel``
  (``gmac_per_input_voxel`` times the window's voxels; the default).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ictus.imaging.errors import ModelError
from ictus.models.deepmedic.cost import member_gmac as deepmedic_member_gmac

log = logging.getLogger(__name__)

DEFAULT_TILE_FACTORS = (2, 3, 4, 6)


def _per_input_voxel(geometry: "TileGeometry", out_size: Sequence[int], gmac_per_input_voxel: float = 1e-9) -> float:
    return float(np.prod([o + 2 * geometry.context_vox for o in out_size])) * float(gmac_per_input_voxel)


def _deepmedic(geometry: "TileGeometry", out_size: Sequence[int], **params: Any) -> float:
    return deepmedic_member_gmac(out_size, **params)


#: Cost-model kinds a card may name in ``runtime.cost_model.kind``.
COST_MODELS: dict[str, Callable[..., float]] = {"per_input_voxel": _per_input_voxel, "deepmedic": _deepmedic}


@dataclass(frozen=True)
class TileGeometry:
    """A model's tiling geometry and cost model (see the module docstring); build it
    with :meth:`from_card`."""

    context_vox: int
    tile_multiple_vox: int
    valid_input_offset_vox: int
    valid_input_step_vox: int
    input_size_vox: int
    tile_candidates_vox: tuple[int, ...] = ()
    cost_model: Mapping[str, Any] = field(default_factory=lambda: {"kind": "per_input_voxel"})

    def __post_init__(self) -> None:
        if not self.tile_candidates_vox:
            object.__setattr__(self, "tile_candidates_vox",
                               tuple(f * self.tile_multiple_vox for f in DEFAULT_TILE_FACTORS))
        problems = []
        p, c, o, s = self.tile_multiple_vox, self.context_vox, self.valid_input_offset_vox, self.valid_input_step_vox
        if p <= 0 or s <= 0 or c < 0 or o < 0:
            problems.append("tile_multiple_vox and valid_input_step_vox must be positive, context and offset >= 0")
        elif p % s:
            problems.append(f"tile_multiple_vox {p} is not a multiple of valid_input_step_vox {s}")
        elif o % 2 or o > 2 * c or (2 * c - o) % s:
            problems.append(f"a window of tile + 2 * {c} voxels is not a valid input ({o} + k * {s})")
        if any(t <= 0 or t % max(p, 1) for t in self.tile_candidates_vox):
            problems.append(f"tile_candidates_vox must be positive multiples of {p}")
        if self.cost_model.get("kind") not in COST_MODELS:
            problems.append(f"unknown cost_model kind {self.cost_model.get('kind')!r}; use one of {', '.join(COST_MODELS)}")
        if problems:
            raise ModelError(f"model geometry is inconsistent: {'; '.join(problems)}; fix the model card")

    @classmethod
    def from_card(cls, card: Any) -> "TileGeometry":
        """The geometry of a :class:`ictus.models.registry.ModelCard` (its ``patch`` and ``runtime`` blocks)."""
        patch = card.patch
        runtime = (card.raw or {}).get("runtime") or {}
        try:
            return cls(
                context_vox=int(patch.context_vox),
                tile_multiple_vox=int(patch.tile_multiple_vox),
                valid_input_offset_vox=int(patch.valid_input_offset_vox),
                valid_input_step_vox=int(patch.valid_input_step_vox),
                input_size_vox=int(patch.input_size_vox),
                tile_candidates_vox=tuple(int(t) for t in runtime.get("tile_candidates_vox", ())),
                cost_model=dict(runtime.get("cost_model") or {"kind": "per_input_voxel"}),
            )
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model card {card.ref} has a malformed runtime block ({exc}); fix the card") from None

    @property
    def crop_vox(self) -> int:
        """Voxels the network itself removes per side (``valid_input_offset_vox / 2``)."""
        return self.valid_input_offset_vox // 2

    @property
    def output_start_vox(self) -> int:
        """Where a tile's first voxel sits in the network's output of its window."""
        return self.context_vox - self.crop_vox

    def window_vox(self, tile_vox: int) -> int:
        """Input voxels per axis fed for an output tile of ``tile_vox``."""
        return tile_vox + 2 * self.context_vox

    def estimated_gmac(self, out_size: Sequence[int]) -> float:
        """Estimated multiply-accumulates (G) of one member for an output brick."""
        params = {k: v for k, v in self.cost_model.items() if k not in ("kind", "note")}
        return COST_MODELS[str(self.cost_model["kind"])](self, out_size, **params)
