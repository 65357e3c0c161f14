"""Hyperdense artery sign on non-contrast CT (suspected large-vessel occlusion).

A pure function of the registered :class:`ictus.imaging.anatomy.Anatomy` and the ideal midline
plane; the thresholds are data (``imaging/vessel_rules.json``, read its ``description``).

Method (the criteria of Koo et al., Cerebrovasc Dis 2000: hyperdense MCA > 43 HU and a
ratio to the contralateral MCA > 1.2):

1. **Search tubes.** Each course of :data:`ictus.imaging.stroke_atlas.VESSEL_COURSES` (M1 and M2
   per side, basilar; MNI polylines) is mapped into the patient with the registration's
   inverse and becomes a tube of the course's radius (7 mm: registration error and
   anatomical variation) on the analysis grid, kept inside the brain mask dilated by 8 mm or
   the registered template brain (a threshold brain mask stops above the skull base on thick
   slices, where M1 runs), and outside ``exclude_mask`` (haemorrhage).
2. **Candidates.** Voxels at or above ``calcium_hu`` are calcification or bone; they and a
   ``calcium_margin_mm`` margin around them (Euclidean, voxel centres) are removed,
   so a calcified wall never triggers. The rest is smoothed (Gaussian ``smoothing_mm``,
   normalised convolution that ignores the removed voxels) and voxels with smoothed HU in
   ``[dense_min_hu, calcium_hu)`` are candidates.
3. **Components** (26-connected, joined when closer than ``merge_gap_mm``: partial volume
   splits a thrombus where it crosses slices) inside each tube are measured: length along the course
   (voxel centres projected on the polyline), peak and mean smoothed HU, voxel count,
   cross-section (volume / length), centroid.
4. **Contralateral reference.** The mirrored course: the patient-space course reflected
   about ``plane`` when given, else the template course mirrored (x negated) and mapped
   through the registration. The ratio compares vessel cores, as Koo's ROIs do: the median
   of the brightest n = min(component voxels, ``reference_voxels``) voxels of the component
   against the same statistic on the mirrored tube over the component's stretch of the
   course (+- ``reference_margin_mm``): the same selection bias on both sides, so noise
   alone gives a ratio near 1. The **basilar** artery has no mirror: it is compared with
   the lower of the two M1 references (the whole M1 tubes), so a raised haematocrit (every
   vessel dense) still gives a ratio near 1, and an occluded M1 does not raise the bar.
5. **Decision** per component: mean HU >= ``dense_min_hu``, ratio > ``min_ratio`` (>
   ``raised_reference_min_ratio`` when the reference itself is >= ``dense_min_hu``, the
   haematocrit pattern; > ``basilar_min_ratio`` for the basilar), length
   >= ``min_length_mm``, voxels >= ``min_voxels`` and cross-section <=
   ``max_cross_section_mm2`` (a tube, not a blob of bone partial volume). Each course
   reports its best component (dense first, then longest); the mask holds every dense one,
   grown by the unsmoothed voxels above ``dense_min_hu`` that touch it. Slices thicker than
   ``thick_slice_mm`` add a caution to the result: partial volume makes the sign unreliable.

Everything runs on the bounding box of the search tubes (about 0.1 s on the GE head).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from scipy import ndimage

from ictus.imaging.errors import InvalidInputError
from ictus.imaging.rules import read_rules_json
from ictus.imaging.stroke_atlas import VESSEL_COURSES, VesselCourse

if TYPE_CHECKING:
    from ictus.imaging.anatomy import Anatomy
    from ictus.imaging.midline import MidlinePlane

log = logging.getLogger(__name__)

DEFAULT_RULES_PATH = Path(__file__).with_name("vessel_rules.json")
RULES_SCHEMA = "ictus-vessel-rules/1"
#: Candidate voxels may lie this far outside the brain mask (the basal cisterns at the skull
#: base fall outside a threshold brain mask on template phantoms: the M1 course lay 4+ mm out).
BRAIN_MARGIN_MM = 8.0
_NUMBERS = ("dense_min_hu", "calcium_hu", "calcium_margin_mm", "smoothing_mm", "merge_gap_mm", "min_ratio",
            "raised_reference_min_ratio", "basilar_min_ratio", "thick_slice_mm",
            "min_length_mm", "min_voxels", "max_cross_section_mm2", "reference_voxels", "reference_margin_mm")


@dataclass(frozen=True)
class VesselMeasurement:
    """One searched arterial course: its best hyperdense component, or (without one) the
    brightest ``reference_voxels`` voxels of its tube in ``mean_hu`` and length 0."""

    name: str  # "M1", "M2", "basilar"
    side: str  # "left", "right", "midline"
    peak_hu: float | None
    mean_hu: float | None
    contralateral_mean_hu: float | None
    ratio: float | None
    length_mm: float
    voxel_count: int
    centroid_lps_mm: tuple[float, float, float] | None
    dense: bool
    reason: str


@dataclass(frozen=True)
class DenseArteryResult:
    """The hyperdense artery sign of one head (``present`` None: not assessed)."""

    present: bool | None
    side: str | None
    segments: tuple[VesselMeasurement, ...]
    mask: np.ndarray = field(repr=False)  # bool on anatomy.grid: the dense components
    rules: Mapping[str, Any] = field(default_factory=dict, repr=False)
    reason: str = ""
    caution: str = ""  # e.g. thick slices: the sign is unreliable either way

    @property
    def assessed(self) -> bool:
        return self.present is not None


# -- rules --------------------------------------------------------------------------------------


def validate_vessel_rules(rules: Mapping[str, Any]) -> Mapping[str, Any]:
    """The rules themselves, or InvalidInputError naming what is wrong."""
    if not isinstance(rules, Mapping) or rules.get("schema") != RULES_SCHEMA:
        raise InvalidInputError(f"vessel rules: expected an object with schema {RULES_SCHEMA!r}; "
                                f"see {DEFAULT_RULES_PATH.name}")
    for key in _NUMBERS:
        value = rules.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value < 0:
            raise InvalidInputError(f"vessel rules: '{key}' must be a non-negative number; found {value!r}")
    if not rules["dense_min_hu"] < rules["calcium_hu"]:
        raise InvalidInputError(f"vessel rules: dense_min_hu {rules['dense_min_hu']} must be below "
                                f"calcium_hu {rules['calcium_hu']}")
    for key in ("min_ratio", "raised_reference_min_ratio", "basilar_min_ratio"):
        if rules[key] < 1.0:
            raise InvalidInputError(f"vessel rules: {key} {rules[key]} must be at least 1")
    if int(rules["reference_voxels"]) < 1:
        raise InvalidInputError("vessel rules: reference_voxels must be >= 1")
    return rules


def load_vessel_rules(path: str | Path | None = None) -> Mapping[str, Any]:
    """Read and validate a rules file (default: the packaged ``vessel_rules.json``)."""
    return validate_vessel_rules(read_rules_json(path or DEFAULT_RULES_PATH, "vessel rules"))


# -- geometry -----------------------------------------------------------------------------------


def reflect_points(points_lps: np.ndarray, plane: "MidlinePlane") -> np.ndarray:
    """LPS points (N, 3) reflected about the midline plane."""
    p = np.asarray(points_lps, dtype=float)
    d = (p - plane.point_mm) @ plane.normal
    return p - 2.0 * d[:, None] * plane.normal[None, :]


def polyline_projection(points: np.ndarray, polyline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance mm, arc length mm) of points (N, 3) to their nearest point of a polyline (M, 3)."""
    best_d = np.full(len(points), np.inf)
    best_s = np.zeros(len(points))
    start = 0.0
    for a, b in zip(polyline[:-1], polyline[1:]):
        ab = b - a
        length = float(np.linalg.norm(ab))
        if length == 0.0:
            continue
        t = np.clip(((points - a) @ ab) / (length * length), 0.0, 1.0)
        d = np.linalg.norm(points - (a + t[:, None] * ab), axis=1)
        closer = d < best_d
        best_d[closer], best_s[closer] = d[closer], start + t[closer] * length
        start += length
    return best_d, best_s


@dataclass(frozen=True)
class _Tube:
    """Voxels of the grid within a course's radius: flat indices, [z, y, x], arc length."""

    flat: np.ndarray
    zyx: np.ndarray
    arc_mm: np.ndarray
    polyline: np.ndarray


def _tube(anatomy: "Anatomy", polyline: np.ndarray, radius_mm: float, shape: tuple[int, ...]) -> _Tube:
    spacing_zyx = np.array(anatomy.spacing_mm[::-1])
    idx = anatomy.lps_to_index(polyline)
    pad = radius_mm / spacing_zyx + 1
    lo = np.maximum(np.floor(idx.min(axis=0) - pad), 0).astype(int)
    hi = np.minimum(np.ceil(idx.max(axis=0) + pad) + 1, shape).astype(int)
    if np.any(hi <= lo):
        empty = np.zeros(0, dtype=int)
        return _Tube(empty, np.zeros((0, 3), int), np.zeros(0), polyline)
    grids = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
    zyx = np.stack([g.ravel() for g in grids], axis=1)
    dist, arc = polyline_projection(anatomy.index_to_lps(zyx), polyline)
    keep = dist <= radius_mm
    zyx = zyx[keep]
    return _Tube(np.ravel_multi_index(tuple(zyx.T), shape), zyx, arc[keep], polyline)


def _box(tubes: list[_Tube], shape: tuple[int, ...], pad: list[int]) -> tuple[slice, ...]:
    """The bounding box (slices) of the tubes' voxels, padded per axis and clipped to the grid."""
    voxels = [t.zyx for t in tubes if len(t.zyx)]
    if not voxels:
        return tuple(slice(0, 0) for _ in shape)
    zyx = np.vstack(voxels)
    lo = np.maximum(zyx.min(axis=0) - pad, 0)
    hi = np.minimum(zyx.max(axis=0) + np.array(pad) + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _top_median(values: np.ndarray, n: int) -> float | None:
    """Median of the ``n`` brightest values (None when fewer): the vessel's level, robust to a
    few bright voxels that are not vessel (a partial-volume rim of the skull base)."""
    if values.size < n or n <= 0:
        return None
    return float(np.median(np.partition(values, values.size - n)[values.size - n:]))


def near_calcium(calcium: np.ndarray, spacing_zyx_mm: tuple[float, ...], margin_mm: float) -> np.ndarray:
    """Calcium and every voxel whose centre lies within ``margin_mm`` (Euclidean, in mm) of a
    calcium voxel's centre: the partial-volume halo of bone and calcified walls. Through thick
    slices the next slice is farther than the margin, so the M1 running in the slice above the
    sphenoid ridge stays visible."""
    if margin_mm <= 0 or not calcium.any():
        return calcium.copy()
    return ndimage.distance_transform_edt(~calcium, sampling=spacing_zyx_mm) <= margin_mm


def smooth_without(hu: np.ndarray, excluded: np.ndarray, sigma_mm: float,
                   spacing_zyx_mm: tuple[float, ...]) -> np.ndarray:
    """Gaussian smoothing (``sigma_mm`` per axis) of ``hu`` by normalised convolution that ignores
    ``excluded`` voxels (bone, calcium): noise falls while an artery 3-4 mm wide keeps its core
    density, and bone does not bleed into the tissue beside it."""
    if hu.size == 0:
        return hu.astype(np.float32)
    sigma = [sigma_mm / s for s in spacing_zyx_mm]
    weight = (~excluded).astype(np.float32)
    num = ndimage.gaussian_filter(np.where(excluded, np.float32(0), hu).astype(np.float32), sigma, mode="nearest")
    den = ndimage.gaussian_filter(weight, sigma, mode="nearest")
    return np.where(den > 1e-3, num / np.maximum(den, 1e-3), hu).astype(np.float32)


# -- the analysis -------------------------------------------------------------------------------


def _not_assessed(shape: tuple[int, ...], rules: Mapping[str, Any], reason: str) -> DenseArteryResult:
    return DenseArteryResult(present=None, side=None, segments=(), mask=np.zeros(shape, bool), rules=rules,
                             reason=reason)


def detect_dense_artery(
    anatomy: "Anatomy",
    plane: "MidlinePlane | None" = None,
    rules: Mapping[str, Any] | None = None,
    *,
    exclude_mask: np.ndarray | None = None,
) -> DenseArteryResult:
    """The hyperdense artery sign on the M1, M2 and basilar courses (see the module doc)."""
    rules = validate_vessel_rules(rules) if rules is not None else load_vessel_rules()
    hu = np.asarray(anatomy.hu(), dtype=np.float32)
    shape = hu.shape
    if exclude_mask is not None and np.shape(exclude_mask) != shape:
        raise InvalidInputError(f"dense artery: exclude mask {np.shape(exclude_mask)} is not on the anatomy grid {shape}")
    if not anatomy.registered:
        return _not_assessed(shape, rules, f"registration_failed: template overlap {anatomy.quality_dice:.2f}, "
                                           f"correlation {anatomy.quality_ncc:.2f}")
    if anatomy.inverse is None:
        return _not_assessed(shape, rules, "registration has no inverse: arterial courses cannot be mapped")

    dense_min, calcium = float(rules["dense_min_hu"]), float(rules["calcium_hu"])
    tubes: dict[tuple[str, str], tuple[_Tube, _Tube | None]] = {}
    for course in VESSEL_COURSES:
        own = anatomy.to_patient(np.array(course.points_mm))
        other: np.ndarray | None = None
        if course.side != "midline":
            other = reflect_points(own, plane) if plane is not None else anatomy.to_patient(
                np.array(course.mirror().points_mm))
        tubes[(course.name, course.side)] = (
            _tube(anatomy, own, course.radius_mm, shape),
            _tube(anatomy, other, course.radius_mm, shape) if other is not None else None)

    # everything below looks only at the tubes: work on their bounding box, padded by the
    # widest neighbourhood an operation reads (the brain margin, the smoothing's 4 sigma)
    spacing_zyx = anatomy.spacing_mm[::-1]
    sigma_mm = float(rules["smoothing_mm"])
    pad_mm = max(BRAIN_MARGIN_MM, 4.0 * sigma_mm, float(rules["calcium_margin_mm"])) + max(spacing_zyx)
    box = _box([t for pair in tubes.values() for t in pair if t is not None], shape,
               [int(np.ceil(pad_mm / sp)) for sp in spacing_zyx])
    sub = hu[box]
    calcified = near_calcium(sub >= calcium, spacing_zyx, float(rules["calcium_margin_mm"]))
    allowed_sub = ~calcified
    smooth_sub = smooth_without(sub, calcified, sigma_mm, spacing_zyx) if sigma_mm > 0 else sub
    if anatomy.brain is not None:
        # the basal cisterns around M1 often fall just outside a threshold brain mask: allow a
        # few mm around it, through-plane too (bone is excluded above; the search tube bounds the rest)
        margin = [max(1, int(round(BRAIN_MARGIN_MM / sp))) for sp in spacing_zyx]
        # a box-shaped dilation, done separably (= binary_dilation with np.ones of that size, zero border)
        inside = ndimage.maximum_filter(anatomy.brain[box], size=tuple(2 * m + 1 for m in margin), mode="constant",
                                        cval=False)
        if anatomy.template_brain is not None:
            # a threshold brain mask stops above the skull base on thick slices (on template
            # phantoms 12 mm above M1); the registered template brain holds the basal cisterns
            inside |= anatomy.template_brain[box]
        allowed_sub &= inside
    if exclude_mask is not None:
        allowed_sub &= ~np.asarray(exclude_mask, dtype=bool)[box]
    raw_hu = hu
    hu = np.array(hu, dtype=np.float32, copy=True)
    hu[box] = smooth_sub
    allowed = np.zeros(shape, bool)
    allowed[box] = allowed_sub
    candidate = allowed & (hu >= dense_min)
    hu_flat, allowed_flat, candidate_flat = hu.ravel(), allowed.ravel(), candidate.ravel()

    n_ref = int(rules["reference_voxels"])

    def whole_reference(tube: _Tube) -> float | None:
        return _top_median(hu_flat[tube.flat[allowed_flat[tube.flat]]], n_ref)

    m1_refs = [whole_reference(tubes[("M1", s)][0]) for s in ("left", "right") if ("M1", s) in tubes]
    basilar_ref = min((r for r in m1_refs if r is not None), default=None)

    mask = np.zeros(shape, bool)
    segments: list[VesselMeasurement] = []
    for course in VESSEL_COURSES:
        tube, mirror = tubes[(course.name, course.side)]
        measurement, dense_voxels = _measure_course(anatomy, course, tube, mirror, basilar_ref, hu_flat,
                                                    allowed_flat, candidate_flat, rules)
        segments.append(measurement)
        for flat in dense_voxels:
            mask.flat[flat] = True

    if mask.any() and sigma_mm > 0:
        # smoothing pulls the thrombus's edge under the threshold: the mask takes back the
        # unsmoothed voxels above it that touch a dense component
        mask[box] |= (ndimage.binary_dilation(mask[box], structure=np.ones((3, 3, 3), bool)) & allowed[box]
                      & (raw_hu[box] >= dense_min))
    caution = ""
    if anatomy.spacing_mm[2] > float(rules["thick_slice_mm"]):
        caution = (f"{anatomy.spacing_mm[2]:g} mm slices: partial volume hides a thin clot and can make a normal "
                   f"or haematocrit-raised artery look dense on one side; unreliable either way")
    dense = [s for s in segments if s.dense]
    if not dense:
        reason = "no hyperdense arterial segment (" + "; ".join(f"{s.name} {s.side}: {s.reason}" for s in segments) + ")"
        return DenseArteryResult(present=False, side=None, segments=tuple(segments), mask=mask, rules=rules,
                                 reason=reason, caution=caution)
    best = max(dense, key=lambda s: s.length_mm)
    sides = sorted({s.side for s in dense})
    reason = "hyperdense " + ", ".join(f"{s.name} {s.side} ({s.length_mm:.0f} mm, {s.mean_hu:.0f} HU, ratio "
                                       f"{s.ratio:.2f})" for s in dense)
    if len(set(sides) - {"midline"}) > 1:
        reason += "; both sides dense: check the haematocrit and the comparison"
    log.info("dense artery: %s", reason)
    return DenseArteryResult(present=True, side=best.side, segments=tuple(segments), mask=mask, rules=rules,
                             reason=reason, caution=caution)


def _measure_course(anatomy: "Anatomy", course: VesselCourse, tube: _Tube, mirror: _Tube | None,
                    basilar_ref: float | None, hu_flat: np.ndarray, allowed_flat: np.ndarray,
                    candidate_flat: np.ndarray, rules: Mapping[str, Any]) -> tuple[VesselMeasurement, list[np.ndarray]]:
    """The course's best component (or its brightest voxels) and the flat indices of its dense components."""
    n_ref = int(rules["reference_voxels"])
    margin = float(rules["reference_margin_mm"])

    def reference(s_lo: float, s_hi: float, n: int) -> float | None:
        if mirror is None:
            return basilar_ref
        window = (mirror.arc_mm >= s_lo - margin) & (mirror.arc_mm <= s_hi + margin)
        flat = mirror.flat[window]
        return _top_median(hu_flat[flat[allowed_flat[flat]]], n)

    allowed_tube = tube.flat[allowed_flat[tube.flat]]
    peak_tube = float(hu_flat[allowed_tube].max()) if allowed_tube.size else None
    in_tube = candidate_flat[tube.flat]
    if not in_tube.any():
        mean = _top_median(hu_flat[allowed_tube], n_ref)
        ref = reference(0.0, float(tube.arc_mm.max(initial=0.0)), n_ref)
        ratio = mean / ref if mean is not None and ref else None
        why = (f"no voxel in [{rules['dense_min_hu']:g}, {rules['calcium_hu']:g}) HU on the course"
               if allowed_tube.size else "course outside the brain or fully excluded")
        return VesselMeasurement(course.name, course.side, peak_tube, mean, ref, ratio, 0.0, 0, None, False, why), []

    # components of candidate voxels inside the tube, on the tube's bounding box
    zyx = tube.zyx[in_tube]
    lo = zyx.min(axis=0)
    box = np.zeros(tuple(zyx.max(axis=0) - lo + 1), bool)
    box[tuple((zyx - lo).T)] = True
    # components closer than merge_gap_mm are one: partial volume splits a thrombus where it
    # crosses from one slice to the next (labels on the box dilated by half the gap)
    half = [int(np.floor(float(rules["merge_gap_mm"]) / 2.0 / sp + 0.5)) for sp in anatomy.spacing_mm[::-1]]
    joined = box
    if any(half):
        r = np.array(half, float)
        grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
        ball = sum((g / max(rr, 1e-9)) ** 2 if rr else (g != 0) * 1e9 for g, rr in zip(grid, r)) <= 1.0
        joined = ndimage.binary_dilation(np.pad(box, [(h, h) for h in half]), structure=ball)
        joined = joined[tuple(slice(h, h + n_) for h, n_ in zip(half, box.shape))]
    labels, n = ndimage.label(joined, structure=np.ones((3, 3, 3), bool))
    comp_of = labels[tuple((zyx - lo).T)]
    arc, flat = tube.arc_mm[in_tube], tube.flat[in_tube]
    min_ratio, min_len = float(rules["min_ratio"]), float(rules["min_length_mm"])
    min_vox, dense_min = int(rules["min_voxels"]), float(rules["dense_min_hu"])
    max_area = float(rules["max_cross_section_mm2"])
    voxel_mm3 = float(np.prod(anatomy.spacing_mm))

    rows: list[tuple[tuple[bool, float], VesselMeasurement, np.ndarray]] = []
    for label in range(1, n + 1):
        sel = comp_of == label
        values = hu_flat[flat[sel]]
        s_lo, s_hi = float(arc[sel].min()), float(arc[sel].max())
        length = s_hi - s_lo
        mean, count = float(values.mean()), int(sel.sum())
        # Koo's ratio compares ROIs on the vessel cores: the median of the brightest n voxels of
        # the component against the same statistic on the mirrored stretch (same n, same bias)
        n_core = min(count, n_ref)
        core = _top_median(values, n_core)
        ref = reference(s_lo, s_hi, n_core)
        ratio = core / ref if ref and core is not None else None
        fails = []
        if mean < dense_min:
            fails.append(f"mean {mean:.1f} HU < {dense_min:g}")
        if ratio is None:
            fails.append("no contralateral reference")
        else:
            # the basilar is compared with another vessel (the M1), whose partial volume differs;
            # a contralateral vessel itself above dense_min_hu is a raised haematocrit pattern
            bar = min_ratio
            if course.side == "midline":
                bar = max(bar, float(rules["basilar_min_ratio"]))
            if ref is not None and ref >= dense_min:
                bar = max(bar, float(rules["raised_reference_min_ratio"]))
            if ratio <= bar:
                fails.append(f"ratio {ratio:.2f} <= {bar:g}" + (f" (reference {ref:.0f} HU)" if bar > min_ratio else ""))
        if length < min_len:
            fails.append(f"length {length:.1f} mm < {min_len:g}")
        if count < min_vox:
            fails.append(f"{count} voxels < {min_vox}")
        area = count * voxel_mm3 / max(length, min(anatomy.spacing_mm))
        if length >= min_len and area > max_area:
            fails.append(f"cross-section {area:.0f} mm2 > {max_area:g} (a blob, not a tube)")
        dense = not fails
        why = (f"mean {mean:.1f} HU, ratio {ratio:.2f}, {length:.1f} mm" if dense else "; ".join(fails))
        centroid = anatomy.index_to_lps(zyx[sel].mean(axis=0, keepdims=True))[0]
        row = VesselMeasurement(course.name, course.side, float(values.max()), mean, ref, ratio, float(length), count,
                                tuple(float(c) for c in centroid), dense, why)  # type: ignore[arg-type]
        rank = (dense, length)
        rows.append((rank, row, flat[sel]))
    rows.sort(key=lambda r: r[0], reverse=True)
    return rows[0][1], [f for rank, _, f in rows if rank[0]]
