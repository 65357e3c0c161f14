"""Benchmark: writing every triage output (findings.json, SEG, SR, key images, HTML
and PDF report) for a 40-slice 512x512 phantom study. Target: <= 3 s.

The segmentation is the phantom's ground truth (no model run), so this times the
writers alone. Prints the first call in this process (imports and highdicom's code
tables included) and the median of warm calls, as JSON.

    .venv/bin/python scripts/bench_outputs.py [--runs 5] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="warm calls (median reported)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temp folder)")
    args = parser.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="ictus-bench-outputs-"))

    t0 = time.perf_counter()
    from ictus.pipelines.writers import write_outputs
    import_s = time.perf_counter() - t0

    import SimpleITK as sitk

    from ictus.imaging.build import build_volume
    from ictus.imaging.midline import MidlinePlane, MidlineResult
    from ictus.imaging.phantom import PhantomSpec, write_phantom
    from ictus.models.registry import get_card
    from ictus.pipelines.triage import TriageResult
    from tests.writers_support import findings_for, segmentation_from_labels

    study = root / "study"
    if not study.exists():
        write_phantom(PhantomSpec(haemorrhage="IPH", haemorrhage_volume_ml=30, midline_shift_mm=6, matrix=512,
                                  pixel_spacing_mm=0.45, slice_thickness_mm=5.0, n_slices=40), study)
    volume = build_volume(sorted((study / "series-002-axial").glob("*.dcm")))
    truth = sitk.ReadImage(str(study / "ground_truth_labels.nii.gz"))
    labels = sitk.GetArrayFromImage(
        sitk.Resample(truth, volume.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    midline = MidlineResult(6.0, "left", "truth", 1.0, "", MidlinePlane(0.0, 0.0, 0.0, 0.0, 20.0))
    result = TriageResult(volume=volume, segmentation=segmentation_from_labels(labels),
                          findings=findings_for(volume, labels, shift_mm=6.0, direction="left"),
                          card=get_card("blast-ct"), midline=midline)
    t0 = time.perf_counter()
    write_outputs(result, root / "out0")
    cold_s = time.perf_counter() - t0
    warm = []
    for i in range(args.runs):
        t0 = time.perf_counter()
        write_outputs(result, root / f"out{i + 1}")
        warm.append(time.perf_counter() - t0)
    print(json.dumps({
        "slices": volume.size[2], "matrix": list(volume.size[:2]), "import_s": round(import_s, 2),
        "first_call_s": round(cold_s, 2), "warm_median_s": round(statistics.median(warm), 2),
        "warm_s": [round(w, 2) for w in warm], "target_s": 3.0,
    }))


if __name__ == "__main__":
    main()
