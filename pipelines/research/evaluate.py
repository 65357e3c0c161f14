"""Evaluate triage against labelled data: detection and segmentation metrics.

``evaluate_dataset(cases, out_dir, **triage_options)`` runs the same triage as
the CLI on every :class:`ictus.pipelines.research.datasets.LabelledCase`, turns each result into
a :class:`CasePrediction`, and writes:

- ``cases.csv``: one row per case (reference, score and decision per finding;
  Dice, normalised surface Dice and volumes per class);
- ``summary.json``: detection metrics per finding and segmentation metrics per
  class (:func:`summarise`);
- ``roc.png`` and ``bland_altman.png``.

Metrics (pure functions, tested against hand-computed values and scikit-learn):

- **Detection**, per finding (ICH, IPH, IVH, EAH, SDH, EDH, SAH, MidlineShift):
  ROC AUC (``sklearn.metrics.roc_auc_score``) with a percentile bootstrap 95%
  CI over cases; sensitivity and specificity of triage's own decision (the
  ``present`` flags of findings.json, i.e. the product's operating point) with
  Wilson 95% CIs (``scipy.stats.binomtest(...).proportion_ci("wilson")``); PPV
  and NPV at a stated prevalence by Bayes' rule. The score of a finding is
  ``ich.probability`` for ICH, the maximum voxel probability of the model class
  for IPH/IVH/EAH (SDH, EDH and SAH are scored by EAH: the model does not tell
  them apart) and ``|midline_shift_mm|`` for MidlineShift (decision: >= the
  threshold, 5 mm by default).
- **Segmentation**, per class: Dice (``monai.metrics.compute_dice``),
  normalised surface Dice at a tolerance in mm
  (``monai.metrics.compute_surface_dice``), absolute and relative volume error,
  and Bland-Altman statistics (bias, SD, 95% limits of agreement) of predicted
  minus reference volume. Where both masks are empty Dice and surface Dice are
  1 (MONAI gives NaN surface Dice there); where only the reference is empty the
  relative error is undefined (NaN) and left out of means.

Studies that triage leaves indeterminate (QC) have no decision: they are
counted in ``summary.json`` (``not_reported``) and left out of the metrics.
MONAI is needed for the segmentation metrics (extras ``train`` or ``dev``) and
is imported only when they are computed.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ictus.imaging.errors import IctusError, InvalidInputError, OutputError
from ictus.pipelines.research.datasets import FINDINGS, LabelledCase
from ictus.pipelines.research.stats import bland_altman

if TYPE_CHECKING:  # types only: triage (and the model runtime) load when a dataset is evaluated
    from ictus.pipelines.triage import TriageResult

log = logging.getLogger(__name__)

#: Model classes whose maximum voxel probability scores each reference finding.
SCORE_CLASSES: Mapping[str, tuple[str, ...]] = {
    "IPH": ("IPH",),
    "IVH": ("IVH",),
    "EAH": ("EAH",),
    "SDH": ("EAH",),
    "EDH": ("EAH",),
    "SAH": ("EAH",),
}
HAEMORRHAGE_CLASSES = ("IPH", "EAH", "IVH")
#: Reference mask values of the BLAST-CT layout.
BLAST_CT_VALUES = {"IPH": 1, "EAH": 2, "oedema": 3, "IVH": 4}
DEFAULT_PREVALENCE = 0.1
DEFAULT_SHIFT_THRESHOLD_MM = 5.0
DEFAULT_NSD_TOLERANCE_MM = 2.0


# -- per-case predictions --------------------------------------------------------------
@dataclass(frozen=True)
class CasePrediction:
    """What triage said about one case, reduced to what evaluation compares.

    ``labels`` (uint8 [z, y, x], model label values) and ``class_values`` (name ->
    value) sit on the grid of the volume that was triaged; ``spacing_mm`` is
    (x, y, z) of that grid. ``reported`` is False for indeterminate studies.
    """

    case_id: str
    reported: bool
    scores: Mapping[str, float | None]
    present: Mapping[str, bool | None]
    volumes_ml: Mapping[str, float | None] = field(default_factory=dict)
    midline_shift_mm: float | None = None
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)
    class_values: Mapping[str, int] = field(default_factory=dict)
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    image: Any = field(default=None, repr=False, compare=False)  # SimpleITK image of the grid
    qc_flags: tuple[str, ...] = ()


def prediction_from_result(
    case_id: str, result: TriageResult, *, shift_threshold_mm: float = DEFAULT_SHIFT_THRESHOLD_MM
) -> CasePrediction:
    """A :class:`CasePrediction` from a :class:`ictus.pipelines.triage.TriageResult`."""
    findings = result.findings
    ich = findings.ich
    subtypes = ich.subtypes
    seg = result.segmentation
    reported = findings.findings_reported and seg is not None
    scores: dict[str, float | None] = {name: None for name in FINDINGS}
    present: dict[str, bool | None] = {name: None for name in FINDINGS}
    volumes: dict[str, float | None] = {}
    shift = findings.midline_shift_mm
    if reported and seg is not None:
        max_prob = {
            name: float(np.max(seg.probabilities[seg.class_index(name)])) if name in seg.class_names else 0.0
            for name in HAEMORRHAGE_CLASSES
        }
        prob = ich.probability
        scores["ICH"] = float(prob) if prob is not None else max(max_prob.values())
        present["ICH"] = ich.present
        for finding, classes in SCORE_CLASSES.items():
            scores[finding] = max(max_prob[c] for c in classes)
            flags = [subtypes[c].present if c in subtypes else None for c in classes]
            present[finding] = None if any(f is None for f in flags) else any(flags)
        for c in HAEMORRHAGE_CLASSES:
            volumes[c] = subtypes[c].volume_ml if c in subtypes else None
        volumes["ICH"] = ich.total_volume_ml
        volumes["oedema"] = findings.oedema.volume_ml
        if shift is not None:
            scores["MidlineShift"] = abs(float(shift))
            present["MidlineShift"] = abs(float(shift)) >= shift_threshold_mm
    class_values = {name: i for i, name in enumerate(seg.class_names)} if seg is not None else {}
    return CasePrediction(
        case_id=case_id, reported=reported, scores=scores, present=present, volumes_ml=volumes,
        midline_shift_mm=None if shift is None else float(shift),
        labels=seg.labels if seg is not None else None, class_values=class_values,
        spacing_mm=result.volume.spacing_mm, image=result.volume.image, qc_flags=tuple(result.qc_flags),
    )


# -- detection metrics ----------------------------------------------------------------
def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy's binomtest); (nan, nan) when total is 0."""
    if total <= 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def predictive_values(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """(PPV, NPV) at ``prevalence`` by Bayes' rule."""
    if not 0.0 < prevalence < 1.0:
        raise InvalidInputError(f"prevalence {prevalence} is not strictly between 0 and 1; give e.g. 0.1")
    tp = sensitivity * prevalence
    fp = (1.0 - specificity) * (1.0 - prevalence)
    tn = specificity * (1.0 - prevalence)
    fn = (1.0 - sensitivity) * prevalence
    ppv = tp / (tp + fp) if tp + fp > 0 else math.nan
    npv = tn / (tn + fn) if tn + fn > 0 else math.nan
    return ppv, npv


def roc_auc_with_ci(
    truth: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray, *, n_bootstrap: int = 2000, seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float | int]:
    """ROC AUC (scikit-learn) and a percentile bootstrap CI over cases.

    Resamples holding one class only are skipped (their count is returned as
    ``bootstrap_skipped``). AUC is NaN when ``truth`` holds one class only.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(truth, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.size == 0 or y.all() or not y.any():
        return {"auc": math.nan, "ci_low": math.nan, "ci_high": math.nan, "bootstrap_used": 0, "bootstrap_skipped": 0}
    auc = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    values = []
    skipped = 0
    for _ in range(n_bootstrap):
        idx = rng.integers(0, y.size, y.size)
        yb = y[idx]
        if yb.all() or not yb.any():
            skipped += 1
            continue
        values.append(roc_auc_score(yb, s[idx]))
    alpha = (1.0 - confidence) / 2.0
    lo, hi = (np.quantile(values, [alpha, 1.0 - alpha]) if values else (math.nan, math.nan))
    return {"auc": auc, "ci_low": float(lo), "ci_high": float(hi), "bootstrap_used": len(values), "bootstrap_skipped": skipped}


def detection_metrics(
    truth: Sequence[bool],
    scores: Sequence[float],
    decisions: Sequence[bool],
    *,
    prevalence: float = DEFAULT_PREVALENCE,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC with bootstrap CI, sensitivity/specificity of ``decisions`` with Wilson CIs,
    PPV/NPV at ``prevalence``, and the confusion counts."""
    y = np.asarray(truth, dtype=bool)
    d = np.asarray(decisions, dtype=bool)
    if y.shape != d.shape or y.shape != np.shape(scores):
        raise InvalidInputError("truth, scores and decisions differ in length; pass one value per case")
    tp, fn = int((y & d).sum()), int((y & ~d).sum())
    tn, fp = int((~y & ~d).sum()), int((~y & d).sum())
    sens = tp / (tp + fn) if tp + fn else math.nan
    spec = tn / (tn + fp) if tn + fp else math.nan
    ppv, npv = (predictive_values(sens, spec, prevalence) if not (math.isnan(sens) or math.isnan(spec))
                else (math.nan, math.nan))
    return {
        "n": int(y.size), "positives": int(y.sum()), "negatives": int((~y).sum()),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "roc": roc_auc_with_ci(y, scores, n_bootstrap=n_bootstrap, seed=seed),
        "sensitivity": sens, "sensitivity_ci": wilson_interval(tp, tp + fn),
        "specificity": spec, "specificity_ci": wilson_interval(tn, tn + fp),
        "prevalence": prevalence, "ppv": ppv, "npv": npv,
    }


# -- segmentation metrics -----------------------------------------------------------
def _monai_metrics():
    try:
        import torch
        from monai.metrics import compute_dice, compute_surface_dice
    except ImportError as exc:
        raise IctusError(
            f"segmentation metrics need MONAI and torch ({exc.name} is missing); "
            "install the extra: pip install 'ictus[train]'"
        ) from None
    return torch, compute_dice, compute_surface_dice


def segmentation_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing_zyx_mm: Sequence[float], *, tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
) -> dict[str, float]:
    """Dice, normalised surface Dice (tolerance in mm) and volumes of two binary masks [z, y, x].

    Computed on the bounding box of both masks plus a margin (same values, less work).
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise InvalidInputError(f"prediction {pred.shape} and reference {ref.shape} grids differ; resample first")
    voxel_ml = float(np.prod(spacing_zyx_mm)) / 1000.0
    vol_pred, vol_ref = float(pred.sum()) * voxel_ml, float(ref.sum()) * voxel_ml
    out = {
        "volume_pred_ml": vol_pred, "volume_ref_ml": vol_ref, "volume_error_ml": vol_pred - vol_ref,
        "abs_volume_error_ml": abs(vol_pred - vol_ref),
        "rel_volume_error": (vol_pred - vol_ref) / vol_ref if vol_ref > 0 else math.nan,
    }
    both = pred | ref
    if not both.any():
        out.update(dice=1.0, surface_dice=1.0)
        return out
    if not pred.any() or not ref.any():
        out.update(dice=0.0, surface_dice=0.0)
        return out
    idx = np.nonzero(both)
    margin = [int(math.ceil(tolerance_mm / s)) + 2 for s in spacing_zyx_mm]
    box = tuple(slice(max(int(i.min()) - m, 0), int(i.max()) + m + 1) for i, m in zip(idx, margin))
    torch, compute_dice, compute_surface_dice = _monai_metrics()
    p = torch.from_numpy(pred[box][None, None].astype(np.float32))
    r = torch.from_numpy(ref[box][None, None].astype(np.float32))
    dice = float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI deprecation chatter
        nsd = float(compute_surface_dice(
            p, r, class_thresholds=[float(tolerance_mm)], include_background=True,
            spacing=[float(s) for s in spacing_zyx_mm],
        )[0, 0])
    out.update(dice=dice, surface_dice=nsd)
    return out


def reference_masks(ref_labels: np.ndarray, kind: str) -> dict[str, np.ndarray]:
    """Binary reference masks per class: "binary" layouts give ICH (any blood) only;
    the BLAST-CT layout gives IPH, EAH, IVH, oedema and ICH (IPH | EAH | IVH)."""
    ref_labels = np.asarray(ref_labels)
    if kind == "binary":
        return {"ICH": ref_labels > 0}
    if kind == "blast-ct":
        masks = {name: ref_labels == v for name, v in BLAST_CT_VALUES.items()}
        masks["ICH"] = masks["IPH"] | masks["EAH"] | masks["IVH"]
        return masks
    raise InvalidInputError(f"unknown mask kind {kind!r}; use 'binary' or 'blast-ct'")


def predicted_masks(labels: np.ndarray, class_values: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Binary predicted masks per class name, plus ICH (any haemorrhage class)."""
    masks = {name: labels == v for name, v in class_values.items() if name != "background"}
    ich = np.zeros(labels.shape, dtype=bool)
    for name in HAEMORRHAGE_CLASSES:
        if name in masks:
            ich |= masks[name]
    masks["ICH"] = ich
    return masks


def case_segmentation_metrics(
    prediction: CasePrediction, ref_labels: np.ndarray, kind: str, *, tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
) -> dict[str, dict[str, float]]:
    """Per-class :func:`segmentation_metrics` of one case (reference on the prediction's grid)."""
    if prediction.labels is None:
        return {}
    spacing_zyx = tuple(prediction.spacing_mm[::-1])
    refs = reference_masks(ref_labels, kind)
    preds = predicted_masks(prediction.labels, prediction.class_values)
    return {
        name: segmentation_metrics(preds[name], ref, spacing_zyx, tolerance_mm=tolerance_mm)
        for name, ref in refs.items() if name in preds
    }


# -- the dataset run ----------------------------------------------------------------
@dataclass(frozen=True)
class EvaluationResult:
    """Per-case rows, the summary and the paths written."""

    rows: tuple[dict[str, Any], ...]
    summary: Mapping[str, Any]
    outputs: Mapping[str, str] = field(default_factory=dict)


def case_row(case: LabelledCase, prediction: CasePrediction, seg: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """One flat CSV row: reference, score and decision per finding, then segmentation metrics."""
    row: dict[str, Any] = {"case_id": case.case_id, "source": case.source, "reported": prediction.reported,
                           "qc_flags": ";".join(prediction.qc_flags), "midline_shift_mm": prediction.midline_shift_mm}
    for name in FINDINGS:
        row[f"ref_{name}"] = case.findings.get(name)
        row[f"score_{name}"] = prediction.scores.get(name)
        row[f"pred_{name}"] = prediction.present.get(name)
    for cls, values in seg.items():
        for key, value in values.items():
            row[f"{cls}_{key}"] = value
    return row


def summarise(
    rows: Sequence[Mapping[str, Any]],
    *,
    prevalence: float | Mapping[str, float] = DEFAULT_PREVALENCE,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Detection metrics per finding and segmentation metrics per class over case rows."""
    reported = [r for r in rows if r.get("reported")]
    detection: dict[str, Any] = {}
    for name in FINDINGS:
        usable = [r for r in reported if r.get(f"ref_{name}") is not None and r.get(f"score_{name}") is not None
                  and r.get(f"pred_{name}") is not None]
        if not usable:
            continue
        prev = prevalence.get(name, DEFAULT_PREVALENCE) if isinstance(prevalence, Mapping) else prevalence
        detection[name] = detection_metrics(
            [bool(r[f"ref_{name}"]) for r in usable], [float(r[f"score_{name}"]) for r in usable],
            [bool(r[f"pred_{name}"]) for r in usable], prevalence=prev, n_bootstrap=n_bootstrap, seed=seed,
        )
    segmentation: dict[str, Any] = {}
    classes = sorted({k[: -len("_volume_ref_ml")] for r in reported for k in r if k.endswith("_volume_ref_ml")})
    for cls in classes:
        have = [r for r in reported if r.get(f"{cls}_dice") is not None]
        dice = np.array([r[f"{cls}_dice"] for r in have], dtype=float)
        nsd = np.array([r[f"{cls}_surface_dice"] for r in have], dtype=float)
        abs_err = np.array([r[f"{cls}_abs_volume_error_ml"] for r in have], dtype=float)
        rel = np.array([r[f"{cls}_rel_volume_error"] for r in have], dtype=float)
        pos = [r for r in have if r[f"{cls}_volume_ref_ml"] > 0]
        segmentation[cls] = {
            "n": len(have),
            "n_reference_positive": len(pos),
            "dice_mean": _nanmean(dice),
            "dice_mean_reference_positive": _nanmean([r[f"{cls}_dice"] for r in pos]),
            "surface_dice_mean": _nanmean(nsd),
            "abs_volume_error_ml_mean": _nanmean(abs_err),
            "abs_volume_error_ml_median": float(np.nanmedian(abs_err)) if abs_err.size else math.nan,
            "rel_volume_error_mean": _nanmean(rel),
            "bland_altman_ml": bland_altman([r[f"{cls}_volume_pred_ml"] for r in have],
                                            [r[f"{cls}_volume_ref_ml"] for r in have]),
        }
    return {
        "cases": len(rows),
        "reported": len(reported),
        "not_reported": len(rows) - len(reported),
        "detection": detection,
        "segmentation": segmentation,
    }


def _nanmean(values: Iterable[float]) -> float:
    arr = np.asarray(list(values), dtype=float)
    return float(np.nanmean(arr)) if arr.size and np.isfinite(arr).any() else math.nan


def _reference_on_grid(case: LabelledCase, prediction: CasePrediction) -> np.ndarray | None:
    """The case's mask resampled (nearest neighbour, physical space) onto the prediction grid."""
    if case.mask_path is None or prediction.image is None:
        return None
    from ictus.pipelines.research.datasets import load_mask_on_grid

    return load_mask_on_grid(case.mask_path, prediction.image)


def _case_input(case: LabelledCase, workdir: Path) -> tuple[str, Any]:
    """("path", study path) for DICOM cases, ("volume", Volume) for NIfTI ones."""
    from ictus.pipelines.research.datasets import is_nifti, load_volume_and_mask

    if case.files:
        folder = workdir / case.case_id
        folder.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(case.files):
            link = folder / f"{i:05d}_{Path(f).name}"
            try:
                link.symlink_to(Path(f).resolve())
            except OSError:
                shutil.copy2(f, link)
        return "path", folder
    if case.image_path is None:
        raise InvalidInputError(f"case {case.case_id} has no image; point the dataset at its studies")
    if is_nifti(case.image_path):
        volume, _ = load_volume_and_mask(case.image_path)
        return "volume", volume
    return "path", case.image_path


def evaluate_cases(
    cases: Sequence[LabelledCase],
    *,
    engine: Any = None,
    predict: Callable[[LabelledCase], CasePrediction] | None = None,
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    shift_threshold_mm: float = DEFAULT_SHIFT_THRESHOLD_MM,
    on_case: Callable[[int, LabelledCase, dict[str, Any]], None] | None = None,
    **triage_options: Any,
) -> list[dict[str, Any]]:
    """Triage every case (one :class:`ictus.pipelines.triage.TriageEngine`, the model loaded
    once) and return the per-case rows. ``predict`` replaces triage (for tests)."""
    if not cases:
        raise InvalidInputError("the dataset has no cases; check the folder and the label layout")
    if predict is None:
        from ictus.pipelines.triage import TriageEngine, TriageOptions

        engine = engine or TriageEngine(TriageOptions(**{"outputs": (), **triage_options}))
    rows = []
    with tempfile.TemporaryDirectory(prefix="ictus-eval-") as tmp:
        for i, case in enumerate(cases):
            if predict is not None:
                prediction = predict(case)
            else:
                kind, what = _case_input(case, Path(tmp))
                result = engine.run(what) if kind == "path" else engine.run_volume(what)
                prediction = prediction_from_result(case.case_id, result, shift_threshold_mm=shift_threshold_mm)
            seg: dict[str, dict[str, float]] = {}
            ref = _reference_on_grid(case, prediction)
            if ref is not None and prediction.reported:
                seg = case_segmentation_metrics(prediction, ref, case.mask_kind, tolerance_mm=tolerance_mm)
                if case.findings.get("ICH") is None and "ICH" in seg:  # masks only: ICH from the mask
                    case = _with_finding(case, "ICH", seg["ICH"]["volume_ref_ml"] > 0)
            row = case_row(case, prediction, seg)
            rows.append(row)
            log.info("case %d/%d evaluated", i + 1, len(cases))
            if on_case is not None:
                on_case(i, case, row)
    return rows


def _with_finding(case: LabelledCase, name: str, value: bool) -> LabelledCase:
    import dataclasses

    return dataclasses.replace(case, findings={**case.findings, name: value})


def evaluate_dataset(
    cases: Sequence[LabelledCase],
    out_dir: str | Path | None = None,
    *,
    prevalence: float | Mapping[str, float] = DEFAULT_PREVALENCE,
    n_bootstrap: int = 2000,
    seed: int = 0,
    plots: bool = True,
    **kwargs: Any,
) -> EvaluationResult:
    """Evaluate ``cases`` (see :func:`evaluate_cases` for ``kwargs``) and, with
    ``out_dir``, write ``cases.csv``, ``summary.json``, ``roc.png`` and ``bland_altman.png``."""
    rows = evaluate_cases(cases, **kwargs)
    summary = summarise(rows, prevalence=prevalence, n_bootstrap=n_bootstrap, seed=seed)
    outputs: dict[str, str] = {}
    if out_dir is not None:
        outputs = write_evaluation(rows, summary, out_dir, plots=plots)
    return EvaluationResult(rows=tuple(rows), summary=summary, outputs=outputs)


def write_evaluation(
    rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], out_dir: str | Path, *, plots: bool = True
) -> dict[str, str]:
    """Write ``cases.csv``, ``summary.json`` and (with ``plots``) the ROC and Bland-Altman PNGs."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        columns: list[str] = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
        csv_path = out / "cases.csv"
        with csv_path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _csv_value(r.get(k)) for k in columns})
        json_path = out / "summary.json"
        json_path.write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write the evaluation into {out} ({exc.strerror or exc}); check the folder") from None
    outputs = {"csv": str(csv_path), "json": str(json_path)}
    if plots:
        from ictus.pipelines.research.plots import plot_bland_altman, plot_roc

        outputs["roc"] = str(plot_roc(rows, out / "roc.png"))
        outputs["bland_altman"] = str(plot_bland_altman(rows, out / "bland_altman.png"))
    return outputs


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _json_safe(value: Any) -> Any:
    """NaN/inf to None, tuples to lists, numpy scalars to Python."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


__all__ = [
    "CasePrediction", "EvaluationResult", "bland_altman", "case_segmentation_metrics", "detection_metrics",
    "evaluate_cases", "evaluate_dataset", "predictive_values", "prediction_from_result", "roc_auc_with_ci",
    "segmentation_metrics", "summarise", "wilson_interval", "write_evaluation",
]
