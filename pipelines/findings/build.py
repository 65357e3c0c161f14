"""Assembly of the findings record from the measurement objects of ``imaging`` and the model.

:func:`build_findings` takes the typed results of each stage (volume, segmentation,
measurements, brain, midline, QC, the stroke analyses, the model card) and returns a
:class:`ictus.pipelines.findings.record.Findings` with its priority. Pure: no I/O, no printing.

When QC makes the study indeterminate (no brain, contrast...) or no segmentation is
available, the clinical values (presence, volumes, probability, shift) are ``None`` and
``findings_reported`` is false: nothing is invented for a study that cannot be read.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

from ictus.imaging.anatomy import MIN_REGISTRATION_DICE, Anatomy
from ictus.imaging.brain import BrainResult
from ictus.imaging.ischaemia import IschaemiaResult
from ictus.imaging.measure import ClassMeasurement, Measurements
from ictus.imaging.midline import MidlineResult
from ictus.imaging.qc import QC_FLAGS, QcReport
from ictus.imaging.vessels import DenseArteryResult
from ictus.imaging.volume import Volume
from ictus.models.registry import ModelCard
from ictus.models.types import Segmentation
from ictus.pipelines.findings.priority import Priority, evaluate_priority
from ictus.pipelines.findings.record import (
    SCHEMA_VERSION,
    SUBTYPES,
    Abc2Finding,
    BrainFinding,
    ClassFinding,
    Findings,
    IchFinding,
    IdealPlane,
    InferenceRuntime,
    LesionFinding,
    LocationFinding,
    MemberProvenance,
    MidlineFinding,
    ModelProvenance,
    Provenance,
    QcDetail,
    QcFinding,
    SeriesUsed,
)
from ictus.pipelines.findings.stroke import (
    anatomy_finding,
    dense_artery_finding,
    ich_score_finding,
    ischaemia_finding,
    stroke_summary,
)

log = logging.getLogger(__name__)

INDETERMINATE_REASON = "QC: study indeterminate"


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def _r3(point: tuple[float, float, float], digits: int = 1) -> tuple[float, float, float]:
    x, y, z = point
    return round(x, digits), round(y, digits), round(z, digits)


# -- provenance ------------------------------------------------------------------------------


def _members_used(segmentation: Segmentation | None) -> tuple[str, ...]:
    # The runtime names members by their ONNX files ("model_1.onnx"); cards by name ("model_1").
    used = segmentation.members_used if segmentation is not None else ()
    return tuple(Path(str(u)).stem if str(u).endswith(".onnx") else str(u) for u in used)


def _card_entry(card: ModelCard | Mapping[str, Any] | None) -> tuple[str, str, str | None, list[MemberProvenance]]:
    """(id, version, card sha256, members) of a card or a card mapping."""
    if card is None:
        return "", "", None, []
    if isinstance(card, Mapping):
        members = [MemberProvenance(str(m.get("name")), m.get("sha256"), m.get("onnx_sha256") or None)
                   for m in card.get("members", ()) or ()]
        return str(card.get("id", "") or ""), str(card.get("version", "") or ""), card.get("sha256"), members
    return card.id, card.version, None, [MemberProvenance(m.name, m.sha256) for m in card.members]


def model_provenance(card: ModelCard | Mapping[str, Any] | None = None,
                     segmentation: Segmentation | None = None) -> list[ModelProvenance]:
    """The models that ran (id, version, members with sha256) from a model card
    (:class:`ictus.models.registry.ModelCard` or a mapping) and the segmentation that ran."""
    if card is None and segmentation is None:
        return []
    used = _members_used(segmentation)
    card_id, version, sha, members = _card_entry(card)
    members = [m for m in members if not used or m.name in used]
    if not sha and len(members) == 1 and members[0].sha256:
        sha = members[0].sha256
    return [ModelProvenance(
        id=card_id or (segmentation.model_id if segmentation is not None else ""),
        version=version or (segmentation.model_version if segmentation is not None else ""),
        members_used=used,
        members=tuple(members),
        sha256=sha or None,
        runtime=_inference_runtime(segmentation),
    )]


def _inference_runtime(segmentation: Segmentation | None) -> InferenceRuntime | None:
    """The backend that ran the members, from the runtime's info (None for a segmentation made elsewhere)."""
    info = segmentation.info if segmentation is not None else {}
    if not info.get("backend"):
        return None
    return InferenceRuntime(backend=str(info["backend"]), version=str(info.get("backend_version", "")),
                            device=str(info.get("device", "")), precision=str(info.get("precision", "fp32")))


def _ictus_version() -> str:
    try:
        return version("ictus")
    except PackageNotFoundError:  # not installed (running from a checkout)
        return "0+unknown"


def _provenance(volume: Volume, card: ModelCard | Mapping[str, Any] | None, segmentation: Segmentation | None,
                extra: Mapping[str, Any] | None) -> Provenance:
    size = volume.size
    spacing = volume.spacing_mm
    series = SeriesUsed(
        study_instance_uid=volume.study_instance_uid,
        series_instance_uid=volume.series_instance_uid,
        frame_of_reference_uid=volume.frame_of_reference_uid,
        instance_count=len(volume.sop_instance_uids),
        size_xyz=(int(size[0]), int(size[1]), int(size[2])),
        spacing_mm=(round(spacing[0], 4), round(spacing[1], 4), round(spacing[2], 4)),
    )
    return Provenance(ictus_version=_ictus_version(), models=tuple(model_provenance(card, segmentation)),
                      series_used=series, extra=dict(extra or {}))


# -- haemorrhage -----------------------------------------------------------------------------


def _class_finding(cm: ClassMeasurement | None, reported: bool) -> ClassFinding:
    if cm is None or not reported:
        return ClassFinding(present=None, volume_ml=None)
    lesions = tuple(
        LesionFinding(
            volume_ml=round(float(l.volume_ml), 2), hemisphere=l.hemisphere, region=l.region,
            centroid_lps_mm=_r3(l.centroid_lps_mm), compartment=l.compartment,
            mean_probability=_r(l.mean_probability, 3), mean_agreement=_r(l.mean_agreement, 3),
        )
        for l in cm.lesions
    )
    return ClassFinding(
        present=bool(cm.present), volume_ml=_r(cm.volume_ml), lesion_count=int(cm.lesion_count),
        largest_lesion_ml=_r(cm.largest_lesion_ml), discarded_volume_ml=_r(cm.discarded_volume_ml), lesions=lesions,
    )


def _ich_finding(measurements: Measurements | None, reported: bool) -> IchFinding:
    classes = measurements.classes if measurements is not None else {}
    # blood subtypes: the card's "blood" classes (carried by the measurements), else the schema's
    names = measurements.blood_classes if measurements is not None else SUBTYPES
    subtypes = {name: _class_finding(classes.get(name), reported) for name in names}
    if not reported or measurements is None:
        return IchFinding(present=None, probability=None, total_volume_ml=None, subtypes=subtypes)
    s, abc = measurements.ich, measurements.abc2
    return IchFinding(
        present=bool(s.present), probability=_r(s.probability, 3), total_volume_ml=_r(s.total_volume_ml),
        confidence=_r(s.confidence, 3), lesion_count=int(s.lesion_count), subtypes=subtypes,
        abc2=None if abc is None else Abc2Finding(
            a_mm=_r(abc.a_mm, 1), b_mm=_r(abc.b_mm, 1), c_mm=_r(abc.c_mm, 1), volume_ml=_r(abc.volume_ml),
            segmented_volume_ml=_r(abc.segmented_volume_ml), slices_counted=abc.slices_counted,
        ),
    )


def _min_lesion_ml(measurements: Measurements | None) -> float | dict[str, float] | None:
    floors = {name: cm.min_lesion_ml for name, cm in (measurements.classes if measurements else {}).items()}
    if not floors:
        return None
    return next(iter(floors.values())) if len(set(floors.values())) == 1 else floors


# -- QC, brain, midline ----------------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    """What QC and the stages that ran allow to be reported."""

    qc_indeterminate: bool
    no_brain: bool
    no_model: bool

    @property
    def readable(self) -> bool:
        """Neither QC nor the brain search made the study indeterminate."""
        return not self.qc_indeterminate and not self.no_brain


def _state(measurements: Measurements | None, brain: BrainResult | None, qc: QcReport | None) -> _State:
    qc_indeterminate = qc is not None and qc.indeterminate
    no_brain = brain is not None and not brain.brain_found
    return _State(qc_indeterminate=qc_indeterminate, no_brain=no_brain,
                  no_model=measurements is None and not no_brain and not qc_indeterminate)


def _qc_finding(qc: QcReport | None, brain: BrainResult | None, anatomy: Anatomy | None, state: _State) -> QcFinding:
    details = [QcDetail(f.name, f.severity, f.description, f.detail) for f in (qc.flags if qc is not None else ())]
    verdict = qc.verdict if qc is not None else "ok"
    if state.no_brain:
        verdict = "indeterminate"
        if "no_brain_found" not in {d.name for d in details}:
            details.append(QcDetail("no_brain_found", "indeterminate", "No brain inside a skull was found.",
                                    brain.reason if brain is not None else ""))
    if state.no_model:
        verdict = "indeterminate"  # no model output: nothing can be said about haemorrhage
        details.append(QcDetail("no_segmentation", "indeterminate",
                                "No model output was available for this study.", ""))
    if anatomy is not None and not anatomy.registered and "registration_failed" not in {d.name for d in details}:
        spec = QC_FLAGS["registration_failed"]
        details.append(QcDetail(spec.name, spec.severity, spec.description,
                                f"template brain Dice {anatomy.quality_dice:.2f}"))
        if verdict == "ok":
            verdict = "warning"
    measurements = dict(qc.measurements) if qc is not None else {}
    return QcFinding(
        flags=tuple(d.name for d in details), verdict=verdict, details=tuple(details),
        measurements={k: (_r(v, 2) if isinstance(v, float) else v) for k, v in measurements.items()},
    )


def _xyz(values: Any, ndigits: int) -> tuple[float, float, float]:
    x, y, z = (round(float(v), ndigits) for v in values)
    return (x, y, z)


def _midline_block(midline: MidlineResult | None) -> MidlineFinding:
    if midline is None:
        return MidlineFinding(computed=False, measured=False, reason="not computed")
    plane = midline.ideal_plane
    return MidlineFinding(
        computed=True,
        measured=midline.shift_mm is not None,
        signed_shift_mm=_r(midline.shift_mm, 1),
        method=midline.method,
        confidence=_r(midline.confidence, 3),
        reason=midline.reason,
        ideal_plane=None if plane is None else IdealPlane(_xyz(plane.point_mm, 2), _xyz(plane.normal, 4)),
    )


def _brain_block(brain: BrainResult | None) -> BrainFinding:
    if brain is None:
        return BrainFinding(found=None, volume_ml=None, reason="not computed")
    return BrainFinding(found=bool(brain.brain_found), volume_ml=_r(brain.brain_volume_ml, 1),
                        intracranial_volume_ml=_r(brain.intracranial_volume_ml, 1), reason=brain.reason)


def _location_block(measurements: Measurements | None, ivh_relabelled_ml: float | None) -> LocationFinding:
    return LocationFinding(
        hemisphere_reference="ideal midline (skull symmetry plane)",
        region_status=measurements.region_status if measurements is not None else "not computed",
        atlas="BLAST-CT localisation atlas through the registered CT template (affine; approximate)",
        ivh_relabelled_ml=_r(ivh_relabelled_ml),
        ivh_method="model blood inside the registered ventricles (dilated 2 mm) is counted as IVH",
    )


# -- assembly --------------------------------------------------------------------------------


def build_findings(
    volume: Volume,
    segmentation: Segmentation | None = None,
    *,
    measurements: Measurements | None = None,
    brain: BrainResult | None = None,
    midline: MidlineResult | None = None,
    qc: QcReport | None = None,
    card_info: ModelCard | Mapping[str, Any] | None = None,
    timings_s: Mapping[str, float] | None = None,
    rules: Mapping[str, Any] | None = None,
    extra_provenance: Mapping[str, Any] | None = None,
    anatomy: Anatomy | None = None,
    ischaemia: IschaemiaResult | None = None,
    dense_artery: DenseArteryResult | None = None,
    stroke_reason: str = "not computed",
    min_registration_dice: float | None = None,
    age_years: float | None = None,
    ivh_relabelled_ml: float | None = None,
) -> Findings:
    """Assemble the findings of one study, priority included.

    - ``volume``: the analysed volume (UIDs, series used); ``segmentation``: None if the model did not run;
    - ``measurements``: :func:`ictus.imaging.measure.measure_labels` of the segmentation;
    - ``brain``, ``midline``, ``qc``: the brain mask, midline and QC results;
    - ``card_info``: the model card (or a mapping with id, version, members);
    - ``rules``: priority rules (default: ``pipelines/findings/priority_rules.json``);
    - ``anatomy``, ``ischaemia``, ``dense_artery``: the registered template and the stroke analyses
      (None when not run; ``stroke_reason`` says why).
    """
    state = _state(measurements, brain, qc)
    reported = measurements is not None and state.readable
    ich = _ich_finding(measurements, reported)
    shift = direction = None
    if midline is not None and midline.shift_mm is not None and state.readable:
        shift, direction = _r(abs(midline.shift_mm), 1), midline.direction
    min_dice = MIN_REGISTRATION_DICE if min_registration_dice is None else min_registration_dice
    stroke_why = stroke_reason if state.readable else INDETERMINATE_REASON
    isch = ischaemia_finding(ischaemia if state.readable else None, stroke_why)
    dense = dense_artery_finding(dense_artery if state.readable else None, stroke_why)
    draft = Findings(
        schema_version=SCHEMA_VERSION,
        study_instance_uid=str(volume.study_instance_uid or ""),
        series_instance_uid=str(volume.series_instance_uid or ""),
        priority=Priority.INDETERMINATE,
        priority_reasons=(),
        findings_reported=reported,
        ich=ich,
        oedema=_class_finding(measurements.classes.get("oedema") if measurements else None, reported),
        midline_shift_mm=shift,
        midline_shift_direction=direction,
        midline=_midline_block(midline),
        brain=_brain_block(brain),
        qc=_qc_finding(qc, brain, anatomy, state),
        location=_location_block(measurements, ivh_relabelled_ml),
        min_lesion_ml=_min_lesion_ml(measurements),
        provenance=_provenance(volume, card_info, segmentation, extra_provenance),
        timings_s={k: round(float(v), 3) for k, v in (timings_s or {}).items()},
        ischaemia=isch,
        dense_artery=dense,
        anatomy=anatomy_finding(anatomy, min_dice, stroke_reason),
        ich_score=ich_score_finding(measurements, age_years, reported),
        stroke_summary=stroke_summary(ich.present, ich.total_volume_ml, isch, dense),
    )
    # The rules are dotted paths into findings.json: they read its dict form.
    priority, reasons = evaluate_priority(draft.to_dict(), rules)
    return dataclasses.replace(draft, priority=priority, priority_reasons=reasons)
