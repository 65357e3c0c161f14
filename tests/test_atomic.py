"""ictus.imaging.atomic: whole files and folders or nothing, on one file system or across two."""
from __future__ import annotations

import errno
import os
import stat

import pytest

from ictus.imaging import atomic
from ictus.imaging.errors import OutputError


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_replaces_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "model.onnx"
    with atomic.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and _entries(tmp_path) == ["model.onnx"]
    assert stat.S_IMODE(target.stat().st_mode) != 0o600  # an ordinary file, not mkstemp's private one
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"new" and _entries(tmp_path) == ["model.onnx"]


def test_atomic_path_in_another_folder_stays_private(tmp_path):
    spool_tmp = tmp_path / "tmp"
    spool_tmp.mkdir()
    dest = tmp_path / "incoming" / "1.2.3.dcm"
    with atomic.atomic_path(dest, prefix="1.2.3.", suffix=".part", tmp_dir=spool_tmp, readable=False) as tmp:
        assert tmp.parent == spool_tmp and tmp.name.endswith(".part")
        tmp.write_bytes(b"DICM")
    assert dest.read_bytes() == b"DICM" and _entries(spool_tmp) == []
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_write_text_failure_is_an_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        atomic.write_text(blocker / "sub" / "f.json", "x")


def test_move_file_across_file_systems_copies_then_renames(tmp_path, monkeypatch):
    src = tmp_path / "elsewhere" / "q.onnx"
    src.parent.mkdir()
    src.write_bytes(b"int8")
    dest = tmp_path / "models" / "m.int8.onnx"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    real_replace = os.replace

    def cross_device(a, b):
        if os.fspath(a) == os.fspath(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(a, b)

    monkeypatch.setattr(atomic.os, "replace", cross_device)
    atomic.move_file(src, dest)
    assert dest.read_bytes() == b"int8" and not src.exists()
    assert _entries(dest.parent) == ["m.int8.onnx"]  # no temporary file left


def test_atomic_dir_swaps_a_whole_folder_or_leaves_it(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OSError):
        with atomic.atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise OSError(28, "No space left on device")
    assert _entries(tmp_path) == ["study"] and _entries(out) == ["old.txt"]
    with atomic.atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _entries(tmp_path) == ["study"] and _entries(out) == ["new.txt"]


def test_commit_moves_a_staged_file(tmp_path):
    with atomic.staging_dir(tmp_path) as stage:
        staged = stage / "findings.json"
        staged.write_text("{}")
        atomic.commit(staged, tmp_path / "findings.json")
    assert _entries(tmp_path) == ["findings.json"]
