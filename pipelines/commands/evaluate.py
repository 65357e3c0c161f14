"""``ictus evaluate DATASET --layout L --out DIR``: metrics of triage on labelled data.

Writes ``DIR/cases.csv``, ``DIR/summary.json``, ``DIR/roc.png`` and
``DIR/bland_altman.png`` (see :mod:`ictus.pipelines.research.evaluate`) and prints the
headline numbers. Exit codes as ``ictus triage`` (4 for unreadable labels).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import click

from ictus.pipelines.commands.options import (backend_option, fast_option, model_option, models_dir_option,
                                              threads_option)
from ictus.pipelines.research.datasets import LAYOUTS


def _fmt(value: object) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


@click.command("evaluate")
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@click.option("--layout", type=click.Choice(LAYOUTS), required=True,
              help="Label layout: physionet (ct_scans/ + masks/ + CSV), cq500 (reads.csv), rsna (slice CSV), phantom.")
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Label CSV (CQ500 reads.csv, default DATASET/reads.csv; RSNA stage_2_train.csv, required).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@model_option()
@models_dir_option("Where model weights live.")
@fast_option()
@threads_option()
@backend_option()
@click.option("--prevalence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Prevalence at which PPV and NPV are stated.")
@click.option("--tolerance-mm", type=click.FloatRange(0, None, min_open=True), default=2.0, show_default=True,
              help="Normalised surface Dice tolerance.")
@click.option("--bootstrap", "n_bootstrap", type=click.IntRange(0, None), default=2000, show_default=True,
              help="Bootstrap resamples for the AUC confidence interval.")
@click.option("--limit", type=click.IntRange(1, None), default=None, help="Evaluate only the first N cases.")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json instead of the headline table.")
def command(dataset: Path, layout: str, labels_path: Path | None, out_dir: Path, model: str, models_dir: Path | None,
            fast: bool, threads: int | None, backend: str, prevalence: float, tolerance_mm: float, n_bootstrap: int,
            limit: int | None, as_json: bool) -> None:
    """Evaluate triage on the labelled DATASET (a folder; see --layout)."""
    from ictus.pipelines.research.evaluate import evaluate_dataset
    from ictus.pipelines.research.datasets import read_dataset

    cases = read_dataset(layout, dataset, labels=labels_path)
    if limit:
        cases = cases[:limit]

    def progress(i: int, case, row) -> None:
        click.echo(f"[{i + 1}/{len(cases)}] {case.case_id}: reported={row['reported']}", err=True)

    result = evaluate_dataset(
        cases, out_dir, prevalence=prevalence, n_bootstrap=n_bootstrap, tolerance_mm=tolerance_mm,
        on_case=progress, model=model, models_dir=str(models_dir) if models_dir else None, fast=fast, threads=threads,
        backend=backend,
    )
    if as_json:
        click.echo(Path(result.outputs["json"]).read_text().rstrip())
        return
    s = result.summary
    click.echo(f"{s['cases']} case(s), {s['reported']} reported, {s['not_reported']} indeterminate")
    for name, d in s["detection"].items():
        roc = d["roc"]
        click.echo(
            f"  {name:<12} n={d['n']:<4} AUC {_fmt(roc['auc'])} [{_fmt(roc['ci_low'])}, {_fmt(roc['ci_high'])}]  "
            f"sens {_fmt(d['sensitivity'])}  spec {_fmt(d['specificity'])}  "
            f"PPV {_fmt(d['ppv'])}  NPV {_fmt(d['npv'])} at prevalence {d['prevalence']:g}"
        )
    for name, m in s["segmentation"].items():
        click.echo(f"  {name:<12} Dice {_fmt(m['dice_mean'])}  NSD {_fmt(m['surface_dice_mean'])}  "
                   f"|dV| {_fmt(m['abs_volume_error_ml_mean'])} mL  bias {_fmt(m['bland_altman_ml']['bias'])} mL")
    click.echo("outputs: " + json.dumps(result.outputs))
