"""Export a SegResNet trained by :mod:`ictus.models.train` to ONNX plus a model card (extra ``train``).

The exported graph is the network itself. SegResNet is fully convolutional,
same-size in and out, and takes input sizes that are multiples of
``m = 2^(levels - 1)``; its card says so and the runtime (:mod:`ictus.models.runtime`)
tiles by it (:class:`ictus.models.geometry.TileGeometry`):

- ``valid_input_offset_vox`` 0 and ``valid_input_step_vox`` m: any multiple of m
  is a valid input and gives as many output voxels;
- ``tile_multiple_vox`` m: tiles start on and measure multiples of m, so every
  tile sees the same down-sampling phase;
- ``context_vox``: the input the runtime adds on each side of a tile (a multiple
  of m / 2, default 2m) and then crops off the output;
- ``runtime.cost_model``: ``per_input_voxel`` with the network's
  multiply-accumulates per input voxel (counted at export), so the runtime
  chooses among ``runtime.tile_candidates_vox`` (4, 6, 8, 12 times m) the tile
  size with the least compute.

(Until 2026-12 the graph was wrapped to fit DeepMedic's 40-voxel context and
15-voxel grid: crop the window to a multiple of m, run, keep the centre; ~6.7x
more compute per output voxel. Such cards still run: their ``patch`` block says
offset 80, step 1.) The card
lists one member whose file is the ONNX itself, with its sha256, and a stamp
``model_1.onnx.json`` next to it so that :func:`ictus.models.weights.resolve_members`
checks the file against the card before every use.
"""
from __future__ import annotations

import io
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import onnx
import torch
from onnx import helper

from ictus.imaging.atomic import atomic_path
from ictus.imaging.errors import ModelError
from ictus.models.hashing import file_sha256
from ictus.models.registry import DEFAULT_MODEL, get_card, load_card
from ictus.models.train import TrainConfig, load_checkpoint

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logits"
MEMBER = "model_1"
TILE_FACTORS = (4, 6, 8, 12)  # tile sizes the runtime may choose, in multiples of m


def default_context_vox(config: TrainConfig) -> int:
    """Context per side the card gives a SegResNet: two down-sampling cells (2m)."""
    return 2 * config.size_multiple_vox


def gmac_per_input_voxel(network: torch.nn.Module, size_multiple_vox: int) -> float:
    """The network's multiply-accumulates (G) per input voxel, counted on a small input
    (every 3-D convolution and transposed convolution, by forward hooks)."""
    macs = [0]

    def count(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        weight: torch.Tensor = getattr(module, "weight")
        if isinstance(module, torch.nn.ConvTranspose3d):
            macs[0] += inputs[0].numel() * weight.shape[1] * int(weight[0, 0].numel())
        else:
            macs[0] += output.numel() * int(weight[0].numel())

    hooks = [m.register_forward_hook(count) for m in network.modules()
             if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    side = 4 * size_multiple_vox
    try:
        with torch.no_grad():
            network.eval()(torch.zeros((1, 1, side, side, side)))
    finally:
        for h in hooks:
            h.remove()
    return macs[0] / side**3 / 1e9


def export_onnx(network: torch.nn.Module, config: TrainConfig, onnx_path: str | Path,
                metadata: Mapping[str, str] | None = None) -> Path:
    """Trace the network itself (legacy exporter, dynamic batch and spatial axes) to ``onnx_path``."""
    network = network.eval()
    example = torch.zeros((1, 1) + (4 * config.size_multiple_vox,) * 3)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic (recorded as graph ops)
        torch.onnx.export(
            # the legacy exporter (dynamo=False) writes to a file-like object; torch types ``f`` as a path only
            network, (example,), buffer,  # type: ignore[arg-type]
            dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 2: "depth", 3: "height", 4: "width"},
                          OUTPUT_NAME: {0: "batch", 2: "out_depth", 3: "out_height", 4: "out_width"}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    props = {"architecture": "MONAI SegResNet (same-size output; input sizes multiples of "
                             f"{config.size_multiple_vox})",
             "exporter": f"torch.onnx legacy (torch {torch.__version__})"}
    props.update(metadata or {})
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    path = Path(onnx_path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(model.SerializeToString())
    return path


def _class_entries(class_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Card classes with the codes of the shipped BLAST-CT card where the names match."""
    try:
        known = {c["name"]: c for c in get_card(DEFAULT_MODEL).to_dict()["classes"]}
    except ModelError:
        known = {}
    out = []
    for value, name in enumerate(class_names):
        entry = dict(known.get(name, {"name": name, "description": name, "codes": {}}))
        entry["value"] = value
        out.append(entry)
    return out


def build_card(config: TrainConfig, *, model_id: str, version: str, member_file: str, size_bytes: int, sha256: str,
               metrics: Mapping[str, Any], training: Mapping[str, Any], context_vox: int | None = None,
               gmac_per_voxel: float | None = None) -> dict[str, Any]:
    """The card JSON of an exported model (the format of ``models/cards/blast-ct-v1.json``),
    with SegResNet's own geometry (see the module docstring)."""
    lo, hi = config.window_hu
    m = config.size_multiple_vox
    context = default_context_vox(config) if context_vox is None else int(context_vox)
    if context < 0 or (2 * context) % m:
        raise ModelError(f"context {context} voxels is not a multiple of {m} / 2; choose e.g. {2 * m}")
    cost: dict[str, Any] = {"kind": "per_input_voxel"}
    if gmac_per_voxel is not None:
        cost["gmac_per_input_voxel"] = float(gmac_per_voxel)
    return {
        "card_format": 1,
        "id": model_id,
        "version": version,
        "name": f"{model_id} (MONAI SegResNet trained with ictus train)",
        "description": "A MONAI SegResNet trained by `ictus train` with the inference preprocessing of Ictus.",
        "architecture": {
            "family": "SegResNet (MONAI)",
            "init_filters": config.init_filters,
            "blocks_down": list(config.blocks_down),
            "blocks_up": list(config.blocks_up),
            "norm": "batch",
            "input_channels": 1,
            "output": "logits; softmax gives probabilities",
        },
        "classes": _class_entries(tuple(config.class_names)),
        "preprocessing": {
            "reorient": "nearest axis-aligned direction (ictus.models.preprocess, as for BLAST-CT)",
            "spacing_mm": list(config.spacing_mm),
            "interpolation": "linear",
            "window_hu": [lo, hi],
            "scaling": f"x = (2 * clip(HU, lo, hi) - lo - hi) / (hi - lo) with [lo, hi] = [{lo:g}, {hi:g}], mapping the window to [-1, 1]",
            "postprocessing": "argmax of the softmax; back to the input grid as the runtime does",
        },
        "patch": {
            "input_size_vox": config.patch_vox,
            "output_size_vox": config.patch_vox,
            "valid_input_rule": f"any multiple of {m} voxels per axis gives as many output voxels",
            "valid_input_offset_vox": 0,
            "valid_input_step_vox": m,
            "context_vox": context,
            "tile_multiple_vox": m,
            "network_size_multiple_vox": m,
            "training_patch_vox": config.patch_vox,
            "note": (
                f"SegResNet is same-size in/out with sizes multiples of {m}; the runtime feeds each output tile "
                f"(a multiple of {m}, starting on a multiple of {m}) with {context} voxels of context per side and "
                "crops them off the output."
            ),
        },
        "members": [{"name": MEMBER, "file": member_file, "path": member_file, "size_bytes": size_bytes,
                     "sha256": sha256, "url": ""}],
        "fast_member": MEMBER,
        "default_members": [MEMBER],
        "source": {"repository": "", "commit": "", "url": "", "raw_base_url": "",
                   "note": "trained locally with `ictus train`"},
        "license": {"spdx": "", "copyright": ""},
        "citation": {"text": "", "doi": ""},
        "intended_use": "Research only: a locally trained model, not validated for clinical triage.",
        "training_data": config.training_data or f"NIfTI dataset at {Path(config.data_dir).name}",
        "training": dict(training),
        "metrics": dict(metrics),
        "known_limitations": [
            "Trained locally; its validation is only what `metrics` reports on the held-out cases named there.",
        ],
        "onnx": {"opset": OPSET, "input": f"float32 [N, 1, z, y, x], each a multiple of {m}",
                 "output": "float32 logits [N, C, z, y, x]",
                 "dynamic_axes": "batch and spatial"},
        "runtime": {
            "tile_candidates_vox": [f * m for f in TILE_FACTORS],
            "cost_model": cost,
        },
    }


def export_model(checkpoint: str | Path, out_dir: str | Path, *, model_id: str = "ictus-segresnet",
                 version: str = "v1", training: Mapping[str, Any] | None = None,
                 context_vox: int | None = None) -> Path:
    """Write ``OUT/model_1.onnx``, its stamp and ``OUT/card.json`` from a checkpoint; returns the card path.

    ``context_vox``: the context per side the card asks of the runtime (default
    :func:`default_context_vox`). ``load_card(OUT)`` accepts the result and
    ``ictus triage --model OUT/card.json`` runs it.
    """
    network, config, extra = load_checkpoint(checkpoint)
    out = Path(out_dir)
    onnx_path = export_onnx(network, config, out / f"{MEMBER}.onnx",
                            metadata={"ictus.model_id": model_id, "ictus.model_version": version,
                                      "ictus.class_names": json.dumps(list(config.class_names))})
    sha = file_sha256(onnx_path)
    size = onnx_path.stat().st_size
    metrics = {"validation_dice": extra.get("val_dice", {}), "iteration": extra.get("iteration")}
    card = build_card(config, model_id=model_id, version=version, member_file=onnx_path.name, size_bytes=size,
                      sha256=sha, metrics=metrics, training=dict(training or {}), context_vox=context_vox,
                      gmac_per_voxel=gmac_per_input_voxel(network, config.size_multiple_vox))
    stamp = {"model": f"{model_id}:{version}", "member": MEMBER, "source_file": onnx_path.name,
             "source_sha256": sha, "onnx_size_bytes": size, "onnx_sha256": sha,
             "converted_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "convert_s": 0.0}
    (out / f"{onnx_path.name}.json").write_text(json.dumps(stamp, indent=2) + "\n")
    card_path = out / "card.json"
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    load_card(card_path)  # fail here, not at triage time, if the card is not accepted
    log.info("exported %s to %s", Path(checkpoint).name, card_path)
    return card_path
