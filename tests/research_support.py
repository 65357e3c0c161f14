"""Helpers for the researcher-side tests: tiny phantom datasets and a tiny trained model.

Everything is built by our own code (``ictus phantom``, ``ictus.models.train``) into a
pytest temporary folder and reused within one test session.
"""
from __future__ import annotations

from pathlib import Path

# (haemorrhage, volume mL, midline shift mm); None = no haemorrhage
TINY_SPECS = (("IPH", 25.0, 0.0), ("EAH", 30.0, 0.0), (None, 0.0, 0.0), ("IVH", 15.0, 0.0))
TINY_PHANTOM_ARGS = ("--matrix", "96", "--pixel-spacing-mm", "2.4", "--slice-thickness-mm", "5")


def make_phantoms(root: Path, specs=TINY_SPECS) -> Path:
    """``root/pNN`` phantom studies made with ``ictus phantom`` (the CLI, in-process)."""
    from click.testing import CliRunner

    from ictus.pipelines.cli import cli

    root.mkdir(parents=True, exist_ok=True)
    for i, (kind, volume_ml, shift_mm) in enumerate(specs):
        out = root / f"p{i:02d}"
        if (out / "ground_truth.json").is_file():
            continue
        args = ["phantom", str(out), *TINY_PHANTOM_ARGS, "--seed", str(i)]
        if kind:
            args += ["--haemorrhage", kind, "--haemorrhage-volume-ml", str(volume_ml)]
        if shift_mm:
            args += ["--midline-shift-mm", str(shift_mm)]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return root


def phantoms_to_nifti(phantoms: Path, root: Path) -> Path:
    """The phantoms in the CT-ICH layout: ``root/ct_scans/NNN.nii.gz`` and ``root/masks/NNN.nii.gz``."""
    import SimpleITK as sitk

    from ictus.pipelines.research.datasets import load_volume_and_mask

    (root / "ct_scans").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for i, folder in enumerate(sorted(p for p in phantoms.iterdir() if p.is_dir())):
        image_path, mask_path = root / "ct_scans" / f"{i:03d}.nii.gz", root / "masks" / f"{i:03d}.nii.gz"
        if image_path.is_file() and mask_path.is_file():
            continue
        volume, mask = load_volume_and_mask(folder, folder / "ground_truth_labels.nii.gz")
        sitk.WriteImage(volume.image, str(image_path))
        m = sitk.GetImageFromArray(mask)
        m.CopyInformation(volume.image)
        sitk.WriteImage(m, str(mask_path))
    return root


def tiny_model(base: Path, iterations: int = 4) -> Path:
    """Train a tiny SegResNet (2 mm, 8 filters, 3 levels) on tiny phantoms and export it;
    returns ``card.json`` (built once per ``base``)."""
    card = base / "run" / "model" / "card.json"
    if card.is_file():
        return card
    from ictus.models.monai_export import export_model
    from ictus.models.train import TrainConfig, train

    data = phantoms_to_nifti(make_phantoms(base / "phantoms"), base / "nifti")
    config = TrainConfig(
        data_dir=str(data), out_dir=str(base / "run"), spacing_mm=(2.0, 2.0, 2.0), patch_vox=32, batch_size=2,
        iterations=iterations, validate_every=iterations, init_filters=8, blocks_down=(1, 1, 1), blocks_up=(1, 1),
        threads=2, training_data="4 tiny Ictus phantoms (test)",
    )
    result = train(config)
    return export_model(result.best_checkpoint, base / "run" / "model", model_id="tiny-segresnet")
