"""Atomic writes: a reader sees a whole file (or folder) or nothing.

Single files are written to a temporary file in the same folder and moved into
place with :func:`os.replace` (atomic on POSIX within one file system). A set
of outputs is built inside a staging folder next to the destination
(:func:`staging_dir`) and each finished entry is then moved into place with
:func:`commit`; when anything fails while staging, the staging folder is
removed and the destination is left as it was.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from ictus.imaging.errors import OutputError

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_readable(path: Path) -> None:
    """mkstemp/mkdtemp create private entries; outputs are ordinary files."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file next to ``path``, then move it into place.

    ``writer`` must create the file at the path it is given. Raises
    :class:`OutputError` when the folder is not writable or the writer fails
    with an OS error; the temporary file is removed in every failure.
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write into {dest.parent} ({exc.strerror}); choose a writable output folder") from exc
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _make_readable(tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {dest} ({exc.strerror}); check the output folder and free space") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return dest


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode(encoding))


def remove_stale_staging(parent: str | os.PathLike, prefix: str = ".ictus-outputs-", *,
                         older_than_s: float = 3600.0) -> int:
    """Remove staging folders a killed process left behind (older than ``older_than_s``); returns how many."""
    import time

    removed = 0
    root = Path(parent)
    if not root.is_dir():
        return 0
    now = time.time()
    for entry in root.glob(f"{prefix}*"):
        try:
            if entry.is_dir() and now - entry.stat().st_mtime > older_than_s:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike, prefix: str = ".ictus-outputs-") -> Iterator[Path]:
    """A temporary folder inside ``parent`` (same file system), removed on exit.

    Build every output inside it, then :func:`commit` the finished entries
    before leaving the ``with`` block; whatever was not committed is deleted.
    """
    root = Path(parent)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if remove_stale_staging(root, prefix):
            log.info("removed stale staging folders in %s", root)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    except OSError as exc:
        raise OutputError(f"cannot write into {root} ({exc.strerror}); choose a writable output folder") from exc
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit(staged: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move a finished file or folder from the staging folder to ``dest``.

    A file replaces ``dest`` atomically. A folder replaces an existing folder
    by two renames (old one aside, new one in), so ``dest`` is always either
    the old complete set or the new complete set.
    """
    src, dst = Path(staged), Path(dest)
    try:
        if src.is_dir():
            _make_readable(src)
            for child in src.rglob("*"):
                _make_readable(child)
            old = None
            if dst.exists():
                old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(dst, old)
            try:
                os.replace(src, dst)
            except OSError:
                if old is not None:
                    os.replace(old, dst)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            with open(src, "rb+") as fh:
                os.fsync(fh.fileno())
            _make_readable(src)
            os.replace(src, dst)
    except OSError as exc:
        raise OutputError(f"cannot move {src.name} into {dst.parent} ({exc.strerror}); check the output folder") from exc
    fsync_dir(dst.parent)
    return dst
