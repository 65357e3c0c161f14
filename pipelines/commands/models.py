"""``ictus models``: list known models and assets and what is installed, pull weights
and assets (atlases, templates), verify them.

MODEL is a model card (``blast-ct``) or an asset card (``stroke-atlas``,
``blast-ct-atlas``; see :mod:`ictus.models.assets`). Exit codes: 0 ok, 2 an option that
does not apply to an asset, 4 a bad ``--from`` path, 5 a model error (unknown
model, missing or corrupt weights or asset files, a refused download).
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ictus.imaging.errors import ModelError
from ictus.models.assets import (
    AssetCard, AssetVerifyReport, find_asset_card, list_asset_cards, pull_asset, verify_asset, verify_hint,
)
from ictus.models.registry import ModelCard, get_card, list_cards, load_card
from ictus.models.weights import ENV_MODELS_DIR, models_home, pull, verify

_MODELS_DIR_HELP = (
    f"Folder of installed models (default: ${ENV_MODELS_DIR}, else the user cache folder)."
)


def _card(model: str) -> ModelCard:
    """A shipped card by id, or a card file by path."""
    p = Path(model).expanduser()
    if p.suffix == ".json" or p.is_file():
        return load_card(p)
    return get_card(model)


@click.group("models")
def command() -> None:
    """Model cards, weights and assets (atlases): list, pull, verify."""


@command.command("list")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=_MODELS_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(models_dir: Path | None, as_json: bool) -> None:
    """Known models and assets and what is installed (each file checked by sha256)."""
    home, origin = models_home(models_dir)
    rows = []
    for card in list_cards():
        report = verify(card, models_dir)
        rows.append({**card.summary(), "installed": report.to_dict()})
    asset_rows = [{**a.summary(), "installed": verify_asset(a, models_dir).to_dict()} for a in list_asset_cards()]
    if as_json:
        click.echo(json.dumps(
            {"models_dir": str(home), "origin": origin, "models": rows, "assets": asset_rows}, indent=2
        ))
        return
    click.echo(f"models folder: {home} ({origin})")
    for row in rows:
        inst = row["installed"]
        onnx = sum(1 for m in inst["members"] if m["onnx_current"])
        corrupt = sum(1 for m in inst["members"] if m["present"] and not m["sha256_ok"])
        state = f"{inst['usable']}/{inst['checked']} members verified, {onnx} converted to ONNX"
        if corrupt:
            state += f", {corrupt} CORRUPT"
        click.echo(f"{row['id']}:{row['version']}  {row['name']}")
        click.echo(f"    classes: {', '.join(row['classes'][1:])}  licence: {row['license']}  doi: {row['doi']}")
        click.echo(f"    installed: {state}  ({inst['directory']})")
    for row in asset_rows:
        inst = row["installed"]
        corrupt = sum(1 for f in inst["files"] if f["present"] and not f["sha256_ok"])
        state = f"{inst['verified']}/{inst['checked']} files verified" + (f", {corrupt} CORRUPT" if corrupt else "")
        click.echo(f"{row['id']}:{row['version']}  {row['name']}  (asset)")
        click.echo(f"    licence: {row['license']}  doi: {row['doi']}")
        click.echo(f"    installed: {state}  ({inst['directory']})")


@command.command("pull")
@click.argument("model")
@click.option(
    "--from", "source", default=None, metavar="DIR_OR_URL",
    help="Local mirror folder or http(s) base URL instead of the pinned upstream URLs.",
)
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=_MODELS_DIR_HELP)
@click.option("--members", default=None, help='Members to pull: "1,2", "model_3", "fast" or "all" (default: the card\'s default).')
@click.option("--no-convert", is_flag=True, help="Do not convert to ONNX now (it happens on first use).")
@click.option("--force", is_flag=True, help="Fetch and convert again even when intact files are present.")
@click.option("--retries", default=3, show_default=True, type=click.IntRange(0, 20), help="Retries per file on network errors.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def pull_command(
    model: str, source: str | None, models_dir: Path | None, members: str | None,
    no_convert: bool, force: bool, retries: int, as_json: bool,
) -> None:
    """Download (or import with --from) MODEL's weights, verify sha256, convert to ONNX.

    For an asset (stroke-atlas, blast-ct-atlas) every file is fetched and verified;
    --members does not apply.
    """
    asset = find_asset_card(model)
    if asset is not None:
        if members is not None:
            raise click.UsageError(f"--members applies to model weights, not to the asset {asset.id}")
        _pull_asset(asset, source, models_dir, force, retries, as_json)
        return
    card = _card(model)
    report = pull(
        card, models_dir, source, members=members, convert=False if no_convert else None,
        force=force, retries=retries,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for m in report.members:
        click.echo(f"{m.name}: {m.action}, sha256 ok, onnx {m.onnx}")
    click.echo(f"{card.ref}: {len(report.members)} member(s) in {report.directory}")


@command.command("verify")
@click.argument("model", required=False)
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=_MODELS_DIR_HELP)
@click.option("--members", default=None, help='Members to check: "1,2", "fast" or "all" (default: the card\'s default).')
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def verify_command(model: str | None, models_dir: Path | None, members: str | None, as_json: bool) -> None:
    """Check MODEL's weights or asset files (all known models and assets if omitted):
    present, sha256, ONNX up to date.

    Exits 5 when a checked member or asset file is missing or corrupt.
    """
    asset = find_asset_card(model) if model else None
    if asset is not None:
        if members is not None:
            raise click.UsageError(f"--members applies to model weights, not to the asset {asset.id}")
        asset_reports = [verify_asset(asset, models_dir)]
        if as_json:
            click.echo(json.dumps([r.to_dict() for r in asset_reports], indent=2))
        _check_assets([asset], asset_reports, models_dir, as_json)
        return
    cards = [_card(model)] if model else list_cards()
    reports = [verify(card, models_dir, members) for card in cards]
    # Without MODEL every known asset is checked too (after the models).
    assets = [] if model else list_asset_cards()
    asset_reports = [verify_asset(a, models_dir) for a in assets]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in reports] + [r.to_dict() for r in asset_reports], indent=2))
    else:
        for r in reports:
            click.echo(f"{r.model} in {r.directory} ({r.origin})")
            for m in r.members:
                if m.corrupt:
                    state = f"CORRUPT (sha256 {m.sha256})"
                elif m.sha256_ok:
                    state = "sha256 ok"
                else:
                    state = "weights missing"
                onnx = "onnx up to date" if m.onnx_current else ("onnx stale" if m.onnx_present else "no onnx")
                click.echo(f"  {m.name}: {state}, {onnx}")
    bad = [(r, p) for r in reports for p in r.problems()]
    _check_assets(assets, asset_reports, models_dir, as_json, raise_error=not bad)  # a model problem first
    if bad:
        r, first = bad[0]
        card = next(c for c in cards if c.ref == r.model)
        where = f" --models-dir {models_dir}" if models_dir is not None else ""
        raise ModelError(
            f"{r.model}: {len(bad)} member(s) missing or corrupt in {r.directory} (first: {first}); "
            f"run `ictus models pull {card.id}{where}` (add --from DIR for a local mirror)"
        )


def _pull_asset(
    asset: AssetCard, source: str | None, models_dir: Path | None, force: bool, retries: int, as_json: bool,
) -> None:
    report = pull_asset(asset, models_dir, source, force=force, retries=retries)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for f in report.files:
        click.echo(f"{f.path}: {f.action}, sha256 ok")
    click.echo(f"{asset.ref}: {len(report.files)} file(s) in {report.directory}")


def _check_assets(
    assets: list[AssetCard], reports: list[AssetVerifyReport], models_dir: Path | None, as_json: bool,
    raise_error: bool = True,
) -> None:
    """Print the state of each asset's files (unless JSON); ModelError (exit 5) for the first bad one."""
    if not as_json:
        for r in reports:
            click.echo(f"{r.asset} in {r.directory} ({r.origin})")
            for f in r.files:
                if f.corrupt:
                    state = f"CORRUPT (sha256 {f.sha256}, {f.size_bytes} bytes)"
                else:
                    state = "sha256 ok" if f.sha256_ok else "missing"
                click.echo(f"  {f.path}: {state}")
    for asset, r in zip(assets, reports):
        if raise_error and not r.ok:
            raise ModelError(verify_hint(asset, models_dir, r))
