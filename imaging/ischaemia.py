"""Early ischaemic change on non-contrast CT: ASPECTS, net water uptake, hypodensity, old infarcts.

A pure function of the registered :class:`ictus.imaging.anatomy.Anatomy` (HU on the analysis grid
and the ASPECTS regions warped onto it) and the ideal midline plane; the thresholds are data
(``imaging/ischaemia_rules.json``, read its ``description``).

Method, in the spirit of Siemens Frontier ASPECTS and of Mokin et al. (Stroke 2017):

1. **Region against mirror.** For each of the 10 ASPECTS regions per side, every voxel of the
   region is reflected about the ideal midline plane (the skull symmetry plane that the
   midline stage measures, not the image axis) and its HU is sampled there (linear). A pair
   counts when the region voxel lies in ``tissue_hu`` (wide enough for ischaemic tissue, CSF and
   calcification fall outside), its mirror in ``mirror_hu`` (normal tissue) and neither in the
   haemorrhage mask. The difference is the **median** paired difference (robust to a sulcus or
   a partial-volume rim on one side); ratio and net water uptake follow from it and the
   mirror's mean: ``NWU = (1 - HU_region / HU_mirror) x 100`` (Minnerup et al., Ann Neurol 2016).
2. **Noise of the comparison.** The standard error of that median uses the spread of the
   paired differences and an effective sample size: voxel pairs divided by the voxels of one
   independent noise sample (``noise_correlation_mm2`` in-plane, slices within 2 mm). A region is affected only
   when its drop passes ``min_drop_hu``, ``max_ratio`` and ``min_z`` (drop / standard error), so a
   2 HU difference on a noisy 5 mm study is not called with false confidence.
3. **ASPECTS** = 10 minus the affected regions on a side. Each region pair has one hypodense
   side at most; when both hemispheres have affected regions the score is reported for both
   and marked unreliable.
4. **Hypodensity volume.** Voxels whose smoothed HU lies ``min_drop_hu`` below their smoothed
   mirror, in tissue range, in connected clusters of at least ``min_cluster_ml``, counted per
   approximate vascular territory (lobar atlas) and side; flag above one third of the MCA
   territory.
5. **Old infarcts.** CSF-like density (``csf_hu``) in parenchyma outside the ventricles whose
   mirror is tissue, opened in-plane to drop sulci, in clusters of at least ``min_volume_ml``:
   encephalomalacia (tissue replaced by fluid, i.e. volume loss). A cluster whose ipsilateral
   ventricle is compressed (fluid volume under ``min_ventricle_ratio`` of the other side: mass
   effect, i.e. swelling, not loss) is not called old. The ASPECTS regions an old infarct covers
   (``region_fraction`` of their voxels) are marked chronic and are not counted as acute.

Measured on the real GE head (``tests/test_ischaemia.py``): no region affected; a drop inserted
into each of the 20 regions in turn is found at 4 HU in 70% of regions, at 5-6 HU in 95%, at
7-8 HU in all, with no false region among the untouched ones (0/380; 3/380 with 3 HU of added
correlated noise). The misses are regions already 0.6-2.9 HU denser than their mirror in this
normal head: the threshold has to sit above normal asymmetry. About 0.5 s per head.
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
from ictus.imaging.stroke_atlas import ASPECTS_CODES, ASPECTS_NAMES, SIDES, aspects_label

if TYPE_CHECKING:
    from ictus.imaging.anatomy import Anatomy
    from ictus.imaging.midline import MidlinePlane

log = logging.getLogger(__name__)

DEFAULT_RULES_PATH = Path(__file__).with_name("ischaemia_rules.json")
RULES_SCHEMA = "ictus-ischaemia-rules/1"
NWU_SOURCE = "Minnerup J et al., Ann Neurol 2016;79:299-310 (NWU < 11.5%: onset within 4.5 h likely)"


@dataclass(frozen=True)
class RegionDensity:
    """One ASPECTS region against its mirror region."""

    code: str
    side: str
    name: str
    voxel_count: int
    mean_hu: float | None
    mirror_mean_hu: float | None
    difference_hu: float | None  # region - mirror; negative = hypodense
    ratio: float | None
    nwu_percent: float | None
    noise_se_hu: float | None
    z_score: float | None  # drop / standard error (positive = hypodense)
    affected: bool
    chronic: bool
    reason: str


@dataclass(frozen=True)
class TerritoryHypodensity:
    """Clearly hypodense tissue in one vascular territory (lobar approximation) and side."""

    territory: str
    side: str
    volume_ml: float
    territory_volume_ml: float
    fraction: float


@dataclass(frozen=True)
class ChronicLesion:
    """An old infarct: fluid density replacing tissue."""

    side: str
    volume_ml: float
    mean_hu: float
    regions: tuple[str, ...]
    centroid_lps_mm: tuple[float, float, float]


@dataclass(frozen=True)
class IschaemiaResult:
    """Everything the ischaemia stage measured (``assessed`` False: nothing is claimed)."""

    assessed: bool
    reason: str
    regions: tuple[RegionDensity, ...] = ()
    aspects: Mapping[str, int] = field(default_factory=dict)
    affected_side: str | None = None
    affected_regions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    score_reliable: bool = True
    reliability_note: str = ""
    nwu_percent: float | None = None
    onset_within_4_5h_likely: bool | None = None
    nwu_cutoff_percent: float = 11.5
    nwu_source: str = NWU_SOURCE
    hypodensity: tuple[TerritoryHypodensity, ...] = ()
    large_mca_hypodensity: bool = False
    chronic: tuple[ChronicLesion, ...] = ()
    noise_hu: float = 0.0
    affected_mask: np.ndarray | None = field(default=None, repr=False)
    rules: Mapping[str, Any] = field(default_factory=dict, repr=False)


# -- rules --------------------------------------------------------------------------------------


def _number(rules: Mapping[str, Any], path: str) -> None:
    node: Any = rules
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise InvalidInputError(f"ischaemia rules: missing '{path}'; see the description in {DEFAULT_RULES_PATH.name}")
        node = node[part]
    values = node if isinstance(node, list) else [node]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise InvalidInputError(f"ischaemia rules: '{path}' must be a number (or a pair); found {node!r}")


def validate_ischaemia_rules(rules: Mapping[str, Any]) -> Mapping[str, Any]:
    """The rules themselves, or InvalidInputError naming what is wrong."""
    if not isinstance(rules, Mapping) or rules.get("schema") != RULES_SCHEMA:
        raise InvalidInputError(f"ischaemia rules: expected an object with schema {RULES_SCHEMA!r}")
    for path in ("tissue_hu", "mirror_hu", "noise_correlation_mm2", "region.min_drop_hu", "region.max_ratio", "region.min_z", "region.min_voxels",
                 "nwu.cutoff_percent", "hypodensity.min_drop_hu", "hypodensity.smoothing_mm",
                 "hypodensity.min_cluster_ml", "hypodensity.mca_fraction_caution", "hypodensity.edge_margin_mm", "chronic.csf_hu",
                 "chronic.mirror_min_hu", "chronic.min_volume_ml", "chronic.min_ventricle_ratio", "chronic.opening_mm", "chronic.region_fraction"):
        _number(rules, path)
    for code, override in (rules.get("overrides") or {}).items():
        if code not in ASPECTS_CODES or not isinstance(override, Mapping):
            raise InvalidInputError(f"ischaemia rules: override {code!r} is not an ASPECTS region code "
                                    f"({', '.join(ASPECTS_CODES)}) with an object of thresholds")
    for key in ("tissue_hu", "mirror_hu", "chronic.csf_hu"):
        node = rules["chronic"]["csf_hu"] if key == "chronic.csf_hu" else rules[key]
        if not (isinstance(node, list) and len(node) == 2 and node[0] < node[1]):
            raise InvalidInputError(f"ischaemia rules: {key} {node!r} must be [low, high]")
    return rules


def load_ischaemia_rules(path: str | Path | None = None) -> Mapping[str, Any]:
    """Read and validate a rules file (default: the packaged ``ischaemia_rules.json``)."""
    return validate_ischaemia_rules(read_rules_json(path or DEFAULT_RULES_PATH, "ischaemia rules"))


def _threshold(rules: Mapping[str, Any], code: str, key: str) -> float:
    override = (rules.get("overrides") or {}).get(code) or {}
    return float(override.get(key, rules["region"][key]))


def net_water_uptake_percent(hu: float, hu_mirror: float) -> float | None:
    """Net water uptake (%) = (1 - HU_affected / HU_mirror) x 100 (Minnerup et al., Ann Neurol
    2016); None when the mirror density is not positive."""
    if not hu_mirror > 0:
        return None
    return (1.0 - float(hu) / float(hu_mirror)) * 100.0


# -- geometry -----------------------------------------------------------------------------------


def mirror_points(points_lps: np.ndarray, plane: "MidlinePlane | None", anatomy: "Anatomy") -> np.ndarray:
    """Points reflected about the ideal midline plane (fallback: the template's mid-sagittal
    plane mapped into the patient by the registration)."""
    if plane is not None:
        normal, point = plane.normal, plane.point_mm
    else:
        normal, point = template_midplane(anatomy)
    d = (np.asarray(points_lps, dtype=float) - point) @ normal
    return points_lps - 2.0 * d[:, None] * normal[None, :]


def template_midplane(anatomy: "Anatomy") -> tuple[np.ndarray, np.ndarray]:
    """(unit normal towards patient left, point) of the template's x = 0 plane in the patient."""
    pts = anatomy.to_patient(np.array([[0.0, 0.0, 0.0], [0.0, 60.0, 0.0], [0.0, 0.0, 60.0], [10.0, 0.0, 0.0]]))
    normal = np.cross(pts[1] - pts[0], pts[2] - pts[0])
    normal /= np.linalg.norm(normal)
    if (pts[3] - pts[0]) @ normal < 0:
        normal = -normal
    return normal, pts[0]


def _sample(array: np.ndarray, index_zyx: np.ndarray, order: int = 1, cval: float = np.nan) -> np.ndarray:
    return ndimage.map_coordinates(array, index_zyx.T, order=order, mode="constant", cval=cval)


def correlation_voxels(spacing_mm: tuple[float, float, float], area_mm2: float) -> float:
    """Voxels per independent noise sample: the in-plane noise correlation area of a CT
    reconstruction kernel (``area_mm2``) over the pixel area, times the slices within 2 mm
    (neighbouring thin slices share noise; slices 2 mm apart or more do not). Estimating it
    from the image itself was tried and measures anatomy, not noise (r 0.86-0.95 on the GE head)."""
    sx, sy, sz = spacing_mm
    return max(1.0, area_mm2 / (sx * sy)) * max(1.0, 2.0 / sz)


def noise_sigma_hu(hu: np.ndarray, mask: np.ndarray) -> float:
    """Robust per-voxel noise (HU): MAD of the high-pass residual inside ``mask``, scaled to
    the noise of a voxel (the 3x3x3 mean removes 1/27 of its own variance)."""
    residual = (hu - ndimage.uniform_filter(hu, size=3))[mask]
    if residual.size == 0:
        return 0.0
    mad = float(np.median(np.abs(residual - np.median(residual))))
    return 1.4826 * mad / np.sqrt(1.0 - 1.0 / 27.0)


# -- the analysis -------------------------------------------------------------------------------


def assess_ischaemia(
    anatomy: "Anatomy",
    plane: "MidlinePlane | None" = None,
    rules: Mapping[str, Any] | None = None,
    *,
    exclude_mask: np.ndarray | None = None,
) -> IschaemiaResult:
    """Early ischaemic change of one registered head (see the module doc)."""
    rules = validate_ischaemia_rules(rules) if rules is not None else load_ischaemia_rules()
    cutoff = float(rules["nwu"]["cutoff_percent"])
    if not anatomy.registered:
        return IschaemiaResult(assessed=False, reason=f"registration_failed: template overlap "
                               f"{anatomy.quality_dice:.2f}, correlation {anatomy.quality_ncc:.2f}",
                               score_reliable=False, reliability_note="not assessed: registration not trusted",
                               nwu_cutoff_percent=cutoff, rules=rules)
    hu = np.asarray(anatomy.hu(), dtype=np.float32)
    brain = anatomy.brain if anatomy.brain is not None else np.ones(hu.shape, bool)
    lo, hi = (float(v) for v in rules["tissue_hu"])
    excluded = exclude_mask if exclude_mask is not None else np.zeros(hu.shape, bool)
    tissue = brain & (hu >= lo) & (hu <= hi) & ~excluded
    mlo, mhi = (float(v) for v in rules["mirror_hu"])
    noise = noise_sigma_hu(hu, brain & (hu >= mlo) & (hu <= mhi))
    corr_vox = correlation_voxels(anatomy.spacing_mm, float(rules["noise_correlation_mm2"]))

    chronic, chronic_mask = _chronic_lesions(anatomy, hu, brain, plane, rules)
    regions: list[RegionDensity] = []
    affected_mask = np.zeros(hu.shape, np.uint8)
    boxes = ndimage.find_objects(anatomy.aspects)  # each region's bounding box: work there, not on the whole grid
    for code in ASPECTS_CODES:
        for side in SIDES:
            label = aspects_label(code, side)
            box = boxes[label - 1] if label <= len(boxes) and boxes[label - 1] is not None else (slice(0, 0),) * 3
            region = _region(anatomy, hu, tissue, excluded, plane, code, side, label, rules, noise, corr_vox,
                             chronic_mask, box)
            regions.append(region)
            if region.affected:
                affected_mask[box][anatomy.aspects[box] == label] = label

    affected = {side: tuple(r.code for r in regions if r.side == side and r.affected) for side in SIDES}
    aspects = {side: 10 - len(affected[side]) for side in SIDES}
    sides = [s for s in SIDES if affected[s]]
    affected_side = None if not sides else (sides[0] if len(sides) == 1 else "both")
    reliable, note = True, ""
    if affected_side == "both":
        reliable = False
        note = ("hypodense regions on both sides: the mirror comparison cannot separate them, so both scores "
                "are reported and neither is reliable")
    nwu = None
    hit = [r for r in regions if r.affected and r.nwu_percent is not None]
    if hit:
        weights = np.array([r.voxel_count for r in hit], dtype=float)
        nwu = float(np.average([r.nwu_percent for r in hit], weights=weights))
    hypo, large = _hypodensity(anatomy, hu, brain, excluded, plane, rules)
    log.info("ischaemia: ASPECTS left %d right %d, noise %.1f HU, corr %.1f vox", aspects["left"],
             aspects["right"], noise, corr_vox)
    return IschaemiaResult(
        assessed=True, reason="ok", regions=tuple(regions), aspects=aspects, affected_side=affected_side,
        affected_regions=affected, score_reliable=reliable, reliability_note=note, nwu_percent=nwu,
        onset_within_4_5h_likely=None if nwu is None else nwu < cutoff, nwu_cutoff_percent=cutoff,
        hypodensity=hypo, large_mca_hypodensity=large, chronic=chronic, noise_hu=float(noise),
        affected_mask=affected_mask, rules=rules,
    )


def _region(anatomy: "Anatomy", hu: np.ndarray, tissue: np.ndarray, excluded: np.ndarray,
            plane: "MidlinePlane | None", code: str, side: str, label: int, rules: Mapping[str, Any],
            noise: float, corr_vox: float, chronic_mask: np.ndarray,
            box: tuple[slice, ...]) -> RegionDensity:
    """The density comparison of one ASPECTS region (``box``: its bounding box on the grid)."""
    name = f"{ASPECTS_NAMES[code]} ({side})"
    in_region = anatomy.aspects[box] == label
    total = int(np.count_nonzero(in_region))
    chronic = bool(total > 0 and np.count_nonzero(in_region & chronic_mask[box])
                   >= float(rules["chronic"]["region_fraction"]) * total)
    idx = np.argwhere(in_region & tissue[box]) + np.array([s.start or 0 for s in box], dtype=np.intp)
    min_voxels = int(_threshold(rules, code, "min_voxels"))
    empty = RegionDensity(code, side, name, len(idx), None, None, None, None, None, None, None, False, chronic,
                          "old infarct (fluid density): not counted as acute" if chronic
                          else "too few tissue voxels to compare")
    if len(idx) < min_voxels:
        return empty
    mirrored = anatomy.lps_to_index(mirror_points(anatomy.index_to_lps(idx), plane, anatomy))
    values = hu[tuple(idx.T)]
    mirror_values = _sample(hu, mirrored)
    lo, hi = (float(v) for v in rules["mirror_hu"])
    mirror_excluded = _sample(excluded.astype(np.float32), mirrored, order=0, cval=1.0) > 0.5
    ok = np.isfinite(mirror_values) & (mirror_values >= lo) & (mirror_values <= hi) & ~mirror_excluded
    if np.count_nonzero(ok) < min_voxels:
        return empty
    a, b = values[ok].astype(np.float64), mirror_values[ok].astype(np.float64)
    mean, mirror_mean = float(a.mean()), float(b.mean())
    paired = a - b
    diff = float(np.median(paired))  # robust to sulcal and partial-volume outliers of the mirror
    n_eff = max(1.0, np.count_nonzero(ok) / corr_vox)
    se = float(1.2533 * np.std(paired) / np.sqrt(n_eff))  # standard error of a median
    drop = -diff
    z = drop / se if se > 0 else 0.0
    ratio = 1.0 + diff / mirror_mean if mirror_mean > 0 else None
    nwu = net_water_uptake_percent(mirror_mean + diff, mirror_mean)
    checks = {
        "drop": drop >= _threshold(rules, code, "min_drop_hu"),
        "ratio": ratio is not None and ratio <= _threshold(rules, code, "max_ratio"),
        "z": z >= _threshold(rules, code, "min_z"),
    }
    affected = all(checks.values()) and not chronic
    if chronic:
        reason = "old infarct (fluid density): not counted as acute"
    elif affected:
        reason = f"drop {drop:.1f} HU, ratio {ratio:.3f}, {z:.1f} standard errors"
    else:
        reason = "within limits (" + ", ".join(k for k, v in checks.items() if not v) + " below threshold)"
    return RegionDensity(code, side, name, int(np.count_nonzero(ok)), mean, mirror_mean, diff, ratio, nwu, se, z,
                         affected, chronic, reason)


def _mirror_image(anatomy: "Anatomy", image: np.ndarray, plane: "MidlinePlane | None", mask: np.ndarray,
                  order: int = 1) -> np.ndarray:
    """``image`` sampled at the mirror of every voxel of ``mask`` (NaN elsewhere)."""
    out = np.full(image.shape, np.nan, np.float32)
    idx = np.argwhere(mask)
    if len(idx):
        mirrored = anatomy.lps_to_index(mirror_points(anatomy.index_to_lps(idx), plane, anatomy))
        out[tuple(idx.T)] = _sample(image, mirrored, order=order)
    return out


def _hypodensity(anatomy: "Anatomy", hu: np.ndarray, brain: np.ndarray, excluded: np.ndarray,
                 plane: "MidlinePlane | None", rules: Mapping[str, Any]) -> tuple[tuple[TerritoryHypodensity, ...], bool]:
    r = rules["hypodensity"]
    lo, hi = (float(v) for v in rules["tissue_hu"])
    sigma = [float(r["smoothing_mm"]) / s for s in reversed(anatomy.spacing_mm)]
    sigma[0] = min(sigma[0], 1.0)  # through-plane: thick slices are not smoothed across
    smooth = ndimage.gaussian_filter(np.where(brain, hu, 25.0).astype(np.float32), sigma)
    # away from the brain's edge (the mirror of a rim voxel can fall on bone or CSF) and the ventricles
    inner = ndimage.binary_erosion(brain, structure=_disk(anatomy, float(r["edge_margin_mm"])))
    candidates = inner & (hu >= lo) & (hu <= hi) & ~excluded
    if anatomy.ventricles is not None:
        candidates &= ~ndimage.binary_dilation(anatomy.ventricles, iterations=2)
    mirror = _mirror_image(anatomy, smooth, plane, candidates)
    mlo, mhi = (float(v) for v in rules["mirror_hu"])
    hypo = (candidates & np.isfinite(mirror) & (mirror >= mlo) & (mirror <= mhi)
            & (smooth <= mirror - float(r["min_drop_hu"])))
    comp, n = ndimage.label(hypo, structure=np.ones((3, 3, 3), bool))
    if n:
        sizes = np.bincount(comp.ravel())
        keep = np.nonzero(sizes * anatomy.voxel_ml >= float(r["min_cluster_ml"]))[0]
        hypo = np.isin(comp, keep[keep > 0])
    rows, large = [], False
    for territory in ("MCA", "ACA", "PCA"):
        for side in SIDES:
            region = anatomy.territories.get(f"{territory}_{side}")
            if region is None or not region.any():
                continue
            vol = float(np.count_nonzero(hypo & region) * anatomy.voxel_ml)
            tvol = float(np.count_nonzero(region) * anatomy.voxel_ml)
            rows.append(TerritoryHypodensity(territory, side, vol, tvol, vol / tvol if tvol else 0.0))
            if territory == "MCA" and tvol and vol / tvol > float(r["mca_fraction_caution"]):
                large = True
    return tuple(rows), large


def _chronic_lesions(anatomy: "Anatomy", hu: np.ndarray, brain: np.ndarray, plane: "MidlinePlane | None",
                     rules: Mapping[str, Any]) -> tuple[tuple[ChronicLesion, ...], np.ndarray]:
    c = rules["chronic"]
    lo, hi = (float(v) for v in c["csf_hu"])
    fluid = brain & (hu >= lo) & (hu <= hi)
    if anatomy.ventricles is not None:
        fluid &= ~ndimage.binary_dilation(anatomy.ventricles, iterations=2)
    fluid = ndimage.binary_opening(fluid, structure=_disk(anatomy, float(c["opening_mm"])))  # sulci go
    mask = np.zeros(hu.shape, bool)
    if not fluid.any():
        return (), mask
    mirror = _mirror_image(anatomy, hu, plane, fluid)
    fluid &= np.isfinite(mirror) & (mirror >= float(c["mirror_min_hu"]))
    comp, n = ndimage.label(fluid, structure=np.ones((3, 3, 3), bool))
    ventricle_ml = _ventricle_ml(anatomy, hu, brain, plane, (lo, hi))
    lesions = []
    for k, box in enumerate(ndimage.find_objects(comp), start=1):
        if box is None:
            continue
        local = comp[box] == k
        volume_ml = float(np.count_nonzero(local) * anatomy.voxel_ml)
        if volume_ml < float(c["min_volume_ml"]):
            continue
        idx = np.argwhere(local) + np.array([s.start for s in box])
        pts = anatomy.index_to_lps(idx)
        labels = anatomy.aspects[tuple(idx.T)]
        codes = tuple(sorted({f"{ASPECTS_CODES[(v - 1) % 10]}" for v in labels[labels > 0]}))
        side = _side(pts, plane, anatomy)
        other = "right" if side == "left" else "left"
        if ventricle_ml[other] > 0 and ventricle_ml[side] < float(c["min_ventricle_ratio"]) * ventricle_ml[other]:
            log.info("fluid-density cluster of %.1f mL (%s) with a compressed ipsilateral ventricle "
                     "(%.1f vs %.1f mL): mass effect, not an old infarct", volume_ml, side, ventricle_ml[side],
                     ventricle_ml[other])
            continue
        mask[tuple(idx.T)] = True
        cx, cy, cz = (float(v) for v in pts.mean(axis=0))
        lesions.append(ChronicLesion(side=side, volume_ml=volume_ml, mean_hu=float(hu[tuple(idx.T)].mean()),
                                     regions=codes, centroid_lps_mm=(cx, cy, cz)))
    return tuple(sorted(lesions, key=lambda les: -les.volume_ml)), mask


def _ventricle_ml(anatomy: "Anatomy", hu: np.ndarray, brain: np.ndarray, plane: "MidlinePlane | None",
                  csf_hu: tuple[float, float]) -> dict[str, float]:
    """Fluid-density volume (mL) of the warped ventricles per side: tissue loss pulls the
    ipsilateral ventricle open (ex vacuo), acute swelling compresses it."""
    out = {"left": 0.0, "right": 0.0}
    if anatomy.ventricles is None:
        return out
    idx = np.argwhere(anatomy.ventricles & brain & (hu >= csf_hu[0]) & (hu <= csf_hu[1] + 6.0))
    if len(idx) == 0:
        return out
    d = _signed_distance(anatomy.index_to_lps(idx), plane, anatomy)
    out["left"] = float(np.count_nonzero(d > 0) * anatomy.voxel_ml)
    out["right"] = float(np.count_nonzero(d < 0) * anatomy.voxel_ml)
    return out


def _signed_distance(points_lps: np.ndarray, plane: "MidlinePlane | None", anatomy: "Anatomy") -> np.ndarray:
    if plane is not None:
        return plane.signed_distance_mm(points_lps)
    normal, point = template_midplane(anatomy)
    return (points_lps - point) @ normal


def _disk(anatomy: "Anatomy", radius_mm: float) -> np.ndarray:
    """An in-plane disk structuring element (1, ny, nx) on the analysis grid."""
    rx, ry = (max(1, int(round(radius_mm / s))) for s in anatomy.spacing_mm[:2])
    yy, xx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    return ((xx / rx) ** 2 + (yy / ry) ** 2 <= 1.0)[None]


def _side(points_lps: np.ndarray, plane: "MidlinePlane | None", anatomy: "Anatomy") -> str:
    return "left" if float(np.mean(_signed_distance(points_lps, plane, anatomy) > 0)) >= 0.5 else "right"
