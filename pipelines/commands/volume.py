"""``ictus volume STUDY -o vol.nii.gz [--series UID]``: write the HU volume of a series.

For researchers and for comparison with other converters (dcm2niix). The
series is chosen like ``ictus series`` does (or named with ``--series``), the
volume is built by :func:`imaging.build.build_volume`, and written atomically
(temporary file in the same folder, then renamed). One summary line goes to
stdout: size, spacing and QC flags.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import click
import SimpleITK as sitk

from imaging.build import build_volume
from imaging.errors import InvalidInputError, NoEligibleSeriesError, OutputError
from imaging.volume import Volume

log = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def _candidate_uid(candidate: Any) -> str:
    for name in ("series_instance_uid", "uid", "series_uid"):
        value = getattr(candidate, name, None)
        if value:
            return str(value)
    return ""


def _candidate_files(candidate: Any) -> tuple[list[str], dict[str, list[int]] | None]:
    files = [str(f) for f in getattr(candidate, "files", ())]
    frames = getattr(candidate, "frames", None)
    return files, (dict(frames) if frames else None)


def _files_from_selection(study: Path, series_uid: str | None) -> tuple[list[str], dict[str, list[int]] | None, tuple[str, ...]]:
    """Files (and frames) of the chosen series, through the series-selection API."""
    from imaging.dicom_io import scan
    from imaging.series import require_choice, select_series

    scanned = scan(study)
    choice = select_series(scanned)
    scan_flags = tuple(getattr(scanned, "flags", ()))
    if series_uid:
        for candidate in getattr(choice, "candidates", ()):
            if _candidate_uid(candidate) == series_uid:
                files, frames = _candidate_files(candidate)
                if files:
                    return files, frames, scan_flags
        raise NoEligibleSeriesError(
            f"no series with SeriesInstanceUID {series_uid} under {study}; run `ictus series {study}` to list them"
        )
    chosen = require_choice(choice)
    # require_choice may return the chosen candidate or the choice itself.
    chosen = getattr(chosen, "chosen", chosen)
    files, frames = _candidate_files(chosen)
    return files, frames, scan_flags


def _files_from_folder(study: Path, series_uid: str | None) -> tuple[list[str], None, tuple[str, ...]]:
    """Fallback for a folder holding one series, used while series selection is unavailable."""
    import pydicom

    if study.is_file():
        candidates = [study]
    else:
        candidates = sorted(p for p in study.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR")
    files = []
    for path in candidates:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "Modality"])
        except Exception:  # noqa: BLE001 - not DICOM: skipped, as scanning does
            continue
        if series_uid and str(ds.get("SeriesInstanceUID", "")) != series_uid:
            continue
        files.append(str(path))
    if not files:
        raise NoEligibleSeriesError(f"no DICOM image found under {study}; point to a study folder")
    return files, None, ()


def select_files(study: Path, series_uid: str | None = None) -> tuple[list[str], dict[str, list[int]] | None, tuple[str, ...]]:
    """Files, optional frame numbers and scan QC flags of the series to build."""
    if not study.exists():
        raise InvalidInputError(f"{study} does not exist; point to a study folder, a DICOMDIR or a file")
    try:
        import imaging.series  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "imaging.series":
            raise
        return _files_from_folder(study, series_uid)
    return _files_from_selection(study, series_uid)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_image_atomic(volume: Volume, out: Path) -> None:
    """Write the volume's image to ``out`` through a temporary file in the same folder."""
    name = out.name.lower()
    if not name.endswith(_NIFTI_SUFFIXES):
        raise OutputError(f"output {out} must end with one of {', '.join(_NIFTI_SUFFIXES)}")
    suffix = ".nii.gz" if name.endswith(".nii.gz") else out.suffix
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write into {out.parent} ({exc.strerror}); choose another output folder") from exc
    try:
        sitk.WriteImage(volume.image, tmp, True)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the usual mode
        os.replace(tmp, out)
    except (OSError, RuntimeError) as exc:
        raise OutputError(f"cannot write {out} ({type(exc).__name__}); check the folder and free space") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def summary_line(volume: Volume, out: Path) -> str:
    """One line: where, size, spacing, QC flags."""
    size = "x".join(str(s) for s in volume.size)
    spacing = "x".join(f"{s:.3g}" for s in volume.spacing_mm)
    flags = ",".join(volume.qc_flags) or "none"
    return f"{out}: {size} voxels, {spacing} mm, {len(volume.source_slices)} source slices, QC: {flags}"


@click.command("volume")
@click.argument("study", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), help="Output image (.nii.gz, .nii, .nrrd, .mha).")
@click.option("--series", "series_uid", default=None, help="Build this SeriesInstanceUID instead of the chosen one.")
def command(study: Path, output: Path, series_uid: str | None) -> None:
    """Write the HU volume (LPS, float32) of the chosen series of STUDY."""
    files, frames, scan_flags = select_files(study, series_uid)
    volume = build_volume(files, frames=frames)
    if scan_flags:
        volume = volume.with_flags(*scan_flags)
    write_image_atomic(volume, output)
    click.echo(summary_line(volume, output))


__all__: Sequence[str] = ("command", "select_files", "write_image_atomic", "summary_line")
