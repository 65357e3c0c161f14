#!/usr/bin/env python
"""Fuzz the ingest path with mutated copies of real DICOM studies.

Each mutated study is built from the real third-party files in
``../shared/data/dicom`` (``$ICTUS_SHARED_DIR``): mainly the GE head
(28 slices, tilt, variable spacing), also the WG04 compression files (stacked
into a mixed-transfer-syntax series) and the ct0012 Enhanced CT multi-frame
object. Mutations are byte-level (truncations, flipped length fields, VR codes
overwritten, random bytes, random files, empty files) and header-level
(missing Type 1 attributes, absurd values, NaN/inf in decimal strings, wrong
VRs, mixed transfer syntaxes in one series, duplicated/removed/shuffled
slices), alone or combined. Unchanged files are symbolic links to the
originals, so a study costs only its mutated files on disk.

Every study must end as Ictus promises (README, "Exit codes"): exit 0 (a
volume), 3 (no eligible series) or 4 (invalid input), with exactly one line of
error text for 3/4, never an internal error (exit 1), a traceback, a hang (per
study time limit) or a half-written output file.

* In-process path (all studies): :func:`ictus.pipelines.triage.load_volume` in a
  forked child per study (a hard time limit, memory isolation); the exit code
  is the error's ``exit_code`` as the CLI maps it.
* CLI path (``--cli-count`` studies, spread over the run): the real ``ictus
  volume STUDY -o OUT/vol.nii.gz`` as a subprocess; stderr must be one line for
  3/4 (``ictus: error: ...``) and empty of tracebacks; on 0 the output must be a
  readable image, on 3/4 no output and no temporary file may be left.

    python scripts/fuzz_ingest.py --seed 14 --count 500 --out /tmp/fuzz [--timeout-s 20] [--cli-count 30]

Prints the counts per outcome and per mutation and exits 1 when any study broke
a promise (the list of them is printed, with the mutation that made each).
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import multiprocessing
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pydicom  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.dataelem import RawDataElement  # noqa: E402
from pydicom.tag import Tag  # noqa: E402

log = logging.getLogger(__name__)

GE = "ge-head-tilt-variable-spacing"
WG04 = "wg04-ct2-compression"
CT0012 = "ct0012-multiframe-encodings"
ALLOWED_EXIT_CODES = (0, 3, 4)


def shared_dicom_root() -> Path:
    """``$ICTUS_SHARED_DIR/data/dicom`` (default ``../shared`` next to the project)."""
    return Path(os.environ.get("ICTUS_SHARED_DIR", ROOT.parent / "shared")).resolve() / "data" / "dicom"


# ---------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------
@dataclass
class SourceFile:
    """One real file: where it is, its bytes and its parsed dataset (pixels included)."""

    name: str
    path: Path
    data: bytes
    _ds: Dataset | None = field(default=None, repr=False)

    def dataset(self) -> Dataset:
        """A fresh deep copy of the parsed dataset (safe to mutate)."""
        if self._ds is None:
            self._ds = pydicom.dcmread(io.BytesIO(self.data))
        return copy.deepcopy(self._ds)


@dataclass
class Sources:
    """The real studies the mutations start from."""

    ge: list[SourceFile]
    wg04: list[SourceFile]
    ct0012: list[SourceFile]

    @classmethod
    def load(cls, root: Path | None = None) -> "Sources":
        """Read the shared files (raises FileNotFoundError when the GE head is absent)."""
        root = root or shared_dicom_root()
        if not (root / GE).is_dir():
            raise FileNotFoundError(f"{root / GE} is absent; set ICTUS_SHARED_DIR to the shared folder")

        def files(folder: Path, pattern: str) -> list[SourceFile]:
            return [SourceFile(p.relative_to(folder).as_posix().replace("/", "_"), p, p.read_bytes())
                    for p in sorted(folder.glob(pattern)) if p.is_file() and p.suffix != ".md"]

        wg04 = files(root / WG04, "*/*") if (root / WG04).is_dir() else []
        ct0012 = files(root / CT0012, "*.dcm") if (root / CT0012).is_dir() else []
        return cls(ge=files(root / GE, "*.dcm"), wg04=wg04, ct0012=ct0012)


# A study being built: file name -> bytes (mutated) or Path (unchanged: symlinked).
Study = dict[str, "bytes | Path"]


def _encode(ds: Dataset) -> bytes:
    """Write a (possibly invalid) dataset as it is, without pydicom's validation."""
    buf = io.BytesIO()
    meta = getattr(ds, "file_meta", None)
    big = meta is not None and str(meta.get("TransferSyntaxUID", "")) == pydicom.uid.ExplicitVRBigEndian
    with _lenient():
        if big:
            pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=False, enforce_file_format=False)
        else:
            ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


class _lenient:
    """Context: pydicom neither validates nor warns while the fuzzer writes odd values."""

    def __enter__(self) -> None:
        from pydicom import config

        self._modes = (config.settings.writing_validation_mode, config.settings.reading_validation_mode)
        config.settings.writing_validation_mode = config.IGNORE
        config.settings.reading_validation_mode = config.IGNORE

    def __exit__(self, *exc: object) -> None:
        from pydicom import config

        config.settings.writing_validation_mode, config.settings.reading_validation_mode = self._modes


def _set_raw(ds: Dataset, keyword_or_tag: str | int, vr: str, value: bytes) -> None:
    """Put a raw (unvalidated) element into ``ds``: any bytes, any VR."""
    tag = Tag(keyword_or_tag)
    if len(value) % 2:
        value += b" " if vr not in ("OB", "UN", "UI") else b"\x00"
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)  # type: ignore[index]


def _elements(data: bytes) -> list[tuple[int, int, int, int]]:
    """Top-level elements of an explicit-VR little-endian Part 10 file:
    (offset, tag, vr offset or -1, length-field offset, length size) walked
    from the preamble; stops at the first thing it cannot walk."""
    out = []
    pos = 132
    long_vrs = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UT", b"UC", b"UR", b"SV", b"UV"}
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4 : pos + 6]
        if not (b"AA" <= vr <= b"ZZ"):
            break
        if vr in long_vrs:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            out.append((pos, (group << 16) | elem, pos + 8, 4))
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            out.append((pos, (group << 16) | elem, pos + 6, 2))
            start = pos + 8
        if length == 0xFFFFFFFF:
            end = data.find(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", start)
            if end < 0:
                break
            pos = end + 8
        else:
            pos = start + length
    return out


# ---------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------
Mutation = Callable[[Sources, random.Random], Study]
MUTATIONS: dict[str, tuple[str, Mutation]] = {}  # name -> (level, function)


def mutation(name: str, level: str) -> Callable[[Mutation], Mutation]:
    """Register a mutation (level: "byte", "header", "series" or "combined")."""

    def register(fn: Mutation) -> Mutation:
        MUTATIONS[name] = (level, fn)
        return fn

    return register


def _ge_study(src: Sources) -> Study:
    return {f.name: f.path for f in src.ge}


def _pick(src: Sources, rng: random.Random, k_max: int = 3, files: list[SourceFile] | None = None) -> list[SourceFile]:
    files = files if files is not None else src.ge
    return rng.sample(files, rng.randint(1, min(k_max, len(files))))


def _bytes_of(study: Study, f: SourceFile) -> bytes:
    value = study.get(f.name, f.path)
    return value if isinstance(value, bytes) else f.data


@mutation("truncate", "byte")
def _truncate(src: Sources, rng: random.Random) -> Study:
    study = _ge_study(src)
    for f in _pick(src, rng, 5):
        data = _bytes_of(study, f)
        where = rng.choice(["anywhere", "header", "pixels", "last_bytes"])
        if where == "header":
            cut = rng.randrange(0, 2500)
        elif where == "pixels":
            cut = rng.randrange(len(data) - 512 * 512 * 2, len(data))
        elif where == "last_bytes":
            cut = len(data) - rng.randint(1, 16)
        else:
            cut = rng.randrange(0, len(data))
        study[f.name] = data[:cut]
    return study


@mutation("flip_length", "byte")
def _flip_length(src: Sources, rng: random.Random) -> Study:
    study = _ge_study(src)
    for f in _pick(src, rng, 3):
        data = bytearray(_bytes_of(study, f))
        elements = _elements(bytes(data))
        for _ in range(rng.randint(1, 3)):
            offset, _tag, length_at, size = rng.choice(elements)
            (old,) = struct.unpack_from("<I" if size == 4 else "<H", data, length_at)
            top = 0xFFFFFFFF if size == 4 else 0xFFFF
            new = rng.choice([0, 1, 3, old + 2, max(0, old - 2), old * 2 + 7, top, top - 1, rng.randrange(top)])
            struct.pack_into("<I" if size == 4 else "<H", data, length_at, min(new, top))
        study[f.name] = bytes(data)
    return study


_VR_CODES = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OW",
             b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UI", b"UL", b"UN", b"US", b"UT", b"XX", b"\x00\x00"]


@mutation("vr_code", "byte")
def _vr_code(src: Sources, rng: random.Random) -> Study:
    study = _ge_study(src)
    for f in _pick(src, rng, 4):
        data = bytearray(_bytes_of(study, f))
        elements = [e for e in _elements(bytes(data)) if e[1] >> 16 != 0x0002]
        for _ in range(rng.randint(1, 3)):
            offset = rng.choice(elements)[0]
            data[offset + 4 : offset + 6] = rng.choice(_VR_CODES)
        study[f.name] = bytes(data)
    return study


@mutation("random_bytes_header", "byte")
def _random_bytes_header(src: Sources, rng: random.Random) -> Study:
    study = _ge_study(src)
    for f in _pick(src, rng, 4):
        data = bytearray(_bytes_of(study, f))
        end = len(data) - 512 * 512 * 2
        for _ in range(rng.randint(1, 48)):
            data[rng.randrange(128, end)] = rng.randrange(256)
        study[f.name] = bytes(data)
    return study


@mutation("random_bytes_pixels", "byte")
def _random_bytes_pixels(src: Sources, rng: random.Random) -> Study:
    study = _ge_study(src)
    for f in _pick(src, rng, 6):
        data = bytearray(_bytes_of(study, f))
        start = len(data) - 512 * 512 * 2
        for _ in range(rng.randint(1, 5000)):
            data[rng.randrange(start, len(data))] = rng.randrange(256)
        study[f.name] = bytes(data)
    return study


@mutation("random_files", "byte")
def _random_files(src: Sources, rng: random.Random) -> Study:
    study = _ge_study(src)
    kind = rng.choice(["replace", "add", "all_random", "dicm_random", "empty"])
    if kind == "all_random":
        return {f"r{i:02d}.dcm": rng.randbytes(rng.randint(0, 4096)) for i in range(rng.randint(1, 5))}
    for i in range(rng.randint(1, 4)):
        if kind == "dicm_random":
            blob = bytes(128) + b"DICM" + rng.randbytes(rng.randint(0, 2000))
        elif kind == "empty":
            blob = b""
        else:
            blob = rng.randbytes(rng.randint(1, 70000))
        if kind == "replace":
            study[rng.choice(src.ge).name] = blob
        else:
            study[f"junk{i}.dcm"] = blob
    return study


@mutation("group2_garbage", "byte")
def _group2_garbage(src: Sources, rng: random.Random) -> Study:
    """Damage the file meta group (transfer syntax value, group length, preamble marker)."""
    study = _ge_study(src)
    for f in _pick(src, rng, 28):
        data = bytearray(_bytes_of(study, f))
        kind = rng.choice(["ts_value", "group_length", "no_dicm", "ts_unknown"])
        meta = [e for e in _elements(bytes(data)) if e[1] >> 16 == 0x0002]
        if kind == "no_dicm":
            data[128:132] = b"DICX"
        elif kind == "group_length" and meta:
            struct.pack_into("<I", data, meta[0][2] + 2, rng.choice([0, 4, 100000, 0xFFFFFFFF]))
        else:
            ts = [e for e in meta if e[1] == 0x00020010]
            if ts:
                at = ts[0][2] + 2
                (n,) = struct.unpack_from("<H", data, ts[0][2])
                uid = b"1.2.840.10008.1.2.4.99" if kind == "ts_unknown" else rng.choice(
                    [b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.5", b"1.2.840.10008.1.2.4.90"])
                data[at : at + n] = uid.ljust(n, b"\x00")[:n]
        study[f.name] = bytes(data)
    return study


_TYPE1 = ["FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
          "RescaleSlope", "RescaleIntercept", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
          "PixelRepresentation", "PhotometricInterpretation", "SamplesPerPixel", "SOPInstanceUID",
          "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID", "Modality", "SliceThickness", "PatientAge",
          "PixelData", "ImageType", "SeriesDescription", "StudyDescription", "PatientName", "InstanceNumber",
          "KVP", "ConvolutionKernel", "PatientPosition", "BodyPartExamined"]


def _header_mutate(src: Sources, rng: random.Random, edit: Callable[[Dataset, random.Random], None],
                   k_max: int = 28) -> Study:
    study = _ge_study(src)
    targets = src.ge if rng.random() < 0.4 else _pick(src, rng, k_max)
    for f in targets:
        ds = f.dataset()
        edit(ds, rng)
        study[f.name] = _encode(ds)
    return study


@mutation("missing_type1", "header")
def _missing_type1(src: Sources, rng: random.Random) -> Study:
    keywords = rng.sample(_TYPE1, rng.randint(1, 2))

    def edit(ds: Dataset, _rng: random.Random) -> None:
        for keyword in keywords:
            if keyword in ds:
                del ds[keyword]

    return _header_mutate(src, rng, edit)


_ABSURD: dict[str, tuple[str, list[bytes]]] = {
    "Rows": ("US", [struct.pack("<H", v) for v in (0, 1, 65535, 513, 256)]),
    "Columns": ("US", [struct.pack("<H", v) for v in (0, 1, 65535, 511)]),
    "BitsAllocated": ("US", [struct.pack("<H", v) for v in (0, 1, 7, 8, 12, 32, 64, 65535)]),
    "BitsStored": ("US", [struct.pack("<H", v) for v in (0, 1, 17, 32, 65535)]),
    "HighBit": ("US", [struct.pack("<H", v) for v in (0, 16, 99, 65535)]),
    "PixelRepresentation": ("US", [struct.pack("<H", v) for v in (1, 2, 65535)]),
    "SamplesPerPixel": ("US", [struct.pack("<H", v) for v in (0, 3, 4, 65535)]),
    "PhotometricInterpretation": ("CS", [b"RGB", b"PALETTE COLOR", b"YBR_FULL", b"", b"MONOCHROME1", b"XYZ"]),
    "NumberOfFrames": ("IS", [b"0", b"-1", b"2", b"1000000000", b"abc", b"99999999999999"]),
    "PixelSpacing": ("DS", [b"0\\0", b"-1\\-1", b"1e9\\1e9", b"1e-9\\1e-9", b"0.5", b"0.5\\0.5\\0.5", b"a\\b",
                            b"1e308\\1e308"]),
    "SliceThickness": ("DS", [b"0", b"-5", b"1e6", b"abc", b"1e-30"]),
    "ImagePositionPatient": ("DS", [b"1e30\\1e30\\1e30", b"0\\0", b"0\\0\\0", b"x\\y\\z", b"1e308\\-1e308\\1e308",
                                    b"-1e15\\0\\1e15"]),
    "ImageOrientationPatient": ("DS", [b"0\\0\\0\\0\\0\\0", b"1\\0\\0\\1\\0\\0", b"2\\0\\0\\0\\3\\0",
                                       b"1\\0\\0\\0\\1", b"1e300\\0\\0\\0\\1e300\\0", b"0\\0\\1\\0\\1\\0"]),
    "RescaleSlope": ("DS", [b"0", b"-1", b"1e30", b"1e-30", b"1e308", b"abc"]),
    "RescaleIntercept": ("DS", [b"1e30", b"-1e30", b"1e308", b"-32768", b"abc", b"100000"]),
    "PixelPaddingValue": ("US", [struct.pack("<H", v) for v in (0, 65535, 1024)] + [b"\x01"]),
    "PixelPaddingRangeLimit": ("US", [struct.pack("<H", v) for v in (0, 65535)]),
    "GantryDetectorTilt": ("DS", [b"90", b"-720", b"1e300", b"nan"]),
    "PatientAge": ("AS", [b"999Y", b"000D", b"-1Y", b"abcd", b"12", b"\xff\xfe"]),
    "InstanceNumber": ("IS", [b"-1", b"99999999999", b"x"]),
    "SeriesNumber": ("IS", [b"-1", b"99999999999999999999", b"x"]),
    "SOPClassUID": ("UI", [b"1.2.840.10008.5.1.4.1.1.7", b"1.2.3", b"", b"\x00\x00"]),
    "Modality": ("CS", [b"MR", b"", b"ct", b"\x01\x02"]),
    "ImageType": ("CS", [b"DERIVED\\SECONDARY\\MPR", b"ORIGINAL\\PRIMARY\\LOCALIZER", b"", b"\\\\\\\\"]),
    "ContrastBolusAgent": ("LO", [b"IOHEXOL", b"NONE", b"\xff\xfe"]),
    "SeriesDescription": ("LO", [b"\x1b[31mred\x1b[0m", b"../../etc/passwd", b"A" * 64, b"\xff\xfe\xfd"]),
    "ConvolutionKernel": ("SH", [b"BONE", b"\xff", b"H70h"]),
}


@mutation("absurd_value", "header")
def _absurd_value(src: Sources, rng: random.Random) -> Study:
    keywords = rng.sample(sorted(_ABSURD), rng.randint(1, 2))
    choice = {k: rng.choice(_ABSURD[k][1]) for k in keywords}

    def edit(ds: Dataset, _rng: random.Random) -> None:
        for keyword in keywords:
            _set_raw(ds, keyword, _ABSURD[keyword][0], choice[keyword])

    return _header_mutate(src, rng, edit)


_DS_KEYWORDS = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                "RescaleSlope", "RescaleIntercept", "GantryDetectorTilt", "KVP", "WindowCenter", "WindowWidth",
                "SliceLocation", "ReconstructionDiameter"]
_NAN_TOKENS = [b"nan", b"NaN", b"inf", b"-inf", b"Infinity", b"1e400", b"-1e400", b"+nan"]


@mutation("nan_inf", "header")
def _nan_inf(src: Sources, rng: random.Random) -> Study:
    keyword = rng.choice(_DS_KEYWORDS)
    multiplicity = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}.get(keyword, 1)

    def edit(ds: Dataset, r: random.Random) -> None:
        values = [str(v).encode() for v in (ds.get(keyword) if multiplicity > 1 and keyword in ds else [1] * multiplicity)]
        values = (values + [b"1"] * multiplicity)[:multiplicity]
        values[r.randrange(multiplicity)] = r.choice(_NAN_TOKENS)
        _set_raw(ds, keyword, "DS", b"\\".join(values))

    return _header_mutate(src, rng, edit)


@mutation("wrong_vr", "header")
def _wrong_vr(src: Sources, rng: random.Random) -> Study:
    cases = [
        ("Rows", "DS", b"512 "), ("Rows", "UL", struct.pack("<I", 512)), ("Columns", "SS", struct.pack("<h", -512)),
        ("PixelSpacing", "US", struct.pack("<HH", 1, 1)), ("PixelSpacing", "FD", struct.pack("<dd", 0.5, 0.5)),
        ("ImagePositionPatient", "FD", struct.pack("<ddd", 0, 0, 0)), ("ImagePositionPatient", "UN", b"\x00" * 7),
        ("ImageOrientationPatient", "FL", struct.pack("<6f", 1, 0, 0, 0, 1, 0)),
        ("SliceThickness", "UL", struct.pack("<I", 5)), ("RescaleSlope", "OB", b"\x00\x01"),
        ("RescaleIntercept", "SQ", b""), ("BitsAllocated", "CS", b"16"), ("PixelRepresentation", "DS", b"1 "),
        ("NumberOfFrames", "US", struct.pack("<H", 2)), ("PixelData", "OB", b"\x00" * 16),
        ("PixelData", "US", b"\x00\x00"), ("SOPInstanceUID", "US", b"\x01\x00"), ("PatientAge", "US", b"\x01\x00"),
        ("FrameOfReferenceUID", "SQ", b""), ("ImageType", "SQ", b""), ("PixelPaddingValue", "DS", b"-2000"),
        ("PixelPaddingValue", "OB", b"\x00\x80\x00\x80"),
    ]
    picked = rng.sample(cases, rng.randint(1, 2))

    def edit(ds: Dataset, _rng: random.Random) -> None:
        for keyword, vr, value in picked:
            _set_raw(ds, keyword, vr, value)

    return _header_mutate(src, rng, edit)


def _transcode(ds: Dataset, syntax: str) -> Dataset:
    from pydicom import uid

    if syntax in ("rle", "jpegls", "j2k"):
        target = {"rle": uid.RLELossless, "jpegls": uid.JPEGLSLossless, "j2k": uid.JPEG2000Lossless}[syntax]
        ds.compress(target)
        return ds
    target = {"implicit": uid.ImplicitVRLittleEndian, "big": uid.ExplicitVRBigEndian,
              "deflated": uid.DeflatedExplicitVRLittleEndian, "explicit": uid.ExplicitVRLittleEndian}[syntax]
    if syntax == "big":
        arr = ds.pixel_array
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
        ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = target
    return ds


@mutation("mixed_transfer_syntax", "series")
def _mixed_ts(src: Sources, rng: random.Random) -> Study:
    study = _ge_study(src)
    for f in _pick(src, rng, 4):
        syntax = rng.choice(["implicit", "big", "deflated", "rle", "jpegls", "j2k"])
        study[f.name] = _encode(_transcode(f.dataset(), syntax))
    return study


@mutation("wg04_stack", "series")
def _wg04_stack(src: Sources, rng: random.Random) -> Study:
    """The one WG04 slice in each of its 7 encodings, stacked into one 24-slice series
    (mixed transfer syntaxes, lossy members), optionally damaged."""
    if not src.wg04:
        return _mixed_ts(src, rng)
    series_uid = pydicom.uid.generate_uid(entropy_srcs=[str(rng.random())])
    study: Study = {}
    n = rng.choice([24, 24, 30, 3])
    damage = rng.random() < 0.5
    for i in range(n):
        f = src.wg04[i % len(src.wg04)]
        ds = f.dataset()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[series_uid, str(i)])
        ds.ImagePositionPatient = [-120.0, -120.0, 5.0 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber = i + 1
        if "ContrastBolusAgent" in ds and rng.random() < 0.7:
            del ds["ContrastBolusAgent"]
        data = _encode(ds)
        if damage and rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        study[f"w{i:02d}.dcm"] = data
    return study


@mutation("wg04_single", "byte")
def _wg04_single(src: Sources, rng: random.Random) -> Study:
    if not src.wg04:
        return _truncate(src, rng)
    f = rng.choice(src.wg04)
    data = bytearray(f.data)
    for _ in range(rng.randint(0, 30)):
        data[rng.randrange(132, len(data))] = rng.randrange(256)
    if rng.random() < 0.5:
        data = data[: rng.randrange(len(data))]
    return {f.name: bytes(data)}


@mutation("ct0012_multiframe", "header")
def _ct0012(src: Sources, rng: random.Random) -> Study:
    if not src.ct0012:
        return _missing_type1(src, rng)
    f = rng.choice(src.ct0012)
    kind = rng.choice(["frames", "no_per_frame", "no_shared", "truncate", "bytes", "per_frame_short", "positions",
                       "flip_length"])
    if kind in ("truncate", "bytes", "flip_length"):
        data = bytearray(f.data)
        if kind == "truncate":
            data = data[: rng.randrange(len(data))]
        elif kind == "flip_length":
            elements = _elements(bytes(data))
            if elements:
                _offset, _tag, at, size = rng.choice(elements)
                struct.pack_into("<I" if size == 4 else "<H", data, at,
                                 rng.randrange(0xFFFFFFFF if size == 4 else 0xFFFF))
        else:
            for _ in range(rng.randint(1, 200)):
                data[rng.randrange(132, len(data))] = rng.randrange(256)
        return {f.name: bytes(data)}
    ds = f.dataset()
    if kind == "frames":
        _set_raw(ds, "NumberOfFrames", "IS", rng.choice([b"0", b"1", b"3", b"-2", b"1000000", b"x"]))
    elif kind == "no_per_frame" and "PerFrameFunctionalGroupsSequence" in ds:
        del ds["PerFrameFunctionalGroupsSequence"]
    elif kind == "no_shared" and "SharedFunctionalGroupsSequence" in ds:
        del ds["SharedFunctionalGroupsSequence"]
    elif kind == "per_frame_short" and "PerFrameFunctionalGroupsSequence" in ds:
        del ds.PerFrameFunctionalGroupsSequence[-1]
    elif kind == "positions" and "PerFrameFunctionalGroupsSequence" in ds:
        for item in ds.PerFrameFunctionalGroupsSequence:
            if "PlanePositionSequence" in item:
                _set_raw(item.PlanePositionSequence[0], "ImagePositionPatient", "DS", b"nan\\0\\0")
    return {f.name: _encode(ds)}


@mutation("duplicate_slices", "series")
def _duplicate_slices(src: Sources, rng: random.Random) -> Study:
    study = _ge_study(src)
    kind = rng.choice(["exact", "new_uid", "other_pixels", "same_uid_other_pixels"])
    for i, f in enumerate(_pick(src, rng, 5)):
        if kind == "exact":
            study[f"dup{i}_{f.name}"] = f.path
            continue
        ds = f.dataset()
        if kind in ("new_uid", "other_pixels"):
            ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[f.name, kind, str(i)])
        if kind in ("other_pixels", "same_uid_other_pixels"):
            arr = ds.pixel_array.copy()
            arr[::7] = arr.max()
            ds.PixelData = arr.tobytes()
        study[f"dup{i}_{f.name}"] = _encode(ds)
    return study


@mutation("remove_slices", "series")
def _remove_slices(src: Sources, rng: random.Random) -> Study:
    study = _ge_study(src)
    names = [f.name for f in src.ge]
    kind = rng.choice(["random", "block", "all_but"])
    if kind == "random":
        drop = rng.sample(names, rng.randint(1, len(names) - 1))
    elif kind == "block":
        start = rng.randrange(len(names) - 1)
        drop = names[start : start + rng.randint(1, 10)]
    else:
        keep = set(rng.sample(names, rng.randint(1, 3)))
        drop = [n for n in names if n not in keep]
    for name in drop:
        study.pop(name, None)
    return study


@mutation("shuffle_geometry", "series")
def _shuffle_geometry(src: Sources, rng: random.Random) -> Study:
    """Swap positions between slices, or move one slice far away or onto another."""
    study = _ge_study(src)
    a, b = rng.sample(src.ge, 2)
    ds_a, ds_b = a.dataset(), b.dataset()
    kind = rng.choice(["swap", "far", "onto", "orientation"])
    if kind == "swap":
        ds_a.ImagePositionPatient, ds_b.ImagePositionPatient = ds_b.ImagePositionPatient, ds_a.ImagePositionPatient
    elif kind == "far":
        pos = [float(v) for v in ds_a.ImagePositionPatient]
        ds_a.ImagePositionPatient = [pos[0], pos[1], pos[2] + rng.choice([200.0, -500.0, 1e6])]
    elif kind == "onto":
        ds_a.ImagePositionPatient = ds_b.ImagePositionPatient
    else:
        ds_a.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    study[a.name], study[b.name] = _encode(ds_a), _encode(ds_b)
    return study


@mutation("combined", "combined")
def _combined(src: Sources, rng: random.Random) -> Study:
    """Two or three mutations on the same study (later ones see earlier bytes)."""
    names = [n for n, (level, _) in MUTATIONS.items() if level in ("byte", "header") and not n.startswith(("wg04", "ct0012"))]
    study = _ge_study(src)
    by_name = {f.name: f for f in src.ge}
    for name in rng.sample(names, rng.randint(2, 3)):
        result = MUTATIONS[name][1](src, rng)
        for key, value in result.items():
            if isinstance(value, bytes):
                study[key] = value
        for key in [k for k in study if k not in result and k in by_name]:
            study.pop(key)
    return study


# ---------------------------------------------------------------------------
# building and running
# ---------------------------------------------------------------------------
_WEIGHTS = {"truncate": 12, "flip_length": 10, "vr_code": 8, "random_bytes_header": 8, "random_bytes_pixels": 4,
            "random_files": 5, "group2_garbage": 4, "missing_type1": 12, "absurd_value": 12, "nan_inf": 8,
            "wrong_vr": 6, "mixed_transfer_syntax": 5, "wg04_stack": 4, "wg04_single": 2, "ct0012_multiframe": 5,
            "duplicate_slices": 5, "remove_slices": 5, "shuffle_geometry": 4, "combined": 8}


def study_rng(seed: int, index: int) -> random.Random:
    """The random generator of study ``index`` (a study can be rebuilt alone)."""
    return random.Random(seed * 1_000_003 + index)


def make_study(src: Sources, seed: int, index: int, out: Path) -> tuple[str, Path]:
    """Build mutated study ``index`` under ``out``; returns (mutation name, folder)."""
    rng = study_rng(seed, index)
    names = sorted(MUTATIONS)
    name = rng.choices(names, weights=[_WEIGHTS.get(n, 1) for n in names])[0]
    with _lenient():
        files = MUTATIONS[name][1](src, rng)
    folder = out / f"{index:04d}-{name}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for file_name, value in files.items():
        target = folder / file_name
        if isinstance(value, Path):
            target.symlink_to(value.resolve())
        else:
            target.write_bytes(value)
    return name, folder


@dataclass
class Outcome:
    """How one study ended."""

    index: int
    mutation: str
    path: str
    path_kind: str  # "in_process" or "cli"
    exit_code: int | None  # None: timed out (a hang)
    message: str = ""
    seconds: float = 0.0
    qc_flags: tuple[str, ...] = ()
    problem: str = ""  # empty when the study ended as promised


def _child(path: str, conn: Any) -> None:
    """In a forked child: ingest one study and send back (exit code, message, flags)."""
    logging.disable(logging.CRITICAL)
    try:
        import warnings

        warnings.simplefilter("ignore")
        from ictus.imaging.errors import IctusError
        from ictus.pipelines.triage import load_volume

        try:
            volume, _choice = load_volume(path)
            conn.send((0, "", tuple(volume.qc_flags)))
        except IctusError as exc:
            conn.send((exc.exit_code, str(exc), ()))
        except BaseException as exc:  # noqa: BLE001 - a bug: reported with its traceback
            conn.send((1, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", ()))
    finally:
        conn.close()
        os._exit(0)


def run_in_process(index: int, mutation_name: str, folder: Path, timeout_s: float) -> Outcome:
    """Ingest ``folder`` with :func:`ictus.pipelines.triage.load_volume` in a forked child, with a time limit."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    t0 = time.perf_counter()
    proc = ctx.Process(target=_child, args=(str(folder), child), daemon=True)
    proc.start()
    child.close()
    outcome = Outcome(index, mutation_name, str(folder), "in_process", None)
    if parent.poll(timeout_s):
        try:
            code, message, flags = parent.recv()
            outcome.exit_code, outcome.message, outcome.qc_flags = code, message, tuple(flags)
        except EOFError:
            outcome.exit_code, outcome.message = 1, "the child died without an answer (crash)"
    proc.join(timeout=max(0.1, timeout_s - (time.perf_counter() - t0)))
    if proc.is_alive():
        proc.kill()
        proc.join()
    parent.close()
    outcome.seconds = time.perf_counter() - t0
    if outcome.exit_code is None:
        outcome.problem = f"hang: no result after {timeout_s:.0f} s"
    elif outcome.exit_code not in ALLOWED_EXIT_CODES:
        outcome.problem = f"exit {outcome.exit_code}: {outcome.message}"
    elif outcome.exit_code in (3, 4) and (not outcome.message.strip() or "\n" in outcome.message.strip()):
        outcome.problem = f"exit {outcome.exit_code} without exactly one line of message: {outcome.message!r}"
    return outcome


def run_cli(index: int, mutation_name: str, folder: Path, out_dir: Path, timeout_s: float) -> Outcome:
    """Run the real ``ictus volume`` on ``folder`` and check exit code, stderr and the output file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "vol.nii.gz"
    cmd = [sys.executable, "-m", "ictus.pipelines.cli", "volume", str(folder), "-o", str(target)]
    t0 = time.perf_counter()
    outcome = Outcome(index, mutation_name, str(folder), "cli", None)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        outcome.seconds = time.perf_counter() - t0
        outcome.problem = f"hang: ictus volume did not finish in {timeout_s:.0f} s"
        return outcome
    outcome.seconds = time.perf_counter() - t0
    outcome.exit_code = proc.returncode
    stderr_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    outcome.message = proc.stderr.strip()
    leftovers = sorted(p.name for p in out_dir.iterdir() if p.name != target.name)
    problems = []
    if proc.returncode not in ALLOWED_EXIT_CODES:
        problems.append(f"exit {proc.returncode}")
    if "Traceback" in proc.stderr:
        problems.append("traceback on stderr")
    if proc.returncode in (3, 4) and (len(stderr_lines) != 1 or not stderr_lines[0].startswith("ictus: error: ")):
        problems.append(f"{len(stderr_lines)} stderr lines instead of one 'ictus: error:' line")
    if leftovers:
        problems.append(f"left behind in the output folder: {leftovers}")
    if proc.returncode == 0:
        try:
            import SimpleITK as sitk

            image = sitk.ReadImage(str(target))
            if image.GetNumberOfPixels() == 0:
                problems.append("empty output image")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"output unreadable ({type(exc).__name__})")
    elif target.exists():
        problems.append(f"exit {proc.returncode} but {target.name} was written")
    outcome.problem = "; ".join(problems) + (f": {outcome.message}" if problems else "")
    return outcome


@dataclass
class FuzzReport:
    """All outcomes of one run and their counts."""

    seed: int
    outcomes: list[Outcome]

    def counts(self, path_kind: str | None = None) -> Counter[str]:
        """Outcome counts ("exit 0", "exit 3", "exit 4", "exit 1", "hang") for one path or both."""
        return Counter("hang" if o.exit_code is None else f"exit {o.exit_code}"
                       for o in self.outcomes if path_kind in (None, o.path_kind))

    def by_mutation(self) -> dict[str, Counter[str]]:
        """In-process outcome counts per mutation."""
        table: dict[str, Counter[str]] = {}
        for o in self.outcomes:
            if o.path_kind == "in_process":
                table.setdefault(o.mutation, Counter())["hang" if o.exit_code is None else f"exit {o.exit_code}"] += 1
        return table

    @property
    def failures(self) -> list[Outcome]:
        """Studies that broke a promise."""
        return [o for o in self.outcomes if o.problem]

    def flag_counts(self) -> Counter[str]:
        """QC flags raised over the in-process exit-0 studies."""
        return Counter(flag for o in self.outcomes if o.path_kind == "in_process" for flag in o.qc_flags)

    def to_text(self) -> str:
        """A readable summary."""
        lines = [f"seed {self.seed}: {sum(1 for o in self.outcomes if o.path_kind == 'in_process')} studies in-process, "
                 f"{sum(1 for o in self.outcomes if o.path_kind == 'cli')} through 'ictus volume'"]
        for kind in ("in_process", "cli"):
            counts = self.counts(kind)
            if counts:
                lines.append(f"  {kind}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        lines.append("  per mutation (in-process):")
        for name, counts in sorted(self.by_mutation().items()):
            lines.append(f"    {name:24s} " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        flags = self.flag_counts()
        if flags:
            lines.append("  QC flags on exit-0 studies: " + ", ".join(f"{k}: {v}" for k, v in sorted(flags.items())))
        slowest = max((o.seconds for o in self.outcomes), default=0.0)
        lines.append(f"  slowest study: {slowest:.2f} s")
        for o in self.failures:
            lines.append(f"  FAIL #{o.index} {o.mutation} ({o.path_kind}): {o.problem.splitlines()[0][:300]}")
        return "\n".join(lines)


def fuzz(seed: int, count: int, out: Path, *, timeout_s: float = 20.0, cli_count: int = 30,
         sources: Sources | None = None, keep: bool = False, indices: Iterable[int] | None = None) -> FuzzReport:
    """Build and ingest ``count`` mutated studies; ``cli_count`` of them (evenly spread) also
    go through the real ``ictus volume``. Studies that ended as promised are deleted unless ``keep``."""
    src = sources or Sources.load()
    out.mkdir(parents=True, exist_ok=True)
    import ictus.pipelines.triage  # noqa: F401 - imported once here, so each forked child starts warm
    wanted = list(indices) if indices is not None else list(range(count))
    step = max(1, len(wanted) // cli_count) if cli_count > 0 else 0
    cli_indices = set(wanted[::step][:cli_count]) if step else set()
    outcomes: list[Outcome] = []
    for index in wanted:
        name, folder = make_study(src, seed, index, out)
        outcome = run_in_process(index, name, folder, timeout_s)
        outcomes.append(outcome)
        ok = not outcome.problem
        if index in cli_indices:
            cli_outcome = run_cli(index, name, folder, out / f"{index:04d}-out", timeout_s + 30)
            outcomes.append(cli_outcome)
            ok = ok and not cli_outcome.problem
            if ok and not keep:
                shutil.rmtree(out / f"{index:04d}-out", ignore_errors=True)
        if ok and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return FuzzReport(seed, outcomes)


def main(argv: list[str] | None = None) -> int:
    """Command line: build, ingest, print the counts; exit 1 when a study broke a promise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--out", type=Path, required=True, help="work folder (failing studies are kept there)")
    parser.add_argument("--timeout-s", type=float, default=20.0, help="time limit per study")
    parser.add_argument("--cli-count", type=int, default=30, help="studies also run through 'ictus volume'")
    parser.add_argument("--keep", action="store_true", help="keep every study, not only the failing ones")
    parser.add_argument("--only", type=str, default="", help="comma-separated study indices to rebuild and run")
    parser.add_argument("--json", type=Path, default=None, help="also write every outcome as JSON here")
    args = parser.parse_args(argv)
    indices = [int(i) for i in args.only.split(",") if i.strip()] or None
    try:
        report = fuzz(args.seed, args.count, args.out, timeout_s=args.timeout_s, cli_count=args.cli_count,
                      keep=args.keep, indices=indices)
    except FileNotFoundError as exc:
        print(f"fuzz_ingest: {exc}", file=sys.stderr)
        return 2
    print(report.to_text())
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in report.outcomes], indent=1))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
