"""``ictus volume STUDY -o vol.nii.gz [--series UID]``: write the HU volume of a series.

For researchers and for comparison with other converters (dcm2niix). The
series is chosen like ``ictus series`` does (or named with ``--series``), the
volume is built by :func:`ictus.imaging.build.build_volume`, and written atomically
(temporary file in the same folder, then renamed). One summary line goes to
stdout: size, spacing and QC flags.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import click
import SimpleITK as sitk

from ictus.imaging.atomic import atomic_path
from ictus.imaging.errors import OutputError
from ictus.imaging.volume import Volume

log = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def write_image_atomic(volume: Volume, out: Path) -> None:
    """Write the volume's image to ``out`` through a temporary file in the same folder."""
    name = out.name.lower()
    if not name.endswith(_NIFTI_SUFFIXES):
        raise OutputError(f"output {out} must end with one of {', '.join(_NIFTI_SUFFIXES)}")
    suffix = ".nii.gz" if name.endswith(".nii.gz") else out.suffix
    try:
        with atomic_path(out, suffix=suffix) as tmp:  # SimpleITK picks the format by the suffix
            sitk.WriteImage(volume.image, str(tmp), True)
    except (OSError, RuntimeError) as exc:
        raise OutputError(f"cannot write {out} ({type(exc).__name__}); choose another output folder or free space") from exc


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
    # The ingest alone (not ictus.pipelines.triage, which brings the models, findings and writers):
    # this command's whole-process time is mostly imports and reading.
    from ictus.imaging.ingest import load_volume

    volume, _choice = load_volume(study, series_uid)
    write_image_atomic(volume, output)
    click.echo(summary_line(volume, output))


__all__: Sequence[str] = ("command", "write_image_atomic", "summary_line")
