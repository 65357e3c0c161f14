"""ictus.models.geometry: the runtime's tiling read from the card; DeepMedic's numbers live in
ictus.models.deepmedic and match the shipped card; class roles; no import cycle in models/."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ictus.imaging.errors import ModelError
from ictus.models.geometry import TileGeometry
from ictus.models.registry import DEFAULT_MODEL, card_from_dict, get_card

from conftest import blast_ct_weights

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def card():
    return get_card(DEFAULT_MODEL)


def test_blast_ct_geometry_comes_from_its_card(card):
    g = TileGeometry.from_card(card)
    assert (g.context_vox, g.tile_multiple_vox, g.valid_input_offset_vox, g.valid_input_step_vox) == (40, 15, 80, 5)
    assert g.tile_candidates_vox == (30, 45, 60, 90) and g.input_size_vox == 110
    assert (g.crop_vox, g.output_start_vox, g.window_vox(30)) == (40, 0, 110)
    assert g.cost_model["kind"] == "deepmedic"
    assert g.estimated_gmac((60, 60, 60)) / 60**3 < g.estimated_gmac((30, 30, 30)) / 30**3


def test_shipped_card_matches_the_deepmedic_architecture(card):
    """The card's patch and runtime numbers are what ictus.models.deepmedic derives from the V1 weights."""
    from ictus.models.deepmedic import card_patch_block, card_runtime_block
    from ictus.models.legacy_pt import read_state_dict
    from ictus.models.onnx_build import parse_spec

    spec = parse_spec(read_state_dict(blast_ct_weights() / "saved_models_v1" / "model_1.pt"))
    raw = card.to_dict()
    for key, value in card_patch_block(spec, output_size_vox=30).items():
        assert raw["patch"][key] == value, key
    derived = card_runtime_block(spec)
    assert raw["runtime"]["tile_candidates_vox"] == derived["tile_candidates_vox"]
    assert {k: v for k, v in raw["runtime"]["cost_model"].items() if k != "note"} == derived["cost_model"]
    assert raw["runtime"]["int8"]["conv_name_patterns"] == derived["int8"]["conv_name_patterns"]


def test_same_size_geometry_and_default_tiles():
    """A same-size network (SegResNet-like): offset 0, the runtime crops the context itself."""
    g = TileGeometry(context_vox=16, tile_multiple_vox=8, valid_input_offset_vox=0, valid_input_step_vox=8,
                     input_size_vox=96, cost_model={"kind": "per_input_voxel", "gmac_per_input_voxel": 2e-5})
    assert g.tile_candidates_vox == (16, 24, 32, 48)
    assert (g.crop_vox, g.output_start_vox, g.window_vox(32)) == (0, 16, 64)
    assert g.estimated_gmac((32, 32, 32)) == pytest.approx(64**3 * 2e-5)


@pytest.mark.parametrize("bad", [
    dict(context_vox=10, tile_multiple_vox=8, valid_input_offset_vox=0, valid_input_step_vox=8),  # window not valid
    dict(context_vox=40, tile_multiple_vox=16, valid_input_offset_vox=80, valid_input_step_vox=5),  # tiles not on step
    dict(context_vox=30, tile_multiple_vox=15, valid_input_offset_vox=80, valid_input_step_vox=5),  # crop > context
    dict(context_vox=40, tile_multiple_vox=15, valid_input_offset_vox=80, valid_input_step_vox=5,
         cost_model={"kind": "flops-by-magic"}),
])
def test_inconsistent_geometry_is_refused(bad):
    with pytest.raises(ModelError, match="fix the model card"):
        TileGeometry(input_size_vox=110, **bad)


def _same_size_member(path: Path) -> Path:
    """A same-size stand-in member: one 1x1x1 convolution of the intensity, 5 logits per voxel."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([0, 8, 0, 0, 0], np.float32).reshape(5, 1, 1, 1, 1), "w")
    b = numpy_helper.from_array(np.array([3, -2.8, -1, -1, -1], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["logits"])], "same",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, "z", "y", "x"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5, "z", "y", "x"])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_runtime_runs_a_same_size_model_by_its_geometry(tmp_path):
    """Tiles of any allowed size give the pointwise result (the runtime crops the context)."""
    pytest.importorskip("onnxruntime")
    from ictus.imaging.volume import volume_from_array
    from ictus.models.preprocess import preprocess
    from ictus.models.runtime import Ensemble, softmax, synthetic_head_hu

    names = ("background", "IPH", "EAH", "oedema", "IVH")
    g = TileGeometry(context_vox=8, tile_multiple_vox=4, valid_input_offset_vox=0, valid_input_step_vox=4,
                     input_size_vox=32)
    ens = Ensemble([_same_size_member(tmp_path / "m.onnx")], class_names=names, geometry=g, threads=1)
    vol = volume_from_array(synthetic_head_hu((36, 96, 96), (5.0, 2.2, 2.2)), spacing_mm=(2.2, 2.2, 5.0))
    mi = preprocess(vol, tile_vox=24, context_vox=8, phase_vox=4)
    small, _, s1 = ens.predict_box(mi, [0], tile_vox=8, skip="none")
    large, _, s2 = ens.predict_box(mi, [0], tile_vox=24, skip="none")
    assert s1["tiles_computed"] > s2["tiles_computed"] > 1
    np.testing.assert_allclose(small, large, atol=1e-6)
    z0, y0, x0 = (a - b for a, b in zip(mi.region_start, mi.box_start))
    z1, y1, x1 = (a - b for a, b in zip(mi.region_stop, mi.box_start))
    x = mi.array[z0:z1, y0:y1, x0:x1]
    logits = np.stack([8 * x * (c == 1) + bias for c, bias in enumerate((3, -2.8, -1, -1, -1))])
    np.testing.assert_allclose(large[:, z0:z1, y0:y1, x0:x1], softmax(logits), atol=1e-5)
    seg = ens.segment(vol, tile_vox=None)
    assert seg.info["tile_vox"] in g.tile_candidates_vox and "8-voxel context" in seg.info["method"]


def test_model_output_that_contradicts_the_card_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    from ictus.models.runtime import Ensemble

    g = TileGeometry(context_vox=40, tile_multiple_vox=15, valid_input_offset_vox=80, valid_input_step_vox=5,
                     input_size_vox=110)  # says it crops 40 per side; the member does not
    ens = Ensemble([_same_size_member(tmp_path / "m.onnx")], class_names=("a", "b", "c", "d", "e"), geometry=g)
    with pytest.raises(ModelError, match="patch block"):
        ens.predict(0, np.zeros((95, 95, 95), np.float32))


def test_class_roles(card):
    assert card.class_names_by_role("blood") == ("IPH", "EAH", "IVH")
    assert card.class_names_by_role("oedema") == ("oedema",)
    assert card.class_names_by_role("background") == ("background",)
    with pytest.raises(ModelError):
        card.class_names_by_role("haemorrhage")
    raw = card.to_dict()
    for c in raw["classes"]:  # a card without roles (older exports) gets BLAST-CT's by name
        c.pop("role")
    assert card_from_dict(raw).class_names_by_role("blood") == ("IPH", "EAH", "IVH")
    raw["classes"][1]["role"] = "bleeding"
    with pytest.raises(ModelError, match="role"):
        card_from_dict(raw)


def test_onnx_build_does_not_import_weights_and_deepmedic_needs_no_torch():
    code = (
        "import sys; import ictus.models.onnx_build, ictus.models.deepmedic, ictus.models.geometry; "
        "assert 'ictus.models.weights' not in sys.modules, 'onnx_build imports weights'; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_one_user_cache_function(monkeypatch, tmp_path):
    from ictus.models.runtime import quantized_path
    from ictus.models.weights import user_cache_dir

    if sys.platform in ("win32", "darwin"):
        pytest.skip("XDG layout only")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert user_cache_dir() == tmp_path / "cache" / "ictus" / "models"
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        q = quantized_path(read_only / "model_1.onnx")
    finally:
        read_only.chmod(0o755)
    if q.parent != read_only:  # (root can write anywhere)
        assert q.parent == user_cache_dir("int8")


def test_card_with_an_inconsistent_geometry_is_refused_at_load(card):
    raw = card.to_dict()
    raw["patch"]["context_vox"] = 30  # the network crops 40 per side: no valid window
    with pytest.raises(ModelError, match="is invalid: model geometry is inconsistent"):
        card_from_dict(raw)
