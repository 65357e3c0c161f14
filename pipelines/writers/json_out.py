"""``findings.json``: the findings dictionary as UTF-8 JSON, written atomically."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ictus.imaging import atomic
from ictus.imaging.errors import OutputError


def _plain(value: Any) -> Any:
    """numpy scalars/arrays, tuples and paths as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _no_nan(value: Any, where: str = "findings") -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise OutputError(f"{where} is {value}; findings must hold finite numbers or null")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _no_nan(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_nan(v, f"{where}[{i}]")


def findings_json_text(findings: Mapping[str, Any]) -> str:
    """The findings as pretty JSON text (keys in their order, UTF-8, no NaN)."""
    try:
        plain = json.loads(json.dumps(findings, default=_plain))
    except (TypeError, ValueError) as exc:
        raise OutputError(f"findings cannot be written as JSON ({exc}); report this with the study") from exc
    _no_nan(plain)
    return json.dumps(plain, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_findings_json(findings: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``findings.json`` atomically; returns its path."""
    return atomic.write_text(path, findings_json_text(findings))
