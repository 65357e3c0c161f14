"""Tolerant readers of DICOM element values, shared by the header scanner and the volume builder.

Every function reads a missing, empty or malformed value (wrong VR, bad bytes,
NaN) as absent instead of raising: input files are untrusted (see
``scripts/fuzz_ingest.py``). Nothing here reads files or logs header values.
"""
from __future__ import annotations

import math
import re
from typing import Any

from pydicom.dataset import Dataset

__all__ = [
    "as_float",
    "as_floats",
    "float_value",
    "float_values",
    "functional_item",
    "get_value",
    "int_value",
    "parse_age_years",
    "sequence_item",
    "text_value",
]


def get_value(ds: Dataset | None, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword)`` that reads a malformed value (wrong VR, bad bytes) as absent."""
    if ds is None:
        return default
    try:
        value = ds.get(keyword, default)
    except Exception:  # noqa: BLE001 - pydicom converts raw values lazily and fails in many ways
        return default
    return default if value is None else value


def text_value(ds: Dataset | None, keyword: str) -> str:
    """An attribute as stripped text; multiple values joined with ``\\``; "" when absent."""
    value = get_value(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def as_floats(value: Any, count: int) -> tuple[float, ...] | None:
    """Exactly ``count`` finite floats from a (multi-)value, or None."""
    if value is None:
        return None
    items = value if hasattr(value, "__len__") and not isinstance(value, str) else [value]
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError, OverflowError):
        return None
    if len(out) != count or not all(math.isfinite(v) for v in out):
        return None
    return out


def as_float(value: Any) -> float | None:
    """One finite float from a single value, or None."""
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def float_values(ds: Dataset | None, keyword: str, count: int) -> tuple[float, ...] | None:
    """Exactly ``count`` finite floats of an attribute, or None."""
    return as_floats(get_value(ds, keyword), count)


def float_value(ds: Dataset | None, keyword: str) -> float | None:
    """A single finite float attribute, or None."""
    return as_float(get_value(ds, keyword))


def int_value(ds: Dataset | None, keyword: str, default: int | None = None) -> int | None:
    """An integer attribute; ``default`` when absent or empty, None when present but not an integer."""
    value = get_value(ds, keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def sequence_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    """The first item of a sequence attribute, or None."""
    try:
        seq = get_value(ds, keyword)
        return seq[0] if seq else None
    except Exception:  # noqa: BLE001 - a sequence with a wrong VR reads as absent
        return None


def functional_item(ds: Dataset, frame_group: Dataset | None, sequence: str) -> Dataset | None:
    """A functional-group macro item of one frame: from its per-frame group, else the shared group."""
    return sequence_item(frame_group, sequence) or sequence_item(
        sequence_item(ds, "SharedFunctionalGroupsSequence"), sequence
    )


_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0, "": 1.0}


def parse_age_years(text: Any) -> float | None:
    """Parse a DICOM AS value (``052Y``, ``006M``, ``010W``, ``003D``) into years; None if malformed."""
    match = _AGE.match(str(text or ""))
    if not match:
        return None
    return int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2).upper()]
