"""Phantom options and the written grid: :class:`PhantomSpec`, :class:`PhantomGeometry`, the head pose.

Label and tissue codes, tissue densities and every geometric convention of the
phantom live here (see :mod:`ictus.imaging.phantom` for the conventions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ictus.imaging.errors import InvalidInputError

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
        pos: list[float] = []
        thick: list[float] = []
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
        (float(round(x, 6)), float(round(y, 6)), float(round(z, 6)))
        for x, y, z in (np.array([0.0, 0.0, zc]) - half * d * row - half * d * col for zc in centres_z)
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



def acquisition_geometry(g: PhantomGeometry) -> dict[str, Any]:
    """The slice geometry both phantoms record in ``ground_truth.json`` (matrix, spacing,
    thickness, tilt, orientation, first and last slice positions)."""
    return {
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
    }
