"""``ictus batch SOURCES... --out DIR``: triage many studies, resumable, on local workers or Dask.

SOURCES are study folders, folders of studies, DICOM files or CSV manifests
(a ``path`` column, optionally ``study_id``). Each study's outputs go to
``DIR/<study_id>/``; ``DIR/summary.csv`` and ``DIR/summary.jsonl`` list every
study (status, exit code, error, priority, volumes, midline shift, QC, seconds).
A study that fails is recorded with its exit code (3 no eligible series, 4
invalid input, 5 model, 6 output) and the batch goes on; ``ictus batch`` exits
0 unless ``--strict`` and a study failed (exit 1).

Workers: ``--workers N`` local processes (default 1), each loading the model
once; ``--scheduler local`` an embedded Dask LocalCluster of N workers;
``--scheduler tcp://HOST:PORT`` an existing Dask cluster (every worker must
see SOURCES and DIR at the same paths).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ictus.pipelines.commands.options import (
    backend_option,
    fast_option,
    lang_option,
    model_option,
    models_dir_option,
    outputs_option,
    parse_outputs,
    threads_option,
)
from ictus.pipelines.triage import TriageOptions


@click.command("batch")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--workers", type=click.IntRange(0, 256), default=1, show_default=True,
              help="Worker processes (0: in this process).")
@click.option("--scheduler", default=None, help="'local' (Dask LocalCluster) or tcp://HOST:PORT (Dask scheduler).")
@click.option("--resume", is_flag=True, help="Skip studies whose outputs exist and whose input hash is unchanged.")
@fast_option()
@model_option()
@models_dir_option()
@threads_option(per_worker=True)
@backend_option()
@outputs_option()
@lang_option()
@click.option("--no-stroke", is_flag=True,
              help="Skip the template anatomy and the ischaemic findings (as `ictus triage --no-stroke`).")
@click.option("--engine", default=None, hidden=True, help="module:callable making the engine (tests, load runs).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--strict", is_flag=True, help="Exit 1 when any study failed.")
def command(sources: tuple[Path, ...], out_dir: Path, workers: int, scheduler: str | None, resume: bool, fast: bool,
            model: str, models_dir: Path | None, threads: int | None, backend: str, outputs: str, lang: str, no_stroke: bool,
            engine: str | None, no_progress: bool, strict: bool) -> None:
    """Triage every study of SOURCES into OUT."""
    from ictus.pipelines.pacs.batch import discover, run_batch

    if threads is None:  # workers x inference threads should not exceed the cores (spinning threads thrash)
        import os

        threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    options = TriageOptions(model=model, models_dir=str(models_dir) if models_dir else None, fast=fast,
                            threads=threads, backend=backend, outputs=parse_outputs(outputs), lang=lang, stroke=not no_stroke)
    jobs = discover(sources)
    bar = None
    if not no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="study", desc="ictus batch", file=sys.stderr)

    def on_row(row: dict) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{row['study_id']}: {row['status']}", refresh=False)

    try:
        summary = run_batch(jobs, out_dir, options, workers=workers, scheduler=scheduler, resume=resume,
                            engine=engine, on_row=on_row)
    finally:
        if bar is not None:
            bar.close()
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary.counts.items()))
    click.echo(f"{len(summary.rows)} studies in {summary.seconds:.1f} s: {counts}")
    for row in summary.rows:
        if row["status"] == "failed":
            click.echo(f"failed {row['study_id']} (exit {row['exit_code']}): {row['error']}")
        elif row.get("outputs_failed"):
            click.echo(f"ictus: warning: {row['study_id']}: outputs not written: {row['outputs_failed']}", err=True)
    click.echo(f"summary: {summary.csv_path} and {summary.jsonl_path}")
    if strict and summary.counts.get("failed"):
        click.get_current_context().exit(1)
