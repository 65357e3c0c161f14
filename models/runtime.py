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
- **Tile skipping** (``skip="intracranial"``, default; ``"tissue"``): only the
  voxels of the head box with HU strictly inside the window (-15..100 HU, soft
  tissue; "intracranial": at least 8 dilation steps from the outside air, so the
  scalp is dropped) need computing; the rest is background with probability 1.
  Air and pure bone are not worth computing. With no ``tile_vox`` imposed, the
  tiles are :func:`plan_cover`'s: non-overlapping aligned boxes of sides up to the
  largest tile candidate (90) and input windows of at most 140^3 voxels (memory,
  :data:`DEFAULT_MAX_WINDOW_VOXELS`) that cover every such voxel once, split where
  the card's cost model says that saves computation (on the real GE head: 3.05 M
  output voxels for 1.64 M intracranial ones, 12% fewer estimated
  multiply-accumulates than the best fixed grid of bricks). With ``tile_vox``
  (or ``skip="none"``) a fixed grid of ``tile_vox``^3 bricks, each shrunk to the
  aligned box of its voxels (:func:`plan_tiles`).
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
- **Precision.** ``precision="fp32"`` (default) runs the ONNX files as given.
  ``"int8"`` runs int8 copies of every member, made once and cached next to the
  model (or in the user cache): with OpenVINO and NNCF installed (the ``quantize``
  extra), NNCF post-training quantisation of the OpenVINO model read from the ONNX
  (:func:`quantize_member_nncf`: mixed preset, min/max activation ranges, 10
  calibration windows of synthetic and phantom heads, none of them an agreement
  input; the operations the card's ``runtime.int8.openvino_nncf`` names stay fp32,
  for BLAST-CT the x3 and x5 pathways), run on OpenVINO compiled per input shape
  (models/backends.py); otherwise onnxruntime's static QDQ of the convolutions the
  card names (:func:`quantize_member`, :func:`select_int8_nodes`). ``"int8-member1"``:
  member 1 int8 (it runs on every tile and picks where the others run), the others
  fp32. Measured (``scripts/bench_model.py --agreement-int8``, the card's
  ``runtime.int8``): NNCF int8 ran member 1 on a 90^3 tile in ~0.3 of fp32's time
  (OpenVINO, measured under load), but with every member int8 the cascade misses
  the criteria (oedema Dice 0.89-0.95 against fp32 on the phantoms and the GE head),
  and fast mode int8 differs from fast fp32 as much; with member 1 alone int8 the
  cascade met them on the three phantoms but narrowly not on the GE head (oedema
  Dice 0.979, blood +3.6% of 0.06 mL). fp32 stays the default.
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

#: "int8-member1": member 1 int8 (it runs on every tile and picks where the others run), the others fp32
PRECISIONS = ("fp32", "int8", "int8-member1")
DEFAULT_CASCADE_THRESHOLD = 0.3  # largest threshold that met the agreement criteria on all inputs (scripts/bench_model.py --agreement)
SKIP_RULES = ("intracranial", "tissue", "none")
DEFAULT_SKIP = "intracranial"
#: Largest input window (voxels) of one tile in the default plan (:func:`plan_cover`): a memory bound.
#: OpenVINO's peak RSS for DeepMedic member 1 on one window, measured 2026-12-01 (fresh process,
#: 2 threads): 125^3 0.51 GB, 140^3 0.86 GB, 155^3 1.42 GB, 170^3 2.27 GB, 200^3 5.0 GB. 140^3 is
#: the window of the 60^3 tiles the fixed grid already chose on the phantoms (fast mode, DICOM to
#: labels, 1.58 GB there). GE head, fast, DICOM to labels: 1.36 GB with the previous 45^3 grid,
#: 1.67 GB with this bound; the whole ``ictus triage --fast`` 1.82 GB (the target is 2 GB).
#: Without the bound the GE head's plan costs 3.6% less but holds 170 x 170 x 155 windows.
DEFAULT_MAX_WINDOW_VOXELS = 140**3


@dataclass(frozen=True)
class TilingPlan:
    """Output bricks on the full model grid: (start z/y/x, size z/y/x) each, sizes and
    starts multiples of the geometry's ``tile_multiple_vox``.

    ``planner``: "grid" (:func:`plan_tiles`: a grid of ``tile_vox``^3 bricks, each
    shrunk to its mask; ``n_candidates`` bricks considered) or "cover"
    (:func:`plan_cover`: non-overlapping boxes of sides up to ``tile_vox`` and input
    windows of at most ``max_window_voxels`` covering the mask; ``n_candidates`` is the
    number of ``tile_vox``^3 grid bricks over the region, for comparison)."""

    tile_vox: int
    tiles: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...]
    n_candidates: int
    geometry: TileGeometry
    planner: str = "grid"
    max_window_voxels: int | None = None

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
    ``precision``: "fp32" (the files as given), "int8" (cached int8 copies of every
    member: NNCF's on OpenVINO, :func:`quantize_member_nncf`, ``int8_ignored_patterns``;
    else onnxruntime's, :func:`quantize_member`, ``int8_conv_patterns``; both from the
    card's ``runtime.int8``) or "int8-member1" (member 1 int8, the others fp32).
    ``backend``: "auto", "openvino" or "onnxruntime".
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
        int8_ignored_patterns: Sequence[str] = (),
    ) -> None:
        pull = f"run `ictus models pull {model_id or DEFAULT_MODEL}`"
        if not members:
            raise ModelError(f"no ensemble members were given; {pull}")
        if precision not in PRECISIONS:
            raise ModelError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        self.member_paths = [Path(m) for m in members]
        for path in self.member_paths:
            if not path.is_file():
                raise ModelError(f"model file {path} is missing; {pull}")
        self.class_names = tuple(class_names)
        self.geometry = geometry
        self.int8_conv_patterns = tuple(int8_conv_patterns)
        self.int8_ignored_patterns = tuple(int8_ignored_patterns)
        self.spacing_mm = tuple(float(s) for s in spacing_mm)
        self.window_hu = (float(window_hu[0]), float(window_hu[1]))
        self.precision = precision
        self.model_id = model_id
        self.model_version = model_version
        self.providers = available_providers(providers)
        self.backend = choose_backend(backend, providers=self.providers, precision="fp32" if precision == "fp32" else "int8")
        self.backend_info = backend_info(self.backend, self.providers)
        self.threads = threads
        self._sessions: list[Runner | None] = [None] * len(self.member_paths)
        #: which members run int8: all ("int8"), member 1 only ("int8-member1"), none ("fp32")
        self.int8_members = tuple(precision == "int8" or (precision == "int8-member1" and i == 0)
                                  for i in range(len(self.member_paths)))
        self._run_paths = [
            p if not int8 else
            nncf_quantized_path(p, self.int8_ignored_patterns) if self.backend == "openvino"  # NNCF int8 IR
            else quantized_path(p)  # onnxruntime's static QDQ int8, the fallback
            for p, int8 in zip(self.member_paths, self.int8_members)
        ]

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
            int8_ignored_patterns=tuple(str(p) for p in (int8.get("openvino_nncf") or {}).get("ignored_scope_patterns", ())),
            **options,
        )

    # -- sessions ---------------------------------------------------------
    def session(self, index: int) -> Runner:
        """The loaded member ``index`` (created on first use)."""
        if self._sessions[index] is None:
            path = self._run_paths[index]
            int8 = self.int8_members[index]
            nncf_ir = int8 and self.backend == "openvino"
            if nncf_ir and not path.is_file():
                quantize_member_nncf(self.member_paths[index], path, geometry=self.geometry, window_hu=self.window_hu,
                                     spacing_mm=self.spacing_mm,  # type: ignore[arg-type]
                                     ignored_patterns=self.int8_ignored_patterns)
            elif int8 and not path.is_file():
                quantize_member(self.member_paths[index], path, geometry=self.geometry, window_hu=self.window_hu,
                                conv_name_patterns=self.int8_conv_patterns)
            try:
                if nncf_ir:  # an OpenVINO IR made from the denormal-free graph, compiled per shape
                    self._sessions[index] = load_runner(self.backend, path, threads=self.threads, static_shapes=True)
                else:
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
        ``skip``: "intracranial" (default), "tissue" (compute only the aligned boxes
        covering those voxels, see :func:`plan_cover`) or "none" (every head-box tile).
        ``tile_vox``: impose a fixed grid of bricks of that size (:func:`plan_tiles`).
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
                                   geometry=self.geometry, planner=stats["tile_planner"],
                                   max_window_voxels=stats["max_window_voxels"]),
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
        needed = needed_voxels(model_input)
        stats = {
            "tile_vox": plan.tile_vox,
            "tile_planner": plan.planner,
            "max_window_voxels": plan.max_window_voxels,
            "tiles_candidate": plan.n_candidates,
            "tiles_computed": len(plan.tiles),
            "output_voxels_per_member": plan.output_voxels,
            "needed_voxels": needed,
            "computed_over_needed": round(plan.output_voxels / needed, 3) if needed else None,
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
        labels = argmax_classes(probabilities)
        agreement = to_original_grid(
            agreement_box.astype(np.float32), model_input, default=1.0,
            interpolator=sitk.sitkNearestNeighbor, dtype=np.float16,
        )
        return probabilities, labels, agreement


def argmax_classes(probabilities: np.ndarray) -> np.ndarray:
    """``probabilities.argmax(axis=0)`` as uint8 (first class wins ties, as argmax), in one pass
    per class: about 5x faster than numpy's argmax over the strided class axis."""
    labels = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    best = probabilities[0].copy()
    for c in range(1, probabilities.shape[0]):
        higher = probabilities[c] > best
        labels[higher] = c
        np.maximum(best, probabilities[c], out=best)
    return labels


def describe_method(
    fast: bool, n_members: int, cascade_threshold: float | None, skip: str, tile_vox: int, precision: str,
    *, geometry: TileGeometry, planner: str = "grid", max_window_voxels: int | None = None,
) -> str:
    """One line saying exactly what was computed (for findings provenance); ``planner``
    is the :class:`TilingPlan`'s ("grid" or "cover")."""
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
        if planner == "cover":
            side = round(max_window_voxels ** (1 / 3)) if max_window_voxels else 0
            shown = f"{side}^3" if side**3 == max_window_voxels else str(max_window_voxels)
            bound = f" and input windows of at most {shown} voxels" if max_window_voxels else ""
            where = (
                f"non-overlapping {aligned} boxes of sides up to {tile_vox}{bound} covering the head box's {what}, "
                "split where the card's cost model says it saves computation"
            )
        else:
            where = (
                f"head-box tiles of up to {tile_vox}^3 holding {what}, "
                f"each shrunk to the {aligned} box of that tissue"
            )
    else:
        where = f"all head-box tiles of {tile_vox}^3"
    return f"{ens}; {where}; {geometry.context_vox}-voxel context; {precision}"


def plan_tiles(model_input: ModelInput, tile_vox: int, geometry: TileGeometry, *, skip: str = DEFAULT_SKIP) -> TilingPlan:
    """Bricks of at most ``tile_vox``^3 over the model input's region (a fixed grid). With
    ``skip="tissue"`` or ``"intracranial"`` a brick without a voxel of that mask is
    dropped and each other brick shrinks to the aligned bounding box of those voxels."""
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
    """The runtime's plan when no tile size is imposed: for ``skip`` "intracranial" or
    "tissue" the :func:`plan_cover` of the mask (tiles of sides up to the largest
    candidate), or the cheapest fixed-grid plan if one were cheaper (a safeguard: on
    the heads measured the cover plan always wins); for "none" the fixed-grid plan
    with the fewest estimated multiply-accumulates among ``candidates`` (default:
    the geometry's ``tile_candidates_vox``)."""
    sizes = tuple(candidates or geometry.tile_candidates_vox)
    plans = [plan_tiles(model_input, t, geometry, skip=skip) for t in sizes]
    if skip != "none":
        plans.insert(0, plan_cover(model_input, geometry, skip=skip, max_tile_vox=max(sizes)))
    return min(plans, key=lambda p: p.estimated_gmac)  # the first of equals: the cover plan


def skip_mask(model_input: ModelInput, skip: str) -> np.ndarray:
    """The voxels of the box a skip rule keeps: ``deep`` for "intracranial", ``tissue`` for "tissue"."""
    if skip not in SKIP_RULES or skip == "none":
        raise InvalidInputError(f"skip rule {skip!r} has no mask; use intracranial or tissue")
    return model_input.deep if skip == "intracranial" else model_input.tissue


def region_slices(model_input: ModelInput) -> tuple[slice, slice, slice]:
    """The output region (head box) as slices into the model box."""
    return tuple(slice(a - b, c - b) for a, c, b in zip(  # type: ignore[return-value]
        model_input.region_start, model_input.region_stop, model_input.box_start))


def needed_voxels(model_input: ModelInput) -> int:
    """Intracranial voxels (``deep``) in the output region: what the model needs to
    compute at least (the floor of ``bench_model.py --floor``)."""
    return int(np.count_nonzero(model_input.deep[region_slices(model_input)]))


def plan_cover(
    model_input: ModelInput, geometry: TileGeometry, *, skip: str = DEFAULT_SKIP, max_tile_vox: int | None = None,
    max_window_voxels: int | None = DEFAULT_MAX_WINDOW_VOXELS, lookahead: int = 1, beam: int = 4,
) -> TilingPlan:
    """Non-overlapping aligned boxes covering every voxel of the skip rule's mask in
    the output region (each voxel in exactly one box), chosen to minimise the
    card's estimated cost (:meth:`TileGeometry.estimated_gmac`, which includes the
    context overhead, so that a large box is cheaper per voxel than small ones).

    Greedy guillotine splitting on the grid of ``tile_multiple_vox``^3 cells (a box
    start/size is a multiple of the alignment, so the cells are exact): start from
    the aligned bounding box of the mask; for a box, try every split plane between
    cells along each axis, shrink each half to the aligned bounding box of its mask
    cells, and split where the halves cost less than the box (each half valued at
    the best of itself or its best split, ``lookahead`` levels deep, for the
    ``beam`` splits that look best without lookahead); a box with a side above
    ``max_tile_vox`` (default: the largest tile candidate), or whose input window
    (``size + 2 * context_vox`` per axis) holds more than ``max_window_voxels``
    voxels (a memory bound, :data:`DEFAULT_MAX_WINDOW_VOXELS`; None: no bound), is
    always split. The halves' boxes for every plane come from cumulative
    projections of the box's cells (a few numpy calls per box and axis), so a plan
    takes ~0.1-0.3 s. ``skip="none"`` gives the fixed grid (:func:`plan_tiles`) of
    ``max_tile_vox``."""
    phase = geometry.tile_multiple_vox
    max_vox = int(max_tile_vox or max(geometry.tile_candidates_vox))
    if max_vox <= 0 or max_vox % phase:
        raise InvalidInputError(f"largest tile {max_vox} is not a positive multiple of {phase}")
    if skip not in SKIP_RULES:
        raise InvalidInputError(f"unknown skip rule {skip!r}; use one of {', '.join(SKIP_RULES)}")
    smallest_window = geometry.window_vox(phase) ** 3
    if max_window_voxels is not None and max_window_voxels < smallest_window:
        raise InvalidInputError(f"max_window_voxels {max_window_voxels} is below one {phase}^3 tile's window "
                                f"({smallest_window})")
    if skip == "none":
        return plan_tiles(model_input, max_vox, geometry, skip="none")
    region = skip_mask(model_input, skip)[region_slices(model_input)]
    extent = region.shape
    n_cells = [-(-n // phase) for n in extent]
    padded = np.zeros([c * phase for c in n_cells], dtype=bool)
    padded[tuple(slice(0, n) for n in extent)] = region
    occupied = np.asarray(padded.reshape(n_cells[0], phase, n_cells[1], phase, n_cells[2], phase).any(axis=(1, 3, 5)))
    n_candidates = int(np.prod([-(-n // max_vox) for n in extent]))
    cost_cache: dict[tuple[int, ...], float] = {}

    def cost(cells: tuple[int, ...]) -> float:
        if cells not in cost_cache:
            cost_cache[cells] = geometry.estimated_gmac(tuple(c * phase for c in cells))
        return cost_cache[cells]

    def fits(cells: tuple[int, ...]) -> bool:
        return max(cells) * phase <= max_vox and (
            max_window_voxels is None or int(np.prod([geometry.window_vox(c * phase) for c in cells])) <= max_window_voxels)

    boxes = _CoverPlanner(occupied, fits, cost, lookahead=lookahead, beam=beam).plan()
    tiles = tuple(
        (tuple(r + phase * a for r, a in zip(model_input.region_start, lo)), tuple(phase * (b - a) for a, b in zip(lo, hi)))
        for lo, hi in boxes
    )
    return TilingPlan(tile_vox=max_vox, tiles=tiles, n_candidates=n_candidates, geometry=geometry,  # type: ignore[arg-type]
                      planner="cover", max_window_voxels=max_window_voxels)


_Box = tuple[tuple[int, int, int], tuple[int, int, int]]  # (lo, hi) in cells, hi exclusive


class _CoverPlanner:
    """The search of :func:`plan_cover` on a boolean grid of occupied cells; every box
    it handles is shrunk (its first and last cell layers along each axis are occupied)."""

    def __init__(self, occupied: np.ndarray, fits, cost, *, lookahead: int, beam: int) -> None:
        self.occ = occupied
        self.fits_sides = fits  # (sides in cells) -> whether one tile may have them; (1, 1, 1) must fit
        self.cost = cost
        self.lookahead = max(0, int(lookahead))
        self.beam = max(1, int(beam))
        self._splits: dict[_Box, list[tuple[_Box, _Box]]] = {}
        self._value: dict[tuple[_Box, int], float] = {}

    def plan(self) -> list[_Box]:
        root = self.shrink(((0, 0, 0), self.occ.shape))
        out: list[_Box] = []
        stack = [root] if root is not None else []
        while stack:
            box = stack.pop()
            own = self.cost(self.sides(box)) if self.fits(box) else float("inf")
            splits = self.splits(box)
            if not splits:  # one cell layer per axis: fits
                out.append(box)
                continue
            quick = sorted(splits, key=lambda ab: self.estimate(ab[0]) + self.estimate(ab[1]))[: self.beam]
            best = min(quick, key=lambda ab: self.value(ab[0], self.lookahead) + self.value(ab[1], self.lookahead))
            if own <= self.value(best[0], self.lookahead) + self.value(best[1], self.lookahead):
                out.append(box)
            else:
                stack.extend(best)
        return sorted(out)

    @staticmethod
    def sides(box: _Box) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(*box))  # type: ignore[return-value]

    def fits(self, box: _Box) -> bool:
        return self.fits_sides(self.sides(box))

    def estimate(self, box: _Box) -> float:
        """The box's cost, or for a box too large for one tile, that of an even split
        of it into pieces that fit (its longest piece side halved, then thirded...,
        until they fit; an upper bound of its best cover)."""
        sides = self.sides(box)
        if self.fits_sides(sides):
            return self.cost(sides)
        pieces = [1, 1, 1]
        piece = tuple(sides)
        while not self.fits_sides(piece):
            axis = int(np.argmax(piece))
            pieces[axis] += 1
            piece = tuple(-(-s // k) for s, k in zip(sides, pieces))
        return float(np.prod(pieces)) * self.cost(piece)

    def value(self, box: _Box, depth: int) -> float:
        """The best of the box's own cost and its splits, ``depth`` levels deep."""
        if depth <= 0:
            return self.estimate(box)
        key = (box, depth)
        if key not in self._value:
            best = self.cost(self.sides(box)) if self.fits(box) else float("inf")
            for a, b in self.splits(box):
                best = min(best, self.value(a, depth - 1) + self.value(b, depth - 1))
            self._value[key] = best if best < float("inf") else self.estimate(box)
        return self._value[key]

    def shrink(self, box: _Box) -> _Box | None:
        """The bounding box of the occupied cells inside ``box`` (None when there are none)."""
        lo, hi = box
        found = aligned_box(self.occ[tuple(slice(a, b) for a, b in zip(lo, hi))], lo, 1)
        if found is None:
            return None
        start, size = found
        return start, tuple(a + n for a, n in zip(start, size))  # type: ignore[return-value]

    def splits(self, box: _Box) -> list[tuple[_Box, _Box]]:
        """(lower half, upper half), each shrunk, for every plane between cells along each
        axis, from cumulative projections: the lower half of plane p holds the cell
        layers before p, so its extent on another axis is the running OR of the layers'
        projections; the upper half's is the same from the far end."""
        if box in self._splits:
            return self._splits[box]
        lo, hi = box
        sub = np.asarray(self.occ[tuple(slice(a, b) for a, b in zip(lo, hi))])
        out: list[tuple[_Box, _Box]] = []
        for axis in range(3):
            n = sub.shape[axis]
            if n < 2:
                continue
            others = [a for a in range(3) if a != axis]
            layers = np.moveaxis(sub, axis, 0)  # [n, other0, other1]
            proj: list[np.ndarray] = [np.asarray(layers.any(axis=2)), np.asarray(layers.any(axis=1))]  # per layer, onto each other axis
            occupied = np.asarray(proj[0].any(axis=1))
            index = np.arange(n)
            last_before = np.maximum.accumulate(np.where(occupied, index, -1))  # lower half ends after it
            first_after = np.minimum.accumulate(np.where(occupied, index, n)[::-1])[::-1]  # upper half starts there
            ext_lo, ext_hi = [], []  # per other axis: (lo, hi) of the lower halves and of the upper halves
            for pr in proj:
                m = pr.shape[1]
                fwd = np.logical_or.accumulate(pr, axis=0)
                bwd = np.logical_or.accumulate(pr[::-1], axis=0)[::-1]
                ext_lo.append((fwd.argmax(axis=1), m - fwd[:, ::-1].argmax(axis=1)))
                ext_hi.append((bwd.argmax(axis=1), m - bwd[:, ::-1].argmax(axis=1)))
            for p in range(1, n):
                a_lo, a_hi, b_lo, b_hi = list(lo), list(hi), list(lo), list(hi)
                a_hi[axis] = lo[axis] + int(last_before[p - 1]) + 1
                b_lo[axis] = lo[axis] + int(first_after[p])
                for k, other in enumerate(others):
                    a_lo[other] = lo[other] + int(ext_lo[k][0][p - 1])
                    a_hi[other] = lo[other] + int(ext_lo[k][1][p - 1])
                    b_lo[other] = lo[other] + int(ext_hi[k][0][p])
                    b_hi[other] = lo[other] + int(ext_hi[k][1][p])
                out.append(((tuple(a_lo), tuple(a_hi)), (tuple(b_lo), tuple(b_hi))))  # type: ignore[arg-type]
        self._splits[box] = out
        return out


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


#: NNCF post-training quantisation settings of the OpenVINO int8 members (part of their cache key).
#: MIXED preset (symmetric int8 weights per channel, asymmetric activations); activation ranges
#: from the calibration windows' plain min/max (NNCF's default, a mean of per-window extremes,
#: clipped ranges: member 1's foreground labels on lesion windows agreed 0.80-0.91 with fp32, against
#: 0.94-0.95 with min/max, every layer int8).
NNCF_SETTINGS = {"preset": "mixed", "activations_range": "minmax", "calibration": "synthetic4+phantom3x2@input_size", "v": 1}


def nncf_quantized_path(onnx_path: Path, ignored_patterns: Sequence[str] = ()) -> Path:
    """Where the NNCF int8 OpenVINO IR of ``onnx_path`` is cached (``.xml`` plus ``.bin``), as
    :func:`quantized_path` (next to it when writable, else the user cache); the name holds a
    digest of the settings (:data:`NNCF_SETTINGS`, ``ignored_patterns``), so that a change of
    either makes a new copy."""
    import json

    key = json.dumps({"settings": NNCF_SETTINGS, "ignored": list(ignored_patterns)}, sort_keys=True)
    tag = hashlib.sha256(key.encode()).hexdigest()[:8]
    onnx_path = Path(onnx_path)
    beside = onnx_path.with_name(f"{onnx_path.stem}.int8-nncf-{tag}.xml")
    if beside.exists() or os.access(onnx_path.parent, os.W_OK):
        return beside
    digest = hashlib.sha256(str(onnx_path.resolve()).encode()).hexdigest()[:12]
    return user_cache_dir("int8") / f"{onnx_path.stem}.{digest}.int8-nncf-{tag}.xml"


#: Calibration heads for :func:`phantom_calibration_windows`: unlike the benchmark's and the tests'
#: phantoms (30 mL, 512x512x40, seed 0), so that no agreement input is a calibration input.
_CALIBRATION_PHANTOMS = (
    dict(haemorrhage="IPH", haemorrhage_volume_ml=12.0, haemorrhage_side="left", oedema_rim_mm=3.0, seed=7,
         noise_hu=6.0, matrix=256, pixel_spacing_mm=0.9, slice_thickness_mm=2.5),
    dict(haemorrhage="IVH", haemorrhage_volume_ml=8.0, seed=11, matrix=256, pixel_spacing_mm=0.9, head_yaw_deg=6.0),
    dict(haemorrhage="EAH", haemorrhage_volume_ml=15.0, seed=13, matrix=256, pixel_spacing_mm=0.9,
         patient_age_years=80.0),
)


def phantom_calibration_windows(
    *, geometry: TileGeometry, window_hu: tuple[float, float], spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Iterator[np.ndarray]:
    """Calibration windows [1, 1, n, n, n] (n: the geometry's ``input_size_vox``) as the runtime
    feeds them: three phantom studies (:mod:`ictus.imaging.phantom`: an IPH with oedema, an
    IVH, an EAH in an older head; see ``_CALIBRATION_PHANTOMS``) preprocessed like a study and
    cut by :func:`extract_window`, one centred on the intracranial tissue, one on the blood."""
    from ictus.imaging.phantom import PhantomSpec, phantom_volume

    out_vox = geometry.input_size_vox - 2 * geometry.context_vox
    lo, hi = float(window_hu[0]), float(window_hu[1])
    blood_lo = (2.0 * 50.0 - lo - hi) / (hi - lo)  # >= 50 HU, below the window's top (bone)
    for spec in _CALIBRATION_PHANTOMS:
        mi = preprocess(phantom_volume(PhantomSpec(**spec)), spacing_mm=spacing_mm, window_hu=window_hu,  # type: ignore[arg-type]
                        tile_vox=geometry.tile_multiple_vox, context_vox=geometry.context_vox,
                        phase_vox=geometry.tile_multiple_vox)
        blood = mi.deep & (mi.array >= blood_lo) & (mi.array < 0.99)
        for mask in (mi.deep, blood):
            if not mask.any():
                continue
            centre = np.argwhere(mask).mean(axis=0)
            start = [int(round(c)) + b - out_vox // 2 for c, b in zip(centre, mi.box_start)]
            yield extract_window(mi, start, (out_vox,) * 3, geometry)[None, None]


def quantize_member_nncf(
    onnx_path: Path,
    out_path: Path | None = None,
    *,
    geometry: TileGeometry,
    window_hu: tuple[float, float],
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ignored_patterns: Sequence[str] = (),
) -> Path:
    """Write an int8 OpenVINO IR of one member with NNCF post-training quantisation
    (:data:`NNCF_SETTINGS`), run by OpenVINO (models/backends.py). The graph is read from the
    ONNX file with denormals flushed; calibration: the 4 windows of :func:`calibration_windows`
    and the 6 of :func:`phantom_calibration_windows`. Operations whose names match
    ``ignored_patterns`` (regular expressions: the card's ``runtime.int8.openvino_nncf.
    ignored_scope_patterns``, for BLAST-CT the two low-resolution pathways) stay fp32.
    Needs ``nncf`` (the ``quantize`` extra)."""
    import tempfile

    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    except ImportError as exc:
        raise ModelError("int8 on OpenVINO needs NNCF: pip install 'ictus[quantize]' (or nncf), "
                         "or use --backend onnxruntime") from exc
    import openvino as ov

    from ictus.imaging.atomic import move_file

    onnx_path = Path(onnx_path)
    out_path = Path(out_path) if out_path else nncf_quantized_path(onnx_path, ignored_patterns)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    windows = list(calibration_windows(4, size_vox=geometry.input_size_vox, window_hu=window_hu))
    windows += list(phantom_calibration_windows(geometry=geometry, window_hu=window_hu, spacing_mm=spacing_mm))
    log.info("quantising %s to int8 with NNCF (one-off, %d calibration windows)", onnx_path.name, len(windows))
    nncf.set_log_level(logging.WARNING)  # not its per-node progress lines
    model = ov.Core().read_model(load_without_denormals(onnx_path))
    ignored = nncf.IgnoredScope(patterns=list(ignored_patterns), validate=False) if ignored_patterns else None
    quantized = nncf.quantize(
        model, nncf.Dataset(windows), subset_size=len(windows), preset=nncf.QuantizationPreset.MIXED,
        ignored_scope=ignored, advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX),
    )
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "q.xml"
        ov.save_model(quantized, str(xml), compress_to_fp16=False)
        move_file(xml.with_suffix(".bin"), out_path.with_suffix(".bin"))  # the weights first: the .xml marks it done
        move_file(xml, out_path)
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
    model_id, model_version, int8_conv_patterns, int8_ignored_patterns, backend).
    """
    ctor_keys = {"spacing_mm", "window_hu", "model_id", "model_version", "int8_conv_patterns", "backend",
                 "int8_ignored_patterns"}
    ctor = {k: options.pop(k) for k in list(options) if k in ctor_keys}
    ensemble = Ensemble(
        [members[0]] if fast else members, class_names=class_names, geometry=geometry, threads=threads,
        providers=providers, precision=precision, **ctor,
    )
    return ensemble.segment(volume, fast=fast, **options)
