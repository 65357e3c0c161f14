"""End to end with real parts: Orthanc (the PACS), dcmtk's storescu/echoscu, ``ictus listen`` as a process.

Orthanc runs from a config in a temporary folder (loopback only, DICOM only
from the listed modalities, the Ictus listener declared as one of them). The
listener's model is a Hounsfield threshold (tests/orthanc_helpers.py) so the
rest of the pipeline (series choice, volume, brain, QC, measurements, writers)
is the real one and runs in seconds.
"""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from orthanc_helpers import (ROOT, ThresholdEngine, echoscu, free_port, start_listener, start_orthanc, stop_pid,
                             storescu, wait_for, write_listener_config)
from tests.conftest import shared_dicom

pytestmark = pytest.mark.slow


def _phantom(path: Path, seed: int) -> list[Path]:
    from ictus.imaging.phantom import PhantomSpec, write_phantom

    write_phantom(PhantomSpec(haemorrhage="IPH", haemorrhage_volume_ml=30, matrix=96, pixel_spacing_mm=2.4,
                              slice_thickness_mm=10, seed=seed), path)
    return sorted(path.rglob("*.dcm"))


def _study_uid(files: list[Path]) -> str:
    import pydicom

    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _db_rows(spool: Path, sql: str, args=()) -> list[tuple]:
    db = sqlite3.connect(f"file:{spool / 'queue.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _state(spool: Path, study_uid: str) -> str | None:
    try:
        rows = _db_rows(spool, "SELECT state FROM studies WHERE study_uid=?", (study_uid,))
    except sqlite3.OperationalError:
        return None
    return rows[0][0] if rows else None


def _results_in_orthanc(orthanc, study_uid: str) -> list[dict]:
    return [i for i in orthanc.study_instances(study_uid) if i["modality"] != "CT"]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc that accepts DICOM from ICTUS (the listener) and STORESCU only."""
    folder = tmp_path_factory.mktemp("orthanc")
    listener_port = free_port()
    orthanc = start_orthanc(folder, {"ictus": ("ICTUS", "127.0.0.1", listener_port),
                                     "storescu": ("STORESCU", "127.0.0.1", 104)})
    orthanc.listener_port = listener_port
    yield orthanc
    orthanc.stop()


@pytest.fixture
def listener(pacs, tmp_path):
    """Start/stop ``ictus listen`` (threshold model) sending to ``pacs``; yields a controller."""

    class Ctl:
        port = pacs.listener_port
        spool = tmp_path / "spool"
        status_port = free_port()
        log = tmp_path / "listener.log"
        config = write_listener_config(tmp_path / "listener.toml", port=port, spool=spool, dest=pacs,
                                       status_port=status_port)
        proc = None

        def start(self):
            self.proc = start_listener(self.config, self.port, self.log)
            return self.proc

        def kill9(self):
            stop_pid(self.proc, signal.SIGKILL)

        def log_text(self):
            return self.log.read_text(errors="replace")

    ctl = Ctl()
    ctl.start()
    yield ctl
    if ctl.proc is not None and ctl.proc.poll() is None:
        stop_pid(ctl.proc, signal.SIGTERM, timeout_s=60)


def test_orthanc_refuses_unlisted_modalities(pacs):
    assert echoscu(pacs.dicom_port, aet="STORESCU", called=pacs.aet).returncode == 0
    assert echoscu(pacs.dicom_port, aet="INTRUDER", called=pacs.aet).returncode != 0


def test_phantom_study_round_trip(pacs, listener, tmp_path):
    files = _phantom(tmp_path / "study", seed=101)
    uid = _study_uid(files)
    # the CT goes to the PACS as from a scanner, and to Ictus
    assert storescu(pacs.dicom_port, tmp_path / "study", called=pacs.aet).returncode == 0
    sent = storescu(listener.port, tmp_path / "study")
    assert sent.returncode == 0, sent.stderr[-2000:]

    wait_for(lambda: _state(listener.spool, uid) == "done", 180, "the study to be triaged and delivered")
    found = _results_in_orthanc(pacs, uid)
    modalities = sorted({i["modality"] for i in found})
    assert {"SEG", "SR"} <= set(modalities), modalities
    assert any(i["series_description"] and "key" in i["series_description"].lower() or i["modality"] in ("OT", "SC")
               for i in found), found
    assert "DOC" in modalities  # the report as Encapsulated PDF
    assert len([i for i in pacs.study_instances(uid) if i["modality"] == "CT"]) == len(files)

    spooled = _db_rows(listener.spool, "SELECT COUNT(*) FROM instances WHERE study_uid=?", (uid,))[0][0]
    assert spooled == len(files)
    sent_uids = {r[0] for r in _db_rows(listener.spool, "SELECT sop_uid FROM results WHERE sent_at IS NOT NULL")}
    assert sent_uids == {i["sop_uid"] for i in found}

    with urllib.request.urlopen(f"http://127.0.0.1:{listener.status_port}/health", timeout=10) as r:
        health = json.loads(r.read())
    assert health["processed"] == 1 and health["queue_length"] == 0 and health["state"] == "running"
    status = subprocess.run([sys.executable, "-m", "ictus.pipelines.cli", "listen", "--config", str(listener.config),
                             "--status"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert json.loads(status.stdout)["instances_received"] == len(files)
    # logs carry UIDs, never the patient's name or ID
    import pydicom

    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    text = listener.log_text()
    assert uid in text
    for phi in (str(ds.PatientName), str(ds.PatientID)):
        if phi:
            assert phi not in text

    # SIGTERM drains and exits 0
    assert stop_pid(listener.proc, signal.SIGTERM, timeout_s=60) == 0
    assert "event=stopped" in listener.log_text()


def test_unauthorised_ae_title_is_rejected(listener, tmp_path):
    assert echoscu(listener.port, aet="STORESCU").returncode == 0
    refused = echoscu(listener.port, aet="INTRUDER")
    assert refused.returncode != 0
    files = _phantom(tmp_path / "study", seed=102)
    sent = storescu(listener.port, tmp_path / "study", aet="INTRUDER")
    assert sent.returncode != 0
    assert "reject" in (sent.stdout + sent.stderr).lower()
    wait_for(lambda: "calling_aet=INTRUDER" in listener.log_text(), 10, "the rejection log line")
    line = next(ln for ln in listener.log_text().splitlines() if "calling_aet=INTRUDER" in ln)
    assert "event=association_rejected" in line and "reason=calling_aet_not_allowed" in line
    assert _state(listener.spool, _study_uid(files)) is None


def test_kill9_mid_study_and_mid_triage_loses_nothing(pacs, listener, tmp_path):
    files = _phantom(tmp_path / "study", seed=103)
    uid = _study_uid(files)
    first, rest = files[: len(files) // 2], files[len(files) // 2:]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for f in first:
        (tmp_path / "a" / f.name).symlink_to(f)
    for f in rest:
        (tmp_path / "b" / f.name).symlink_to(f)

    assert storescu(listener.port, tmp_path / "a").returncode == 0
    listener.kill9()  # mid-study: half the instances received, quiet period not over
    listener.start()
    assert _db_rows(listener.spool, "SELECT COUNT(*) FROM instances WHERE study_uid=?", (uid,))[0][0] == len(first)
    assert storescu(listener.port, tmp_path / "b").returncode == 0
    # kill again as soon as triage (or delivery) has started
    wait_for(lambda: _state(listener.spool, uid) in ("triaging", "sending", "done"), 120, "triage to start",
             interval_s=0.05)
    listener.kill9()
    listener.start()
    wait_for(lambda: _state(listener.spool, uid) == "done", 180, "delivery after the restart")

    assert _db_rows(listener.spool, "SELECT COUNT(*) FROM instances WHERE study_uid=?", (uid,))[0][0] == len(files)
    assert len(list((listener.spool / "incoming" / uid).glob("*.dcm"))) == len(files)
    found = _results_in_orthanc(pacs, uid)
    expected = {r[0] for r in _db_rows(listener.spool, "SELECT sop_uid FROM results WHERE study_uid=?", (uid,))}
    assert {i["sop_uid"] for i in found} == expected  # every result there
    assert len(found) == len(expected)  # and each exactly once
    assert {"SEG", "SR"} <= {i["modality"] for i in found}


def test_real_ge_study_through_the_listener(pacs, listener):
    study = shared_dicom("ge-head-tilt-variable-spacing")
    files = [p for p in study.rglob("*") if p.is_file()]
    sent = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "ICTUS", "+sd", "+r", "-nh", "127.0.0.1",
                           str(listener.port), str(study)], capture_output=True, text=True, timeout=600)
    spooled = _db_rows(listener.spool, "SELECT COUNT(*), COUNT(DISTINCT study_uid) FROM instances")[0]
    assert spooled[0] > 0, sent.stderr[-2000:]
    uid = _db_rows(listener.spool, "SELECT study_uid FROM studies")[0][0]
    wait_for(lambda: _state(listener.spool, uid) in ("done", "failed"), 300, "the GE study to be triaged")
    assert _state(listener.spool, uid) == "done", _db_rows(listener.spool, "SELECT error FROM studies")
    assert spooled[0] <= len(files)
    found = _results_in_orthanc(pacs, uid)
    modalities = {i["modality"] for i in found}
    assert {"SR", "OT", "DOC"} <= modalities, modalities  # SR, key images (secondary capture), report
    kinds = {r[0] for r in _db_rows(listener.spool, "SELECT kind FROM results WHERE study_uid=?", (uid,))}
    assert ("SEG" in modalities) == ("seg" in kinds)  # a SEG exists when the model labelled anything
    assert len(found) == _db_rows(listener.spool, "SELECT COUNT(*) FROM results WHERE sent_at IS NOT NULL")[0][0]


def test_orthanc_changes_poller(pacs, tmp_path):
    from ictus.pipelines.pacs.orthanc import OrthancClient, OrthancPoller
    from ictus.pipelines.triage import TriageOptions

    files = _phantom(tmp_path / "study", seed=104)
    uid = _study_uid(files)
    assert storescu(pacs.dicom_port, tmp_path / "study", called=pacs.aet).returncode == 0
    poller = OrthancPoller(OrthancClient(pacs.url), ThresholdEngine(TriageOptions(fast=True)), tmp_path / "work")

    def stable():
        return [r for r in poller.poll_once() if r["study_uid"] == uid]

    records = wait_for(stable, 60, "Orthanc's StableStudy change", interval_s=1)
    assert records[0]["status"] == "done"
    found = _results_in_orthanc(pacs, uid)
    assert {"SEG", "SR", "DOC"} <= {i["modality"] for i in found}
    assert {i["sop_uid"] for i in found} == set(records[0]["results"])
    # our uploads make the study stable again: the poller sees it and skips it (same sources)
    again = wait_for(stable, 60, "the second StableStudy change", interval_s=1)
    assert again[0]["status"] == "skipped"
    assert len(_results_in_orthanc(pacs, uid)) == len(found)


def test_unsent_results_survive_kill9(pacs, listener, tmp_path):
    """Results made while the PACS was unreachable are sent after a kill -9 and a restart, once."""
    files = _phantom(tmp_path / "study", seed=105)
    uid = _study_uid(files)
    good_config = listener.config.read_text()
    listener.kill9()
    listener.config.write_text(good_config.replace(f"port = {pacs.dicom_port}", f"port = {free_port()}"))
    listener.start()
    assert storescu(listener.port, tmp_path / "study").returncode == 0
    wait_for(lambda: _db_rows(listener.spool, "SELECT send_attempts FROM studies WHERE study_uid=? AND "
                                              "state='sending'", (uid,)), 120, "a failed delivery")
    listener.kill9()
    assert _results_in_orthanc(pacs, uid) == []
    listener.config.write_text(good_config)
    listener.start()
    wait_for(lambda: _state(listener.spool, uid) == "done", 120, "delivery after the restart")
    found = _results_in_orthanc(pacs, uid)
    expected = {r[0] for r in _db_rows(listener.spool, "SELECT sop_uid FROM results WHERE study_uid=?", (uid,))}
    assert {i["sop_uid"] for i in found} == expected and len(found) == len(expected)
