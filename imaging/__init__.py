"""Ictus imaging layer: DICOM reading, series selection, the Volume type and pure
image functions (resampling, brain mask, measurements, midline, phantoms).

This package imports nothing else of Ictus."""

if __name__ != "ictus.imaging":  # the source folder imported as a top-level package, e.g. from the repo root
    raise ImportError(f"Ictus's imaging/ folder is installed as ictus.imaging; import ictus.imaging (found as {__name__!r})")

import logging

from ictus.imaging.errors import (
    IctusError,
    InvalidInputError,
    ModelError,
    NoEligibleSeriesError,
    OutputError,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "IctusError",
    "InvalidInputError",
    "ModelError",
    "NoEligibleSeriesError",
    "OutputError",
]
