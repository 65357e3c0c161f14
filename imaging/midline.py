"""Midline shift: ideal midline from skull symmetry, actual midline at the septum pellucidum.

Method (following the two-step scheme of Liao CC, Xiao F, Wong JM, Chiang IJ,
"Automatic recognition of midline shift on brain CT images", Comput Biol Med
2010;40(3):331-339: an *ideal* midline from the bilateral symmetry of the
skull, then the *actual* midline from the deformed midline structures):

1. **Ideal midline** (:func:`ideal_midline_plane`): the mid-sagittal plane
   ``x = a + b (y - yc) + c (z - zc)`` (LPS mm) about which the in-plane
   boundary of the intracranial cavity is most nearly mirror-symmetric. It
   starts from a line fit to the mid-points of the cavity's rows and is refined
   by minimising the mean distance between the mirrored boundary and the
   boundary (a chamfer symmetry score). The inner table of the skull does not
   move with mass effect, so this plane is the midline "as it should be".
2. **Actual midline** (:func:`measure_midline_shift`): the septum pellucidum,
   the thin septum between the two CSF-dense frontal horns / bodies of the
   lateral ventricles, where radiologists measure midline shift (Ropper AH,
   "Lateral displacement of the brain and level of consciousness in patients
   with an acute hemispheral mass", N Engl J Med 1986;314:953-958; Liao et al.
   2010 also anchor the deformed midline on the ventricles). On each axial
   slice, CSF (smoothed HU <= ``csf_max_hu``) inside the brain, away from the
   skull, is split into runs along each row; a tissue gap of 0.5-8 mm between
   two CSF runs is a septum candidate. Its perpendicular distance to the ideal
   plane, signed towards patient left, is the septal displacement on that row.
3. **Shift** = the median septal displacement over the rows of the slices
   where the septum is seen (the level of the lateral ventricles). Direction is
   "left" (towards the patient's left, +x in LPS) or "right", or "none" under
   ``none_below_mm``.

Every failure (no brain, no closed skull, no ventricles) returns a result with
``shift_mm=None`` and a reason instead of a number.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, optimize

from ictus.imaging.brain import BrainResult, as_image, bin_axial, bin_factor, coarse_to_fine, disk, erode_axial, to_lps
from ictus.imaging.volume import index_to_lps, lps_to_index

log = logging.getLogger(__name__)

METHOD = "skull-symmetry ideal midline + septum pellucidum (Liao 2010 scheme)"


@dataclass(frozen=True)
class MidlinePlane:
    """The ideal mid-sagittal plane ``x = a + b (y - yc) + c (z - zc)`` in LPS mm."""

    a_mm: float
    b: float
    c: float
    yc_mm: float
    zc_mm: float
    symmetry_error_mm: float = 0.0  # mean mirrored-boundary distance at the optimum

    @property
    def normal(self) -> np.ndarray:
        """Unit normal, pointing towards patient left (+x LPS)."""
        n = np.array([1.0, -self.b, -self.c])
        return n / np.linalg.norm(n)

    @property
    def point_mm(self) -> np.ndarray:
        """A point of the plane (LPS mm)."""
        return np.array([self.a_mm, self.yc_mm, self.zc_mm])

    def signed_distance_mm(self, points_lps: np.ndarray) -> np.ndarray:
        """Signed distance of LPS points (N, 3) to the plane; > 0 is patient left."""
        p = np.atleast_2d(np.asarray(points_lps, dtype=float))
        x_plane = self.a_mm + self.b * (p[:, 1] - self.yc_mm) + self.c * (p[:, 2] - self.zc_mm)
        return (p[:, 0] - x_plane) / np.sqrt(1.0 + self.b**2 + self.c**2)


@dataclass(frozen=True)
class MidlineResult:
    """Midline shift (mm, signed: > 0 towards patient left) or None with a reason."""

    shift_mm: float | None
    direction: str | None  # "left" | "right" | "none" | None when not measurable
    method: str
    confidence: float  # 0..1
    reason: str
    ideal_plane: MidlinePlane | None = None
    slice_shifts_mm: tuple[float, ...] = ()
    septum_rows: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def abs_shift_mm(self) -> float | None:
        """Magnitude of the shift, or None."""
        return None if self.shift_mm is None else abs(self.shift_mm)


# -- geometry helpers ---------------------------------------------------------------------


def _inplane_boundary(mask: np.ndarray) -> np.ndarray:
    eroded = ndimage.binary_erosion(mask, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool))
    return mask & ~eroded


# -- ideal midline --------------------------------------------------------------------------


def ideal_midline_plane(
    intracranial: sitk.Image,
    *,
    min_area_fraction: float = 0.4,
    max_points: int = 20000,
    max_slices: int = 40,
) -> MidlinePlane | None:
    """The mid-sagittal plane of best mirror symmetry of the intracranial cavity, or None.

    ``intracranial`` is a mask image (e.g. :attr:`BrainResult.intracranial_mask`).
    Only axial slices whose cavity area is at least ``min_area_fraction`` of the
    largest are used (the skull base and vertex are neither closed nor symmetric).
    """
    lps = to_lps(intracranial)
    full = sitk.GetArrayViewFromImage(lps)
    if not full.any():
        return None
    f = bin_factor(lps.GetSpacing()[:2])  # work on a ~1 mm in-plane grid
    mask = bin_axial(full, f) >= 0.5
    sx, sy = lps.GetSpacing()[0] * f, lps.GetSpacing()[1] * f

    def to_world(zyx: np.ndarray) -> np.ndarray:
        fine = np.array(zyx, dtype=float)
        fine[:, 1:] = coarse_to_fine(fine[:, 1:], f)
        return index_to_lps(lps, fine)

    def to_index(points: np.ndarray) -> np.ndarray:
        idx = lps_to_index(lps, points)
        idx[:, 1:] = (idx[:, 1:] - (f - 1) / 2.0) / f
        return idx

    areas = mask.sum(axis=(1, 2))
    slices = np.flatnonzero(areas >= min_area_fraction * areas.max())
    if slices.size == 0:
        return None
    if slices.size > max_slices:  # thin slices: an even subset is as good and much cheaper
        slices = np.unique(slices[np.linspace(0, slices.size - 1, max_slices).round().astype(int)])
    # initial guess: line through row mid-points of the cavity on the chosen slices
    mids = []
    for z in slices:
        m = mask[z]
        rows = np.flatnonzero(m.any(axis=1))
        widths = np.array([np.ptp(np.flatnonzero(m[y])) for y in rows])
        keep = rows[widths >= 0.6 * widths.max()]
        for y in keep:
            xs = np.flatnonzero(m[y])
            mids.append((z, y, 0.5 * (xs[0] + xs[-1])))
    mids_lps = to_world(np.array(mids, dtype=float))
    yc, zc = float(np.median(mids_lps[:, 1])), float(np.median(mids_lps[:, 2]))
    design = np.column_stack([np.ones(len(mids_lps)), mids_lps[:, 1] - yc, mids_lps[:, 2] - zc])
    coef = np.linalg.lstsq(design, mids_lps[:, 0], rcond=None)[0]
    if len(slices) < 3:
        coef[2] = 0.0  # roll is not determined by one or two slices

    # refinement: chamfer symmetry of the in-plane boundary
    sub = mask[slices]
    boundary = _inplane_boundary(sub)
    dist = np.stack([ndimage.distance_transform_edt(~b, sampling=(sy, sx)) for b in boundary])
    pts = np.argwhere(boundary).astype(float)
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(0).choice(len(pts), max_points, replace=False)]
    pts_full = pts.copy()
    pts_full[:, 0] = slices[pts[:, 0].astype(int)]
    world = to_world(pts_full)
    # every axial index -> the nearest slice of the subset (exact when no subset was taken)
    nearest = np.abs(np.arange(mask.shape[0])[:, None] - slices[None, :])
    slice_lookup = np.argmin(nearest, axis=1)
    slice_lookup[np.min(nearest, axis=1) > 2] = -1
    big = float(max(dist.shape[1] * sy, dist.shape[2] * sx))

    def cost(params: np.ndarray) -> float:
        a, b, c = params
        if len(slices) < 3:
            c = 0.0
        plane = MidlinePlane(a, b, c, yc, zc)
        d = plane.signed_distance_mm(world)
        mirrored = world - 2.0 * d[:, None] * plane.normal[None, :]
        idx = to_index(mirrored)
        zi = np.rint(idx[:, 0]).astype(int)
        inside = (zi >= 0) & (zi < mask.shape[0])
        k = np.full(len(zi), -1)
        k[inside] = slice_lookup[zi[inside]]
        ok = k >= 0
        vals = np.full(len(zi), big)
        if ok.any():
            vals[ok] = ndimage.map_coordinates(
                dist, np.vstack([k[ok], idx[ok, 1], idx[ok, 2]]), order=1, mode="nearest"
            )
        return float(np.mean(np.minimum(vals, 20.0)))

    res = optimize.minimize(
        cost, coef, method="Powell", options={"xtol": 1e-3, "ftol": 1e-4, "maxiter": 2000}
    )
    a, b, c = (float(v) for v in res.x)
    if len(slices) < 3:
        c = 0.0
    if abs(b) > 0.5 or abs(c) > 0.5:  # > ~27 deg: the optimiser wandered off; keep the row fit
        a, b, c = (float(v) for v in coef)
    return MidlinePlane(a, b, c, yc, zc, symmetry_error_mm=float(res.fun))


# -- actual midline (septum pellucidum) ---------------------------------------------------


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) inclusive index pairs of the True runs of a 1-D bool array."""
    padded = np.concatenate([[False], row, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e) - 1) for s, e in zip(edges[::2], edges[1::2])]


def measure_midline_shift(
    volume_or_image: Any,
    brain: BrainResult,
    *,
    csf_max_hu: float = 15.0,
    smoothing_mm: float = 1.0,
    skull_margin_mm: float = 12.0,
    search_half_width_mm: float = 45.0,
    septum_gap_mm: tuple[float, float] = (0.5, 8.0),
    min_run_mm: float = 2.0,
    min_ventricle_area_mm2: float = 30.0,
    min_rows: int = 3,
    none_below_mm: float = 1.0,
) -> MidlineResult:
    """Midline shift of a HU volume given its brain masks (see the module doc for the method)."""
    if not brain.brain_found:
        return MidlineResult(None, None, METHOD, 0.0, f"no brain found: {brain.reason}")
    plane = ideal_midline_plane(brain.intracranial_mask)
    if plane is None:
        return MidlineResult(None, None, METHOD, 0.0, "no closed skull to take the ideal midline from")

    image = as_image(volume_or_image)
    lps = to_lps(image)
    f = bin_factor(lps.GetSpacing()[:2])  # work on a ~1 mm in-plane grid (block means)
    hu = bin_axial(sitk.GetArrayViewFromImage(lps), f)
    brain_mask = bin_axial(sitk.GetArrayFromImage(to_lps(brain.brain_mask)), f) >= 0.5
    intracranial = bin_axial(sitk.GetArrayFromImage(to_lps(brain.intracranial_mask)), f) >= 0.5
    sx, sy = lps.GetSpacing()[0] * f, lps.GetSpacing()[1] * f

    inner = erode_axial(intracranial, skull_margin_mm, (sx, sy))
    z_has = np.flatnonzero(inner.any(axis=(1, 2)))
    if z_has.size == 0:
        return MidlineResult(None, None, METHOD, 0.0, "intracranial space too small to find the ventricles", plane)
    zs = slice(int(z_has[0]), int(z_has[-1]) + 1)
    smooth = ndimage.gaussian_filter(hu[zs], sigma=[0.0, smoothing_mm / sy, smoothing_mm / sx])
    csf = (smooth <= csf_max_hu) & (smooth >= -30.0) & inner[zs] & brain_mask[zs]

    # distance of every voxel column to the ideal plane, per slice
    nz, ny, nx = csf.shape
    slice_values: list[float] = []
    slice_rows: list[int] = []
    slice_index: list[int] = []
    all_rows: list[float] = []
    open_se = disk(1.0, (sx, sy))
    min_area_px = min_ventricle_area_mm2 / (sx * sy)
    gap_lo, gap_hi = septum_gap_mm
    for k in range(nz):
        z = zs.start + k
        c2 = ndimage.binary_opening(csf[k][None], structure=open_se)[0]
        if not c2.any():
            continue
        lab, n = ndimage.label(c2)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())
        keep = np.flatnonzero(sizes >= min_area_px)
        keep = keep[keep > 0]
        if keep.size == 0:
            continue
        c2 = np.isin(lab, keep)
        rows = np.flatnonzero(c2.any(axis=1))
        # x (index) of the ideal plane on each row, and the search window
        row_pts = np.column_stack([np.full(rows.size, z), coarse_to_fine(rows, f), np.full(rows.size, coarse_to_fine(0, f))])
        row_lps = index_to_lps(lps, row_pts)
        d0 = plane.signed_distance_mm(row_lps)  # distance of coarse x-index 0 to the plane
        cosine = float(plane.normal @ np.array(lps.GetDirection()).reshape(3, 3)[:, 0])
        values = []
        for y, base in zip(rows, d0):
            runs = _runs(c2[y])
            for (s1, e1), (s2, e2) in zip(runs[:-1], runs[1:]):
                gap = (s2 - e1 - 1) * sx
                if not (gap_lo <= gap <= gap_hi):
                    continue
                if (e1 - s1 + 1) * sx < min_run_mm or (e2 - s2 + 1) * sx < min_run_mm:
                    continue
                xm = 0.5 * (e1 + s2)
                dist = base + xm * sx * cosine
                if abs(dist) <= search_half_width_mm:
                    values.append(dist)
        if len(values) >= min_rows:
            slice_values.append(float(np.median(values)))
            slice_rows.append(len(values))
            slice_index.append(z)
            all_rows.extend(values)
    if not slice_values:
        return MidlineResult(
            None, None, METHOD, 0.0,
            "septum pellucidum not found (no pair of CSF-dense lateral ventricles on any slice)", plane,
        )
    rows_arr = np.array(slice_rows)
    vals_arr = np.array(slice_values)
    supported = rows_arr >= 0.5 * rows_arr.max()
    chosen = vals_arr[supported]
    weights = rows_arr[supported]
    order = np.argsort(chosen)
    cum = np.cumsum(weights[order])
    shift = float(chosen[order][np.searchsorted(cum, 0.5 * cum[-1])])  # weighted median
    spread = float(np.median(np.abs(np.array(all_rows) - shift)))
    confidence = float(np.clip(1.0 - spread / 3.0, 0.0, 1.0) * min(1.0, len(chosen) / 2.0))
    candidates = np.flatnonzero(supported)
    best = int(candidates[np.argmin(np.abs(vals_arr[candidates] - shift) - 1e-3 * rows_arr[candidates])])
    best_z = slice_index[best]
    septum_z_mm = float(index_to_lps(lps, np.array([[best_z, 0.0, 0.0]]))[0, 2])
    direction = "none" if abs(shift) < none_below_mm else ("left" if shift > 0 else "right")
    return MidlineResult(
        shift_mm=shift,
        direction=direction,
        method=METHOD,
        confidence=confidence,
        reason=f"septum pellucidum seen on {len(chosen)} slice(s), {int(weights.sum())} rows",
        ideal_plane=plane,
        slice_shifts_mm=tuple(float(v) for v in chosen),
        septum_rows=int(weights.sum()),
        details={
            "row_spread_mm": spread,
            "symmetry_error_mm": plane.symmetry_error_mm,
            "slice_index_lps": best_z,  # axial index on the LPS-oriented grid where the septum is shown
            "septum_z_mm": septum_z_mm,
        },
    )
