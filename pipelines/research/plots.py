"""Pictures for notebooks and evaluation reports (matplotlib; nothing is shown or printed).

- :func:`plot_montage`: axial slices of the HU volume (brain window) with the
  label map as coloured overlays.
- :func:`plot_midline`: the axial slice through the septum pellucidum with the
  ideal midline and the measured midline position.
- :func:`plot_roc` and :func:`plot_bland_altman`: from ``ictus.pipelines.research.evaluate`` rows.

Each returns the matplotlib ``Figure`` (and writes a PNG when ``path`` is
given, returning the path instead), so notebooks display it and scripts save it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ictus.pipelines.research.stats import bland_altman

log = logging.getLogger(__name__)

CLASS_COLOURS = {
    "IPH": (0.90, 0.10, 0.10),
    "EAH": (1.00, 0.60, 0.00),
    "oedema": (0.10, 0.75, 0.95),
    "IVH": (0.80, 0.20, 0.90),
    "haemorrhage": (0.90, 0.10, 0.10),
}
BRAIN_WINDOW_HU = (0.0, 80.0)


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget"):
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, path: str | Path | None):
    if path is None:
        return fig
    fig.savefig(path, dpi=fig.dpi)
    _pyplot().close(fig)
    return Path(path)


def _unpack(result_or_volume: Any, labels: np.ndarray | None, class_names: Sequence[str] | None):
    """(hu [z, y, x], labels or None, class names) from a TriageResult or a Volume."""
    if hasattr(result_or_volume, "segmentation") and hasattr(result_or_volume, "volume"):
        seg = result_or_volume.segmentation
        volume = result_or_volume.volume
        if labels is None and seg is not None:
            labels, class_names = seg.labels, seg.class_names
    else:
        volume = result_or_volume
    hu = volume.array_view() if hasattr(volume, "array_view") else np.asarray(volume)
    names = tuple(class_names) if class_names else ("background", "IPH", "EAH", "oedema", "IVH")
    return hu, labels, names, volume


def choose_slices(labels: np.ndarray | None, n_z: int, n_slices: int) -> list[int]:
    """Axial indices: evenly spread over the lesion's z-range when there is one, else over the volume's middle 80 %."""
    if labels is not None and np.any(labels > 0):
        zs = np.flatnonzero(np.any(labels > 0, axis=(1, 2)))
        lo, hi = int(zs[0]), int(zs[-1])
    else:
        lo, hi = int(0.1 * n_z), max(int(0.9 * n_z) - 1, 0)
    count = max(1, min(n_slices, hi - lo + 1))
    return sorted({int(round(v)) for v in np.linspace(lo, hi, count)})


def plot_montage(
    result_or_volume: Any,
    labels: np.ndarray | None = None,
    *,
    class_names: Sequence[str] | None = None,
    slices: Sequence[int] | None = None,
    n_slices: int = 8,
    columns: int = 4,
    window_hu: tuple[float, float] = BRAIN_WINDOW_HU,
    alpha: float = 0.45,
    path: str | Path | None = None,
):
    """Axial montage (radiological view: patient right on the image left, as stored in LPS
    with x increasing to the left) with label overlays. ``result_or_volume`` is a
    TriageResult (labels from its segmentation) or a Volume with ``labels``."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    hu, labels, names, _ = _unpack(result_or_volume, labels, class_names)
    if labels is not None and labels.shape != hu.shape:
        raise ValueError(f"labels {labels.shape} and volume {hu.shape} differ; pass labels on the volume grid")
    zs = list(slices) if slices is not None else choose_slices(labels, hu.shape[0], n_slices)
    cols = max(1, min(columns, len(zs)))
    rows = int(math.ceil(len(zs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.4), dpi=90, squeeze=False)
    lo, hi = window_hu
    present = set()
    for ax, z in zip(axes.flat, zs):
        ax.imshow(np.clip(hu[z], lo, hi), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if labels is not None:
            overlay = np.zeros(hu.shape[1:] + (4,), dtype=np.float32)
            for value, name in enumerate(names):
                if value == 0:
                    continue
                mask = labels[z] == value
                if mask.any():
                    present.add(name)
                    overlay[mask] = (*CLASS_COLOURS.get(name, (1.0, 1.0, 0.0)), alpha)
            ax.imshow(overlay, interpolation="nearest")
        ax.set_title(f"slice {z}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if present:
        fig.legend(handles=[Patch(color=CLASS_COLOURS.get(n, (1.0, 1.0, 0.0)), label=n) for n in names if n in present],
                   loc="lower center", ncol=len(present), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05 if present else 0, 1, 1))
    return _finish(fig, path)


def plot_midline(result: Any, *, window_hu: tuple[float, float] = BRAIN_WINDOW_HU, path: str | Path | None = None):
    """The axial slice through the septum with the ideal midline (green) and the ideal
    midline moved by the measured shift (red, dashed), from a TriageResult."""
    plt = _pyplot()
    midline, volume = result.midline, result.volume
    if midline is None or midline.ideal_plane is None:
        raise ValueError("this result has no midline measurement (indeterminate study or no brain)")
    plane = midline.ideal_plane
    image = volume.image
    hu = volume.array_view()
    z_mm = float((midline.details or {}).get("septum_z_mm", plane.zc_mm))
    origin = image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, 0.0))
    k = int(round(image.TransformPhysicalPointToContinuousIndex((origin[0], origin[1], z_mm))[2]))
    k = int(np.clip(k, 0, hu.shape[0] - 1))
    shift = float(midline.shift_mm or 0.0)
    rows = np.arange(hu.shape[1], dtype=float)
    ideal_i, shifted_i = [], []
    for j in rows:
        p = image.TransformContinuousIndexToPhysicalPoint((0.0, float(j), float(k)))
        x_ideal = plane.a_mm + plane.b * (p[1] - plane.yc_mm) + plane.c * (p[2] - plane.zc_mm)
        ideal_i.append(image.TransformPhysicalPointToContinuousIndex((x_ideal, p[1], p[2]))[0])
        shifted_i.append(image.TransformPhysicalPointToContinuousIndex((x_ideal + shift, p[1], p[2]))[0])
    lo, hi = window_hu
    fig, ax = plt.subplots(figsize=(4.5, 4.8), dpi=90)
    ax.imshow(np.clip(hu[k], lo, hi), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.plot(ideal_i, rows, "-", color="lime", lw=1, label="ideal midline")
    if abs(shift) > 0:
        ax.plot(shifted_i, rows, "--", color="red", lw=1, label=f"septum ({shift:+.1f} mm, + = patient left)")
    ax.set_xlim(0, hu.shape[2] - 1)
    ax.set_ylim(hu.shape[1] - 1, 0)
    ax.set_title(f"midline shift {shift:.1f} mm ({midline.direction}), slice {k}", fontsize=9)
    ax.legend(loc="lower center", fontsize=7)
    ax.axis("off")
    fig.tight_layout()
    return _finish(fig, path)


def plot_roc(rows: Sequence[Mapping[str, Any]], path: str | Path | None = None, *,
             findings: Sequence[str] = ("ICH", "IPH", "EAH", "IVH")):
    """ROC curves (scikit-learn ``roc_curve``) per finding with at least one positive and one negative case."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=90)
    drawn = 0
    for name in findings:
        use = [r for r in rows if r.get("reported") and r.get(f"ref_{name}") is not None
               and r.get(f"score_{name}") is not None]
        y = np.array([bool(r[f"ref_{name}"]) for r in use])
        if y.size == 0 or y.all() or not y.any():
            continue
        s = np.array([float(r[f"score_{name}"]) for r in use])
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc_score(y, s):.2f}, n={y.size})")
        drawn += 1
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC" if drawn else "ROC (no finding has both classes)", fontsize=10)
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)


def plot_bland_altman(rows: Sequence[Mapping[str, Any]], path: str | Path | None = None, *, cls: str = "ICH"):
    """Bland-Altman plot of predicted vs reference volume (mL) of class ``cls``."""
    plt = _pyplot()
    use = [r for r in rows if r.get(f"{cls}_volume_ref_ml") is not None and r.get(f"{cls}_volume_pred_ml") is not None]
    ref = np.array([float(r[f"{cls}_volume_ref_ml"]) for r in use])
    pred = np.array([float(r[f"{cls}_volume_pred_ml"]) for r in use])
    stats = bland_altman(pred, ref)
    fig, ax = plt.subplots(figsize=(4.8, 3.8), dpi=90)
    if ref.size:
        ax.scatter((pred + ref) / 2.0, pred - ref, s=14)
        for value, style, label in ((stats["bias"], "-", "bias"), (stats["loa_low"], "--", "95% limits"),
                                    (stats["loa_high"], "--", None)):
            if np.isfinite(value):
                ax.axhline(value, ls=style, color="grey", lw=1, label=label)
    ax.set_xlabel(f"mean of predicted and reference {cls} volume (mL)")
    ax.set_ylabel("predicted - reference (mL)")
    bias = stats["bias"]
    ax.set_title(f"Bland-Altman, {cls} (n={stats['n']}, bias {bias:.2f} mL)" if stats["n"] else "Bland-Altman (no cases)",
                 fontsize=9)
    if stats["n"]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _finish(fig, path)
