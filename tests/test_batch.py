"""ictus batch: discovery, per-study isolation, resume, summary files, local processes and Dask.

Most tests use the threshold stand-in model (tests/orthanc_helpers.py: the real
pipeline with a HU threshold instead of the network); one runs the real
BLAST-CT member through ``ictus batch`` when the weights are in shared.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from ictus.imaging.errors import InvalidInputError, NoEligibleSeriesError
from ictus.pipelines.pacs.batch import StudyJob, discover, input_sha256, run_batch
from ictus.pipelines.triage import TriageOptions
from tests.conftest import blast_ct_weights

STUB = "orthanc_helpers:ThresholdEngine"


@pytest.fixture(scope="module")
def phantom_study(tmp_path_factory) -> Path:
    from ictus.imaging.phantom import PhantomSpec, write_phantom

    path = tmp_path_factory.mktemp("ph") / "haemorrhage"
    write_phantom(PhantomSpec(haemorrhage="IPH", haemorrhage_volume_ml=30, matrix=96, pixel_spacing_mm=2.4,
                              slice_thickness_mm=10, midline_shift_mm=5, seed=201), path)
    return path


def _bad_studies(root: Path, like: Path | None = None) -> dict[str, int]:
    """Folders that must fail, with the exit code of the error they must raise."""
    import pydicom

    junk = root / "junk"
    junk.mkdir()
    (junk / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"not really a dataset" * 10)
    codes = {"junk": InvalidInputError.exit_code}
    if like is not None:  # real DICOM, but no CT series: nothing eligible
        no_ct = root / "no_ct"
        no_ct.mkdir()
        for f in sorted(like.rglob("*.dcm"))[:4]:
            ds = pydicom.dcmread(f)
            ds.Modality = "MR"
            ds.save_as(no_ct / f.name)
        codes["no_ct"] = NoEligibleSeriesError.exit_code
    return codes


def test_discover_folders_of_studies_series_folders_and_manifest(phantom_study, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copytree(phantom_study, studies / "a")
    shutil.copytree(phantom_study / "series-002-axial", studies / "b")  # files directly in the study folder
    # a phantom study has its series in a sub-folder: it is one study, not a folder of studies
    assert [j.study_id for j in discover([phantom_study])] == ["haemorrhage"]
    assert [j.study_id for j in discover([studies])] == ["a", "b"]
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,study_id\nstudies/a,first\nstudies/b,\n")
    jobs = discover([manifest, studies / "a"])
    assert [j.study_id for j in jobs] == ["first", "b", "a"]
    assert Path(jobs[0].path) == studies / "a"
    # two sources with the same name get distinct output folders
    assert [j.study_id for j in discover([studies / "a", tmp_path / "studies" / "a"])] == ["a", "a-2"]
    with pytest.raises(InvalidInputError):
        discover([tmp_path / "missing"])
    bad = tmp_path / "bad.csv"
    bad.write_text("folder\nx\n")
    with pytest.raises(InvalidInputError, match="path"):
        discover([bad])


def test_input_hash_follows_content(phantom_study, tmp_path):
    copy = shutil.copytree(phantom_study, tmp_path / "copy")
    assert input_sha256(copy) == input_sha256(phantom_study)
    (copy / "ground_truth.json").write_text("{}")
    assert input_sha256(copy) != input_sha256(phantom_study)


def test_bad_study_isolated_summary_and_resume(phantom_study, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copytree(phantom_study, studies / "good")
    expected_codes = _bad_studies(studies, phantom_study)
    out = tmp_path / "out"
    options = TriageOptions(fast=True, threads=1)
    summary = run_batch([studies], out, options, workers=0, engine=STUB)

    rows = {r["study_id"]: r for r in summary.rows}
    assert set(rows) == {"good", *expected_codes}
    assert rows["good"]["status"] == "ok" and rows["good"]["exit_code"] == 0
    for name, code in expected_codes.items():
        assert rows[name]["status"] == "failed" and rows[name]["exit_code"] == code, rows[name]
        assert rows[name]["error"]
    findings = json.loads((out / "good" / "findings.json").read_text())
    assert rows["good"]["priority"] == findings["priority"]
    assert rows["good"]["ich_total_volume_ml"] == findings["ich"]["total_volume_ml"]
    assert rows["good"]["midline_shift_mm"] == findings["midline_shift_mm"]
    assert rows["good"]["qc_flags"] == findings["qc"]["flags"]

    with open(summary.csv_path, newline="") as fh:
        table = {r["study_id"]: r for r in csv.DictReader(fh)}
    assert table["good"]["priority"] == findings["priority"]
    assert float(table["good"]["ich_total_volume_ml"]) == pytest.approx(findings["ich"]["total_volume_ml"])
    assert table["good"]["qc_flags"] == ";".join(findings["qc"]["flags"])
    assert int(table["junk"]["exit_code"]) == expected_codes["junk"]
    assert float(table["good"]["seconds"]) > 0
    jsonl = [json.loads(line) for line in summary.jsonl_path.read_text().splitlines()]
    assert [r["study_id"] for r in jsonl] == [r["study_id"] for r in summary.rows]

    # resume: the good study is skipped (values kept), the bad ones are tried again
    before = (out / "good" / "findings.json").stat().st_mtime_ns
    again = run_batch([studies], out, options, workers=0, engine=STUB, resume=True)
    rows2 = {r["study_id"]: r for r in again.rows}
    assert rows2["good"]["status"] == "skipped"
    assert rows2["good"]["priority"] == findings["priority"]
    assert rows2["junk"]["status"] == "failed"
    assert (out / "good" / "findings.json").stat().st_mtime_ns == before

    # changed input: triaged again
    (studies / "good" / "ground_truth.json").write_text("{}")
    third = run_batch([studies / "good"], out, options, workers=0, engine=STUB, resume=True)
    assert third.rows[0]["status"] == "ok"
    # missing outputs: triaged again
    (out / "good" / "sr.dcm").unlink()
    fourth = run_batch([studies / "good"], out, options, workers=0, engine=STUB, resume=True)
    assert fourth.rows[0]["status"] == "ok" and (out / "good" / "sr.dcm").exists()


def test_dask_local_cluster_and_worker_processes(phantom_study, tmp_path):
    pytest.importorskip("dask.distributed")
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copytree(phantom_study, studies / "good")
    _bad_studies(studies, phantom_study)
    options = TriageOptions(fast=True, threads=1)
    from dask.distributed import LocalCluster

    dask = run_batch([studies], tmp_path / "dask", options, scheduler="local", workers=2, engine=STUB)
    procs = run_batch([studies], tmp_path / "procs", options, workers=2, engine=STUB)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        remote = run_batch([studies / "good"], tmp_path / "remote", options, scheduler=cluster.scheduler_address,
                           engine=STUB)
    assert remote.rows[0]["status"] == "ok"
    for summary in (dask, procs):
        rows = {r["study_id"]: r for r in summary.rows}
        assert rows["good"]["status"] == "ok", rows["good"]
        assert rows["junk"]["status"] == "failed" and rows["junk"]["exit_code"] == InvalidInputError.exit_code
        assert (Path(rows["good"]["out_dir"]) / "seg.dcm").exists()
    # same pipeline, same numbers, whichever executor ran it
    assert {r["study_id"]: r["priority"] for r in dask.rows} == {r["study_id"]: r["priority"] for r in procs.rows}
    # ran in worker processes, not here
    import os

    assert all(not r["worker"].endswith(f":{os.getpid()}") for r in dask.rows + procs.rows)


def test_unknown_scheduler_is_refused(tmp_path, phantom_study):
    with pytest.raises(InvalidInputError, match="scheduler"):
        run_batch([StudyJob("x", str(phantom_study))], tmp_path, TriageOptions(), scheduler="ftp://nowhere",
                  engine=STUB)


@pytest.mark.slow
def test_cli_batch_with_the_real_model(phantom_study, tmp_path, cli_runner):
    weights = blast_ct_weights()
    models = tmp_path / "models"
    code, _out, err = cli_runner("models", "pull", "blast-ct", "--from", weights, "--models-dir", models)
    assert code == 0, err
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copytree(phantom_study, studies / "good")
    expected_codes = _bad_studies(studies, phantom_study)
    out = tmp_path / "out"
    # one onnxruntime thread: spinning intra-op threads on a busy 2-core machine are several times slower
    code, stdout, _err = cli_runner("batch", studies, "--out", out, "--fast", "--models-dir", models,
                                    "--workers", "1", "--threads", "1", "--no-progress")
    assert code == 0
    assert "1 ok" in stdout and "2 failed" in stdout
    rows = {r["study_id"]: r for r in map(json.loads, (out / "summary.jsonl").read_text().splitlines())}
    findings = json.loads((out / "good" / "findings.json").read_text())
    assert rows["good"]["priority"] == findings["priority"]
    assert findings["provenance"]["models"][0]["members"], "the real model ran"
    truth = json.loads((phantom_study / "ground_truth.json").read_text())
    assert findings["ich"]["present"] is True
    assert findings["ich"]["total_volume_ml"] == pytest.approx(truth["ich_total_volume_ml"]["on_grid_ml"], rel=0.6)
    for name, code in expected_codes.items():
        assert rows[name]["exit_code"] == code
    # resume through the CLI: nothing runs the model again
    code, stdout, _ = cli_runner("batch", studies / "good", "--out", out, "--fast", "--models-dir", models,
                                 "--resume", "--workers", "0", "--no-progress")
    assert code == 0 and "1 skipped" in stdout
