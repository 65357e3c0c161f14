"""The analytic head: ellipsoids and capsules in the head frame, and the painter that evaluates them.

A :class:`_Block` is a structured set of points (columns x rows x sub-samples);
:func:`_paint_anatomy` paints every normal structure on it, outside in (scalp,
skull, CSF, brain displaced by the midline shift, ventricles, falx, sinuses and
the optional detail, metal and contrast).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ictus.imaging.phantom.spec import (
    _HU_MAX,
    _INNER_TABLE_SEMI_MM,
    _SEPTUM_HALF_MM,
    HU,
    TISSUES,
    PhantomSpec,
    _head_scale,
)


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
            e = _Ellipsoid((side * c[0] * k, c[1] * k, c[2] * k), (sm[0] * k, sm[1] * k, sm[2] * k))
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
    w: np.ndarray = np.zeros(px.shape, dtype=np.float32)
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
