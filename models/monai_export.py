"""Export a SegResNet trained by :mod:`ictus.models.train` to ONNX plus a model card (extra ``train``).

The runtime (:mod:`ictus.models.runtime`) feeds every member a window of ``tile +
2 * 40`` voxels and expects ``tile`` output voxels (BLAST-CT's DeepMedic
contract). SegResNet is same-size in, same-size out and needs input sizes that
are multiples of 2^(levels - 1), so the exported graph wraps it:

1. crop the window to the largest multiple of that size (centred; at most
   ``multiple - 1`` voxels of context are dropped);
2. run the network;
3. crop the output to the central region, ``context`` voxels in from each side
   of the window.

So any window of more than ``2 * context`` voxels per axis is valid (card:
``valid_input_offset_vox`` = 80, ``valid_input_step_vox`` = 1) and tiled
inference equals untiled inference (batch norm has fixed statistics). The card
lists one member whose file is the ONNX itself, with its sha256, and a stamp
``model_1.onnx.json`` next to it so that :func:`ictus.models.weights.resolve_members`
checks the file against the card before every use.
"""
from __future__ import annotations

import io
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import onnx
import torch
from onnx import helper

from ictus.imaging.errors import ModelError
from ictus.models.weights import file_sha256
from ictus.models.train import TrainConfig, load_checkpoint

log = logging.getLogger(__name__)

CONTEXT_VOX = 40  # what ictus.models.runtime gives each side of an output tile
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logits"
MEMBER = "model_1"


class CroppedSegmenter(torch.nn.Module):
    """``window [N, 1, z, y, x] -> logits [N, C, z - 2c, y - 2c, x - 2c]`` around a same-size network."""

    def __init__(self, network: torch.nn.Module, multiple_vox: int, context_vox: int = CONTEXT_VOX) -> None:
        super().__init__()
        self.network = network
        self.multiple_vox = int(multiple_vox)
        self.context_vox = int(context_vox)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = [slice(None), slice(None)]
        outer = [slice(None), slice(None)]
        for axis in (2, 3, 4):
            n = x.shape[axis]
            m = (n // self.multiple_vox) * self.multiple_vox
            a = (n - m) // 2
            inner.append(slice(a, a + m))
            outer.append(slice(self.context_vox - a, n - self.context_vox - a))
        return self.network(x[tuple(inner)])[tuple(outer)]


def export_onnx(network: torch.nn.Module, config: TrainConfig, onnx_path: str | Path,
                metadata: Mapping[str, str] | None = None) -> Path:
    """Trace the wrapped network (legacy exporter, dynamic batch and spatial axes) to ``onnx_path``."""
    wrapped = CroppedSegmenter(network.eval(), config.size_multiple_vox).eval()
    example = torch.zeros((1, 1) + (2 * CONTEXT_VOX + 2 * config.size_multiple_vox + 3,) * 3)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic (recorded as graph ops)
        torch.onnx.export(
            wrapped, (example,), buffer, dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 2: "depth", 3: "height", 4: "width"},
                          OUTPUT_NAME: {0: "batch", 2: "out_depth", 3: "out_height", 4: "out_width"}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    props = {"architecture": "MONAI SegResNet (cropped to the runtime's tile contract)",
             "exporter": f"torch.onnx legacy (torch {torch.__version__})"}
    props.update(metadata or {})
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    path = Path(onnx_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, path)
    return path


def _class_entries(class_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Card classes with the codes of the shipped BLAST-CT card where the names match."""
    from ictus.models.registry import get_card

    try:
        known = {c["name"]: c for c in get_card("blast-ct").to_dict()["classes"]}
    except ModelError:
        known = {}
    out = []
    for value, name in enumerate(class_names):
        entry = dict(known.get(name, {"name": name, "description": name, "codes": {}}))
        entry["value"] = value
        out.append(entry)
    return out


def build_card(config: TrainConfig, *, model_id: str, version: str, member_file: str, size_bytes: int, sha256: str,
               metrics: Mapping[str, Any], training: Mapping[str, Any]) -> dict[str, Any]:
    """The card JSON of an exported model (the format of ``models/cards/blast-ct-v1.json``)."""
    lo, hi = config.window_hu
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
            "input_size_vox": config.patch_vox + 2 * CONTEXT_VOX,
            "output_size_vox": config.patch_vox,
            "valid_input_rule": f"any size > {2 * CONTEXT_VOX} voxels per axis gives size - {2 * CONTEXT_VOX} output voxels",
            "valid_input_offset_vox": 2 * CONTEXT_VOX,
            "valid_input_step_vox": 1,
            "context_vox": CONTEXT_VOX,
            "tile_multiple_vox": 15,
            "network_size_multiple_vox": config.size_multiple_vox,
            "training_patch_vox": config.patch_vox,
            "note": (
                "SegResNet is same-size in/out with sizes multiple of "
                f"{config.size_multiple_vox}; the exported graph crops the runtime's window to that multiple, runs "
                f"the network and keeps the centre ({CONTEXT_VOX} voxels in from each side), so it fits the runtime's "
                "fixed 40-voxel context and 15-voxel tile grid."
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
        "onnx": {"opset": OPSET, "input": f"float32 [N, 1, z, y, x], each > {2 * CONTEXT_VOX}",
                 "output": f"float32 logits [N, C, z-{2 * CONTEXT_VOX}, y-{2 * CONTEXT_VOX}, x-{2 * CONTEXT_VOX}]",
                 "dynamic_axes": "batch and spatial"},
    }


def export_model(checkpoint: str | Path, out_dir: str | Path, *, model_id: str = "ictus-segresnet",
                 version: str = "v1", training: Mapping[str, Any] | None = None) -> Path:
    """Write ``OUT/model_1.onnx``, its stamp and ``OUT/card.json`` from a checkpoint; returns the card path.

    ``load_card(OUT)`` accepts the result and ``ictus triage --model OUT/card.json`` runs it.
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
                      sha256=sha, metrics=metrics, training=dict(training or {}))
    stamp = {"model": f"{model_id}:{version}", "member": MEMBER, "source_file": onnx_path.name,
             "source_sha256": sha, "onnx_size_bytes": size, "onnx_sha256": sha,
             "converted_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "convert_s": 0.0}
    (out / f"{onnx_path.name}.json").write_text(json.dumps(stamp, indent=2) + "\n")
    card_path = out / "card.json"
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    from ictus.models.registry import load_card

    load_card(card_path)  # fail here, not at triage time, if the card is not accepted
    log.info("exported %s to %s", Path(checkpoint).name, card_path)
    return card_path
