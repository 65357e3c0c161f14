#!/usr/bin/env python
"""Benchmark: whole ``ictus triage`` against the model alone, on a thin-slice study and the GE head.

Issue 13's targets: every stage other than the model together <= 5 s on a thin-slice
study, and the whole ``ictus triage`` process <= 1.2x the model time alone. Peer: the
model stage itself (``timings_s.segment`` of the same run: preprocessing, inference and
the way back), so the ratio says what everything else costs on top of it.

Each run is a fresh process (``ictus triage STUDY -o OUT`` with every output), so the
wall time includes Python start-up, imports, model loading and the writers; the peak
RSS is the process's own (``ru_maxrss`` of the child). Inputs:

* ``thin``: a 0.625 mm, 250-slice, 15-degree tilted phantom (512x512, 0.45 mm pixels,
  30 mL IPH), written by ``ictus phantom``;
* ``ge-head``: the real GE head with tilt and variable spacing from the shared data.

    python scripts/bench_triage.py [--runs 3] [--modes fast,default] [--only thin,ge-head] [--json out.json]

Nothing else should run on the machine meanwhile; medians are quoted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ICTUS = [sys.executable, "-m", "ictus.pipelines.cli"]
NON_MODEL = ("scan", "select", "volume", "grid", "brain", "qc", "anatomy", "midline", "measure", "ischaemia",
             "vessels", "findings")

# Runs a command and prints its wall time and its peak RSS (kB), for a fresh process per run.
_WRAPPER = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter(); rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "w = time.perf_counter() - t\n"
    "print(rc, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def shared_dir() -> Path:
    return Path(os.environ.get("ICTUS_SHARED_DIR", ROOT.parent / "shared")).resolve()


def make_thin(folder: Path) -> Path:
    """The thin-slice tilted phantom study (written once per benchmark run)."""
    study = folder / "thin"
    subprocess.run(ICTUS + ["phantom", str(study), "--slice-thickness-mm", "0.625", "--slices", "250",
                            "--gantry-tilt-deg", "15", "--haemorrhage", "IPH"], check=True,
                   stdout=subprocess.DEVNULL)
    return study


def run_once(study: Path, mode: str, out: Path) -> dict[str, Any]:
    """One whole ``ictus triage`` process; its wall time, peak RSS and stage times."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = ICTUS + ["triage", str(study), "-o", str(out)] + (["--fast"] if mode == "fast" else [])
    line = subprocess.run([sys.executable, "-c", _WRAPPER] + cmd, check=True, capture_output=True,
                          text=True).stdout.split()
    rc, wall_s, rss_kb = int(line[0]), float(line[1]), int(line[2])
    findings = json.loads((out / "findings.json").read_text()) if (out / "findings.json").is_file() else {}
    timings = findings.get("timings_s", {})
    model_s = float(timings.get("segment", float("nan")))
    other_s = float(sum(v for k, v in timings.items() if k in NON_MODEL))
    return {"rc": rc, "wall_s": wall_s, "peak_rss_gb": rss_kb / 1024 ** 2, "model_s": model_s,
            "non_model_s": other_s, "timings_s": timings,
            "blood_ml": (findings.get("ich") or {}).get("total_volume_ml")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modes", default="fast,default")
    ap.add_argument("--only", default="thin,ge-head")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (page cache, compiled kernels)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ictus-bench-triage-"))
    inputs: dict[str, Path] = {}
    wanted = args.only.split(",")
    if "thin" in wanted:
        inputs["thin"] = make_thin(work)
    ge = shared_dir() / "data" / "dicom" / "ge-head-tilt-variable-spacing"
    if "ge-head" in wanted and ge.is_dir():
        inputs["ge-head"] = ge
    results: dict[str, Any] = {}
    print("| input | mode | whole s | model s | whole / model | other stages s | peak RSS GB | blood mL |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for name, study in inputs.items():
            for mode in args.modes.split(","):
                for _ in range(args.warmup):
                    run_once(study, mode, work / "warm")
                runs = [run_once(study, mode, work / "out") for _ in range(args.runs)]
                med = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "model_s", "non_model_s",
                                                                         "peak_rss_gb")}
                stages = {k: statistics.median(r["timings_s"].get(k, 0.0) for r in runs)
                          for k in runs[0]["timings_s"]}
                med["whole_over_model"] = med["wall_s"] / med["model_s"]
                results[f"{name}/{mode}"] = {"median": med, "stages_median_s": stages, "runs": runs}
                print(f"| {name} | {mode} | {med['wall_s']:.1f} | {med['model_s']:.1f} | "
                      f"{med['whole_over_model']:.2f} | {med['non_model_s']:.1f} | {med['peak_rss_gb']:.2f} | "
                      f"{runs[0]['blood_ml']} |", flush=True)
                print("    stages (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    print(f"(benchmark took {time.perf_counter() - t0:.0f} s)")
    sys.exit(rc)
