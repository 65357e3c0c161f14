"""ictus.models.onnx_build: torch-free ONNX conversion, checked against the blast-ct reference network."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from ictus.imaging.errors import ModelError
from ictus.models.legacy_pt import read_state_dict
from ictus.models.onnx_build import build_model, convert_member, parse_spec, read_metadata, sha256_file
from tests.conftest import blast_ct_weights

ort = pytest.importorskip("onnxruntime")

MEMBERS = [f"model_{n}.pt" for n in range(1, 13)]


def _member(name: str):
    return blast_ct_weights() / "saved_models_v1" / name


def _session(model: onnx.ModelProto | str):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _reference_logits(pt_path, image: np.ndarray) -> np.ndarray:
    """Logits of blast-ct's own DeepMedic module (not its CLI) in eval mode."""
    torch = pytest.importorskip("torch")
    deepmedic = pytest.importorskip("blast_ct.models.deepmedic")
    torch.set_num_threads(2)
    network = deepmedic.DeepMedic(input_channels=1, num_classes=5)
    network.load_state_dict(torch.load(pt_path, map_location="cpu", weights_only=True), strict=True)
    network.eval()
    with torch.no_grad():
        logits, _ = network(torch.from_numpy(image))
    return logits.numpy()


@pytest.fixture(scope="module")
def member_1_session():
    return _session(build_model(read_state_dict(_member("model_1.pt"))))


@pytest.mark.slow
@pytest.mark.parametrize("size", [(110, 110, 110), (85, 100, 115)])
def test_logits_match_reference_network(member_1_session, size):
    # 110^3 is blast-ct's inference patch; 85x100x115 exercises odd sizes and the
    # x3 pathway's size-dependent crops on each axis separately.
    rng = np.random.default_rng(sum(size))
    image = rng.uniform(-1.0, 1.0, (1, 1, *size)).astype(np.float32)
    ours = member_1_session.run(["logits"], {"image": image})[0]
    theirs = _reference_logits(_member("model_1.pt"), image)
    assert ours.shape == theirs.shape == (1, 5, *(s - 80 for s in size))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)


def test_all_members_convert_with_metadata(tmp_path):
    card = {"model_id": "blast-ct", "class_names": "background,IPH,EAH,oedema,IVH", "spacing_mm": "1,1,1",
            "window_hu": "-15,100"}
    for name in MEMBERS:
        pt_path = _member(name)
        out = convert_member(pt_path, tmp_path / "onnx" / name.replace(".pt", ".onnx"), metadata=card)
        onnx.checker.check_model(str(out), full_check=True)
        meta = read_metadata(out)
        assert meta["source_sha256"] == sha256_file(pt_path)
        assert meta["member"] == name[:-3]
        assert meta["context_voxels"] == "40,40,40"
        assert meta["phase_multiple"] == "15,15,15"
        assert {k: meta[k] for k in card} == card
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted(n.replace(".pt", ".onnx") for n in MEMBERS)


def test_second_member_batch_of_two_matches_reference(tmp_path):
    pt_path = _member("model_7.pt")
    out = convert_member(pt_path, tmp_path / "model_7.onnx")
    image = np.random.default_rng(7).uniform(-1.0, 1.0, (2, 1, 85, 90, 85)).astype(np.float32)
    ours = _session(str(out)).run(None, {"image": image})[0]
    np.testing.assert_allclose(ours, _reference_logits(pt_path, image), rtol=0, atol=1e-3)


def test_dynamic_axes_are_declared():
    model = build_model(read_state_dict(_member("model_1.pt")))
    (inp,) = model.graph.input
    (out,) = model.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "depth", "height", "width"]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim][:2] == ["batch", 5]
    assert model.opset_import[0].version == 17


def test_spec_sizes_follow_the_reference_rule():
    spec = parse_spec(read_state_dict(_member("model_1.pt")))
    assert [p.scale for p in spec.paths] == [(5, 5, 5), (3, 3, 3), (1, 1, 1)]
    assert spec.output_size((110, 125, 85)) == (30, 45, 5)
    assert spec.input_size((30, 45, 5)) == (110, 125, 85)
    assert [p.input_size((30, 30, 30)) for p in spec.paths] == [(110,) * 3, (78,) * 3, (46,) * 3]
    with pytest.raises(ModelError, match="not valid"):
        spec.output_size((111, 110, 110))


def test_wrong_state_dict_is_refused():
    state = read_state_dict(_member("model_1.pt"))
    with pytest.raises(ModelError, match="unexpected key"):
        build_model({**state, "classifier.weight": np.zeros(3, np.float32)})
    broken = dict(state)
    del broken["path(3, 3, 3)1.path.4.conv.weight"]
    with pytest.raises(ModelError, match="lacks"):
        build_model(broken)


def test_conversion_is_atomic_and_failure_leaves_no_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    target = tmp_path / "bad.onnx"
    with pytest.raises(ModelError):
        convert_member(bad, target)
    assert list(tmp_path.iterdir()) == [bad]


def test_converter_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, ictus.models.onnx_build, ictus.models.legacy_pt; assert 'torch' not in sys.modules, 'torch imported'"
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
