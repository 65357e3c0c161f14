"""Rendering: the analytic phantom sampled on its written grid (partial volume, metal streaks, noise).

:func:`render_phantom` gives the in-memory study, :func:`sample_phantom` the
same object on any grid, :func:`phantom_volume` / :func:`phantom_with_truth` a
:class:`~ictus.imaging.volume.Volume` (with its truth apart), and
:func:`head_hu` a plain HU array of a head (calibration, benchmarks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ictus.imaging.errors import InvalidInputError
from ictus.imaging.phantom.anatomy import _Anatomy
from ictus.imaging.phantom.lesions import _evaluate, build_model
from ictus.imaging.phantom.spec import (
    _HU_MAX,
    _HU_MIN,
    LABELS,
    PhantomGeometry,
    PhantomSpec,
    _pose,
    head_rotation,
    phantom_geometry,
)
from ictus.imaging.phantom.truth import PhantomTruth, ground_truth
from ictus.imaging.volume import Acquisition, Volume, volume_from_array


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PhantomRender:
    """A rendered phantom on its written grid; arrays are indexed [slice, row, column].

    ``hu``: float32 HU with partial volume and noise; ``labels``: uint8
    BLAST-CT labels (majority of the sub-samples across the slice);
    ``tissue``: uint8 tissue codes (``TISSUES``) at the slice centre.
    """

    spec: PhantomSpec
    hu: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    geometry: PhantomGeometry
    fit_info: Mapping[str, Any] = field(default_factory=dict)
    model: Any = None
    label_fraction_voxels: Mapping[str, float] = field(default_factory=dict)
    label_fractions_per_slice: Any = None  # [slice, label value] sub-sample fractions summed over pixels


def _slab_offsets(spec: PhantomSpec, geom: PhantomGeometry | None = None) -> np.ndarray:
    """Sub-sample offsets along the normal: [n_sub], or [slice, n_sub] for an irregular stack."""
    n = spec.partial_volume_samples
    unit = (np.arange(n) + 0.5) / n - 0.5
    if geom is not None and not geom.is_regular:
        return np.array([unit * geom.thickness_of(k) for k in range(geom.n_slices)])
    return unit * spec.slice_thickness_mm


def _sample_stack(anat: _Anatomy, geom: PhantomGeometry, offsets: np.ndarray, normal: np.ndarray | None = None,
                  pose: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sample the model on the stack: (mean HU, majority label, centre tissue, per-slice label fractions).

    ``offsets`` are sub-sample positions along the normal, [n_sub] or [slice, n_sub].
    """
    H, W, n = geom.rows, geom.columns, geom.n_slices
    dr, dc = geom.pixel_spacing_mm
    rowd, cold = geom.row_direction, geom.column_direction
    nrm = geom.normal if normal is None else np.asarray(normal, dtype=float)
    hu = np.empty((n, H, W), dtype=np.float32)
    labels = np.zeros((n, H, W), dtype=np.uint8)
    tissue = np.zeros((n, H, W), dtype=np.uint8)
    j = np.arange(H, dtype=np.float64)
    i = np.arange(W, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=float)
    fractions = np.zeros((n, 8), dtype=np.float64)
    for kk, ipp in enumerate(geom.image_positions_patient):
        off = offsets[kk] if offsets.ndim == 2 else offsets
        centre_t = int(np.argmin(np.abs(off)))
        ipp_a = np.asarray(ipp, dtype=float)
        xs = ipp_a[0] + i * dc * rowd[0]
        # y, z of (offset t, row j); the row direction has no y/z component (tilt is about x)
        ys = ipp_a[1] + j[None, :] * dr * cold[1] + off[:, None] * nrm[1]
        zs = ipp_a[2] + j[None, :] * dr * cold[2] + off[:, None] * nrm[2]
        blk = _evaluate(anat, xs, ys, zs, pose)
        hu[kk] = blk.hu.mean(axis=0)
        tissue[kk] = blk.tissue[centre_t]
        if anat.haemorrhage is not None:
            labels[kk] = _majority(blk.label)
            fractions[kk] = np.bincount(blk.label.ravel(), minlength=8)[:8] / len(off)
    return hu, labels, tissue, fractions


def _majority(label: np.ndarray) -> np.ndarray:
    """Per-pixel majority label over axis 0 (background unless a class holds > half)."""
    out = np.zeros(label.shape[1:], dtype=np.uint8)
    if not label.any():
        return out
    n = label.shape[0]
    for value in np.unique(label):
        if value == 0:
            continue
        out[(label == value).sum(axis=0) * 2 > n] = value
    return out


def _add_metal_streaks(spec: PhantomSpec, anat: _Anatomy, geom: PhantomGeometry, hu: np.ndarray) -> dict[str, Any]:
    """Add streaks radiating from the metal clip to the slices that contain it (in place); describe them."""
    cap = anat.metal
    assert cap is not None  # only called when the phantom has a metal clip
    axis = np.linspace(0.0, 1.0, 41)[:, None]
    pts_head = np.array(cap.a) + axis * (np.array(cap.b) - np.array(cap.a))
    pts = pts_head @ head_rotation(spec).T + np.array(spec.head_offset_mm)
    ipp = np.array(geom.image_positions_patient, dtype=float)
    rng = np.random.default_rng(spec.seed + 7919)
    n_lines = 18
    angles = rng.uniform(0.0, np.pi, n_lines)
    amplitudes = rng.uniform(60.0, 250.0, n_lines) * rng.choice([-1.0, 1.0], n_lines)
    amplitudes[:3] = -np.abs(amplitudes[:3]) - 100.0  # the strongest streaks are dark, as photon starvation makes them
    dr, dc = geom.pixel_spacing_mm
    jj, ii = np.meshgrid(np.arange(geom.rows) * dr, np.arange(geom.columns) * dc, indexing="ij")
    affected, peak = [], 0.0
    for k in range(geom.n_slices):
        along = (pts - ipp[k]) @ geom.normal
        inside = np.abs(along) <= geom.thickness_of(k) / 2 + cap.radius
        weight = float(inside.mean())
        if weight == 0:
            continue
        centre = pts[inside].mean(axis=0) - ipp[k]
        cx, cy = centre @ geom.row_direction, centre @ geom.column_direction
        dx, dy = ii - cx, jj - cy
        r = np.sqrt(dx * dx + dy * dy)
        streaks = np.zeros_like(r)
        for phi, amp in zip(angles, amplitudes):
            d = np.abs(dx * math.sin(phi) - dy * math.cos(phi))  # distance from the line through the metal
            streaks += amp * np.exp(-(d / 1.2) ** 2)
        streaks *= np.exp(-r / 70.0) * weight
        streaks += -250.0 * weight * np.exp(-r / 5.0) * (r > 2.5)  # dark band beside the metal
        hu[k] += streaks.astype(np.float32)
        affected.append(k)
        peak = max(peak, float(np.abs(streaks).max()))
    return {
        "object": "aneurysm clip at the right MCA bifurcation",
        "centre_lps_mm": [float(v) for v in pts.mean(axis=0)],
        "slices_affected": affected,
        "peak_streak_hu": peak,
    }


def _add_noise(hu: np.ndarray, sigma_hu: float, seed: int) -> np.ndarray:
    """Add in-plane correlated Gaussian noise of standard deviation ``sigma_hu``."""
    if sigma_hu <= 0:
        return hu
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise = gaussian_filter(noise, sigma=(0, 0.7, 0.7), mode="wrap")
    noise *= np.float32(sigma_hu / float(noise.std()))
    return hu + noise


def render_phantom(spec: PhantomSpec) -> PhantomRender:
    """Render a phantom in memory on its written grid (no DICOM): HU, labels, tissue, geometry."""
    spec = spec.validated()
    anat, info = build_model(spec)
    geom = phantom_geometry(spec)
    hu, labels, tissue, fractions = _sample_stack(anat, geom, _slab_offsets(spec, geom), pose=_pose(spec))
    info = dict(info)
    if anat.metal is not None:
        info["metal_artefact"] = _add_metal_streaks(spec, anat, geom, hu)
    hu = _add_noise(hu, spec.noise_hu, spec.seed)
    np.clip(hu, _HU_MIN, _HU_MAX, out=hu)
    points = info.pop("_points_head_mm", None)
    if points is not None:
        info["scanned_fraction"] = _scanned_fraction(spec, geom, points)
    return PhantomRender(spec=spec, hu=hu, labels=labels, tissue=tissue, geometry=geom, fit_info=info, model=anat,
                         label_fraction_voxels={name: float(fractions[:, v].sum()) for name, v in LABELS.items() if v},
                         label_fractions_per_slice=fractions)


def _scanned_fraction(spec: PhantomSpec, geom: PhantomGeometry, points_head_mm: np.ndarray) -> float:
    """Fraction of the haemorrhage's fine-grid points that lie inside the written slabs and FOV."""
    if not len(points_head_mm):
        return 0.0
    p = points_head_mm @ head_rotation(spec).T + np.array(spec.head_offset_mm)
    ipp = np.array(geom.image_positions_patient, dtype=float)
    planes = geom.normal_positions_mm
    along = (p - ipp[0]) @ geom.normal
    order = np.argsort(planes)
    pos = np.clip(np.searchsorted(planes[order], along), 1, len(planes) - 1) if len(planes) > 1 else np.zeros(len(p), int)
    lower, upper = order[np.maximum(pos - 1, 0)], order[pos]
    thick = np.array([geom.thickness_of(int(v)) for v in range(geom.n_slices)])
    in_lower = np.abs(along - planes[lower]) <= thick[lower] / 2 + 1e-6
    in_upper = np.abs(along - planes[upper]) <= thick[upper] / 2 + 1e-6
    k = np.where(in_lower, lower, upper)  # the slab that holds the point, if any
    in_slab = in_lower | in_upper
    rel = p - ipp[k]
    i = rel @ geom.row_direction / geom.pixel_spacing_mm[1]
    j = rel @ geom.column_direction / geom.pixel_spacing_mm[0]
    in_plane = (i >= -0.5) & (i <= geom.columns - 0.5) & (j >= -0.5) & (j <= geom.rows - 0.5)
    return float((in_plane & in_slab).mean())


def sample_phantom(render_or_spec: "PhantomRender | PhantomSpec", origin_lps_mm: Sequence[float],
                   spacing_mm: Sequence[float], size: Sequence[int], *,
                   direction: Sequence[float] | None = None, thickness_mm: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free (HU, labels) of the same analytic phantom on another grid.

    ``size`` and ``spacing_mm`` are (x, y, z) in SimpleITK order; arrays come
    back [k, j, i]. ``direction`` is a SimpleITK (row-major 3x3) direction;
    it may be any rotation about patient x (with flips), e.g. a tilt-corrected
    grid as dcm2niix writes it; default identity. ``thickness_mm`` averages
    sub-samples along the third axis (default: its spacing). Use it to compare
    a tilt-corrected or resampled volume with the truth.
    """
    if isinstance(render_or_spec, PhantomRender):
        spec, anat = render_or_spec.spec, render_or_spec.model
    else:
        spec = render_or_spec.validated()
        anat, _ = build_model(spec)
    d = np.eye(3) if direction is None else np.array(direction, dtype=float).reshape(3, 3)
    cols = [d[:, a] for a in range(3)]
    if abs(abs(cols[0][0]) - 1.0) > 1e-6 or abs(cols[1][0]) > 1e-6 or abs(cols[2][0]) > 1e-6:
        raise InvalidInputError("phantom: sample_phantom supports grids whose first axis is patient x "
                                "(rotations about x only); resample your volume onto such a grid")
    sx, sy, sz = (float(v) for v in spacing_mm)
    nx, ny, nz = (int(v) for v in size)
    origin = np.array(origin_lps_mm, dtype=float)
    geom = PhantomGeometry(
        rows=ny, columns=nx, pixel_spacing_mm=(sy, sx),
        image_orientation_patient=tuple(float(v) for v in (*cols[0], *cols[1])),  # type: ignore[arg-type]
        image_positions_patient=tuple((float(x), float(y), float(z))
                                      for x, y, z in (origin + kk * sz * cols[2] for kk in range(nz))),
        slice_thickness_mm=thickness_mm or sz, slice_spacing_mm=sz, table_increment_mm=sz, gantry_tilt_deg=0.0)
    n = spec.partial_volume_samples
    offsets = ((np.arange(n) + 0.5) / n - 0.5) * (thickness_mm or sz)
    hu, labels, _, _ = _sample_stack(anat, geom, offsets, normal=cols[2], pose=_pose(spec))
    return hu, labels


def phantom_volume(spec: PhantomSpec) -> Volume:
    """An untilted phantom as a :class:`Volume` (HU with noise), for tests of other modules.

    The volume holds no truth; :func:`phantom_with_truth` returns it alongside.
    """
    return _volume_of(_render_regular(spec))


def phantom_with_truth(spec: PhantomSpec) -> tuple[Volume, PhantomTruth]:
    """An untilted phantom as a :class:`Volume` and its :class:`PhantomTruth` (labels on the same grid + record)."""
    r = _render_regular(spec)
    return _volume_of(r), PhantomTruth(labels=r.labels, record=ground_truth(r))


def _render_regular(spec: PhantomSpec) -> PhantomRender:
    spec = spec.validated()
    if spec.gantry_tilt_deg != 0 or spec.slice_blocks or spec.gap_after_slice is not None:
        raise InvalidInputError("phantom: phantom_volume needs a regular untilted stack; "
                                "write DICOM for tilted, variable-spacing or gapped phantoms")
    return render_phantom(spec)


def _volume_of(r: PhantomRender) -> Volume:
    """The render as a Volume, with the acquisition facts its DICOM headers would carry."""
    spec, g = r.spec, r.geometry
    acquisition = Acquisition(
        source_format="phantom",
        modality="CT",
        manufacturer="Ictus",
        model_name="Ictus synthetic head phantom",
        kernel="STANDARD",
        slice_thickness_mm=spec.slice_thickness_mm,
        tube_voltage_kvp=120.0,
        contrast_agent="IOHEXOL" if spec.contrast else "",
        patient_age_years=spec.patient_age_years,
    )
    return volume_from_array(
        r.hu,
        spacing_mm=(g.pixel_spacing_mm[1], g.pixel_spacing_mm[0], g.slice_spacing_mm),
        origin_mm=g.image_positions_patient[0],
        acquisition=acquisition,
    )


def head_hu(
    shape_zyx: Sequence[int],
    spacing_zyx_mm: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    haemorrhage_ml: float = 30.0,
    haemorrhage_hu: float = 65.0,
    haemorrhage_location: str = "basal-ganglia",
    noise_hu: float = 5.0,
    seed: int = 0,
    partial_volume_samples: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The phantom's adult head as plain arrays: (HU float32, labels uint8), both [z, y, x].

    The grid (``shape_zyx`` voxels of ``spacing_zyx_mm``) is centred on the
    head centre, axes along LPS; a right intraparenchymal haemorrhage of
    ``haemorrhage_ml`` (none when 0) at ``haemorrhage_location``
    (``IPH_LOCATIONS``), then the phantom's correlated noise (``noise_hu``,
    ``seed``). Deterministic; for int8 calibration, tests and benchmarks.
    """
    spec = PhantomSpec(
        haemorrhage="IPH" if haemorrhage_ml > 0 else None,
        haemorrhage_volume_ml=haemorrhage_ml if haemorrhage_ml > 0 else 30.0,
        haemorrhage_location=haemorrhage_location if haemorrhage_ml > 0 else None,
        haemorrhage_hu=haemorrhage_hu,
        noise_hu=noise_hu,
        seed=seed,
        partial_volume_samples=partial_volume_samples,
    ).validated()
    nz, ny, nx = (int(v) for v in shape_zyx)
    sz, sy, sx = (float(v) for v in spacing_zyx_mm)
    origin = (-(nx - 1) / 2.0 * sx, -(ny - 1) / 2.0 * sy, -(nz - 1) / 2.0 * sz)
    hu, labels = sample_phantom(spec, origin, (sx, sy, sz), (nx, ny, nz))
    hu = _add_noise(hu, spec.noise_hu, spec.seed)
    np.clip(hu, _HU_MIN, _HU_MAX, out=hu)
    return hu, labels
