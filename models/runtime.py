"""Torch-free inference of a BLAST-CT-style ONNX ensemble on onnxruntime.

``segment(volume, members, class_names=...)`` takes a HU :class:`Volume` and
the members' ONNX files and returns a :class:`ictus.models.types.Segmentation` on the
volume's own grid. :class:`Ensemble` holds the onnxruntime sessions, so batch
workers load them once and call :meth:`Ensemble.segment` per study.

How it computes (see ``models/preprocess.py`` for the input side):

- **Tiling.** Output tiles of ``tile_vox`` voxels (a multiple of 15) on the full
  1 mm grid, each fed with a window of ``tile + 2*40`` voxels (the network's
  context), edge-padded at the grid border like the reference. Tiles start on
  multiples of 15 in the reference's grid, so the x3 and x5 pathways sample the
  same voxels as the reference's 110^3 -> 30^3 patches: tiled == untiled == the
  reference, for any tile size.
- **Tile skipping** (``skip="tissue"``, default): only tiles whose output
  region holds at least one voxel with HU strictly inside the window
  (-15..100 HU, soft tissue) inside the head box are computed; the others are
  background with probability 1. Air and pure bone are not worth computing.
- **Ensemble.** Mean of the members' softmax, labels = argmax.
  ``fast=True`` runs member 1 only. The default cascade
  (``cascade_threshold=0.3``): member 1 runs on every computed tile; in each
  tile, members 2..N run only on the 15-voxel-aligned sub-brick that holds every
  voxel where member 1's foreground probability (1 - p_background) is above
  0.3 (:func:`unsure_brick`), and the mean softmax of all members is used
  there. Elsewhere the result is member 1's (and ``agreement`` is 1). Since the
  tiled result does not depend on the tiling, the sub-brick's ensemble equals
  the plain ensemble on those voxels. ``cascade_threshold=None`` runs every
  member on every tile (the plain ensemble).
- **Precision.** ``precision="fp32"`` (default) runs the ONNX files as given;
  ``"int8"`` runs static int8 copies in which only the full-resolution
  pathway's layers 2-8 and the 1x1x1 head are quantised (QDQ, per-channel
  weights; :func:`int8_nodes`), made once by :func:`quantize_member` and cached
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
from ictus.models.preprocess import ModelInput, preprocess, to_original_grid
from ictus.models.types import Segmentation

log = logging.getLogger(__name__)

CONTEXT_VOX = 40  # network context per side: input 5k+80 -> output 5k
PHASE_VOX = 15  # tiles start on multiples of this (x3 and x5 sub-sampling phase)
DEFAULT_CASCADE_THRESHOLD = 0.3  # largest threshold that met the agreement criteria on all inputs (scripts/bench_model.py --agreement)
SKIP_RULES = ("intracranial", "tissue", "none")
DEFAULT_SKIP = "intracranial"


@dataclass(frozen=True)
class TilingPlan:
    """Output bricks on the full 1 mm grid: (start z/y/x, size z/y/x) each, sizes
    multiples of 15, starts on multiples of 15."""

    tile_vox: int
    tiles: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...]
    n_candidates: int

    @property
    def output_voxels(self) -> int:
        return int(sum(np.prod(size) for _, size in self.tiles))

    @property
    def estimated_gmac(self) -> float:
        return float(sum(member_gmac(size) for _, size in self.tiles))


_WIDTHS = (30, 30, 40, 40, 40, 40, 50, 50)


def member_gmac(out_size: Sequence[int]) -> float:
    """Multiply-accumulates (G) of one DeepMedic member for an output brick
    (sizes multiples of 15): the three pathways on their valid crops, then the
    1x1x1 head. Used to choose tile sizes."""
    total = 0.0
    for factor in (1, 3, 5):
        side = [o // factor + 16 for o in out_size]  # pathway input after sub-sampling
        c_in = 1
        for i, c_out in enumerate(_WIDTHS):
            n = np.prod([s - 2 * (i + 1) for s in side])
            total += 27.0 * c_in * c_out * n
            c_in = c_out
    total += float(np.prod(out_size)) * (150 * 250 + 250 * 250 + 250 * 5)
    return total / 1e9


def available_providers(providers: Sequence[str] | None = None) -> list[str]:
    """CUDA when onnxruntime has it (and it was not excluded), then CPU."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    wanted = list(providers) if providers else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = [p for p in wanted if p in have]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax in float32."""
    x = logits.astype(np.float32, copy=True)
    x -= x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


class Ensemble:
    """onnxruntime sessions for a list of ONNX members, created once and reusable.

    ``precision``: "fp32" (the files as given) or "int8" (cached static-int8
    copies, see :func:`quantize_member`).
    """

    def __init__(
        self,
        members: Sequence[Path | str],
        *,
        class_names: Sequence[str],
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        precision: str = "fp32",
        spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
        window_hu: tuple[float, float] = (-15.0, 100.0),
        model_id: str = "",
        model_version: str = "",
    ) -> None:
        import onnxruntime as ort

        if not members:
            raise ModelError("no ensemble members were given; run `ictus models pull blast-ct`")
        if precision not in ("fp32", "int8"):
            raise ModelError(f"unknown precision {precision!r}; use 'fp32' or 'int8'")
        self.member_paths = [Path(m) for m in members]
        for path in self.member_paths:
            if not path.is_file():
                raise ModelError(f"model file {path} is missing; run `ictus models pull blast-ct`")
        self.class_names = tuple(class_names)
        self.spacing_mm = tuple(float(s) for s in spacing_mm)
        self.window_hu = (float(window_hu[0]), float(window_hu[1]))
        self.precision = precision
        self.model_id = model_id
        self.model_version = model_version
        self.providers = available_providers(providers)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle threads sleep instead of spinning: on a shared or oversubscribed CPU
        # (batch workers, test runners) spinning threads were measured 6-8x slower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # One arena per session would keep each member's peak (~1.5 GB at 60^3 tiles)
        # for the life of the session: 12 members went past 16 GB. Freed after each run instead.
        options.enable_cpu_mem_arena = False
        self._options = options
        self._ort = ort
        self._sessions: list = [None] * len(self.member_paths)
        self._run_paths = [quantized_path(p) if precision == "int8" else p for p in self.member_paths]

    # -- sessions ---------------------------------------------------------
    def session(self, index: int):
        """The onnxruntime session of member ``index`` (created on first use)."""
        if self._sessions[index] is None:
            path = self._run_paths[index]
            if self.precision == "int8" and not path.is_file():
                quantize_member(self.member_paths[index], path)
            try:
                self._sessions[index] = self._ort.InferenceSession(
                    load_without_denormals(path), self._options, providers=self.providers
                )
            except Exception as exc:  # onnxruntime raises its own exception types
                raise ModelError(f"cannot load model {path.name} ({exc}); re-run `ictus models verify`") from exc
        return self._sessions[index]

    def predict(self, index: int, window: np.ndarray) -> np.ndarray:
        """Softmax probabilities [C, z, y, x] of member ``index`` for a normalised
        input window [z+80, y+80, x+80] (each side 5k+80)."""
        session = self.session(index)
        name = session.get_inputs()[0].name
        logits = session.run(None, {name: window[None, None].astype(np.float32, copy=False)})[0][0]
        if logits.shape[0] != len(self.class_names):
            raise ModelError(
                f"model gives {logits.shape[0]} channels but the card names {len(self.class_names)} classes; "
                "check the model card"
            )
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
            tile_vox=tile_vox or 90,
            context_vox=CONTEXT_VOX,
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
            method=describe_method(fast, len(indices), cascade_threshold, skip, stats["tile_vox"], self.precision),
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
        plan = choose_tile_vox(model_input, skip) if tile_vox is None else plan_tiles(model_input, tile_vox, skip=skip)
        n_classes = len(self.class_names)
        shape = model_input.array.shape
        probs = np.zeros((n_classes,) + shape, dtype=np.float32)
        probs[0] = 1.0
        agreement = np.ones(shape, dtype=np.float16)
        member_tiles = [0] * len(indices)
        cascade_voxels = 0
        for start, size in plan.tiles:
            window = extract_window(model_input, start, size)
            out_sl, box_sl = _tile_slices(model_input, start, size)
            first = self.predict(indices[0], window)[(slice(None),) + out_sl]
            member_tiles[0] += 1
            probs[(slice(None),) + box_sl] = first
            if len(indices) == 1:
                continue
            if cascade_threshold is None:
                sub = (tuple(start), tuple(size))
            else:
                sub = unsure_brick(first[0], cascade_threshold, start)
                if sub is None:
                    continue
            sub_window = window if sub == (tuple(start), tuple(size)) else extract_window(model_input, *sub)
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
    fast: bool, n_members: int, cascade_threshold: float | None, skip: str, tile_vox: int, precision: str
) -> str:
    """One line saying exactly what was computed (for findings provenance)."""
    if fast or n_members == 1:
        ens = "member 1 only"
    elif cascade_threshold is None:
        ens = f"mean softmax of {n_members} members on every computed tile"
    else:
        ens = (
            f"cascade: member 1 on every computed tile, members 2-{n_members} only on the 15-voxel-aligned "
            f"box of each tile's voxels where member 1 gives a foreground probability > {cascade_threshold:g} "
            "(mean softmax there)"
        )
    if skip in ("tissue", "intracranial"):
        what = "soft tissue (HU strictly inside the window)"
        if skip == "intracranial":
            what += " at least 8 dilation steps from the outside air (scalp dropped)"
        where = (
            f"head-box tiles of up to {tile_vox}^3 holding {what}, "
            "each shrunk to the 15-voxel-aligned box of that tissue"
        )
    else:
        where = f"all head-box tiles of {tile_vox}^3"
    return f"{ens}; {where}; 40-voxel context; {precision}"


def plan_tiles(model_input: ModelInput, tile_vox: int, *, skip: str = DEFAULT_SKIP) -> TilingPlan:
    """Bricks of at most ``tile_vox``^3 over the model input's region. With
    ``skip="tissue"`` a brick without soft tissue is dropped and each other brick
    shrinks to the 15-voxel-aligned bounding box of its tissue voxels."""
    if tile_vox <= 0 or tile_vox % PHASE_VOX:
        raise InvalidInputError(f"tile size {tile_vox} is not a positive multiple of {PHASE_VOX}; choose e.g. 60")
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
                brick = aligned_box(mask[box_sl], start)
                if brick is not None:
                    tiles.append(brick)
    return TilingPlan(tile_vox=tile_vox, tiles=tuple(tiles), n_candidates=n)  # type: ignore[arg-type]


def choose_tile_vox(model_input: ModelInput, skip: str = DEFAULT_SKIP, candidates=(30, 45, 60, 90)) -> TilingPlan:
    """The plan with the fewest estimated multiply-accumulates among ``candidates``."""
    plans = [plan_tiles(model_input, t, skip=skip) for t in candidates]
    return min(plans, key=lambda p: p.estimated_gmac)


def aligned_box(
    mask: np.ndarray, start: Sequence[int]
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """The 15-voxel-aligned box (full-grid start, size) around the true voxels of
    ``mask``, a block whose first voxel sits at full-grid ``start`` (a multiple of
    15); None when ``mask`` has no true voxel."""
    if not mask.any():
        return None
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        lo.append(int(hit[0]) // PHASE_VOX * PHASE_VOX)
        hi.append(-(-(int(hit[-1]) + 1) // PHASE_VOX) * PHASE_VOX)
    return (
        tuple(int(s) + a for s, a in zip(start, lo)),  # type: ignore[return-value]
        tuple(b - a for a, b in zip(lo, hi)),
    )


def unsure_brick(
    p_background: np.ndarray, threshold: float, start: Sequence[int]
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """The 15-voxel-aligned sub-brick (full-grid start, size) of a tile that holds
    every voxel where member 1's foreground probability ``1 - p_background``
    exceeds ``threshold``; None when there is no such voxel. ``p_background`` is
    member 1's background probability on the tile's output (cut at the region end),
    ``start`` the tile's full-grid start (a multiple of 15)."""
    return aligned_box((1.0 - p_background) > threshold, start)


def _tile_slices(model_input: ModelInput, start: Sequence[int], size: Sequence[int]):
    """(slices into the network output, slices into the box) of one output brick,
    cut at the end of the output region (the head box)."""
    out_sl, box_sl = [], []
    for s, n, region_stop, box0 in zip(start, size, model_input.region_stop, model_input.box_start):
        stop = max(min(s + n, region_stop), s)
        out_sl.append(slice(0, stop - s))
        box_sl.append(slice(s - box0, stop - box0))
    return tuple(out_sl), tuple(box_sl)


def extract_window(model_input: ModelInput, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The network input for one output brick: [start-40, start+size+40) per axis in
    full-grid coordinates, edge-padded beyond the grid (as the reference pads)."""
    sl, pad = [], []
    for s, n, box0, box_n in zip(start, size, model_input.box_start, model_input.array.shape):
        lo, hi = s - CONTEXT_VOX - box0, s + n + CONTEXT_VOX - box0
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
    folder is writable, else under the user cache (``$XDG_CACHE_HOME/ictus/int8``)."""
    onnx_path = Path(onnx_path)
    beside = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    if beside.exists() or os.access(onnx_path.parent, os.W_OK):
        return beside
    digest = hashlib.sha256(str(onnx_path.resolve()).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ictus" / "int8"
    return cache / f"{onnx_path.stem}.{digest}.int8.onnx"


def calibration_windows(n: int = 2, size_vox: int = 110, seed: int = 0) -> Iterator[np.ndarray]:
    """Deterministic normalised calibration windows cut from :func:`synthetic_head_hu`
    (1 mm): first one centred on its haemorrhage (blood, brain, skull, scalp and
    air in one window), then the head centre, the vertex and the side, so that
    the int8 activation ranges cover what a head CT produces."""
    shape = (150, 190, 160)
    hu = synthetic_head_hu(shape_vox=shape, seed=seed)
    lo, hi = -15.0, 100.0
    norm = ((2.0 * np.clip(hu, lo, hi) - lo - hi) / (hi - lo)).astype(np.float32)
    centre = [s // 2 for s in shape]
    centres = [
        (centre[0] + 10, centre[1] + 10, centre[2] - 35),
        tuple(centre),
        (centre[0] + 60, centre[1], centre[2]),
        (centre[0], centre[1], centre[2] + 60),
    ]
    half = size_vox // 2
    padded = np.pad(norm, half, mode="edge")
    for c in centres[: max(1, n)]:
        win = padded[c[0] : c[0] + size_vox, c[1] : c[1] + size_vox, c[2] : c[2] + size_vox]
        yield np.ascontiguousarray(win)[None, None]


def synthetic_head_hu(
    shape_vox: tuple[int, int, int] = (150, 190, 160),
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    *,
    haemorrhage_ml: float = 30.0,
    haemorrhage_hu: float = 70.0,
    seed: int = 0,
) -> np.ndarray:
    """A crude analytic head in HU, float32 [z, y, x] (``spacing_mm`` is z, y, x):
    air, 5 mm scalp (40 HU), 7 mm skull (1200 HU), brain (35 HU), two ventricles
    (5 HU) and a spherical haemorrhage of ``haemorrhage_ml`` in the right
    hemisphere. For int8 calibration, tests and benchmarks."""
    rng = np.random.default_rng(seed)
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(shape_vox, spacing_mm)]
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    semi = np.array([75.0, 95.0, 78.0])  # outer head semi-axes (z, y, x), mm

    def inside(shrink_mm: float, centre=(0.0, 0.0, 0.0), semi_mm=None) -> np.ndarray:
        a = (semi if semi_mm is None else np.asarray(semi_mm)) - shrink_mm
        return ((z - centre[0]) / a[0]) ** 2 + ((y - centre[1]) / a[1]) ** 2 + ((x - centre[2]) / a[2]) ** 2 <= 1.0

    hu = np.full(tuple(shape_vox), -1000.0, dtype=np.float32)
    hu[inside(0.0)] = 40.0
    hu[inside(5.0)] = 1200.0
    hu[inside(12.0)] = 35.0
    for cx in (-8.0, 8.0):
        hu[inside(0.0, (5.0, 0.0, cx), (12.0, 25.0, 5.0))] = 5.0
    if haemorrhage_ml > 0:
        r = (3.0 * haemorrhage_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        c = (10.0, 10.0, -35.0)
        hu[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r] = haemorrhage_hu
    hu += rng.normal(0.0, 4.0, hu.shape).astype(np.float32)
    return hu


def int8_nodes(model) -> list[str]:
    """The convolutions worth quantising: the full-resolution pathway's 3x3x3 layers
    2..8 (most of the compute) and the 1x1x1 head. The first layer (one input
    channel) and the x3/x5 pathways stay fp32: quantising every Conv flipped ~20%
    of the labels of a lesion window, this selection ~0.5%. Node names come from
    the state-dict keys (``path(1, 1, 1)2.path.N...``, ``fully_connected.N...``);
    without them every Conv with more than one input channel is chosen."""
    from onnx import numpy_helper

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    chosen = [
        n.name for n in convs
        if ("(1, 1, 1)" in n.name and ".path.1." not in n.name) or n.name.startswith("fully_connected")
    ]
    if chosen:
        return chosen
    inits = {t.name: t for t in model.graph.initializer}
    return [n.name for n in convs if n.input[1] in inits and numpy_helper.to_array(inits[n.input[1]]).shape[1] > 1]


def quantize_member(onnx_path: Path, out_path: Path | None = None, *, n_calibration: int = 2) -> Path:
    """Write a static int8 copy of one member: QDQ, per-channel int8 weights, uint8
    activations, MinMax calibration on :func:`calibration_windows`, only the
    convolutions of :func:`int8_nodes` quantised."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path = Path(onnx_path)
    out_path = Path(out_path) if out_path else quantized_path(onnx_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    class _Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self._it = ({name: w} for w in calibration_windows(n_calibration))

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
            op_types_to_quantize=["Conv"], nodes_to_quantize=int8_nodes(onnx.load(str(pre))),
        )
        os.replace(partial, out_path) if _same_fs(partial, out_path) else out_path.write_bytes(partial.read_bytes())
    return out_path


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return os.stat(a.parent).st_dev == os.stat(b.parent).st_dev
    except OSError:
        return False


def segment(
    volume: Volume,
    members: Sequence[Path | str],
    *,
    class_names: Sequence[str],
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    fast: bool = False,
    precision: str = "fp32",
    **options,
) -> Segmentation:
    """One-shot convenience: build an :class:`Ensemble` and segment ``volume``.

    ``options`` go to :meth:`Ensemble.segment` (tile_vox, skip, cascade_threshold,
    members, crop_to_head) or to the constructor (spacing_mm, window_hu,
    model_id, model_version).
    """
    ctor_keys = {"spacing_mm", "window_hu", "model_id", "model_version"}
    ctor = {k: options.pop(k) for k in list(options) if k in ctor_keys}
    ensemble = Ensemble(
        [members[0]] if fast else members, class_names=class_names, threads=threads,
        providers=providers, precision=precision, **ctor,
    )
    return ensemble.segment(volume, fast=fast, **options)
