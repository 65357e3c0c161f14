"""A synthetic *ischaemic* head CT rendered from the template anatomy, with known truth.

The geometric phantom (:mod:`ictus.imaging.phantom`) is built from ellipsoids, which no template
registration can fit. This one renders Rorden's CT template (MNI space, HU, whole head)
under a patient pose, so that :func:`ictus.imaging.anatomy.register_template` can land on it and
every template-based stroke finding (ASPECTS, hyperdense artery, net water uptake, chronic
infarcts) can be checked against a known answer.

Rendering (all in :func:`render_stroke_phantom`):

1. **Template on 1 mm.** ``atlas.template_hu`` (2 mm) is resampled (linear) onto the 1 mm
   ASPECTS grid. The template is an average of many heads, so its skull is blurred
   (peaks of about 200 HU); soft tissue is kept as it is (<= 60 HU) and the bone range is
   stretched monotonically (60 -> 60, 100 -> 250, 200 -> 1100, 450 -> 1900 HU) so that the
   skull is as dense as a real one. Air is -1000 HU.
2. **Lesions in MNI space,** where the truth is defined:
   - *early ischaemic change:* the ASPECTS regions of ``ischaemia_regions`` on
     ``ischaemia_side`` lose ``ischaemia_drop_hu`` in brain tissue (template HU about
     15-60; CSF and bone stay), the region masks softened at the edge (Gaussian,
     ``ischaemia_edge_mm``) so the change is not a pixel-perfect step;
   - *arteries:* tubes (radius ``artery_radius_mm``) along both M1 and M2 courses of
     :data:`ictus.imaging.stroke_atlas.VESSEL_COURSES` and the basilar artery at normal blood
     density ``artery_hu`` (``haematocrit_hu`` raises all of them: not a dense artery
     sign); a *hyperdense artery* (``dense_artery_side``, ``dense_artery_hu``) over
     ``dense_artery_length_mm`` from the M1 origin along M1 then M2; optional calcified
     wall crescents (``calcified_wall``, ``calcified_wall_hu``) on one M1 (not a dense
     artery sign either);
   - *old infarct:* the regions of ``old_infarct_regions`` become CSF (``old_infarct_csf_hu``)
     with volume loss: neighbouring sulci widen by 1 mm and the ipsilateral lateral ventricle
     (lobar atlas) widens ex vacuo by ``old_infarct_ventricle_widening_mm``.
3. **Pose.** A patient point ``p`` (LPS mm) shows the template point
   ``m = S^-1 R^T (p - t) + c`` (``c`` the template brain's centre of mass, ``R`` rotation
   pitch about x then roll about y then yaw about z, ``S`` the anisotropic scale, ``t`` the
   translation): ``mni_to_patient`` / ``patient_to_mni`` in the truth, the same direction
   as :attr:`ictus.imaging.anatomy.Anatomy.transform` (patient -> template).
4. **Acquisition.** Slices like the geometric phantom's (:class:`ictus.imaging.phantom.PhantomGeometry`,
   GE-style gantry tilt about x), each the mean of sub-slices about 1 mm apart across its
   thickness (real partial volume), plus spatially correlated Gaussian noise whose standard
   deviation, measured on a slice, is ``noise_hu`` (default ``4 HU * sqrt(5 mm / thickness)``).

:func:`write_stroke_phantom` writes a CT Image Storage series with the geometric phantom's
headers (:func:`ictus.imaging.phantom.dicom._slice_dataset`) and ``ground_truth.json``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ictus.imaging.errors import InvalidInputError
from ictus.imaging.phantom.dicom import (
    _slice_dataset,
    _stored_values,
    _uid,
    check_out_dir,
    write_study_dir,
    write_truth_json,
)
from ictus.imaging.phantom.spec import PhantomGeometry, PhantomSpec, acquisition_geometry, tilt_corrected_grid
from ictus.imaging.stroke_atlas import (
    ASPECTS_CODES,
    SIDES,
    VESSEL_COURSES,
    TemplateAtlas,
    aspects_label,
)
from ictus.imaging.volume import Volume, volume_from_array

log = logging.getLogger(__name__)

AIR_HU = -1000.0
#: Bone-range stretch of the blurred template skull (template HU -> phantom HU), monotone.
BONE_STRETCH_HU = ((60.0, 60.0), (100.0, 250.0), (200.0, 1100.0), (450.0, 1900.0))
#: Brain tissue in the template: the ischaemic drop applies between these (with 5 HU ramps).
TISSUE_RANGE_HU = (15.0, 60.0)
TISSUE_RAMP_HU = 5.0
NOISE_REFERENCE = (4.0, 5.0)  # 4 HU on a 5 mm slice
NOISE_CORRELATION_MM = 0.6  # Gaussian sigma of the in-plane noise correlation
SUBSLICE_MM = 1.0  # sub-slice step across the slab
#: Ranges of the random pose (uniform): rotation (pitch, roll, yaw) deg, translation mm, scale.
RANDOM_ROTATION_DEG = (12.0, 6.0, 8.0)
RANDOM_TRANSLATION_MM = (8.0, 8.0, 5.0)
RANDOM_SCALE = (0.92, 1.08)
DENSE_ARTERY_COURSE = ("M1", "M2")
CALCIFIED_ARC_MM = ((4.0, 7.0), (12.0, 15.0))  # wall segments along the M1, from its origin
CALCIFIED_WALL_MM = 1.2  # thickness of the calcified crescent (full density), on the upper half of the wall


@dataclass(frozen=True)
class StrokePhantomSpec:
    """Every option of a template-based stroke phantom. Lengths mm, densities HU, angles deg.

    Pose: ``rotation_deg`` (pitch about x, roll about y, yaw about z), ``translation_mm``
    (LPS) and ``scale`` (per axis, 0.92-1.08); each one left None is drawn from
    ``pose_seed``. ``noise_hu`` None means ``4 HU * sqrt(5 mm / slice_thickness_mm)``;
    ``seed`` drives the noise. ``z_coverage_mm`` runs down from 3 mm above the vertex (never
    below the template's lower edge). Region codes are :data:`ictus.imaging.stroke_atlas.ASPECTS_CODES`.
    """

    # pose and acquisition
    rotation_deg: tuple[float, float, float] | None = None
    translation_mm: tuple[float, float, float] | None = None
    scale: tuple[float, float, float] | None = None
    pose_seed: int = 0
    gantry_tilt_deg: float = 0.0
    slice_thickness_mm: float = 5.0
    pixel_spacing_mm: float = 0.9
    matrix: int = 256
    z_coverage_mm: float = 160.0
    noise_hu: float | None = None
    seed: int = 0
    patient_age_years: float = 70.0
    patient_sex: str = "O"
    # early ischaemic change
    ischaemia_regions: tuple[str, ...] = ()
    ischaemia_side: str = "left"
    ischaemia_drop_hu: float = 6.0
    ischaemia_edge_mm: float = 1.5
    # arteries
    artery_hu: float = 40.0
    artery_radius_mm: float = 1.75
    haematocrit_hu: float | None = None
    dense_artery_side: str | None = None
    dense_artery_hu: float = 55.0
    dense_artery_length_mm: float = 15.0
    calcified_wall: bool = False
    calcified_wall_side: str = "left"
    calcified_wall_hu: float = 250.0
    # chronic infarct
    old_infarct_regions: tuple[str, ...] = ()
    old_infarct_side: str = "right"
    old_infarct_csf_hu: float = 8.0
    old_infarct_ventricle_widening_mm: float = 3.0

    def validated(self) -> "StrokePhantomSpec":
        """The spec itself, or InvalidInputError naming the bad option."""
        def bad(msg: str) -> InvalidInputError:
            return InvalidInputError(f"stroke phantom: {msg}")

        for name, n in (("rotation_deg", 3), ("translation_mm", 3), ("scale", 3)):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise bad(f"{name} needs {n} values")
        if self.rotation_deg is not None and any(abs(v) > 30 for v in self.rotation_deg):
            raise bad(f"rotation {self.rotation_deg} deg is outside -30..30")
        if self.translation_mm is not None and any(abs(v) > 40 for v in self.translation_mm):
            raise bad(f"translation {self.translation_mm} mm is outside -40..40")
        if self.scale is not None and any(not 0.85 <= v <= 1.15 for v in self.scale):
            raise bad(f"scale {self.scale} is outside 0.85-1.15")
        if not -35 <= self.gantry_tilt_deg <= 35:
            raise bad(f"gantry tilt {self.gantry_tilt_deg} deg is outside -35..35")
        if not 0.5 <= self.slice_thickness_mm <= 10:
            raise bad(f"slice thickness {self.slice_thickness_mm} mm is outside 0.5-10 mm")
        if not 0.2 <= self.pixel_spacing_mm <= 3:
            raise bad(f"pixel spacing {self.pixel_spacing_mm} mm is outside 0.2-3 mm")
        if not 32 <= self.matrix <= 1024:
            raise bad(f"matrix {self.matrix} is outside 32-1024")
        if not 10 <= self.z_coverage_mm <= 250:
            raise bad(f"z coverage {self.z_coverage_mm} mm is outside 10-250 mm")
        if self.noise_hu is not None and not 0 <= self.noise_hu <= 100:
            raise bad(f"noise {self.noise_hu} HU is outside 0-100 HU")
        if not 0 <= self.patient_age_years <= 120:
            raise bad(f"patient age {self.patient_age_years} years is outside 0-120")
        if self.patient_sex not in ("M", "F", "O"):
            raise bad(f"patient sex {self.patient_sex!r} is not M, F or O")
        for name in ("ischaemia_side", "calcified_wall_side", "old_infarct_side"):
            if getattr(self, name) not in SIDES:
                raise bad(f"{name.replace('_', ' ')} {getattr(self, name)!r} is not left or right")
        if self.dense_artery_side not in (None, *SIDES):
            raise bad(f"dense artery side {self.dense_artery_side!r} is not left, right or None")
        for name in ("ischaemia_regions", "old_infarct_regions"):
            codes = getattr(self, name)
            unknown = [c for c in codes if c not in ASPECTS_CODES]
            if unknown:
                raise bad(f"unknown ASPECTS region(s) {', '.join(unknown)} in {name.replace('_', ' ')}; "
                          f"use {', '.join(ASPECTS_CODES)}")
            if len(set(codes)) != len(codes):
                raise bad(f"{name.replace('_', ' ')} repeats a region")
        if self.ischaemia_side == self.old_infarct_side and set(self.ischaemia_regions) & set(self.old_infarct_regions):
            raise bad("a region cannot be both acutely ischaemic and an old infarct on the same side")
        if not 0 <= self.ischaemia_drop_hu <= 30:
            raise bad(f"ischaemia drop {self.ischaemia_drop_hu} HU is outside 0-30 HU")
        if not 0 <= self.ischaemia_edge_mm <= 5:
            raise bad(f"ischaemia edge {self.ischaemia_edge_mm} mm is outside 0-5 mm")
        if not 0.5 <= self.artery_radius_mm <= 4:
            raise bad(f"artery radius {self.artery_radius_mm} mm is outside 0.5-4 mm")
        for name in ("artery_hu", "dense_artery_hu"):
            if not 0 <= getattr(self, name) <= 120:
                raise bad(f"{name.replace('_', ' ')} {getattr(self, name)} is outside 0-120 HU")
        if self.haematocrit_hu is not None and not 0 <= self.haematocrit_hu <= 120:
            raise bad(f"haematocrit density {self.haematocrit_hu} HU is outside 0-120 HU")
        if not 1 <= self.dense_artery_length_mm <= 60:
            raise bad(f"dense artery length {self.dense_artery_length_mm} mm is outside 1-60 mm")
        if not 100 <= self.calcified_wall_hu <= 2000:
            raise bad(f"calcified wall {self.calcified_wall_hu} HU is outside 100-2000 HU")
        if not -10 <= self.old_infarct_csf_hu <= 20:
            raise bad(f"old infarct density {self.old_infarct_csf_hu} HU is outside -10..20 HU")
        if not 0 <= self.old_infarct_ventricle_widening_mm <= 10:
            raise bad(f"ventricle widening {self.old_infarct_ventricle_widening_mm} mm is outside 0-10 mm")
        return self

    @property
    def noise_sigma_hu(self) -> float:
        """The noise standard deviation on one slice of this thickness."""
        if self.noise_hu is not None:
            return float(self.noise_hu)
        sigma, ref_mm = NOISE_REFERENCE
        return float(sigma * math.sqrt(ref_mm / self.slice_thickness_mm))

    @property
    def normal_artery_hu(self) -> float:
        """The density of the normal arteries (the haematocrit density when given)."""
        return float(self.haematocrit_hu if self.haematocrit_hu is not None else self.artery_hu)


# ---------------------------------------------------------------------------
# Pose
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StrokePose:
    """The patient pose: ``p = R S (m - centre_mni) + translation`` (LPS mm)."""

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    scale: tuple[float, float, float]
    centre_mni_mm: tuple[float, float, float]

    @property
    def rotation(self) -> np.ndarray:
        """3x3 rotation (pitch about x, then roll about y, then yaw about z)."""
        a, b, c = (math.radians(v) for v in self.rotation_deg)
        rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
        ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
        rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
        return rz @ ry @ rx

    @property
    def mni_to_patient(self) -> np.ndarray:
        """4x4 homogeneous map of template (MNI LPS) points to patient LPS points."""
        m = self.rotation @ np.diag(self.scale)
        out = np.eye(4)
        out[:3, :3] = m
        out[:3, 3] = np.asarray(self.translation_mm) - m @ np.asarray(self.centre_mni_mm)
        return out

    @property
    def patient_to_mni(self) -> np.ndarray:
        """4x4 homogeneous map of patient LPS points to template points (as ``Anatomy.transform``)."""
        return np.linalg.inv(self.mni_to_patient)

    def sitk_patient_to_mni(self) -> sitk.AffineTransform:
        """``patient_to_mni`` as a SimpleITK transform (for ``sitk.Resample`` of template images)."""
        a = self.patient_to_mni
        t = sitk.AffineTransform(3)
        t.SetMatrix(tuple(float(v) for v in a[:3, :3].ravel()))
        t.SetTranslation(tuple(float(v) for v in a[:3, 3]))
        return t

    def sitk_mni_to_patient(self) -> sitk.AffineTransform:
        """``mni_to_patient`` as a SimpleITK transform (for sampling patient images on the MNI grid)."""
        a = self.mni_to_patient
        t = sitk.AffineTransform(3)
        t.SetMatrix(tuple(float(v) for v in a[:3, :3].ravel()))
        t.SetTranslation(tuple(float(v) for v in a[:3, 3]))
        return t

    @property
    def determinant(self) -> float:
        """Volume ratio patient / template."""
        return float(np.prod(self.scale))


def resolve_pose(spec: StrokePhantomSpec, centre_mni_mm: Sequence[float]) -> StrokePose:
    """The pose of a spec: the given parts, the others drawn from ``pose_seed``."""
    rng = np.random.default_rng(spec.pose_seed)
    rot = rng.uniform(-1, 1, 3) * np.array(RANDOM_ROTATION_DEG)
    tra = rng.uniform(-1, 1, 3) * np.array(RANDOM_TRANSLATION_MM)
    sca = rng.uniform(*RANDOM_SCALE, 3)

    def rnd(v: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
        x, y, z = (float(round(c, 3)) for c in v)
        return x, y, z

    return StrokePose(
        rotation_deg=rnd(spec.rotation_deg if spec.rotation_deg is not None else rot),
        translation_mm=rnd(spec.translation_mm if spec.translation_mm is not None else tra),
        scale=tuple(float(round(x, 4)) for x in (spec.scale if spec.scale is not None else sca)),  # type: ignore[arg-type]
        centre_mni_mm=rnd(centre_mni_mm),
    )


# ---------------------------------------------------------------------------
# The template with lesions, on the 1 mm MNI grid
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _MniGrid:
    """The 1 mm ASPECTS grid: arrays [z, y, x], world = origin + direction * spacing * index."""

    origin: np.ndarray
    direction: np.ndarray  # 3x3
    spacing: np.ndarray
    shape_zyx: tuple[int, int, int]

    @property
    def index_to_world(self) -> np.ndarray:
        out = np.eye(4)
        out[:3, :3] = self.direction * self.spacing[None, :]
        out[:3, 3] = self.origin
        return out

    def world(self, zyx: np.ndarray) -> np.ndarray:
        """World mm (N, 3) of [z, y, x] indices (N, 3)."""
        return self.origin + (np.asarray(zyx, float)[:, ::-1] * self.spacing) @ self.direction.T

    def index(self, points: np.ndarray) -> np.ndarray:
        """Continuous [z, y, x] indices of world points (N, 3)."""
        ijk = (np.asarray(points, float) - self.origin) @ self.direction / self.spacing
        return ijk[:, ::-1]


@dataclass(frozen=True)
class _Base:
    grid: _MniGrid
    hu: np.ndarray  # float32, bone stretched, air -1000
    template: np.ndarray  # float32 template HU on 1 mm, unstretched
    brain: np.ndarray  # bool
    aspects: np.ndarray  # uint8
    ventricles: np.ndarray | None  # bool (lobar 'Ventricle')
    head_points: np.ndarray  # (N, 3) MNI mm of head voxels (subsampled), for coverage
    brain_centre_mni_mm: tuple[float, float, float]


_BASE_CACHE: dict[int, tuple[TemplateAtlas, _Base]] = {}


def _stretch_bone(hu: np.ndarray) -> np.ndarray:
    knots = np.array(BONE_STRETCH_HU, dtype=np.float32)
    out = hu.copy()
    high = hu > knots[0, 0]
    out[high] = np.interp(hu[high], knots[:, 0], knots[:, 1], right=float(knots[-1, 1]))
    return np.maximum(out, AIR_HU)


def _base(atlas: TemplateAtlas) -> _Base:
    """The template on the 1 mm ASPECTS grid with its masks (cached per atlas)."""
    hit = _BASE_CACHE.get(id(atlas))
    if hit is not None and hit[0] is atlas:
        return hit[1]
    ref = atlas.aspects
    grid = _MniGrid(np.array(ref.GetOrigin()), np.array(ref.GetDirection()).reshape(3, 3),
                    np.array(ref.GetSpacing()), tuple(reversed(ref.GetSize())))  # type: ignore[arg-type]
    template = sitk.GetArrayFromImage(
        sitk.Resample(atlas.template_hu, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32))
    brain = sitk.GetArrayFromImage(
        sitk.Resample(atlas.brain_mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
    ventricles = None
    if atlas.lobar is not None:
        lobar = sitk.GetArrayFromImage(
            sitk.Resample(atlas.lobar, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
        ventricles = np.isin(lobar, atlas.lobar_values(("Ventricle",)))
    head_idx = np.argwhere(template[::3, ::3, ::3] > -300.0) * 3
    centre = grid.world(np.argwhere(brain).mean(axis=0)[None, :])[0]
    base = _Base(grid=grid, hu=_stretch_bone(template), template=template, brain=brain,
                 aspects=sitk.GetArrayFromImage(ref).astype(np.uint8), ventricles=ventricles,
                 head_points=grid.world(head_idx), brain_centre_mni_mm=tuple(float(v) for v in centre))  # type: ignore[arg-type]
    _BASE_CACHE.clear()
    _BASE_CACHE[id(atlas)] = (atlas, base)
    return base


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _tissue_weight(template: np.ndarray) -> np.ndarray:
    lo, hi = TISSUE_RANGE_HU
    r = TISSUE_RAMP_HU
    up = np.clip((template - (lo - r)) / r, 0.0, 1.0)
    down = np.clip(((hi + r) - template) / r, 0.0, 1.0)
    return (up * down).astype(np.float32)


def _soft(mask: np.ndarray, sigma_mm: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    m = mask.astype(np.float32)
    return gaussian_filter(m, sigma_mm) if sigma_mm > 0 else m


def _polyline_distance(points: np.ndarray, polyline: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(distance, arc length, nearest point, unit tangent) of points (N, 3) to a polyline."""
    best = np.full(len(points), np.inf)
    arc = np.zeros(len(points))
    nearest = np.zeros((len(points), 3))
    tangent = np.zeros((len(points), 3))
    start = 0.0
    for a, b in zip(polyline[:-1], polyline[1:]):
        seg = b - a
        length = float(np.linalg.norm(seg))
        u = seg / length
        t = np.clip((points - a) @ u, 0.0, length)
        foot = a + t[:, None] * u
        d = np.linalg.norm(points - foot, axis=1)
        closer = d < best
        best[closer], arc[closer], nearest[closer], tangent[closer] = d[closer], start + t[closer], foot[closer], u
        start += length
    return best, arc, nearest, tangent


def _course(name: str, side: str) -> np.ndarray:
    for c in VESSEL_COURSES:
        if c.name == name and c.side == side:
            return np.array(c.points_mm, dtype=float)
    raise KeyError((name, side))


def _paint_arteries(spec: StrokePhantomSpec, base: _Base, hu: np.ndarray) -> dict[str, Any]:
    """Normal arteries on both sides and the basilar; the dense segment; calcified walls."""
    g = base.grid
    r = spec.artery_radius_mm
    normal_hu = spec.normal_artery_hu
    courses: list[tuple[str, np.ndarray]] = [("basilar", _course("basilar", "midline"))]
    for side in SIDES:
        courses.append((f"M1+M2_{side}", np.vstack([_course("M1", side), _course("M2", side)])))
    dense_info = None
    wall_info = None
    for name, poly in courses:
        lo = g.index(poly).min(axis=0) - (r + 4) / g.spacing[::-1]
        hi = g.index(poly).max(axis=0) + (r + 4) / g.spacing[::-1]
        lo = np.maximum(np.floor(lo).astype(int), 0)
        hi = np.minimum(np.ceil(hi).astype(int) + 1, g.shape_zyx)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        zz, yy, xx = np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")
        pts = g.world(np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1))
        d, arc, foot, tangent = _polyline_distance(pts, poly)
        frac = np.clip(r + 0.5 - d, 0.0, 1.0)
        value = np.full(len(pts), normal_hu, dtype=np.float64)
        side = name.rsplit("_", 1)[-1]
        if spec.dense_artery_side == side:
            length = min(spec.dense_artery_length_mm, _length(poly))
            dense = arc <= length
            value[dense] = spec.dense_artery_hu
            end = _point_at(poly, length)
            dense_info = {"side": side, "hu": spec.dense_artery_hu, "length_mm": float(length),
                          "radius_mm": r, "course": "M1 then M2", "start_mni_mm": poly[0].tolist(),
                          "end_mni_mm": end.tolist(),
                          "volume_ml_mni": float(frac[dense].sum() * np.prod(g.spacing) / 1000.0)}
        sub = hu[box].reshape(-1)
        sub[:] = sub * (1.0 - frac) + value * frac
        if spec.calcified_wall and spec.calcified_wall_side == side:
            up = np.cross(tangent, [1.0, 0.0, 0.0])  # perpendicular to the artery, roughly superior/anterior
            up /= np.maximum(np.linalg.norm(up, axis=1, keepdims=True), 1e-9)
            radial = pts - foot
            on_side = np.einsum("ij,ij->i", radial, up) > 0.3 * d
            in_arc = np.zeros(len(pts), bool)
            for a0, a1 in CALCIFIED_ARC_MM:
                in_arc |= (arc >= a0) & (arc <= a1)
            wall = np.clip(CALCIFIED_WALL_MM / 2.0 + 0.5 - np.abs(d - (r + CALCIFIED_WALL_MM / 2.0 - 0.2)), 0.0, 1.0) \
                * (on_side & in_arc)
            sub[:] = sub * (1.0 - wall) + spec.calcified_wall_hu * wall
            wall_info = {"side": side, "artery": "M1", "hu": spec.calcified_wall_hu,
                         "arc_mm": [list(a) for a in CALCIFIED_ARC_MM], "wall_mm": CALCIFIED_WALL_MM,
                         "counts_as_dense_artery": False}
        hu[box] = sub.reshape(hu[box].shape)
    return {
        "normal_hu": normal_hu,
        "radius_mm": r,
        "haematocrit_hu": spec.haematocrit_hu,
        "courses": ["M1+M2 left", "M1+M2 right", "basilar"],
        "dense": dense_info,
        "calcified_wall": wall_info,
    }


def _length(poly: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(poly, axis=0), axis=1).sum())


def _point_at(poly: np.ndarray, arc_mm: float) -> np.ndarray:
    start = 0.0
    for a, b in zip(poly[:-1], poly[1:]):
        length = float(np.linalg.norm(b - a))
        if arc_mm <= start + length:
            return a + (b - a) * (arc_mm - start) / length
        start += length
    return poly[-1].copy()


def _region_mask(base: _Base, codes: Sequence[str], side: str) -> np.ndarray:
    return np.isin(base.aspects, [aspects_label(c, side) for c in codes])


def _paint_ischaemia(spec: StrokePhantomSpec, base: _Base, hu: np.ndarray) -> dict[str, Any] | None:
    if not spec.ischaemia_regions or spec.ischaemia_drop_hu <= 0:
        return None
    mask = _region_mask(base, spec.ischaemia_regions, spec.ischaemia_side)
    box = _bbox(mask, 6)
    soft = _soft(mask[box], spec.ischaemia_edge_mm / 2.0)
    weight = soft * _tissue_weight(base.template[box]) * base.brain[box]
    hu[box] -= np.float32(spec.ischaemia_drop_hu) * weight
    tissue = _tissue_weight(base.template) > 0.999
    per_region = {}
    voxel_ml = float(np.prod(base.grid.spacing)) / 1000.0
    for code in spec.ischaemia_regions:
        m = (base.aspects[box] == aspects_label(code, spec.ischaemia_side)) & tissue[box]
        per_region[code] = float(spec.ischaemia_drop_hu * weight[m].mean()) if m.any() else 0.0
    return {
        "regions": list(spec.ischaemia_regions),
        "side": spec.ischaemia_side,
        "drop_hu": spec.ischaemia_drop_hu,
        "edge_mm": spec.ischaemia_edge_mm,
        "tissue_range_hu": list(TISSUE_RANGE_HU),
        "mean_drop_hu_in_region_tissue": per_region,
        "volume_ml_mni": float(mask.sum() * voxel_ml),
        "affected_volume_ml_mni": float(weight.sum() * voxel_ml),
    }


def _paint_old_infarct(spec: StrokePhantomSpec, base: _Base, hu: np.ndarray) -> dict[str, Any] | None:
    if not spec.old_infarct_regions:
        return None
    from scipy.ndimage import binary_dilation, distance_transform_edt

    g = base.grid
    voxel_ml = float(np.prod(g.spacing)) / 1000.0
    csf = np.float32(spec.old_infarct_csf_hu)
    mask = _region_mask(base, spec.old_infarct_regions, spec.old_infarct_side) & base.brain
    box = _bbox(mask, 14)
    # encephalomalacia: the region becomes CSF, with a soft (gliotic) edge
    w = np.clip(_soft(mask[box], 0.75) * 1.2, 0.0, 1.0) * base.brain[box]
    # sulcal widening near the infarct: CSF spaces within 12 mm grow by 1 mm
    near = distance_transform_edt(~mask[box]) <= 12.0
    sulci = near & base.brain[box] & (base.template[box] < 18.0)
    widened = binary_dilation(sulci, iterations=1) & near & base.brain[box]
    w = np.maximum(w, 0.8 * widened.astype(np.float32))
    hu[box] = hu[box] * (1.0 - w) + csf * w
    widening: dict[str, Any] = {"sulci_mm": 1.0}
    if base.ventricles is not None and spec.old_infarct_ventricle_widening_mm > 0:
        x_world = g.world(np.stack([np.zeros(g.shape_zyx[2]), np.zeros(g.shape_zyx[2]),
                                    np.arange(g.shape_zyx[2])], axis=1))[:, 0]
        side_x = (x_world > 0) if spec.old_infarct_side == "left" else (x_world < 0)  # LPS: +x is left
        vent = base.ventricles & side_x[None, None, :]
        if vent.any():
            vbox = _bbox(vent, int(math.ceil(spec.old_infarct_ventricle_widening_mm)) + 3)
            dist = distance_transform_edt(~vent[vbox])
            grow = (dist <= spec.old_infarct_ventricle_widening_mm) & base.brain[vbox] & side_x[None, None, vbox[2]]
            wv = _soft(grow, 0.6) * grow
            before = float(vent.sum() * voxel_ml)
            hu[vbox] = hu[vbox] * (1.0 - wv) + csf * wv
            widening.update({"ventricle_mm": spec.old_infarct_ventricle_widening_mm,
                             "ventricle_ml_before": before,
                             "ventricle_ml_after": float((vent[vbox] | grow).sum() * voxel_ml)})
    else:
        widening["ventricle_mm"] = 0.0
    return {
        "regions": list(spec.old_infarct_regions),
        "side": spec.old_infarct_side,
        "csf_hu": spec.old_infarct_csf_hu,
        "volume_ml_mni": float(mask.sum() * voxel_ml),
        "volume_loss": widening,
        "acute": False,
    }


def template_asymmetry_hu(atlas: TemplateAtlas) -> dict[str, float]:
    """Left minus right mean template HU per ASPECTS region, over brain tissue
    (:data:`TISSUE_RANGE_HU`), on the unmodified template: the bias a mirror comparison starts with."""
    base = _base(atlas)
    tissue = (_tissue_weight(base.template) > 0.999) & base.brain
    labels = base.aspects[tissue].astype(np.int64)
    sums = np.bincount(labels, weights=base.template[tissue], minlength=21)
    counts = np.bincount(labels, minlength=21)
    out = {}
    for code in ASPECTS_CODES:
        lft, rgt = aspects_label(code, "left"), aspects_label(code, "right")
        out[code] = round(float(sums[lft] / max(counts[lft], 1) - sums[rgt] / max(counts[rgt], 1)), 3)
    return out


def lesioned_template(spec: StrokePhantomSpec, atlas: TemplateAtlas) -> tuple[np.ndarray, dict[str, Any]]:
    """The template HU on the 1 mm MNI grid ([z, y, x], ``atlas.aspects``'s grid) with the
    spec's lesions and arteries, and what was painted."""
    base = _base(atlas)
    hu = base.hu.copy()
    info: dict[str, Any] = {}
    info["old_infarct"] = _paint_old_infarct(spec, base, hu)
    info["ischaemia"] = _paint_ischaemia(spec, base, hu)
    info["arteries"] = _paint_arteries(spec, base, hu)
    return hu, info


# ---------------------------------------------------------------------------
# Acquisition geometry and sampling
# ---------------------------------------------------------------------------
def stroke_geometry(spec: StrokePhantomSpec, pose: StrokePose, atlas: TemplateAtlas) -> PhantomGeometry:
    """The written grid: a matrix x matrix FOV centred on the head in-plane, slices from
    3 mm above the vertex down ``z_coverage_mm`` (not below the template's lower edge)."""
    base = _base(atlas)
    a = pose.mni_to_patient
    head = base.head_points @ a[:3, :3].T + a[:3, 3]
    lowest_mni = float(base.head_points[:, 2].min())
    bottom_face = head[base.head_points[:, 2] <= lowest_mni + 3.0]
    tilt = math.radians(spec.gantry_tilt_deg)
    spacing = spec.slice_thickness_mm
    z_top = float(head[:, 2].max()) + 3.0
    z_floor = float(bottom_face[:, 2].max()) + 2.0 + spec.slice_thickness_mm / 2.0
    coverage = min(spec.z_coverage_mm, max(z_top - z_floor, spacing))
    n = max(2, int(round(coverage / spacing)))
    table = np.arange(n) * spacing / math.cos(tilt)
    centres_z = z_top - (table[-1] - table)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, math.cos(tilt), -math.sin(tilt)])  # GE: +tilt -> negative z component
    d = spec.pixel_spacing_mm
    half = (spec.matrix - 1) / 2.0
    cx = round(float(head[:, 0].min() + head[:, 0].max()) / 2.0, 1)
    cy = round(float(head[:, 1].min() + head[:, 1].max()) / 2.0, 1)
    # the plane through (cx, cy, zc) at the FOV centre; y, z of the centre move along the tilted column
    ipps = tuple(
        (float(round(x, 6)), float(round(y, 6)), float(round(z, 6)))
        for x, y, z in (np.array([cx, cy, zc]) - half * d * row - half * d * col for zc in centres_z)
    )
    return PhantomGeometry(
        rows=spec.matrix, columns=spec.matrix, pixel_spacing_mm=(d, d),
        image_orientation_patient=tuple(float(round(v, 9)) for v in (*row, *col)),  # type: ignore[arg-type]
        image_positions_patient=ipps, slice_thickness_mm=spec.slice_thickness_mm, slice_spacing_mm=spacing,
        table_increment_mm=spacing / math.cos(tilt), gantry_tilt_deg=spec.gantry_tilt_deg,
    )


def _subslice_offsets(thickness_mm: float) -> np.ndarray:
    n = max(1, int(round(thickness_mm / SUBSLICE_MM)))
    return ((np.arange(n) + 0.5) / n - 0.5) * thickness_mm


def _sample(hu_mni: np.ndarray, grid: _MniGrid, pose: StrokePose, geom: PhantomGeometry) -> np.ndarray:
    """Mean over sub-slices of the MNI volume sampled (linear) at every written pixel."""
    from scipy.ndimage import map_coordinates

    # patient point -> MNI [z, y, x] index: idx = W p + w0
    to_index = np.linalg.inv(grid.index_to_world) @ pose.patient_to_mni  # -> (i, j, k) = (x, y, z) index
    lin, off = to_index[:3, :3][::-1], to_index[:3, 3][::-1]  # rows reordered to [z, y, x]
    H, W = geom.rows, geom.columns
    dr, dc = geom.pixel_spacing_mm
    u = lin @ (geom.row_direction * dc)  # index step per column
    v = lin @ (geom.column_direction * dr)  # per row
    w = lin @ geom.normal
    offsets = _subslice_offsets(geom.slice_thickness_mm)
    jj, ii = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    plane = ii[None] * u[:, None, None] + jj[None] * v[:, None, None]  # (3, H, W)
    out = np.empty((geom.n_slices, H, W), dtype=np.float32)
    buf = np.empty((3, H, W), dtype=np.float64)
    acc = np.empty((H, W), dtype=np.float64)
    for k, ipp in enumerate(geom.image_positions_patient):
        base = lin @ np.asarray(ipp, dtype=float) + off
        acc[:] = 0.0
        for t in offsets:
            np.add(plane, (base + t * w)[:, None, None], out=buf)
            acc += map_coordinates(hu_mni, buf, order=1, mode="constant", cval=AIR_HU, prefilter=False)
        out[k] = acc / len(offsets)
    return out


def _noise(shape: tuple[int, ...], sigma_hu: float, pixel_mm: float, seed: int) -> np.ndarray:
    """In-plane correlated Gaussian noise whose per-slice standard deviation is ``sigma_hu``."""
    if sigma_hu <= 0:
        return np.zeros(shape, dtype=np.float32)
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape, dtype=np.float32)
    sigma_px = NOISE_CORRELATION_MM / pixel_mm
    noise = gaussian_filter(noise, sigma=(0, sigma_px, sigma_px), mode="wrap")
    noise *= np.float32(sigma_hu / float(noise.std()))
    return noise


# ---------------------------------------------------------------------------
# Render and truth
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StrokePhantomRender:
    """A rendered stroke phantom: ``hu`` float32 [slice, row, column] on ``geometry`` (noise included)."""

    spec: StrokePhantomSpec
    hu: np.ndarray = field(repr=False)
    geometry: PhantomGeometry
    pose: StrokePose
    truth: dict = field(repr=False)

    def volume(self) -> Volume:
        """The untilted phantom as a :class:`Volume` (a tilted one: write it and read it back)."""
        g = self.geometry
        if not g.is_orthogonal:
            raise ValueError("a tilted stack is sheared; write it and read it with ictus.imaging.build.build_volume")
        return volume_from_array(self.hu, spacing_mm=(g.pixel_spacing_mm[1], g.pixel_spacing_mm[0], g.slice_spacing_mm),
                                 origin_mm=tuple(g.image_positions_patient[0]))  # type: ignore[arg-type]


def expected_aspects(spec: StrokePhantomSpec) -> dict[str, int]:
    """ASPECTS per side: 10 minus the acutely ischaemic regions (old infarcts are not acute)."""
    out = {side: 10 for side in SIDES}
    if spec.ischaemia_regions and spec.ischaemia_drop_hu > 0:
        out[spec.ischaemia_side] -= len(spec.ischaemia_regions)
    return out


def render_stroke_phantom(spec: StrokePhantomSpec, atlas: TemplateAtlas) -> StrokePhantomRender:
    """Render the template anatomy with the spec's lesions under its pose and acquisition."""
    spec = spec.validated()
    t0 = time.perf_counter()
    base = _base(atlas)
    pose = resolve_pose(spec, base.brain_centre_mni_mm)
    hu_mni, painted = lesioned_template(spec, atlas)
    geom = stroke_geometry(spec, pose, atlas)
    hu = _sample(hu_mni, base.grid, pose, geom)
    sigma = spec.noise_sigma_hu
    hu += _noise(hu.shape, sigma, spec.pixel_spacing_mm, spec.seed)
    affected: dict[str, list[str]] = {side: [] for side in SIDES}
    if painted["ischaemia"] is not None:
        affected[spec.ischaemia_side] = list(spec.ischaemia_regions)
    dense = painted["arteries"]["dense"]
    truth: dict[str, Any] = {
        "phantom": "stroke-template",
        "spec": dataclasses.asdict(spec),
        "pose": {
            "rotation_deg": list(pose.rotation_deg),
            "rotation_order": "pitch about x, then roll about y, then yaw about z (LPS, right-handed)",
            "translation_mm": list(pose.translation_mm),
            "scale": list(pose.scale),
            "centre_mni_mm": list(pose.centre_mni_mm),
            "mni_to_patient": pose.mni_to_patient.tolist(),
            "patient_to_mni": pose.patient_to_mni.tolist(),
            "convention": "p_patient = R diag(scale) (m_mni - centre_mni) + translation; 4x4 homogeneous, LPS mm",
        },
        "geometry": _geometry_truth(geom),
        "affected_regions": affected,
        "expected_aspects": expected_aspects(spec),
        "ischaemia": painted["ischaemia"],
        "dense_artery": dense,
        "dense_artery_side": dense["side"] if dense else None,
        "arteries": {k: v for k, v in painted["arteries"].items() if k != "dense"},
        "old_infarct": painted["old_infarct"],
        "old_infarct_regions": {side: (list(spec.old_infarct_regions) if side == spec.old_infarct_side else [])
                                for side in SIDES},
        "noise_sigma_hu": sigma,
        "noise_correlation_mm": NOISE_CORRELATION_MM,
        "template_asymmetry_hu": template_asymmetry_hu(atlas),
        "bone_stretch_hu": [list(k) for k in BONE_STRETCH_HU],
        "patient": {"age_years": spec.patient_age_years, "sex": spec.patient_sex},
    }
    log.info("stroke phantom rendered: %d slices of %dx%d in %.2f s", geom.n_slices, geom.rows, geom.columns,
             time.perf_counter() - t0)
    return StrokePhantomRender(spec=spec, hu=hu, geometry=geom, pose=pose, truth=truth)


def _geometry_truth(g: PhantomGeometry) -> dict[str, Any]:
    out = {
        **acquisition_geometry(g),
        "subslices": len(_subslice_offsets(g.slice_thickness_mm)),
        "regular": True,
    }
    if not g.is_orthogonal:
        out["tilt_corrected_grid"] = tilt_corrected_grid(g)
    return out


# ---------------------------------------------------------------------------
# DICOM study
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StrokePhantomWritten:
    """What :func:`write_stroke_phantom` wrote."""

    out_dir: Path
    series_dir: Path
    n_files: int
    ground_truth_path: Path
    truth: dict


def stroke_uids(spec: StrokePhantomSpec, n_slices: int) -> dict[str, Any]:
    """The UIDs of a stroke phantom study, derived from its spec (deterministic)."""
    text = "stroke-phantom:" + json.dumps(dataclasses.asdict(spec), sort_keys=True)
    return {
        "study_instance_uid": _uid(spec, "study", _spec_text=text),  # type: ignore[arg-type]
        "series_instance_uid": _uid(spec, "series", _spec_text=text),  # type: ignore[arg-type]
        "frame_of_reference_uid": _uid(spec, "frame", _spec_text=text),  # type: ignore[arg-type]
        "sop_instance_uids": [_uid(spec, "instance", k, _spec_text=text) for k in range(n_slices)],  # type: ignore[arg-type]
    }


def _header_spec(spec: StrokePhantomSpec) -> PhantomSpec:
    """The geometric phantom's spec that gives the same DICOM header fields (age, int16 pixels)."""
    return PhantomSpec(patient_age_years=spec.patient_age_years, slice_thickness_mm=spec.slice_thickness_mm,
                       pixel_spacing_mm=spec.pixel_spacing_mm, matrix=spec.matrix, compression="none")


def write_stroke_phantom(spec: StrokePhantomSpec, atlas: TemplateAtlas, out_dir: str | os.PathLike, *,
                         force: bool = False) -> StrokePhantomWritten:
    """Write the stroke phantom as a DICOM study plus ``ground_truth.json``.

    Layout: ``OUT_DIR/series-002-axial/CT0001.dcm...`` (inferior to superior) and
    ``OUT_DIR/ground_truth.json``; written into a temporary sibling folder and renamed into
    place. A non-empty ``out_dir`` is refused unless ``force``.
    """
    spec = spec.validated()
    out = Path(out_dir)
    check_out_dir(out, force=force)
    render = render_stroke_phantom(spec, atlas)
    g = render.geometry
    uids = stroke_uids(spec, g.n_slices)
    header = _header_spec(spec)
    stored = _stored_values(header, render.hu)
    truth = dict(render.truth)
    patient_id = "ICTUS-STROKE-" + uids["study_instance_uid"].rsplit(".", 1)[-1][-8:]
    truth["uids"] = uids
    truth["patient"] = {**truth["patient"], "name": "PHANTOM^STROKE", "id": patient_id}

    def fill(tmp: Path) -> None:
        series_dir = tmp / "series-002-axial"
        series_dir.mkdir()
        for k in range(g.n_slices):
            ds = _slice_dataset(header, g, uids, k, stored[k])
            ds.PatientName = "PHANTOM^STROKE"
            ds.PatientID = patient_id
            ds.PatientSex = spec.patient_sex
            ds.ManufacturerModelName = "Ictus synthetic stroke phantom (CT template)"
            ds.StudyDescription = "CT HEAD WO CONTRAST (STROKE PHANTOM)"
            ds.SoftwareVersions = "ictus-stroke-phantom-1"
            ds.save_as(series_dir / f"CT{k + 1:04d}.dcm", enforce_file_format=True)
        truth["series_folder"] = series_dir.name
        truth["n_files"] = g.n_slices
        write_truth_json(tmp, truth)

    write_study_dir(out, fill)
    log.info("stroke phantom written to %s (%d slices)", out, g.n_slices)
    return StrokePhantomWritten(out_dir=out, series_dir=out / "series-002-axial", n_files=g.n_slices,
                                ground_truth_path=out / "ground_truth.json", truth=truth)
