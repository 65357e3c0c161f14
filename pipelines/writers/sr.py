"""DICOM Comprehensive 3D SR, TID 1500 Measurement Report (highdicom), of the findings.

Content (observer: the device, i.e. Ictus with the model from the card):

- one measurement group per lesion class: its volume (mL, UCUM ``ml``) and a
  present/absent evaluation; groups of classes that are in the SEG are
  TID 1411 volumetric groups that reference their SEG segment, the others
  TID 1501 groups without a region;
- an intracranial haemorrhage group: total blood volume, the model's
  probability, and the qualitative finding "intracranial hemorrhage:
  present/absent";
- a midline group: the midline shift (mm) when it could be measured;
- a "Qualitative Evaluations" container (TID 1500 row 12) with the priority,
  the midline direction, the QC flags and the triage-aid statement as text.

Stroke section (codes in ``stroke_codes.json``; algorithm "Ictus stroke template analysis"):

- an ASPECTS group: ASPECTS per side (NUM, ``{score}``, finding site brain with
  laterality), net water uptake (``%``), the affected side (laterality);
- one group per ASPECTS region (all 20): mean HU and mirror-region mean HU
  (``[hnsf'U]``), difference (HU), ratio (``{ratio}``), NWU (``%``), early
  ischaemic change present/absent; an affected region that is in the SEG is a
  TID 1411 group referencing its segment;
- a hyperdense-artery group: present/absent, and for the dense segment peak and
  mean HU, ratio to the contralateral artery and length (``mm``), referencing
  the SEG's artery segment;
- a template-registration group (Dice overlap) and, as text, the NWU onset
  estimate, the four stroke answers, the ICH-score points and "not assessed"
  with the reason when the anatomy was not registered.

Concepts with no standard code use the private scheme ``99ICTUS`` (declared
in the Coding Scheme Identification Sequence). Text is English: the SR is for
machines and PACS; people read the localised report.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ictus.imaging.errors import OutputError
from ictus.models.registry import ModelCard
from ictus.pipelines.findings.record import Findings
from ictus.pipelines.findings.stroke import DenseArteryFinding, IschaemiaFinding
from ictus.pipelines.writers import common
from ictus.pipelines.writers import stroke as stroke_out
from ictus.pipelines.writers.seg import SegmentInfo

if TYPE_CHECKING:
    from ictus.pipelines.triage import TriageResult

log = logging.getLogger(__name__)

SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "ICTUS measurement report"
PRIVATE_SCHEME = "99ICTUS"

_ML = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
_MM = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
_UNITY = hd.sr.CodedConcept("1", "UCUM", "no units")
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_ICH = hd.sr.CodedConcept("1386000", "SCT", "Intracranial hemorrhage")
_MIDLINE = hd.sr.CodedConcept("261129000", "SCT", "Midline")
_MIDLINE_SHIFT = hd.sr.CodedConcept("MLS", PRIVATE_SCHEME, "Midline shift")
_MIDLINE_DIRECTION = hd.sr.CodedConcept("MLSDIR", PRIVATE_SCHEME, "Midline shift direction")
_ICH_PROBABILITY = hd.sr.CodedConcept("ICHPROB", PRIVATE_SCHEME, "Probability of intracranial hemorrhage")
_QC_FLAG = hd.sr.CodedConcept("QCFLAG", PRIVATE_SCHEME, "Input quality control flag")
_PRIORITY = hd.sr.CodedConcept("260870009", "SCT", "Priority")
_HEAD_CT = hd.sr.CodedConcept("24725-4", "LN", "CT Head")


def _coded(code: Any) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.code_value, code.scheme_designator, code.code_meaning)


def device_uid(card: Any) -> str:
    """A stable Device Observer UID for Ictus with this model (same model, same UID)."""
    return generate_uid(entropy_srcs=["ictus", common.ictus_version(), str(card.ref) if card is not None else ""])


def _class_volume_ml(findings: Findings, name: str, role: str = "blood") -> float | None:
    sub = findings.oedema if role == "oedema" else findings.ich.subtypes.get(name)
    value = sub.volume_ml if sub is not None else None
    return None if value is None else float(value)


def _class_present(findings: Findings, name: str, volume_ml: float | None) -> bool | None:
    sub = findings.ich.subtypes.get(name)
    if sub is not None and sub.present is not None:
        return bool(sub.present)
    if volume_ml is None:
        return None
    return volume_ml > 0


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _observer(card: ModelCard | None) -> hd.sr.ObservationContext:
    """The observation context: the device, i.e. Ictus with this model."""
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device_uid(card),
                name="Ictus",
                manufacturer_name=common.MANUFACTURER,
                model_name=f"{common.MODEL_NAME} {common.ictus_version()} / {card.ref if card else '-'}"[:64],
            ),
        )
    )


def _class_groups(findings: Findings, classes: Sequence[Any], algorithm: Any, seg: Dataset | None,
                  segments: Sequence[SegmentInfo], source_series_uid: str) -> list[Any]:
    """One group per lesion class (volume, present/absent); volumetric when the class is in the SEG."""
    by_label = {s.label_value: s for s in segments if s.kind == "lesion"}
    groups: list[Any] = []
    for cls in classes:
        volume_ml = _class_volume_ml(findings, cls.name, cls.role)
        present = _class_present(findings, cls.name, volume_ml)
        if volume_ml is None and present is None:
            continue  # not assessed (e.g. indeterminate study)
        finding = cls.codes.get("finding") or cls.codes.get("type")
        measurements = []
        if volume_ml is not None:
            measurements.append(
                hd.sr.Measurement(name=codes.SCT.Volume, value=round(volume_ml, 2), unit=_ML, algorithm_id=algorithm)
            )
        evaluations = []
        if finding is not None and present is not None:
            evaluations.append(
                hd.sr.QualitativeEvaluation(_coded(finding), codes.SCT.Present if present else codes.SCT.Absent)
            )
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{cls.name} (ictus)")
        info = by_label.get(cls.value)
        region = cls.codes.get("anatomic_region")
        common_args = dict(
            tracking_identifier=tracking,
            finding_type=_coded(cls.codes["type"]) if "type" in cls.codes else None,
            finding_sites=[hd.sr.FindingSite(anatomic_location=_coded(region))] if region is not None else None,
            algorithm_id=algorithm,
            measurements=measurements or None,
            qualitative_evaluations=evaluations or None,
        )
        if seg is not None and info is not None:
            groups.append(
                hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    referenced_segment=hd.sr.ReferencedSegment(
                        sop_class_uid=seg.SOPClassUID,
                        sop_instance_uid=seg.SOPInstanceUID,
                        segment_number=info.segment_number,
                        source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid),
                    ),
                    **common_args,
                )
            )
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(**common_args))
    return groups


def _ich_and_midline_groups(findings: Findings, algorithm: Any) -> list[Any]:
    """The intracranial haemorrhage group (total volume, probability, present) and the midline group."""
    ich = findings.ich
    ich_measurements = []
    if ich.total_volume_ml is not None:
        ich_measurements.append(
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(float(ich.total_volume_ml), 2), unit=_ML,
                              algorithm_id=algorithm)
        )
    if ich.probability is not None:
        ich_measurements.append(
            hd.sr.Measurement(name=_ICH_PROBABILITY, value=round(float(ich.probability), 3), unit=_UNITY,
                              algorithm_id=algorithm)
        )
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="ICH (ictus)"),
            finding_type=_ICH,
            algorithm_id=algorithm,
            measurements=ich_measurements or None,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(_ICH, codes.SCT.Present if ich.present else codes.SCT.Absent)
            ] if ich.present is not None else None,
        )
    ]
    shift = findings.midline_shift_mm
    if shift is not None:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Midline (ictus)"),
                finding_type=_MIDLINE,
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(name=_MIDLINE_SHIFT, value=round(abs(float(shift)), 2), unit=_MM,
                                      algorithm_id=algorithm)
                ],
            )
        )
    return groups


def _qualitative_container(findings: Findings, stroke_texts: Sequence[hd.sr.TextContentItem],
                           messages: Mapping[str, str]) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: Qualitative Evaluations (TEXT), which highdicom does not build itself."""
    container = hd.sr.ContainerContentItem(
        name=_QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence()
    container.ContentSequence.append(_text(_PRIORITY, str(findings.priority)))
    direction = findings.midline_shift_direction
    container.ContentSequence.append(
        _text(_MIDLINE_DIRECTION, str(direction) if direction is not None else messages["not_measured"])
    )
    for flag in findings.qc.flags or [messages["qc_none"]]:
        container.ContentSequence.append(_text(_QC_FLAG, str(flag)))
    for item in stroke_texts:
        container.ContentSequence.append(item)
    container.ContentSequence.append(_text(codes.DCM.Comment, messages["disclaimer"]))
    return container


def build_sr(
    result: TriageResult,
    source_datasets: Sequence[Dataset],
    seg: Dataset | None = None,
    segments: Sequence[SegmentInfo] = (),
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 measurement report of ``result``; groups reference ``seg``'s segments when given."""
    findings = result.findings
    card = common.card_of(result, required=False)  # None: indeterminate before any model ran
    classes = common.lesion_classes(result) if card is not None else ()
    algorithm = (hd.sr.AlgorithmIdentification(name=str(card.name)[:64], version=str(card.version))
                 if card is not None else None)
    source_series_uid = str(source_datasets[0].SeriesInstanceUID) if source_datasets else result.volume.series_instance_uid
    groups = _class_groups(findings, classes, algorithm, seg, segments, source_series_uid)
    groups += _ich_and_midline_groups(findings, algorithm)
    stroke_groups, stroke_texts = _stroke_content(findings, seg, segments, source_series_uid)
    groups.extend(stroke_groups)

    report = hd.sr.MeasurementReport(
        observation_context=_observer(card),
        procedure_reported=_HEAD_CT,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_qualitative_container(findings, stroke_texts, common.load_messages("en")))
    evidence = list(source_datasets) + ([seg] if seg is not None else [])
    if not evidence:
        raise OutputError("no source datasets to reference; the SR needs the source series")
    try:
        return hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=common.MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description=SERIES_DESCRIPTION,
            coding_schemes=[
                hd.coding_schemes.CodingSchemeIdentificationItem(
                    designator=PRIVATE_SCHEME,
                    name="Ictus private concepts",
                    responsible_organization="Ictus project",
                )
            ],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"DICOM SR could not be built ({exc}); report this with the study") from exc


# -- stroke -------------------------------------------------------------------------------------

_SIDES = ("left", "right")


def _num(name: Any, value: Any, unit: str, algorithm: Any, **kwargs: Any) -> hd.sr.Measurement | None:
    """A NUM measurement, or None when the value is missing."""
    if value is None:
        return None
    return hd.sr.Measurement(name=name, value=float(value), unit=stroke_out.unit(unit), algorithm_id=algorithm,
                             **kwargs)


def _sites(codes_: Sequence[Any], side: str | None) -> list[hd.sr.FindingSite]:
    lat = stroke_out.laterality(side)
    return [hd.sr.FindingSite(anatomic_location=c, laterality=lat) for c in codes_]


def _present(flag: bool) -> Any:
    return codes.SCT.Present if flag else codes.SCT.Absent


def stroke_algorithm_id() -> hd.sr.AlgorithmIdentification:
    """The algorithm of the template-based stroke measurements."""
    return hd.sr.AlgorithmIdentification(name="Ictus stroke template analysis", version=common.ictus_version())


class _StrokeGroups:
    """Builds the stroke measurement groups, referencing the SEG's stroke segments when given."""

    def __init__(self, seg: Dataset | None, segments: Sequence[SegmentInfo], source_series_uid: str) -> None:
        self.seg, self.source_series_uid = seg, source_series_uid
        self.by_key = {(s.kind, s.key): s for s in segments if s.kind != "lesion"}
        self.algorithm = stroke_algorithm_id()
        self.table = stroke_out.load_codes()["segment"]

    def referenced(self, kind: str, key: str) -> hd.sr.ReferencedSegment | None:
        info = self.by_key.get((kind, key))
        if self.seg is None or info is None:
            return None
        return hd.sr.ReferencedSegment(sop_class_uid=self.seg.SOPClassUID, sop_instance_uid=self.seg.SOPInstanceUID,
                                       segment_number=info.segment_number,
                                       source_series=hd.sr.SourceSeriesForSegmentation(self.source_series_uid))

    def group(self, tracking: str, ref: hd.sr.ReferencedSegment | None, **kwargs: Any) -> Any:
        args = dict(tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=tracking[:64]),
                    algorithm_id=self.algorithm, **kwargs)
        if ref is not None:
            return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=ref, **args)
        return hd.sr.MeasurementsAndQualitativeEvaluations(**args)


def _ischaemia_content(isch: IschaemiaFinding, g: _StrokeGroups) -> tuple[list[Any], list[hd.sr.TextContentItem]]:
    """The ASPECTS group, one group per region, and the NWU / reliability texts of an assessed study."""
    c, algorithm = stroke_out.sr_concept, g.algorithm
    isch_type = stroke_out.coded(g.table["ischaemia_type"])
    measurements = [_num(c("aspects"), (isch.aspects or {}).get(side), "score", algorithm,
                         finding_sites=_sites([c("brain")], side)) for side in _SIDES]
    measurements.append(_num(c("nwu"), isch.nwu_percent, "percent", algorithm))
    evaluations = []
    if isch.affected_side in _SIDES:
        side_code = stroke_out.laterality(isch.affected_side)
        assert side_code is not None  # the code table has left and right
        evaluations.append(hd.sr.QualitativeEvaluation(c("laterality"), side_code))
    evaluations.append(hd.sr.QualitativeEvaluation(c("early_change"), _present(bool(isch.early_change))))
    groups = [g.group("ASPECTS (ictus)", None, finding_type=isch_type,
                      measurements=[m for m in measurements if m is not None], qualitative_evaluations=evaluations)]
    for row in isch.regions:
        code, side = str(row.code), str(row.side)
        ms = [
            _num(c("attenuation"), row.mean_hu, "hu", algorithm, derivation=c("mean")),
            _num(c("mirror_mean"), row.mirror_mean_hu, "hu", algorithm),
            _num(c("difference"), row.difference_hu, "hu", algorithm),
            _num(c("ratio"), row.ratio, "ratio", algorithm),
            _num(c("nwu"), row.nwu_percent, "percent", algorithm),
        ]
        evals = [hd.sr.QualitativeEvaluation(c("early_change"), _present(bool(row.affected)))]
        if row.chronic:
            evals.append(hd.sr.QualitativeEvaluation(c("chronic"), codes.SCT.Present))
        groups.append(g.group(
            f"ASPECTS {code} {side} (ictus)", g.referenced("aspects", f"{code}_{side}"), finding_type=isch_type,
            finding_sites=_sites(stroke_out.region_codes(code), side),
            measurements=[m for m in ms if m is not None] or None, qualitative_evaluations=evals))
    texts = []
    if isch.nwu_percent is not None:
        within = "likely within 4.5 h of onset" if isch.onset_within_4_5h_likely else "possibly older than 4.5 h"
        texts.append(_text(c("onset"), (
            f"estimate: net water uptake {float(isch.nwu_percent):.1f}% ({within}; cut-off "
            f"{isch.nwu_cutoff_percent}%); source: {isch.nwu_source or '-'}. {isch.nwu_note or ''}").strip()))
    if isch.score_reliable is False and isch.reliability_note:
        texts.append(_text(c("aspects"), f"score unreliable: {isch.reliability_note}"))
    return groups, texts


def _dense_artery_group(dense: DenseArteryFinding, g: _StrokeGroups) -> Any:
    """The hyperdense-artery group (measurements of the dense segment, referencing its SEG segment)."""
    c, algorithm = stroke_out.sr_concept, g.algorithm
    present = bool(dense.present)
    side, segment = dense.side, dense.segment
    row = next((r for r in dense.segments if r.dense and r.name == segment and r.side == side), None)
    ms = []
    if row is not None:
        ms = [
            _num(c("attenuation"), row.peak_hu, "hu", algorithm, derivation=c("maximum")),
            _num(c("attenuation"), row.mean_hu, "hu", algorithm, derivation=c("mean")),
            _num(c("contralateral_ratio"), row.ratio, "ratio", algorithm),
            _num(c("length"), row.length_mm, "mm", algorithm),
        ]
    return g.group(
        "Hyperdense artery (ictus)", g.referenced("dense_artery", f"{segment}_{side}") if present else None,
        finding_type=stroke_out.coded(g.table["dense_artery_type"]),
        finding_sites=_sites([stroke_out.vessel_code(segment)], side) if present else None,
        measurements=[m for m in ms if m is not None] or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(c("dense_artery"), _present(present))])


def _stroke_texts(findings: Findings) -> list[hd.sr.TextContentItem]:
    """The registration state, the four stroke answers, the cautions and the ICH-score points as text."""
    c = stroke_out.sr_concept
    texts = []
    anatomy, summary, ich_score = findings.anatomy, findings.stroke_summary, findings.ich_score
    if anatomy is not None:
        state = {True: "registered", False: "failed", None: "not run"}[anatomy.registered]
        texts.append(_text(c("registration"), (
            f"{state}; overlap {anatomy.quality_dice} (minimum {anatomy.min_quality_dice}); "
            f"{anatomy.method or ''}; {anatomy.reason or ''}").strip("; ")))
    if summary is not None:
        answers = (("blood", summary.blood), ("early ischaemic change", summary.early_ischaemic_change),
                   ("dense artery", summary.dense_artery), ("tissue age", summary.tissue_age))
        texts += [_text(c("stroke_answer"), f"{label}: {answer}") for label, answer in answers if answer]
        texts += [_text(c("stroke_answer"), f"caution: {caution}") for caution in summary.cautions]
    if ich_score is not None and ich_score.imaging_points is not None:
        texts.append(_text(c("ich_score"), f"{ich_score.imaging_points} points ({ich_score.note or ''})"))
    return texts


def _stroke_content(findings: Findings, seg: Dataset | None, segments: Sequence[SegmentInfo],
                    source_series_uid: str) -> tuple[list[Any], list[hd.sr.TextContentItem]]:
    """Measurement groups and text items of the stroke findings (see the module docstring)."""
    isch, dense, anatomy = findings.ischaemia, findings.dense_artery, findings.anatomy
    if isch is None and dense is None and anatomy is None and findings.stroke_summary is None:
        return [], []  # a findings record from before the stroke analysis
    c = stroke_out.sr_concept
    g = _StrokeGroups(seg, segments, source_series_uid)
    groups: list[Any] = []
    texts: list[hd.sr.TextContentItem] = []
    if isch is not None and isch.assessed:
        groups, texts = _ischaemia_content(isch, g)
    else:
        texts.append(_text(c("aspects"), f"not assessed ({(isch.reason if isch else '') or 'not computed'})"))
    if dense is not None and dense.assessed:
        groups.append(_dense_artery_group(dense, g))
    else:
        texts.append(_text(c("dense_artery"), f"not assessed ({(dense.reason if dense else '') or 'not computed'})"))
    if anatomy is not None and anatomy.quality_dice is not None:
        groups.append(g.group("Template registration (ictus)", None, measurements=[
            _num(c("registration_dice"), anatomy.quality_dice, "unity", g.algorithm)]))
    return groups, texts + _stroke_texts(findings)
