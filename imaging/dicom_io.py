"""DICOM input: find the instances of a study and read their headers.

:func:`scan` turns a folder (searched recursively), a DICOMDIR (or a folder
holding one) or a single file into a :class:`ScanResult`: one
:class:`InstanceHeader` per readable DICOM instance, plus counts of what was
skipped. Only headers are read here (``stop_before_pixels``), in parallel;
pixels are read later, and only for the chosen series. With ``keep_headers``
the parsed headers are kept (:attr:`ScanResult.headers`, with where each file's
pixel data lies), so the volume builder reads only the pixel bytes of the chosen
series instead of parsing every file a second time. :func:`read_frame_hu`
reads the pixels of one frame when a caller needs a cheap sample.

Patient names and IDs are never copied into these objects. Header text that
may end up in a file name goes through :func:`safe_path_component` first.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ictus.imaging.errors import InvalidInputError
from ictus.imaging.dicom_values import (
    float_value,
    float_values,
    functional_item,
    int_value,
    parse_age_years,
    sequence_item,
    text_value,
)

log = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY_UID = "1.2.840.10008.1.3.10"
DEFLATED_TRANSFER_SYNTAX_UIDS = frozenset({"1.2.840.10008.1.2.1.99"})
BIG_ENDIAN_TRANSFER_SYNTAX_UID = "1.2.840.10008.1.2.2"
IMPLICIT_TRANSFER_SYNTAX_UID = "1.2.840.10008.1.2"
_NATIVE_LITTLE_ENDIAN_UIDS = frozenset({IMPLICIT_TRANSFER_SYNTAX_UID, "1.2.840.10008.1.2.1"})
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_EXPLICIT_LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UT", b"UC", b"UR", b"SV", b"UV"})
_MAX_WORKERS = 8
#: Scan flag: some files were truncated or corrupt and were left out (slices may be missing).
FLAG_UNREADABLE_SKIPPED = "unreadable_files_skipped"


@dataclass(frozen=True)
class InstanceHeader:
    """The non-identifying header attributes of one DICOM instance.

    Geometry is in the DICOM patient frame (LPS, mm). For a multi-frame object
    ``frame_positions`` holds one position per frame (1-based frame ``i`` is
    ``frame_positions[i - 1]``); for a single-frame object it holds the one
    ``ImagePositionPatient``. No patient name or ID is kept.
    """

    path: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    modality: str = ""
    image_type: tuple[str, ...] = ()
    series_description: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    acquisition_number: int | None = None
    manufacturer: str = ""
    body_part: str = ""
    transfer_syntax_uid: str = ""
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int = 1
    is_multiframe: bool = False
    orientation: tuple[float, float, float, float, float, float] | None = None
    position: tuple[float, float, float] | None = None
    frame_positions: tuple[tuple[float, float, float], ...] = ()
    pixel_spacing_mm: tuple[float, float] | None = None
    slice_thickness_mm: float | None = None
    gantry_tilt_deg: float | None = None
    kernel: str = ""
    contrast_agent: str = ""
    contrast_administered: bool | None = None
    kvp: float | None = None
    patient_age_years: float | None = None
    lossy_compression: bool = False
    has_pixel_data: bool = False

    @property
    def n_frames(self) -> int:
        """Frames this instance contributes (1 for a classic single-frame image)."""
        return max(1, self.number_of_frames)


@dataclass(frozen=True)
class KeptHeader:
    """A header read by :func:`scan` (``keep_headers=True``) and where the file's pixel data lies.

    ``dataset`` was read with ``stop_before_pixels`` and must not be modified. The
    pixel value (uncompressed little-endian files only; else ``pixel_offset`` is -1)
    starts ``pixel_offset`` bytes into the file and is ``pixel_length`` bytes long.
    ``stat`` (size, mtime_ns, inode) tells whether the file changed since.
    """

    dataset: Dataset
    pixel_offset: int = -1
    pixel_length: int = 0
    stat: tuple[int, int, int] = (0, 0, 0)

    def is_current(self, path: str) -> bool:
        """Whether ``path`` is still the file this header was read from (same size, time and inode)."""
        try:
            return self.pixel_offset >= 0 and _stat_key(os.stat(path)) == self.stat
        except OSError:
            return False

    def pixel_bytes(self, path: str, out: bytearray | None = None) -> bytes | bytearray | None:
        """The raw pixel value of ``path`` (read into ``out`` when it has the right length), or None
        when the file changed or its pixels are not at a known place."""
        if self.pixel_offset < 0:
            return None
        try:
            with open(path, "rb") as fp:
                if _stat_key(os.fstat(fp.fileno())) != self.stat:
                    return None
                fp.seek(self.pixel_offset)
                if out is not None and len(out) == self.pixel_length:
                    return out if fp.readinto(out) == self.pixel_length else None
                data = fp.read(self.pixel_length)
        except OSError:
            return None
        return data if len(data) == self.pixel_length else None


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return (int(st.st_size), int(st.st_mtime_ns), int(st.st_ino))


@dataclass(frozen=True)
class ScanResult:
    """What :func:`scan` found under one input path."""

    root: str
    source: str  # "folder", "dicomdir" or "file"
    instances: tuple[InstanceHeader, ...]
    n_files: int
    skipped_non_dicom: int = 0
    unreadable: int = 0
    index_files: int = 0  # DICOMDIR files met while walking a folder
    flags: tuple[str, ...] = ()
    unreadable_paths: tuple[str, ...] = field(default=(), repr=False)
    #: path -> its parsed header, only with ``scan(..., keep_headers=True)``
    headers: dict[str, KeptHeader] = field(default_factory=dict, repr=False, compare=False)

    def summary(self) -> str:
        """One line: what was found (counts only, no header text)."""
        return (
            f"{self.n_files} files: {len(self.instances)} DICOM, "
            f"{self.skipped_non_dicom} non-DICOM, {self.unreadable} unreadable"
        )


# ---------------------------------------------------------------------------
# file names from header text

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(10)} | {f"LPT{i}" for i in range(10)}
)


def safe_path_component(text: object, *, max_length: int = 64, default: str = "unnamed") -> str:
    """Turn header text (a UID, a description...) into one safe file-name component.

    Keeps ASCII letters, digits, ``.``, ``_`` and ``-``; every other run of
    characters (path separators, control characters, spaces, non-ASCII)
    becomes one ``_``. Leading dots and dashes are dropped, so the result is never
    ``.``, ``..``, hidden or an option. Longer results are cut to
    ``max_length`` with a short hash of the full text appended, so distinct
    long inputs stay distinct. Returns ``default`` when nothing is left.
    """
    if max_length < 12:
        raise ValueError("max_length must be at least 12")
    raw = "" if text is None else str(text)
    ascii_text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE_CHARS.sub("_", ascii_text).lstrip(".-_").rstrip("._ ")
    if not cleaned:
        return default
    if cleaned.split(".")[0].upper() in _WINDOWS_RESERVED:
        cleaned = "_" + cleaned
    if len(cleaned) > max_length:
        digest = hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = cleaned[: max_length - 9].rstrip("._") + "_" + digest
    return cleaned


# ---------------------------------------------------------------------------
# header parsing (the tolerant value readers are in ictus.imaging.dicom_values)


def header_from_dataset(ds: Dataset, path: str, *, has_pixel_data: bool) -> InstanceHeader:
    """Build an :class:`InstanceHeader` from a dataset read without pixels."""
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = text_value(meta, "TransferSyntaxUID") if meta is not None else ""
    n_frames = int_value(ds, "NumberOfFrames") or 1
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") if "PerFrameFunctionalGroupsSequence" in ds else None
    enhanced = per_frame is not None or "SharedFunctionalGroupsSequence" in ds

    orientation = float_values(ds, "ImageOrientationPatient", 6)
    position = float_values(ds, "ImagePositionPatient", 3)
    spacing = float_values(ds, "PixelSpacing", 2)
    thickness = float_value(ds, "SliceThickness")
    kernel = text_value(ds, "ConvolutionKernel")
    contrast_agent = text_value(ds, "ContrastBolusAgent")
    contrast_administered: bool | None = None
    frame_positions: tuple[tuple[float, float, float], ...] = ()

    if enhanced:
        first = per_frame[0] if per_frame else None
        orientation = orientation or float_values(functional_item(ds, first, "PlaneOrientationSequence"), "ImageOrientationPatient", 6)
        measures = functional_item(ds, first, "PixelMeasuresSequence")
        spacing = spacing or float_values(measures, "PixelSpacing", 2)
        thickness = thickness if thickness is not None else float_value(measures, "SliceThickness")
        kernel = kernel or text_value(functional_item(ds, first, "CTReconstructionSequence") or Dataset(), "ConvolutionKernel")
        usage = functional_item(ds, first, "ContrastBolusUsageSequence")
        if usage is not None:
            administered = text_value(usage, "ContrastBolusAgentAdministered").upper()
            contrast_administered = administered == "YES" if administered else None
        agent_item = sequence_item(ds, "ContrastBolusAgentSequence")
        if agent_item is not None and not contrast_agent:
            contrast_agent = text_value(agent_item, "CodeMeaning") or "CODED AGENT"
        positions: list[tuple[float, ...]] = []
        for group in per_frame or ():
            pos = float_values(sequence_item(group, "PlanePositionSequence"), "ImagePositionPatient", 3)
            if pos is None:
                positions = []
                break
            positions.append(pos)
        if not positions:
            shared_pos = float_values(functional_item(ds, None, "PlanePositionSequence"), "ImagePositionPatient", 3)
            if shared_pos is not None and n_frames == 1:
                positions = [shared_pos]
        frame_positions = tuple(positions)  # type: ignore[arg-type]
        position = position or (frame_positions[0] if frame_positions else None)
    elif position is not None:
        frame_positions = (position,)  # type: ignore[assignment]

    return InstanceHeader(
        path=path,
        sop_class_uid=text_value(ds, "SOPClassUID") or (text_value(meta, "MediaStorageSOPClassUID") if meta is not None else ""),
        sop_instance_uid=text_value(ds, "SOPInstanceUID"),
        study_instance_uid=text_value(ds, "StudyInstanceUID"),
        series_instance_uid=text_value(ds, "SeriesInstanceUID"),
        frame_of_reference_uid=text_value(ds, "FrameOfReferenceUID"),
        modality=text_value(ds, "Modality").upper(),
        image_type=tuple(v.strip().upper() for v in text_value(ds, "ImageType").split("\\") if v.strip()),
        series_description=text_value(ds, "SeriesDescription"),
        series_number=int_value(ds, "SeriesNumber"),
        instance_number=int_value(ds, "InstanceNumber"),
        acquisition_number=int_value(ds, "AcquisitionNumber"),
        manufacturer=text_value(ds, "Manufacturer"),
        body_part=text_value(ds, "BodyPartExamined").upper(),
        transfer_syntax_uid=transfer_syntax,
        rows=int_value(ds, "Rows"),
        columns=int_value(ds, "Columns"),
        number_of_frames=n_frames,
        is_multiframe=enhanced or n_frames > 1,
        orientation=orientation,  # type: ignore[arg-type]
        position=position,  # type: ignore[arg-type]
        frame_positions=frame_positions,
        pixel_spacing_mm=spacing,  # type: ignore[arg-type]
        slice_thickness_mm=thickness,
        gantry_tilt_deg=float_value(ds, "GantryDetectorTilt"),
        kernel=kernel,
        contrast_agent=contrast_agent,
        contrast_administered=contrast_administered,
        kvp=float_value(ds, "KVP"),
        patient_age_years=parse_age_years(text_value(ds, "PatientAge")),
        lossy_compression=text_value(ds, "LossyImageCompression") == "01",
        has_pixel_data=has_pixel_data,
    )


# ---------------------------------------------------------------------------
# reading one file

_NON_DICOM, _UNREADABLE, _INDEX = "non_dicom", "unreadable", "index"


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A file without the DICM prefix that starts with a plausible group 0002/0008 tag."""
    if len(head) < 8:
        return False
    group, elem = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or elem > 0x0100:
        return False
    vr = head[4:6]
    return (b"AA" <= vr <= b"ZZ") or struct.unpack("<I", head[4:8])[0] < 0x10000


def _pixel_data_place(fp: Any, file_size: int, transfer_syntax: str, implicit: bool) -> tuple[bool, bool, int, int]:
    """After a ``stop_before_pixels`` read: (has pixel data, truncated, value offset, value length);
    the offset is -1 unless the value is (7FE0,0010) PixelData of defined length, complete."""
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return False, False, -1, 0
    little = transfer_syntax != BIG_ENDIAN_TRANSFER_SYNTAX_UID
    group, elem = struct.unpack("<HH" if little else ">HH", head[:4])
    tag = group << 16 | elem
    if tag not in PIXEL_DATA_TAGS:
        return False, False, -1, 0
    if implicit:
        (length,), value_start = struct.unpack("<I", head[4:8]), start + 8
    elif head[4:6] in _EXPLICIT_LONG_VRS:
        if len(head) < 12:
            return True, True, -1, 0
        (length,), value_start = struct.unpack("<I" if little else ">I", head[8:12]), start + 12
    else:
        (length,), value_start = struct.unpack("<H" if little else ">H", head[6:8]), start + 8
    if length != 0xFFFFFFFF:
        truncated = value_start + length > file_size
        known = tag == 0x7FE00010 and not truncated
        return True, truncated, (value_start if known else -1), (length if known else 0)
    # Encapsulated: the file must end with (or near) the sequence delimiter.
    tail_size = min(file_size - value_start, 1 << 16)
    fp.seek(file_size - tail_size)
    tail = fp.read(tail_size)
    return True, _SEQUENCE_DELIMITER not in tail, -1, 0


def _last_value_short(ds: Dataset) -> bool:
    """True when the file ended inside the value of the last element read
    (pydicom keeps the short value without complaint)."""
    try:
        raw = ds._dict[max(ds._dict)] if ds._dict else None
    except Exception:  # noqa: BLE001
        return False
    value, length = getattr(raw, "value", None), getattr(raw, "length", None)
    if isinstance(value, bytes) and isinstance(length, int) and length != 0xFFFFFFFF:
        return len(value) < length
    return False


_PIXEL_MODULE = ("SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
                 "BitsStored", "HighBit", "PixelRepresentation")


def _pixel_module_partial(ds: Dataset) -> bool:
    """Some but not all Image Pixel attributes: the file was cut inside them."""
    present = [k in ds for k in _PIXEL_MODULE]
    return any(present) and not all(present)


#: Callables given every header this module reads (the pipeline's PHI guard); see add_header_observer.
_HEADER_OBSERVERS: list[Callable[[Dataset], None]] = []


def add_header_observer(observer: Callable[[Dataset], None]) -> None:
    """Call ``observer(ds)`` with every header read by :func:`scan` (any thread; it must be quick
    and must not raise). The pipeline layer uses it to learn the patient-identifying values of the
    study in hand (:mod:`ictus.pipelines.phi`), so that imaging never logs or keeps them itself."""
    if observer not in _HEADER_OBSERVERS:
        _HEADER_OBSERVERS.append(observer)


def remove_header_observer(observer: Callable[[Dataset], None]) -> None:
    """Undo :func:`add_header_observer`."""
    if observer in _HEADER_OBSERVERS:
        _HEADER_OBSERVERS.remove(observer)


def notify_header(ds: Dataset) -> None:
    """Hand ``ds`` to every header observer (also called by the volume builder)."""
    for observer in tuple(_HEADER_OBSERVERS):
        try:
            observer(ds)
        except Exception:  # noqa: BLE001 - an observer never stops the reader
            log.debug("header observer failed", exc_info=False)


def read_header(path: str) -> tuple[str, InstanceHeader | None]:
    """Read one file's header. Returns (kind, header): kind is "dicom",
    "non_dicom", "unreadable" or "index" (a DICOMDIR); never raises for bad files."""
    kind, header, _ = _read_header(path, keep=False)
    return kind, header


def _read_header(path: str, keep: bool) -> tuple[str, InstanceHeader | None, KeptHeader | None]:
    """:func:`read_header`, plus the parsed header and its pixel data's place when ``keep``."""
    try:
        with open(path, "rb") as fp:
            st = os.fstat(fp.fileno())
            file_size = st.st_size
            head = fp.read(132)
            if head[128:132] == b"DICM":
                force = False
            elif _looks_like_raw_dataset(head):
                force = True
            else:
                return _NON_DICOM, None, None
            fp.seek(0)
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
            notify_header(ds)
            meta = getattr(ds, "file_meta", None)
            transfer_syntax = text_value(meta, "TransferSyntaxUID") if meta is not None else ""
            media_class = text_value(meta, "MediaStorageSOPClassUID") if meta is not None else ""
            if "DirectoryRecordSequence" in ds or media_class == MEDIA_STORAGE_DIRECTORY_UID:
                # A DICOMDIR is an index, not an instance; a vendor index under
                # another name (Philips DIRFILE) counts as non-DICOM.
                return (_INDEX if _is_dicomdir_name(Path(path)) else _NON_DICOM), None, None
            if "SOPClassUID" not in ds and "SOPInstanceUID" not in ds:
                # A DICM prefix but no object: cut short, or some vendor file.
                cut = len(ds) == 0 or _last_value_short(ds) or (meta is not None and _last_value_short(meta))
                return (_UNREADABLE if cut else _NON_DICOM), None, None
            offset, length = -1, 0
            if transfer_syntax in DEFLATED_TRANSFER_SYNTAX_UIDS:
                has_pixels, truncated = True, False
            else:
                implicit = (transfer_syntax == IMPLICIT_TRANSFER_SYNTAX_UID) or (
                    not transfer_syntax and force and not (b"AA" <= head[4:6] <= b"ZZ")
                )
                has_pixels, truncated, offset, length = _pixel_data_place(fp, file_size, transfer_syntax, implicit)
            truncated = truncated or _last_value_short(ds) or (not has_pixels and _pixel_module_partial(ds))
            if truncated:
                log.debug("pixel data truncated in a file; counted as unreadable")
                return _UNREADABLE, None, None
            header = header_from_dataset(ds, path, has_pixel_data=has_pixels)
            kept = None
            if keep and not force and offset >= 0 and transfer_syntax in _NATIVE_LITTLE_ENDIAN_UIDS:
                # Only where the builder's own reader would read the same file the same way:
                # a DICM prefix, a plain little-endian transfer syntax, PixelData of known length.
                kept = KeptHeader(ds, offset, length, _stat_key(st))
            return "dicom", header, kept
    except Exception as exc:  # noqa: BLE001 - corrupt files fail in many ways (fuzzed: BytesLengthException...)
        log.debug("unreadable file (%s)", type(exc).__name__)
        return _UNREADABLE, None, None


# ---------------------------------------------------------------------------
# finding files


def _walk_files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` (recursive, no symlinked folders), sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if os.path.isfile(full):
                found.append(full)
    return found


def _dicomdir_files(dicomdir: Path) -> tuple[list[str] | None, str]:
    """The files a DICOMDIR references, or (None, flag) when the index cannot be
    trusted: ``stale_dicomdir`` if it lists a file that does not exist (or one
    outside its folder), ``invalid_dicomdir`` if it cannot be read."""
    from pydicom.fileset import FileSet

    root = dicomdir.parent.resolve()
    try:
        index = pydicom.dcmread(str(dicomdir))
        referenced = sum(1 for r in index.get("DirectoryRecordSequence", ()) if "ReferencedFileID" in r)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns, then drops, missing files
            fileset = FileSet(index)
        paths = [Path(instance.path).resolve() for instance in fileset]
    except Exception as exc:  # noqa: BLE001 - any broken index means: scan the folder
        log.warning("DICOMDIR unreadable (%s); scanning its folder instead", type(exc).__name__)
        return None, "invalid_dicomdir"
    if len(paths) < referenced:
        log.warning("DICOMDIR lists files that do not exist; scanning its folder instead")
        return None, "stale_dicomdir"
    for p in paths:
        if not p.is_file() or root not in p.parents:
            log.warning("DICOMDIR lists files that do not exist; scanning its folder instead")
            return None, "stale_dicomdir"
    return [str(p) for p in paths], ""


def _is_directory_object(path: Path) -> bool:
    """True for a file holding a Media Storage Directory (a DICOMDIR, whatever its name)."""
    if _is_dicomdir_name(path):
        return True
    try:
        with open(path, "rb") as fp:
            if fp.read(132)[128:132] != b"DICM":
                return False
        meta = pydicom.filereader.read_file_meta_info(str(path))
        return text_value(meta, "MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY_UID
    except Exception:  # noqa: BLE001
        return False


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's UserWarnings about odd-but-readable values (it also
    logs them on the ``pydicom`` logger, which the CLI controls); they would
    otherwise reach stderr once per odd value."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        yield


def _read_all(paths: Sequence[str], max_workers: int | None, keep: bool = False
              ) -> list[tuple[str, InstanceHeader | None, KeptHeader | None]]:
    workers = max_workers or min(_MAX_WORKERS, 2 * (os.cpu_count() or 1))

    def read(p: str) -> tuple[str, InstanceHeader | None, KeptHeader | None]:
        return _read_header(p, keep)

    with _quiet_pydicom():
        if len(paths) < 4 or workers <= 1:
            return [read(p) for p in paths]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ictus-scan") as pool:
            return list(pool.map(read, paths, chunksize=8))


def _is_dicomdir_name(path: Path) -> bool:
    return path.name.upper() == "DICOMDIR"


def scan(path: str | os.PathLike[str], *, max_workers: int | None = None, keep_headers: bool = False) -> ScanResult:
    """Find the DICOM instances under ``path`` and read their headers (no pixels).

    ``path`` may be a folder (searched recursively), a DICOMDIR, a folder with a
    DICOMDIR at its top, or a single file. A DICOMDIR that lists missing files
    is ignored and its folder scanned instead (flag ``stale_dicomdir``).
    Non-DICOM files are skipped and counted; truncated or corrupt ones are
    counted as unreadable. Raises :class:`InvalidInputError` when the path does
    not exist or holds no readable DICOM instance.

    With ``keep_headers`` the parsed headers stay in :attr:`ScanResult.headers`
    (about 25 kB each) for :func:`ictus.imaging.build.build_volume` (``headers=``),
    which then reads only the pixel bytes of the chosen series.
    """
    given = Path(path)
    if not given.exists():
        raise InvalidInputError(
            "input not found: no file or folder at the given path; give a study folder, a DICOMDIR or a DICOM file"
        )
    flags: list[str] = []
    dicomdir: Path | None = None
    if given.is_dir():
        candidates = [p for p in given.iterdir() if _is_dicomdir_name(p) and p.is_file()]
        dicomdir = candidates[0] if candidates else None
        folder = given
    else:
        folder = given.parent
        if _is_directory_object(given):
            dicomdir = given

    source = "folder"
    paths: list[str] | None = None
    if dicomdir is not None:
        paths, flag = _dicomdir_files(dicomdir)
        if paths is None:
            flags.append(flag)
        else:
            source = "dicomdir"
    if paths is None:
        if given.is_file() and dicomdir is None:
            paths, source = [str(given)], "file"
        else:
            paths = _walk_files(folder)

    if not paths:
        raise InvalidInputError(
            "the input folder is empty (0 files); give the folder that holds the study's DICOM files"
        )
    read = _read_all(paths, max_workers, keep_headers)
    results = [(kind, h) for kind, h, _ in read]
    kept = {p: k for p, (kind, _, k) in zip(paths, read) if kind == "dicom" and k is not None}
    instances = tuple(h for kind, h in results if kind == "dicom" and h is not None)
    non_dicom = sum(1 for kind, _ in results if kind == _NON_DICOM)
    unreadable_paths = tuple(p for p, (kind, _) in zip(paths, results) if kind == _UNREADABLE)
    index_files = sum(1 for kind, _ in results if kind == _INDEX)
    if any(not _is_dicomdir_name(Path(p)) for p in unreadable_paths):  # a broken index has its own flag
        log.info("%d unreadable (truncated or corrupt) file(s) left out", len(unreadable_paths))
        flags.append(FLAG_UNREADABLE_SKIPPED)
    result = ScanResult(
        root=str(given),
        source=source,
        instances=instances,
        n_files=len(paths),
        skipped_non_dicom=non_dicom,
        unreadable=len(unreadable_paths),
        index_files=index_files,
        flags=tuple(flags),
        unreadable_paths=unreadable_paths,
        headers=kept,
    )
    log.info("scanned %s (%s)", result.summary(), source)
    if not instances:
        raise InvalidInputError(
            f"no readable DICOM instance: {len(paths)} files, {non_dicom} non-DICOM, "
            f"{len(unreadable_paths)} unreadable; check that the path holds the study's DICOM files "
            "(truncated copies must be transferred again)"
        )
    return result


# ---------------------------------------------------------------------------
# pixels of one frame (a cheap sample; the volume builder reads whole series)


def _rescale(ds: Dataset, frame_number: int | None) -> tuple[float, float]:
    slope, intercept = float_value(ds, "RescaleSlope"), float_value(ds, "RescaleIntercept")
    if slope is None or intercept is None:
        group = None
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") if frame_number else None
        if per_frame and 0 < frame_number <= len(per_frame):  # type: ignore[operator]
            group = per_frame[frame_number - 1]  # type: ignore[operator]
        item = functional_item(ds, group, "PixelValueTransformationSequence")
        slope, intercept = float_value(item, "RescaleSlope"), float_value(item, "RescaleIntercept")
    return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def read_frame_hu(path: str, frame_number: int | None = None) -> np.ndarray:
    """Pixels of one frame (1-based ``frame_number`` for multi-frame objects)
    with the modality rescale applied, as float32. Raises InvalidInputError."""
    from pydicom.pixels import pixel_array

    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            index = (frame_number - 1) if frame_number else 0
            arr = pixel_array(path, index=index)
    except Exception as exc:  # noqa: BLE001 - decoder errors come in many types
        raise InvalidInputError(
            f"cannot decode the pixels of one image ({type(exc).__name__}); check the file is complete "
            "and its transfer syntax is supported"
        ) from exc
    slope, intercept = _rescale(ds, frame_number)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
