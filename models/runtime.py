"""Torch-free inference of an ONNX ensemble on onnxruntime, tiled as the model card says.

``segment(volume, members, class_names=..., geometry=...)`` takes a HU :class:`Volume`
and the members' ONNX files and returns a :class:`ictus.models.types.Segmentation` on the
volume's own grid. :class:`Ensemble` holds the onnxruntime sessions, so batch
workers load them once and call :meth:`Ensemble.segment` per study;
:meth:`Ensemble.from_card` takes everything model-specific from the card.

The model's geometry (:class:`ictus.models.geometry.TileGeometry`: context per
side, tile alignment, input/output relation, tile sizes, cost model) comes from
the card's ``patch`` and ``runtime`` blocks; this module knows no architecture.
The figures below are BLAST-CT's (DeepMedic, :mod:`ictus.models.deepmedic`):
context 40, alignment 15.

How it computes (see ``models/preprocess.py`` for the input side):

- **Tiling.** Output tiles of ``tile_vox`` voxels (a multiple of the card's
  ``tile_multiple_vox``, 15) on the full model grid, each fed with a window of
  ``tile + 2 * context_vox`` voxels (``2*40``), edge-padded at the grid border like
  the reference. Tiles start on multiples of the alignment in the reference's
  grid, so for BLAST-CT the x3 and x5 pathways sample the same voxels as the
  reference's 110^3 -> 30^3 patches: tiled == untiled == the reference, for any
  tile size. A network whose output is as large as its input (``valid_input_offset_vox``
  0, e.g. SegResNet) has its output cropped to the tile by the runtime.
- **Tile skipping** (``skip="tissue"``, default): only tiles whose output
  region holds at least one voxel with HU strictly inside the window
  (-15..100 HU, soft tissue) inside the head box are computed; the others are
  background with probability 1. Air and pure bone are not worth computing.
- **Ensemble.** Mean of the members' softmax, labels = argmax.
  ``fast=True`` runs member 1 only. The default cascade
  (``cascade_threshold=0.3``): member 1 runs on every computed tile; in each
  tile, members 2..N run only on the aligned sub-brick that holds every
  voxel where member 1's foreground probability (1 - p_background) is above
  0.3 (:func:`unsure_brick`), and the mean softmax of all members is used
  there. Elsewhere the result is member 1's (and ``agreement`` is 1). Since the
  tiled result does not depend on the tiling, the sub-brick's ensemble equals
  the plain ensemble on those voxels. ``cascade_threshold=None`` runs every
  member on every tile (the plain ensemble).
- **Precision.** ``precision="fp32"`` (default) runs the ONNX files as given;
  ``"int8"`` runs static int8 copies in which only the convolutions the card
  names are quantised (BLAST-CT: the full-resolution pathway's layers 2-8 and
  the 1x1x1 head; QDQ, per-channel weights; :func:`select_int8_nodes`), made once
  by :func:`quantize_member` and cached
  next to the model (or in the user cache). Measured on member 1: 99.5% of
  the labels of a lesion window unchanged, and 3.2x less CPU than the raw
  fp32 file, but only ~10% less than fp32 once denormals are flushed (below):
  most of that gain was the denormals. fp32 stays the default.
- **Back to the original grid.** Probabilities are resampled linearly per
  class (background 1 outside the computed box), labels are the argmax of the
  resampled probabilities (the reference resamples its 1 mm label map by
  nearest neighbour instead; both agree except on boundary voxels), agreement by
  nearest neighbour.
- **Denormals.** Weights below float32's smallest normal value are set to zero
  when a session is created (:func:`flush_denormals`): same output, ~5x faster
  on x86. (onnxruntime's ``set_denormal_as_zero`` would gain ~10% more but sets
  flush-to-zero on the calling thread, changing numpy's arithmetic for the
  rest of the process, so it is not used.)
- **Providers.** CUDA when onnxruntime offers it, else CPU; threads via
  ``threads`` (onnxruntime's ``intra_op_num_threads``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from ictus.imaging.errors import InvalidInputError, ModelError
from ictus.imaging.volume import Volume
from ictus.models.backends import Runner, available_providers, backend_info, choose_backend, load_runner
from ictus.models.geometry import TileGeometry
from ictus.models.preprocess import ModelInput, preprocess, to_original_grid
from ictus.models.registry import DEFAULT_MODEL
from ictus.models.types import Segmentation
from ictus.models.weights import user_cache_dir

log = logging.getLogger(__name__)

DEFAULT_CASCADE_THRESHOLD = 0.3  # largest threshold that met the agreement criteria on all inputs (scripts/bench_model.py --agreement)
SKIP_RULES = ("intracranial", "tissue", "none")
DEFAULT_SKIP = "intracranial"


@dataclass(frozen=True)
class TilingPlan:
    """Output bricks on the full model grid: (start z/y/x, size z/y/x) each, sizes and
    starts multiples of the geometry's ``tile_multiple_vox``."""

    tile_vox: int
    tiles: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...]
    n_candidates: int
    geometry: TileGeometry

    @property
    def output_voxels(self) -> int:
        return int(sum(np.prod(size) for _, size in self.tiles))

    @property
    def estimated_gmac(self) -> float:
        return float(sum(self.geometry.estimated_gmac(size) for _, size in self.tiles))


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax in float32."""
    x = logits.astype(np.float32, copy=True)
    x -= x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


class Ensemble:
    """Loaded ONNX members (on the backend of :func:`ictus.models.backends.choose_backend`),
    created once and reusable.

    ``geometry``: how to tile (from the card, :meth:`TileGeometry.from_card`).
    ``precision``: "fp32" (the files as given) or "int8" (cached static-int8
    copies, see :func:`quantize_member`; ``int8_conv_patterns`` from the card's
    ``runtime.int8``). ``backend``: "auto", "openvino" or "onnxruntime".
    """

    def __init__(
        self,
        members: Sequence[Path | str],
        *,
        class_names: Sequence[str],
        geometry: TileGeometry,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        precision: str = "fp32",
        spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
        window_hu: tuple[float, float] = (-15.0, 100.0),
        model_id: str = "",
        model_version: str = "",
        int8_conv_patterns: Sequence[str] = (),
        backend: str = "auto",
    ) -> None:
        pull = f"run `ictus models pull {model_id or DEFAULT_MODEL}`"
        if not members:
            raise ModelError(f"no ensemble members were given; {pull}")
        if precision not in ("fp32", "int8"):
            raise ModelError(f"unknown precision {precision!r}; use 'fp32' or 'int8'")
        self.member_paths = [Path(m) for m in members]
        for path in self.member_paths:
            if not path.is_file():
                raise ModelError(f"model file {path} is missing; {pull}")
        self.class_names = tuple(class_names)
        self.geometry = geometry
        self.int8_conv_patterns = tuple(int8_conv_patterns)
        self.spacing_mm = tuple(float(s) for s in spacing_mm)
        self.window_hu = (float(window_hu[0]), float(window_hu[1]))
        self.precision = precision
        self.model_id = model_id
        self.model_version = model_version
        self.providers = available_providers(providers)
        self.backend = choose_backend(backend, providers=self.providers, precision=precision)
        self.backend_info = backend_info(self.backend, self.providers)
        self.threads = threads
        self._sessions: list[Runner | None] = [None] * len(self.member_paths)
        self._run_paths = [quantized_path(p) if precision == "int8" else p for p in self.member_paths]

    @classmethod
    def from_card(cls, card, members: Sequence[Path | str], **options) -> "Ensemble":
        """An ensemble of ``members`` (ONNX files) with everything model-specific from
        ``card`` (an :class:`ictus.models.registry.ModelCard`): class names, geometry,
        spacing, HU window, id, version and int8 node patterns. ``options`` go to the
        constructor (threads, providers, precision)."""
        int8 = ((card.raw or {}).get("runtime") or {}).get("int8") or {}
        return cls(
            members,
            class_names=card.class_names,
            geometry=TileGeometry.from_card(card),
            spacing_mm=tuple(card.preprocessing.spacing_mm),
            window_hu=tuple(card.preprocessing.window_hu),
            model_id=card.id,
            model_version=card.version,
            int8_conv_patterns=tuple(str(p) for p in int8.get("conv_name_patterns", ())),
            **options,
        )

    # -- sessions ---------------------------------------------------------
    def session(self, index: int) -> Runner:
        """The loaded member ``index`` (created on first use)."""
        if self._sessions[index] is None:
            path = self._run_paths[index]
            if self.precision == "int8" and not path.is_file():
                quantize_member(self.member_paths[index], path, geometry=self.geometry, window_hu=self.window_hu,
                                conv_name_patterns=self.int8_conv_patterns)
            try:
                self._sessions[index] = load_runner(self.backend, load_without_denormals(path),
                                                    threads=self.threads, providers=self.providers)
            except Exception as exc:  # onnxruntime and OpenVINO raise their own exception types
                raise ModelError(f"cannot load model {path.name} ({exc}); re-run `ictus models verify`") from exc
        runner = self._sessions[index]
        assert runner is not None
        return runner

    def predict(self, index: int, window: np.ndarray) -> np.ndarray:
        """Softmax probabilities [C, z, y, x] of member ``index`` on the output tile of a
        normalised input window [z + 2c, y + 2c, x + 2c] (c: the geometry's context)."""
        logits = self.session(index).run(np.ascontiguousarray(window[None, None], dtype=np.float32))[0]
        if logits.shape[0] != len(self.class_names):
            raise ModelError(
                f"model gives {logits.shape[0]} channels but the card names {len(self.class_names)} classes; "
                "check the model card"
            )
        g = self.geometry
        expected = tuple(n - g.valid_input_offset_vox for n in window.shape)
        if tuple(logits.shape[1:]) != expected:
            raise ModelError(
                f"model gives an output of {tuple(logits.shape[1:])} voxels for an input of {window.shape}, "
                f"the card's patch block says {expected}; check the model card"
            )
        start = g.output_start_vox
        if start:
            logits = logits[(slice(None),) + tuple(slice(start, n - start) for n in logits.shape[1:])]
        return softmax(logits, axis=0)

    # -- whole volumes ------------------------------------------------------
    def segment(
        self,
        volume: Volume,
        *,
        fast: bool = False,
        tile_vox: int | None = None,
        skip: str = DEFAULT_SKIP,
        cascade_threshold: float | None = DEFAULT_CASCADE_THRESHOLD,
        members: Sequence[int] | None = None,
        crop_to_head: bool = True,
    ) -> Segmentation:
        """Segment ``volume``; see the module docstring for the exact method.

        ``members``: indices of the members to use (default all; ``fast`` = [0]).
        ``skip``: "tissue" (skip tiles with no soft-tissue voxel) or "none".
        """
        t0 = time.perf_counter()
        model_input = preprocess(
            volume,
            spacing_mm=self.spacing_mm,  # type: ignore[arg-type]
            window_hu=self.window_hu,
            tile_vox=tile_vox or max(self.geometry.tile_candidates_vox),
            context_vox=self.geometry.context_vox,
            phase_vox=self.geometry.tile_multiple_vox,
            crop_to_head=crop_to_head,
        )
        t1 = time.perf_counter()
        indices = [0] if fast else list(members if members is not None else range(len(self.member_paths)))
        probs_box, agreement_box, stats = self.predict_box(
            model_input, indices, tile_vox=tile_vox, skip=skip, cascade_threshold=cascade_threshold
        )
        t2 = time.perf_counter()
        seg = self._to_original(model_input, probs_box, agreement_box)
        del probs_box, agreement_box
        t3 = time.perf_counter()
        info = dict(stats)
        info.update(
            preprocess_s=round(t1 - t0, 3),
            inference_s=round(t2 - t1, 3),
            resample_back_s=round(t3 - t2, 3),
            precision=self.precision,
            providers=list(self.providers),
            backend=self.backend,
            backend_version=self.backend_info.version,
            device=self.backend_info.device,
            method=describe_method(fast, len(indices), cascade_threshold, skip, stats["tile_vox"], self.precision,
                                   geometry=self.geometry),
        )
        return Segmentation(
            probabilities=seg[0],
            labels=seg[1],
            agreement=seg[2],
            class_names=self.class_names,
            model_id=self.model_id,
            model_version=self.model_version,
            members_used=tuple(self.member_paths[i].name for i in indices),
            info=info,
        )

    def predict_box(
        self,
        model_input: ModelInput,
        indices: Sequence[int],
        *,
        tile_vox: int | None = None,
        skip: str = DEFAULT_SKIP,
        cascade_threshold: float | None = DEFAULT_CASCADE_THRESHOLD,
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Ensemble probabilities float32 [C, *box] and agreement float16 [*box] on the model box."""
        g = self.geometry
        plan = (choose_tile_vox(model_input, g, skip) if tile_vox is None
                else plan_tiles(model_input, tile_vox, g, skip=skip))
        n_classes = len(self.class_names)
        shape = model_input.array.shape
        probs = np.zeros((n_classes,) + shape, dtype=np.float32)
        probs[0] = 1.0
        agreement = np.ones(shape, dtype=np.float16)
        member_tiles = [0] * len(indices)
        cascade_voxels = 0
        for start, size in plan.tiles:
            window = extract_window(model_input, start, size, g)
            out_sl, box_sl = _tile_slices(model_input, start, size)
            first = self.predict(indices[0], window)[(slice(None),) + out_sl]
            member_tiles[0] += 1
            probs[(slice(None),) + box_sl] = first
            if len(indices) == 1:
                continue
            sub: tuple[tuple[int, ...], tuple[int, ...]] | None
            if cascade_threshold is None:
                sub = (tuple(start), tuple(size))
            else:
                sub = unsure_brick(first[0], cascade_threshold, start, g.tile_multiple_vox)
                if sub is None:
                    continue
            sub_window = window if sub == (tuple(start), tuple(size)) else extract_window(model_input, *sub, g)
            sub_out, sub_box = _tile_slices(model_input, *sub)
            inner = tuple(slice(b.start - t.start, b.stop - t.start) for b, t in zip(sub_box, box_sl))
            total = first[(slice(None),) + inner].copy()
            votes = [total.argmax(axis=0).astype(np.uint8)]
            for k, index in enumerate(indices[1:], start=1):
                p = self.predict(index, sub_window)[(slice(None),) + sub_out]
                total += p
                votes.append(p.argmax(axis=0).astype(np.uint8))
                member_tiles[k] += 1
            total /= float(len(indices))
            label = total.argmax(axis=0)
            agree = np.zeros(label.shape, dtype=np.float32)
            for v in votes:
                agree += v == label
            probs[(slice(None),) + sub_box] = total
            agreement[sub_box] = (agree / len(votes)).astype(np.float16)
            cascade_voxels += int(label.size)
        stats = {
            "tile_vox": plan.tile_vox,
            "tiles_candidate": plan.n_candidates,
            "tiles_computed": len(plan.tiles),
            "output_voxels_per_member": plan.output_voxels,
            "estimated_gmac_per_member": round(plan.estimated_gmac, 1),
            "member_tiles": member_tiles,
            "ensemble_voxels": cascade_voxels,
            "cascade_threshold": cascade_threshold,
        }
        return probs, agreement, stats

    def _to_original(
        self, model_input: ModelInput, probs_box: np.ndarray, agreement_box: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_classes = probs_box.shape[0]
        size = model_input.reference_image.GetSize()[::-1]
        probabilities = np.empty((n_classes,) + tuple(size), dtype=np.float16)
        for c in range(n_classes):
            probabilities[c] = to_original_grid(
                probs_box[c], model_input, default=1.0 if c == 0 else 0.0, dtype=np.float16
            )
        labels = probabilities.argmax(axis=0).astype(np.uint8)
        agreement = to_original_grid(
            agreement_box.astype(np.float32), model_input, default=1.0,
            interpolator=sitk.sitkNearestNeighbor, dtype=np.float16,
        )
        return probabilities, labels, agreement


def describe_method(
    fast: bool, n_members: int, cascade_threshold: float | None, skip: str, tile_vox: int, precision: str,
    *, geometry: TileGeometry,
) -> str:
    """One line saying exactly what was computed (for findings provenance)."""
    aligned = f"{geometry.tile_multiple_vox}-voxel-aligned"
    if fast or n_members == 1:
        ens = "member 1 only"
    elif cascade_threshold is None:
        ens = f"mean softmax of {n_members} members on every computed tile"
    else:
        ens = (
            f"cascade: member 1 on every computed tile, members 2-{n_members} only on the {aligned} "
            f"box of each tile's voxels where member 1 gives a foreground probability > {cascade_threshold:g} "
            "(mean softmax there)"
        )
    if skip in ("tissue", "intracranial"):
        what = "soft tissue (HU strictly inside the window)"
        if skip == "intracranial":
            what += " at least 8 dilation steps from the outside air (scalp dropped)"
        where = (
            f"head-box tiles of up to {tile_vox}^3 holding {what}, "
            f"each shrunk to the {aligned} box of that tissue"
        )
    else:
        where = f"all head-box tiles of {tile_vox}^3"
    return f"{ens}; {where}; {geometry.context_vox}-voxel context; {precision}"


def plan_tiles(model_input: ModelInput, tile_vox: int, geometry: TileGeometry, *, skip: str = DEFAULT_SKIP) -> TilingPlan:
    """Bricks of at most ``tile_vox``^3 over the model input's region. With
    ``skip="tissue"`` a brick without soft tissue is dropped and each other brick
    shrinks to the aligned bounding box of its tissue voxels."""
    phase = geometry.tile_multiple_vox
    if tile_vox <= 0 or tile_vox % phase:
        raise InvalidInputError(
            f"tile size {tile_vox} is not a positive multiple of {phase}; choose e.g. {geometry.tile_candidates_vox[-1]}"
        )
    if skip not in SKIP_RULES:
        raise InvalidInputError(f"unknown skip rule {skip!r}; use one of {', '.join(SKIP_RULES)}")
    mask = model_input.deep if skip == "intracranial" else model_input.tissue
    ranges = [range(lo, hi, tile_vox) for lo, hi in zip(model_input.region_start, model_input.region_stop)]
    tiles = []
    n = 0
    full = (tile_vox,) * 3
    for z in ranges[0]:
        for y in ranges[1]:
            for x in ranges[2]:
                n += 1
                start = (z, y, x)
                if skip == "none":
                    tiles.append((start, full))
                    continue
                _, box_sl = _tile_slices(model_input, start, full)
                brick = aligned_box(mask[box_sl], start, phase)
                if brick is not None:
                    tiles.append(brick)
    return TilingPlan(tile_vox=tile_vox, tiles=tuple(tiles), n_candidates=n, geometry=geometry)  # type: ignore[arg-type]


def choose_tile_vox(
    model_input: ModelInput, geometry: TileGeometry, skip: str = DEFAULT_SKIP, candidates: Sequence[int] | None = None
) -> TilingPlan:
    """The plan with the fewest estimated multiply-accumulates among ``candidates``
    (default: the geometry's ``tile_candidates_vox``)."""
    plans = [plan_tiles(model_input, t, geometry, skip=skip) for t in (candidates or geometry.tile_candidates_vox)]
    return min(plans, key=lambda p: p.estimated_gmac)


def aligned_box(
    mask: np.ndarray, start: Sequence[int], phase_vox: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """The ``phase_vox``-aligned box (full-grid start, size) around the true voxels of
    ``mask``, a block whose first voxel sits at full-grid ``start`` (a multiple of
    ``phase_vox``); None when ``mask`` has no true voxel."""
    if not mask.any():
        return None
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        lo.append(int(hit[0]) // phase_vox * phase_vox)
        hi.append(-(-(int(hit[-1]) + 1) // phase_vox) * phase_vox)
    return (
        tuple(int(s) + a for s, a in zip(start, lo)),  # type: ignore[return-value]
        tuple(b - a for a, b in zip(lo, hi)),
    )


def unsure_brick(
    p_background: np.ndarray, threshold: float, start: Sequence[int], phase_vox: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """The ``phase_vox``-aligned sub-brick (full-grid start, size) of a tile that holds
    every voxel where member 1's foreground probability ``1 - p_background``
    exceeds ``threshold``; None when there is no such voxel. ``p_background`` is
    member 1's background probability on the tile's output (cut at the region end),
    ``start`` the tile's full-grid start (a multiple of ``phase_vox``)."""
    return aligned_box((1.0 - p_background) > threshold, start, phase_vox)


def _tile_slices(model_input: ModelInput, start: Sequence[int], size: Sequence[int]):
    """(slices into the network output, slices into the box) of one output brick,
    cut at the end of the output region (the head box)."""
    out_sl, box_sl = [], []
    for s, n, region_stop, box0 in zip(start, size, model_input.region_stop, model_input.box_start):
        stop = max(min(s + n, region_stop), s)
        out_sl.append(slice(0, stop - s))
        box_sl.append(slice(s - box0, stop - box0))
    return tuple(out_sl), tuple(box_sl)


def extract_window(
    model_input: ModelInput, start: Sequence[int], size: Sequence[int], geometry: TileGeometry
) -> np.ndarray:
    """The network input for one output brick: [start - c, start + size + c) per axis in
    full-grid coordinates (c: the geometry's context), edge-padded beyond the grid
    (as the reference pads)."""
    context = geometry.context_vox
    sl, pad = [], []
    for s, n, box0, box_n in zip(start, size, model_input.box_start, model_input.array.shape):
        lo, hi = s - context - box0, s + n + context - box0
        a, b = max(lo, 0), min(hi, box_n)
        sl.append(slice(a, b))
        pad.append((a - lo, hi - b))
    window = model_input.array[tuple(sl)]
    if any(p for pair in pad for p in pair):
        window = np.pad(window, pad, mode="edge")
    return np.ascontiguousarray(window, dtype=np.float32)


# -- denormals ------------------------------------------------------------------
def flush_denormals(model) -> int:
    """Set the float32 initializers below the smallest normal float (denormals) to
    zero, in place; returns how many values changed.

    The V1 weights hold thousands of denormal values (dead channels). x86 CPUs
    compute with denormals up to ~100x slower: flushing them made a member 5x
    faster on CPU with an identical output (their contributions are < 1e-38)."""
    from onnx import numpy_helper

    tiny = np.finfo(np.float32).tiny
    changed = 0
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.data_type != 1:  # FLOAT
            continue
        array = numpy_helper.to_array(tensor)
        denormal = (array != 0) & (np.abs(array) < tiny)
        if denormal.any():
            changed += int(denormal.sum())
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.where(denormal, 0, array).astype(np.float32), tensor.name))
    return changed


def load_without_denormals(path: Path) -> bytes:
    """The serialized ONNX model at ``path`` with :func:`flush_denormals` applied."""
    import onnx

    model = onnx.load(str(path))
    flush_denormals(model)
    return model.SerializeToString()


# -- int8 ------------------------------------------------------------------------
def quantized_path(onnx_path: Path) -> Path:
    """Where the static-int8 copy of ``onnx_path`` is cached: next to it when that
    folder is writable, else under the user cache (``$XDG_CACHE_HOME/ictus/int8``,
    :func:`ictus.models.weights.user_cache_dir`)."""
    onnx_path = Path(onnx_path)
    beside = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    if beside.exists() or os.access(onnx_path.parent, os.W_OK):
        return beside
    digest = hashlib.sha256(str(onnx_path.resolve()).encode()).hexdigest()[:12]
    cache = user_cache_dir("int8")
    return cache / f"{onnx_path.stem}.{digest}.int8.onnx"


def calibration_windows(
    n: int = 2, *, size_vox: int, window_hu: tuple[float, float], seed: int = 0
) -> Iterator[np.ndarray]:
    """Deterministic calibration windows of ``size_vox``^3 (a valid input, e.g. the card's
    ``input_size_vox``), normalised with ``window_hu``, cut from :func:`synthetic_head_hu`
    (1 mm): first one centred on its haemorrhage (blood, brain, skull, scalp and
    air in one window), then the head centre, the vertex and the side, so that
    the int8 activation ranges cover what a head CT produces."""
    from ictus.imaging.phantom import head_hu

    shape = (150, 190, 160)
    hu, labels = head_hu(shape, haemorrhage_ml=_SYNTHETIC_HEAD["haemorrhage_ml"],
                         haemorrhage_hu=_SYNTHETIC_HEAD["haemorrhage_hu"], noise_hu=_SYNTHETIC_HEAD["noise_hu"], seed=seed)
    lo, hi = float(window_hu[0]), float(window_hu[1])
    norm = ((2.0 * np.clip(hu, lo, hi) - lo - hi) / (hi - lo)).astype(np.float32)
    centre = [s // 2 for s in shape]
    blood = tuple(int(round(v)) for v in np.argwhere(labels > 0).mean(axis=0))
    centres = [
        blood,
        tuple(centre),
        (centre[0] + 60, centre[1], centre[2]),
        (centre[0], centre[1], centre[2] + 60),
    ]
    half = size_vox // 2
    padded = np.pad(norm, half, mode="edge")
    for c in centres[: max(1, n)]:
        win = padded[c[0] : c[0] + size_vox, c[1] : c[1] + size_vox, c[2] : c[2] + size_vox]
        yield np.ascontiguousarray(win)[None, None]


#: The head of :func:`synthetic_head_hu` and of the calibration windows.
_SYNTHETIC_HEAD = {"haemorrhage_ml": 30.0, "haemorrhage_hu": 70.0, "noise_hu": 4.0}


def synthetic_head_hu(
    shape_vox: tuple[int, int, int] = (150, 190, 160),
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    *,
    haemorrhage_ml: float = _SYNTHETIC_HEAD["haemorrhage_ml"],
    haemorrhage_hu: float = _SYNTHETIC_HEAD["haemorrhage_hu"],
    seed: int = 0,
) -> np.ndarray:
    """The project phantom's head in HU, float32 [z, y, x] (``spacing_mm`` is z, y, x),
    centred on the grid, with a right basal-ganglia haemorrhage of ``haemorrhage_ml``
    (:func:`ictus.imaging.phantom.head_hu`, 4 HU noise). For int8 calibration, tests
    and benchmarks."""
    from ictus.imaging.phantom import head_hu

    hu, _ = head_hu(shape_vox, spacing_mm, haemorrhage_ml=haemorrhage_ml, haemorrhage_hu=haemorrhage_hu,
                    noise_hu=_SYNTHETIC_HEAD["noise_hu"], seed=seed)
    return hu


def select_int8_nodes(model, conv_name_patterns: Sequence[str] = ()) -> list[str]:
    """The convolutions to quantise: those whose node name matches one of
    ``conv_name_patterns`` (regular expressions, ``re.search``; the card's
    ``runtime.int8.conv_name_patterns``, e.g. DeepMedic's from
    :func:`ictus.models.deepmedic.int8_conv_patterns`); when none is given or none
    matches, every Conv with more than one input channel."""
    import re

    from onnx import numpy_helper

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    compiled = [re.compile(p) for p in conv_name_patterns]
    chosen = [n.name for n in convs if any(p.search(n.name) for p in compiled)]
    if chosen:
        return chosen
    inits = {t.name: t for t in model.graph.initializer}
    return [n.name for n in convs if n.input[1] in inits and numpy_helper.to_array(inits[n.input[1]]).shape[1] > 1]


def quantize_member(
    onnx_path: Path,
    out_path: Path | None = None,
    *,
    geometry: TileGeometry,
    window_hu: tuple[float, float],
    conv_name_patterns: Sequence[str] = (),
    n_calibration: int = 2,
) -> Path:
    """Write a static int8 copy of one member: QDQ, per-channel int8 weights, uint8
    activations, MinMax calibration on :func:`calibration_windows` (of the geometry's
    ``input_size_vox``, normalised with ``window_hu``), only the convolutions of
    :func:`select_int8_nodes` quantised."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from ictus.imaging.atomic import move_file
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path = Path(onnx_path)
    out_path = Path(out_path) if out_path else quantized_path(onnx_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    class _Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self._it = ({name: w} for w in calibration_windows(
                n_calibration, size_vox=geometry.input_size_vox, window_hu=window_hu))

        def get_next(self):
            return next(self._it, None)

    import onnx

    name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    log.info("quantising %s to int8 (one-off)", onnx_path.name)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        flush_denormals(model)
        onnx.save(model, str(pre))
        partial = Path(tmp) / "q.onnx"
        quantize_static(
            str(pre), str(partial), _Reader(name), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["Conv"], nodes_to_quantize=select_int8_nodes(onnx.load(str(pre)), conv_name_patterns),
        )
        move_file(partial, out_path)  # a rename, or a copy next to out_path then a rename
    return out_path


def segment(
    volume: Volume,
    members: Sequence[Path | str],
    *,
    class_names: Sequence[str],
    geometry: TileGeometry,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    fast: bool = False,
    precision: str = "fp32",
    **options,
) -> Segmentation:
    """One-shot convenience: build an :class:`Ensemble` and segment ``volume``.

    ``options`` go to :meth:`Ensemble.segment` (tile_vox, skip, cascade_threshold,
    members, crop_to_head) or to the constructor (spacing_mm, window_hu,
    model_id, model_version, int8_conv_patterns, backend).
    """
    ctor_keys = {"spacing_mm", "window_hu", "model_id", "model_version", "int8_conv_patterns", "backend"}
    ctor = {k: options.pop(k) for k in list(options) if k in ctor_keys}
    ensemble = Ensemble(
        [members[0]] if fast else members, class_names=class_names, geometry=geometry, threads=threads,
        providers=providers, precision=precision, **ctor,
    )
    return ensemble.segment(volume, fast=fast, **options)
