#!/usr/bin/env python
"""Benchmark: Ictus ingest (scan + select + build) against dcm2niix and SimpleITK.

On the same folders and in the same run, each tool is timed N times (after one
warm-up run, so every tool sees a warm page cache) and the medians and ratios
are printed as markdown tables:

* whole processes, interleaved (``ictus volume`` then ``dcm2niix``, then the other
  order, N times): ``ictus volume FOLDER -o out.nii`` (the console script: Python
  start-up, imports, scan, select, build, write) against ``dcm2niix -z n``, each
  writing a fresh uncompressed NIfTI; the ratio is ictus / dcm2niix. This is what
  issue 13's target is about (<= 2x dcm2niix);

In this process (imports already paid):

* ``ictus ingest``: :func:`ictus.imaging.dicom_io.scan` (``keep_headers``), :func:`ictus.imaging.series.select_series`,
  :func:`ictus.imaging.build.build_volume`, as ``ictus volume`` does (each file parsed once);
* ``ictus + write``: the same, plus writing an uncompressed NIfTI (what dcm2niix does);
* ``dcm2niix``: the PyPI ``dcm2niix`` executable as a subprocess, ``-z n``
  (uncompressed output), into a temporary folder;
* ``SimpleITK``: ``ImageSeriesReader`` on the GDCM-sorted file names.

Inputs (each tool gets the same folder): the GE tilted head from the shared
data (when present) and a 140-slice 512x512 series folder, written by the
phantom generator (``ictus.imaging.phantom``) or, without it, by pydicom. Target: 140x512x512 in <= 2 s on 2 cores and no
slower than dcm2niix.

    python scripts/bench_ingest.py [--runs 5] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402



def shared_dicom_root() -> Path:
    return Path(os.environ.get("ICTUS_SHARED_DIR", ROOT.parent / "shared")).resolve() / "data" / "dicom"


def make_series_140(folder: Path) -> Path:
    """A 140-slice 512x512 head series; returns the folder holding its slices."""
    try:
        from ictus.imaging.phantom import PhantomSpec, write_phantom
    except ImportError:
        return _pydicom_series(folder / "series", n_slices=140, size=512)
    spec = PhantomSpec(n_slices=140, slice_thickness_mm=1.0, matrix=512, partial_volume_samples=1)
    return write_phantom(spec, folder / "study").series_dir


def _pydicom_series(folder: Path, n_slices: int, size: int) -> Path:
    """Fallback without the phantom generator: noisy ellipses, 1 mm slices."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(n_slices):
        r = ((xx - size / 2) / (size * 0.35)) ** 2 + ((yy - size / 2) / (size * 0.42)) ** 2
        hu = np.where(r < 1, 35.0, -1000.0) + np.where((r > 0.9) & (r < 1), 1000.0, 0.0)
        stored = (hu + 1024 + rng.normal(0, 5, hu.shape)).clip(0, 4095).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.ImageType, ds.SeriesDescription = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"], "HEAD"
        ds.BodyPartExamined, ds.ConvolutionKernel, ds.SliceThickness = "HEAD", "H30s", 1.0
        ds.ImagePositionPatient = [-size * 0.25, -size * 0.25, float(k)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.InstanceNumber = k + 1
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"CT{k + 1:04d}.dcm", enforce_file_format=True)
    return folder


def ictus_ingest(folder: Path, write_to: Path | None = None) -> tuple[int, ...]:
    """Scan, select, build (and optionally write); returns the volume size."""
    from ictus.imaging.ingest import load_volume

    volume, _ = load_volume(folder)
    if write_to is not None:
        sitk.WriteImage(volume.image, str(write_to), False)
    return volume.size


def ictus_command() -> list[str]:
    """The ``ictus`` console script of this interpreter's environment (else ``python -m``)."""
    exe = Path(sys.executable).with_name("ictus")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ictus")
    return [found] if found else [sys.executable, "-m", "ictus.pipelines.cli"]


def process_medians(folder: Path, work: Path, runs: int, d2n: str | None) -> dict[str, float | None]:
    """Whole-process wall time of ``ictus volume`` and ``dcm2niix -z n`` on ``folder``: one warm-up
    each, then ``runs`` interleaved rounds (the order alternates); medians in seconds."""
    ictus_out = work / "proc" / "ictus.nii"
    d2n_out = work / "proc-d2n"
    # As installed: Ictus's modules compiled once (the warm-up writes their bytecode, here into a
    # temporary folder), even where PYTHONDONTWRITEBYTECODE is set (it costs every run ~40 ms).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")

    def ictus_run() -> None:
        ictus_out.parent.mkdir(parents=True, exist_ok=True)
        ictus_out.unlink(missing_ok=True)  # both tools write a fresh file
        subprocess.run([*ictus_command(), "volume", str(folder), "-o", str(ictus_out)], check=True,
                       capture_output=True, env=env)

    tools: list[tuple[str, Callable[[], None]]] = [("ictus", ictus_run)]
    if d2n:
        tools.append(("dcm2niix", lambda: run_dcm2niix(d2n, folder, d2n_out)))
    times: dict[str, list[float]] = {name: [] for name, _ in tools}
    for _, fn in tools:
        fn()  # warm-up
    for i in range(runs):
        for name, fn in (tools if i % 2 == 0 else tools[::-1]):
            if name == "ictus":
                ictus_out.unlink(missing_ok=True)
            else:
                shutil.rmtree(d2n_out, ignore_errors=True)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {"ictus": statistics.median(times["ictus"]),
            "dcm2niix": statistics.median(times["dcm2niix"]) if d2n else None}


def dcm2niix_executable() -> str | None:
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    return exe if Path(exe).exists() else None


def run_dcm2niix(exe: str, folder: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "-z", "n", "-b", "n", "-f", "bench", "-o", str(out), str(folder)], check=True, capture_output=True)


def run_simpleitk(folder: Path) -> tuple[int, ...]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute().GetSize()


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up: page cache, imports, thread pools
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per tool (median reported)")
    parser.add_argument("--keep", type=Path, default=None, help="write the generated series here and keep it")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ictus-bench-"))
    try:
        inputs: list[tuple[str, Path]] = []
        ge = shared_dicom_root() / "ge-head-tilt-variable-spacing"
        if ge.exists():
            inputs.append(("GE head 28x512x512, tilt + variable spacing", ge))
        generated = make_series_140(args.keep or work / "gen")
        inputs.append(("140x512x512 series", generated))

        exe = dcm2niix_executable()
        processes = []
        for label, folder in inputs:
            processes.append((label, process_medians(folder, work, args.runs, exe)))
        rows = []
        for label, folder in inputs:
            size = ictus_ingest(folder)
            result = {
                "input": label,
                "size": "x".join(str(s) for s in size),
                "ictus": median_seconds(lambda: ictus_ingest(folder), args.runs),
                "ictus_write": median_seconds(lambda: ictus_ingest(folder, work / "ictus.nii"), args.runs),
                "dcm2niix": median_seconds(lambda: run_dcm2niix(exe, folder, work / "d2n"), args.runs) if exe else None,
                "sitk": median_seconds(lambda: run_simpleitk(folder), args.runs),
            }
            rows.append(result)

        print(f"\nWhole processes, medians over {args.runs} interleaved runs, {os.cpu_count()} CPU cores "
              "(seconds; ratio = ictus / dcm2niix; target <= 2)\n")
        print("| input | `ictus volume -o x.nii` | `dcm2niix -z n` | ratio |")
        print("|---|---|---|---|")
        for label, med in processes:
            d2n = med["dcm2niix"]
            ratio = f"{med['ictus'] / d2n:.2f}" if d2n else "n/a"
            print(f"| {label} | {med['ictus']:.3f} | {'n/a' if d2n is None else f'{d2n:.3f}'} | {ratio} |")

        print(f"\nIn-process medians over {args.runs} runs (imports paid; seconds; ratio = tool / ictus ingest)\n")
        print("| input | size | ictus ingest (scan+select+build) | + write .nii | dcm2niix (-z n) | SimpleITK ImageSeriesReader |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            def cell(key: str) -> str:
                value = r[key]
                if value is None:
                    return "n/a"
                return f"{value:.3f} ({value / r['ictus']:.2f}x)"

            print(f"| {r['input']} | {r['size']} | {r['ictus']:.3f} | {cell('ictus_write')} | {cell('dcm2niix')} | {cell('sitk')} |")
        print("\nSimpleITK neither corrects tilt nor handles variable spacing (it averages it); dcm2niix corrects both.")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
