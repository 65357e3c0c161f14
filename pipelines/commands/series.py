"""``ictus series STUDY [--json]``: every series with its score or rejection
reason, and the one chosen.

Exit codes: 0 a series was chosen, 3 no eligible series (the table is still
printed), 4 invalid or unreadable input.
"""
from __future__ import annotations

import json
import unicodedata

import click

from ictus.imaging.dicom_io import scan
from ictus.imaging.series import SeriesChoice, require_choice, select_series


def _printable(text: object, width: int | None = None) -> str:
    """Header text made safe for a terminal: control characters become '?'."""
    out = "".join("?" if unicodedata.category(ch).startswith("C") else ch for ch in str(text or ""))
    if width is not None and len(out) > width:
        out = out[: width - 1] + "~"
    return out


def _short_uid(key: str, width: int = 20) -> str:
    return key if len(key) <= width else "~" + key[-(width - 1):]


def _fmt_mm(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_table(choice: SeriesChoice) -> str:
    """A readable table of every candidate, the chosen one marked with '*'."""
    header = ("", "series", "description", "mod", "slices", "cover_mm", "tilt_deg", "kernel", "score / reason")
    rows: list[tuple[str, ...]] = [header]
    for c in choice.candidates:
        verdict = f"{c.score:.1f}" if c.eligible and c.score is not None else f"rejected: {c.reason}"
        if len(c.rejections) > 1:
            verdict += f" (+{len(c.rejections) - 1} more)"
        rows.append((
            "*" if choice.chosen is not None and c.key == choice.chosen.key else "",
            _short_uid(_printable(c.key)),
            _printable(c.description, 24),
            _printable(c.modality, 4),
            str(c.n_slices),
            _fmt_mm(c.coverage_mm),
            "-" if c.tilt_deg is None else f"{c.tilt_deg:.1f}",
            _printable(c.kernel, 10),
            _printable(verdict),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    summary = (
        f"{len(choice.candidates)} series from {choice.n_files} files "
        f"({choice.skipped_non_dicom} non-DICOM, {choice.unreadable} unreadable)"
    )
    if choice.flags:
        summary += "; flags: " + ", ".join(choice.flags)
    chosen = (
        f"chosen: {_printable(choice.chosen.series_instance_uid)}"
        if choice.chosen is not None else "chosen: none"
    )
    return "\n".join([summary, *lines, chosen])


@click.command(name="series")
@click.argument("study", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--no-pixel-check", is_flag=True, help="Judge on headers only (skip the one-slice sharp-kernel check).")
def command(study: str, as_json: bool, no_pixel_check: bool) -> None:
    """List every series of STUDY (a folder, DICOMDIR or file) with its score
    or rejection reason, and the one chosen for triage.

    Exit codes: 0 chosen, 3 no eligible series, 4 invalid input.
    """
    choice = select_series(scan(study), check_pixels=not no_pixel_check)
    if as_json:
        click.echo(json.dumps(choice.to_dict(), indent=2))
    else:
        click.echo(format_table(choice))
    require_choice(choice)  # NoEligibleSeriesError -> exit 3 via the CLI group
