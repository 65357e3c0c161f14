"""Model registry and cards: plain data, no weights needed.

Where the shared BLAST-CT folder is present, the card is checked against the
upstream ``config.json`` and the hash table of ``SOURCE.md``; the HU scaling
is checked against the reference implementation's own transformation.
"""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, blast_ct_weights
from ictus.imaging.errors import ModelError
from ictus.models.registry import CARDS_DIR, ModelCard, card_from_dict, get_card, list_cards, load_card

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@pytest.fixture
def card() -> ModelCard:
    return get_card("blast-ct")


def test_list_and_get(card):
    refs = [c.ref for c in list_cards()]
    assert "blast-ct:v1" in refs
    for key in ("blast-ct", "blast-ct:v1", "blast-ct-v1", "blast-ct/v1"):
        assert get_card(key).ref == "blast-ct:v1"
    assert card.builtin and card.card_path is not None and card.card_path.parent == CARDS_DIR


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ModelError, match=r"unknown model 'nope'.*blast-ct:v1"):
        get_card("nope")


def test_card_contents(card):
    assert card.class_names == ("background", "IPH", "EAH", "oedema", "IVH")
    assert [c.value for c in card.classes] == [0, 1, 2, 3, 4]
    assert card.preprocessing.spacing_mm == (1.0, 1.0, 1.0)
    assert card.preprocessing.window_hu == (-15.0, 100.0)
    assert len(card.members) == 12
    assert card.member_names == tuple(f"model_{i}" for i in range(1, 13))
    assert card.fast_member == "model_1"
    assert card.default_members == card.member_names
    assert card.license_spdx == "Apache-2.0"
    assert card.doi == "10.1016/S2589-7500(20)30085-6"
    assert "Monteiro" in card.citation and "Lancet Digital Health" in card.citation
    assert card.intended_use and len(card.known_limitations) >= 3
    assert any("TBI" in s or "traumatic" in s for s in card.known_limitations)
    assert COMMIT_RE.match(card.source.commit)
    for m in card.members:
        assert re.fullmatch(r"[0-9a-f]{64}", m.sha256)
        assert m.url == f"{card.source.raw_base_url}/{m.path}"
        assert card.source.commit in m.url and m.url.startswith("https://raw.githubusercontent.com/biomedia-mira/blast-ct/")
        assert m.path.endswith("/" + m.file)
    assert len({m.sha256 for m in card.members}) == 12


def test_patch_geometry(card):
    p = card.patch
    assert (p.input_size_vox, p.output_size_vox, p.context_vox, p.tile_multiple_vox) == (110, 30, 40, 15)
    assert p.output_size_for(p.input_size_vox) == p.output_size_vox
    assert [s for s in range(80, 131) if p.is_valid_input_size(s)] == [85, 90, 95, 100, 105, 110, 115, 120, 125, 130]
    with pytest.raises(ValueError):
        p.output_size_for(111)


def test_codes_are_dicom_segmentation_codes(card):
    """Category and type codes are members of DICOM CID 7150 / 7151 (pydicom's tables)."""
    from pydicom.sr._cid_dict import cid_concepts
    from pydicom.sr.codedict import codes

    def in_cid(code, cid):
        names = cid_concepts[cid].get(code.scheme_designator, [])
        return any(getattr(getattr(codes, code.scheme_designator), n).value == code.code_value for n in names)

    for c in card.classes[1:]:
        cat, typ, finding = c.code("category"), c.code("type"), c.code("finding")
        assert cat is not None and typ is not None and finding is not None, c.name
        assert in_cid(cat, 7150), cat
        assert in_cid(typ, 7151), typ
        assert finding.scheme_designator == "SCT" and finding.code_value.isdigit()
    assert card.class_label("IPH").code("finding").code_value == "274100004"
    assert card.class_label(3).code("type").code_meaning == "Edema"


def test_card_matches_upstream_config_and_source_table(card):
    shared = blast_ct_weights()
    config = json.loads((shared / "config.json").read_text())
    data = config["data"]
    assert list(card.class_names[1:]) == data["class_names"][1:]
    assert data["num_classes"] == card.num_classes
    assert tuple(data["resolution"]) == card.preprocessing.spacing_mm
    window = data["transformation"]["IntensityWindowNormalization"]
    assert (window["lower_bound"], window["upper_bound"]) == card.preprocessing.window_hu
    assert config["test"]["input_patch_size"] == [card.patch.input_size_vox] * 3
    assert config["model"]["DeepMedic"]["feature_maps"] == card.raw["architecture"]["feature_maps"]

    source = (shared / "SOURCE.md").read_text()
    table = {
        name: (int(size), sha)
        for name, size, sha in re.findall(r"\| saved_models_v1/(model_\d+)\.pt \|[^|]*\| (\d+) \| ([0-9a-f]{64}) \|", source)
    }
    assert len(table) == 12
    assert {m.name: (m.size_bytes, m.sha256) for m in card.members} == table
    assert card.source.commit in source


def test_normalise_hu_matches_reference(card):
    transformation = pytest.importorskip("blast_ct.nifti.transformation")
    lo, hi = card.preprocessing.window_hu
    hu = np.linspace(-1100.0, 1500.0, 5001)
    ref, _, _ = transformation.IntensityWindowNormalization(lo, hi)(hu.copy(), None, np.ones(hu.shape, bool))
    ours = card.normalise_hu(hu)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert ours.min() == -1.0 and ours.max() == 1.0


def test_select_members(card):
    assert [m.name for m in card.select_members("1,3")] == ["model_1", "model_3"]
    assert [m.name for m in card.select_members(["model_2", 2, "2"])] == ["model_2"]
    assert [m.name for m in card.select_members("fast")] == ["model_1"]
    assert len(card.select_members(None)) == len(card.select_members("all")) == 12
    with pytest.raises(ModelError, match="out of range"):
        card.select_members("13")
    with pytest.raises(ModelError, match="no member 'model_x'"):
        card.select_members("model_x")


def test_onnx_metadata(card):
    meta = card.onnx_metadata("model_2")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert meta["ictus.model_id"] == "blast-ct" and meta["ictus.source_sha256"] == card.member("model_2").sha256
    assert json.loads(meta["ictus.class_names"]) == list(card.class_names)


def test_load_card_round_trip(card, tmp_path):
    path = tmp_path / "mine" / "card.json"
    path.parent.mkdir()
    path.write_text(json.dumps(card.to_dict()))
    for arg in (path, path.parent, str(path)):
        loaded = load_card(arg)
        assert loaded.card_path == path.resolve() and not loaded.builtin
        assert (loaded.id, loaded.version, loaded.members, loaded.classes) == (card.id, card.version, card.members, card.classes)
    assert get_card(str(path)).card_path == path.resolve()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["members"][0].update(sha256="abc"), "sha256 is not 64 hex digits"),
        (lambda d: d.pop("classes"), "lacks the field 'classes'"),
        (lambda d: d.update(fast_member="model_99"), "'model_99' is named but not listed"),
        (lambda d: d["preprocessing"].update(window_hu=[100, -15]), "window_hu"),
        (lambda d: d["classes"].reverse(), "class values"),
        (lambda d: d["members"][1].update(file="../../etc/passwd"), "unsafe"),
        (lambda d: d.update(card_format=99), "card_format"),
    ],
)
def test_malformed_cards_are_refused(card, edit, message):
    data = copy.deepcopy(card.to_dict())
    edit(data)
    with pytest.raises(ModelError, match=re.escape(message)):
        card_from_dict(data)


def test_unreadable_card_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="cannot be read as JSON"):
        load_card(bad)
    with pytest.raises(ModelError, match="does not exist"):
        load_card(tmp_path / "absent.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ModelError, match="holds 2 card files"):
        load_card(tmp_path)


def test_registry_and_weights_import_no_torch_or_onnxruntime():
    code = (
        "import sys, ictus.models.registry, ictus.models.weights, ictus.pipelines.commands.models; "
        "bad = [m for m in ('torch', 'onnxruntime', 'onnx', 'monai') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_card_records_the_runtime_default_it_measured(card):
    """The card's measured shortcut is the one the runtime uses, and every input met the criteria."""
    from ictus.models.runtime import DEFAULT_CASCADE_THRESHOLD

    runtime = card.raw["runtime"]
    assert runtime["cascade_threshold"] == DEFAULT_CASCADE_THRESHOLD
    inputs = runtime["agreement"]["inputs"]
    assert any("real" in row["input"] for row in inputs) and any("phantom" in row["input"] for row in inputs)
    for row in inputs:
        default = row[f"default_cascade_{DEFAULT_CASCADE_THRESHOLD:g}"]
        assert default["meets_criteria"], row["input"]
        assert all(d >= 0.98 for d in default["dice"].values())
