"""Probe the model honestly on phantoms: which volumes and subtypes it finds.

For each haemorrhage type (IPH, EAH, IVH) and volume (default 5, 15, 30, 60 mL)
a phantom is written with ``ictus phantom``'s generator, triaged end to end
(``ictus.pipelines.triage``), and the measured subtype volume is compared with the
phantom's on-grid truth. Prints a markdown table; the findings go into the
model card's known limitations.

    .venv/bin/python scripts/probe_model.py [--fast] [--volumes 5,15,30,60] [--types IPH,EAH,IVH]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="member 1 only")
    parser.add_argument("--volumes", default="5,15,30,60")
    parser.add_argument("--types", default="IPH,EAH,IVH")
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--pixel-spacing-mm", type=float, default=0.9)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    from ictus.imaging.errors import IctusError
    from ictus.imaging.phantom import PhantomSpec, write_phantom
    from ictus.pipelines.triage import TriageEngine, TriageOptions

    engine = TriageEngine(TriageOptions(models_dir=args.models_dir, fast=args.fast, outputs=("json",)))
    work = Path(tempfile.mkdtemp(prefix="ictus-probe-"))
    rows = []
    print("| type | truth mL | found mL | error % | other blood mL | priority | s |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.types.split(","):
        for volume_ml in (float(v) for v in args.volumes.split(",")):
            study = work / f"{kind}-{volume_ml:g}"
            spec = PhantomSpec(haemorrhage=kind, haemorrhage_volume_ml=volume_ml, matrix=args.matrix,
                               pixel_spacing_mm=args.pixel_spacing_mm, slice_thickness_mm=5.0)
            try:
                write_phantom(spec, study)
            except IctusError as exc:
                print(f"| {kind} | {volume_ml:g} | phantom impossible: {exc} | | | | |")
                continue
            truth = json.loads((study / "ground_truth.json").read_text())["volumes_ml"][kind]["on_grid_ml"]
            t0 = time.perf_counter()
            f = engine.run(study).findings
            seconds = time.perf_counter() - t0
            subtypes = f["ich"]["subtypes"]
            found = subtypes[kind]["volume_ml"] or 0.0
            other = sum((s["volume_ml"] or 0.0) for name, s in subtypes.items() if name != kind)
            error = 100.0 * (found - truth) / truth
            rows.append({"type": kind, "truth_ml": truth, "found_ml": found, "error_pct": error,
                         "other_blood_ml": other, "priority": f["priority"], "seconds": seconds})
            print(f"| {kind} | {truth:.1f} | {found:.1f} | {error:+.0f} | {other:.1f} | {f['priority']} | {seconds:.0f} |",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
