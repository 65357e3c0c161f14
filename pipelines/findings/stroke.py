"""Stroke findings: the typed ``ischaemia``, ``dense_artery``, ``anatomy``, ``ich_score`` and
``stroke_summary`` parts of the findings record, built from the imaging analyses.

Pure functions: the registered :class:`ictus.imaging.anatomy.Anatomy`, the
:class:`ictus.imaging.ischaemia.IschaemiaResult`, the :class:`ictus.imaging.vessels.DenseArteryResult`
and the haemorrhage measurements in, frozen dataclasses out. The stroke summary answers the
stroke team's four questions (blood? early ischaemic change and ASPECTS? hyperdense artery?
how old does the tissue look?) and lists the thrombolysis-relevant cautions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # types only: no import cost on the triage path
    from ictus.imaging.anatomy import Anatomy
    from ictus.imaging.ischaemia import IschaemiaResult
    from ictus.imaging.measure import Measurements
    from ictus.imaging.vessels import DenseArteryResult

log = logging.getLogger(__name__)

ICH_SCORE_SOURCE = "Hemphill JC et al., The ICH score, Stroke 2001;32:891-897"
REGISTRATION_METHOD = "CT template (Rorden 2012, MNI) registered rigid then affine (SimpleITK, Mattes MI)"


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


@dataclass(frozen=True)
class AnatomyFinding:
    """The template registration behind every template-based finding."""

    registered: bool | None
    quality_dice: float | None
    min_quality_dice: float
    method: str
    reason: str


@dataclass(frozen=True)
class RegionRow:
    """One ASPECTS region against its mirror region."""

    code: str
    side: str
    name: str
    voxel_count: int
    mean_hu: float | None
    mirror_mean_hu: float | None
    difference_hu: float | None
    ratio: float | None
    nwu_percent: float | None
    noise_se_hu: float | None
    z_score: float | None
    affected: bool
    chronic: bool


@dataclass(frozen=True)
class TerritoryRow:
    """Clearly hypodense tissue in one vascular territory (lobar approximation)."""

    territory: str
    side: str
    volume_ml: float
    territory_volume_ml: float
    fraction: float


@dataclass(frozen=True)
class ChronicRow:
    """An old infarct: CSF-like density with volume loss (not counted as acute)."""

    side: str
    volume_ml: float
    mean_hu: float | None
    regions: tuple[str, ...]


@dataclass(frozen=True)
class IschaemiaFinding:
    """Early ischaemic change: ASPECTS per side, NWU, hypodensity, chronic lesions."""

    assessed: bool
    reason: str
    aspects: Mapping[str, int] | None = None
    aspects_min: int | None = None
    affected_side: str | None = None
    affected_regions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    early_change: bool | None = None
    score_reliable: bool | None = None
    reliability_note: str = ""
    nwu_percent: float | None = None
    onset_within_4_5h_likely: bool | None = None
    nwu_cutoff_percent: float | None = None
    nwu_source: str = ""
    nwu_note: str = ("An estimate from tissue density: net water uptake rises with time since onset; "
                     "it does not replace the known time of onset.")
    hypodensity: tuple[TerritoryRow, ...] = ()
    hypodense_volume_ml: float | None = None  # clearly hypodense tissue in all territories, both sides
    large_mca_hypodensity: bool | None = None
    chronic_lesions: tuple[ChronicRow, ...] = ()
    noise_hu: float | None = None
    regions: tuple[RegionRow, ...] = ()
    method: str = ("Mean HU of brain tissue per ASPECTS region against its mirror about the ideal midline "
                   "plane; thresholds in imaging/ischaemia_rules.json")


@dataclass(frozen=True)
class VesselRow:
    """One searched arterial segment."""

    name: str
    side: str
    peak_hu: float | None
    mean_hu: float | None
    contralateral_mean_hu: float | None
    ratio: float | None
    length_mm: float | None
    dense: bool
    reason: str


@dataclass(frozen=True)
class DenseArteryFinding:
    """Hyperdense artery sign (suspected large-vessel occlusion)."""

    assessed: bool
    present: bool | None
    side: str | None
    segment: str | None
    reason: str
    segments: tuple[VesselRow, ...] = ()
    caution: str = ""
    method: str = "Tubular hyperdense segment on the registered M1/M2/basilar courses; rules in imaging/vessel_rules.json"


@dataclass(frozen=True)
class IchScoreFinding:
    """The imaging components of the ICH score (the GCS part stays with the clinician)."""

    volume_ge_30_ml: bool | None
    ivh_present: bool | None
    infratentorial_origin: bool | None
    age_ge_80: bool | None
    imaging_points: int | None
    note: str = "Imaging and age components only; add 2 points for GCS 3-4 or 1 point for GCS 5-12."
    source: str = ICH_SCORE_SOURCE


@dataclass(frozen=True)
class StrokeSummary:
    """Four answers for the stroke team, plus cautions for thrombolysis."""

    blood: str
    early_ischaemic_change: str
    dense_artery: str
    tissue_age: str
    cautions: tuple[str, ...] = ()


# -- builders ---------------------------------------------------------------------------------


def anatomy_finding(anatomy: "Anatomy | None", min_dice: float, reason: str = "") -> AnatomyFinding:
    """The registration record (None values when it did not run)."""
    if anatomy is None:
        return AnatomyFinding(registered=None, quality_dice=None, min_quality_dice=min_dice,
                              method=REGISTRATION_METHOD, reason=reason or "not computed")
    ok = bool(anatomy.registered)
    return AnatomyFinding(
        registered=ok, quality_dice=_r(anatomy.quality_dice, 3), min_quality_dice=min_dice,
        method=REGISTRATION_METHOD,
        reason="ok" if ok else f"registration quality {anatomy.quality_dice:.2f} < {min_dice:.2f}",
    )


def ischaemia_finding(result: "IschaemiaResult | None", reason: str) -> IschaemiaFinding:
    """The typed ischaemia block (not assessed, with ``reason``, when ``result`` is None or unassessed)."""
    if result is None or not result.assessed:
        return IschaemiaFinding(assessed=False, reason=result.reason if result is not None else reason)
    regions = tuple(
        RegionRow(
            code=r.code, side=r.side, name=r.name, voxel_count=int(r.voxel_count), mean_hu=_r(r.mean_hu, 1),
            mirror_mean_hu=_r(r.mirror_mean_hu, 1), difference_hu=_r(r.difference_hu, 2), ratio=_r(r.ratio, 4),
            nwu_percent=_r(r.nwu_percent, 1), noise_se_hu=_r(r.noise_se_hu, 2), z_score=_r(r.z_score, 2),
            affected=bool(r.affected), chronic=bool(r.chronic),
        )
        for r in result.regions
    )
    aspects = {side: int(v) for side, v in result.aspects.items()}
    affected = {side: tuple(codes) for side, codes in result.affected_regions.items()}
    return IschaemiaFinding(
        assessed=True, reason=result.reason or "ok", aspects=aspects, aspects_min=min(aspects.values()),
        affected_side=result.affected_side, affected_regions=affected,
        early_change=any(affected.values()), score_reliable=bool(result.score_reliable),
        reliability_note=result.reliability_note, nwu_percent=_r(result.nwu_percent, 1),
        onset_within_4_5h_likely=result.onset_within_4_5h_likely, nwu_cutoff_percent=result.nwu_cutoff_percent,
        nwu_source=result.nwu_source,
        hypodensity=tuple(TerritoryRow(h.territory, h.side, _r(h.volume_ml) or 0.0, _r(h.territory_volume_ml) or 0.0,
                                       _r(h.fraction, 3) or 0.0) for h in result.hypodensity),
        hypodense_volume_ml=_r(sum(h.volume_ml for h in result.hypodensity), 1),
        large_mca_hypodensity=bool(result.large_mca_hypodensity),
        chronic_lesions=tuple(ChronicRow(c.side, _r(c.volume_ml) or 0.0, _r(c.mean_hu, 1), tuple(c.regions))
                              for c in result.chronic),
        noise_hu=_r(result.noise_hu, 2), regions=regions,
    )


def dense_artery_finding(result: "DenseArteryResult | None", reason: str) -> DenseArteryFinding:
    """The typed dense-artery block."""
    if result is None or result.present is None:
        return DenseArteryFinding(assessed=False, present=None, side=None, segment=None,
                                  reason=result.reason if result is not None else reason)
    rows = tuple(
        VesselRow(name=v.name, side=v.side, peak_hu=_r(v.peak_hu, 1), mean_hu=_r(v.mean_hu, 1),
                  contralateral_mean_hu=_r(v.contralateral_mean_hu, 1), ratio=_r(v.ratio, 3),
                  length_mm=_r(v.length_mm, 1), dense=bool(v.dense), reason=v.reason)
        for v in result.segments
    )
    dense = [v for v in rows if v.dense]
    best = max(dense, key=lambda v: v.length_mm or 0.0) if dense else None
    return DenseArteryFinding(
        assessed=True, present=bool(result.present), side=result.side, segment=best.name if best else None,
        reason=result.reason, segments=rows, caution=result.caution,
    )


def ich_score_finding(measurements: "Measurements | None", age_years: float | None,
                      reported: bool) -> IchScoreFinding:
    """Imaging components of the ICH score from the haemorrhage measurements and the header age."""
    if measurements is None or not reported:
        return IchScoreFinding(None, None, None, None, None)
    ich = measurements.ich
    if not ich.present:
        return IchScoreFinding(False, False, False, None if age_years is None else age_years >= 80, None,
                               note="No intracranial haemorrhage found: the ICH score does not apply.")
    blood = [les for name in measurements.blood_classes for les in measurements.classes[name].lesions]
    largest = max(blood, key=lambda les: les.volume_ml)
    infratentorial: bool | None = None if largest.compartment == "unknown" else largest.compartment == "infratentorial"
    volume = ich.total_volume_ml >= 30.0
    ivh = bool(measurements.classes["IVH"].present)
    age = None if age_years is None else age_years >= 80
    points = int(volume) + int(ivh) + int(bool(infratentorial)) + int(bool(age))
    return IchScoreFinding(volume, ivh, infratentorial, age, points)


def stroke_summary(ich_present: bool | None, ich_volume_ml: float | None, isch: IschaemiaFinding,
                   dense: DenseArteryFinding) -> StrokeSummary:
    """The four answers in words, and the thrombolysis-relevant cautions."""
    if ich_present is None:
        blood = "not assessed"
    else:
        blood = f"yes, {ich_volume_ml or 0.0:.1f} mL" if ich_present else "no haemorrhage found"
    if not isch.assessed:
        early = f"not assessed ({isch.reason})"
        age = "not assessed"
    else:
        scores = ", ".join(f"{side} {isch.aspects[side]}" for side in ("left", "right")) if isch.aspects else ""
        if isch.early_change:
            regions = "; ".join(f"{side}: {', '.join(c)}" for side, c in isch.affected_regions.items() if c)
            early = f"yes, ASPECTS {scores} ({regions})"
            if not isch.score_reliable:
                early += f"; score unreliable: {isch.reliability_note}"
        else:
            early = f"none found, ASPECTS {scores}"
        if isch.nwu_percent is None:
            age = "no ischaemic tissue to date"
        else:
            within = "likely within 4.5 h" if isch.onset_within_4_5h_likely else "possibly older than 4.5 h"
            age = (f"net water uptake {isch.nwu_percent:.1f}% ({within}; cut-off {isch.nwu_cutoff_percent}%, "
                   f"an estimate)")
        hypo = [h for h in isch.hypodensity if h.volume_ml >= 1.0]
        if hypo:
            early += "; hypodense tissue: " + ", ".join(f"{h.territory} {h.side} {h.volume_ml:.1f} mL" for h in hypo)
        if isch.chronic_lesions:
            early += f"; {len(isch.chronic_lesions)} old infarct(s) not counted as acute"
    if not dense.assessed:
        artery = f"not assessed ({dense.reason})"
    elif dense.present:
        artery = f"yes, {dense.side} {dense.segment} (suspected large-vessel occlusion)"
    else:
        artery = "none found"
    if dense.assessed and dense.caution:
        artery += f" ({dense.caution})"
    cautions = []
    if ich_present:
        cautions.append("haemorrhage present: thrombolysis contraindicated")
    if isch.large_mca_hypodensity:
        cautions.append("hypodensity over one third of the MCA territory: thrombolysis caution")
    return StrokeSummary(blood=blood, early_ischaemic_change=early, dense_artery=artery, tissue_age=age,
                         cautions=tuple(cautions))


#: A blood component is intraventricular when at least this fraction of it lies in the
#: registered (dilated) ventricles. Measured on the geometric phantoms with the truth labels:
#: a 30 mL IVH cast 0.77 inside, a 30 mL basal-ganglia IPH beside the ventricle 0.26.
IVH_COMPONENT_FRACTION = 0.5


def relabel_ivh_by_location(labels: np.ndarray, class_names: Sequence[str], ventricles: np.ndarray,
                            voxel_ml: float, min_fraction: float = IVH_COMPONENT_FRACTION, *,
                            blood_classes: Sequence[str] = ("IPH", "EAH", "IVH")) -> tuple[np.ndarray, float]:
    """Blood components that lie mostly in the registered ventricles become IVH.

    BLAST-CT calls a large intraventricular cast "IPH" (card limitation). Each connected
    component of IPH/EAH voxels (26-connectivity) with at least ``min_fraction`` of its
    voxels inside ``ventricles`` (the lobar atlas 'Ventricle', registered and dilated by the
    caller) is relabelled IVH as a whole; a parenchymal bleed that only touches a ventricle
    keeps its label (ventricular extension of a smaller part is not separated).
    ``blood_classes``: the card's blood classes (``card.class_names_by_role("blood")``).
    Returns the new label map and the volume moved (mL).
    """
    from scipy import ndimage

    if "IVH" not in class_names or not ventricles.any():
        return labels, 0.0
    ivh = class_names.index("IVH")
    others = [class_names.index(c) for c in blood_classes if c != "IVH" and c in class_names]
    blood = np.isin(labels, others)
    if not blood.any():
        return labels, 0.0
    comp, n = ndimage.label(blood, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    inside = np.bincount(comp[ventricles], minlength=n + 1)
    move_ids = np.nonzero((sizes > 0) & (inside >= min_fraction * np.maximum(sizes, 1)))[0]
    move_ids = move_ids[move_ids > 0]
    if move_ids.size == 0:
        return labels, 0.0
    move = np.isin(comp, move_ids)
    out = labels.copy()
    out[move] = ivh
    return out, float(np.count_nonzero(move) * voxel_ml)
