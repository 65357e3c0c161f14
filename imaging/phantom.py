"""A synthetic head-CT phantom with known ground truth.

The anatomy is defined *analytically* as functions of physical LPS coordinates
(mm; +x = patient left, +y = posterior, +z = superior; the head centre is the
origin), so any acquisition geometry (slice thickness, gantry tilt, pixel
spacing) samples the same object:

- scalp (skin ~40 HU, subcutaneous fat ~-90 HU, galea ~40 HU) and a neck;
- skull: outer table, diploe, inner table;
- subarachnoid CSF rim, cortical grey matter, white matter, deep grey nuclei;
- paired lateral ventricles, third ventricle, septum pellucidum (the tissue
  left between the two lateral ventricles), suprasellar cistern, a falx in the
  interhemispheric fissure;
- dural venous sinuses (dense even without contrast), and with ``contrast``
  enhancing arteries and sinuses.

An adult head is ~156 mm wide and ~192 mm long, with a 1.44 L intracranial
volume and ~1.2 L of brain at 60 years (children are smaller, the elderly
atrophic with larger ventricles). Options add cortical sulci, a brainstem and
a headrest (``detailed_anatomy``), a metal clip with streaks
(``metal_artefact``), a head pose (yaw, roll, pitch, offset), variable slice
spacing and gaps, gantry tilt and compressed transfer syntaxes.

Optional haemorrhage (IPH, EAH, IVH) of an exact volume, an optional
perihaematomal oedema rim, and an optional midline shift: the midline brain
structures are displaced along patient x by the shift inside a central
plateau, and the displacement decays smoothly (raised cosine) to zero at the
inner table, so the skull stays symmetric.

Conventions recorded in the ground truth:

- Labels follow BLAST-CT: 0 background, 1 IPH, 2 EAH, 3 oedema, 4 IVH.
- ``midline_shift_signed_mm`` is positive towards patient LEFT (+x in LPS),
  negative towards patient right. The ideal midline is the plane x = 0 (the
  skull's symmetry plane). By default the shift points away from the
  haemorrhage.
- Nominal volumes are realised on a fine grid (0.4-0.7 mm) and hit the
  requested volume; ``on_grid`` volumes are label voxel counts on the written
  grid times the voxel volume (a label voxel is one where most of the
  sub-samples across the slice thickness fall inside the class), and
  ``on_grid_partial_volume`` weighs each voxel by the fraction inside.
- The label map lies on the written grid; for tilted or irregular stacks
  (which NIfTI as ITK reads it cannot hold) it is sampled from the same
  analytic phantom on the tilt-corrected or uniform grid, as dcm2niix builds.
- With a head pose, positions given for the haemorrhage and the ``_x_mm``
  values are in the head's frame; the truth gives the midsagittal plane in LPS.

Use :func:`render_phantom` (in memory, no DICOM), :func:`phantom_volume` (a
:class:`ictus.imaging.volume.Volume`), :func:`sample_phantom` (any orthogonal or
sheared grid) and :func:`write_phantom` (DICOM study + ground truth; the only
function here that touches disk).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ictus.imaging.errors import InvalidInputError, OutputError
from ictus.imaging.volume import Volume, volume_from_array

log = logging.getLogger(__name__)

HAEMORRHAGE_TYPES = ("IPH", "EAH", "IVH")
COMPRESSIONS = ("none", "rle", "jpeg-ls", "j2k", "j2k-lossy")
LABELS = {"background": 0, "IPH": 1, "EAH": 2, "oedema": 3, "IVH": 4}
IPH_LOCATIONS = ("basal-ganglia", "thalamus", "lobar-frontal", "lobar-parietal")
EAH_LOCATIONS = ("convexity", "frontal", "temporal", "occipital")

#: Tissue codes of the ``tissue`` map returned by :func:`render_phantom`.
TISSUES = {
    "air": 0,
    "soft_tissue": 1,
    "fat": 2,
    "cortical_bone": 3,
    "diploe": 4,
    "csf": 5,
    "grey_matter": 6,
    "white_matter": 7,
    "deep_grey": 8,
    "lateral_ventricle_left": 9,
    "lateral_ventricle_right": 10,
    "third_ventricle": 11,
    "falx": 12,
    "venous_sinus": 13,
    "artery": 14,
    "haemorrhage": 15,
    "oedema": 16,
    "headrest": 17,
    "metal": 18,
}
PARENCHYMA_TISSUES = (TISSUES["grey_matter"], TISSUES["white_matter"], TISSUES["deep_grey"])
VENTRICLE_TISSUES = (
    TISSUES["lateral_ventricle_left"],
    TISSUES["lateral_ventricle_right"],
    TISSUES["third_ventricle"],
)

# Tissue HU (non-contrast); partial volume and noise are added on top.
HU = {
    "air": -1000.0,
    "soft_tissue": 40.0,
    "fat": -90.0,
    "cortical_bone": 1300.0,
    "diploe": 650.0,
    "csf": 8.0,
    "grey_matter": 40.0,
    "white_matter": 27.0,
    "deep_grey": 37.0,
    "ventricle": 5.0,
    "falx": 60.0,
    "venous_sinus": 48.0,
    "venous_sinus_contrast": 250.0,
    "artery_contrast": 300.0,
    "oedema": 20.0,
}

_HU_MIN, _HU_MAX = -1024.0, 3071.0
_INNER_TABLE_SEMI_MM = (66.0, 84.0, 62.0)  # adult intracranial ellipsoid: ~1.44 L; the scalp adds 12 mm
_SEPTUM_HALF_MM = 1.5  # half thickness of the septum pellucidum


@dataclass(frozen=True)
class PhantomSpec:
    """Every option of a phantom. Lengths in mm, volumes in mL, densities in HU.

    ``haemorrhage_side`` is "left" or "right" (patient side); for IVH also
    "both"; None means "right" (IPH, EAH) or "both" (IVH). ``haemorrhage_location`` names a place (see ``IPH_LOCATIONS`` and
    ``EAH_LOCATIONS``); ``haemorrhage_centre_lps_mm`` overrides it (IPH: the
    ellipsoid centre; EAH: a point whose direction from the head centre gives
    the thickest part of the crescent). ``midline_shift_direction`` is "left"
    or "right" (towards the patient's side); None points away from the
    haemorrhage, or to the left without one. ``slice_spacing_mm`` None means
    contiguous slices (= thickness); with gantry tilt it is the distance
    between the tilted planes and the table moves spacing / cos(tilt).
    ``n_slices`` None covers ``z_coverage_mm``. ``slice_blocks`` (thickness
    mm, count) pairs, inferior to superior, build a variable-spacing stack of
    contiguous slices, like a GE head with 4 mm then 7 mm blocks (the top slice
    stays 3 mm above the vertex). ``gap_after_slice`` N (1-based, from the
    inferior end) adds ``gap_mm`` of table travel after slice N. Pixels are stored as signed
    int16 with RescaleIntercept 0 (GE style), or with ``unsigned_pixels`` as
    uint16 with RescaleIntercept -1024 (Siemens style).

    The head pose: the head is rotated by ``head_pitch_deg`` about x, then
    ``head_roll_deg`` about y, then ``head_yaw_deg`` about z (right-handed
    rotations about the LPS axes), and its centre moved to ``head_offset_mm``
    (LPS). Anatomy, haemorrhage positions and the midline shift are defined in
    the head's own frame (LPS when the pose is neutral); the fluid level of an
    IVH stays horizontal in the scanner (supine patient).

    ``detailed_anatomy`` adds cortical sulci (wider with age), a brainstem,
    fourth ventricle and prepontine cistern, and a carbon-fibre headrest
    under the head. It is off by default so that the
    simple phantom stays exactly the same for existing tests.

    ``metal_artefact`` adds an aneurysm clip at the right MCA bifurcation and
    the streaks it casts across the slices that contain it. ``multiframe``
    writes the series as one Legacy Converted Enhanced CT object (highdicom's
    converter of the single-frame slices; it orders the frames along the
    slice normal and records that in a dimension index).
    """

    haemorrhage: str | None = None
    haemorrhage_volume_ml: float = 30.0
    haemorrhage_side: str | None = None
    haemorrhage_location: str | None = None
    haemorrhage_centre_lps_mm: tuple[float, float, float] | None = None
    haemorrhage_hu: float = 65.0
    oedema_rim_mm: float = 0.0
    midline_shift_mm: float = 0.0
    midline_shift_direction: str | None = None
    slice_thickness_mm: float = 5.0
    slice_spacing_mm: float | None = None
    slice_blocks: tuple[tuple[float, int], ...] | None = None
    gap_after_slice: int | None = None
    gap_mm: float = 0.0
    pixel_spacing_mm: float = 0.45
    matrix: int = 512
    n_slices: int | None = None
    z_coverage_mm: float = 170.0
    gantry_tilt_deg: float = 0.0
    compression: str = "none"
    contrast: bool = False
    patient_age_years: float = 60.0
    noise_hu: float = 5.0
    seed: int = 0
    with_scout: bool = False
    unsigned_pixels: bool = False
    head_yaw_deg: float = 0.0
    head_roll_deg: float = 0.0
    head_pitch_deg: float = 0.0
    head_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    detailed_anatomy: bool = False
    metal_artefact: bool = False
    multiframe: bool = False
    partial_volume_samples: int = 5

    def validated(self) -> "PhantomSpec":
        """The spec itself, or InvalidInputError naming the bad option."""
        def bad(msg: str) -> InvalidInputError:
            return InvalidInputError(f"phantom: {msg}")

        if self.haemorrhage is not None and self.haemorrhage not in HAEMORRHAGE_TYPES:
            raise bad(f"unknown haemorrhage type {self.haemorrhage!r}; use one of {', '.join(HAEMORRHAGE_TYPES)}")
        if self.haemorrhage is not None and not 0.05 <= self.haemorrhage_volume_ml <= 200:
            raise bad(f"haemorrhage volume {self.haemorrhage_volume_ml} mL is outside 0.05-200 mL")
        sides = ("left", "right", "both") if self.haemorrhage == "IVH" else ("left", "right")
        if self.haemorrhage is not None and self.haemorrhage_side not in (None, *sides):
            raise bad(f"haemorrhage side {self.haemorrhage_side!r} is not one of {', '.join(sides)}")
        if self.haemorrhage_location is not None:
            allowed = {"IPH": IPH_LOCATIONS, "EAH": EAH_LOCATIONS}.get(self.haemorrhage or "", ())
            if self.haemorrhage_location not in allowed:
                raise bad(f"location {self.haemorrhage_location!r} is not known for {self.haemorrhage}; "
                          f"use one of {', '.join(allowed) or '(none)'}")
        if not 0 <= self.midline_shift_mm <= 20:
            raise bad(f"midline shift {self.midline_shift_mm} mm is outside 0-20 mm")
        if self.midline_shift_direction not in (None, "left", "right"):
            raise bad(f"midline shift direction {self.midline_shift_direction!r} is not left or right")
        if not 0.3 <= self.slice_thickness_mm <= 10:
            raise bad(f"slice thickness {self.slice_thickness_mm} mm is outside 0.3-10 mm")
        if self.slice_spacing_mm is not None and not 0.3 <= self.slice_spacing_mm <= 20:
            raise bad(f"slice spacing {self.slice_spacing_mm} mm is outside 0.3-20 mm")
        if not 0.1 <= self.pixel_spacing_mm <= 5:
            raise bad(f"pixel spacing {self.pixel_spacing_mm} mm is outside 0.1-5 mm")
        if not 16 <= self.matrix <= 1024:
            raise bad(f"matrix {self.matrix} is outside 16-1024")
        if self.n_slices is not None and not 1 <= self.n_slices <= 2000:
            raise bad(f"number of slices {self.n_slices} is outside 1-2000")
        if not 5 <= self.z_coverage_mm <= 400:
            raise bad(f"z coverage {self.z_coverage_mm} mm is outside 5-400 mm")
        if not -35 <= self.gantry_tilt_deg <= 35:
            raise bad(f"gantry tilt {self.gantry_tilt_deg} degrees is outside -35..35")
        if self.compression not in COMPRESSIONS:
            raise bad(f"compression {self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        if not 0 <= self.patient_age_years <= 120:
            raise bad(f"patient age {self.patient_age_years} years is outside 0-120")
        if not 0 <= self.noise_hu <= 100:
            raise bad(f"noise {self.noise_hu} HU is outside 0-100 HU")
        if not 0 <= self.oedema_rim_mm <= 20:
            raise bad(f"oedema rim {self.oedema_rim_mm} mm is outside 0-20 mm")
        if self.oedema_rim_mm > 0 and self.haemorrhage != "IPH":
            raise bad("an oedema rim needs an IPH haemorrhage")
        for name in ("head_yaw_deg", "head_roll_deg", "head_pitch_deg"):
            if not -30 <= getattr(self, name) <= 30:
                raise bad(f"{name.replace('_', ' ')} {getattr(self, name)} is outside -30..30")
        if len(self.head_offset_mm) != 3 or any(abs(v) > 60 for v in self.head_offset_mm):
            raise bad(f"head offset {self.head_offset_mm} mm needs three values within +-60 mm")
        if self.slice_blocks is not None:
            blocks = tuple(self.slice_blocks)
            if not blocks or any(len(b) != 2 or not 0.3 <= float(b[0]) <= 10 or int(b[1]) < 1 for b in blocks):
                raise bad("slice blocks need (thickness 0.3-10 mm, count >= 1) pairs")
            if sum(int(b[1]) for b in blocks) > 2000:
                raise bad("slice blocks add up to more than 2000 slices")
        if self.slice_blocks is not None and self.n_slices is not None:
            raise bad("give either slice blocks or a number of slices, not both")
        if self.haemorrhage_centre_lps_mm is not None and len(self.haemorrhage_centre_lps_mm) != 3:
            raise bad("the haemorrhage centre needs three coordinates in mm")
        if self.gap_after_slice is not None and not (self.gap_after_slice >= 1 and 0 < self.gap_mm <= 300):
            raise bad(f"a gap needs gap_after_slice >= 1 and 0 < gap_mm <= 300 (got {self.gap_after_slice}, "
                      f"{self.gap_mm})")
        if not 1 <= self.partial_volume_samples <= 15:
            raise bad(f"partial-volume samples {self.partial_volume_samples} is outside 1-15")
        return self

    @property
    def side(self) -> str:
        """The haemorrhage side with its default resolved ("left", "right" or "both")."""
        if self.haemorrhage_side is not None:
            return self.haemorrhage_side
        return "both" if self.haemorrhage == "IVH" else "right"


# ---------------------------------------------------------------------------
# Geometry of the written grid
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PhantomGeometry:
    """Where the written DICOM pixels lie (LPS mm).

    Pixel (column i, row j) of slice k lies at ``ipp[k] + i*dc*row_dir +
    j*dr*col_dir``; slices are ordered inferior to superior. With gantry tilt
    the stack is sheared: the planes are tilted about patient x (GE style) and
    the positions advance along the table (z) only.
    """

    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing), DICOM order
    image_orientation_patient: tuple[float, float, float, float, float, float]
    image_positions_patient: tuple[tuple[float, float, float], ...]
    slice_thickness_mm: float
    slice_spacing_mm: float  # between the planes, along their normal
    table_increment_mm: float  # between image positions, along z
    gantry_tilt_deg: float
    slice_thicknesses_mm: tuple[float, ...] | None = None  # per slice, for irregular stacks only

    @property
    def is_regular(self) -> bool:
        """True when every slice has the same thickness and spacing."""
        return self.slice_thicknesses_mm is None

    @property
    def normal_positions_mm(self) -> np.ndarray:
        """Position of each plane along the normal, relative to the first."""
        ipp = np.array(self.image_positions_patient, dtype=float)
        return (ipp - ipp[0]) @ self.normal

    def thickness_of(self, k: int) -> float:
        """Slice thickness of slice ``k``."""
        return self.slice_thickness_mm if self.slice_thicknesses_mm is None else self.slice_thicknesses_mm[k]

    @property
    def slice_extents_mm(self) -> np.ndarray:
        """The length along the normal each slice stands for when volumes are counted.

        ``slice_spacing_mm`` for a regular stack; for an irregular one, half the
        distance to each neighbour (the end slices use their one neighbour).
        """
        n = self.n_slices
        if self.is_regular or n == 1:
            return np.full(n, self.slice_spacing_mm if n > 1 else self.slice_thickness_mm)
        s = self.normal_positions_mm
        e = np.empty(n)
        e[1:-1] = (s[2:] - s[:-2]) / 2.0
        e[0], e[-1] = s[1] - s[0], s[-1] - s[-2]
        return e

    @property
    def n_slices(self) -> int:
        """Number of slices."""
        return len(self.image_positions_patient)

    @property
    def row_direction(self) -> np.ndarray:
        """Direction of increasing column index (LPS)."""
        return np.array(self.image_orientation_patient[:3], dtype=float)

    @property
    def column_direction(self) -> np.ndarray:
        """Direction of increasing row index (LPS)."""
        return np.array(self.image_orientation_patient[3:], dtype=float)

    @property
    def normal(self) -> np.ndarray:
        """Unit normal of the image planes."""
        return np.cross(self.row_direction, self.column_direction)

    @property
    def affine(self) -> np.ndarray:
        """4x4 (i, j, k) -> LPS mm affine of the stack (sheared when tilted)."""
        ipp = np.array(self.image_positions_patient, dtype=float)
        step = (ipp[-1] - ipp[0]) / (len(ipp) - 1) if len(ipp) > 1 else self.normal * self.slice_spacing_mm
        out = np.eye(4)
        out[:3, 0] = self.row_direction * self.pixel_spacing_mm[1]
        out[:3, 1] = self.column_direction * self.pixel_spacing_mm[0]
        out[:3, 2] = step
        out[:3, 3] = ipp[0]
        return out

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel (pixel area x slice spacing) in mL (the median spacing when irregular)."""
        return self.pixel_spacing_mm[0] * self.pixel_spacing_mm[1] * self.slice_spacing_mm / 1000.0

    @property
    def is_orthogonal(self) -> bool:
        """True when the stack advances along the plane normal (no tilt)."""
        return abs(self.gantry_tilt_deg) < 1e-9


def _normal_positions(spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray]:
    """(plane positions along the normal from the first, thickness) of every slice, inferior first."""
    if spec.slice_blocks:
        pos, thick = [], []
        for t, count in spec.slice_blocks:
            for _ in range(int(count)):
                if pos:
                    pos.append(pos[-1] + (thick[-1] + float(t)) / 2.0)
                else:
                    pos.append(0.0)
                thick.append(float(t))
        s, t_arr = np.array(pos), np.array(thick)
    else:
        spacing = spec.slice_spacing_mm or spec.slice_thickness_mm
        n = spec.n_slices or max(1, int(round(spec.z_coverage_mm / spacing)))
        s, t_arr = np.arange(n) * spacing, np.full(n, spec.slice_thickness_mm)
    if spec.gap_after_slice is not None and spec.gap_after_slice < len(s):
        s[spec.gap_after_slice:] += spec.gap_mm
    return s, t_arr


def phantom_geometry(spec: PhantomSpec) -> PhantomGeometry:
    """The written grid of a spec: a matrix x matrix FOV centred on the head."""
    spec = spec.validated()
    tilt = math.radians(spec.gantry_tilt_deg)
    s, thick = _normal_positions(spec)
    n = len(s)
    steps = np.diff(s)
    regular = bool(np.allclose(thick, thick[0]) and (n < 3 or np.allclose(steps, steps[0])))
    spacing = float(steps[0]) if regular and n > 1 else float(np.median(steps)) if n > 1 else float(thick[0])
    if not spec.slice_blocks and spec.gap_after_slice is None:
        spacing = spec.slice_spacing_mm or spec.slice_thickness_mm
    table = s / math.cos(tilt)  # positions advance along the table
    k = _head_scale(spec.patient_age_years)
    m = head_rotation(spec)
    scalp_semi = k * (np.array(_INNER_TABLE_SEMI_MM) + 12.0)
    z_top = float(spec.head_offset_mm[2]) + float(np.sqrt(((m[2] * scalp_semi) ** 2).sum())) + 3.0  # 3 mm above the vertex
    centres_z = z_top - (table[-1] - table)
    if spec.n_slices is not None and not spec.slice_blocks:  # centre a given number of slices on the head
        centres_z = centres_z - (centres_z[0] + centres_z[-1]) / 2.0 + _head_centre_z(spec, k)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, math.cos(tilt), -math.sin(tilt)])  # GE: +tilt -> negative z component
    d = spec.pixel_spacing_mm
    half = (spec.matrix - 1) / 2.0
    ipps = tuple(
        tuple(float(round(v, 6)) for v in (np.array([0.0, 0.0, zc]) - half * d * row - half * d * col))
        for zc in centres_z
    )
    iop = tuple(float(round(v, 9)) for v in (*row, *col))
    return PhantomGeometry(
        rows=spec.matrix,
        columns=spec.matrix,
        pixel_spacing_mm=(d, d),
        image_orientation_patient=iop,  # type: ignore[arg-type]
        image_positions_patient=ipps,
        slice_thickness_mm=float(thick[0]) if regular else float(np.median(thick)),
        slice_spacing_mm=spacing,
        table_increment_mm=spacing / math.cos(tilt),
        gantry_tilt_deg=spec.gantry_tilt_deg,
        slice_thicknesses_mm=None if regular else tuple(float(v) for v in thick),
    )


def _head_scale(age_years: float) -> float:
    """Linear head size relative to an adult (children have smaller heads)."""
    if age_years >= 16:
        return 1.0
    return 0.72 + 0.28 * math.sqrt(max(age_years, 0.0) / 16.0)


def _head_centre_z(spec: PhantomSpec, k: float) -> float:
    """The z a fixed slice count is centred on (mid-cranium, a little low)."""
    return -8.0 * k + float(spec.head_offset_mm[2])


def head_rotation(spec: PhantomSpec) -> np.ndarray:
    """3x3 rotation taking head-frame vectors to LPS (pitch about x, then roll about y, then yaw about z)."""
    a, b, c = (math.radians(v) for v in (spec.head_pitch_deg, spec.head_roll_deg, spec.head_yaw_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _pose(spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """(R, t) with head = R (p - t), or None for the neutral pose."""
    m = head_rotation(spec)
    t = np.array(spec.head_offset_mm, dtype=float)
    if np.allclose(m, np.eye(3)) and not t.any():
        return None
    return m.T, t


def _to_lps(spec: PhantomSpec, p_head: Sequence[float]) -> list[float]:
    return [float(v) for v in head_rotation(spec) @ np.asarray(p_head, dtype=float) + np.array(spec.head_offset_mm)]


def _to_head(spec: PhantomSpec, p_lps: Sequence[float]) -> np.ndarray:
    return head_rotation(spec).T @ (np.asarray(p_lps, dtype=float) - np.array(spec.head_offset_mm))


# ---------------------------------------------------------------------------
# Analytic anatomy
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ellipsoid:
    centre: tuple[float, float, float]
    semi: tuple[float, float, float]

    def bbox(self, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        c, s = np.array(self.centre), np.array(self.semi)
        return c - s - pad, c + s + pad

    def q(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Squared normalised radius (< 1 inside)."""
        (cx, cy, cz), (a, b, c) = self.centre, self.semi
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2

    def scaled(self, anchor: Sequence[float], factors: Sequence[float], semi_factors: Sequence[float]) -> "_Ellipsoid":
        c = tuple(float(a + f * (v - a)) for v, a, f in zip(self.centre, anchor, factors))
        s = tuple(float(v * f) for v, f in zip(self.semi, semi_factors))
        return _Ellipsoid(c, s)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Capsule:
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    radius: float

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.array(self.a), np.array(self.b)
        return np.minimum(a, b) - self.radius, np.maximum(a, b) + self.radius

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        a, b = np.array(self.a, dtype=float), np.array(self.b, dtype=float)
        ab = b - a
        t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / float(ab @ ab)
        t = np.clip(t, 0.0, 1.0)
        d2 = (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2
        return d2 < self.radius**2


@dataclass(frozen=True)
class _Haemorrhage:
    """A fitted haemorrhage: membership = kind-specific key < threshold."""

    kind: str
    side: str  # "left", "right", "both"
    hu: float
    threshold: float
    # IPH: ellipsoid quadratic form normalised by the base semi-axes
    ellipsoid: _Ellipsoid | None = None
    oedema_semi: tuple[float, float, float] | None = None  # absolute semi-axes of the oedema ellipsoid
    # EAH: thickest direction and angular half-extent
    direction: tuple[float, float, float] | None = None
    half_angle_rad: float = 0.0
    # IVH: the dependent direction (towards the table in a supine patient) in the head frame
    gravity: tuple[float, float, float] = (0.0, 1.0, 0.0)


@dataclass(frozen=True)
class _Anatomy:
    """All analytic parameters of one head (lengths already scaled by age)."""

    k: float
    scalp: _Ellipsoid
    fat: _Ellipsoid
    galea: _Ellipsoid
    skull: _Ellipsoid
    diploe: _Ellipsoid
    inner_table_bone: _Ellipsoid
    intracranial: _Ellipsoid
    brain: _Ellipsoid
    white: _Ellipsoid
    deep_grey: tuple[_Ellipsoid, ...]
    ventricles_left: tuple[_Ellipsoid, ...]
    ventricles_right: tuple[_Ellipsoid, ...]
    third_ventricle: _Ellipsoid
    cistern: _Ellipsoid
    falx_free_edge: _Ellipsoid  # the falx lies outside this (in y-z)
    neck: _Ellipsoid  # an elliptic cylinder below neck_top_z (z semi ignored)
    neck_top_z: float
    spine: _Capsule
    arteries: tuple[_Capsule, ...]
    shift_signed_mm: float
    shift_plateau: float  # normalised intracranial radius of the rigid-shift plateau
    ventricle_dilation: float
    contrast: bool
    detail: bool = False
    sulcal_csf_eps: float = 0.2
    metal: _Capsule | None = None
    haemorrhage: _Haemorrhage | None = None


def _build_anatomy(spec: PhantomSpec, ventricle_dilation: float | None = None) -> _Anatomy:
    """The analytic head for a spec (without the haemorrhage)."""
    k = _head_scale(spec.patient_age_years)
    age = spec.patient_age_years
    E = lambda c, s: _Ellipsoid(tuple(k * v for v in c), tuple(k * v for v in s))  # noqa: E731
    inner = _INNER_TABLE_SEMI_MM
    grow = lambda s, d: tuple(v + d for v in s)  # noqa: E731
    csf_rim = 2.0 + 0.05 * max(0.0, age - 40.0)  # atrophy widens the subarachnoid space
    brain_semi = grow(inner, -csf_rim)
    if ventricle_dilation is None:
        ventricle_dilation = 1.0 + 0.007 * max(0.0, age - 30.0)
    s = ventricle_dilation
    sy = math.sqrt(s)

    def ventricle(side: float) -> tuple[_Ellipsoid, ...]:
        anchor = (side * _SEPTUM_HALF_MM * k, 0.0, 10.0 * k)
        # component centres keep the inner wall at the septum: x = side*(1.5 + semi_x)
        parts = [
            ((1.5 + 5.5, -2.0, 14.0), (5.5, 26.0, 6.5)),   # body
            ((1.5 + 6.0, -24.0, 10.0), (6.0, 9.0, 8.0)),   # frontal horn
            ((1.5 + 9.5, 24.0, 8.0), (5.0, 12.0, 6.0)),    # atrium / occipital horn
        ]
        out = []
        for c, sm in parts:
            e = _Ellipsoid((side * c[0] * k, c[1] * k, c[2] * k), tuple(v * k for v in sm))
            out.append(e.scaled(anchor, (s, sy, s), (s, sy, s)))
        # temporal horns: only their calibre grows
        t = _Ellipsoid((side * 31.0 * k, 4.0 * k, -20.0 * k), (3.0 * k, 12.0 * k, 3.0 * k))
        out.append(_Ellipsoid(t.centre, (t.semi[0] * sy, t.semi[1], t.semi[2] * sy)))
        return tuple(out)

    deep = tuple(
        E((sd * cx, cy, cz), sm)
        for sd in (-1.0, 1.0)
        for cx, cy, cz, sm in (
            (11.0, 9.0, 4.0, (8.0, 12.0, 8.0)),    # thalamus
            (23.0, -5.0, 3.0, (6.0, 14.0, 9.0)),   # lentiform nucleus
            (11.0, -17.0, 11.0, (4.5, 8.0, 8.0)),  # caudate head
        )
    )
    arteries = (
        _Capsule((-12 * k, -10 * k, -75 * k), (-12 * k, -10 * k, -22 * k), 2.2 * k),  # ICAs
        _Capsule((12 * k, -10 * k, -75 * k), (12 * k, -10 * k, -22 * k), 2.2 * k),
        _Capsule((0.0, 16 * k, -75 * k), (0.0, 6 * k, -24 * k), 1.6 * k),  # basilar
        _Capsule((-12 * k, -10 * k, -22 * k), (-45 * k, -8 * k, -16 * k), 1.5 * k),  # MCAs
        _Capsule((12 * k, -10 * k, -22 * k), (45 * k, -8 * k, -16 * k), 1.5 * k),
        _Capsule((-3 * k, -14 * k, -18 * k), (-3 * k, -45 * k, 18 * k), 1.2 * k),  # ACAs
        _Capsule((3 * k, -14 * k, -18 * k), (3 * k, -45 * k, 18 * k), 1.2 * k),
    )
    return _Anatomy(
        k=k,
        scalp=E((0, 0, 0), grow(inner, 12.0)),
        fat=E((0, 0, 0), grow(inner, 10.5)),
        galea=E((0, 0, 0), grow(inner, 8.5)),
        skull=E((0, 0, 0), grow(inner, 7.0)),
        diploe=E((0, 0, 0), grow(inner, 5.2)),
        inner_table_bone=E((0, 0, 0), grow(inner, 2.0)),
        intracranial=E((0, 0, 0), inner),
        brain=E((0, 0, 0), brain_semi),
        white=E((0, 0, 0), grow(brain_semi, -3.5)),
        deep_grey=deep,
        ventricles_left=ventricle(+1.0),
        ventricles_right=ventricle(-1.0),
        third_ventricle=E((0, 5, 2), (2.2, 12.0, 8.0)),
        cistern=E((0, -6, -24), (11.0, 9.0, 5.0)),
        falx_free_edge=E((0, 0, -5), (1e6, 48.0, 36.0)),
        neck=E((0, 12, 0), (48.0, 52.0, 1.0)),
        neck_top_z=-40.0 * k,
        spine=_Capsule((0.0, 38 * k, -300.0), (0.0, 38 * k, -75 * k), 9.0 * k),
        arteries=arteries,
        shift_signed_mm=_signed_shift(spec),
        shift_plateau=0.5,
        ventricle_dilation=float(ventricle_dilation),
        contrast=spec.contrast,
        detail=spec.detailed_anatomy,
        metal=_Capsule((-36 * k, -8 * k, -17 * k), (-44 * k, -8 * k, -14 * k), 1.6 * k) if spec.metal_artefact else None,
        sulcal_csf_eps=0.18 + 0.004 * max(0.0, age - 40.0),
    )


def _signed_shift(spec: PhantomSpec) -> float:
    """Midline shift in mm, positive towards patient left (+x)."""
    if spec.midline_shift_mm == 0:
        return 0.0
    direction = spec.midline_shift_direction
    if direction is None:
        side = spec.side if spec.haemorrhage else "both"
        direction = "right" if side == "left" else "left"  # away from the lesion (left when none or both)
    return spec.midline_shift_mm if direction == "left" else -spec.midline_shift_mm


def _displacement(anat: _Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray | float:
    """Lateral displacement (mm) of the brain at final position (x, y, z).

    Equal to the shift inside a central plateau (normalised intracranial
    radius < plateau), decaying as a raised cosine to 0 at the inner table.
    The map x -> x - d stays monotonic for shifts up to ~20 mm.
    """
    if anat.shift_signed_mm == 0:
        return 0.0
    rho = np.sqrt(anat.intracranial.q(x, y, z))
    p0 = anat.shift_plateau
    t = np.clip((rho - p0) / (1.0 - p0), 0.0, 1.0)
    return (anat.shift_signed_mm * 0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def _inner_depth(anat: _Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(depth below the inner table in mm, distance from the head centre) - approximate but smooth."""
    cx, cy, cz = anat.intracranial.centre
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
    rho = np.sqrt(anat.intracranial.q(x, y, z))
    return r * (1.0 / np.maximum(rho, 1e-6) - 1.0), r


# ---------------------------------------------------------------------------
# The painter: evaluate the phantom on a structured block of points
# ---------------------------------------------------------------------------
class _Block:
    """Points x[i] (1-D, columns) x (y, z)[t, j] (2-D: sub-sample/plane, rows).

    Every point is (xs[i], ys[t, j], zs[t, j]); arrays are [t, j, i]. This
    covers untilted and tilted (about x) stacks and fine 3-D grids.
    """

    def __init__(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray,
                 pose: tuple[np.ndarray, np.ndarray] | None = None):
        self._pose = None if pose is None else (np.asarray(pose[0], dtype=np.float32),
                                                np.asarray(pose[1], dtype=np.float32))
        self.xs = np.asarray(xs, dtype=np.float32)
        self.ys = np.asarray(ys, dtype=np.float32)
        self.zs = np.asarray(zs, dtype=np.float32)
        shape = (self.ys.shape[0], self.ys.shape[1], self.xs.shape[0])
        self.hu = np.full(shape, HU["air"], dtype=np.float32)
        self.tissue = np.zeros(shape, dtype=np.uint8)
        self.label = np.zeros(shape, dtype=np.uint8)
        self._disp: np.ndarray | None = None
        self._disp_box: tuple[slice, slice] | None = None
        self._anat: _Anatomy | None = None

    def region(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice] | None:
        """Row and column slices whose points may fall inside the (head-frame) box [lo, hi]."""
        if self._pose is not None:
            rot, t = self._pose
            corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
            image = corners @ rot + t  # p = R^T p_head + t, as row vectors
            lo, hi = image.min(axis=0), image.max(axis=0)
        ii = np.nonzero((self.xs >= lo[0]) & (self.xs <= hi[0]))[0]
        if ii.size == 0:
            return None
        rows = ((self.ys >= lo[1]) & (self.ys <= hi[1]) & (self.zs >= lo[2]) & (self.zs <= hi[2])).any(axis=0)
        jj = np.nonzero(rows)[0]
        if jj.size == 0:
            return None
        return slice(int(jj[0]), int(jj[-1]) + 1), slice(int(ii[0]), int(ii[-1]) + 1)

    def image_region(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice] | None:
        """Like :meth:`region` for a box in the scanner (image) frame."""
        pose, self._pose = self._pose, None
        try:
            return self.region(lo, hi)
        finally:
            self._pose = pose

    def image_coords(self, box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scanner-frame (LPS) coordinates of the points in ``box``."""
        rs, cs = box
        return self.xs[None, None, cs], self.ys[:, rs, None], self.zs[:, rs, None]

    def coords(self, box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head-frame coordinates of the points in ``box`` (broadcastable arrays)."""
        rs, cs = box
        x, y, z = self.xs[None, None, cs], self.ys[:, rs, None], self.zs[:, rs, None]
        if self._pose is None:
            return x, y, z
        r, t = self._pose
        dx, dy, dz = x - t[0], y - t[1], z - t[2]
        return (r[0, 0] * dx + r[0, 1] * dy + r[0, 2] * dz,
                r[1, 0] * dx + r[1, 1] * dy + r[1, 2] * dz,
                r[2, 0] * dx + r[2, 1] * dy + r[2, 2] * dz)

    def set_displacement(self, anat: _Anatomy) -> None:
        self._anat = anat
        lo, hi = anat.intracranial.bbox(abs(anat.shift_signed_mm))
        box = self.region(lo, hi)
        self._disp_box = box
        if box is None or anat.shift_signed_mm == 0:
            self._disp = None
            return
        x, y, z = self.coords(box)
        self._disp = np.broadcast_to(_displacement(anat, x, y, z), (self.ys.shape[0], box[0].stop - box[0].start,
                                                                    box[1].stop - box[1].start))

    def warped_coords(self, box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Source coordinates (x - displacement) of the brain inside ``box``."""
        x, y, z = self.coords(box)
        if self._anat is None or self._anat.shift_signed_mm == 0:
            return x, y, z
        rs, cs = box
        if self._disp is not None and self._disp_box is not None:
            drs, dcs = self._disp_box
            if drs.start <= rs.start and rs.stop <= drs.stop and dcs.start <= cs.start and cs.stop <= dcs.stop:
                d = self._disp[:, rs.start - drs.start: rs.stop - drs.start, cs.start - dcs.start: cs.stop - dcs.start]
                return x - d, y, z
        return x - _displacement(self._anat, x, y, z), y, z

    def paint(self, box: tuple[slice, slice], mask: np.ndarray, hu: float, tissue: int) -> None:
        rs, cs = box
        mask = np.broadcast_to(mask, (self.ys.shape[0], rs.stop - rs.start, cs.stop - cs.start))
        np.copyto(self.hu[:, rs, cs], np.float32(hu), where=mask)
        np.copyto(self.tissue[:, rs, cs], np.uint8(tissue), where=mask)


def _paint_ellipsoid(blk: _Block, e: _Ellipsoid, hu: float, tissue: int, warped: bool, pad: float = 0.0,
                     within: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None) -> None:
    lo, hi = e.bbox(pad)
    box = blk.region(lo, hi)
    if box is None:
        return
    x, y, z = blk.warped_coords(box) if warped else blk.coords(box)
    mask = e.q(x, y, z) < 1.0
    if within is not None:
        mask = mask & within(x, y, z)
    blk.paint(box, mask, hu, tissue)


def _paint_anatomy(blk: _Block, anat: _Anatomy) -> None:
    """Paint every normal structure, outside in; later paints win."""
    T = TISSUES
    shift_pad = abs(anat.shift_signed_mm)
    # neck (an elliptic cylinder under the head) and cervical spine
    n = anat.neck
    lo = np.array([n.centre[0] - n.semi[0], n.centre[1] - n.semi[1], -1e4])
    hi = np.array([n.centre[0] + n.semi[0], n.centre[1] + n.semi[1], anat.neck_top_z])
    box = blk.region(lo, hi)
    if box is not None:
        x, y, z = blk.coords(box)
        r2 = ((x - n.centre[0]) / n.semi[0]) ** 2 + ((y - n.centre[1]) / n.semi[1]) ** 2
        blk.paint(box, (r2 < 1.0) & (z < anat.neck_top_z), HU["soft_tissue"], T["soft_tissue"])
        blk.paint(box, (r2 < 0.72) & (r2 >= 0.6) & (z < anat.neck_top_z), HU["fat"], T["fat"])
    lo, hi = anat.spine.bbox()
    box = blk.region(lo, hi)
    if box is not None:
        x, y, z = blk.coords(box)
        blk.paint(box, anat.spine.inside(x, y, z), HU["diploe"], T["diploe"])
    # scalp, skull
    _paint_ellipsoid(blk, anat.scalp, HU["soft_tissue"], T["soft_tissue"], False)
    _paint_ellipsoid(blk, anat.fat, HU["fat"], T["fat"], False)
    _paint_ellipsoid(blk, anat.galea, HU["soft_tissue"], T["soft_tissue"], False)
    _paint_ellipsoid(blk, anat.skull, HU["cortical_bone"], T["cortical_bone"], False)
    _paint_ellipsoid(blk, anat.diploe, HU["diploe"], T["diploe"], False)
    _paint_ellipsoid(blk, anat.inner_table_bone, HU["cortical_bone"], T["cortical_bone"], False)
    _paint_ellipsoid(blk, anat.intracranial, HU["csf"], T["csf"], False)
    # brain (displaced by the midline shift)
    blk.set_displacement(anat)
    _paint_ellipsoid(blk, anat.brain, HU["grey_matter"], T["grey_matter"], True, shift_pad)
    _paint_ellipsoid(blk, anat.white, HU["white_matter"], T["white_matter"], True, shift_pad)
    for e in anat.deep_grey:
        _paint_ellipsoid(blk, e, HU["deep_grey"], T["deep_grey"], True, shift_pad)
    if anat.detail:
        _paint_sulci(blk, anat)
        k = anat.k
        _paint_ellipsoid(blk, _Ellipsoid((0, 22 * k, -40 * k), (13 * k, 12 * k, 19 * k)), 32.0, T["white_matter"],
                         True, shift_pad)  # brainstem (pons, medulla)
        _paint_ellipsoid(blk, _Ellipsoid((0, 7 * k, -40 * k), (9 * k, 3.5 * k, 13 * k)), HU["csf"], T["csf"],
                         True, shift_pad)  # prepontine cistern
        _paint_ellipsoid(blk, _Ellipsoid((0, 38 * k, -32 * k), (5 * k, 4 * k, 7 * k)), HU["csf"], T["csf"],
                         True, shift_pad)  # fourth ventricle
    for e in anat.ventricles_left:
        _paint_ellipsoid(blk, e, HU["ventricle"], T["lateral_ventricle_left"], True, shift_pad)
    for e in anat.ventricles_right:
        _paint_ellipsoid(blk, e, HU["ventricle"], T["lateral_ventricle_right"], True, shift_pad)
    _paint_ellipsoid(blk, anat.third_ventricle, HU["ventricle"], T["third_ventricle"], True, shift_pad)
    _paint_ellipsoid(blk, anat.cistern, HU["csf"], T["csf"], True, shift_pad)
    # interhemispheric fissure and falx: a thin sagittal sheet above the free edge
    ic = anat.intracranial
    fissure_half = 1.8 * anat.k
    lo, hi = ic.bbox()
    lo[0], hi[0] = -fissure_half - shift_pad, fissure_half + shift_pad
    box = blk.region(lo, hi)
    if box is not None:
        x, y, z = blk.warped_coords(box)
        fe = anat.falx_free_edge
        sheet = (((y - fe.centre[1]) / fe.semi[1]) ** 2 + ((z - fe.centre[2]) / fe.semi[2]) ** 2 > 1.0)
        sheet = sheet & (ic.q(*blk.coords(box)) < 1.0) & (anat.brain.q(x, y, z) < 1.0)
        blk.paint(box, sheet & (np.abs(x) < fissure_half), HU["csf"], T["csf"])
        blk.paint(box, sheet & (np.abs(x) < 0.6 * anat.k), HU["falx"], T["falx"])
    # dural venous sinuses (attached to the skull: not displaced)
    sinus_hu = HU["venous_sinus_contrast"] if anat.contrast else HU["venous_sinus"]
    lo, hi = ic.bbox()
    lo[0], hi[0] = -6.0 * anat.k, 6.0 * anat.k
    box = blk.region(lo, hi)
    if box is not None:
        x, y, z = blk.coords(box)
        depth, _ = _inner_depth(anat, x, y, z)
        sss = (depth < 7.0 * anat.k) & (np.abs(x) < 0.55 * (7.0 * anat.k - depth)) & ((z > -5 * anat.k) | (y > 55 * anat.k))
        sss = sss & (ic.q(x, y, z) < 1.0)
        blk.paint(box, sss, sinus_hu, T["venous_sinus"])
    lo, hi = ic.bbox()
    lo[1], lo[2], hi[2] = 30.0 * anat.k, -22.0 * anat.k, -8.0 * anat.k
    box = blk.region(lo, hi)
    if box is not None:
        x, y, z = blk.coords(box)
        depth, _ = _inner_depth(anat, x, y, z)
        ts = (depth < 5.0 * anat.k) & (np.abs(z + 15.0 * anat.k) < 3.5 * anat.k) & (np.abs(x) > 4.0 * anat.k)
        blk.paint(box, ts & (ic.q(x, y, z) < 1.0), sinus_hu, T["venous_sinus"])
    if anat.detail:
        _paint_headrest(blk, anat)
    if anat.metal is not None:
        lo, hi = anat.metal.bbox()
        box = blk.region(lo, hi)
        if box is not None:
            blk.paint(box, anat.metal.inside(*blk.coords(box)), _HU_MAX, TISSUES["metal"])
    if anat.contrast:
        for cap in anat.arteries:
            lo, hi = cap.bbox()
            lo[0] -= shift_pad
            hi[0] += shift_pad
            box = blk.region(lo, hi)
            if box is None:
                continue
            x, y, z = blk.warped_coords(box)
            blk.paint(box, cap.inside(x, y, z), HU["artery_contrast"], T["artery"])


_SULCAL_WAVES = np.random.default_rng(20260101).normal(size=(8, 3))
_SULCAL_WAVES /= np.linalg.norm(_SULCAL_WAVES, axis=1, keepdims=True)
_SULCAL_PHASES = np.random.default_rng(20260102).uniform(0, 2 * np.pi, size=8)
_SULCAL_WAVELENGTH_MM = 22.0  # along the brain surface
_SULCAL_DEPTH_MM = 12.0


def _paint_sulci(blk: _Block, anat: _Anatomy) -> None:
    """Cortical sulci: radial CSF clefts near the brain surface, lined by grey matter.

    The clefts are the zero set of a smooth random field of the *direction*
    from the brain centre, so they run perpendicular to the surface.
    """
    lo, hi = anat.brain.bbox(abs(anat.shift_signed_mm))
    box = blk.region(lo, hi)
    if box is None:
        return
    x, y, z = np.broadcast_arrays(*blk.warped_coords(box))
    q = anat.brain.q(x, y, z)
    r = np.sqrt(x * x + y * y + z * z)
    depth = r * (1.0 / np.sqrt(np.maximum(q, 1e-9)) - 1.0)
    deep = _SULCAL_DEPTH_MM * anat.k
    idx = np.nonzero((q < 1.0) & (depth < deep + 3.0) & (np.abs(x) > 2.5 * anat.k))
    if idx[0].size == 0:
        return
    px, py, pz = x[idx], y[idx], z[idx]
    radius = 65.0 * anat.k  # the field is laid on a sphere of this radius
    kmag = 2 * np.pi / (_SULCAL_WAVELENGTH_MM * anat.k) * radius
    inv_r = 1.0 / np.maximum(r[idx], 1e-3)
    ux, uy, uz = px * inv_r, py * inv_r, pz * inv_r
    w = np.zeros(px.shape, dtype=np.float32)
    for (a, b, c), phase in zip(_SULCAL_WAVES, _SULCAL_PHASES):
        w += np.cos(kmag * (a * ux + b * uy + c * uz) + phase).astype(np.float32)
    w = np.abs(w) / np.float32(math.sqrt(len(_SULCAL_PHASES) / 2.0))
    d = depth[idx]
    grey = np.zeros(x.shape, dtype=bool)
    grey[idx] = (w < 0.75) & (d < deep + 3.0)
    blk.paint(box, grey, HU["grey_matter"], TISSUES["grey_matter"])
    csf = np.zeros(x.shape, dtype=bool)
    csf[idx] = (w < anat.sulcal_csf_eps) & (d < deep)
    blk.paint(box, csf, HU["csf"], TISSUES["csf"])


def _paint_headrest(blk: _Block, anat: _Anatomy) -> None:
    """A headrest fixed in the scanner frame (it does not move with the head pose)."""
    # headrest: a 4 mm carbon-fibre shell (~200 HU) on a cylinder about the scanner z axis, posterior only
    radius, thickness = 112.0, 4.0
    lo = np.array([-radius - thickness, 60.0, -1e4])
    hi = np.array([radius + thickness, radius + thickness, 1e4])
    box = blk.image_region(lo, hi)
    if box is None:
        return
    x, y, z = blk.image_coords(box)
    rr = np.sqrt(x * x + (y + 10.0) ** 2)  # 8 mm of foam behind the occiput
    shell = (rr > radius) & (rr < radius + thickness) & (y > 60.0)
    blk.paint(box, np.broadcast_to(shell, np.broadcast_shapes(x.shape, y.shape, z.shape)), 200.0,
              TISSUES["headrest"])


def _haemorrhage_key(blk: _Block, anat: _Anatomy, h: _Haemorrhage, box: tuple[slice, slice],
                     tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eligible mask, key) inside ``box``: the haemorrhage is eligible & key < threshold."""
    x, y, z = blk.coords(box)
    shape = tissue.shape
    if h.kind == "IPH":
        xs, _, _ = blk.warped_coords(box)
        sign = 1.0 if h.side == "left" else -1.0
        parenchyma = np.isin(tissue, PARENCHYMA_TISSUES)
        if anat.detail:  # a lobar haematoma fills the sulci it reaches
            _, yw, zw = blk.warped_coords(box)
            parenchyma |= (tissue == TISSUES["csf"]) & (anat.brain.q(xs, yw, zw) < 1.0) & (anat.cistern.q(xs, yw, zw) >= 1.0)
        eligible = parenchyma & (sign * xs > 2.0 * anat.k)
        key = h.ellipsoid.q(x, y, z)  # type: ignore[union-attr]
    elif h.kind == "EAH":
        xs, _, _ = blk.warped_coords(box)
        sign = 1.0 if h.side == "left" else -1.0
        inside = anat.intracranial.q(x, y, z) < 1.0
        eligible = inside & (sign * xs > 2.0 * anat.k) & (tissue != TISSUES["venous_sinus"])
        depth, r = _inner_depth(anat, x, y, z)
        u = np.array(h.direction, dtype=np.float32)
        cosang = (x * u[0] + y * u[1] + z * u[2]) / np.maximum(r, 1e-6)
        ang = np.arccos(np.clip(cosang, -1.0, 1.0))
        profile = 1.0 - (ang / h.half_angle_rad) ** 2
        eligible = eligible & (profile > 0)
        key = depth / np.maximum(profile, 1e-6)
    else:  # IVH: the dependent (posterior, +y in a supine patient) part of the ventricles
        codes = {"left": (TISSUES["lateral_ventricle_left"],), "right": (TISSUES["lateral_ventricle_right"],),
                 "both": (TISSUES["lateral_ventricle_left"], TISSUES["lateral_ventricle_right"])}[h.side]
        eligible = np.isin(tissue, codes)
        g = h.gravity
        key = -(x * g[0] + y * g[1] + z * g[2])
    return np.broadcast_to(eligible, shape), np.broadcast_to(key, shape)


def _haemorrhage_box(anat: _Anatomy, h: _Haemorrhage) -> tuple[np.ndarray, np.ndarray]:
    if h.kind == "IPH":
        e: _Ellipsoid = h.ellipsoid  # type: ignore[assignment]
        if h.oedema_semi is not None:
            return _Ellipsoid(e.centre, h.oedema_semi).bbox(pad=1.0)
        return e.scaled(e.centre, (1, 1, 1), (math.sqrt(h.threshold),) * 3).bbox(pad=1.0)
    if h.kind == "EAH":
        return anat.intracranial.bbox()
    ellipsoids = {"left": anat.ventricles_left, "right": anat.ventricles_right,
                  "both": anat.ventricles_left + anat.ventricles_right}[h.side]
    los, his = zip(*(e.bbox(abs(anat.shift_signed_mm)) for e in ellipsoids))
    return np.min(los, axis=0), np.max(his, axis=0)


def _paint_haemorrhage(blk: _Block, anat: _Anatomy) -> None:
    h = anat.haemorrhage
    if h is None:
        return
    lo, hi = _haemorrhage_box(anat, h)
    box = blk.region(lo, hi)
    if box is None:
        return
    rs, cs = box
    tissue = blk.tissue[:, rs, cs]
    eligible, key = _haemorrhage_key(blk, anat, h, box, tissue)
    blood = eligible & (key < h.threshold)
    if h.kind == "IPH" and h.oedema_semi is not None:
        x, y, z = blk.coords(box)
        oe = _Ellipsoid(h.ellipsoid.centre, h.oedema_semi)  # type: ignore[union-attr]
        oedema = eligible & ~blood & (oe.q(x, y, z) < 1.0)
        blk.paint(box, oedema, HU["oedema"], TISSUES["oedema"])
        np.copyto(blk.label[:, rs, cs], np.uint8(LABELS["oedema"]), where=oedema)
    blk.paint(box, blood, h.hu, TISSUES["haemorrhage"])
    np.copyto(blk.label[:, rs, cs], np.uint8(LABELS[h.kind]), where=blood)


def _evaluate(anat: _Anatomy, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray,
              pose: tuple[np.ndarray, np.ndarray] | None = None) -> _Block:
    blk = _Block(xs, ys, zs, pose)
    _paint_anatomy(blk, anat)
    _paint_haemorrhage(blk, anat)
    return blk


# ---------------------------------------------------------------------------
# Fitting the haemorrhage to the requested volume on a fine grid
# ---------------------------------------------------------------------------
def _fine_grid(lo: np.ndarray, hi: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = np.arange(lo[0], hi[0] + step / 2, step)
    yv = np.arange(lo[1], hi[1] + step / 2, step)
    zv = np.arange(lo[2], hi[2] + step / 2, step)
    zz, yy = np.meshgrid(zv, yv, indexing="ij")
    return xs, yy, zz


def _named_iph_centre(name: str, sign: float, k: float) -> tuple[float, float, float]:
    table = {
        "basal-ganglia": (26.0, -3.0, 8.0),
        "thalamus": (13.0, 9.0, 4.0),
        "lobar-frontal": (30.0, -42.0, 24.0),
        "lobar-parietal": (34.0, 28.0, 30.0),
    }
    x, y, z = table[name]
    return (sign * x * k, y * k, z * k)


def _named_eah_direction(name: str, sign: float) -> np.ndarray:
    table = {
        "convexity": (0.8, -0.15, 0.55),
        "frontal": (0.55, -0.75, 0.35),
        "temporal": (0.95, -0.1, -0.2),
        "occipital": (0.45, 0.85, 0.25),
    }
    v = np.array(table[name], dtype=float)
    v[0] *= sign
    return v / np.linalg.norm(v)


def _fit_haemorrhage(spec: PhantomSpec, anat: _Anatomy) -> tuple[_Haemorrhage, dict[str, Any]]:
    """Choose the haemorrhage's threshold so its fine-grid volume is the requested one."""
    kind, side = spec.haemorrhage, spec.side
    target_mm3 = spec.haemorrhage_volume_ml * 1000.0
    k = anat.k
    sign = 1.0 if side == "left" else -1.0
    if kind == "IPH":
        centre = spec.haemorrhage_centre_lps_mm
        if centre is not None:
            centre = tuple(_to_head(spec, centre))
            side = "left" if centre[0] > 0 else "right"
            sign = 1.0 if side == "left" else -1.0
        else:
            centre = _named_iph_centre(spec.haemorrhage_location or "basal-ganglia", sign, k)
        a = (3.0 * target_mm3 / (4.0 * math.pi * 1.3 * 1.15)) ** (1.0 / 3.0)
        base = _Ellipsoid(tuple(float(c) for c in centre), (a, 1.3 * a, 1.15 * a))  # type: ignore[arg-type]
        reach = 2.0
        h0 = _Haemorrhage("IPH", side, spec.haemorrhage_hu, threshold=reach**2, ellipsoid=base)
        lo, hi = base.bbox()
        c = np.array(base.centre)
        lo, hi = c + (lo - c) * reach, c + (hi - c) * reach
        step = float(np.clip(a / 14.0, 0.25, 0.6))
    elif kind == "EAH":
        if spec.haemorrhage_centre_lps_mm is not None:
            u = _to_head(spec, spec.haemorrhage_centre_lps_mm)
            side = "left" if u[0] > 0 else "right"
            sign = 1.0 if side == "left" else -1.0
            u = u / max(np.linalg.norm(u), 1e-6)
        else:
            u = _named_eah_direction(spec.haemorrhage_location or "convexity", sign)
        half_angle = math.radians(min(14.0 + 4.0 * math.sqrt(spec.haemorrhage_volume_ml), 75.0))
        h0 = _Haemorrhage("EAH", side, spec.haemorrhage_hu, threshold=40.0 * k, direction=tuple(u),
                          half_angle_rad=half_angle)
        lo, hi = _cap_bbox(anat, u, half_angle, depth_mm=40.0 * k)
        step = 0.5 if spec.haemorrhage_volume_ml < 10 else 0.7
    else:
        gravity = tuple(float(v) for v in head_rotation(spec).T @ np.array([0.0, 1.0, 0.0]))
        h0 = _Haemorrhage("IVH", side, spec.haemorrhage_hu, threshold=1e9, gravity=gravity)  # type: ignore[arg-type]
        lo, hi = _haemorrhage_box(anat, h0)
        step = 0.4 if spec.haemorrhage_volume_ml < 15 else 0.6
    xs, ys, zs = _fine_grid(lo, hi, step)
    probe = dataclasses.replace(anat, haemorrhage=None)
    # evaluate in z chunks to bound memory
    keys, pts = [], []
    for z0 in range(0, ys.shape[0], 32):
        blk = _Block(xs, ys[z0:z0 + 32], zs[z0:z0 + 32])
        _paint_anatomy(blk, probe)
        full = (slice(0, ys.shape[1]), slice(0, xs.shape[0]))
        eligible, key = _haemorrhage_key(blk, probe, h0, full, blk.tissue)
        sel = eligible & (key < h0.threshold)
        keys.append(key[sel])
        idx = np.nonzero(sel)
        pts.append(np.stack([xs[idx[2]], ys[z0:z0 + 32][idx[0], idx[1]], zs[z0:z0 + 32][idx[0], idx[1]]], axis=1))
    key = np.concatenate(keys)
    pts = np.concatenate(pts)
    dv = step**3
    need = int(round(target_mm3 / dv))
    capacity_ml = key.size * dv / 1000.0
    if need < 1 or key.size <= need:
        raise InvalidInputError(
            f"phantom: a {kind} of {spec.haemorrhage_volume_ml:g} mL does not fit at the requested place "
            f"(room for about {capacity_ml:.1f} mL); choose a smaller volume or another location or side")
    order = np.argsort(key, kind="stable")
    thr = float((key[order[need - 1]] + key[order[need]]) / 2.0)
    chosen = pts[order[:need]]
    h = dataclasses.replace(h0, threshold=thr)
    if kind == "IPH" and spec.oedema_rim_mm > 0:
        scale = math.sqrt(thr)
        h = dataclasses.replace(h, oedema_semi=tuple(s * scale + spec.oedema_rim_mm for s in base.semi))
    info = {
        "fine_grid_step_mm": step,
        "fine_grid_volume_ml": need * dv / 1000.0,
        "centroid_lps_mm": _to_lps(spec, chosen.mean(axis=0)),
        "centroid_head_frame_mm": [float(v) for v in chosen.mean(axis=0)],
        "eligible_capacity_ml": capacity_ml,
        "_points_head_mm": chosen,  # removed before the truth is published
    }
    if kind == "IPH":
        semi = [float(v * math.sqrt(thr)) for v in base.semi]
        ellipsoid_ml = 4.0 / 3.0 * math.pi * semi[0] * semi[1] * semi[2] / 1000.0
        info["ellipsoid_semi_axes_mm"] = semi  # along the head's x, y, z
        info["ellipsoid_volume_ml"] = ellipsoid_ml
        info["abc_over_2_ml"] = 8.0 * semi[0] * semi[1] * semi[2] / 2.0 / 1000.0  # A, B, C = the diameters
        info["clipped_fraction"] = max(0.0, 1.0 - spec.haemorrhage_volume_ml / ellipsoid_ml)
    if kind == "IVH":
        info["fluid_level_mm"] = -thr  # head-frame coordinate along the dependent direction
    if kind == "EAH":
        info["max_thickness_mm"] = thr
        info["half_angle_deg"] = math.degrees(half_angle)
    return h, info


def _cap_bbox(anat: _Anatomy, u: np.ndarray, half_angle: float, depth_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of the intracranial shell within ``half_angle`` of direction ``u``."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(20000, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v = v[v @ u >= math.cos(half_angle)]
    v = np.vstack([v, u[None, :]])
    a = np.array(anat.intracranial.semi)
    surface = v / np.sqrt(((v / a) ** 2).sum(axis=1, keepdims=True))
    inner = surface * (1.0 - depth_mm / np.linalg.norm(surface, axis=1, keepdims=True))
    pts = np.vstack([surface, inner])
    return pts.min(axis=0) - 2.0, pts.max(axis=0) + 2.0


def _ventricle_volume_ml(anat: _Anatomy, side: str, step: float = 0.6) -> float:
    h0 = _Haemorrhage("IVH", side, 0.0, 1e9)
    lo, hi = _haemorrhage_box(anat, h0)
    xs, ys, zs = _fine_grid(lo, hi, step)
    codes = {"left": (TISSUES["lateral_ventricle_left"],), "right": (TISSUES["lateral_ventricle_right"],),
             "both": (TISSUES["lateral_ventricle_left"], TISSUES["lateral_ventricle_right"])}[side]
    total = 0
    for z0 in range(0, ys.shape[0], 32):
        blk = _Block(xs, ys[z0:z0 + 32], zs[z0:z0 + 32])
        _paint_anatomy(blk, anat)
        total += int(np.isin(blk.tissue, codes).sum())
    return total * step**3 / 1000.0


_IVH_MAX_FILL = 0.8
_MAX_VENTRICLE_DILATION = 3.0


def build_model(spec: PhantomSpec) -> tuple[_Anatomy, dict[str, Any]]:
    """The analytic phantom of a spec, with the haemorrhage fitted to its volume.

    Returns the (opaque) model and a dict of fit information. For a large IVH
    the lateral ventricles are dilated (hydrocephalus, as large IVH casts the
    ventricles) until the blood fills at most 80% of them; the dilation factor
    is reported in the ground truth.
    """
    spec = spec.validated()
    anat = _build_anatomy(spec)
    info: dict[str, Any] = {}
    if spec.haemorrhage == "IVH":
        s = anat.ventricle_dilation
        for _ in range(6):
            capacity = _ventricle_volume_ml(anat, spec.side)
            if spec.haemorrhage_volume_ml <= _IVH_MAX_FILL * capacity:
                break
            ratio = spec.haemorrhage_volume_ml / (_IVH_MAX_FILL * capacity)
            s = s * ratio ** (1.0 / 2.5) * 1.01
            if s > _MAX_VENTRICLE_DILATION:
                raise InvalidInputError(
                    f"phantom: an IVH of {spec.haemorrhage_volume_ml:g} mL does not fit in the "
                    f"{spec.side} lateral ventricle(s) even when dilated; choose a smaller volume "
                    "or --haemorrhage-side both")
            anat = _build_anatomy(spec, ventricle_dilation=s)
        else:
            raise InvalidInputError(f"phantom: could not fit an IVH of {spec.haemorrhage_volume_ml:g} mL; "
                                    "choose a smaller volume")
    if spec.haemorrhage is not None:
        h, info = _fit_haemorrhage(spec, anat)
        anat = dataclasses.replace(anat, haemorrhage=h)
    return anat, info


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
        image_positions_patient=tuple(tuple(float(v) for v in origin + kk * sz * cols[2]) for kk in range(nz)),
        slice_thickness_mm=thickness_mm or sz, slice_spacing_mm=sz, table_increment_mm=sz, gantry_tilt_deg=0.0)
    n = spec.partial_volume_samples
    offsets = ((np.arange(n) + 0.5) / n - 0.5) * (thickness_mm or sz)
    hu, labels, _, _ = _sample_stack(anat, geom, offsets, normal=cols[2], pose=_pose(spec))
    return hu, labels


def tilt_corrected_grid(geometry: PhantomGeometry) -> dict[str, Any]:
    """The orthonormal grid of a tilted stack: axes (row, column, plane normal), as dcm2niix corrects tilt.

    Each written slice is one slab of this grid, shifted along the column
    direction by the table motion; the grid has enough rows to hold them all.
    For an irregular stack (variable spacing or a gap) the planes are
    resampled every smallest spacing. Returns SimpleITK-ordered ``origin_lps_mm``, ``spacing_mm``, ``size_xyz``
    and a row-major ``direction``.
    """
    g = geometry
    row, col, nrm = g.row_direction, g.column_direction, g.normal
    ipp = np.array(g.image_positions_patient, dtype=float)
    # offset of each slice's first pixel along the column direction, relative to slice 0
    shift = (ipp - ipp[0]) @ col
    rows = g.rows + int(math.ceil((shift.max() - shift.min()) / g.pixel_spacing_mm[0] - 1e-6))
    origin = ipp[0] + shift.min() * col
    direction = np.stack([row, col, nrm], axis=1)
    spacing, n = g.slice_spacing_mm, g.n_slices
    if not g.is_regular:
        planes = g.normal_positions_mm
        spacing = float(np.min(np.diff(planes)))
        n = int(round((planes[-1] - planes[0]) / spacing)) + 1
    return {
        "origin_lps_mm": [float(v) for v in origin],
        "spacing_mm": [g.pixel_spacing_mm[1], g.pixel_spacing_mm[0], spacing],
        "size_xyz": [g.columns, rows, n],
        "direction": [float(round(v, 12)) for v in direction.ravel()],
    }


def phantom_volume(spec: PhantomSpec) -> Volume:
    """An untilted phantom as a :class:`Volume` (HU with noise), for tests of other modules.

    The ground-truth labels are in ``volume.header["phantom_labels"]`` ([z, y, x] uint8).
    """
    spec = spec.validated()
    if spec.gantry_tilt_deg != 0 or spec.slice_blocks or spec.gap_after_slice is not None:
        raise InvalidInputError("phantom: phantom_volume needs a regular untilted stack; "
                                "write DICOM for tilted, variable-spacing or gapped phantoms")
    r = render_phantom(spec)
    g = r.geometry
    truth = ground_truth(r)
    return volume_from_array(
        r.hu,
        spacing_mm=(g.pixel_spacing_mm[1], g.pixel_spacing_mm[0], g.slice_spacing_mm),
        origin_mm=g.image_positions_patient[0],
        header={
            "phantom_labels": r.labels,
            "phantom_ground_truth": truth,
            "SliceThickness": spec.slice_thickness_mm,
            "ConvolutionKernel": "STANDARD",
            "PatientAge_years": spec.patient_age_years,
            "ContrastBolusAgent": "IOHEXOL" if spec.contrast else "",
        },
    )


# ---------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------
def _brain_volumes_ml(anat: _Anatomy, step: float = 1.0) -> dict[str, float]:
    """Parenchyma, intracranial and ventricular volumes on a 1 mm grid (before haemorrhage)."""
    lo, hi = anat.intracranial.bbox()
    xs, ys, zs = _fine_grid(lo, hi, step)
    counts = np.zeros(256, dtype=np.int64)
    probe = dataclasses.replace(anat, haemorrhage=None)
    for z0 in range(0, ys.shape[0], 16):
        blk = _Block(xs, ys[z0:z0 + 16], zs[z0:z0 + 16])
        _paint_anatomy(blk, probe)
        counts += np.bincount(blk.tissue.ravel(), minlength=256)
    dv = step**3 / 1000.0
    T = TISSUES
    parenchyma = sum(counts[c] for c in PARENCHYMA_TISSUES)
    lv = counts[T["lateral_ventricle_left"]] + counts[T["lateral_ventricle_right"]]
    icv = parenchyma + lv + sum(counts[T[name]] for name in ("third_ventricle", "csf", "falx", "venous_sinus", "artery"))
    return {
        "brain_volume_ml": float(parenchyma * dv),
        "intracranial_volume_ml": float(icv * dv),
        "lateral_ventricles_volume_ml": float(lv * dv),
        "left_lateral_ventricle_volume_ml": float(counts[T["lateral_ventricle_left"]] * dv),
        "right_lateral_ventricle_volume_ml": float(counts[T["lateral_ventricle_right"]] * dv),
    }


def ground_truth(render: PhantomRender, uids: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ground-truth record (JSON-ready) of a rendered phantom."""
    spec, anat, g = render.spec, render.model, render.geometry
    vox_ml = g.voxel_volume_ml
    # per-slice volumes: pixel area x the length along the normal each slice stands for
    slice_ml = g.pixel_spacing_mm[0] * g.pixel_spacing_mm[1] * g.slice_extents_mm / 1000.0
    counts = np.stack([np.bincount(render.labels[k].ravel(), minlength=8)[:8] for k in range(g.n_slices)])
    fractions = render.label_fractions_per_slice
    if fractions is None:
        fractions = np.zeros((g.n_slices, 8))
    volumes: dict[str, Any] = {}
    h = anat.haemorrhage
    for name in ("IPH", "EAH", "oedema", "IVH"):
        nominal = 0.0
        if h is not None and name == h.kind:
            nominal = spec.haemorrhage_volume_ml
        volumes[name] = {
            "nominal_ml": nominal,
            "on_grid_ml": float(counts[:, LABELS[name]] @ slice_ml),
            "on_grid_partial_volume_ml": float(fractions[:, LABELS[name]] @ slice_ml),
        }
    if h is not None and h.kind == "IPH" and h.oedema_semi is not None:
        volumes["oedema"]["nominal_ml"] = _oedema_volume_ml(anat)
    shift = anat.shift_signed_mm
    direction = None if shift == 0 else ("left" if shift > 0 else "right")
    hem = None
    if h is not None:
        hem = "bilateral" if h.side == "both" else h.side
    truth: dict[str, Any] = {
        "schema": "ictus-phantom-ground-truth/1",
        "spec": dataclasses.asdict(spec),
        "conventions": {
            "coordinates": "DICOM patient LPS in mm: +x patient left, +y posterior, +z superior; head centre at x=0",
            "labels": dict(LABELS),
            "midline_shift_sign": "midline_shift_signed_mm > 0 means the midline structures moved towards patient LEFT (+x)",
            "ideal_midline": "the plane x = 0 mm (the skull's symmetry plane)",
            "on_grid": "label voxel count on the written DICOM grid x voxel volume (pixel area x slice spacing; "
                       "for an irregular stack each slice stands for half the distance to each neighbour); "
                       "a voxel is labelled when most sub-samples across the slice thickness are inside "
                       "(thin or oblique layers lose volume on thick slices)",
            "on_grid_partial_volume": "sum over voxels of the fraction of sub-samples inside x voxel volume",
            "nominal": "the requested volume, realised on a fine grid (fit_info.fine_grid_step_mm)",
        },
        "haemorrhage": None if h is None else {
            "type": h.kind,
            "hemisphere": hem,
            "hu": h.hu,
            "nominal_volume_ml": spec.haemorrhage_volume_ml,
            "on_grid_volume_ml": volumes[h.kind]["on_grid_ml"],
            "centroid_lps_mm": render.fit_info.get("centroid_lps_mm"),
            "scanned_fraction": render.fit_info.get("scanned_fraction"),
            "fit_info": dict(render.fit_info),
        },
        "volumes_ml": volumes,
        "ich_total_volume_ml": {
            "nominal_ml": sum(volumes[c]["nominal_ml"] for c in ("IPH", "EAH", "IVH")),
            "on_grid_ml": sum(volumes[c]["on_grid_ml"] for c in ("IPH", "EAH", "IVH")),
        },
        "midline_shift_mm": abs(shift),
        "midline_shift_direction": direction,
        "midline_shift_signed_mm": shift,
        "midline_shift_where": "septum pellucidum, third ventricle and lateral ventricles move rigidly by the shift; "
                               "the displacement decays to 0 at the inner table (skull unchanged)",
        "ideal_midline_x_mm": 0.0,
        "septum_pellucidum_x_mm": shift,
        "head_pose": {
            "yaw_deg": spec.head_yaw_deg,
            "roll_deg": spec.head_roll_deg,
            "pitch_deg": spec.head_pitch_deg,
            "offset_lps_mm": [float(v) for v in spec.head_offset_mm],
            "rotation_head_to_lps": head_rotation(spec).round(12).tolist(),
            "note": "x_mm values above are in the head frame: signed distances from the midsagittal plane",
        },
        "midsagittal_plane": {
            "point_lps_mm": [float(v) for v in spec.head_offset_mm],
            "normal_lps": [float(v) for v in head_rotation(spec)[:, 0]],  # towards the patient's left
        },
        "septum_pellucidum_centre_lps_mm": _to_lps(spec, (shift, -5.0 * anat.k, 14.0 * anat.k)),
        "ventricle_dilation_factor": anat.ventricle_dilation,
        "head_scale": anat.k,
        **_brain_volumes_ml(anat),
        "contrast": spec.contrast,
        "metal_artefact": render.fit_info.get("metal_artefact"),
        "geometry": {
            "rows": g.rows,
            "columns": g.columns,
            "n_slices": g.n_slices,
            "pixel_spacing_mm": list(g.pixel_spacing_mm),
            "slice_thickness_mm": g.slice_thickness_mm,
            "slice_spacing_mm": g.slice_spacing_mm,
            "table_increment_mm": g.table_increment_mm,
            "gantry_tilt_deg": g.gantry_tilt_deg,
            "image_orientation_patient": list(g.image_orientation_patient),
            "first_image_position_patient": list(g.image_positions_patient[0]),
            "last_image_position_patient": list(g.image_positions_patient[-1]),
            "affine_ijk_to_lps": g.affine.round(6).tolist(),
            "voxel_volume_ml": vox_ml,
            "regular": g.is_regular,
            "slice_thicknesses_mm": None if g.is_regular else list(g.slice_thicknesses_mm or ()),
            "slice_positions_along_normal_mm": [float(v) for v in g.normal_positions_mm.round(6)],
        },
    }
    if uids:
        truth["uids"] = dict(uids)
    return truth


def _oedema_volume_ml(anat: _Anatomy) -> float:
    h = anat.haemorrhage
    lo, hi = _haemorrhage_box(anat, h)
    step = 0.5
    xs, ys, zs = _fine_grid(lo, hi, step)
    total = 0
    for z0 in range(0, ys.shape[0], 32):
        blk = _evaluate(anat, xs, ys[z0:z0 + 32], zs[z0:z0 + 32])
        total += int((blk.label == LABELS["oedema"]).sum())
    return total * step**3 / 1000.0


# ---------------------------------------------------------------------------
# DICOM writer (the only disk I/O of this module)
# ---------------------------------------------------------------------------
_TRANSFER_SYNTAX = {
    "none": "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "rle": "1.2.840.10008.1.2.5",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "j2k": "1.2.840.10008.1.2.4.90",
    "j2k-lossy": "1.2.840.10008.1.2.4.91",
}
_RESCALE_INTERCEPT = -1024.0
_J2K_LOSSY_RATIO = 8.0  # compression ratio of the lossy JPEG 2000 variant (clinical lossy CT is ~5-15)
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, for generated UIDs


def _uid(spec: PhantomSpec, *parts: Any, _spec_text: str | None = None) -> str:
    """A UID derived from the spec (so a spec + seed gives the same study)."""
    from pydicom.uid import generate_uid

    text = _spec_text if _spec_text is not None else json.dumps(dataclasses.asdict(spec), sort_keys=True)
    return str(generate_uid(prefix=_UID_ROOT, entropy_srcs=[text, *map(str, parts)]))


def _base_dataset(spec: PhantomSpec, uids: Mapping[str, str]) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "PH" + hashlib.sha1(uids["study_instance_uid"].encode()).hexdigest()[:10].upper()
    ds.Modality = "CT"
    ds.Manufacturer = "Ictus"
    ds.ManufacturerModelName = "Ictus synthetic head phantom"
    ds.InstitutionName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT HEAD WO CONTRAST (PHANTOM)" if not spec.contrast else "CT HEAD W CONTRAST (PHANTOM)"
    ds.PatientName = "PHANTOM^GEOMETRIC"
    ds.PatientID = "PHANTOM-" + hashlib.sha1(uids["study_instance_uid"].encode()).hexdigest()[:8].upper()
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    age = int(spec.patient_age_years)
    ds.PatientAge = f"{age:03d}Y" if age >= 1 else f"{max(int(round(spec.patient_age_years * 12)), 0):03d}M"
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uids["study_instance_uid"]
    ds.StudyID = "1"
    ds.FrameOfReferenceUID = uids["frame_of_reference_uid"]
    ds.PositionReferenceIndicator = ""
    ds.KVP = "120"
    ds.SoftwareVersions = "ictus-phantom-1"
    if spec.contrast:
        ds.ContrastBolusAgent = "IOHEXOL"
        ds.ContrastBolusRoute = "IV"
    return ds


def _file_meta(ds: Any, transfer_syntax: str) -> Any:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "ICTUS_PHANTOM"
    return meta


def _slice_dataset(spec: PhantomSpec, g: PhantomGeometry, uids: Mapping[str, str], k: int, stored: np.ndarray) -> Any:
    ds = _base_dataset(spec, uids)
    ds.SOPInstanceUID = uids["sop_instance_uids"][k]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesInstanceUID = uids["series_instance_uid"]
    ds.SeriesNumber = 2
    ds.SeriesDescription = f"HEAD {g.slice_thickness_mm:g}mm STANDARD" if g.is_regular else "HEAD VARIABLE STANDARD"
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120100"
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [f"{v:.6f}" for v in g.image_positions_patient[k]]
    ds.ImageOrientationPatient = [f"{v:.9f}" for v in g.image_orientation_patient]
    centre = np.asarray(g.image_positions_patient[k]) + (g.rows - 1) / 2 * g.pixel_spacing_mm[0] * g.column_direction \
        + (g.columns - 1) / 2 * g.pixel_spacing_mm[1] * g.row_direction
    ds.SliceLocation = f"{centre[2]:.6f}"  # table position of the plane's centre
    ds.SliceThickness = f"{g.thickness_of(k):g}"
    if g.is_regular:
        ds.SpacingBetweenSlices = f"{g.slice_spacing_mm:g}"
    ds.PixelSpacing = [f"{g.pixel_spacing_mm[0]:g}", f"{g.pixel_spacing_mm[1]:g}"]
    ds.GantryDetectorTilt = f"{g.gantry_tilt_deg:g}"
    ds.ConvolutionKernel = "STANDARD"
    ds.ReconstructionDiameter = f"{g.pixel_spacing_mm[1] * g.columns:g}"
    ds.DataCollectionDiameter = "250"
    ds.XRayTubeCurrent = 250
    ds.ExposureTime = 1000
    ds.RotationDirection = "CW"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = g.rows, g.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0 if spec.unsigned_pixels else 1
    ds.RescaleIntercept = f"{_rescale_intercept(spec):g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "80"
    ds.BurnedInAnnotation = "NO"
    ds.file_meta = _file_meta(ds, _TRANSFER_SYNTAX["none"])
    _set_pixels(ds, stored, spec.compression)
    return ds


def _rescale_intercept(spec: PhantomSpec) -> float:
    return _RESCALE_INTERCEPT if spec.unsigned_pixels else 0.0


def _stored_values(spec: PhantomSpec, hu: np.ndarray) -> np.ndarray:
    """HU -> stored pixel values (uint16 or int16) for the spec's pixel representation."""
    stored = np.rint(hu - _rescale_intercept(spec))
    if spec.unsigned_pixels:
        return stored.clip(0, 65535).astype(np.uint16)
    return stored.clip(-32768, 32767).astype(np.int16)


def _set_pixels(ds: Any, stored: np.ndarray, compression: str) -> None:
    """Store pixels uncompressed or compressed with pydicom's encoders."""
    stored = np.ascontiguousarray(stored)
    if compression == "none":
        ds.PixelData = stored.tobytes()
        return
    kwargs: dict[str, Any] = {}
    if compression == "j2k-lossy":
        kwargs["j2k_cr"] = [_J2K_LOSSY_RATIO]
    try:
        ds.compress(_TRANSFER_SYNTAX[compression], stored, generate_instance_uid=False, **kwargs)
    except RuntimeError as exc:
        raise OutputError(f"phantom: the {compression} encoder is unavailable ({exc}); "
                          "install pylibjpeg-openjpeg / pyjpegls or use --compression none") from exc
    if compression == "j2k-lossy":
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{_J2K_LOSSY_RATIO:g}"
        ds.LossyImageCompressionMethod = "ISO_15444_1"


def _scout_dataset(spec: PhantomSpec, anat: _Anatomy, uids: Mapping[str, str]) -> Any:
    """A lateral localizer: line integrals of attenuation through the head along x."""
    step = 1.5
    size = 256
    half = (size - 1) / 2.0 * step
    ys = np.linspace(-half, half, size)
    zs = np.linspace(half - 40.0, -half - 40.0, size)  # row 0 is superior
    xs = np.arange(-90.0, 90.0 + 1e-6, step)
    yy = np.broadcast_to(ys[None, :], (size, size))
    zz = np.broadcast_to(zs[:, None], (size, size))
    proj = np.zeros((size, size), dtype=np.float32)
    for z0 in range(0, size, 32):
        blk = _Block(xs, yy[z0:z0 + 32], zz[z0:z0 + 32], _pose(spec))
        _paint_anatomy(blk, anat)
        _paint_haemorrhage(blk, anat)
        mu = np.clip(blk.hu + 1000.0, 0.0, None) / 1000.0 * 0.019  # ~water attenuation per mm
        proj[z0:z0 + 32] = mu.sum(axis=2) * step
    stored = np.clip(proj / max(float(proj.max()), 1e-6) * 4000.0, 0, 4095).astype(np.uint16)
    ds = _base_dataset(spec, uids)
    ds.SOPInstanceUID = uids["scout_sop_instance_uid"]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesInstanceUID = uids["scout_series_instance_uid"]
    ds.SeriesNumber = 1
    ds.SeriesDescription = "SCOUT LAT"
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120000"
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [f"{0.0:.6f}", f"{-half:.6f}", f"{zs[0]:.6f}"]
    ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
    ds.PixelSpacing = [f"{step:g}", f"{step:g}"]
    ds.SliceThickness = f"{2 * 90.0:g}"
    ds.ConvolutionKernel = "STANDARD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    ds.BurnedInAnnotation = "NO"
    ds.file_meta = _file_meta(ds, _TRANSFER_SYNTAX["none"])
    ds.PixelData = stored.tobytes()
    return ds


def _multiframe_dataset(slices: list[Any], uids: Mapping[str, Any]) -> Any:
    """The slices as one Legacy Converted Enhanced CT Image (highdicom orders the frames spatially).

    The single-frame sources are never stored, so the Common Instance
    Reference to them is dropped (the per-frame Conversion Source Attributes
    keep their UIDs).
    """
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    mf = LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=uids["series_instance_uid"], series_number=2,
        sop_instance_uid=uids["multiframe_sop_instance_uid"], instance_number=1)
    if "ReferencedSeriesSequence" in mf:
        del mf.ReferencedSeriesSequence
    mf.SeriesDescription = slices[0].SeriesDescription + " (multi-frame)"
    if "LossyImageCompression" in slices[0]:
        for name in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            setattr(mf, name, slices[0].get(name))
    return mf


def phantom_uids(spec: PhantomSpec, n_slices: int) -> dict[str, Any]:
    """The UIDs of a phantom study, derived from its spec (deterministic)."""
    text = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    return {
        "study_instance_uid": _uid(spec, "study"),
        "series_instance_uid": _uid(spec, "series"),
        "frame_of_reference_uid": _uid(spec, "frame"),
        "scout_series_instance_uid": _uid(spec, "scout-series") if spec.with_scout else None,
        "scout_sop_instance_uid": _uid(spec, "scout-instance") if spec.with_scout else None,
        "sop_instance_uids": [_uid(spec, "instance", k, _spec_text=text) for k in range(n_slices)],
        "multiframe_sop_instance_uid": _uid(spec, "multiframe") if spec.multiframe else None,
    }


def _labels_image(render: PhantomRender) -> tuple[Any, dict[str, Any]]:
    """The label map as a SimpleITK image, and a description of its grid."""
    import SimpleITK as sitk

    g = render.geometry
    if g.is_orthogonal and g.is_regular:
        labels = render.labels
        origin = g.image_positions_patient[0]
        spacing = (g.pixel_spacing_mm[1], g.pixel_spacing_mm[0], g.slice_spacing_mm)
        direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        kind = "dicom"
    else:
        # A sheared or irregular stack cannot be stored in NIfTI as ITK reads it (orthonormal, regular
        # axes only), so the same analytic labels are sampled on the tilt-corrected / uniform grid.
        grid = tilt_corrected_grid(g)
        origin, spacing, direction = grid["origin_lps_mm"], grid["spacing_mm"], grid["direction"]
        _, labels = sample_phantom(render, origin, spacing, grid["size_xyz"], direction=direction,
                                   thickness_mm=g.slice_thickness_mm if g.is_regular else spacing[2])
        kind = "tilt_corrected" if not g.is_orthogonal else "uniform_resampled"
    img = sitk.GetImageFromArray(np.ascontiguousarray(labels, dtype=np.uint8))
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetSpacing(tuple(float(v) for v in spacing))
    img.SetDirection(tuple(float(v) for v in direction))
    desc = {
        "kind": kind,
        "description": {
            "dicom": "labels on the written DICOM grid",
            "tilt_corrected": "tilted series: labels sampled from the same analytic phantom on the tilt-corrected "
                              "orthonormal grid (axes: row, column and normal of the tilted planes; extra rows hold "
                              "the shear; irregular stacks resampled every smallest spacing), as dcm2niix corrects tilt",
            "uniform_resampled": "variable-spacing or gapped series: labels sampled from the same analytic phantom "
                                 "on a uniform grid every smallest spacing, from the first to the last slice",
        }[kind],
        "origin_lps_mm": [float(v) for v in origin],
        "spacing_mm": [float(v) for v in spacing],
        "size_xyz": [int(v) for v in img.GetSize()],
        "direction": [float(v) for v in direction],
        "voxel_counts": {name: int((labels == value).sum()) for name, value in LABELS.items() if value},
    }
    return img, desc


@dataclass(frozen=True)
class PhantomWritten:
    """What :func:`write_phantom` wrote."""

    out_dir: Path
    series_dir: Path
    n_files: int
    ground_truth_path: Path
    labels_path: Path
    truth: dict


def write_phantom(spec: PhantomSpec, out_dir: str | os.PathLike, *, force: bool = False) -> PhantomWritten:
    """Write the phantom as a DICOM study plus ``ground_truth.json`` and ``ground_truth_labels.nii.gz``.

    Layout: ``OUT_DIR/series-002-axial/CT0001.dcm...`` (inferior to superior),
    ``OUT_DIR/series-001-scout/SC0001.dcm`` with ``with_scout``, and the two
    ground-truth files at the top. Written into a temporary sibling folder and
    renamed into place. A non-empty ``out_dir`` is refused unless ``force``.
    """
    import SimpleITK as sitk

    spec = spec.validated()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"phantom: {out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputError(f"phantom: output folder {out} is not empty; choose an empty folder or use --force")
    render = render_phantom(spec)
    g = render.geometry
    uids = phantom_uids(spec, g.n_slices)
    stored = _stored_values(spec, render.hu)
    truth = ground_truth(render, uids)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the study is an ordinary folder
    except OSError as exc:
        raise OutputError(f"phantom: cannot create {out.parent} ({exc.strerror}); choose a writable folder") from exc
    try:
        series_dir = tmp / "series-002-axial"
        series_dir.mkdir()
        slices = (_slice_dataset(spec, g, uids, k, stored[k]) for k in range(g.n_slices))
        if spec.multiframe:
            _multiframe_dataset(list(slices), uids).save_as(series_dir / "CT0001.dcm", enforce_file_format=True)
        else:
            for k, ds in enumerate(slices):
                ds.save_as(series_dir / f"CT{k + 1:04d}.dcm", enforce_file_format=True)
        if spec.with_scout:
            scout_dir = tmp / "series-001-scout"
            scout_dir.mkdir()
            _scout_dataset(spec, render.model, uids).save_as(scout_dir / "SC0001.dcm", enforce_file_format=True)
        img, desc = _labels_image(render)
        sitk.WriteImage(img, str(tmp / "ground_truth_labels.nii.gz"), useCompression=True)
        truth["labels_file"] = "ground_truth_labels.nii.gz"
        truth["labels_grid"] = desc
        truth["series_folder"] = series_dir.name
        truth["n_files"] = 1 if spec.multiframe else g.n_slices
        (tmp / "ground_truth.json").write_text(json.dumps(truth, indent=2, default=_json_default) + "\n")
        _replace_dir(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"phantom: cannot write {out} ({exc.strerror or exc}); check space and permissions") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("phantom written to %s (%d slices)", out, g.n_slices)
    return PhantomWritten(out_dir=out, series_dir=out / "series-002-axial", n_files=truth["n_files"],
                          ground_truth_path=out / "ground_truth.json",
                          labels_path=out / "ground_truth_labels.nii.gz", truth=truth)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``, replacing an existing folder only after the new one is complete."""
    if out.is_dir():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
