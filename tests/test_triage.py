"""End to end: ``triage()`` and ``ictus triage`` on phantoms with known truth and on real heads.

The model runs in its fast mode (one member) on small studies here; the full
ensemble on full-size studies is in scripts/bench_model.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ictus.imaging.phantom import PhantomSpec, write_phantom
from ictus.pipelines.triage import TriageEngine, TriageOptions, triage
from tests.conftest import shared_dicom

SMALL = dict(matrix=256, pixel_spacing_mm=0.9, slice_thickness_mm=5.0, noise_hu=5.0)


def _truth(study: Path) -> dict:
    return json.loads((study / "ground_truth.json").read_text())


@pytest.fixture(scope="module")
def engine(fast_models_dir):
    return TriageEngine(TriageOptions(models_dir=str(fast_models_dir), fast=True, outputs=("json",)))


@pytest.fixture(scope="module")
def ich_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("ich") / "study"
    write_phantom(PhantomSpec(haemorrhage="IPH", haemorrhage_volume_ml=30.0, midline_shift_mm=6.0, **SMALL), out)
    return out


@pytest.fixture(scope="module")
def ich_result(engine, ich_study, tmp_path_factory):
    return engine.run(ich_study, tmp_path_factory.mktemp("ich-out"))


def test_ich_phantom_findings_match_the_truth(ich_result, ich_study):
    truth = _truth(ich_study)
    f = ich_result.findings
    assert f.ich.present is True
    iph_true = truth["volumes_ml"]["IPH"]["on_grid_ml"]
    iph = f.ich.subtypes["IPH"].volume_ml
    assert abs(iph - iph_true) / iph_true < 0.15, (iph, iph_true)
    assert abs(f.midline_shift_mm - truth["midline_shift_mm"]) <= 1.5
    assert f.midline_shift_direction == truth["midline_shift_direction"]
    assert f.priority == "critical"  # >= 5 mm shift (and about 30 mL of blood)
    lesion = f.ich.subtypes["IPH"].lesions[0]
    assert lesion.hemisphere == truth["haemorrhage"]["hemisphere"]


def test_findings_json_is_written_and_valid(ich_result):
    import jsonschema

    from ictus.pipelines.findings.record import load_schema

    path = Path(ich_result.outputs["json"][0])
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, load_schema())
    assert doc == json.loads(json.dumps(ich_result.findings_dict()))
    for stage in ("scan", "select", "volume", "brain", "segment", "midline", "measure"):
        assert stage in doc["timings_s"]
    assert doc["provenance"]["models"][0]["members"][0]["name"] == "model_1"
    assert len(doc["provenance"]["models"][0]["members"][0]["sha256"]) == 64
    text = path.read_text()
    assert "PHANTOM" not in text  # no patient name or ID in the JSON


def test_result_carries_volume_masks_and_probabilities(ich_result):
    seg = ich_result.segmentation
    assert seg.labels.shape == ich_result.volume.array_view().shape
    assert seg.probabilities.shape[1:] == seg.labels.shape
    assert seg.class_names[1:] == ("IPH", "EAH", "oedema", "IVH")


def test_no_haemorrhage_phantom_is_routine(engine, tmp_path):
    study = tmp_path / "normal"
    write_phantom(PhantomSpec(haemorrhage=None, **SMALL), study)
    f = engine.run(study).findings
    assert f.ich.total_volume_ml < 1.0, f.ich
    assert f.midline_shift_mm is None or f.midline_shift_mm <= 1.5
    # the geometric phantom is not anatomical: the template does not register, so the
    # ischaemic findings are not assessed and the study is indeterminate, never routine
    assert f.priority == "indeterminate", f.priority_reasons
    assert "registration_failed" in f.qc.flags and f.ischaemia.assessed is False
    import dataclasses

    haemorrhage_only = TriageEngine(dataclasses.replace(engine.options, stroke=False))
    assert haemorrhage_only.run(study).findings.priority == "routine"


def test_real_ge_head_no_large_ich_and_no_shift(engine):
    study = shared_dicom("ge-head-tilt-variable-spacing")
    f = engine.run(study).findings
    assert f.ich.present is not None
    assert (f.ich.total_volume_ml or 0.0) < 5.0, f.ich
    if f.midline_shift_mm is not None:
        assert f.midline_shift_mm <= 2.0
    assert "gantry_tilt_corrected" in f.qc.flags


def test_plastic_skull_is_indeterminate_without_running_the_model(fast_models_dir):
    study = shared_dicom("philips-head-phantom-tilted")
    result = triage(study, models_dir=str(fast_models_dir), fast=True, outputs=("json",))
    f = result.findings
    assert f.priority == "indeterminate"
    assert "no_brain_found" in f.qc.flags
    assert f.ich.present is None
    assert result.segmentation is None


# -- the command line -------------------------------------------------------------


def test_cli_triage_summary(cli_runner, fast_models_dir, tmp_path):
    study = shared_dicom("philips-head-phantom-tilted")  # no brain: the model does not run
    code, out, err = cli_runner("triage", study, "--out", tmp_path / "o", "--fast", "--models-dir",
                                fast_models_dir, "--outputs", "json")
    assert code == 0, err
    assert "priority: indeterminate" in out
    assert "no_brain_found" in out
    assert "not a diagnostic device" in out
    assert (tmp_path / "o" / "findings.json").is_file()


def test_cli_triage_json_rules_and_fail_on(cli_runner, fast_models_dir, tmp_path):
    """--rules changes the policy, --json prints the findings, --fail-on sets exit 10."""
    study = shared_dicom("philips-head-phantom-tilted")
    rules = {
        "schema": "ictus-priority-rules/1", "default": "routine",
        "rules": [{"priority": "critical", "any": [
            {"field": "brain.found", "op": "==", "value": False, "reason": "no brain (test policy)"}]}],
    }
    rules_path = tmp_path / "rules.json"
    rules_path.write_text(json.dumps(rules))
    args = ("triage", study, "--out", tmp_path / "o", "--fast", "--models-dir", fast_models_dir,
            "--outputs", "json", "--rules", rules_path, "--json")
    code, out, err = cli_runner(*args, "--fail-on", "critical")
    assert code == 10, err
    doc = json.loads(out)
    assert doc["priority"] == "critical" and doc["priority_reasons"] == ["no brain (test policy)"]
    code, out, err = cli_runner(*args)
    assert code == 0, err


def test_cli_triage_without_weights_says_what_to_run(cli_runner, ich_study, tmp_path):
    code, _, err = cli_runner("triage", ich_study, "--out", tmp_path / "o", "--models-dir", tmp_path / "none")
    assert code == 5
    assert "ictus models pull blast-ct" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("maker, expected", [
    (lambda p: p.mkdir(), 4),  # empty folder
    (lambda p: (p.mkdir(), (p / "x.dcm").write_bytes(b"\0" * 300)), 4),  # not DICOM
])
def test_cli_triage_bad_input(cli_runner, tmp_path, maker, expected):
    study = tmp_path / "study"
    maker(study)
    code, _, err = cli_runner("triage", study, "--out", tmp_path / "o")
    assert code == expected
    assert err.count("\n") == 1 and err.startswith("ictus: error:")
    assert not (tmp_path / "o").exists()


def test_cli_triage_bad_outputs_option_is_usage_error(cli_runner, tmp_path):
    code, _, _ = cli_runner("triage", tmp_path, "--outputs", "json,nonsense")
    assert code == 2


# Where the model sees the blood (scripts/probe_model.py measures all types and sizes;
# the card's known limitations list what it misses: small EAH, subtype split of large IVH).
@pytest.mark.parametrize("kind, volume_ml", [("IPH", 5.0), ("IVH", 5.0), ("IVH", 30.0)])
def test_total_blood_on_phantoms_where_the_model_sees_it(engine, tmp_path, kind, volume_ml):
    study = tmp_path / "study"
    write_phantom(PhantomSpec(haemorrhage=kind, haemorrhage_volume_ml=volume_ml, **SMALL), study)
    truth = _truth(study)["volumes_ml"][kind]["on_grid_ml"]
    f = engine.run(study).findings
    assert f.ich.present is True
    assert abs(f.ich.total_volume_ml - truth) / truth < 0.2, (f.ich.total_volume_ml, truth)
    assert f.priority in ("urgent", "critical")


def test_large_extra_axial_blood_is_detected(engine, tmp_path):
    study = tmp_path / "study"
    write_phantom(PhantomSpec(haemorrhage="EAH", haemorrhage_volume_ml=30.0, **SMALL), study)
    f = engine.run(study).findings
    assert f.ich.present is True and f.ich.subtypes["EAH"].present is True
    assert f.priority in ("urgent", "critical")
