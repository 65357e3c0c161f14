"""No patient identifier in any output stream; every output written on its own.

Studies are copies of the real GE head with distinctive identifying values.
Everything written to stdout, stderr, log files and summaries is searched
(case-insensitive, name components too): none may appear. The DICOM outputs
must still carry them. The model is the real fast member for ``ictus triage``
and the HU-threshold stand-in (``orthanc_helpers.ThresholdEngine``; the rest of
the pipeline is real) for batch, listener and API, to keep the suite short.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
import pytest

from conftest import ROOT, shared_dicom

NAME = "Zyxwvut^Qwerty"
SINGLE = "Zyxwvutsingle"
PHI = {"PatientID": "PID-987654321", "PatientBirthDate": "19430517", "AccessionNumber": "ACC55501234",
       "InstitutionName": "Qwertyuiop Infirmary", "OtherPatientIDs": "OPID-5550199"}
FORBIDDEN = ["Zyxwvut", "Qwerty", "Zyxwvutsingle", "PID-987654321", "987654321", "19430517", "1943-05-17",
             "ACC55501234", "Qwertyuiop", "OPID-5550199"]


def make_study(folder: Path, name: str, *, strip_frame_of_reference: bool = False) -> Path:
    """The GE head copied with identifying values set (and its Frame of Reference UID removed)."""
    src = shared_dicom("ge-head-tilt-variable-spacing")
    folder.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(p)
        ds.PatientName = name
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        if strip_frame_of_reference:
            for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator"):
                if keyword in ds:
                    delattr(ds, keyword)
        ds.save_as(folder / p.name)
    return folder


def leaks(text: str | bytes) -> list[str]:
    """The forbidden strings found in ``text`` (case-insensitive)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    low = text.lower()
    return [s for s in FORBIDDEN if s.lower() in low]


def text_files(folder: Path) -> dict[str, bytes]:
    """Every non-DICOM file under ``folder`` (logs, JSON, CSV, HTML): must be free of identifiers."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and p.suffix.lower() not in (".dcm", ".pdf") and p.name != "DICOMDIR" \
                and "spool" not in p.parts[-4:-1] and p.suffix != ".sqlite" and "instances" not in p.parts:
            out[str(p)] = p.read_bytes()
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env["PYTHONWARNINGS"] = "default"  # every warning would be shown if it escaped the guard
    return env


def _ictus(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ictus.pipelines.cli", "-v", *map(str, args)], capture_output=True,
                          cwd=ROOT, env=_env(), timeout=timeout)


def _threshold_ensemble(monkeypatch) -> None:
    """TriageEngine with the HU-threshold model in this process (everything else real)."""
    from orthanc_helpers import _ThresholdEnsemble
    from ictus.pipelines.triage import TriageEngine

    def ensemble(self):
        if self._ensemble is None:
            self._ensemble = _ThresholdEnsemble(self.card.class_names)
        return self._ensemble

    monkeypatch.setattr(TriageEngine, "ensemble", ensemble)


# -- unit: the guard itself -----------------------------------------------------------------
def test_redaction_of_values_components_and_warnings(caplog):
    import warnings

    from ictus.pipelines import phi

    ds = pydicom.Dataset()
    ds.PatientName = "Zyxwvut^Qwerty^Middleq"
    ds.PatientID = "PID-987654321"
    ds.PatientBirthDate = "19430517"
    held_before = phi.held_count()
    with phi.phi_guard():
        phi.observe_dataset(ds)
        assert phi.redact("name Zyxwvut^Qwerty, QWERTY zyxwvut; born 1943-05-17 (19430517)") == \
            "name [redacted]^[redacted], [redacted] [redacted]; born [redacted] ([redacted])"
        caplog.set_level(logging.INFO)
        logging.getLogger("ictus.pipelines.test").info("patient %s", "Zyxwvut^Qwerty")
        warnings.warn("The string \"Zyxwvut^Qwerty\" is odd", UserWarning)
        try:
            raise ValueError("bad PatientID PID-987654321")
        except ValueError:
            logging.getLogger("ictus.pipelines.test").exception("failed")
        text = caplog.text
    assert "[redacted]" in text and not leaks(text), text
    assert phi.redact("Zyxwvut") == "Zyxwvut"  # the scope closed: nothing is held any more
    assert phi.held_count() == held_before


def test_short_and_numeric_values_only_as_whole_tokens():
    from ictus.pipelines import phi

    with phi.phi_guard(["Li", "1234"]):
        assert phi.redact("Li listens to 1234 and 51234") == "[redacted] listens to [redacted] and 51234"


# -- ictus triage (real fast model) ----------------------------------------------------------
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, fast_models_dir):
    """``ictus -v triage`` (fast member, all outputs) of a study with identifiers and no Frame of Reference UID."""
    root = tmp_path_factory.mktemp("phi-cli")
    study = make_study(root / "study", NAME, strip_frame_of_reference=True)
    out = root / "out"
    proc = _ictus("triage", study, "--out", out, "--fast", "--models-dir", fast_models_dir, "--no-stroke")
    return proc, study, out


def test_cli_triage_leaks_nothing(cli_run):
    proc, _study, out = cli_run
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert leaks(proc.stdout) == [] and leaks(proc.stderr) == []
    for path, data in text_files(out).items():
        assert leaks(data) == [], path


def test_cli_triage_without_frame_of_reference_writes_every_output(cli_run):
    proc, study, out = cli_run
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    doc = json.loads((out / "findings.json").read_text())
    outputs = doc["outputs"]
    assert set(outputs) == {"json", "seg", "sr", "sc", "report"}
    assert all(o["status"] in ("written", "skipped") for o in outputs.values()), outputs
    assert "frame_of_reference_derived" in doc["qc"]["flags"]
    source = pydicom.dcmread(sorted(study.glob("*.dcm"))[0])
    for name in ("seg.dcm", "sr.dcm"):
        if name == "seg.dcm" and outputs["seg"]["status"] == "skipped":
            continue
        ds = pydicom.dcmread(out / name)
        assert str(ds.PatientName) == str(source.PatientName) == NAME  # the DICOM outputs keep the identity
        assert ds.PatientID == PHI["PatientID"] and ds.AccessionNumber == PHI["AccessionNumber"]
    if outputs["seg"]["status"] == "written":
        from ictus.pipelines.writers.common import derived_frame_of_reference_uid

        seg = pydicom.dcmread(out / "seg.dcm")
        assert seg.FrameOfReferenceUID == derived_frame_of_reference_uid(source.SeriesInstanceUID)
        assert outputs["seg"]["notes"] == ["frame_of_reference_derived"]


# -- a writer forced to fail --------------------------------------------------------------------
def test_one_failing_writer_costs_only_its_output(tmp_path, monkeypatch, cli_runner, caplog):
    """The SEG writer raises (quoting the patient's name); SR, key images, report and findings.json are
    still written, the exit code is 0 and one warning line names the SEG, without the name."""
    from ictus.pipelines.writers import seg as seg_writer

    _threshold_ensemble(monkeypatch)
    study = make_study(tmp_path / "study", NAME)

    def boom(result, sources):
        raise ValueError(f"refused for patient {sources[0].PatientName}")

    monkeypatch.setattr(seg_writer, "build_seg", boom)
    caplog.set_level(logging.INFO)
    code, stdout, stderr = cli_runner("triage", study, "--out", tmp_path / "out", "--no-stroke")
    assert code == 0, stderr
    assert "ictus: warning: seg not written: ValueError: refused for patient [redacted]" in stderr
    assert stderr.count("ictus: warning:") == 1
    doc = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert doc["outputs"]["seg"] == {"status": "failed",
                                     "reason": "ValueError: refused for patient [redacted]"}
    for kind in ("sr", "sc", "report", "json"):
        assert doc["outputs"][kind]["status"] == "written", doc["outputs"]
        for name in doc["outputs"][kind]["files"]:
            assert (tmp_path / "out" / name).is_file()
    assert not (tmp_path / "out" / "seg.dcm").exists()
    sr = pydicom.dcmread(tmp_path / "out" / "sr.dcm")
    assert str(sr.PatientName) == NAME
    assert leaks(stdout) == [] and leaks(stderr) == [] and leaks(caplog.text) == []
    assert leaks((tmp_path / "out" / "findings.json").read_bytes()) == []


# -- ictus batch ---------------------------------------------------------------------------------
def test_batch_leaks_nothing(tmp_path):
    studies = tmp_path / "studies"
    make_study(studies / "a", NAME)
    make_study(studies / "b", SINGLE)
    out = tmp_path / "out"
    proc = _ictus("batch", studies / "a", studies / "b", "--out", out, "--workers", "0", "--no-progress",
                  "--engine", "orthanc_helpers:ThresholdEngine", "--no-stroke", timeout=1200)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert leaks(proc.stdout) == [] and leaks(proc.stderr) == []
    for path, data in text_files(out).items():
        assert leaks(data) == [], path
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    assert all(r["outputs_failed"] == "" for r in rows)
    for sub in ("a", "b"):
        assert str(pydicom.dcmread(out / sub / "sr.dcm").PatientName) in (NAME, SINGLE)


# -- the notebook API --------------------------------------------------------------------------------
def test_api_triage_leaks_nothing(tmp_path, monkeypatch, capfd, caplog):
    from ictus.pipelines.api import triage

    _threshold_ensemble(monkeypatch)
    study = make_study(tmp_path / "study", SINGLE)
    caplog.set_level(logging.DEBUG)
    # the person-name warning is let through once per process: an earlier test in this worker
    # may have used it up, in Python's registry and in Ictus's logging filter
    for f in logging.getLogger("py.warnings").filters:
        if hasattr(f, "_seen"):
            monkeypatch.setattr(f, "_seen", False)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        result = triage(study, tmp_path / "out", stroke=False)
    captured = capfd.readouterr()
    assert leaks(captured.out) == [] and leaks(captured.err) == [] and leaks(caplog.text) == []
    assert "[redacted]" in caplog.text  # highdicom's person-name warning came through logging, redacted
    assert sum("unlikely to represent the intended person name" in r.getMessage() for r in caplog.records) <= 1
    assert result.outputs.failed == {}
    for path in result.outputs["sr"]:
        assert str(pydicom.dcmread(path).PatientName) == SINGLE
    for path, data in text_files(tmp_path / "out").items():
        assert leaks(data) == [], path


# -- ictus listen, one C-STORE round trip ----------------------------------------------------------
def test_listener_leaks_nothing(tmp_path):
    from orthanc_helpers import free_port, start_listener, stop_pid, storescu, wait_for, write_listener_config

    study = make_study(tmp_path / "study", SINGLE)
    port = free_port()
    spool = tmp_path / "spool"
    config = write_listener_config(tmp_path / "listener.toml", port=port, spool=spool, dest=None,
                                   quiet_period_s=1.0)
    with open(config, "a") as fh:
        fh.write("stroke = false\n")
    log_path = tmp_path / "listener.log"
    proc = start_listener(config, port, log_path)
    try:
        sent = storescu(port, study)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: "event=triaged" in log_path.read_text() or "triage_failed" in log_path.read_text(),
                 600, "the listener to triage the study")
    finally:
        stop_pid(proc)
    text = log_path.read_text()
    assert "event=triaged" in text, text[-3000:]
    assert leaks(text) == [] and leaks(sent.stdout) == [] and leaks(sent.stderr) == []
    status = subprocess.run([sys.executable, "-m", "ictus.pipelines.cli", "listen", "--config", str(config), "--status"],
                            capture_output=True, cwd=ROOT, env=_env(), timeout=120)
    assert leaks(status.stdout) == [] and leaks(status.stderr) == []
    results = list((spool / "results").rglob("findings.json"))
    assert results and leaks(results[0].read_bytes()) == []
    srs = list((spool / "results").rglob("sr.dcm"))
    assert srs and str(pydicom.dcmread(srs[0]).PatientName) == SINGLE
