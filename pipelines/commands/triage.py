"""``ictus triage STUDY --out DIR``: the main job.

Runs ingest, series selection, the default model, measurements and findings
(:func:`ictus.pipelines.triage.triage`), writes the outputs into ``DIR`` and prints a
short summary. Exit code 0 whatever the findings are (the priority is in the
JSON); ``--fail-on critical`` (or ``urgent``) exits 10 when the priority is at
least that, for scripts. Each output is written on its own: one that fails
(e.g. a SEG the source series cannot support) is listed in findings.json's
``outputs`` block and named in one ``ictus: warning:`` line on stderr; the exit
code stays 0 (6 only when findings.json itself cannot be written).
"""
from __future__ import annotations

import json
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
from ictus.pipelines.findings.priority import Priority
from ictus.pipelines.findings.record import DISCLAIMER, summary_lines
from ictus.pipelines.triage import TriageEngine, TriageOptions

EXIT_FAIL_ON = 10


def warn_failed_outputs(outputs: object) -> None:
    """One line on stderr per output that was not (fully) written: ``ictus: warning: seg not written: REASON``.

    A failed optional output does not change the exit code (findings.json lists it too)."""
    from ictus.pipelines import phi

    for kind, reason in (getattr(outputs, "failed", None) or {}).items():
        click.echo(f"ictus: warning: {kind} not written: {phi.redact(reason)}", err=True)
    for kind, reason in (getattr(outputs, "warnings", None) or {}).items():
        click.echo(f"ictus: warning: {kind}: {phi.redact(reason)}", err=True)


@click.command("triage")
@click.argument("study", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: STUDY's name + '-ictus' in the current folder).")
@click.option("--json", "as_json", is_flag=True, help="Print findings.json to stdout instead of the summary.")
@fast_option()
@click.option("--members", default=None, help="Explicit members, e.g. '1,2,3' (overrides --fast).")
@model_option()
@models_dir_option()
@threads_option()
@backend_option()
@click.option("--series", "series_uid", default=None, help="Use this SeriesInstanceUID instead of the automatic choice.")
@outputs_option()
@lang_option()
@click.option("--min-lesion-ml", type=click.FloatRange(0, None), default=None,
              help="Components smaller than this are discarded as noise (default in the README).")
@click.option("--rules", "priority_rules", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Priority rules file (default: pipelines/findings/priority_rules.json).")
@click.option("--ischaemia-rules", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Ischaemia (ASPECTS) rules file (default: imaging/ischaemia_rules.json).")
@click.option("--no-stroke", is_flag=True,
              help="Skip the template anatomy and the ischaemic findings (ASPECTS, dense artery, NWU); "
                   "the priority then follows the haemorrhage findings alone.")
@click.option("--fail-on", type=click.Choice([Priority.CRITICAL.value, Priority.URGENT.value]), default=None,
              help=f"Exit {EXIT_FAIL_ON} when the priority is at least this.")
def command(study: Path, out_dir: Path | None, as_json: bool, fast: bool, members: str | None, model: str,
            models_dir: Path | None, threads: int | None, backend: str, series_uid: str | None, outputs: str, lang: str,
            min_lesion_ml: float | None, priority_rules: Path | None, ischaemia_rules: Path | None, no_stroke: bool,
            fail_on: str | None) -> None:
    """Triage the head-CT study STUDY (folder, DICOMDIR or file)."""
    options = TriageOptions(
        model=model, models_dir=str(models_dir) if models_dir else None, fast=fast, members=members,
        threads=threads, backend=backend, series_uid=series_uid, outputs=parse_outputs(outputs), lang=lang,
        min_lesion_ml=min_lesion_ml, priority_rules=str(priority_rules) if priority_rules else None,
        ischaemia_rules=str(ischaemia_rules) if ischaemia_rules else None, stroke=not no_stroke,
    )
    if out_dir is None:
        out_dir = Path.cwd() / f"{Path(study).resolve().name or 'study'}-ictus"
    result = TriageEngine(options).run(study, out_dir)
    if as_json:
        click.echo(json.dumps(result.findings_dict(), indent=2))  # findings.json, outputs block included
    else:
        for line in summary_lines(result.findings):
            click.echo(line)
        for kind, paths in result.outputs.items():
            if paths:
                click.echo(f"{kind}: {paths[0] if len(paths) == 1 else f'{len(paths)} files in {Path(paths[0]).parent}'}")
        click.echo(DISCLAIMER)
    warn_failed_outputs(result.outputs)
    if fail_on and result.priority.at_least(fail_on):
        click.get_current_context().exit(EXIT_FAIL_ON)
