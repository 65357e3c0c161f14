"""Train or fine-tune a MONAI SegResNet on a NIfTI dataset, with inference's preprocessing
(extra ``train``: torch and MONAI are imported here and in :mod:`ictus.models.monai_export` only).

Dataset layout (as PhysioNet CT-ICH publishes it): ``ROOT/ct_scans/NAME.nii[.gz]``
(HU) and ``ROOT/masks/NAME.nii[.gz]`` (labels on the image grid: the BLAST-CT
values 0 background, 1 IPH, 2 EAH, 3 oedema, 4 IVH, or a binary mask mapped to
one class with ``binary_label``).

Preprocessing is the inference code itself (:func:`ictus.models.preprocess.preprocess`):
reorientation, resampling to the card's spacing, the head box, HU window
scaling to [-1, 1]; masks are resampled onto the same box by nearest neighbour.
Patches are drawn half of the time around a labelled voxel and otherwise
around an intracranial ("deep tissue") voxel, the tissue inference computes.

The network is a MONAI ``SegResNet`` with batch normalisation (fixed statistics
at inference, so tiled inference equals untiled). Validation is Dice per class
(``monai.metrics.DiceMetric``) on whole validation boxes (sliding window);
checkpoints ``last.pt`` and ``best.pt`` and ``history.json`` are written after
each validation. :func:`ictus.models.monai_export.export_model` then writes the ONNX
member and its card for ``ictus triage --model``.

Full-size training (1 mm, 96^3 patches, init_filters 16, ~20k iterations) needs
a GPU with >= 12 GB; a few iterations on tiny phantoms run on a CPU in seconds.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ictus.imaging.atomic import atomic_path
from ictus.imaging.errors import InvalidInputError, ModelError
from ictus.imaging.volume import Volume

log = logging.getLogger(__name__)

CLASS_NAMES = ("background", "IPH", "EAH", "oedema", "IVH")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that changes a training run (saved next to the checkpoints)."""

    data_dir: str
    out_dir: str
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    window_hu: tuple[float, float] = (-15.0, 100.0)
    class_names: tuple[str, ...] = CLASS_NAMES
    binary_label: int | None = None  # a binary mask (>0) becomes this class value
    patch_vox: int = 96  # training patch edge (a multiple of size_multiple_vox)
    batch_size: int = 2
    iterations: int = 20000
    learning_rate: float = 1e-3
    validate_every: int = 500
    validation_fraction: float = 0.2
    init_filters: int = 16
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    foreground_fraction: float = 0.5
    seed: int = 0
    threads: int | None = None
    device: str | None = None  # "cuda", "cuda:1", "cpu"; None: CUDA when torch sees one, else CPU
    resume: str | None = None  # a checkpoint (.pt) to fine-tune from
    training_data: str = ""  # free text for the card (what the data is, where from, licence)

    @property
    def size_multiple_vox(self) -> int:
        """Input sizes SegResNet accepts are multiples of 2^(levels - 1)."""
        return 2 ** (len(self.blocks_down) - 1)


@dataclass
class PreparedCase:
    """One case in the model's space: normalised box, labels and where patches may centre."""

    name: str
    image: np.ndarray  # float32 [z, y, x], window-scaled
    labels: np.ndarray  # uint8 [z, y, x]
    deep: np.ndarray  # bool [z, y, x], intracranial tissue


@dataclass
class TrainResult:
    """Paths and numbers of a finished run."""

    config: TrainConfig
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_dice: float = math.nan
    train_cases: tuple[str, ...] = ()
    validation_cases: tuple[str, ...] = ()


# -- data -------------------------------------------------------------------------------
def _stem(path: Path) -> str:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def find_pairs(data_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, image, mask) of every ``ct_scans/NAME`` with a ``masks/NAME``."""
    root = Path(data_dir)
    scans, masks = root / "ct_scans", root / "masks"
    if not scans.is_dir() or not masks.is_dir():
        raise InvalidInputError(f"{root} needs ct_scans/ and masks/ folders of NIfTI files (the CT-ICH layout)")
    mask_by = {_stem(p): p for p in masks.iterdir() if p.name.endswith(NIFTI_SUFFIXES)}
    pairs = [(_stem(p), p, mask_by[_stem(p)]) for p in sorted(scans.iterdir())
             if p.name.endswith(NIFTI_SUFFIXES) and _stem(p) in mask_by]
    if not pairs:
        raise InvalidInputError(f"{root} has no ct_scans/NAME.nii[.gz] with a matching masks/NAME; check the names")
    return pairs


def prepare_case(name: str, image_path: Path, mask_path: Path, config: TrainConfig) -> PreparedCase:
    """Preprocess one case exactly as inference does and put its mask on the same box."""
    from ictus.models.preprocess import preprocess

    image = sitk.ReadImage(str(image_path), sitk.sitkFloat32)
    sx, sy, sz = config.spacing_mm  # a tuple also when the config was built with lists
    lo_hu, hi_hu = config.window_hu
    model_input = preprocess(
        Volume(image=image), spacing_mm=(sx, sy, sz), window_hu=(lo_hu, hi_hu),
        crop_to_head=True,
    )
    mask = sitk.ReadImage(str(mask_path))
    mask = sitk.Resample(mask, model_input.box_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    labels = sitk.GetArrayFromImage(mask).astype(np.uint8)
    if config.binary_label is not None:
        labels = np.where(labels > 0, config.binary_label, 0).astype(np.uint8)
    if labels.max() >= len(config.class_names):
        raise InvalidInputError(
            f"mask {mask_path.name} has label {int(labels.max())} but the model has {len(config.class_names)} classes; "
            "use binary_label for binary masks"
        )
    return PreparedCase(name=name, image=model_input.array, labels=labels, deep=model_input.deep | (labels > 0))


def sample_patch(case: PreparedCase, patch_vox: int, rng: np.random.Generator, foreground_fraction: float):
    """A (image, labels) patch of ``patch_vox``^3 centred on a labelled voxel (with
    probability ``foreground_fraction``) or an intracranial one; padded at the border."""
    pool = case.labels > 0 if (rng.random() < foreground_fraction and case.labels.any()) else case.deep
    if not pool.any():
        pool = np.ones(case.labels.shape, dtype=bool)
    idx = np.flatnonzero(pool)
    centre = np.unravel_index(int(idx[rng.integers(idx.size)]), pool.shape)
    half = patch_vox // 2
    lo = [int(c) - half for c in centre]
    sl, pad = [], []
    for start, n in zip(lo, case.image.shape):
        a, b = max(start, 0), min(start + patch_vox, n)
        sl.append(slice(a, b))
        pad.append((a - start, start + patch_vox - b))
    image = np.pad(case.image[tuple(sl)], pad, mode="constant", constant_values=-1.0)
    labels = np.pad(case.labels[tuple(sl)], pad, mode="constant", constant_values=0)
    return image, labels


# -- network ---------------------------------------------------------------------------
def build_network(config: TrainConfig) -> torch.nn.Module:
    """A MONAI SegResNet (batch norm) for ``config``."""
    from monai.networks.nets import SegResNet

    return SegResNet(
        spatial_dims=3, in_channels=1, out_channels=len(config.class_names), init_filters=config.init_filters,
        blocks_down=tuple(config.blocks_down), blocks_up=tuple(config.blocks_up), norm=("BATCH", {}),
    )


def save_checkpoint(path: Path, network: torch.nn.Module, config: TrainConfig, extra: dict[str, Any]) -> Path:
    """Write ``{"state_dict", "config", ...}`` atomically."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({"state_dict": network.state_dict(), "config": asdict(config), **extra}, tmp)
    return path


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, TrainConfig, dict[str, Any]]:
    """(network in eval mode, its config, the rest of the checkpoint)."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelError(f"cannot read checkpoint {Path(path).name} ({exc}); pass a .pt written by ictus train") from None
    raw = dict(data["config"])
    for key in ("spacing_mm", "window_hu", "class_names", "blocks_down", "blocks_up"):
        raw[key] = tuple(raw[key])
    config = TrainConfig(**raw)
    network = build_network(config)
    network.load_state_dict(data["state_dict"])
    return network.eval(), config, {k: v for k, v in data.items() if k not in ("state_dict", "config")}


# -- validation --------------------------------------------------------------------------
def pick_device(name: str | None = None) -> torch.device:
    """``name``, or CUDA when torch sees a GPU, else the CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def validate(network: torch.nn.Module, cases: Sequence[PreparedCase], config: TrainConfig) -> dict[str, float]:
    """Mean Dice per foreground class (MONAI DiceMetric, empty reference and prediction
    count as 1) on whole boxes, by sliding-window inference."""
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    n_classes = len(config.class_names)
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    network.eval()
    device = next(network.parameters()).device
    with torch.no_grad():
        for case in cases:
            x = torch.from_numpy(case.image)[None, None].to(device)
            logits = sliding_window_inference(  # non-overlapping windows: batch norm makes them agree
                x, (2 * config.patch_vox,) * 3, 1, network, overlap=0.0, padding_mode="constant", cval=-1.0
            )
            assert isinstance(logits, torch.Tensor)  # the network returns one tensor
            pred = one_hot(logits.argmax(1, keepdim=True).cpu(), n_classes)
            ref = one_hot(torch.from_numpy(case.labels.astype(np.int64))[None, None], n_classes)
            metric(pred, ref)
    aggregated = metric.aggregate()
    assert isinstance(aggregated, torch.Tensor)  # one tensor with reduction="none"
    values = aggregated.cpu().numpy()  # [cases, C-1]
    metric.reset()
    per_class = {name: float(np.nanmean(values[:, i])) for i, name in enumerate(config.class_names[1:])}
    per_class["mean"] = float(np.nanmean(list(per_class.values())))
    return per_class


# -- training ----------------------------------------------------------------------------
ARCHITECTURE_FIELDS = ("spacing_mm", "window_hu", "class_names", "init_filters", "blocks_down", "blocks_up")


def _with_checkpoint_architecture(config: TrainConfig) -> TrainConfig:
    """Fine-tuning keeps the checkpoint's network and preprocessing (spacing, window, classes)."""
    import dataclasses

    _, saved, _ = load_checkpoint(config.resume)  # type: ignore[arg-type]
    changes = {f: getattr(saved, f) for f in ARCHITECTURE_FIELDS if getattr(saved, f) != getattr(config, f)}
    if changes:
        log.info("fine-tuning keeps the checkpoint's %s", ", ".join(sorted(changes)))
    return dataclasses.replace(config, **changes)


def split_cases(names: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) names; at least one of each when there are two or more cases."""
    order = list(names)
    np.random.default_rng(seed).shuffle(order)
    n_val = min(max(1, int(round(fraction * len(order)))), len(order) - 1) if len(order) > 1 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def train(config: TrainConfig, *, on_log: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train (or fine-tune from ``config.resume``) and checkpoint into ``config.out_dir``."""
    from monai.losses import DiceCELoss

    if config.patch_vox % config.size_multiple_vox:
        raise InvalidInputError(
            f"patch size {config.patch_vox} is not a multiple of {config.size_multiple_vox}; choose e.g. "
            f"{config.size_multiple_vox * max(1, round(config.patch_vox / config.size_multiple_vox))}"
        )
    if config.resume:
        config = _with_checkpoint_architecture(config)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    rng = np.random.default_rng(config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = find_pairs(config.data_dir)
    train_names, val_names = split_cases([p[0] for p in pairs], config.validation_fraction, config.seed)
    t0 = time.perf_counter()
    prepared = {name: prepare_case(name, img, msk, config) for name, img, msk in pairs}
    log.info("prepared %d cases in %.1f s", len(prepared), time.perf_counter() - t0)
    train_cases = [prepared[n] for n in train_names]
    val_cases = [prepared[n] for n in val_names] or train_cases

    network = build_network(config)
    if config.resume:
        resumed, _, _ = load_checkpoint(config.resume)
        network.load_state_dict(resumed.state_dict())
    device = pick_device(config.device)
    network = network.to(device)
    log.info("training on %s", device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    history: list[dict[str, Any]] = []
    best = -math.inf
    best_path, last_path = out / "best.pt", out / "last.pt"
    for it in range(1, config.iterations + 1):
        network.train()
        batch = [sample_patch(train_cases[int(rng.integers(len(train_cases)))], config.patch_vox, rng,
                              config.foreground_fraction) for _ in range(config.batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])[:, None]).to(device)
        y = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64)[:, None]).to(device)
        optimiser.zero_grad()
        loss = loss_fn(network(x), y)
        loss.backward()
        optimiser.step()
        entry: dict[str, Any] = {"iteration": it, "loss": float(loss.detach())}
        if it % config.validate_every == 0 or it == config.iterations:
            dice = validate(network, val_cases, config)
            entry["val_dice"] = dice
            save_checkpoint(last_path, network, config, {"iteration": it, "val_dice": dice})
            if dice["mean"] > best or not best_path.exists():
                best = dice["mean"]
                save_checkpoint(best_path, network, config, {"iteration": it, "val_dice": dice})
            log.info("iteration %d: loss %.4f, validation Dice %.3f", it, entry["loss"], dice["mean"])
        history.append(entry)
        if on_log is not None:
            on_log(entry)
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    return TrainResult(
        config=config, best_checkpoint=best_path, last_checkpoint=last_path, history=history, best_dice=best,
        train_cases=tuple(train_names), validation_cases=tuple(val_names),
    )


def plot_loss_curve(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """A PNG of the training loss (and validation Dice where measured)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    its = [h["iteration"] for h in history]
    fig, ax = plt.subplots(figsize=(5.0, 3.0), dpi=100)
    ax.plot(its, [h["loss"] for h in history], lw=1, label="training loss (Dice + CE)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    handles = ax.get_lines()
    val = [(h["iteration"], h["val_dice"]["mean"]) for h in history if "val_dice" in h]
    if val:
        ax2 = ax.twinx()
        handles += ax2.plot(*zip(*val), "o-", color="tab:orange", label="validation Dice (mean over classes)")
        ax2.set_ylabel("validation Dice")
        ax2.set_ylim(0, 1)
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
