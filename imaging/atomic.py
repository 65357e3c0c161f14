"""Atomic writes: a reader sees a whole file (or folder) or nothing.

The one place Ictus writes files atomically (imaging, models and pipelines all
use it; it imports nothing of Ictus but the errors).

- A file is written to a temporary file next to its destination (same folder,
  so the same file system), flushed, and moved into place with
  :func:`os.replace` (atomic on POSIX): :func:`atomic_path` (a context
  manager), :func:`write_with`, :func:`write_bytes`, :func:`write_text`; a
  finished file made elsewhere is moved with :func:`move_file` (copied next to
  the destination first when it lies on another file system).
- A folder is built in a temporary sibling and swapped in by two renames (old
  one aside, new one in): :func:`atomic_dir`, :func:`replace_dir`.
- A set of outputs is built inside a staging folder next to the destination
  (:func:`staging_dir`) and each finished entry is moved into place with
  :func:`commit`; whatever was not committed is removed.

:func:`atomic_path`, :func:`atomic_dir`, :func:`move_file` and
:func:`replace_dir` raise :class:`OSError` for the caller to word;
:func:`write_with`, :func:`write_bytes`, :func:`write_text`,
:func:`staging_dir` and :func:`commit` raise :class:`OutputError`.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from ictus.imaging.errors import OutputError

log = logging.getLogger(__name__)


def fsync_dir(path: str | os.PathLike) -> None:
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


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _make_readable(path: Path) -> None:
    """mkstemp/mkdtemp create private entries; outputs are ordinary files and folders."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp", prefix: str | None = None,
                tmp_dir: str | os.PathLike | None = None, fsync: bool = True,
                readable: bool = True) -> Iterator[Path]:
    """A temporary file to write; when the block ends normally it replaces ``path``.

    The temporary file (created empty) lies next to ``path``, or in ``tmp_dir``
    (which must be on the same file system). On success it is fsynced
    (``fsync``), given the usual mode (``readable``; else it stays private,
    0600), moved onto ``path`` with :func:`os.replace` and the folder is
    fsynced. On any error it is removed and the error propagates (OSError
    unchanged). ``suffix`` matters to writers that choose the format by name
    (``.nii.gz``).
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    where = Path(tmp_dir) if tmp_dir is not None else dest.parent
    fd, name = tempfile.mkstemp(prefix=prefix if prefix is not None else f".{dest.name}.", suffix=suffix, dir=where)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        if readable:
            _make_readable(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(dest.parent)


def write_with(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file next to ``path``, then move it into place.

    ``writer`` must write the file at the path it is given. Raises
    :class:`OutputError` when the folder is not writable or the writer fails
    with an OS error; the temporary file is removed in every failure.
    """
    dest = Path(path)
    try:
        with atomic_path(dest) as tmp:
            writer(tmp)
    except OSError as exc:
        raise OutputError(f"cannot write {dest} ({exc.strerror or exc}); check the output folder is writable "
                          "and has free space") from exc
    return dest


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (OutputError on failure)."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (OutputError on failure)."""
    return write_bytes(path, text.encode(encoding))


def move_file(src: str | os.PathLike, dest: str | os.PathLike, *, fsync: bool = True) -> Path:
    """Move a finished file onto ``dest`` atomically.

    A rename when both lie on one file system; otherwise the file is copied
    to a temporary file next to ``dest``, renamed onto it, and ``src`` removed.
    Never leaves a partial ``dest``. Raises OSError.
    """
    src_p, dst = Path(src), Path(dest)
    if fsync:
        _fsync_file(src_p)
    try:
        os.replace(src_p, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with atomic_path(dst, fsync=fsync) as tmp:
            shutil.copyfile(src_p, tmp)
        src_p.unlink(missing_ok=True)
        return dst
    if fsync:
        fsync_dir(dst.parent)
    return dst


def replace_dir(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move the finished folder ``src`` to ``dest`` (same file system), replacing a folder there.

    Two renames (old one aside, new one in; the old one is put back if the
    second fails), so ``dest`` is always either the old or the new complete
    folder. Raises OSError.
    """
    src_p, dst = Path(src), Path(dest)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
    try:
        os.replace(src_p, dst)
    except OSError:
        if old is not None:
            os.replace(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dst.parent)
    return dst


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling folder to fill; when the block ends normally it replaces ``path``.

    The folder (``.NAME.tmp-XXXX`` next to ``path``) gets the usual mode; on
    any error it is removed and ``path`` is left as it was. Raises OSError.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        _make_readable(tmp)
        yield tmp
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_staging(parent: str | os.PathLike, prefix: str = ".ictus-outputs-", *,
                         older_than_s: float = 3600.0) -> int:
    """Remove staging folders a killed process left behind (older than ``older_than_s``); returns how many."""
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

    A file replaces ``dest`` atomically (:func:`move_file`); a folder replaces
    an existing folder by two renames (:func:`replace_dir`), so ``dest`` is
    always either the old complete set or the new complete set.
    """
    src, dst = Path(staged), Path(dest)
    try:
        _make_readable(src)
        if src.is_dir():
            for child in src.rglob("*"):
                _make_readable(child)
            replace_dir(src, dst)
        else:
            move_file(src, dst)
    except OSError as exc:
        raise OutputError(f"cannot move {src.name} into {dst.parent} ({exc.strerror}); check the output folder") from exc
    return dst


__all__ = [
    "atomic_dir", "atomic_path", "commit", "fsync_dir", "move_file", "remove_stale_staging", "replace_dir",
    "staging_dir", "write_bytes", "write_text", "write_with",
]
