"""Ictus imaging layer: DICOM reading, series selection, the Volume type and pure
image functions (resampling, brain mask, measurements, midline, phantoms).

This package imports nothing else of Ictus."""
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
