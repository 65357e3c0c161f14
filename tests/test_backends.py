"""models.backends: the choice of inference engine, and every installed engine within 1e-4
of onnxruntime's CPU logits on the same patches (a stand-in graph always; the real BLAST-CT
member when the weights are present)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ictus.imaging.errors import ModelError
from ictus.models import backends
from ictus.models.backends import BACKENDS, backend_info, choose_backend, load_runner, openvino_available
from ictus.models.runtime import load_without_denormals

from conftest import blast_ct_weights

INSTALLED = [b for b in BACKENDS if b != "auto" and (b != "openvino" or openvino_available())]


def _conv_member(path: Path, seed: int = 0) -> Path:
    """A small 3D convolutional graph with dynamic spatial axes: two 3x3x3 convolutions
    (ReLU between) to 5 channels, valid padding (each output voxel sees 2 voxels each side)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 1, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (5, 8, 3, 3, 3)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "b2")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w1", "b1"], ["h"]),
         helper.make_node("Relu", ["h"], ["hr"]),
         helper.make_node("Conv", ["hr", "w2", "b2"], ["logits"])],
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, "z", "y", "x"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5, "oz", "oy", "ox"])],
        [w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _patches(shapes, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, (1, 1, *s)).astype(np.float32) for s in shapes]


def _reference(model_bytes: bytes, patches):
    ref = load_runner("onnxruntime", model_bytes, threads=2, providers=["CPUExecutionProvider"])
    return [ref.run(p) for p in patches]


@pytest.mark.parametrize("backend", INSTALLED)
def test_backend_agrees_with_onnxruntime_cpu_on_a_conv_graph(tmp_path, backend):
    data = load_without_denormals(_conv_member(tmp_path / "m.onnx"))
    patches = _patches([(12, 12, 12), (9, 14, 11), (12, 12, 12)])  # shapes change, as cascade bricks do
    runner = load_runner(backend, data, threads=2, providers=["CPUExecutionProvider"])
    for got, want in zip((runner.run(p) for p in patches), _reference(data, patches)):
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-4


@pytest.mark.parametrize("backend", INSTALLED)
def test_backend_agrees_with_onnxruntime_cpu_on_a_blast_ct_member(tmp_path, backend):
    from ictus.models.onnx_build import convert_member

    weights = blast_ct_weights()
    onnx_path = convert_member(weights / "saved_models_v1" / "model_1.pt", tmp_path / "model_1.onnx")
    data = load_without_denormals(onnx_path)
    patches = _patches([(95, 95, 95), (95, 110, 95)])  # 15^3 and 15x30x15 output voxels
    runner = load_runner(backend, data, threads=2, providers=["CPUExecutionProvider"])
    for got, want in zip((runner.run(p) for p in patches), _reference(data, patches)):
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-4, backend


def test_auto_prefers_cuda_then_openvino_then_onnxruntime(monkeypatch):
    monkeypatch.setattr(backends, "available_providers", lambda providers=None: ["CPUExecutionProvider"])
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    assert choose_backend("auto") == "openvino"
    monkeypatch.setattr(backends, "nncf_available", lambda: True)
    assert choose_backend("auto", precision="int8") == "openvino"  # NNCF int8 IR on OpenVINO
    monkeypatch.setattr(backends, "nncf_available", lambda: False)
    assert choose_backend("auto", precision="int8") == "onnxruntime"  # onnxruntime's QDQ int8, the fallback
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    assert choose_backend("auto") == "onnxruntime"
    monkeypatch.setattr(backends, "available_providers",
                        lambda providers=None: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    assert choose_backend("auto") == "onnxruntime"


def test_forced_backend_that_is_missing_says_what_to_do(monkeypatch):
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    with pytest.raises(ModelError, match="pip install openvino"):
        choose_backend("openvino")
    with pytest.raises(ModelError, match="unknown backend"):
        choose_backend("tensorrt")


def test_backend_info_names_engine_and_version():
    info = backend_info("onnxruntime", ["CPUExecutionProvider"])
    assert info.name == "onnxruntime" and info.device == "CPU" and info.version[0].isdigit()
    if openvino_available():
        ov = backend_info("openvino")
        assert ov.name == "openvino" and ov.version[0].isdigit()


@pytest.mark.parametrize("backend", INSTALLED)
def test_segmentation_and_findings_record_the_backend(tmp_path, backend):
    from test_runtime import GEOMETRY, NAMES, _dummy_member, _head_volume

    from ictus.models.runtime import segment
    from ictus.pipelines.findings.build import build_findings

    member = _dummy_member(tmp_path / "m1.onnx", [0.0, 8.0, 0.0, 0.0, 0.0], [3.0, -2.8, -1.0, -1.0, -1.0])
    volume = _head_volume()
    seg = segment(volume, [member], class_names=NAMES, geometry=GEOMETRY, threads=2, backend=backend,
                  providers=["CPUExecutionProvider"], model_id="stand-in", model_version="v0")
    assert seg.info["backend"] == backend and seg.info["device"] == "CPU"
    doc = build_findings(volume, seg).to_dict()
    runtime = doc["provenance"]["models"][0]["runtime"]
    assert runtime == {"backend": backend, "version": seg.info["backend_version"], "device": "CPU",
                       "precision": "fp32"}


# -- int8: NNCF on OpenVINO ------------------------------------------------------------------
def _nncf_installed() -> bool:
    return openvino_available() and backends.nncf_available()


def test_int8_choice_keeps_cuda_on_onnxruntime(monkeypatch):
    monkeypatch.setattr(backends, "available_providers",
                        lambda providers=None: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    monkeypatch.setattr(backends, "nncf_available", lambda: True)
    assert choose_backend("auto", precision="int8") == "onnxruntime"
    assert choose_backend("openvino", precision="int8") == "openvino"  # forced


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO is not installed")
def test_openvino_static_shapes_agree_and_keep_few_compiled_shapes(tmp_path):
    data = load_without_denormals(_conv_member(tmp_path / "m.onnx"))
    patches = _patches([(12, 12, 12), (9, 14, 11), (12, 12, 12), (10, 10, 10)])
    runner = backends.OpenVinoRunner(data, threads=2, static_shapes=True, max_shapes=2)
    for got, want in zip((runner.run(p) for p in patches), _reference(data, patches)):
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-4
    assert list(runner._by_shape) == [(1, 1, 12, 12, 12), (1, 1, 10, 10, 10)]  # least recently used dropped


def test_int8_runs_the_nncf_ir_on_openvino_when_both_are_installed(tmp_path, monkeypatch):
    from test_runtime import GEOMETRY, NAMES, _dummy_member

    from ictus.models.runtime import Ensemble, quantized_path

    member = _dummy_member(tmp_path / "m.onnx", [0.0, 2.0, 0.5, 1.0, -1.0], [0.5, 0.0, 0.0, 0.0, 0.0])
    installed = _nncf_installed()
    monkeypatch.setattr(backends, "available_providers", lambda providers=None: ["CPUExecutionProvider"])
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    monkeypatch.setattr(backends, "nncf_available", lambda: False)
    fallback = Ensemble([member], class_names=NAMES, geometry=GEOMETRY, precision="int8")
    assert fallback.backend == "onnxruntime" and fallback._run_paths == [quantized_path(member)]
    if not installed:
        pytest.skip("OpenVINO or NNCF is not installed")
    monkeypatch.setattr(backends, "nncf_available", lambda: True)
    ens = Ensemble([member], class_names=NAMES, geometry=GEOMETRY, precision="int8", threads=2)
    assert ens.backend == "openvino"
    ir = ens._run_paths[0]
    assert ir.suffix == ".xml" and ".int8-nncf-" in ir.name and ir.parent == member.parent
    window = np.linspace(-1.0, 1.0, 95 ** 3, dtype=np.float32).reshape((95,) * 3)
    got = ens.predict(0, window)
    assert ir.is_file() and ir.with_suffix(".bin").is_file()
    runner = ens.session(0)
    assert isinstance(runner, backends.OpenVinoRunner) and runner.static_shapes
    want = Ensemble([member], class_names=NAMES, geometry=GEOMETRY, threads=2).predict(0, window)
    assert np.mean(got.argmax(0) == want.argmax(0)) > 0.97
    assert float(np.abs(got - want).mean()) < 0.02


@pytest.mark.slow
@pytest.mark.skipif(not _nncf_installed(), reason="OpenVINO or NNCF is not installed")
def test_real_member_nncf_int8_agrees_with_fp32(tmp_path):
    """NNCF int8 of BLAST-CT member 1 (the card's ignored scope) on OpenVINO against fp32 on a
    window across a haemorrhage: labels mostly equal, the lesion kept."""
    from ictus.models.onnx_build import convert_member
    from ictus.models.registry import get_card
    from ictus.models.runtime import Ensemble, synthetic_head_hu

    weights = blast_ct_weights()
    onnx_path = convert_member(weights / "saved_models_v1" / "model_1.pt", tmp_path / "model_1.onnx")
    card = get_card("blast-ct")
    int8 = Ensemble.from_card(card, [onnx_path], threads=2, precision="int8", backend="openvino")
    fp32 = Ensemble.from_card(card, [onnx_path], threads=2, backend="openvino")
    assert int8.int8_ignored_patterns  # from the card
    hu = synthetic_head_hu(seed=5, haemorrhage_ml=20.0)  # not a calibration head (seed 0, 30 mL)
    norm = ((2 * np.clip(hu, -15, 100) - 85) / 115).astype(np.float32)
    n = 125  # 45^3 output voxels, centred on the haemorrhage
    z, y, x = (c + 55 - n // 2 for c in (75, 95, 80))
    window = np.ascontiguousarray(np.pad(norm, 55, mode="edge")[z:z + n, y:y + n, x:x + n])
    a, b = fp32.predict(0, window), int8.predict(0, window)
    la, lb = a.argmax(0), b.argmax(0)
    foreground = (la > 0) | (lb > 0)
    assert (la > 0).sum() > 1000  # the window holds the lesion
    assert np.mean(la == lb) > 0.99
    assert np.mean(la[foreground] == lb[foreground]) > 0.95
    assert float(np.abs(a - b).mean()) < 0.01



def test_int8_member1_quantises_only_member_1(tmp_path, monkeypatch):
    from test_runtime import GEOMETRY, NAMES, _dummy_member

    from ictus.models.runtime import Ensemble, nncf_quantized_path, quantized_path

    members = [_dummy_member(tmp_path / f"m{k}.onnx", [0.0, 2.0, 0.5, 1.0, -1.0], [0.5, 0.0, 0.0, 0.0, 0.0])
               for k in (1, 2)]
    monkeypatch.setattr(backends, "available_providers", lambda providers=None: ["CPUExecutionProvider"])
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    monkeypatch.setattr(backends, "nncf_available", lambda: True)
    ens = Ensemble(members, class_names=NAMES, geometry=GEOMETRY, precision="int8-member1")
    assert ens.backend == "openvino" and ens.int8_members == (True, False)
    assert ens._run_paths == [nncf_quantized_path(members[0]), members[1]]
    monkeypatch.setattr(backends, "nncf_available", lambda: False)
    ens = Ensemble(members, class_names=NAMES, geometry=GEOMETRY, precision="int8-member1")
    assert ens.backend == "onnxruntime" and ens._run_paths == [quantized_path(members[0]), members[1]]
    with pytest.raises(ModelError, match="unknown precision"):
        Ensemble(members, class_names=NAMES, geometry=GEOMETRY, precision="int4")
