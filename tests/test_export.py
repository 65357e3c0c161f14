"""ictus.models.export: torch.onnx export of our port agrees with the torch-free onnx_build graph."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from ictus.models.legacy_pt import read_state_dict
from ictus.models.onnx_build import build_model
from tests.conftest import blast_ct_weights

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from ictus.models.export import export_torch_member  # noqa: E402  (needs torch)


def _session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    state = read_state_dict(blast_ct_weights() / "saved_models_v1" / "model_3.pt")
    exported = export_torch_member(state, tmp_path_factory.mktemp("export") / "model_3.onnx",
                                   metadata={"member": "model_3"})
    return _session(exported), _session(build_model(state)), exported


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 1, 85, 100, 115), (2, 1, 90, 85, 85)])
def test_torch_export_agrees_with_onnx_build(sessions, shape):
    # Traced at 85^3; other sizes and batches check that the spatial and batch axes stayed dynamic.
    exported, built, _ = sessions
    image = np.random.default_rng(11).uniform(-1, 1, shape).astype(np.float32)
    a = exported.run(["logits"], {"image": image})[0]
    b = built.run(["logits"], {"image": image})[0]
    assert a.shape == b.shape == (shape[0], 5, *(s - 80 for s in shape[2:]))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_export_is_valid_onnx_with_metadata(sessions):
    _, _, path = sessions
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    assert {p.key: p.value for p in model.metadata_props}["member"] == "model_3"
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "depth", "height", "width"]
    assert not list(path.parent.glob("*.tmp"))
