"""Training a MONAI SegResNet on tiny phantoms, exporting it to ONNX with a card, and
running it through triage without torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monai")
torch = pytest.importorskip("torch")

from research_support import tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp() / "tiny-segresnet")


def test_card_is_accepted_and_complete(tiny: Path) -> None:
    from ictus.models.registry import load_card
    from ictus.models.weights import file_sha256, resolve_members

    card = load_card(tiny.parent)
    assert card.class_names == ("background", "IPH", "EAH", "oedema", "IVH")
    assert card.preprocessing.spacing_mm == (2.0, 2.0, 2.0) and card.preprocessing.window_hu == (-15.0, 100.0)
    # SegResNet's own geometry (3 levels: sizes multiples of 4), not DeepMedic's 40/15
    assert (card.patch.valid_input_offset_vox, card.patch.valid_input_step_vox, card.patch.tile_multiple_vox) == (0, 4, 4)
    assert card.patch.context_vox == 8 and card.patch.is_valid_input_size(100) and not card.patch.is_valid_input_size(101)
    assert raw_runtime(card)["cost_model"]["kind"] == "per_input_voxel"
    assert raw_runtime(card)["cost_model"]["gmac_per_input_voxel"] > 0
    assert card.class_label("IPH").code("finding").code_value == "274100004"  # codes from the shipped card
    member = card.members[0]
    assert member.sha256 == file_sha256(tiny.parent / member.file)
    raw = card.to_dict()
    assert raw["training_data"] == "4 tiny Ictus phantoms (test)"
    assert set(raw["metrics"]["validation_dice"]) >= {"IPH", "EAH", "IVH", "mean"}
    assert raw["patch"]["training_patch_vox"] == 32
    (resolved,) = resolve_members(card)
    assert resolved.onnx_path == tiny.parent / "model_1.onnx"


def test_tampered_onnx_is_refused(tiny: Path, tmp_path: Path) -> None:
    import shutil

    from ictus.imaging.errors import ModelError
    from ictus.models.registry import load_card
    from ictus.models.weights import resolve_members

    copy = tmp_path / "model"
    shutil.copytree(tiny.parent, copy)
    with (copy / "model_1.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError):
        resolve_members(load_card(copy))


def raw_runtime(card):
    return card.to_dict()["runtime"]


def test_exported_graph_is_the_network(tiny: Path) -> None:
    """The ONNX graph is the network itself: same-size output for any multiple of 4 per axis."""
    import onnxruntime as ort

    from ictus.models.train import load_checkpoint

    network, config, _ = load_checkpoint(tiny.parent.parent / "best.pt")
    assert config.size_multiple_vox == 4
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 1, 24, 16, 36)).astype(np.float32)
    session = ort.InferenceSession(str(tiny.parent / "model_1.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": x})[0]
    assert out.shape == (1, 5, 24, 16, 36)
    with torch.no_grad():
        ref = network(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_runtime_tiles_the_exported_model_by_its_card(tiny: Path) -> None:
    """Through the runtime: each tile's output is the network's output on its window, cropped
    by the card's context; the plan's tiles are multiples of 4 and the cost model is SegResNet's."""
    from ictus.models.registry import load_card
    from ictus.models.runtime import Ensemble, extract_window, plan_tiles, synthetic_head_hu
    from ictus.models.preprocess import preprocess
    from ictus.imaging.volume import volume_from_array
    from ictus.models.train import load_checkpoint

    card = load_card(tiny.parent)
    ens = Ensemble.from_card(card, [tiny.parent / "model_1.onnx"], threads=1)
    g = ens.geometry
    assert (g.context_vox, g.tile_multiple_vox, g.output_start_vox) == (8, 4, 8)
    hu = synthetic_head_hu((40, 48, 44), (4.0, 4.0, 4.0))
    vol = volume_from_array(hu, spacing_mm=(4.0, 4.0, 4.0))
    mi = preprocess(vol, spacing_mm=card.preprocessing.spacing_mm, window_hu=card.preprocessing.window_hu,
                    tile_vox=24, context_vox=g.context_vox, phase_vox=g.tile_multiple_vox)
    plan = plan_tiles(mi, 24, g, skip="none")
    start, size = plan.tiles[0]
    window = extract_window(mi, start, size, g)
    network, _, _ = load_checkpoint(tiny.parent.parent / "best.pt")
    with torch.no_grad():
        logits = network(torch.from_numpy(window[None, None])).numpy()[0]
    crop = logits[:, 8:-8, 8:-8, 8:-8]
    ref = np.exp(crop - crop.max(0)) / np.exp(crop - crop.max(0)).sum(0)
    np.testing.assert_allclose(ens.predict(0, window), ref, atol=1e-4)
    probs, _, stats = ens.predict_box(mi, [0])
    assert stats["tile_vox"] % 4 == 0 and stats["tiles_computed"] > 0
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)


def test_triage_with_the_exported_model_without_torch(tiny: Path) -> None:
    """`--model PATH/card.json` through triage in a process where torch and MONAI cannot be imported."""
    study = tiny.parent.parent.parent / "phantoms" / "p00"
    code = (
        "import sys, json; sys.modules['torch'] = None; sys.modules['monai'] = None\n"
        "from ictus.pipelines.triage import triage\n"
        f"r = triage({str(study)!r}, model={str(tiny)!r}, threads=2, outputs=())\n"
        "s = r.segmentation\n"
        "print(json.dumps({'probs': list(s.probabilities.shape), 'labels': list(s.labels.shape),\n"
        "  'size': list(r.volume.size), 'dtype': str(s.probabilities.dtype), 'model': s.model_id,\n"
        "  'sum': float(s.probabilities.astype('float32').sum(0).mean())}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    x, y, z = out["size"]
    assert out["probs"] == [5, z, y, x] and out["labels"] == [z, y, x]
    assert out["dtype"] == "float16" and out["model"] == "tiny-segresnet"
    assert out["sum"] == pytest.approx(1.0, abs=1e-2)


def test_cli_triage_with_model_path(tiny: Path, tmp_path: Path, cli_runner) -> None:
    study = tiny.parent.parent.parent / "phantoms" / "p01"
    code, stdout, stderr = cli_runner("triage", study, "--model", tiny, "--out", tmp_path / "o",
                                      "--outputs", "json", "--threads", "2")
    assert code == 0, stderr
    findings = json.loads((tmp_path / "o" / "findings.json").read_text())
    assert findings["provenance"]["models"][0]["id"] == "tiny-segresnet"


def test_cli_train_and_export(tiny: Path, tmp_path: Path, cli_runner) -> None:
    """`ictus train` (2 iterations, fine-tuning the tiny checkpoint, whose architecture and spacing it keeps)
    writes checkpoints, a loss curve and a card."""
    data = tiny.parent.parent.parent / "nifti"
    code, stdout, stderr = cli_runner(
        "train", data, "--out", tmp_path / "run", "--iterations", "2", "--validate-every", "2", "--patch-vox", "32",
        "--batch-size", "1", "--threads", "2",
        "--resume", tiny.parent.parent / "best.pt", "--training-data", "phantoms",
    )
    assert code == 0, stderr
    summary = json.loads(stdout[stdout.index("{"):])
    assert Path(summary["card"]).is_file() and (tmp_path / "run" / "loss.png").is_file()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["iteration"] for h in history] == [1, 2] and "val_dice" in history[-1]
    assert len(summary["train_cases"]) == 3 and len(summary["validation_cases"]) == 1
    card = json.loads(Path(summary["card"]).read_text())
    assert card["preprocessing"]["spacing_mm"] == [2.0, 2.0, 2.0] and card["architecture"]["init_filters"] == 8


def test_bad_patch_size_is_refused(tmp_path: Path) -> None:
    from ictus.imaging.errors import InvalidInputError
    from ictus.models.train import TrainConfig, train

    with pytest.raises(InvalidInputError, match="multiple of 8"):
        train(TrainConfig(data_dir=str(tmp_path), out_dir=str(tmp_path / "o"), patch_vox=30))


def test_cli_imports_no_torch() -> None:
    code = "import sys; import ictus.pipelines.cli; assert 'torch' not in sys.modules and 'monai' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
