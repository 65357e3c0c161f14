"""The findings of one study: a frozen, typed record and its ``findings.json`` form.

:func:`build_findings` assembles the measurement objects of ``imaging``
(brain, measurements, midline, QC) and the model's segmentation into a
:class:`Findings`; :func:`findings_to_dict` gives the JSON structure published
in ``pipelines/schemas/findings.schema.json`` (:data:`SCHEMA_VERSION`). Both
are pure: no I/O, no printing.

Fixed keys (external tools read them): ``schema_version``,
``study_instance_uid``, ``series_instance_uid``, ``priority``;
``ich.present``, ``ich.probability``, ``ich.total_volume_ml``;
``ich.subtypes.IPH|EAH|IVH.present|volume_ml``; ``oedema.volume_ml``;
``midline_shift_mm``, ``midline_shift_direction``; ``qc.flags``;
``provenance``; ``timings_s``.

When QC makes the study indeterminate (no brain, contrast...) or no
segmentation is available, the clinical values (presence, volumes,
probability, shift) are ``null`` and ``findings_reported`` is false: nothing is
invented for a study that cannot be read. No patient name or ID is ever
included.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ictus.pipelines.findings.priority import evaluate_priority
from ictus.pipelines.findings.stroke import (
    AnatomyFinding,
    DenseArteryFinding,
    IchScoreFinding,
    IschaemiaFinding,
    StrokeSummary,
    anatomy_finding,
    dense_artery_finding,
    ich_score_finding,
    ischaemia_finding,
    stroke_summary,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1.1.0"
SCHEMA_PATH = Path(__file__).with_name("findings.schema.json")
DISCLAIMER = (
    "Ictus is a triage aid, not a diagnostic device. Findings are automated estimates that must be "
    "confirmed by a qualified reader on the original images."
)
SUBTYPES = ("IPH", "EAH", "IVH")


@dataclass(frozen=True)
class LesionFinding:
    """One lesion as reported."""

    volume_ml: float
    hemisphere: str
    region: str
    centroid_lps_mm: tuple[float, float, float]
    compartment: str = "unknown"
    mean_probability: float | None = None
    mean_agreement: float | None = None


@dataclass(frozen=True)
class ClassFinding:
    """One class (a blood subtype or oedema). Values are None when not reported."""

    present: bool | None
    volume_ml: float | None
    lesion_count: int | None = None
    largest_lesion_ml: float | None = None
    discarded_volume_ml: float | None = None
    lesions: tuple[LesionFinding, ...] = ()


@dataclass(frozen=True)
class IchFinding:
    """Intracranial haemorrhage overall (IPH + EAH + IVH)."""

    present: bool | None
    probability: float | None
    total_volume_ml: float | None
    confidence: float | None = None
    lesion_count: int | None = None
    subtypes: Mapping[str, ClassFinding] = field(default_factory=dict)
    abc2: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Findings:
    """Everything ``findings.json`` holds (see the module doc for the fixed keys)."""

    schema_version: str
    study_instance_uid: str
    series_instance_uid: str
    priority: str
    priority_reasons: tuple[str, ...]
    findings_reported: bool
    ich: IchFinding
    oedema: ClassFinding
    midline_shift_mm: float | None
    midline_shift_direction: str | None
    midline: Mapping[str, Any]
    brain: Mapping[str, Any]
    qc: Mapping[str, Any]
    location: Mapping[str, Any]
    min_lesion_ml: float | Mapping[str, float] | None
    provenance: Mapping[str, Any]
    timings_s: Mapping[str, float]
    ischaemia: IschaemiaFinding | None = None
    dense_artery: DenseArteryFinding | None = None
    anatomy: AnatomyFinding | None = None
    ich_score: IchScoreFinding | None = None
    stroke_summary: StrokeSummary | None = None
    disclaimer: str = DISCLAIMER


# -- helpers -------------------------------------------------------------------------------


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def model_provenance(card: Any = None, segmentation: Any = None) -> list[dict[str, Any]]:
    """Provenance entries ``[{id, version, members: [{name, sha256}], ...}]`` from a model card
    (:class:`ictus.models.registry.ModelCard` or a mapping) and the segmentation that ran."""
    if card is None and segmentation is None:
        return []
    get = (lambda k, d=None: card.get(k, d)) if isinstance(card, Mapping) else (lambda k, d=None: getattr(card, k, d))
    # The runtime names members by their ONNX files ("model_1.onnx"); cards by name ("model_1").
    used = tuple(Path(str(u)).stem if str(u).endswith(".onnx") else str(u)
                 for u in (getattr(segmentation, "members_used", ()) or ()))
    members = []
    for m in get("members", ()) or ():
        name = m.get("name") if isinstance(m, Mapping) else getattr(m, "name", "")
        sha = m.get("sha256") if isinstance(m, Mapping) else getattr(m, "sha256", None)
        onnx_sha = m.get("onnx_sha256") if isinstance(m, Mapping) else getattr(m, "onnx_sha256", None)
        if used and name not in used:
            continue
        entry = {"name": str(name), "sha256": sha}
        if onnx_sha:
            entry["onnx_sha256"] = onnx_sha
        members.append(entry)
    entry: dict[str, Any] = {
        "id": str(get("id", "") or getattr(segmentation, "model_id", "") or ""),
        "version": str(get("version", "") or getattr(segmentation, "model_version", "") or ""),
        "members_used": list(used),
        "members": members,
    }
    sha = get("sha256")
    if sha:
        entry["sha256"] = sha
    elif len(members) == 1 and members[0].get("sha256"):
        entry["sha256"] = members[0]["sha256"]
    return [entry]


def _ictus_version() -> str:
    try:
        from importlib.metadata import version

        return version("ictus")
    except Exception:  # noqa: BLE001 - not installed (running from a checkout)
        return "0+unknown"


def _class_finding(cm: Any, reported: bool) -> ClassFinding:
    if cm is None or not reported:
        return ClassFinding(present=None, volume_ml=None)
    lesions = tuple(
        LesionFinding(
            volume_ml=_r(l.volume_ml), hemisphere=l.hemisphere, region=l.region,
            centroid_lps_mm=tuple(round(c, 1) for c in l.centroid_lps_mm), compartment=l.compartment,
            mean_probability=_r(l.mean_probability, 3), mean_agreement=_r(l.mean_agreement, 3),
        )
        for l in cm.lesions
    )
    return ClassFinding(
        present=bool(cm.present), volume_ml=_r(cm.volume_ml), lesion_count=int(cm.lesion_count),
        largest_lesion_ml=_r(cm.largest_lesion_ml), discarded_volume_ml=_r(cm.discarded_volume_ml), lesions=lesions,
    )


# -- assembly ------------------------------------------------------------------------------


def build_findings(
    volume: Any,
    segmentation: Any = None,
    *,
    measurements: Any = None,
    brain: Any = None,
    midline: Any = None,
    qc: Any = None,
    card_info: Any = None,
    timings_s: Mapping[str, float] | None = None,
    rules: Mapping[str, Any] | None = None,
    extra_provenance: Mapping[str, Any] | None = None,
    anatomy: Any = None,
    ischaemia: Any = None,
    dense_artery: Any = None,
    stroke_reason: str = "not computed",
    min_registration_dice: float | None = None,
    age_years: float | None = None,
    ivh_relabelled_ml: float | None = None,
) -> Findings:
    """Assemble the findings of one study.

    - ``volume``: the analysed :class:`ictus.imaging.volume.Volume` (UIDs, series used);
    - ``segmentation``: the :class:`ictus.models.types.Segmentation` (None if the model did not run);
    - ``measurements``: :func:`ictus.imaging.measure.measure_labels` of the segmentation;
    - ``brain``, ``midline``, ``qc``: :class:`ictus.imaging.brain.BrainResult`,
      :class:`ictus.imaging.midline.MidlineResult`, :class:`ictus.imaging.qc.QcReport`;
    - ``card_info``: the model card (or a mapping with id, version, members);
    - ``rules``: priority rules (default: ``pipelines/priority_rules.json``);
    - ``anatomy``, ``ischaemia``, ``dense_artery``: :class:`ictus.imaging.anatomy.Anatomy`,
      :class:`ictus.imaging.ischaemia.IschaemiaResult`, :class:`ictus.imaging.vessels.DenseArteryResult`
      (None when not run; ``stroke_reason`` says why).
    """
    qc_flags = tuple(getattr(qc, "flags", ()) or ())
    qc_indeterminate = bool(getattr(qc, "indeterminate", False))
    no_brain = brain is not None and not brain.brain_found
    reported = measurements is not None and not qc_indeterminate and not no_brain
    verdict = getattr(qc, "verdict", "ok") if qc is not None else "ok"
    if no_brain and verdict != "indeterminate":
        verdict = "indeterminate"
    no_model = measurements is None and not no_brain and not qc_indeterminate
    if no_model:
        verdict = "indeterminate"  # no model output: nothing can be said about haemorrhage

    classes = getattr(measurements, "classes", {}) or {}
    subtypes = {name: _class_finding(classes.get(name), reported) for name in SUBTYPES}
    if reported:
        s = measurements.ich
        abc = measurements.abc2
        ich = IchFinding(
            present=bool(s.present), probability=_r(s.probability, 3), total_volume_ml=_r(s.total_volume_ml),
            confidence=_r(s.confidence, 3), lesion_count=int(s.lesion_count), subtypes=subtypes,
            abc2=None if abc is None else {
                "a_mm": _r(abc.a_mm, 1), "b_mm": _r(abc.b_mm, 1), "c_mm": _r(abc.c_mm, 1),
                "volume_ml": _r(abc.volume_ml), "segmented_volume_ml": _r(abc.segmented_volume_ml),
                "slices_counted": abc.slices_counted, "method": "ABC/2, Kothari et al., Stroke 1996;27:1304-1305",
            },
        )
    else:
        ich = IchFinding(present=None, probability=None, total_volume_ml=None, subtypes=subtypes)
    oedema = _class_finding(classes.get("oedema"), reported)

    shift = direction = None
    midline_info: dict[str, Any] = {"measured": False, "reason": "not computed"}
    if midline is not None:
        midline_info = {
            "measured": midline.shift_mm is not None,
            "signed_shift_mm": _r(midline.shift_mm, 1),
            "sign_convention": "positive towards patient left",
            "method": midline.method,
            "confidence": _r(midline.confidence, 3),
            "reason": midline.reason,
        }
        plane = midline.ideal_plane
        if plane is not None:
            midline_info["ideal_plane"] = {
                "point_lps_mm": [round(float(v), 2) for v in plane.point_mm],
                "normal_lps": [round(float(v), 4) for v in plane.normal],
            }
        if midline.shift_mm is not None and not qc_indeterminate and not no_brain:
            shift, direction = _r(abs(midline.shift_mm), 1), midline.direction
    brain_info: dict[str, Any] = {"found": None, "volume_ml": None, "reason": "not computed"}
    if brain is not None:
        brain_info = {
            "found": bool(brain.brain_found), "volume_ml": _r(brain.brain_volume_ml, 1),
            "intracranial_volume_ml": _r(brain.intracranial_volume_ml, 1), "reason": brain.reason,
        }
    flag_names = [f.name for f in qc_flags]
    details = [
        {"name": f.name, "severity": f.severity, "description": f.description, "detail": f.detail} for f in qc_flags
    ]
    if no_brain and "no_brain_found" not in flag_names:
        flag_names.append("no_brain_found")
        details.append({"name": "no_brain_found", "severity": "indeterminate",
                        "description": "No brain inside a skull was found.", "detail": brain.reason})
    if no_model:
        flag_names.append("no_segmentation")
        details.append({"name": "no_segmentation", "severity": "indeterminate",
                        "description": "No model output was available for this study.", "detail": ""})
    if anatomy is not None and not anatomy.registered and "registration_failed" not in flag_names:
        from ictus.imaging.qc import QC_FLAGS

        spec = QC_FLAGS["registration_failed"]
        flag_names.append(spec.name)
        details.append({"name": spec.name, "severity": spec.severity, "description": spec.description,
                        "detail": f"template brain Dice {anatomy.quality_dice:.2f}"})
        if verdict == "ok":
            verdict = "warning"
    qc_info = {
        "flags": flag_names,
        "verdict": verdict,
        "details": details,
        "measurements": {k: (_r(v, 2) if isinstance(v, float) else v)
                         for k, v in dict(getattr(qc, "measurements", {}) or {}).items()},
    }
    location = {
        "hemisphere_reference": "ideal midline (skull symmetry plane)",
        "region_status": getattr(measurements, "region_status", "not computed"),
        "atlas": "BLAST-CT localisation atlas through the registered CT template (affine; approximate)",
        "ivh_by_location": {
            "relabelled_ml": _r(ivh_relabelled_ml),
            "method": "model blood inside the registered ventricles (dilated 2 mm) is counted as IVH",
        },
    }
    from ictus.imaging.anatomy import MIN_REGISTRATION_DICE

    min_dice = MIN_REGISTRATION_DICE if min_registration_dice is None else min_registration_dice
    anatomy_info = anatomy_finding(anatomy, min_dice, stroke_reason)
    stroke_ok = not qc_indeterminate and not no_brain
    isch = ischaemia_finding(ischaemia if stroke_ok else None, stroke_reason if stroke_ok else "QC: study indeterminate")
    dense = dense_artery_finding(dense_artery if stroke_ok else None,
                                 stroke_reason if stroke_ok else "QC: study indeterminate")
    ich_score = ich_score_finding(measurements, age_years, reported)
    summary = stroke_summary(ich.present, ich.total_volume_ml, isch, dense)
    floors = {name: cm.min_lesion_ml for name, cm in classes.items()}
    min_lesion: float | dict[str, float] | None = None
    if floors:
        min_lesion = next(iter(floors.values())) if len(set(floors.values())) == 1 else floors
    provenance: dict[str, Any] = {
        "ictus_version": _ictus_version(),
        "models": model_provenance(card_info, segmentation),
        "series_used": {
            "study_instance_uid": getattr(volume, "study_instance_uid", ""),
            "series_instance_uid": getattr(volume, "series_instance_uid", ""),
            "frame_of_reference_uid": getattr(volume, "frame_of_reference_uid", ""),
            "instance_count": len(getattr(volume, "sop_instance_uids", ()) or ()),
            "size_xyz": list(getattr(volume, "size", ()) or ()),
            "spacing_mm": [round(v, 4) for v in (getattr(volume, "spacing_mm", ()) or ())],
        },
    }
    provenance["ictus"] = provenance["ictus_version"]
    if extra_provenance:
        provenance.update(dict(extra_provenance))

    draft = Findings(
        schema_version=SCHEMA_VERSION,
        study_instance_uid=str(getattr(volume, "study_instance_uid", "") or ""),
        series_instance_uid=str(getattr(volume, "series_instance_uid", "") or ""),
        priority="indeterminate",
        priority_reasons=(),
        findings_reported=reported,
        ich=ich,
        oedema=oedema,
        midline_shift_mm=shift,
        midline_shift_direction=direction,
        midline=midline_info,
        brain=brain_info,
        qc=qc_info,
        location=location,
        min_lesion_ml=min_lesion,
        provenance=provenance,
        timings_s={k: round(float(v), 3) for k, v in (timings_s or {}).items()},
        ischaemia=isch,
        dense_artery=dense,
        anatomy=anatomy_info,
        ich_score=ich_score,
        stroke_summary=summary,
    )
    priority, reasons = evaluate_priority(findings_to_dict(draft), rules)
    return dataclasses.replace(draft, priority=priority, priority_reasons=reasons)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def findings_to_dict(findings: Findings) -> dict[str, Any]:
    """The ``findings.json`` structure (JSON-ready: dicts, lists, str, float, bool, None)."""
    return _plain(findings)


def findings_to_json(findings: Findings, *, indent: int = 2) -> str:
    """``findings.json`` text."""
    return json.dumps(findings_to_dict(findings), indent=indent, sort_keys=False, allow_nan=False)


def summary_lines(doc: Mapping[str, Any]) -> list[str]:
    """A short human summary of a findings dict (for the CLI to print): priority, ICH, shift, QC."""
    ich = doc.get("ich") or {}
    lines = [f"priority: {doc.get('priority')}" + (f" ({'; '.join(doc.get('priority_reasons') or [])})"
                                                  if doc.get("priority_reasons") else "")]
    if ich.get("present") is None:
        lines.append("haemorrhage: not assessed")
    else:
        parts = [f"{name} {sub.get('volume_ml', 0):.1f} mL" for name, sub in (ich.get("subtypes") or {}).items()
                 if sub.get("present")]
        lines.append(f"haemorrhage: {'yes' if ich['present'] else 'no'}"
                     + (f", {ich.get('total_volume_ml', 0):.1f} mL ({', '.join(parts)})" if ich["present"] else ""))
        oedema = (doc.get("oedema") or {}).get("volume_ml")
        if oedema:
            lines.append(f"oedema: {oedema:.1f} mL")
    shift = doc.get("midline_shift_mm")
    lines.append("midline shift: not measured" if shift is None
                 else f"midline shift: {shift:.1f} mm ({doc.get('midline_shift_direction')})")
    summary = doc.get("stroke_summary") or {}
    if summary:
        lines.append(f"early ischaemic change: {summary.get('early_ischaemic_change')}")
        lines.append(f"hyperdense artery: {summary.get('dense_artery')}")
        lines.append(f"tissue age: {summary.get('tissue_age')}")
        for caution in summary.get("cautions") or []:
            lines.append(f"caution: {caution}")
    flags = (doc.get("qc") or {}).get("flags") or []
    lines.append(f"QC: {', '.join(flags) if flags else 'no flags'}")
    return lines


def load_schema() -> dict[str, Any]:
    """The published JSON Schema of ``findings.json``."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
