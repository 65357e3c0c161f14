"""Weights: resolution order, pull over HTTP (127.0.0.1) and from a local mirror,
sha256 refusal, 404, retries, resume, verify, on-demand ONNX conversion.

The HTTP server serves a copy of the shared BLAST-CT weights laid out like the
upstream repository (``blast_ct/data/saved_models/model_N.pt``), copied into a
temporary folder at test time: model_1 and model_2 intact, model_3 with one
byte flipped, model_4 absent (404), model_5 truncated.
"""
from __future__ import annotations

import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from ictus.imaging.errors import InvalidInputError, ModelError
from ictus.models import weights
from ictus.models.registry import get_card
from tests.conftest import blast_ct_weights

CARD = get_card("blast-ct")


class _Handler(SimpleHTTPRequestHandler):
    """Static files with byte-range support, injectable 503s, and a request log."""

    failures: dict[str, int] = {}
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server naming
        type(self).requests.append((self.path, self.headers.get("Range")))
        if self.failures.get(self.path, 0) > 0:
            self.failures[self.path] -= 1
            self.send_error(503, "try again")
            return
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if rng and path.is_file():
            start = int(rng.split("=")[1].split("-")[0])
            data = path.read_bytes()[start:]
            self.send_response(206)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{start + len(data)}")
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base_url, handler class) of a local server holding the upstream layout."""
    shared = blast_ct_weights()
    root = tmp_path_factory.mktemp("upstream")
    folder = root / "blast_ct" / "data" / "saved_models"
    folder.mkdir(parents=True)
    for i in (1, 2, 3, 5):
        shutil.copyfile(shared / "saved_models_v1" / f"model_{i}.pt", folder / f"model_{i}.pt")
    corrupt = bytearray((folder / "model_3.pt").read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    (folder / "model_3.pt").write_bytes(bytes(corrupt))
    (folder / "model_5.pt").write_bytes((folder / "model_5.pt").read_bytes()[:1000])

    handler = type("Handler", (_Handler,), {"failures": {}, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(root), **k))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No ICTUS_MODELS_DIR, and HOME / XDG_CACHE_HOME inside tmp_path."""
    monkeypatch.delenv(weights.ENV_MODELS_DIR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def _fake_converter(calls):
    def convert_member(pt_path, onnx_path, *, metadata=None):
        calls.append(Path(pt_path).name)
        Path(onnx_path).write_bytes(b"fake onnx " + json.dumps(metadata, sort_keys=True).encode())
        return Path(onnx_path)

    return convert_member


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------ HTTP pulls
def test_pull_over_http_verifies(served, tmp_path):
    base, _ = served
    report = weights.pull(CARD, tmp_path, base, members="1,2", convert=False)
    directory = tmp_path / "blast-ct" / "v1"
    assert report.directory == directory
    assert [(m.name, m.action, m.onnx) for m in report.members] == [
        ("model_1", "downloaded", "skipped"),
        ("model_2", "downloaded", "skipped"),
    ]
    assert report.members[0].source == f"{base}/blast_ct/data/saved_models/model_1.pt"
    status = weights.verify(CARD, tmp_path, "1,2")
    assert status.ok and status.installed == 2
    assert all(m.sha256 == CARD.member(m.name).sha256 for m in status.members)
    assert json.loads((directory / "card.json").read_text())["id"] == "blast-ct"
    assert _leftovers(directory) == []
    # Already present and intact: nothing is fetched again.
    again = weights.pull(CARD, tmp_path, base, members="1", convert=False)
    assert again.members[0].action == "present"


def test_corrupted_download_is_refused_and_removed(served, tmp_path):
    base, _ = served
    with pytest.raises(ModelError) as info:
        weights.pull(CARD, tmp_path, base, members="3", convert=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"expected sha256 {CARD.member('model_3').sha256}" in message
    assert "got " in message and "removed" in message and "nothing was installed" in message
    directory = tmp_path / "blast-ct" / "v1"
    assert not (directory / "model_3.pt").exists()
    assert _leftovers(directory) == []


def test_missing_file_404(served, tmp_path):
    base, _ = served
    with pytest.raises(ModelError, match=r"model_4\.pt was not found \(HTTP 404\) at .*blast_ct/data/saved_models/model_4\.pt"):
        weights.pull(CARD, tmp_path, base, members="4", convert=False)
    assert not (tmp_path / "blast-ct" / "v1" / "model_4.pt").exists()


def test_wrong_size_is_refused(served, tmp_path):
    base, _ = served
    with pytest.raises(ModelError, match=r"offers 1000 bytes for model_5\.pt, the card expects 4171363"):
        weights.pull(CARD, tmp_path, base, members="5", convert=False, retries=0)
    assert not (tmp_path / "blast-ct" / "v1" / "model_5.pt").exists()


def test_retries_with_backoff(served, tmp_path):
    base, handler = served
    path = "/blast_ct/data/saved_models/model_2.pt"
    handler.failures[path] = 2
    handler.requests.clear()
    report = weights.pull(CARD, tmp_path, base, members="2", convert=False, retries=3, backoff_s=0.0)
    assert report.members[0].action == "downloaded"
    assert [p for p, _ in handler.requests].count(path) == 3

    handler.failures[path] = 5
    with pytest.raises(ModelError, match=r"failed after 2 attempts .*503"):
        weights.pull(CARD, tmp_path / "other", base, members="2", convert=False, retries=1, backoff_s=0.0)
    handler.failures.clear()


def test_partial_download_resumes(served, tmp_path):
    base, handler = served
    directory = tmp_path / "blast-ct" / "v1"
    directory.mkdir(parents=True)
    full = (blast_ct_weights() / "saved_models_v1" / "model_1.pt").read_bytes()
    (directory / ".model_1.pt.part").write_bytes(full[:1_000_000])
    handler.requests.clear()
    weights.pull(CARD, tmp_path, base, members="1", convert=False)
    assert handler.requests == [("/blast_ct/data/saved_models/model_1.pt", "bytes=1000000-")]
    assert (directory / "model_1.pt").read_bytes() == full


# --------------------------------------------------------------- local mirror
def test_pull_from_local_mirror(tmp_path):
    shared = blast_ct_weights()
    report = weights.pull(CARD, tmp_path, shared, members="1", convert=False)
    assert report.members[0].action == "copied"
    assert report.members[0].source == str(shared.resolve() / "saved_models_v1" / "model_1.pt")
    assert weights.verify(CARD, tmp_path, "fast").ok


def test_bad_from_path(tmp_path):
    with pytest.raises(InvalidInputError, match="is not a folder"):
        weights.pull(CARD, tmp_path / "models", tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match=r"lacks model_1\.pt"):
        weights.pull(CARD, tmp_path / "models", tmp_path / "empty", members="1")


# ----------------------------------------------------------------- resolution
@pytest.mark.skipif(weights.sys.platform in ("win32", "darwin"), reason="XDG layout is the Linux/BSD cache")
def test_resolution_order(clean_env, monkeypatch):
    tmp = clean_env
    assert weights.models_home() == (tmp / "xdg" / "ictus" / "models", "user cache")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert weights.models_home() == (tmp / "home" / ".cache" / "ictus" / "models", "user cache")
    monkeypatch.setenv(weights.ENV_MODELS_DIR, str(tmp / "env"))
    assert weights.models_home() == ((tmp / "env").resolve(), "ICTUS_MODELS_DIR")
    assert weights.models_home(tmp / "arg") == ((tmp / "arg").resolve(), "--models-dir")
    assert weights.install_dir(CARD, tmp / "arg")[0] == (tmp / "arg").resolve() / "blast-ct" / "v1"


def test_resolve_follows_the_order(clean_env, monkeypatch):
    tmp = clean_env
    calls: list[str] = []
    monkeypatch.setattr(weights, "_converter", lambda: _fake_converter(calls))
    shared = blast_ct_weights()
    for where in ("arg", "env", "xdg/ictus/models"):
        weights.pull(CARD, tmp / where, shared, members="1", convert=False)
    monkeypatch.setenv(weights.ENV_MODELS_DIR, str(tmp / "env"))
    for arg, expected in ((tmp / "arg", tmp / "arg"), (None, tmp / "env")):
        [resolved] = weights.resolve_members(CARD, arg, "fast")
        assert resolved.onnx_path == expected.resolve() / "blast-ct" / "v1" / "model_1.onnx"
    monkeypatch.delenv(weights.ENV_MODELS_DIR)
    [resolved] = weights.resolve_members(CARD, None, "fast")
    assert resolved.onnx_path == tmp / "xdg" / "ictus" / "models" / "blast-ct" / "v1" / "model_1.onnx"
    assert calls == ["model_1.pt"] * 3


def test_no_weights_anywhere_says_what_to_run(clean_env):
    with pytest.raises(ModelError) as info:
        weights.resolve_members(CARD)
    message = str(info.value)
    assert "\n" not in message
    assert "`ictus models pull blast-ct`" in message
    assert "`ictus models pull blast-ct --from /path/to/mirror`" in message
    assert "ICTUS_MODELS_DIR" in message and "12 members" in message
    explicit = clean_env / "mine"
    with pytest.raises(ModelError, match=rf"`ictus models pull blast-ct --models-dir {explicit} --members 1,2`"):
        weights.resolve_members(CARD, explicit, "1,2")


def test_conversion_on_demand_and_staleness(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(weights, "_converter", lambda: _fake_converter(calls))
    weights.pull(CARD, tmp_path, blast_ct_weights(), members="1,2", convert=False)
    first = weights.resolve_members(CARD, tmp_path, "1,2")
    assert [r.converted for r in first] == [True, True] and calls == ["model_1.pt", "model_2.pt"]
    assert [r.name for r in weights.resolve_members(CARD, tmp_path, "1,2")] == ["model_1", "model_2"]
    assert len(calls) == 2  # up to date: no second conversion
    status = weights.verify(CARD, tmp_path, "1,2")
    assert all(m.onnx_current for m in status.members)

    # An edited ONNX file is stale and is converted again.
    onnx = first[0].onnx_path
    onnx.write_bytes(onnx.read_bytes() + b"x")
    assert not weights.verify(CARD, tmp_path, "1").members[0].onnx_current
    assert weights.resolve_members(CARD, tmp_path, "1")[0].converted and len(calls) == 3

    # Corrupt weights are refused before conversion, with expected and actual sha256.
    (onnx.parent / "model_2.onnx").unlink()
    pt = onnx.parent / "model_2.pt"
    data = bytearray(pt.read_bytes())
    data[100] ^= 0x01
    pt.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=rf"expected sha256 {CARD.member('model_2').sha256}.*refusing it"):
        weights.resolve_members(CARD, tmp_path, "2")
    status = weights.verify(CARD, tmp_path, "1,2")
    assert not status.ok and status.members[1].corrupt and "model_2" in status.problems()[0]
    assert len(calls) == 3


def test_missing_converter_is_a_model_error(tmp_path, monkeypatch):
    def missing():
        raise ModelError("the ONNX converter ictus.models.onnx_build is not available (test)")

    monkeypatch.setattr(weights, "_converter", missing)
    weights.pull(CARD, tmp_path, blast_ct_weights(), members="1", convert=False)
    with pytest.raises(ModelError, match="converter ictus.models.onnx_build is not available"):
        weights.resolve_members(CARD, tmp_path, "fast")
    report = weights.pull(CARD, tmp_path, blast_ct_weights(), members="1")
    assert report.members[0].onnx == "converter unavailable"


def test_real_conversion_runs_in_onnxruntime(tmp_path):
    """With the real converter: pull converts, the stamp matches, and the ONNX runs."""
    pytest.importorskip("ictus.models.onnx_build")
    ort = pytest.importorskip("onnxruntime")
    report = weights.pull(CARD, tmp_path, blast_ct_weights(), members="fast")
    assert report.members[0].onnx == "converted"
    [resolved] = weights.resolve_members(CARD, tmp_path, "fast")
    assert not resolved.converted
    session = ort.InferenceSession(str(resolved.onnx_path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["ictus.model_id"] == "blast-ct" and meta["ictus.source_sha256"] == CARD.member("model_1").sha256
    size = CARD.patch.valid_input_offset_vox + CARD.patch.valid_input_step_vox  # smallest valid input
    x = np.zeros((1, 1, size, size, size), np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (1, CARD.num_classes, *(3 * [CARD.patch.output_size_for(size)]))


def test_card_folder_with_bare_onnx_members(tmp_path):
    """A card loaded by path uses ONNX files next to it; a missing one names the card in the fix."""
    from ictus.models.registry import load_card

    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps(CARD.to_dict()))
    (folder / "model_1.onnx").write_bytes(b"an onnx model")
    card = load_card(folder)
    [resolved] = weights.resolve_members(card, None, "fast")
    assert resolved.onnx_path == folder.resolve() / "model_1.onnx" and resolved.weights_path is None
    with pytest.raises(ModelError, match=rf"`ictus models pull {folder.resolve() / 'card.json'} --members 2`.*card's folder"):
        weights.resolve_members(card, None, "2")
