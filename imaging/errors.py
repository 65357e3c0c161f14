"""The Ictus exception hierarchy.

It lives in the lowest layer so every layer can raise its own errors. Only the
CLI turns them into exit codes (the ``exit_code`` attribute). Messages say what
was found and what to do, in one line, and never contain patient names or IDs.
"""
from __future__ import annotations


class IctusError(Exception):
    """Base of every error Ictus raises on purpose."""

    exit_code: int = 1


class NoEligibleSeriesError(IctusError):
    """The input holds DICOM, but no series is a usable non-contrast head CT."""

    exit_code = 3


class InvalidInputError(IctusError):
    """The input is missing, unreadable, malformed or geometrically unusable."""

    exit_code = 4


class ModelError(IctusError):
    """Model weights are missing or corrupt, or inference failed."""

    exit_code = 5


class OutputError(IctusError):
    """An output could not be written."""

    exit_code = 6
