"""Reading the rule files that configure the explainable stages (ischaemia, vessels, priority)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ictus.imaging.errors import InvalidInputError


def read_rules_json(path: str | os.PathLike[str], what: str) -> Any:
    """The parsed JSON of a rules file, or InvalidInputError saying what is wrong with it
    (``what`` names the rules in the message, e.g. "vessel rules")."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{what} file {p} does not exist; pass an existing JSON file") from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{what} file {p} is not readable JSON ({exc}); fix or replace it") from None
