"""``ictus models list|pull|verify`` end to end (in-process), exit codes 0 / 4 / 5."""
from __future__ import annotations

import json

import pytest

from ictus.models import weights
from tests.conftest import blast_ct_weights


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path):
    """Never touch the real user cache: HOME and XDG_CACHE_HOME inside tmp_path."""
    monkeypatch.delenv(weights.ENV_MODELS_DIR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def test_list_json_nothing_installed(cli_runner, tmp_path):
    code, out, _ = cli_runner("models", "list", "--json", "--models-dir", tmp_path / "m")
    assert code == 0
    data = json.loads(out)
    assert data["origin"] == "--models-dir"
    [row] = [r for r in data["models"] if r["id"] == "blast-ct"]
    assert row["version"] == "v1" and row["classes"][1:] == ["IPH", "EAH", "oedema", "IVH"]
    assert row["installed"]["usable"] == 0 and row["installed"]["checked"] == 12


def test_pull_verify_list_from_mirror(cli_runner, tmp_path):
    shared = blast_ct_weights()
    models_dir = tmp_path / "m"
    code, out, err = cli_runner(
        "models", "pull", "blast-ct", "--from", shared, "--models-dir", models_dir, "--members", "1", "--no-convert"
    )
    assert code == 0, err
    assert "model_1: copied, sha256 ok, onnx skipped" in out

    code, out, err = cli_runner("models", "verify", "blast-ct", "--models-dir", models_dir, "--members", "1")
    assert code == 0, err
    assert "model_1: sha256 ok" in out

    code, out, _ = cli_runner("models", "list", "--models-dir", models_dir)
    assert code == 0 and "1/12 members verified" in out

    # All default members: 11 are missing -> exit 5 and the command to run.
    code, out, err = cli_runner("models", "verify", "blast-ct", "--models-dir", models_dir)
    assert code == 5
    assert "model_2: weights missing" in out
    assert f"`ictus models pull blast-ct --models-dir {models_dir}`" in err

    # A corrupted file is reported, and pulling again replaces it.
    pt = models_dir / "blast-ct" / "v1" / "model_1.pt"
    data = bytearray(pt.read_bytes())
    data[-1] ^= 0xFF
    pt.write_bytes(bytes(data))
    code, out, err = cli_runner("models", "verify", "blast-ct", "--models-dir", models_dir, "--members", "1", "--json")
    assert code == 5
    [report] = json.loads(out)
    assert report["members"][0]["present"] and not report["members"][0]["sha256_ok"]
    assert "model_1.pt sha256" in err and "does not match the card" in err
    code, out, err = cli_runner(
        "models", "pull", "blast-ct", "--from", shared, "--models-dir", models_dir, "--members", "1", "--no-convert"
    )
    assert code == 0 and "model_1: copied" in out


def test_env_models_dir_is_used(cli_runner, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.ENV_MODELS_DIR, str(tmp_path / "env"))
    code, out, _ = cli_runner("models", "list", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["origin"] == "ICTUS_MODELS_DIR" and data["models_dir"] == str((tmp_path / "env").resolve())


def test_pull_with_conversion_and_card_path(cli_runner, tmp_path):
    pytest.importorskip("ictus.models.onnx_build")
    models_dir = tmp_path / "m"
    code, out, err = cli_runner(
        "models", "pull", "blast-ct", "--from", blast_ct_weights(), "--models-dir", models_dir, "--members", "fast"
    )
    assert code == 0, err
    assert "onnx converted" in out
    # The installed folder describes itself: its card.json can be used as MODEL.
    card = models_dir / "blast-ct" / "v1" / "card.json"
    code, out, err = cli_runner("models", "verify", card, "--members", "fast")
    assert code == 0, err
    assert "model_1: sha256 ok, onnx up to date" in out


@pytest.mark.parametrize(
    "args, code, message",
    [
        (("models", "pull", "blast-ct", "--from", "/nonexistent/mirror"), 4, "is not a folder"),
        (("models", "pull", "no-such-model"), 5, "unknown model 'no-such-model'"),
        (("models", "pull", "blast-ct", "--members", "99"), 5, "out of range"),
        (("models", "verify"), 5, "`ictus models pull blast-ct`"),
    ],
)
def test_errors_and_exit_codes(cli_runner, args, code, message):
    got, _, err = cli_runner(*args)
    assert got == code
    assert err.startswith("ictus: error: ") and message in err
    assert err.count("\n") == 1
