"""Load run of the DICOM listener and the batch runner (a script, not a test).

    nice .venv/bin/python scripts/load_listener.py --senders 4 --studies 20 --stub-model
    nice .venv/bin/python scripts/load_listener.py --senders 1 --studies 2 --models-dir D   # the real model (fast)

1. Makes SENDERS x STUDIES small phantom studies (one phantom written with
   ictus.imaging.phantom, copied with new Study/Series/SOP UIDs per study).
2. Starts Orthanc (config in a temporary folder, loopback) and ``ictus listen``
   (``--stub-model``: the HU-threshold stand-in of tests/orthanc_helpers.py, i.e.
   the real pipeline without the network; otherwise the BLAST-CT fast member).
3. SENDERS threads each run dcmtk's storescu for their studies, one after the other.
4. Waits until every study is delivered, then counts sent / spooled / triaged /
   delivered (results found in Orthanc) and prints instances/s received,
   studies/min triaged and the latency from the last instance received to the
   results stored in Orthanc (the C-STORE success time).
5. With ``--batch N``: the same pipeline through ``run_batch`` on N of the
   studies with 1 and 2 local worker processes and a 2-worker Dask LocalCluster.

Prints a JSON report (also written to OUT/load-report.json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from orthanc_helpers import (free_port, start_listener, start_orthanc, stop_pid, storescu,  # noqa: E402
                             write_listener_config)


def make_studies(out: Path, n: int, matrix: int, spacing_mm: float, thickness_mm: float) -> list[tuple[Path, str, int]]:
    """n copies of one phantom with fresh UIDs; returns (folder, StudyInstanceUID, n_files)."""
    import pydicom
    from pydicom.uid import generate_uid

    from ictus.imaging.phantom import PhantomSpec, write_phantom

    base = out / "base"
    write_phantom(PhantomSpec(haemorrhage="IPH", haemorrhage_volume_ml=30, matrix=matrix, pixel_spacing_mm=spacing_mm,
                              slice_thickness_mm=thickness_mm, seed=7), base)
    files = sorted(base.rglob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    studies = []
    for i in range(n):
        folder = out / f"study-{i:03d}"
        folder.mkdir()
        study_uid, series_uid, frame_uid = (generate_uid(entropy_srcs=[f"load-{i}-{k}"]) for k in ("st", "se", "for"))
        for j, ds in enumerate(datasets):
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"load-{i}-{j}"])
            ds.PatientID = f"LOAD{i:03d}"
            ds.save_as(folder / f"CT{j:04d}.dcm", enforce_file_format=True)
        studies.append((folder, study_uid, len(datasets)))
    shutil.rmtree(base)
    return studies


def _db(spool: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{spool / 'queue.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def run_listener(args, studies, work: Path) -> dict:
    port = free_port()
    orthanc = start_orthanc(work / "orthanc", {"ictus": ("ICTUS", "127.0.0.1", port)})
    spool = work / "spool"
    engine = "orthanc_helpers:ThresholdEngine" if args.stub_model else None
    config = write_listener_config(work / "listener.toml", port=port, spool=spool, dest=orthanc,
                                   quiet_period_s=args.quiet_period_s, engine=engine, models_dir=args.models_dir,
                                   fast=True)
    if args.listener_workers > 1:
        text = config.read_text().replace("[listener]\n", f"[listener]\nworkers = {args.listener_workers}\n")
        config.write_text(text)
    proc = start_listener(config, port, work / "listener.log")
    report: dict = {}
    try:
        groups = [studies[i::args.senders] for i in range(args.senders)]
        sent_ok = {"instances": 0, "failures": 0}
        lock = threading.Lock()

        def sender(group):
            for folder, _uid, n in group:
                r = storescu(port, folder)
                with lock:
                    if r.returncode == 0:
                        sent_ok["instances"] += n
                    else:
                        sent_ok["failures"] += 1

        t0 = time.time()
        threads = [threading.Thread(target=sender, args=(g,)) for g in groups]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t_sent = time.time()
        uids = [u for _f, u, _n in studies]
        deadline = time.time() + args.timeout_s
        while time.time() < deadline:
            done = _db(spool, "SELECT COUNT(*) FROM studies WHERE state IN ('done','failed')")[0][0]
            if done >= len(uids):
                break
            time.sleep(1)
        t_end = time.time()
        spooled = _db(spool, "SELECT COUNT(*) FROM instances")[0][0]
        t_first, t_last = _db(spool, "SELECT MIN(received_at), MAX(received_at) FROM instances")[0]
        rows = _db(spool, "SELECT study_uid, state, triage_started_at, triaged_at, delivered_at, last_received_at "
                          "FROM studies")
        triaged = [r for r in rows if r[3] is not None and r[1] in ("sending", "done")]
        delivered = 0
        for uid in uids:
            expected = {r[0] for r in _db(spool, f"SELECT sop_uid FROM results WHERE study_uid='{uid}'")}
            found = {i["sop_uid"] for i in orthanc.study_instances(uid)}
            if expected and expected <= found:
                delivered += 1
        lat = sorted(r[4] - r[5] for r in rows if r[4] is not None)
        t_tri0 = min(r[2] for r in triaged) if triaged else None
        t_tri1 = max(r[3] for r in triaged) if triaged else None
        report = {
            "studies": len(uids),
            "instances_sent": sum(n for _f, _u, n in studies),
            "instances_acknowledged": sent_ok["instances"],
            "sender_failures": sent_ok["failures"],
            "instances_spooled": spooled,
            "studies_triaged": len(triaged),
            "studies_failed": sum(1 for r in rows if r[1] == "failed"),
            "studies_delivered_in_orthanc": delivered,
            "lost_instances": sum(n for _f, _u, n in studies) - spooled,
            "send_wall_s": round(t_sent - t0, 1),
            "instances_per_s_received": round(spooled / max(1e-6, t_last - t_first), 1),
            "studies_per_min_triaged": round(len(triaged) / max(1e-6, t_tri1 - t_tri0) * 60, 2) if triaged else None,
            "latency_last_instance_to_orthanc_s": {
                "median": round(statistics.median(lat), 1) if lat else None,
                "p90": round(lat[int(0.9 * (len(lat) - 1))], 1) if lat else None,
                "max": round(lat[-1], 1) if lat else None,
                "includes_quiet_period_s": args.quiet_period_s,
            },
            "total_wall_s": round(t_end - t0, 1),
            "timed_out": t_end >= deadline,
        }
    finally:
        stop_pid(proc)
        orthanc.stop()
    return report


def run_batches(args, studies, work: Path) -> dict:
    from ictus.pipelines.pacs.batch import StudyJob, run_batch
    from ictus.pipelines.triage import TriageOptions

    engine = "orthanc_helpers:ThresholdEngine" if args.stub_model else None
    options = TriageOptions(fast=True, models_dir=args.models_dir, threads=1)
    jobs = [StudyJob(f.name, str(f)) for f, _u, _n in studies[: args.batch]]
    out = {}
    for name, kw in (("processes_1", {"workers": 1}), ("processes_2", {"workers": 2}),
                     ("dask_local_2", {"workers": 2, "scheduler": "local"})):
        t0 = time.perf_counter()
        summary = run_batch(jobs, work / f"batch-{name}", options, engine=engine, **kw)
        wall = time.perf_counter() - t0
        out[name] = {"studies": len(jobs), "ok": summary.counts.get("ok", 0), "wall_s": round(wall, 1),
                     "studies_per_min": round(len(jobs) / wall * 60, 2),
                     "median_study_s": round(statistics.median(float(r["seconds"]) for r in summary.rows), 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--studies", type=int, default=20, help="studies per sender")
    p.add_argument("--stub-model", action="store_true", help="HU-threshold stand-in instead of the network")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--matrix", type=int, default=96)
    p.add_argument("--pixel-spacing-mm", type=float, default=2.4)
    p.add_argument("--slice-thickness-mm", type=float, default=10)
    p.add_argument("--quiet-period-s", type=float, default=2)
    p.add_argument("--listener-workers", type=int, default=1)
    p.add_argument("--timeout-s", type=float, default=3600)
    p.add_argument("--batch", type=int, default=0, help="also run N studies through run_batch (1, 2 workers, Dask)")
    p.add_argument("--no-listener", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="ictus-load-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    studies = make_studies(work / "studies", args.senders * args.studies, args.matrix, args.pixel_spacing_mm,
                           args.slice_thickness_mm)
    report = {"model": "threshold stand-in" if args.stub_model else "blast-ct fast (1 member)",
              "phantom": {"matrix": args.matrix, "pixel_spacing_mm": args.pixel_spacing_mm,
                          "slice_thickness_mm": args.slice_thickness_mm, "instances_per_study": studies[0][2]},
              "make_studies_s": round(time.perf_counter() - t0, 1)}
    if not args.no_listener:
        report["listener"] = run_listener(args, studies, work)
    if args.batch:
        report["batch"] = run_batches(args, studies, work)
    (work / "load-report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
