"""Evaluation metrics against hand-computed values and scikit-learn; the dataset run and its outputs."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ictus.pipelines.research.evaluate import (
    CasePrediction,
    bland_altman,
    detection_metrics,
    evaluate_dataset,
    predictive_values,
    roc_auc_with_ci,
    segmentation_metrics,
    summarise,
    wilson_interval,
)
from ictus.pipelines.research.datasets import LabelledCase, complete_findings


def test_wilson_interval_matches_the_formula() -> None:
    k, n, z = 8, 10, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(centre - half, abs=1e-9) and hi == pytest.approx(centre + half, abs=1e-9)
    assert lo == pytest.approx(0.4901625, abs=1e-6)  # published value for 8/10
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_predictive_values_by_hand() -> None:
    # sens 0.9, spec 0.8, prevalence 0.1: PPV = 0.09 / (0.09 + 0.18) = 1/3; NPV = 0.72 / (0.72 + 0.01)
    ppv, npv = predictive_values(0.9, 0.8, 0.1)
    assert ppv == pytest.approx(1 / 3) and npv == pytest.approx(0.72 / 0.73)


def test_auc_matches_sklearn_and_hand_value() -> None:
    from sklearn.metrics import roc_auc_score

    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]  # 3 of 4 positive/negative pairs ordered correctly
    out = roc_auc_with_ci(y, s, n_bootstrap=200, seed=1)
    assert out["auc"] == pytest.approx(0.75) == roc_auc_score(y, s)
    rng = np.random.default_rng(3)
    y2 = rng.random(60) < 0.4
    s2 = y2 * 0.5 + rng.random(60)
    out2 = roc_auc_with_ci(y2, s2, n_bootstrap=500, seed=0)
    assert out2["auc"] == pytest.approx(roc_auc_score(y2, s2))
    assert out2["ci_low"] < out2["auc"] < out2["ci_high"] and out2["bootstrap_used"] > 450
    assert math.isnan(roc_auc_with_ci([1, 1], [0.2, 0.3])["auc"])


def test_detection_counts_and_rates() -> None:
    truth = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    decisions = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.15, 0.05, 0.25]
    d = detection_metrics(truth, scores, decisions, prevalence=0.2, n_bootstrap=100)
    assert (d["tp"], d["fn"], d["tn"], d["fp"]) == (3, 1, 5, 1)
    assert d["sensitivity"] == pytest.approx(0.75) and d["specificity"] == pytest.approx(5 / 6)
    assert d["sensitivity_ci"] == pytest.approx(wilson_interval(3, 4))
    ppv, npv = predictive_values(0.75, 5 / 6, 0.2)
    assert d["ppv"] == pytest.approx(ppv) and d["npv"] == pytest.approx(npv)


def test_bland_altman_by_hand() -> None:
    out = bland_altman([11.0, 19.0, 33.0], [10.0, 20.0, 30.0])  # differences 1, -1, 3
    assert out["bias"] == pytest.approx(1.0) and out["sd"] == pytest.approx(2.0)
    assert out["loa_low"] == pytest.approx(1 - 3.92) and out["loa_high"] == pytest.approx(1 + 3.92)


def test_segmentation_metrics_on_cubes() -> None:
    ref = np.zeros((20, 20, 20), bool)
    pred = np.zeros_like(ref)
    ref[5:9, 5:9, 5:9] = True  # 64 voxels
    pred[6:10, 5:9, 5:9] = True  # shifted by one slice: overlap 48
    m = segmentation_metrics(pred, ref, (2.0, 1.0, 1.0), tolerance_mm=2.0)
    assert m["dice"] == pytest.approx(2 * 48 / 128)
    assert m["volume_ref_ml"] == pytest.approx(64 * 2 / 1000) and m["volume_error_ml"] == pytest.approx(0.0)
    assert m["surface_dice"] == pytest.approx(1.0)  # every surface point within 2 mm of the other surface
    tight = segmentation_metrics(pred, ref, (2.0, 1.0, 1.0), tolerance_mm=0.5)
    assert tight["surface_dice"] < 1.0
    same = segmentation_metrics(ref, ref, (1.0, 1.0, 1.0))
    assert same["dice"] == pytest.approx(1.0) and same["surface_dice"] == pytest.approx(1.0)
    empty = segmentation_metrics(np.zeros_like(ref), np.zeros_like(ref), (1.0, 1.0, 1.0))
    assert empty["dice"] == 1.0 and math.isnan(empty["rel_volume_error"])
    missed = segmentation_metrics(np.zeros_like(ref), ref, (1.0, 1.0, 1.0))
    assert missed["dice"] == 0.0 and missed["rel_volume_error"] == pytest.approx(-1.0)


def _cases_and_predictor(tmp_path: Path):
    """Six synthetic cases with BLAST-CT-layout masks and a predictor that errs on purpose."""
    import SimpleITK as sitk

    cases, preds = [], {}
    for i in range(6):
        ref = np.zeros((10, 16, 16), np.uint8)
        has = i % 2 == 0
        if has:
            ref[3:6, 4:8, 4:8] = 1
        mask_path = tmp_path / f"m{i}.nii.gz"
        img = sitk.GetImageFromArray(ref)
        img.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(img, str(mask_path))
        labels = ref.copy()
        if i == 4:
            labels[:] = 0  # a missed haemorrhage
        if i == 5:
            labels[2:4, 4:8, 4:8] = 1  # a false positive
        present = bool((labels == 1).any())
        score = 0.9 if present else 0.1
        case = LabelledCase(case_id=f"c{i}", image_path=None, mask_path=mask_path, mask_kind="blast-ct",
                            findings=complete_findings({"IPH": has, "IVH": False, "EAH": False}))
        preds[case.case_id] = CasePrediction(
            case_id=case.case_id, reported=True,
            scores={"ICH": score, "IPH": score, "IVH": 0.0, "EAH": 0.0},
            present={"ICH": present, "IPH": present, "IVH": False, "EAH": False},
            labels=labels, class_values={"background": 0, "IPH": 1, "EAH": 2, "oedema": 3, "IVH": 4},
            spacing_mm=(1.0, 1.0, 2.0), image=img,
        )
        cases.append(case)
    return cases, lambda case: preds[case.case_id]


def test_evaluate_dataset_writes_csv_json_and_plots(tmp_path: Path) -> None:
    cases, predict = _cases_and_predictor(tmp_path)
    result = evaluate_dataset(cases, tmp_path / "out", predict=predict, n_bootstrap=200)
    s = result.summary
    ich = s["detection"]["ICH"]
    assert (ich["tp"], ich["fn"], ich["tn"], ich["fp"]) == (2, 1, 2, 1)
    assert s["segmentation"]["IPH"]["n"] == 6
    dice_case0 = [r for r in result.rows if r["case_id"] == "c0"][0]["IPH_dice"]
    assert dice_case0 == pytest.approx(1.0)
    with open(result.outputs["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and "ICH_surface_dice" in rows[0]
    summary = json.loads(Path(result.outputs["json"]).read_text())
    assert summary["detection"]["ICH"]["sensitivity"] == pytest.approx(2 / 3)
    for key in ("roc", "bland_altman"):
        assert Path(result.outputs[key]).read_bytes()[:4] == b"\x89PNG"


def test_summarise_skips_unreported_cases() -> None:
    rows = [{"case_id": "a", "reported": False, "ref_ICH": True, "score_ICH": None, "pred_ICH": None},
            {"case_id": "b", "reported": True, "ref_ICH": True, "score_ICH": 0.8, "pred_ICH": True},
            {"case_id": "c", "reported": True, "ref_ICH": False, "score_ICH": 0.2, "pred_ICH": False}]
    s = summarise(rows, n_bootstrap=50)
    assert s["not_reported"] == 1 and s["detection"]["ICH"]["n"] == 2
    assert s["detection"]["ICH"]["roc"]["auc"] == pytest.approx(1.0)


def test_cli_evaluate_with_a_tiny_trained_model(tmp_path_factory, cli_runner) -> None:
    """`ictus evaluate` end to end: phantoms (DICOM + truth) triaged by a tiny exported model."""
    pytest.importorskip("monai")
    from research_support import tiny_model

    base = tmp_path_factory.getbasetemp() / "tiny-segresnet"
    card = tiny_model(base)
    out = tmp_path_factory.mktemp("eval")
    code, stdout, stderr = cli_runner("evaluate", base / "phantoms", "--layout", "phantom", "--model", card,
                                      "--out", out, "--bootstrap", "50", "--threads", "2")
    assert code == 0, stderr
    assert "4 case(s)" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 4 and "ICH" in summary["segmentation"]
    assert (out / "roc.png").is_file() and (out / "bland_altman.png").is_file()


def test_api_and_evaluate_import_no_torch_or_monai() -> None:
    """MONAI (and torch) are loaded only when segmentation metrics are computed."""
    import subprocess
    import sys

    code = ("import sys, ictus.pipelines.api, ictus.pipelines.research.evaluate, ictus.pipelines.commands.evaluate; "
            "assert not {'torch', 'monai', 'matplotlib'} & set(sys.modules), sorted({'torch', 'monai', 'matplotlib'} & set(sys.modules))")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_rsna_layout_study_is_triaged_from_its_files(tmp_path_factory, tmp_path: Path) -> None:
    """RSNA slices (all studies in one folder) are regrouped per study and triaged."""
    pytest.importorskip("monai")
    import pydicom

    from ictus.pipelines.research.datasets import read_rsna_labels
    from research_support import tiny_model

    base = tmp_path_factory.getbasetemp() / "tiny-segresnet"
    card = tiny_model(base)
    series = base / "phantoms" / "p00" / "series-002-axial"
    sops = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sorted(series.iterdir())]
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "Label"])
        for i, sop in enumerate(sops):
            for sub in ("any", "intraparenchymal", "subdural"):
                w.writerow([f"{sop}_{sub}", int(sub != "subdural" and i == len(sops) // 2)])
    cases = read_rsna_labels(tmp_path / "labels.csv", series)
    assert len(cases) == 1 and cases[0].findings["IPH"] is True and cases[0].findings["SDH"] is False
    result = evaluate_dataset(cases, None, model=str(card), threads=2, n_bootstrap=10)
    (row,) = result.rows
    assert row["reported"] and row["ref_ICH"] is True and row["score_ICH"] is not None
