"""The findings of one study: a frozen, typed record and its ``findings.json`` form.

:class:`Findings` is what triage hands to every consumer (writers, batch, listener,
evaluation, CLI, notebooks), which read its attributes. :meth:`Findings.to_dict` gives the
JSON structure published in ``findings.schema.json`` (:data:`SCHEMA_VERSION`); only the
places that write JSON (and the priority rules, which are paths into it) call it.
:func:`ictus.pipelines.findings.build.build_findings` assembles the record. No I/O, no printing.

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
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from ictus.pipelines.findings.priority import Priority
from ictus.pipelines.findings.stroke import (
    AnatomyFinding,
    DenseArteryFinding,
    IchScoreFinding,
    IschaemiaFinding,
    StrokeSummary,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1.2.0"
SCHEMA_PATH = Path(__file__).with_name("findings.schema.json")
#: The one English disclaimer: findings.json, the CLI, the reports and the SR use it; the locale
#: catalogues hold its translations (key ``disclaimer``; en.json's copy must equal it).
DISCLAIMER = (
    "Ictus is a triage aid, not a diagnostic device. Its output prioritises studies for review; every finding "
    "must be confirmed by a qualified reader on the original images."
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
class Abc2Finding:
    """The ABC/2 volume estimate of the largest parenchymal haemorrhage."""

    a_mm: float | None
    b_mm: float | None
    c_mm: float | None
    volume_ml: float | None
    segmented_volume_ml: float | None
    slices_counted: float
    method: str = "ABC/2, Kothari et al., Stroke 1996;27:1304-1305"


@dataclass(frozen=True)
class IchFinding:
    """Intracranial haemorrhage overall (IPH + EAH + IVH)."""

    present: bool | None
    probability: float | None
    total_volume_ml: float | None
    confidence: float | None = None
    lesion_count: int | None = None
    subtypes: Mapping[str, ClassFinding] = field(default_factory=dict)
    abc2: Abc2Finding | None = None


@dataclass(frozen=True)
class QcDetail:
    """One QC flag as reported."""

    name: str
    severity: str  # "info" | "warning" | "indeterminate"
    description: str = ""
    detail: str = ""


@dataclass(frozen=True)
class QcFinding:
    """The QC verdict: flag names (in order raised), their details and the measurements behind them."""

    flags: tuple[str, ...] = ()
    verdict: str = "ok"  # "ok" | "warning" | "indeterminate"
    details: tuple[QcDetail, ...] = ()
    measurements: Mapping[str, Any] = field(default_factory=dict)

    @property
    def indeterminate(self) -> bool:
        """Whether QC made the study indeterminate."""
        return self.verdict == "indeterminate"


@dataclass(frozen=True)
class IdealPlane:
    """The ideal midline plane in patient LPS: a point (mm) and the unit normal."""

    point_lps_mm: tuple[float, float, float]
    normal_lps: tuple[float, float, float]


@dataclass(frozen=True)
class MidlineFinding:
    """How the midline shift was measured (``computed`` false: the stage did not run)."""

    computed: bool
    measured: bool
    reason: str
    signed_shift_mm: float | None = None
    sign_convention: str = "positive towards patient left"
    method: str = ""
    confidence: float | None = None
    ideal_plane: IdealPlane | None = None

    def to_json_block(self) -> dict[str, Any]:
        """The ``midline`` block of findings.json."""
        if not self.computed:
            return {"measured": False, "reason": self.reason}
        block: dict[str, Any] = {
            "measured": self.measured, "signed_shift_mm": self.signed_shift_mm,
            "sign_convention": self.sign_convention, "method": self.method,
            "confidence": self.confidence, "reason": self.reason,
        }
        if self.ideal_plane is not None:
            block["ideal_plane"] = {"point_lps_mm": list(self.ideal_plane.point_lps_mm),
                                   "normal_lps": list(self.ideal_plane.normal_lps)}
        return block


@dataclass(frozen=True)
class BrainFinding:
    """The brain search: found (None: not computed), brain and intracranial volumes."""

    found: bool | None
    volume_ml: float | None
    reason: str
    intracranial_volume_ml: float | None = None

    def to_json_block(self) -> dict[str, Any]:
        """The ``brain`` block of findings.json."""
        if self.found is None:
            return {"found": None, "volume_ml": self.volume_ml, "reason": self.reason}
        return {"found": self.found, "volume_ml": self.volume_ml,
                "intracranial_volume_ml": self.intracranial_volume_ml, "reason": self.reason}


@dataclass(frozen=True)
class LocationFinding:
    """How hemisphere and region were assigned, and the blood relabelled IVH by location."""

    hemisphere_reference: str
    region_status: str
    atlas: str
    ivh_relabelled_ml: float | None
    ivh_method: str

    def to_json_block(self) -> dict[str, Any]:
        """The ``location`` block of findings.json."""
        return {"hemisphere_reference": self.hemisphere_reference, "region_status": self.region_status,
                "atlas": self.atlas,
                "ivh_by_location": {"relabelled_ml": self.ivh_relabelled_ml, "method": self.ivh_method}}


@dataclass(frozen=True)
class MemberProvenance:
    """One model member that ran, by name and weights sha256 (and its ONNX sha256 if known)."""

    name: str
    sha256: str | None
    onnx_sha256: str | None = None

    def to_json_block(self) -> dict[str, Any]:
        block: dict[str, Any] = {"name": self.name, "sha256": self.sha256}
        if self.onnx_sha256:
            block["onnx_sha256"] = self.onnx_sha256
        return block


@dataclass(frozen=True)
class InferenceRuntime:
    """What ran the members: backend (openvino, onnxruntime), its version, device, precision."""

    backend: str
    version: str
    device: str
    precision: str


@dataclass(frozen=True)
class ModelProvenance:
    """One model that ran: card id and version, the members used, their sha256."""

    id: str
    version: str
    members_used: tuple[str, ...]
    members: tuple[MemberProvenance, ...]
    sha256: str | None = None
    runtime: InferenceRuntime | None = None

    def to_json_block(self) -> dict[str, Any]:
        block: dict[str, Any] = {"id": self.id, "version": self.version, "members_used": list(self.members_used),
                                 "members": [m.to_json_block() for m in self.members]}
        if self.sha256:
            block["sha256"] = self.sha256
        if self.runtime is not None:
            block["runtime"] = _plain(self.runtime)
        return block


@dataclass(frozen=True)
class SeriesUsed:
    """The series that was analysed: UIDs, instance count and grid."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    instance_count: int
    size_xyz: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]


@dataclass(frozen=True)
class Provenance:
    """Versions, the models with their sha256, the series used, and what the caller added."""

    ictus_version: str
    models: tuple[ModelProvenance, ...]
    series_used: SeriesUsed
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json_block(self) -> dict[str, Any]:
        """The ``provenance`` block (``ictus`` repeats the version; extras last)."""
        block: dict[str, Any] = {"ictus_version": self.ictus_version,
                                 "models": [m.to_json_block() for m in self.models],
                                 "series_used": _plain(self.series_used), "ictus": self.ictus_version}
        block.update(_plain(dict(self.extra)))
        return block



@dataclass(frozen=True)
class Findings:
    """Everything ``findings.json`` holds (see the module doc for the fixed keys)."""

    schema_version: str
    study_instance_uid: str
    series_instance_uid: str
    priority: Priority
    priority_reasons: tuple[str, ...]
    findings_reported: bool
    ich: IchFinding
    oedema: ClassFinding
    midline_shift_mm: float | None
    midline_shift_direction: str | None
    midline: MidlineFinding
    brain: BrainFinding
    qc: QcFinding
    location: LocationFinding
    min_lesion_ml: float | Mapping[str, float] | None
    provenance: Provenance
    timings_s: Mapping[str, float]
    ischaemia: IschaemiaFinding | None = None
    dense_artery: DenseArteryFinding | None = None
    anatomy: AnatomyFinding | None = None
    ich_score: IchScoreFinding | None = None
    stroke_summary: StrokeSummary | None = None
    disclaimer: str = DISCLAIMER
    #: What the writers did with each output (the ``outputs`` block), once they ran; None before.
    outputs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "priority", Priority(self.priority))  # "critical" -> Priority.CRITICAL

    @property
    def qc_flags(self) -> tuple[str, ...]:
        """The QC flag names."""
        return tuple(self.qc.flags)

    @property
    def models(self) -> tuple[ModelProvenance, ...]:
        """The models that ran (id, version, members, sha256)."""
        return self.provenance.models

    def to_dict(self) -> dict[str, Any]:
        """The ``findings.json`` structure (JSON-ready: dicts, lists, str, float, bool, None)."""
        doc = _plain(self)
        if self.outputs is None:
            del doc["outputs"]
        return doc

    def to_json(self, *, indent: int = 2) -> str:
        """``findings.json`` text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, allow_nan=False)


def _plain(value: Any) -> Any:
    if hasattr(value, "to_json_block"):  # a block with its own JSON form (key order, optional keys)
        return value.to_json_block()
    if isinstance(value, Enum):
        return value.value
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
    """The ``findings.json`` structure (same as :meth:`Findings.to_dict`)."""
    return findings.to_dict()


def findings_to_json(findings: Findings, *, indent: int = 2) -> str:
    """``findings.json`` text (same as :meth:`Findings.to_json`)."""
    return findings.to_json(indent=indent)


def summary_lines(findings: Findings) -> list[str]:
    """A short human summary of the findings (for the CLI to print): priority, ICH, shift, QC."""
    reasons = f" ({'; '.join(findings.priority_reasons)})" if findings.priority_reasons else ""
    lines = [f"priority: {findings.priority}{reasons}"]
    ich = findings.ich
    if ich.present is None:
        lines.append("haemorrhage: not assessed")
    else:
        parts = [f"{name} {sub.volume_ml or 0:.1f} mL" for name, sub in ich.subtypes.items() if sub.present]
        lines.append(f"haemorrhage: {'yes' if ich.present else 'no'}"
                     + (f", {ich.total_volume_ml or 0:.1f} mL ({', '.join(parts)})" if ich.present else ""))
        if findings.oedema.volume_ml:
            lines.append(f"oedema: {findings.oedema.volume_ml:.1f} mL")
    shift = findings.midline_shift_mm
    lines.append("midline shift: not measured" if shift is None
                 else f"midline shift: {shift:.1f} mm ({findings.midline_shift_direction})")
    summary = findings.stroke_summary
    if summary is not None:
        lines.append(f"early ischaemic change: {summary.early_ischaemic_change}")
        lines.append(f"hyperdense artery: {summary.dense_artery}")
        lines.append(f"tissue age: {summary.tissue_age}")
        lines.extend(f"caution: {caution}" for caution in summary.cautions)
    flags = findings.qc.flags
    lines.append(f"QC: {', '.join(flags) if flags else 'no flags'}")
    return lines


def load_schema() -> dict[str, Any]:
    """The published JSON Schema of ``findings.json``."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
