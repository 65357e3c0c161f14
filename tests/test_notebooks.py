"""The notebooks run top to bottom (nbclient), with a tiny trained model so that they stay fast."""
from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("monai")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from research_support import tiny_model

    return tiny_model(tmp_path_factory.getbasetemp() / "tiny-segresnet")


def _run(name: str) -> "nbformat.NotebookNode":
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    return nb


def _outputs(nb, kind: str) -> list:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if o.output_type == kind]


def _text(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb, "stream"))


def test_quickstart_runs(tiny: Path, monkeypatch) -> None:
    monkeypatch.setenv("ICTUS_MODEL", str(tiny))
    monkeypatch.setenv("ICTUS_THREADS", "2")
    monkeypatch.delenv("ICTUS_SAMPLE_STUDY", raising=False)
    nb = _run("quickstart.ipynb")
    text = _text(nb)
    assert "ground truth: IPH" in text and "ICH present:" in text and "priority:" in text
    images = [o for o in _outputs(nb, "display_data") + _outputs(nb, "execute_result") if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the montage and the midline plot
    assert not _outputs(nb, "error")


def test_evaluate_runs(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ICTUS_MODEL", str(tiny))
    monkeypatch.setenv("ICTUS_THREADS", "2")
    monkeypatch.setenv("ICTUS_EVAL_DIR", str(tmp_path))
    nb = _run("evaluate.ipynb")
    text = _text(nb)
    assert "4 cases, " in text and "ICH " in text
    for name in ("cases.csv", "summary.json", "roc.png", "bland_altman.png"):
        assert (tmp_path / "evaluation" / name).is_file(), name
    images = [o for o in _outputs(nb, "display_data") if "image/png" in o.get("data", {})]
    assert len(images) >= 2
