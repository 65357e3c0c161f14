"""Agreement statistics shared by the evaluation (:mod:`ictus.pipelines.research.evaluate`)
and its plots (:mod:`ictus.pipelines.research.plots`), so neither imports the other for them."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def bland_altman(pred: Sequence[float] | np.ndarray, ref: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """Bland-Altman statistics of ``pred - ref``: bias, SD (ddof=1) and 95% limits of agreement."""
    p = np.asarray(pred, dtype=float)
    r = np.asarray(ref, dtype=float)
    keep = np.isfinite(p) & np.isfinite(r)
    diff = p[keep] - r[keep]
    n = int(diff.size)
    if n == 0:
        return {"n": 0, "bias": math.nan, "sd": math.nan, "loa_low": math.nan, "loa_high": math.nan}
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if n > 1 else math.nan
    return {"n": n, "bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


__all__ = ["bland_altman"]
