"""Model assets (stroke-atlas, blast-ct-atlas): cards, pull from the shared mirror and
over HTTP (127.0.0.1), sha256 refusal, retries, verify (exit 5), resolve_asset_dir.

The HTTP server serves a copy of the shared files, made in a temporary folder at test
time (never in the repository): the stroke atlas in its installed layout with one
ASPECTS mask corrupted, and the BLAST-CT localisation files in the upstream
repository layout (``blast_ct/data/localisation_files/``).
"""
from __future__ import annotations

import json
import re
import shutil
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from ictus.imaging.errors import InvalidInputError, ModelError
from ictus.imaging.stroke_atlas import LOBAR_ATLAS_FILES, STROKE_ATLAS_FILES
from ictus.models import assets, weights
from tests.conftest import shared_root
from tests.test_weights import _Handler

STROKE = assets.get_asset_card("stroke-atlas")
BLAST = assets.get_asset_card("blast-ct-atlas")
CORRUPT = "aspects/MNI152_M3_R.nii.gz"


def shared_stroke_atlas() -> Path:
    path = shared_root() / "models" / "stroke-atlas"
    if not (path / "template" / "scct.nii").is_file():
        pytest.skip(f"stroke atlas {path} is absent (set ICTUS_SHARED_DIR to the shared folder)")
    return path


def shared_blast_ct() -> Path:
    path = shared_root() / "models" / "blast-ct"
    if not (path / "localisation_files").is_dir():
        pytest.skip(f"BLAST-CT localisation files {path} are absent (set ICTUS_SHARED_DIR to the shared folder)")
    return path


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path):
    """Never touch the real user cache: HOME and XDG_CACHE_HOME inside tmp_path."""
    monkeypatch.delenv(weights.ENV_MODELS_DIR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base_url, handler class) of a local server: ``stroke/`` (installed layout, one
    mask corrupted) and ``blast/`` (upstream repository layout)."""
    stroke, blast = shared_stroke_atlas(), shared_blast_ct()
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(stroke, root / "stroke")
    for p in (root / "stroke").rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)  # the shared copy is read-only
    data = bytearray((root / "stroke" / CORRUPT).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "stroke" / CORRUPT).write_bytes(bytes(data))
    loc = root / "blast" / "blast_ct" / "data" / "localisation_files"
    loc.mkdir(parents=True)
    for f in (blast / "localisation_files").iterdir():
        shutil.copyfile(f, loc / f.name)
    shutil.copyfile(blast / "LICENSE.txt", root / "blast" / "LICENSE")

    handler = type("Handler", (_Handler,), {"failures": {}, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(root), **k))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def _leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob(".*"))


# ------------------------------------------------------------------------ cards
def test_cards_hold_what_imaging_reads():
    stroke_paths = {f.path for f in STROKE.files}
    assert set(STROKE_ATLAS_FILES) <= stroke_paths
    assert {"template/LICENSE.txt", "aspects/LICENSE.txt"} <= stroke_paths and len(STROKE.files) == 24
    assert set(LOBAR_ATLAS_FILES) <= {f.path for f in BLAST.files}
    for card in (STROKE, BLAST):
        assert card.license_spdx and card.doi and card.raw["sources"]
        for f in card.files:
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size_bytes > 0
            assert f.url.startswith("https://raw.githubusercontent.com/") and f.url.endswith("/" + f.upstream_path)
    urls = {f.path: f.url for f in STROKE.files + BLAST.files}
    assert urls["template/scct.nii"] == (
        "https://raw.githubusercontent.com/neurolabusc/Clinical/1b6bc35f55a5a3dcdc8f7c3e5d58ba3407171dcb/scct.nii"
    )
    assert urls["aspects/MNI152_C_L.nii.gz"] == (
        "https://raw.githubusercontent.com/AnotherMak/aspects-on-cta/eb479fe93fc20c5a923dd65700084be57e0c2ad7/"
        "region-masks/MNI152_C_L.nii.gz"
    )
    assert urls["atlas_labels.csv"] == (
        "https://raw.githubusercontent.com/biomedia-mira/blast-ct/ccfa6efb6ee269b97d971a96658d78953381c08e/"
        "blast_ct/data/localisation_files/atlas_labels.csv"
    )
    assert [c.ref for c in assets.list_asset_cards()] == ["blast-ct-atlas:v1", "stroke-atlas:v1"]
    assert assets.find_asset_card("stroke-atlas:v1") == STROKE and assets.find_asset_card("blast-ct") is None


def test_card_sha256_matches_shared_source_table():
    table = (shared_stroke_atlas() / "SOURCE.md").read_text()
    rows = dict(re.findall(r"^\| (\S+) \| \d+ \| ([0-9a-f]{64}) \|$", table, re.M))
    assert rows == {f.path: f.sha256 for f in STROKE.files}


def test_malformed_asset_card_is_refused():
    data = STROKE.to_dict()
    data["files"][0]["path"] = "../escape.nii"
    with pytest.raises(ModelError, match="not a safe relative path"):
        assets.asset_card_from_dict(data)
    with pytest.raises(ModelError, match=r"unknown asset 'nope'; known assets: blast-ct-atlas:v1, stroke-atlas:v1"):
        assets.get_asset_card("nope")


# ---------------------------------------------------------------- local mirror
def test_pull_from_shared_mirror_verify_and_resolve(tmp_path):
    report = assets.pull_asset(STROKE, tmp_path, shared_stroke_atlas())
    directory = tmp_path / "stroke-atlas" / "v1"
    assert report.directory == directory and {f.action for f in report.files} == {"copied"}
    assert assets.verify_asset(STROKE, tmp_path).ok
    assert assets.resolve_asset_dir("stroke-atlas", tmp_path) == directory
    assert all((directory / rel).is_file() for rel in STROKE_ATLAS_FILES)
    assert json.loads((directory / "card.json").read_text())["id"] == "stroke-atlas"
    assert _leftovers(directory) == []
    # The BLAST-CT mirror keeps the files under localisation_files/; installed flat.
    assets.pull_asset(BLAST, tmp_path, shared_blast_ct())
    lobar = assets.resolve_asset_dir("blast-ct-atlas", tmp_path)
    assert lobar == tmp_path / "blast-ct-atlas" / "v1" and all((lobar / rel).is_file() for rel in LOBAR_ATLAS_FILES)
    # Intact files are kept.
    again = assets.pull_asset(STROKE, tmp_path, shared_stroke_atlas())
    assert {f.action for f in again.files} == {"present"}


def test_stroke_models_dir_fixture(stroke_models_dir):
    assert assets.resolve_asset_dir("stroke-atlas", stroke_models_dir).is_dir()
    assert assets.resolve_asset_dir("blast-ct-atlas", stroke_models_dir).is_dir()


def test_bad_local_mirror_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInputError, match="is not a folder"):
        assets.pull_asset(STROKE, tmp_path, tmp_path / "nonexistent")
    (tmp_path / "mirror" / "template").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match=r"lacks 24 files \(template/scct\.nii \.\. "):
        assets.pull_asset(STROKE, tmp_path, tmp_path / "mirror")


# ------------------------------------------------------------------ HTTP pulls
def test_pull_over_http_refuses_the_corrupted_file(served, tmp_path):
    base, _ = served
    with pytest.raises(ModelError) as info:
        assets.pull_asset(STROKE, tmp_path, f"{base}/stroke", backoff_s=0.0)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("stroke-atlas:v1: 1 of 24 file(s) not installed") and "the others are installed" in message
    expected = next(f for f in STROKE.files if f.path == CORRUPT).sha256
    assert f"{CORRUPT} from {base}/stroke/{CORRUPT}" in message and f"expected sha256 {expected}" in message
    directory = tmp_path / "stroke-atlas" / "v1"
    assert not (directory / CORRUPT).exists() and _leftovers(directory) == []
    status = assets.verify_asset(STROKE, tmp_path)
    assert status.verified == 23 and status.problems() == [f"{CORRUPT}: missing"]
    with pytest.raises(ModelError, match=re.escape(f"missing {CORRUPT}; run `ictus models pull stroke-atlas --models-dir {tmp_path}`")):
        assets.resolve_asset_dir("stroke-atlas", tmp_path)


def test_pull_from_pinned_urls_with_retry(served, tmp_path):
    """The card's own URLs (rewritten to the local server) and one 503 retried."""
    base, handler = served
    data = BLAST.to_dict()
    for f in data["files"]:
        f["url"] = f"{base}/blast/{f['upstream_path']}"
    card = assets.asset_card_from_dict(data)
    handler.failures["/blast/blast_ct/data/localisation_files/atlas_labels.csv"] = 1
    report = assets.pull_asset(card, tmp_path, None, backoff_s=0.0)
    assert [f.action for f in report.files] == ["downloaded"] * 4
    assert report.files[0].source == f"{base}/blast/blast_ct/data/localisation_files/atlas_template_space.nii.gz"
    assert [p for p, _ in handler.requests].count("/blast/blast_ct/data/localisation_files/atlas_labels.csv") == 2
    assert assets.verify_asset(BLAST, tmp_path).ok
    # A base URL in the upstream layout works too (the installed layout answers 404 first).
    other = tmp_path / "other"
    report = assets.pull_asset(BLAST, other, f"{base}/blast", backoff_s=0.0)
    assert report.files[-1].source == f"{base}/blast/LICENSE"


# ------------------------------------------------------------------------- CLI
def test_cli_pull_verify_list(cli_runner, tmp_path):
    models_dir = tmp_path / "m"
    code, out, err = cli_runner("models", "pull", "stroke-atlas", "--from", shared_stroke_atlas(), "--models-dir", models_dir)
    assert code == 0, err
    assert "template/scct.nii: copied, sha256 ok" in out and "stroke-atlas:v1: 24 file(s) in" in out
    code, out, err = cli_runner("models", "verify", "stroke-atlas", "--models-dir", models_dir)
    assert code == 0, err
    assert "aspects/MNI152_C_L.nii.gz: sha256 ok" in out

    code, out, _ = cli_runner("models", "list", "--models-dir", models_dir, "--json")
    rows = {r["id"]: r for r in json.loads(out)["assets"]}
    assert rows["stroke-atlas"]["installed"]["verified"] == 24 and rows["blast-ct-atlas"]["installed"]["verified"] == 0
    code, out, _ = cli_runner("models", "list", "--models-dir", models_dir)
    assert code == 0 and "24/24 files verified" in out and "0/4 files verified" in out

    # Corrupt: exit 5, one line naming the file and the command to run.
    scct = models_dir / "stroke-atlas" / "v1" / "template" / "scct.nii"
    data = bytearray(scct.read_bytes())
    data[-1] ^= 0xFF
    scct.write_bytes(bytes(data))
    code, out, err = cli_runner("models", "verify", "stroke-atlas", "--models-dir", models_dir)
    assert code == 5 and "template/scct.nii: CORRUPT" in out
    assert err.startswith("ictus: error: stroke-atlas:v1: 1 file(s) missing or corrupt") and err.count("\n") == 1
    assert "template/scct.nii: sha256" in err and f"`ictus models pull stroke-atlas --models-dir {models_dir}`" in err
    # Missing: exit 5; JSON report.
    (models_dir / "stroke-atlas" / "v1" / "aspects" / "MNI152_IC_L.nii.gz").unlink()
    code, out, err = cli_runner("models", "verify", "stroke-atlas", "--models-dir", models_dir, "--json")
    assert code == 5
    [report] = json.loads(out)
    assert report["verified"] == 22 and not report["ok"]
    # Pulling again repairs both and keeps the rest.
    code, out, err = cli_runner("models", "pull", "stroke-atlas", "--from", shared_stroke_atlas(), "--models-dir", models_dir)
    assert code == 0, err
    assert "template/scct.nii: copied" in out and "aspects/MNI152_IC_L.nii.gz: copied" in out
    assert "template/scct_stripped.nii: present" in out

    code, out, err = cli_runner("models", "verify", "stroke-atlas", "--models-dir", models_dir)
    assert code == 0, err

    # verify without MODEL checks the assets too (after the models, whose problem comes first).
    code, out, err = cli_runner("models", "verify", "--models-dir", models_dir)
    assert code == 5 and "`ictus models pull blast-ct --models-dir" in err
    assert "stroke-atlas:v1 in" in out and "atlas_labels.csv: missing" in out
    code, out, err = cli_runner(
        "models", "pull", "blast-ct-atlas", "--from", shared_blast_ct(), "--models-dir", models_dir
    )
    assert code == 0 and "atlas_labels.csv: copied, sha256 ok" in out


@pytest.mark.parametrize(
    "args, code, message",
    [
        (("models", "verify", "stroke-atlas"), 5, "run `ictus models pull stroke-atlas`"),
        (("models", "verify", "blast-ct-atlas"), 5, "atlas_template_space.nii.gz: missing"),
        (("models", "pull", "stroke-atlas", "--from", "/nonexistent/mirror"), 4, "is not a folder"),
    ],
)
def test_cli_errors_and_exit_codes(cli_runner, args, code, message):
    got, _, err = cli_runner(*args)
    assert got == code
    assert err.startswith("ictus: error: ") and message in err and err.count("\n") == 1


def test_cli_members_does_not_apply_to_assets(cli_runner):
    code, _, err = cli_runner("models", "pull", "stroke-atlas", "--members", "1")
    assert code == 2 and "--members applies to model weights" in err


# --------------------------------------------------------------------- resolve
def test_resolve_asset_dir_messages(tmp_path, monkeypatch):
    with pytest.raises(ModelError) as info:
        assets.resolve_asset_dir("stroke-atlas", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"the stroke-atlas v1 asset is not installed in {tmp_path / 'stroke-atlas' / 'v1'}")
    assert f"run `ictus models pull stroke-atlas --models-dir {tmp_path}`" in message
    assert "--from /path/to/mirror" in message
    monkeypatch.setenv(weights.ENV_MODELS_DIR, str(tmp_path / "env"))
    with pytest.raises(ModelError, match=r"folder named by ICTUS_MODELS_DIR.*run `ictus models pull blast-ct-atlas`"):
        assets.resolve_asset_dir("blast-ct-atlas")
    with pytest.raises(ModelError, match="unknown asset 'no-such-atlas'"):
        assets.resolve_asset_dir("no-such-atlas")


def test_resolve_checks_size_verify_checks_sha256(tmp_path):
    """Files of the right size resolve (cheap check); verify still finds them corrupt."""
    directory = tmp_path / "blast-ct-atlas" / "v1"
    for f in BLAST.files:
        (directory / f.path).parent.mkdir(parents=True, exist_ok=True)
        (directory / f.path).write_bytes(b"\0" * f.size_bytes)
    assert assets.resolve_asset_dir("blast-ct-atlas", tmp_path) == directory
    report = assets.verify_asset(BLAST, tmp_path)
    assert not report.ok and all(s.corrupt for s in report.files)
    (directory / "atlas_labels.csv").write_bytes(b"ROIIndex,ROIName\n")
    with pytest.raises(ModelError, match=r"asset is corrupt in .*wrong size \(corrupt or partial\) atlas_labels\.csv"):
        assets.resolve_asset_dir("blast-ct-atlas", tmp_path)
