"""Export our torch DeepMedic to ONNX with torch's exporter (extra ``train``).

For models we train ourselves. The published BLAST-CT weights are converted
without torch by :func:`ictus.models.onnx_build.convert_member`; both routes give the
same graph semantics (input ``image`` [N, C, D, H, W], output ``logits``,
dynamic batch and spatial axes, opset 17) and agree within float tolerance.
"""
from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import torch
from onnx import helper

from ictus.imaging.errors import ModelError
from ictus.models.deepmedic.network import DeepMedic, PreActBlock, deepmedic_for_state_dict
from ictus.models.onnx_build import INPUT_NAME, OPSET, OUTPUT_NAME, write_model_atomic

logger = logging.getLogger(__name__)


def export_network(network: DeepMedic, *, metadata: Mapping[str, str] | None = None) -> onnx.ModelProto:
    """Trace ``network`` (eval mode) with the legacy exporter into an ONNX model with dynamic axes."""
    network = network.eval()
    first = network.pathways[0]
    block = first.path[1]
    assert isinstance(block, PreActBlock)  # the path is DownSample, PreActBlock..., UpSample
    channels = block.bn.num_features
    # The smallest valid input (85^3 for BLAST-CT) keeps tracing cheap; sizes are traced, not baked in.
    smallest = [(1 + n) * s for n, s in zip(first.shrink, first.scale)]
    example = torch.zeros((1, channels, *smallest), dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter from the legacy exporter
        torch.onnx.export(
            # the legacy exporter (dynamo=False) writes to a file-like object; torch types ``f`` as a path only
            network, (example,), buffer,  # type: ignore[arg-type]
            dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 2: "depth", 3: "height", 4: "width"},
                          OUTPUT_NAME: {0: "batch", 2: "out_depth", 3: "out_height", 4: "out_width"}})
    model = onnx.load_from_string(buffer.getvalue())
    props = {"architecture": "DeepMedic", "exporter": f"torch.onnx legacy (torch {torch.__version__})",
             "input_name": INPUT_NAME, "output_name": OUTPUT_NAME}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ModelError(f"ONNX metadata must map strings to strings; got {key!r}: {type(value).__name__}.")
        props[key] = value
    helper.set_model_props(model, props)
    return model


def export_torch_member(state_dict: Mapping[str, torch.Tensor | np.ndarray], onnx_path: str | Path, *,
                        metadata: Mapping[str, str] | None = None) -> Path:
    """Export a DeepMedic state dict (torch tensors or numpy arrays) to ``onnx_path``, atomically."""
    onnx_path = Path(onnx_path)
    model = export_network(deepmedic_for_state_dict(state_dict), metadata=metadata)
    onnx.checker.check_model(model)
    write_model_atomic(model, onnx_path)
    logger.info("exported torch DeepMedic to %s", onnx_path.name)
    return onnx_path
