"""Torch-free, restricted reader of ``torch.save`` state dicts.

BLAST-CT's V1 weights are legacy (pre-1.6, non-zip) ``torch.save`` files of a
plain ``OrderedDict`` state dict. This module reads them without torch and
without full pickle: the unpickler resolves only ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and the torch storage types, each mapped to
a local stand-in, and refuses every other global before anything is called.

The legacy layout is five consecutive pickles (magic number, protocol version,
system info, the object with persistent storage ids, the sorted storage keys)
followed by each storage's raw bytes: an 8-byte little-endian element count
and then the little-endian data. The newer zip layout (``archive/data.pkl``
and ``archive/data/<key>``) is read with the same restrictions.
"""
from __future__ import annotations

import io
import logging
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ictus.imaging.errors import ModelError

logger = logging.getLogger(__name__)

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class name -> little-endian numpy dtype of its elements.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for a torch storage class such as ``torch.FloatStorage``."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


@dataclass(slots=True)
class _Storage:
    """A storage named in the pickle; its bytes are filled in afterwards."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """What ``_rebuild_tensor_v2`` would build, kept lazy until the data is read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise ModelError(f"Weights file has a malformed tensor {what} {value!r}; re-download the file.")
    return value


def _last_index(offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Index of the last storage element a strided tensor touches (-1 if empty)."""
    if not all(shape):
        return -1
    return offset + sum((n - 1) * s for n, s in zip(shape, stride))


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: validates and records."""
    if not isinstance(storage, _Storage):
        raise ModelError("Weights file rebuilds a tensor from something that is not a storage; refusing it.")
    if type(storage_offset) is not int or storage_offset < 0:
        raise ModelError(f"Weights file has a malformed storage offset {storage_offset!r}; re-download the file.")
    shape = _as_int_tuple(size, "shape")
    strides = _as_int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise ModelError("Weights file has a tensor whose shape and stride differ in length; re-download the file.")
    if backward_hooks:
        raise ModelError("Weights file has tensors with backward hooks; refusing it.")
    if _last_index(storage_offset, shape, strides) >= storage.numel:
        raise ModelError("Weights file has a tensor reaching past the end of its storage; re-download the file.")
    return _TensorRef(storage, storage_offset, shape, strides)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names a state dict needs."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None) -> None:
        super().__init__(file, encoding="utf-8")
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise ModelError(f"Weights file refers to {module}.{name}, which a state dict never needs; refusing it.")

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None:
            raise ModelError("Weights file has a storage reference in an unexpected place; refusing it.")
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in ("storage", b"storage"):
            raise ModelError("Weights file has an unknown persistent reference; refusing it.")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise ModelError("Weights file has a malformed storage reference; re-download the file.")
        if view is not None:
            raise ModelError("Weights file uses storage views, which this reader does not support; re-save it.")
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, storage_type.dtype, numel)
            self._storages[key] = storage
        elif storage.dtype != storage_type.dtype:
            raise ModelError("Weights file uses one storage with two element types; refusing it.")
        return storage


def _load_pickle(file: BinaryIO, storages: dict[str, _Storage] | None = None) -> Any:
    try:
        return _RestrictedUnpickler(file, storages).load()
    except ModelError:
        raise
    except Exception as exc:  # any pickle-level damage is a corrupt file for us
        raise ModelError(f"Weights file is not a readable torch.save pickle ({type(exc).__name__}); "
                         "re-download the file.") from exc


def _materialise(obj: Any) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ModelError(f"Weights file holds a {type(obj).__name__}, not a state dict; use a saved state_dict.")
    state: dict[str, np.ndarray] = {}
    for name, ref in obj.items():
        if not isinstance(name, str) or not isinstance(ref, _TensorRef):
            raise ModelError(f"Weights file entry {name!r} is not a tensor; use a saved state_dict.")
        data = ref.storage.data
        if data is None:
            raise ModelError(f"Weights file has no data for the storage of {name!r}; re-download the file.")
        if not isinstance(data, np.ndarray) or _last_index(ref.offset, ref.shape, ref.stride) >= data.size:
            raise ModelError(f"Weights file entry {name!r} reaches past its storage; re-download the file.")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[ref.offset:], shape=ref.shape, strides=tuple(s * itemsize for s in ref.stride), writeable=False)
        state[name] = np.array(view, dtype=data.dtype.newbyteorder("="), order="C", copy=True)
    return state


def _read_legacy(file: BinaryIO) -> dict[str, np.ndarray]:
    if _load_pickle(file) != LEGACY_MAGIC_NUMBER:
        raise ModelError("Weights file does not start with the torch.save magic number; re-download the file.")
    protocol = _load_pickle(file)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise ModelError(f"Weights file has torch.save protocol {protocol!r}, expected {LEGACY_PROTOCOL_VERSION}.")
    sys_info = _load_pickle(file)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise ModelError("Weights file was saved on a big-endian machine, which is not supported; re-save it.")
    storages: dict[str, _Storage] = {}
    obj = _load_pickle(file, storages)
    keys = _load_pickle(file)
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise ModelError("Weights file's storage list does not match its tensors; re-download the file.")
    for key in keys:
        storage = storages[key]
        header = file.read(8)
        if len(header) != 8:
            raise ModelError("Weights file is truncated (storage header); re-download the file.")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise ModelError("Weights file has a storage whose size disagrees with its header; re-download the file.")
        nbytes = numel * storage.dtype.itemsize
        raw = file.read(nbytes)
        if len(raw) != nbytes:
            raise ModelError("Weights file is truncated (storage data); re-download the file.")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    if file.read(1):
        logger.debug("weights file has trailing bytes after its storages")
    return _materialise(obj)


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ModelError(f"Weights file {path.name} is a zip without one data.pkl; use a torch.save state_dict.")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        obj = _load_pickle(io.BytesIO(archive.read(pickles[0])), storages)
        for key, storage in storages.items():
            try:
                raw = archive.read(f"{prefix}data/{key}")
            except KeyError as exc:
                raise ModelError(f"Weights file {path.name} lacks storage {key}; re-download the file.") from exc
            if len(raw) < storage.numel * storage.dtype.itemsize:
                raise ModelError(f"Weights file {path.name} has a short storage {key}; re-download the file.")
            storage.data = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
    return _materialise(obj)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``torch.save``-d state dict into numpy arrays, without torch.

    Handles the legacy (pre-1.6) layout and the zip layout. Only plain tensors
    in (Ordered)dicts are accepted; anything else raises :class:`ModelError`.
    Arrays keep the saved dtype (float32 weights, int64 ``num_batches_tracked``).
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            head = file.read(4)
            file.seek(0)
            if head == b"PK\x03\x04":
                return _read_zip(path)
            return _read_legacy(file)
    except OSError as exc:
        raise ModelError(f"Cannot read weights file {path} ({exc.strerror or exc}); check the path.") from exc
    except zipfile.BadZipFile as exc:
        raise ModelError(f"Weights file {path.name} is a damaged zip archive; re-download the file.") from exc
