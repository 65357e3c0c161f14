"""Atomic writes: whole files or nothing, and no half-written output set when a writer fails."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from ictus.imaging import atomic
from ictus.imaging.errors import OutputError
from ictus.imaging.volume import volume_from_array
from ictus.models.registry import get_card
from ictus.pipelines.triage import TriageResult
from ictus.pipelines.writers import report, write_outputs
from tests.writers_support import findings_for, segmentation_from_labels


@pytest.fixture
def small_result():
    """A synthetic 12 x 64 x 64 'head' with an IPH cube (no DICOM sources)."""
    hu = np.full((12, 64, 64), -1000.0, np.float32)
    yy, xx = np.mgrid[:64, :64]
    hu[:, (yy - 32) ** 2 + (xx - 32) ** 2 < 28 ** 2] = 35.0
    labels = np.zeros(hu.shape, np.uint8)
    labels[4:8, 20:30, 20:30] = 1
    volume = volume_from_array(hu, spacing_mm=(2.0, 2.0, 5.0), study_instance_uid="1.2.3", series_instance_uid="1.2.3.4")
    findings = findings_for(volume, labels, shift_mm=None, direction=None)
    return TriageResult(volume=volume, segmentation=segmentation_from_labels(labels), findings=findings,
                        card=get_card("blast-ct"))


def _entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_write_text_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.json"
    atomic.write_text(target, "old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
    assert _entries(tmp_path) == ["f.json"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # an ordinary, readable file


def test_failing_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.json"
    atomic.write_text(target, "old")

    def broken(path):
        path.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic.write_with(target, broken)
    assert target.read_text() == "old" and _entries(tmp_path) == ["f.json"]


def test_unwritable_folder_is_an_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        atomic.write_text(blocker / "sub" / "f.json", "x")


def test_commit_swaps_a_whole_folder(tmp_path):
    dest = tmp_path / "keyimages"
    dest.mkdir()
    (dest / "old1").write_text("1")
    (dest / "old2").write_text("2")
    with atomic.staging_dir(tmp_path) as stage:
        new = stage / "keyimages"
        new.mkdir()
        (new / "KI0001.dcm").write_text("a")
        atomic.commit(new, dest)
    assert _entries(dest) == ["KI0001.dcm"]
    assert _entries(tmp_path) == ["keyimages"]


def test_outputs_fail_one_by_one_and_findings_json_says_which(small_result, tmp_path, monkeypatch):
    """A crashing PDF renderer costs report.pdf only: report.html and findings.json are still written,
    findings.json names the failure, and the old report.pdf is not left next to the new findings."""
    import json

    out = tmp_path / "out"
    written = write_outputs(small_result, out, outputs=("json", "report"))
    assert set(written) == {"json", "report"}
    assert (out / "report.pdf").exists() or "report.pdf" in (written.status["report"].reason or "")
    changed = dataclasses.replace(small_result, findings=dataclasses.replace(small_result.findings, priority="routine"))

    def boom(*args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(report, "render_pdf", boom)
    written = write_outputs(changed, out, outputs=("json", "report"))
    doc = json.loads((out / "findings.json").read_text())
    assert doc["priority"] == "routine"
    assert doc["outputs"]["report"] == {"status": "written", "files": ["report.html"],
                                        "reason": "report.pdf not written (RuntimeError: renderer crashed)"}
    assert doc["outputs"]["seg"] == {"status": "skipped", "reason": "not requested"}
    assert doc["outputs"]["json"] == {"status": "written", "files": ["findings.json"]}
    assert not (out / "report.pdf").exists()  # this run's findings never sit next to an old PDF
    assert _entries(out) == ["findings.json", "report.html"]  # no staging folder or temp file left behind


def test_missing_source_files_fail_the_dicom_outputs_only(small_result, tmp_path):
    import json

    gone = dataclasses.replace(small_result.volume, source_paths=(str(tmp_path / "nope.dcm"),))
    result = dataclasses.replace(small_result, volume=gone)
    written = write_outputs(result, tmp_path / "out")
    assert set(written) == {"json", "report"}
    assert set(written.failed) == {"seg", "sr", "sc"}
    doc = json.loads((tmp_path / "out" / "findings.json").read_text())
    for kind in ("seg", "sr", "sc"):
        assert doc["outputs"][kind]["status"] == "failed"
        assert "cannot be read again" in doc["outputs"][kind]["reason"]
    assert not (tmp_path / "out" / "seg.dcm").exists()


def test_unwritable_findings_json_is_an_output_error(small_result, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputError):
        write_outputs(small_result, out, outputs=("json", "report"), fail={"json": OSError(28, "No space left on device")})
    assert (out / "report.html").exists() and not (out / "findings.json").exists()


def test_report_without_sources_or_midline(small_result, tmp_path):
    written = write_outputs(small_result, tmp_path / "out", outputs=("report",), lang="kk")
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "өлшенбеді" in html  # midline not measured, in Kazakh
    assert written["report"][0].endswith("report.html")
    assert os.path.getsize(written["report"][0]) > 10_000  # key image inlined


def test_stale_staging_folders_of_killed_runs_are_removed(tmp_path):
    stale = tmp_path / ".ictus-outputs-dead"
    stale.mkdir()
    (stale / "findings.json").write_text("{}")
    fresh = tmp_path / ".ictus-outputs-running"
    fresh.mkdir()
    os.utime(stale, (0, 0))
    with atomic.staging_dir(tmp_path):
        pass
    assert not stale.exists() and fresh.exists()  # a concurrent, recent run is left alone
