"""Shared fixtures: where the real third-party data lives, and CLI helpers.

Real data comes from ``../shared`` (relative to the project root) or from
``$ICTUS_SHARED_DIR``. Tests that need it skip with a reason when it is absent.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shared_root() -> Path:
    """The shared data folder (not part of the repository)."""
    return Path(os.environ.get("ICTUS_SHARED_DIR", ROOT.parent / "shared")).resolve()


def shared_dicom(name: str) -> Path:
    """A folder of ``shared/data/dicom``, or skip the test with a reason."""
    path = shared_root() / "data" / "dicom" / name
    if not path.exists():
        pytest.skip(f"real test data {path} is absent (set ICTUS_SHARED_DIR to the shared folder)")
    return path


def template_atlas() -> Any:
    """The stroke template atlas (CT template, ASPECTS and lobar labels) from shared, or skip."""
    stroke = shared_root() / "models" / "stroke-atlas"
    lobar = shared_root() / "models" / "blast-ct" / "localisation_files"
    if not (stroke / "template" / "scct.nii").exists() or not (lobar / "atlas_labels.csv").exists():
        pytest.skip(f"stroke atlas {stroke} or BLAST-CT atlas {lobar} absent (set ICTUS_SHARED_DIR)")
    return _load_template_atlas(str(stroke), str(lobar))


@functools.lru_cache(maxsize=None)
def _load_template_atlas(stroke: str, lobar: str) -> Any:
    from ictus.imaging.stroke_atlas import load_template_atlas

    return load_template_atlas(stroke, lobar)


def ge_head_volume() -> Any:
    """The real GE head (tilted, variable spacing) as a Volume, built once per process, or skip."""
    return _ge_head_volume(str(shared_dicom("ge-head-tilt-variable-spacing")))


@functools.lru_cache(maxsize=None)
def _ge_head_volume(folder: str) -> Any:
    from ictus.imaging.build import build_volume

    return build_volume([str(f) for f in sorted(Path(folder).glob("*.dcm"))])


def blast_ct_weights() -> Path:
    """The BLAST-CT weights folder in shared, or skip."""
    path = shared_root() / "models" / "blast-ct"
    if not (path / "saved_models_v1").exists():
        pytest.skip(f"BLAST-CT weights {path} are absent (set ICTUS_SHARED_DIR to the shared folder)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _user_cache_with_stroke_assets(tmp_path_factory):
    """Point the user cache (XDG_CACHE_HOME, inherited by subprocesses) at a session folder
    holding the stroke-atlas and blast-ct-atlas assets from shared, so every triage in the
    suite finds them as a user who ran `ictus models pull` would, and the real user cache
    is never touched."""
    old = os.environ.get("XDG_CACHE_HOME")
    cache = tmp_path_factory.mktemp("xdg-cache")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    from ictus.models.weights import user_cache_dir

    _pull_stroke_assets(user_cache_dir())
    yield cache
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture
def cli_runner():
    """Run the ``ictus`` CLI in-process; returns (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from ictus.pipelines.cli import cli

    def run(*args: str):
        runner = CliRunner()
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return run


@pytest.fixture(scope="session")
def fast_models_dir(tmp_path_factory):
    """A models dir with BLAST-CT's fast member (model_1) imported from shared and
    converted to ONNX (about a second); skips when the weights are absent."""
    from ictus.models.registry import get_card
    from ictus.models.weights import pull

    shared = blast_ct_weights()
    models_dir = tmp_path_factory.mktemp("models")
    card = get_card("blast-ct")
    pull(card, models_dir, shared, members="fast", convert=True)
    _pull_stroke_assets(models_dir)  # triage needs the template anatomy too
    return models_dir


def _pull_stroke_assets(models_dir: Path) -> None:
    """Install the stroke-atlas and blast-ct-atlas assets from shared into ``models_dir`` (when present)."""
    from ictus.models.assets import get_asset_card, pull_asset

    stroke = shared_root() / "models" / "stroke-atlas"
    blast = shared_root() / "models" / "blast-ct"
    if (stroke / "template").is_dir() and (blast / "localisation_files").is_dir():
        pull_asset(get_asset_card("stroke-atlas"), models_dir, stroke)
        pull_asset(get_asset_card("blast-ct-atlas"), models_dir, blast)


@pytest.fixture(scope="session")
def stroke_models_dir(tmp_path_factory):
    """A models dir with the stroke-atlas and blast-ct-atlas assets pulled from shared
    (sha256-checked copies); pass it as ``models_dir``. Skips when either is absent."""
    from ictus.models.assets import get_asset_card, pull_asset

    stroke = shared_root() / "models" / "stroke-atlas"
    blast = shared_root() / "models" / "blast-ct"
    if not (stroke / "template").is_dir() or not (blast / "localisation_files").is_dir():
        pytest.skip(f"stroke atlas {stroke} or BLAST-CT localisation files {blast} are absent "
                    "(set ICTUS_SHARED_DIR to the shared folder)")
    models_dir = tmp_path_factory.mktemp("stroke-models")
    pull_asset(get_asset_card("stroke-atlas"), models_dir, stroke)
    pull_asset(get_asset_card("blast-ct-atlas"), models_dir, blast)
    return models_dir


# -- markers for the quick local run -------------------------------------------------------------
#: Words in a test's source (or fixtures it uses) that mean it runs an external program.
_EXTERNAL_WORDS = ("dciodvfy", "dcm2niix", "storescu", "storescp", "echoscu", "findscu", "movescu", "getscu",
                   "dcmdump", "orthanc", "chromium")
#: ... or the real BLAST-CT model (weights from shared, or the ONNX export made from them).
_MODEL_WORDS = ("blast_ct_weights", "fast_models_dir", "stroke_models_dir")


def pytest_collection_modifyitems(config, items):
    """Mark tests ``external`` (runs dcmtk, dicom3tools, dcm2niix, Orthanc or Chromium) and
    ``model`` (runs the real segmentation model) from their source and fixtures, so that
    ``pytest -m "not slow and not model and not external"`` is the quick local run."""
    import inspect

    for item in items:
        function = getattr(item, "function", None)
        try:
            text = inspect.getsource(function).lower() if function is not None else ""
        except (OSError, TypeError):
            text = ""
        text += " " + " ".join(getattr(item, "fixturenames", ())).lower()
        if any(w in text for w in _EXTERNAL_WORDS):
            item.add_marker(pytest.mark.external)
        if any(w in text for w in _MODEL_WORDS):
            item.add_marker(pytest.mark.model)
