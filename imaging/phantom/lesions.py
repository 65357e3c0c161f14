"""Haemorrhages (IPH, EAH, IVH) and the perihaematomal oedema: painting them and fitting their volume.

:func:`build_model` builds the analytic head of a spec and fits the
haemorrhage's threshold on a fine grid so that it holds the requested volume.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ictus.imaging.errors import InvalidInputError
from ictus.imaging.phantom.anatomy import (
    _Anatomy,
    _Block,
    _build_anatomy,
    _Ellipsoid,
    _Haemorrhage,
    _inner_depth,
    _paint_anatomy,
)
from ictus.imaging.phantom.spec import (
    HU,
    LABELS,
    PARENCHYMA_TISSUES,
    TISSUES,
    PhantomSpec,
    _to_head,
    _to_lps,
    head_rotation,
)


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
    keys, pt_blocks = [], []
    for z0 in range(0, ys.shape[0], 32):
        blk = _Block(xs, ys[z0:z0 + 32], zs[z0:z0 + 32])
        _paint_anatomy(blk, probe)
        full = (slice(0, ys.shape[1]), slice(0, xs.shape[0]))
        eligible, key = _haemorrhage_key(blk, probe, h0, full, blk.tissue)
        sel = eligible & (key < h0.threshold)
        keys.append(key[sel])
        idx = np.nonzero(sel)
        pt_blocks.append(np.stack([xs[idx[2]], ys[z0:z0 + 32][idx[0], idx[1]], zs[z0:z0 + 32][idx[0], idx[1]]], axis=1))
    key = np.concatenate(keys)
    pts = np.concatenate(pt_blocks)
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
        ox, oy, oz = (s * scale + spec.oedema_rim_mm for s in base.semi)
        h = dataclasses.replace(h, oedema_semi=(ox, oy, oz))
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

