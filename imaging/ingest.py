"""Ingest in one call: scan a study, choose its series, build that series' HU volume.

The light path behind ``ictus volume`` (and anything else that only needs the
volume): it imports the DICOM reader, the series rules and the volume builder,
nothing of the models, findings or writers. Each file of the chosen series is
parsed once: the scan keeps the headers it read (``keep_headers``) and the
builder then reads only their pixel bytes.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager

from ictus.imaging.errors import InvalidInputError

if TYPE_CHECKING:
    from ictus.imaging.series import SeriesCandidate, SeriesChoice
    from ictus.imaging.volume import Volume


def candidate_files(candidate: "SeriesCandidate") -> tuple[list[str], dict[str, list[int]] | None]:
    """Files of a series candidate, and the frame numbers to keep from multi-frame files."""
    files = [str(f) for f in candidate.files]
    frames: dict[str, list[int]] = {}
    for ref in getattr(candidate, "frames", ()) or ():
        if getattr(ref, "frame_number", None) is not None:
            frames.setdefault(str(ref.path), []).append(int(ref.frame_number))
    return files, (frames or None)


def load_volume(
    path: str | os.PathLike[str], series_uid: str | None = None, *,
    stage: Callable[[str], ContextManager[object]] | None = None,
) -> tuple["Volume", "SeriesChoice"]:
    """Scan ``path``, choose the series (or take ``series_uid``) and build its HU volume.

    Returns the volume (scan flags such as ``stale_dicomdir`` added to its QC
    flags) and the :class:`ictus.imaging.series.SeriesChoice`. ``stage(name)``, when
    given, is entered around the "scan", "select" and "volume" steps (triage times them).
    """
    from ictus.imaging.build import build_volume
    from ictus.imaging.dicom_io import scan
    from ictus.imaging.series import find_candidate, require_choice, select_series

    if not Path(path).exists():
        raise InvalidInputError(f"{path} does not exist; point to a study folder, a DICOMDIR or a file")
    step = stage or (lambda name: nullcontext())
    with step("scan"):
        scanned = scan(path, keep_headers=True)
    with step("select"):
        choice = select_series(scanned)
        chosen = find_candidate(choice, series_uid) if series_uid else require_choice(choice)
    with step("volume"):
        files, frames = candidate_files(chosen)
        headers = {f: scanned.headers[f] for f in files if f in scanned.headers}
        del scanned  # the other series' headers are not needed past here (memory)
        volume = build_volume(files, frames=frames, headers=headers)
        if choice.flags:
            volume = volume.with_flags(*choice.flags)
    return volume, choice


__all__ = ["candidate_files", "load_volume"]
