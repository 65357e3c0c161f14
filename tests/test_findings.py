"""findings.json (ictus.pipelines.findings.record): assembly from measurement objects, schema validation, no PHI."""
from __future__ import annotations

import functools
import json

import jsonschema
import numpy as np
import pytest

from ictus.imaging.brain import segment_brain
from ictus.imaging.measure import measure_labels
from ictus.imaging.midline import measure_midline_shift
from ictus.imaging.qc import assess_qc
from ictus.imaging.volume import volume_from_array
from ictus.models.types import Segmentation
from ictus.pipelines.findings.build import build_findings, model_provenance
from ictus.pipelines.findings.priority import Priority
from ictus.pipelines.findings.record import (
    DISCLAIMER,
    SCHEMA_VERSION,
    findings_to_dict,
    findings_to_json,
    load_schema,
    summary_lines,
)

NAMES = ("background", "IPH", "EAH", "oedema", "IVH")
CARD = {
    "id": "blast-ct",
    "version": "1.0",
    "members": [{"name": f"model_{i}", "sha256": f"{i:064x}"} for i in range(1, 4)],
}


@functools.lru_cache(maxsize=None)
def _phantom(**kwargs):
    from ictus.imaging.phantom import PhantomSpec, phantom_with_truth

    spec = dict(matrix=160, pixel_spacing_mm=1.25, slice_thickness_mm=5.0, z_coverage_mm=170.0)
    spec.update(kwargs)
    vol, truth = phantom_with_truth(PhantomSpec(**spec))
    _TRUTHS[id(vol.image)] = truth
    return vol


#: PhantomTruth of each phantom made here, by its image (volumes derived with
#: with_flags or dataclasses.replace share it); truth never rides in the Volume.
_TRUTHS: dict = {}


def _truth(vol):
    return _TRUTHS[id(vol.image)]


def _segmentation_from_truth(labels: np.ndarray) -> Segmentation:
    """A perfect 'model' output: one-hot probabilities of the ground truth, members all agree."""
    probs = np.zeros((len(NAMES),) + labels.shape, np.float16)
    for value in range(len(NAMES)):
        probs[value][labels == value] = 0.9 if value else 1.0
    probs[0][labels > 0] = 0.1
    return Segmentation(probabilities=probs, labels=labels.astype(np.uint8),
                        agreement=np.ones(labels.shape, np.float16), class_names=NAMES,
                        model_id="blast-ct", model_version="1.0", members_used=("model_1", "model_2"))


def _findings(vol, *, seg=True, **kwargs):
    brain = segment_brain(vol)
    midline = measure_midline_shift(vol, brain)
    qc = assess_qc(vol, brain)
    segmentation = measurements = None
    if seg and brain.brain_found:
        segmentation = _segmentation_from_truth(_truth(vol).labels)
        measurements = measure_labels(segmentation.labels, vol, NAMES, probabilities=segmentation.probabilities,
                                      agreement=segmentation.agreement, plane=midline.ideal_plane)
    return build_findings(vol, segmentation, measurements=measurements, brain=brain, midline=midline, qc=qc,
                          card_info=CARD, timings_s={"brain": 0.5, "segment": 12.0}, **kwargs)


def _validate(doc):
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(doc)


def test_large_iph_with_shift_is_critical_and_valid():
    vol = _phantom(haemorrhage="IPH", haemorrhage_volume_ml=35.0, oedema_rim_mm=3.0, midline_shift_mm=6.0)
    truth = _truth(vol)
    f = _findings(vol)
    doc = json.loads(findings_to_json(f))
    _validate(doc)
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["priority"] == "critical"
    assert any("35" in r or "mL" in r for r in doc["priority_reasons"])
    assert doc["ich"]["present"] is True
    assert doc["ich"]["total_volume_ml"] == pytest.approx(truth["volumes_ml"]["IPH"]["on_grid_ml"], abs=0.6)
    assert doc["ich"]["subtypes"]["IPH"]["present"] and not doc["ich"]["subtypes"]["IVH"]["present"]
    assert doc["ich"]["probability"] == pytest.approx(0.9, abs=0.01)
    assert doc["ich"]["confidence"] == pytest.approx(1.0)
    assert doc["ich"]["abc2"]["volume_ml"] > 0
    assert doc["oedema"]["volume_ml"] > 0
    assert doc["midline_shift_mm"] == pytest.approx(truth["midline_shift_mm"], abs=1.5)
    assert doc["midline_shift_direction"] == truth["midline_shift_direction"]
    lesion = doc["ich"]["subtypes"]["IPH"]["lesions"][0]
    assert lesion["hemisphere"] == truth["haemorrhage"]["hemisphere"]
    assert doc["provenance"]["models"][0]["id"] == "blast-ct"
    assert [m["name"] for m in doc["provenance"]["models"][0]["members"]] == ["model_1", "model_2"]
    assert doc["provenance"]["series_used"]["series_instance_uid"] == vol.series_instance_uid
    assert doc["timings_s"] == {"brain": 0.5, "segment": 12.0}
    assert doc["disclaimer"] == DISCLAIMER and "not a diagnostic device" in DISCLAIMER
    lines = summary_lines(f)
    assert lines[0].startswith("priority: critical") and "IPH" in lines[1]
    assert f.priority is Priority.CRITICAL and f.ich.subtypes["IPH"].present and f.to_dict() == doc
    assert any(line.startswith("midline shift:") and "left" in line for line in lines)


def test_normal_phantom_is_routine():
    f = _findings(_phantom())
    doc = findings_to_dict(f)
    _validate(doc)
    assert doc["priority"] == "routine" and doc["priority_reasons"] == []
    assert doc["ich"]["present"] is False and doc["ich"]["total_volume_ml"] == 0.0
    assert doc["midline_shift_direction"] == "none"
    assert doc["qc"]["flags"] == []


def test_small_eah_is_critical():
    # any intracranial haemorrhage is critical in stroke triage (thrombolysis contraindicated)
    f = _findings(_phantom(haemorrhage="EAH", haemorrhage_volume_ml=10.0, slice_thickness_mm=2.5))
    doc = findings_to_dict(f)
    _validate(doc)
    assert doc["priority"] == "critical"
    assert doc["ich"]["subtypes"]["EAH"]["present"]


def test_no_brain_is_indeterminate_and_reports_nothing():
    hu = np.full((30, 100, 90), -1000.0, np.float32)
    z, y, x = np.meshgrid(np.arange(30) * 5.0 - 75, np.arange(100) * 2.0 - 100, np.arange(90) * 2.0 - 90,
                          indexing="ij")
    r = (x / 75) ** 2 + (y / 95) ** 2 + (z / 70) ** 2
    hu[r <= 1] = 700.0
    hu[r <= 0.85] = -1000.0
    vol = volume_from_array(hu, spacing_mm=(2.0, 2.0, 5.0), study_instance_uid="1.2.3", series_instance_uid="1.2.3.4")
    brain = segment_brain(vol)
    f = build_findings(vol, None, brain=brain, midline=measure_midline_shift(vol, brain), qc=assess_qc(vol, brain))
    doc = findings_to_dict(f)
    _validate(doc)
    assert doc["priority"] == "indeterminate"
    assert summary_lines(f)[1] == "haemorrhage: not assessed"
    assert f.qc.indeterminate and "no_brain_found" in f.qc_flags
    assert "no_brain_found" in doc["qc"]["flags"]
    assert doc["findings_reported"] is False
    assert doc["ich"]["present"] is None and doc["ich"]["total_volume_ml"] is None
    assert doc["midline_shift_mm"] is None and doc["oedema"]["volume_ml"] is None


def test_contrast_makes_findings_withheld():
    f = _findings(_phantom(contrast=True, haemorrhage="IPH", haemorrhage_volume_ml=40.0))
    doc = findings_to_dict(f)
    _validate(doc)
    assert doc["priority"] == "indeterminate"
    assert doc["ich"]["present"] is None


def test_missing_segmentation_is_not_routine():
    vol = _phantom()
    brain = segment_brain(vol)
    f = build_findings(vol, None, brain=brain, qc=assess_qc(vol, brain))
    doc = findings_to_dict(f)
    _validate(doc)
    assert doc["priority"] == "indeterminate" and "no_segmentation" in doc["qc"]["flags"]


def test_no_patient_identifiers_in_the_json():
    vol = _phantom(haemorrhage="IVH", haemorrhage_volume_ml=5.0)
    vol = vol.with_flags()
    import dataclasses

    # identifying text that reached the free-text acquisition fields must not reach the JSON either
    acquisition = dataclasses.replace(vol.acquisition, manufacturer="Doe^Jane", model_name="ID-12345")
    vol = dataclasses.replace(vol, acquisition=acquisition)
    text = findings_to_json(_findings(vol))
    assert "Doe" not in text and "ID-12345" not in text
    assert json.loads(text)["priority"] == "critical"  # IVH


def test_schema_rejects_wrong_documents():
    doc = findings_to_dict(_findings(_phantom()))
    _validate(doc)
    for mutate in (
        lambda d: d.pop("priority"),
        lambda d: d.__setitem__("priority", "high"),
        lambda d: d["ich"]["subtypes"].pop("IVH"),
        lambda d: d["qc"].__setitem__("flags", "thick_slices"),
        lambda d: d.__setitem__("midline_shift_direction", "up"),
        lambda d: d.__setitem__("PatientName", "Doe^Jane"),
    ):
        bad = json.loads(json.dumps(doc))
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            _validate(bad)


def test_model_provenance_from_the_registered_card():
    from ictus.models.registry import get_card

    card = get_card("blast-ct")
    seg = _segmentation_from_truth(np.zeros((2, 2, 2), np.uint8))
    entry = model_provenance(card, seg)[0]
    assert entry.id == card.id and entry.version == card.version
    assert [m.name for m in entry.members] == list(seg.members_used)
    assert all(len(m.sha256) == 64 for m in entry.members)


def test_model_provenance_mapping():
    entries = model_provenance(CARD)
    assert entries[0].id == "blast-ct" and len(entries[0].members) == 3
    assert model_provenance(None, None) == []
