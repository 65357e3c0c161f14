"""Benchmark of the model runtime (issue 3, "Speed and memory"), not a test.

Inputs: the project phantom (512x512x40 at 0.45x0.45x5 mm, 30 mL IPH), written
as DICOM, and the real GE head in ``$ICTUS_SHARED_DIR/data/dicom``. Each timed
run is study folder -> label map (``build_volume`` + ``Ensemble.segment``), in
a fresh child process so that its peak RSS is its own; the median of
``--runs`` runs is reported, with the process CPU time (the load on a shared
machine inflates wall time, not CPU time).

Optional parts:
- ``--peer``: the reference ``blast-ct`` CLI (one member, torch) on the same
  volume as NIfTI, once, offline (symlinked V1 weights under
  ``$BLAST_CT_CACHE_DIR``); reports its wall time, peak RSS and our ratio
  (``--peer-timeout-s`` stops it and reports a lower bound).
- ``--agreement``: every shortcut against the plain 12-member fp32 ensemble on
  the 1 mm model grid (Dice per class, total blood volume). Heavy: 12 members
  over every soft-tissue tile of both inputs.
- ``--agreement-int8``: int8 members (``precision="int8"``: NNCF int8 on OpenVINO when both are
  installed, else onnxruntime's QDQ) against fp32, with the same criteria: fast (member 1)
  int8 vs fast fp32, the default cascade with int8 members vs the plain 12-member fp32
  ensemble, the plain int8 ensemble vs the plain fp32 one. The fp32 maps are kept in
  ``--work``/agreement-cache (delete it after changing the members). Heavy: 24 member passes.
- ``--agreement-int8-quick``: int8 against fp32 in the same mode (fast, and the default
  cascade), as the runtime computes them; ~5x cheaper (no plain ensemble).
- ``--int8-speed``: member 1 on one window of a 90^3 output tile, int8 vs fp32 on the chosen
  engine, in this process, interleaved, median of ``--runs``.
- ``--reference``: member 1, ours vs blast-ct's own network module and patch
  grid on the whole preprocessed phantom (label Dice per class).
- ``--backends onnxruntime,openvino``: each mode on each inference engine in the
  same run (runs interleaved), with the ratio to the first one named.
- ``--floor``: this machine's convolution rate with the chosen engine (member 1
  on one window of the largest tile, GMAC from the card's cost model), the floor
  of each input (the intracranial voxels the model needs, times the cost per
  output voxel at that tile; for the default ensemble plus the other members on
  the voxels the cascade sent them) and each timed mode as a ratio to its floor,
  with the tile plans (below); with ``--peer`` too, the peer's ratio to fast mode
  and to fast mode's floor.
- ``--plans``: the runtime's tile plan of each input without inference: the
  fixed grid of bricks (the previous default: the cheapest of the card's tile
  sizes, each brick shrunk to the intracranial voxels) against the default cover
  (:func:`ictus.models.runtime.plan_cover`): tiles, output voxels, estimated GMAC
  (card's cost model, one member), output voxels over the intracranial voxels
  needed, planning time. Every timed run also records its computed/needed ratio.

Usage: ``nice .venv/bin/python scripts/bench_model.py --runs 3 [--peer] [--agreement] [--reference]``
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAMES = ("background", "IPH", "EAH", "oedema", "IVH")
BLOOD = (1, 2, 4)


def shared_dir() -> Path:
    return Path(os.environ.get("ICTUS_SHARED_DIR", ROOT.parent / "shared")).resolve()


def members_dir(work: Path) -> list[Path]:
    """The 12 members as ONNX (converted into ``work`` with ictus.models.onnx_build)."""
    from ictus.models.onnx_build import convert_member

    weights = shared_dir() / "models" / "blast-ct" / "saved_models_v1"
    out = []
    for k in range(1, 13):
        onnx_path = work / "onnx" / f"model_{k}.onnx"
        if not onnx_path.exists():
            convert_member(weights / f"model_{k}.pt", onnx_path)
        out.append(onnx_path)
    return out


def study_dirs(work: Path) -> dict[str, Path]:
    from ictus.imaging.phantom import PhantomSpec, write_phantom

    phantom = work / "phantom-iph30"
    if not phantom.exists():
        write_phantom(PhantomSpec(haemorrhage="IPH", haemorrhage_volume_ml=30, n_slices=40), phantom)
    out = {"phantom_512x512x40": phantom / "series-002-axial"}
    for kind in ("IVH", "EAH"):
        d = work / f"phantom-{kind.lower()}30"
        if not d.exists():
            write_phantom(PhantomSpec(haemorrhage=kind, haemorrhage_volume_ml=30, n_slices=40), d)
        out[f"phantom_{kind.lower()}30_512x512x40"] = d / "series-002-axial"
    ge = shared_dir() / "data" / "dicom" / "ge-head-tilt-variable-spacing"
    if ge.exists():
        out["ge_head"] = ge
    return out


def blast_ct_card():
    """The shipped BLAST-CT card (geometry, classes, window for the runtime)."""
    from ictus.models.registry import get_card

    return get_card("blast-ct")


def load_volume(study: Path):
    from ictus.imaging.build import build_volume

    return build_volume(sorted(p for p in study.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", "")))


# -- one timed run, in a child process ------------------------------------------------
def child(args: argparse.Namespace) -> None:
    from ictus.models.runtime import Ensemble

    members = [Path(p) for p in args.members.split(",")]
    t0 = time.perf_counter()
    c0 = time.process_time()
    volume = load_volume(Path(args.study))
    ens = Ensemble.from_card(blast_ct_card(), members, threads=args.threads, precision=args.precision,
                             backend=args.backend)
    seg = ens.segment(volume, fast=args.mode == "fast", **json.loads(args.options))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    blood_ml = float(np.isin(seg.labels, BLOOD).sum() * volume.voxel_volume_ml)
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_gb": rss_gb, "blood_ml": blood_ml,
                      "info": {k: v for k, v in seg.info.items()}}, default=str))


def run_child(study: Path, members: list[Path], mode: str, precision: str, threads: int, options: dict,
              backend: str = "auto") -> dict:
    cmd = [sys.executable, __file__, "--child", "--study", str(study), "--members", ",".join(map(str, members)),
           "--mode", mode, "--precision", precision, "--threads", str(threads), "--options", json.dumps(options),
           "--backend", backend]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(results: list[dict], mode: str, precision: str, options: dict, backend: str = "auto") -> dict:
    med = lambda key: statistics.median(r[key] for r in results)  # noqa: E731
    return {"mode": mode, "precision": precision, "backend": results[-1]["info"].get("backend", backend),
            "options": options, "runs": len(results),
            "wall_s_median": round(med("wall_s"), 2), "cpu_s_median": round(med("cpu_s"), 2),
            "peak_rss_gb_max": round(max(r["peak_rss_gb"] for r in results), 2),
            "blood_ml": round(results[-1]["blood_ml"], 2),
            "computed_over_needed": results[-1]["info"].get("computed_over_needed"), "info": results[-1]["info"]}


def timed(study: Path, members: list[Path], mode: str, precision: str, threads: int, runs: int, options: dict,
          backend: str = "auto") -> dict:
    results = [run_child(study, members, mode, precision, threads, options, backend) for _ in range(runs)]
    return summarise(results, mode, precision, options, backend)


def timed_backends(study: Path, members: list[Path], mode: str, precision: str, threads: int, runs: int,
                   backends: list[str]) -> dict:
    """Each backend ``runs`` times, interleaved (a drift in machine load hits all alike), and the
    ratio of each median wall time to the first backend's."""
    results: dict[str, list[dict]] = {b: [] for b in backends}
    for _ in range(runs):
        for b in backends:
            results[b].append(run_child(study, members, mode, precision, threads, {}, b))
    out = {b: summarise(rs, mode, precision, {}, b) for b, rs in results.items()}
    first = out[backends[0]]["wall_s_median"]
    for b in backends[1:]:
        out[f"ratio_{backends[0]}_over_{b}"] = round(first / out[b]["wall_s_median"], 2)
    return out


# -- the floor ---------------------------------------------------------------------------
def conv_rate(member: Path, backend: str, threads: int, runs: int = 3) -> dict:
    """Member 1 on one window of the largest tile: seconds, GMAC (card's cost model), GMAC/s,
    and the cost per output voxel at that tile."""
    from ictus.models.backends import choose_backend, load_runner
    from ictus.models.geometry import TileGeometry
    from ictus.models.runtime import load_without_denormals

    geometry = TileGeometry.from_card(blast_ct_card())
    tile = max(geometry.tile_candidates_vox)
    n = geometry.window_vox(tile)
    chosen = choose_backend(backend)
    runner = load_runner(chosen, load_without_denormals(member), threads=threads)
    window = np.random.default_rng(0).uniform(-1.0, 1.0, (1, 1, n, n, n)).astype(np.float32)
    runner.run(window)  # warm-up (compilation, first allocation)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(window)
        times.append(time.perf_counter() - t0)
    wall = statistics.median(times)
    gmac = geometry.estimated_gmac((tile, tile, tile))
    return {"backend": chosen, "tile_vox": tile, "window_vox": n, "wall_s_median": round(wall, 3),
            "gmac": round(gmac, 1), "gmac_per_s": round(gmac / wall, 1),
            "us_per_output_voxel": round(wall / tile**3 * 1e6, 3)}


def model_input_of(study: Path):
    """(tile geometry, model input) of one input, prepared as the runtime prepares it."""
    from ictus.models.geometry import TileGeometry
    from ictus.models.preprocess import preprocess

    card = blast_ct_card()
    geometry = TileGeometry.from_card(card)
    model_input = preprocess(load_volume(study), spacing_mm=tuple(card.preprocessing.spacing_mm),
                             window_hu=tuple(card.preprocessing.window_hu), tile_vox=max(geometry.tile_candidates_vox),
                             context_vox=geometry.context_vox, phase_vox=geometry.tile_multiple_vox)
    return geometry, model_input


def floor_for(study: Path, rate: dict, n_members: int, info_full: dict | None) -> dict:
    """Needed voxels (intracranial soft tissue on the 1 mm grid, the runtime's ``deep`` mask) x
    the cost per output voxel; the default ensemble adds the other members on the voxels that
    the cascade sent them (``ensemble_voxels`` of the timed run)."""
    from ictus.models.runtime import needed_voxels

    _, model_input = model_input_of(study)
    needed = needed_voxels(model_input)
    per_voxel_s = rate["us_per_output_voxel"] * 1e-6
    out = {"needed_voxels": needed, "floor_fast_s": round(needed * per_voxel_s, 2)}
    if info_full is not None:
        extra = int(info_full.get("ensemble_voxels", 0)) * (n_members - 1)
        out["floor_default_s"] = round((needed + extra) * per_voxel_s, 2)
    return out


def plan_numbers(study: Path) -> dict:
    """The tile plans of one input (deterministic, no inference): the previous default (the
    cheapest fixed grid of the card's tile sizes, bricks shrunk to the intracranial voxels)
    and the runtime's default cover; output voxels, estimated GMAC of one member (the card's
    cost model), output voxels / intracranial voxels needed."""
    from ictus.models.runtime import choose_tile_vox, needed_voxels, plan_tiles

    geometry, model_input = model_input_of(study)
    needed = needed_voxels(model_input)
    t0 = time.perf_counter()
    grid = min((plan_tiles(model_input, t, geometry) for t in geometry.tile_candidates_vox),
               key=lambda p: p.estimated_gmac)
    t1 = time.perf_counter()
    new = choose_tile_vox(model_input, geometry)  # the runtime's default plan
    t2 = time.perf_counter()

    def row(plan, seconds: float) -> dict:
        return {"planner": plan.planner, "tile_vox": plan.tile_vox, "tiles": len(plan.tiles),
                "output_voxels": plan.output_voxels, "estimated_gmac": round(plan.estimated_gmac, 1),
                "computed_over_needed": round(plan.output_voxels / needed, 3) if needed else None,
                "plan_s": round(seconds, 3)}

    out = {"needed_voxels": needed, "grid_previous": row(grid, t1 - t0), "default": row(new, t2 - t1)}
    if grid.estimated_gmac:
        out["default_over_grid_gmac"] = round(new.estimated_gmac / grid.estimated_gmac, 3)
    return out


# -- the peer: blast-ct CLI -------------------------------------------------------------
def run_peer(volume, work: Path, timeout_s: float | None = None) -> dict:
    import SimpleITK as sitk

    cache = work / "blast_ct_cache"
    (cache / "saved_models").mkdir(parents=True, exist_ok=True)
    weights = shared_dir() / "models" / "blast-ct" / "saved_models_v1"
    for k in range(1, 16):  # the CLI resolves 1..15 at start-up; 13..15 only need to exist
        link = cache / "saved_models" / f"model_{k}.torch_model"
        if not link.exists():
            link.symlink_to(weights / f"model_{min(k, 12)}.pt")
    nii = work / "peer_input.nii.gz"
    sitk.WriteImage(volume.image, str(nii))
    out = work / "peer_output.nii.gz"
    env = dict(os.environ, BLAST_CT_CACHE_DIR=str(cache))
    exe = Path(sys.executable).with_name("blast-ct")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        subprocess.run([str(exe), "--input", str(nii), "--output", str(out), "--device", "cpu"], env=env, check=True,
                       capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:  # record a lower bound instead of losing the run
        return {"finished": False, "wall_s": round(time.perf_counter() - t0, 1), "labels": None,
                "note": f"killed after the --peer-timeout-s of {timeout_s:g} s"}
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out))).astype(np.uint8)
    return {"finished": True, "wall_s": round(wall, 1), "cpu_s": round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 1),
            "peak_rss_gb_children_max": round(after.ru_maxrss / 1024**2, 2),
            "blood_ml": round(float(np.isin(labels, BLOOD).sum() * volume.voxel_volume_ml), 2), "labels": labels}


# -- agreement of the shortcuts with the plain ensemble ------------------------------------
def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    s = int(a.sum()) + int(b.sum())
    return None if s == 0 else round(2.0 * float((a & b).sum()) / s, 4)


def compare(labels: np.ndarray, ref: np.ndarray) -> dict:
    out = {NAMES[c]: {"dice": dice(labels == c, ref == c), "ml": round(float((labels == c).sum()) / 1000, 2),
                      "ref_ml": round(float((ref == c).sum()) / 1000, 2)} for c in range(1, 5)}
    blood, ref_blood = float(np.isin(labels, BLOOD).sum()) / 1000, float(np.isin(ref, BLOOD).sum()) / 1000
    out["blood_ml"], out["ref_blood_ml"] = round(blood, 2), round(ref_blood, 2)
    out["blood_diff_pct"] = None if ref_blood == 0 else round(100 * (blood - ref_blood) / ref_blood, 2)
    present = [out[NAMES[c]]["dice"] for c in range(1, 5) if out[NAMES[c]]["ref_ml"] > 0 or out[NAMES[c]]["ml"] > 0]
    out["meets_issue_3"] = bool(all(d is not None and d >= 0.98 for d in present)
                                and (out["blood_diff_pct"] is None or abs(out["blood_diff_pct"]) <= 2))
    return out


def agreement(volume, members: list[Path], threads: int, thresholds=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5)) -> dict:
    """The shortcuts against the plain ensemble (12 fp32 members, mean softmax, on
    every tile of the head box that holds soft tissue), on the 1 mm model grid.

    Every member runs once over those tiles; the variants are then assembled from
    the per-member maps exactly as the runtime assembles them (a tiled result does
    not depend on the tiling, so masking and per-tile selection reproduce each
    variant). Member 1 also runs on every head-box tile (``skip="none"``), which
    checks the tissue rule itself, and in int8."""
    from ictus.models.preprocess import preprocess
    from ictus.models.runtime import Ensemble, _tile_slices, choose_tile_vox, unsure_brick

    mi = preprocess(volume, tile_vox=90)
    shape = mi.array.shape
    ens = Ensemble.from_card(blast_ct_card(), members, threads=threads)
    plan_i = choose_tile_vox(mi, ens.geometry, "intracranial")  # the runtime's default plan
    result: dict = {"tiles_intracranial": [len(plan_i.tiles), plan_i.tile_vox]}
    acc = np.zeros((len(NAMES),) + shape, np.float32)
    t0 = time.perf_counter()
    first = None
    for k in range(len(members)):
        p, _, _ = ens.predict_box(mi, [k], tile_vox=60, skip="tissue")
        acc += p
        if k == 0:
            first = p
        del p
    result["all_members_fp32_s"] = round(time.perf_counter() - t0, 1)
    acc /= len(members)
    plain = acc.argmax(0)
    m1_none, _, _ = ens.predict_box(mi, [0], tile_vox=60, skip="none")
    m1_int8, _, _ = Ensemble.from_card(blast_ct_card(), members[:1], threads=threads, precision="int8").predict_box(
        mi, [0], tile_vox=60, skip="tissue")

    def assemble(thr: float | None, n_members: int) -> tuple[np.ndarray, int]:
        """The runtime's default method: intracranial tiles, member 1, then the
        ensemble on each tile's unsure sub-brick (``thr`` None: whole tile)."""
        lab = np.zeros(shape, np.int64)
        n_vox = 0
        for start, size in plan_i.tiles:
            sl = _tile_slices(mi, start, size)[1]
            lab[sl] = first[(slice(None),) + sl].argmax(0)
            if n_members == 1:
                continue
            sub = (tuple(start), tuple(size)) if thr is None else unsure_brick(first[0][sl], thr, start, ens.geometry.tile_multiple_vox)
            if sub is None:
                continue
            sub_sl = _tile_slices(mi, *sub)[1]
            lab[sub_sl] = acc[(slice(None),) + sub_sl].argmax(0)
            n_vox += int(np.prod([b.stop - b.start for b in sub_sl]))
        return lab, n_vox

    v = result["vs_plain_12_fp32"] = {}
    v["member1_fp32_tissue"] = compare(first.argmax(0), plain)
    v["member1_fp32_all_tiles_vs_tissue"] = compare(m1_none.argmax(0), first.argmax(0))
    v["member1_int8_tissue"] = compare(m1_int8.argmax(0), plain)
    lab, _ = assemble(None, 1)
    v["fast_member1_intracranial"] = compare(lab, plain)
    lab, _ = assemble(None, len(members))
    v["ensemble_intracranial"] = compare(lab, plain)
    for thr in thresholds:
        lab, n_vox = assemble(thr, len(members))
        v[f"cascade{thr}_intracranial"] = dict(compare(lab, plain), ensemble_voxels=n_vox,
                                               member1_voxels=plan_i.output_voxels)
    return result


# -- int8 against fp32 ---------------------------------------------------------------------
def _fast_labels(first: np.ndarray, plan, mi) -> np.ndarray:
    """Fast mode's labels (member 1 on the runtime's intracranial tiles) from member 1's map."""
    from ictus.models.runtime import _tile_slices

    lab = np.zeros(mi.array.shape, np.uint8)
    for start, size in plan.tiles:
        sl = _tile_slices(mi, start, size)[1]
        lab[sl] = first[(slice(None),) + sl].argmax(0)
    return lab


def _cascade_labels(first: np.ndarray, ensemble_labels: np.ndarray, plan, mi, threshold: float,
                    phase: int) -> tuple[np.ndarray, int]:
    """The default cascade's labels as the runtime computes them: member 1 on the intracranial
    tiles, the ensemble (``ensemble_labels``: its argmax on every tissue tile) on each tile's
    unsure sub-brick."""
    from ictus.models.runtime import _tile_slices, unsure_brick

    lab = _fast_labels(first, plan, mi)
    n_vox = 0
    for start, size in plan.tiles:
        sl = _tile_slices(mi, start, size)[1]
        sub = unsure_brick(first[0][sl], threshold, start, phase)
        if sub is None:
            continue
        sub_sl = _tile_slices(mi, *sub)[1]
        lab[sub_sl] = ensemble_labels[sub_sl]
        n_vox += int(np.prod([b.stop - b.start for b in sub_sl]))
    return lab, n_vox


def _member_maps(ens, mi, n: int, tile_vox: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Member 1's probabilities and the mean-softmax labels of ``n`` members, over every
    soft-tissue tile (``tile_vox``), with each member's seconds."""
    acc = first = None
    seconds = []
    for k in range(n):
        t0 = time.perf_counter()
        p, _, _ = ens.predict_box(mi, [k], tile_vox=tile_vox, skip="tissue")
        seconds.append(round(time.perf_counter() - t0, 1))
        if k == 0:
            first = p.copy()
        if acc is None:
            acc = p
        else:
            acc += p
        del p
    assert acc is not None and first is not None
    return first, acc.argmax(0).astype(np.uint8), seconds


def agreement_int8(volume, members: list[Path], threads: int, cache: Path | None = None,
                   threshold: float | None = None) -> dict:
    """int8 members against fp32 (see the module docstring) on the 1 mm model grid. Reference:
    the plain fp32 ensemble (every member on every soft-tissue tile, mean softmax)."""
    from ictus.models.preprocess import preprocess
    from ictus.models.runtime import DEFAULT_CASCADE_THRESHOLD, Ensemble, choose_tile_vox

    thr = DEFAULT_CASCADE_THRESHOLD if threshold is None else threshold
    card = blast_ct_card()
    mi = preprocess(volume, tile_vox=90)
    ens32 = Ensemble.from_card(card, members, threads=threads)
    ens8 = Ensemble.from_card(card, members, threads=threads, precision="int8")
    plan = choose_tile_vox(mi, ens32.geometry, "intracranial")  # the runtime's default plan
    phase = ens32.geometry.tile_multiple_vox
    out: dict = {"int8_backend": ens8.backend_info.describe(), "fp32_backend": ens32.backend_info.describe(),
                 "tiles_intracranial": [len(plan.tiles), plan.tile_vox], "cascade_threshold": thr}
    if ens8.backend == "openvino":
        import nncf

        out["int8_tool"] = f"nncf {nncf.__version__}"
    if cache is not None and cache.exists():
        z = np.load(cache)
        first32, plain32 = z["first"], z["plain"]
        out["fp32_from_cache"] = str(cache)
    else:
        t0 = time.perf_counter()
        first32, plain32, secs = _member_maps(ens32, mi, len(members), 60)
        out["fp32_member_s"] = secs
        out["fp32_all_members_s"] = round(time.perf_counter() - t0, 1)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, first=first32, plain=plain32)
    t0 = time.perf_counter()
    first8, plain8, secs = _member_maps(ens8, mi, len(members), 60)
    out["int8_member_s"] = secs
    out["int8_all_members_s"] = round(time.perf_counter() - t0, 1)
    fast32, fast8 = _fast_labels(first32, plan, mi), _fast_labels(first8, plan, mi)
    casc8, n8 = _cascade_labels(first8, plain8, plan, mi, thr, phase)
    casc32, n32 = _cascade_labels(first32, plain32, plan, mi, thr, phase)
    v = out["compare"] = {}
    v["fast_int8_vs_fast_fp32"] = compare(fast8, fast32)
    v[f"cascade{thr:g}_int8_vs_plain_12_fp32"] = dict(compare(casc8, plain32), ensemble_voxels=n8)
    v["plain_12_int8_vs_plain_12_fp32"] = compare(plain8, plain32)
    v[f"cascade{thr:g}_fp32_vs_plain_12_fp32"] = dict(compare(casc32, plain32), ensemble_voxels=n32)
    v["fast_int8_vs_plain_12_fp32"] = compare(fast8, plain32)
    v["member1_int8_vs_member1_fp32_tissue"] = compare(first8.argmax(0), first32.argmax(0))
    out["int8_holds"] = bool(v["fast_int8_vs_fast_fp32"]["meets_issue_3"]
                             and v[f"cascade{thr:g}_int8_vs_plain_12_fp32"]["meets_issue_3"])
    return out


def agreement_int8_quick(volume, members: list[Path], threads: int, threshold: float | None = None,
                         variants: Sequence[str] = ("int8",)) -> dict:
    """The cheaper check: what the runtime computes, int8 against fp32 in the same mode: fast
    (member 1 on the default intracranial plan) and the default cascade. No plain ensemble: the
    card's ``runtime.agreement`` has the fp32 cascade against the plain fp32 ensemble.
    ``variants``: "int8" (every member int8), "int8_member1" (member 1 int8, members 2-N fp32:
    member 1 alone runs on every tile and decides where the others run)."""
    from ictus.models.preprocess import preprocess
    from ictus.models.runtime import DEFAULT_CASCADE_THRESHOLD, Ensemble

    thr = DEFAULT_CASCADE_THRESHOLD if threshold is None else threshold
    card = blast_ct_card()
    mi = preprocess(volume, tile_vox=90)
    out: dict = {"cascade_threshold": thr}
    labels: dict = {}
    for precision in ("fp32", *variants):
        ens = Ensemble.from_card(card, members, threads=threads, precision="int8" if precision == "int8" else "fp32")
        if precision == "int8_member1":  # member 1's int8 runner in an fp32 ensemble
            ens._sessions[0] = Ensemble.from_card(card, members[:1], threads=threads, precision="int8").session(0)
        out[f"{precision}_backend"] = ens.backend_info.describe()
        t0 = time.perf_counter()
        if precision != "int8_member1" and "int8" in variants:  # fast: only where member 1 differs
            p, _, _ = ens.predict_box(mi, [0])
            labels[("fast", precision)] = p.argmax(0)
        t1 = time.perf_counter()
        p, _, stats = ens.predict_box(mi, list(range(len(members))), cascade_threshold=thr)
        labels[("cascade", precision)] = p.argmax(0)
        del p
        out[f"{precision}_s"] = {"fast": round(t1 - t0, 1), "cascade": round(time.perf_counter() - t1, 1)}
        out[f"{precision}_cascade_stats"] = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
    out["compare"] = {}
    for v in variants:
        if ("fast", v) in labels:
            out["compare"][f"fast_{v}_vs_fast_fp32"] = compare(labels[("fast", v)], labels[("fast", "fp32")])
        out["compare"][f"cascade{thr:g}_{v}_vs_cascade{thr:g}_fp32"] = compare(labels[("cascade", v)],
                                                                             labels[("cascade", "fp32")])
    out["int8_holds_vs_same_mode"] = bool(all(v["meets_issue_3"] for v in out["compare"].values()))
    return out


def int8_speed(member: Path, threads: int, runs: int = 3, tile_vox: int = 90) -> dict:
    """Member 1 on one window of a ``tile_vox``^3 output tile (the synthetic head, centred on
    its haemorrhage), fp32 and int8 on the engine ``precision="int8"`` picks, in this process,
    runs interleaved, medians (a first, loading and compiling run of each not counted)."""
    from ictus.models.runtime import Ensemble, synthetic_head_hu

    card = blast_ct_card()
    ens8 = Ensemble.from_card(card, [member], threads=threads, precision="int8")
    ens32 = Ensemble.from_card(card, [member], threads=threads, backend=ens8.backend)
    n = tile_vox + 2 * ens32.geometry.context_vox
    hu = synthetic_head_hu()
    norm = ((2 * np.clip(hu, -15, 100) - 85) / 115).astype(np.float32)
    pad = np.pad(norm, n, mode="edge")
    z, y, x = (v + n - n // 2 for v in (75, 95, 80))
    window = np.ascontiguousarray(pad[z:z + n, y:y + n, x:x + n])
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for ens in (ens32, ens8):
        ens.predict(0, window)
    for _ in range(runs):
        for name, ens in (("fp32", ens32), ("int8", ens8)):
            t0 = time.perf_counter()
            ens.predict(0, window)
            times[name].append(round(time.perf_counter() - t0, 2))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"backend": ens8.backend_info.describe(), "tile_vox": tile_vox, "window_vox": n, "threads": threads,
            "seconds": times, "ratio_int8_over_fp32": round(med["int8"] / med["fp32"], 2),
            "load_avg": os.getloadavg()}


def reference_check(volume, member1: Path, threads: int) -> dict:
    """Member 1: ours (tiled, every head-box tile) vs blast-ct's network module and patch grid."""
    import torch
    from blast_ct.models.deepmedic import DeepMedic
    from blast_ct.nifti.datasets import FullImageToOverlappingPatchesNiftiDataset
    from blast_ct.nifti.patch_samplers import PatchSampler
    from blast_ct.nifti.savers import reconstruct_image

    from ictus.models.preprocess import preprocess
    from ictus.models.runtime import Ensemble

    torch.set_num_threads(threads)
    mi = preprocess(volume, crop_to_head=False)
    ens = Ensemble.from_card(blast_ct_card(), [member1], threads=threads)
    t0 = time.perf_counter()
    ours, _, _ = ens.predict_box(mi, [0], tile_vox=90, skip="none")
    ours_s = time.perf_counter() - t0
    weights = shared_dir() / "models" / "blast-ct"
    config = json.loads((weights / "config.json").read_text())
    net = DeepMedic(1, 5, **config["model"]["DeepMedic"])
    net.load_state_dict(torch.load(weights / "saved_models_v1" / "model_1.pt", map_location="cpu", weights_only=True))
    net.eval()
    arr = mi.array[None]
    centres = FullImageToOverlappingPatchesNiftiDataset.get_center_points(arr.shape[1:], (30, 30, 30))
    sampler = PatchSampler((110,) * 3, (30,) * 3)
    t0 = time.perf_counter()
    with torch.no_grad():
        patches = [torch.softmax(net(torch.from_numpy(np.ascontiguousarray(sampler.get_image_patch(arr, c)[None])))[0], 1)[0]
                   .numpy().astype(np.float16) for c in centres]
    ref_s = time.perf_counter() - t0
    ref = reconstruct_image(patches, arr.shape[1:], centres, (30, 30, 30)).argmax(-1)
    return {"ours_s": round(ours_s, 1), "reference_s": round(ref_s, 1),
            "differing_voxels": int((ours.argmax(0) != ref).sum()), "compare": compare(ours.argmax(0), ref)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "int8", "int8-member1"),
                    help="of the timed runs (default fp32, the runtime's default; int8 did not hold, see the card)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ictus-bench-model")
    ap.add_argument("--only", default="", help="comma-separated input names (default all)")
    ap.add_argument("--modes", default="fast,full")
    ap.add_argument("--peer", action="store_true")
    ap.add_argument("--peer-timeout-s", type=float, default=None,
                    help="stop the peer after this long and report a lower bound")
    ap.add_argument("--agreement", action="store_true")
    ap.add_argument("--agreement-int8", action="store_true", help="int8 members against fp32 (see above)")
    ap.add_argument("--agreement-int8-quick", action="store_true",
                    help="int8 vs fp32 in the same mode (fast, default cascade): no plain ensemble, ~5x cheaper")
    ap.add_argument("--int8-variants", default="int8", help="for --agreement-int8-quick: int8,int8_member1")
    ap.add_argument("--int8-speed", action="store_true", help="member 1, int8 vs fp32, one 90^3 output tile")
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--backend", default="auto", help="inference engine for the timed runs")
    ap.add_argument("--floor", action="store_true", help="measure the convolution rate and each input's floor")
    ap.add_argument("--plans", action="store_true",
                    help="each input's tile plan, previous fixed grid vs default cover (no inference)")
    ap.add_argument("--backends", default="", help="compare engines, e.g. onnxruntime,openvino (interleaved runs)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--study", help=argparse.SUPPRESS)
    ap.add_argument("--members", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    modes = [m for m in args.modes.split(",") if m]
    if not (modes or args.floor or args.agreement or args.reference or args.agreement_int8 or args.int8_speed
                 or args.agreement_int8_quick):  # e.g. --plans --modes "": no model needed
        members: list[Path] = []
    else:
        members = members_dir(args.work)
    if args.precision != "fp32" and members:
        from ictus.models.runtime import Ensemble

        ens = Ensemble.from_card(blast_ct_card(), members, precision=args.precision)
        for k, int8 in enumerate(ens.int8_members):
            if int8:
                ens.session(k)  # quantises once (NNCF on OpenVINO, or onnxruntime's QDQ), as the runtime does
    report: dict = {"cpu_count": os.cpu_count(), "threads": args.threads, "load_avg_start": os.getloadavg()}
    if args.int8_speed:
        report["int8_speed_member1"] = int8_speed(members[0], args.threads, runs=args.runs)
        print("int8_speed", json.dumps(report["int8_speed_member1"]), flush=True)
    studies = study_dirs(args.work)
    if args.only:
        studies = {k: v for k, v in studies.items() if k in args.only.split(",")}
    for name, study in studies.items():
        r = report.setdefault(name, {})
        if args.plans or args.floor:
            r["plans"] = plan_numbers(study)
            print(name, "plans", json.dumps(r["plans"]), flush=True)
        for mode in modes:
            use = members[:1] if mode == "fast" else members
            if args.backends:
                r[f"{mode}_backends"] = timed_backends(study, use, mode, args.precision, args.threads, args.runs,
                                                       [b for b in args.backends.split(",") if b])
                print(name, mode, json.dumps(r[f"{mode}_backends"], default=str), flush=True)
                continue
            r[mode] = timed(study, use, mode, args.precision, args.threads, args.runs, {}, args.backend)
            print(name, mode, json.dumps(r[mode], default=str), flush=True)
        if args.floor:
            rate = report.get("conv_rate") or conv_rate(members[0], args.backend, args.threads)
            report["conv_rate"] = rate
            full_info = r["full"]["info"] if "full" in r else None
            r["floor"] = floor_for(study, rate, len(members), full_info)
            if "fast" in r:
                r["ratio_fast_over_floor"] = round(r["fast"]["wall_s_median"] / r["floor"]["floor_fast_s"], 2)
                r["ratio_fast_inference_over_floor"] = round(
                    r["fast"]["info"]["inference_s"] / r["floor"]["floor_fast_s"], 2)
            if "full" in r and "floor_default_s" in r["floor"]:
                r["ratio_default_over_floor"] = round(r["full"]["wall_s_median"] / r["floor"]["floor_default_s"], 2)
            for mode in ("fast", "full"):  # output voxels computed per member / intracranial voxels needed
                if mode in r:
                    r["floor"][f"computed_over_needed_{mode}"] = r[mode]["info"].get("computed_over_needed")
            print(name, "floor", json.dumps({k: v for k, v in r.items() if "floor" in k}), flush=True)
        if args.peer:
            volume = load_volume(study)
            peer = run_peer(volume, args.work, args.peer_timeout_s)
            peer.pop("labels")
            r["peer_blast_ct_cli_one_member"] = peer
            for mode in ("fast", "full"):
                if mode in r:
                    ratio = round(peer["wall_s"] / r[mode]["wall_s_median"], 1)
                    r[f"ratio_peer_over_{mode}"] = ratio if peer["finished"] else f">= {ratio}"
            print(name, "peer", peer, flush=True)
            if args.floor and "fast" in r:  # the peer is one member, like fast mode
                def bound(value: float, sign: str):  # a peer stopped at its timeout gives bounds only
                    return value if peer["finished"] else f"{sign} {value}"

                r["peer_vs_fast"] = {
                    "ratio_peer_over_fast": r["ratio_peer_over_fast"],
                    "ratio_fast_over_peer": bound(round(r["fast"]["wall_s_median"] / peer["wall_s"], 3), "<="),
                    "ratio_peer_over_fast_floor": bound(round(peer["wall_s"] / r["floor"]["floor_fast_s"], 1), ">="),
                    "ratio_fast_over_floor": r.get("ratio_fast_over_floor"),
                    "fast_computed_over_needed": r["fast"].get("computed_over_needed"),
                }
                print(name, "peer vs fast", json.dumps(r["peer_vs_fast"]), flush=True)
        if args.agreement:
            r["agreement"] = agreement(load_volume(study), members, args.threads)
            print(name, "agreement", json.dumps(r["agreement"]), flush=True)
        if args.agreement_int8:
            t0 = time.perf_counter()
            r["agreement_int8"] = agreement_int8(load_volume(study), members, args.threads,
                                                 cache=args.work / "agreement-cache" / f"{name}-fp32.npz")
            r["agreement_int8"]["wall_s"] = round(time.perf_counter() - t0, 1)
            print(name, "agreement_int8", json.dumps(r["agreement_int8"]), flush=True)
        if args.agreement_int8_quick:
            t0 = time.perf_counter()
            r["agreement_int8_quick"] = agreement_int8_quick(load_volume(study), members, args.threads,
                                                             variants=args.int8_variants.split(","))
            r["agreement_int8_quick"]["wall_s"] = round(time.perf_counter() - t0, 1)
            print(name, "agreement_int8_quick", json.dumps(r["agreement_int8_quick"]), flush=True)
        if args.reference and name.startswith("phantom"):
            r["reference_member1"] = reference_check(load_volume(study), members[0], args.threads)
            print(name, "reference", r["reference_member1"], flush=True)
        if args.json:  # after each input, so that a long run keeps what it measured
            args.json.write_text(json.dumps(report, indent=1, default=str))
    report["load_avg_end"] = os.getloadavg()
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
