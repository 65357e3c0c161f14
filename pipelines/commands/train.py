"""``ictus train DATA --out DIR`` and ``ictus train --export CHECKPOINT``: MONAI training (extra ``train``).

torch and MONAI are imported inside the command, so the CLI works without the
extra; without it the command says what to install (exit 5).
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ictus.imaging.errors import ModelError


def _require_train_extra() -> None:
    try:
        import monai  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"training needs the extra 'train' ({exc.name} is missing); run: pip install 'ictus[train]'") from None


def _triple(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) <= 0:
        raise click.BadParameter(f"{text!r} is not one or three positive numbers (mm)")
    return tuple(parts)  # type: ignore[return-value]


@click.command("train")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Run folder: checkpoints, history.json, loss.png and (with --export) model/card.json.")
@click.option("--iterations", type=click.IntRange(1, None), default=20000, show_default=True)
@click.option("--validate-every", type=click.IntRange(1, None), default=500, show_default=True)
@click.option("--patch-vox", type=click.IntRange(8, None), default=96, show_default=True, help="Training patch edge.")
@click.option("--batch-size", type=click.IntRange(1, None), default=2, show_default=True)
@click.option("--lr", "learning_rate", type=click.FloatRange(0, None, min_open=True), default=1e-3, show_default=True)
@click.option("--init-filters", type=click.IntRange(2, None), default=16, show_default=True)
@click.option("--levels", type=click.IntRange(2, 6), default=4, show_default=True,
              help="SegResNet levels (input sizes are multiples of 2^(levels-1)).")
@click.option("--spacing-mm", default="1", show_default=True, help="Model spacing (one value or x,y,z).")
@click.option("--window-hu", default="-15,100", show_default=True, help="HU window scaled to [-1, 1].")
@click.option("--binary-label", type=click.IntRange(1, 4), default=None,
              help="Masks are binary: map > 0 to this class value (1 IPH, 2 EAH, 3 oedema, 4 IVH).")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Fine-tune from this checkpoint.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="torch CPU threads.")
@click.option("--device", default=None, help="torch device, e.g. cuda or cpu (default: CUDA when available).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--training-data", default="", help="Free-text description of the data for the model card.")
@click.option("--export/--no-export", default=True, show_default=True,
              help="Export the best checkpoint to OUT/model (ONNX + card.json) at the end.")
@click.option("--model-id", default="ictus-segresnet", show_default=True)
def command(data_dir: Path, out_dir: Path, iterations: int, validate_every: int, patch_vox: int, batch_size: int,
            learning_rate: float, init_filters: int, levels: int, spacing_mm: str, window_hu: str,
            binary_label: int | None, resume: Path | None, threads: int | None, device: str | None, seed: int, training_data: str,
            export: bool, model_id: str) -> None:
    """Train a MONAI SegResNet on DATA_DIR (ct_scans/ + masks/ NIfTI, the CT-ICH layout)."""
    _require_train_extra()
    from ictus.models.train import TrainConfig, plot_loss_curve, train

    lo_hi = [float(v) for v in window_hu.split(",")]
    if len(lo_hi) != 2 or not lo_hi[0] < lo_hi[1]:
        raise click.BadParameter(f"{window_hu!r} is not LOW,HIGH with LOW < HIGH", param_hint="--window-hu")
    config = TrainConfig(
        data_dir=str(data_dir), out_dir=str(out_dir), spacing_mm=_triple(spacing_mm), window_hu=(lo_hi[0], lo_hi[1]),
        binary_label=binary_label, patch_vox=patch_vox, batch_size=batch_size, iterations=iterations,
        learning_rate=learning_rate, validate_every=validate_every, init_filters=init_filters,
        blocks_down=(1, 2, 2, 4, 4, 4)[:levels], blocks_up=(1,) * (levels - 1), seed=seed, threads=threads, device=device,
        resume=str(resume) if resume else None, training_data=training_data,
    )

    def on_log(entry: dict) -> None:
        if "val_dice" in entry:
            click.echo(f"iteration {entry['iteration']}: loss {entry['loss']:.4f}, "
                       f"validation Dice {entry['val_dice']['mean']:.3f}", err=True)

    result = train(config, on_log=on_log)
    plot_loss_curve(result.history, Path(out_dir) / "loss.png")
    summary = {"best_checkpoint": str(result.best_checkpoint), "best_validation_dice": result.best_dice,
               "train_cases": list(result.train_cases), "validation_cases": list(result.validation_cases)}
    if export:
        from ictus.models.monai_export import export_model

        summary["card"] = str(export_model(
            result.best_checkpoint, Path(out_dir) / "model", model_id=model_id,
            training={"iterations": iterations, "train_cases": list(result.train_cases),
                      "validation_cases": list(result.validation_cases)},
        ))
    click.echo(json.dumps(summary, indent=2))
