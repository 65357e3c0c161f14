"""Build a Hounsfield-unit :class:`~ictus.imaging.volume.Volume` from the files of one CT series.

This is the only place where pixels are read. :func:`build_volume` reads each
file once (in parallel threads), decodes every supported transfer syntax through
pydicom and the pylibjpeg plugins, converts to HU, sorts the frames along the
slice normal and turns the stack into a regular, orthogonal grid.

Decisions (each is a keyword-only tolerance of :func:`build_volume`):

* **Sorting** is by the projection of ImagePositionPatient on the slice normal
  (row x column of ImageOrientationPatient), never by InstanceNumber.
* **Duplicates**: two frames at the same position (within ``position_tolerance_mm``)
  with identical HU pixels are one slice: the later copy is dropped and the QC
  flag ``duplicate_slices_dropped`` is raised. Two frames at the same position
  with *different* pixels mean the input mixes acquisitions: that is refused
  (:class:`InvalidInputError`), since no rule can say which one is right.
* **HU**: per-frame RescaleSlope/RescaleIntercept (per-frame functional groups for
  Enhanced CT). Stored values equal to PixelPaddingValue (or inside the padding
  range) and every HU value below -1024 (the -2000/-3024 "outside the field of
  view" padding) become -1024 HU (air): nothing physical lies below air.
* **Gantry tilt**: when slice origins do not move along the slice normal (a
  sheared stack), every slice is translated in-plane (bilinear) onto one
  orthogonal grid whose axes are the row, column and true normal directions, as
  dcm2niix does; voxels outside every slice are -1024 HU. Flag
  ``gantry_tilt_corrected``.
* **Variable spacing**: when the steps between slices along the normal differ by
  more than ``spacing_tolerance_mm``, the stack is resampled by linear
  interpolation along the normal onto a uniform spacing: the *smallest common
  spacing*, i.e. the smallest step that occurs in a run of at least two equal
  consecutive steps (falling back to the median step), nudged so that a whole
  number of steps spans exactly the first to the last slice. The spacing is
  never averaged (SimpleITK's series reader does that, which stretches the
  anatomy). Flag ``variable_spacing_resampled``.
* **Gaps**: a step is a gap when it exceeds ``max_gap_factor`` times the
  expected step, the larger of the median step and the thinner neighbouring
  SliceThickness (so a block of 7 mm slices that are 7 mm thick is variable
  spacing, not a gap). A gap is interpolated over and flagged ``gap_detected``;
  a gap larger than ``refuse_gap_factor`` times the expected step *and* larger
  than ``max_gap_mm`` is refused (:class:`InvalidInputError`).
* **Size**: Rows or Columns above ``max_dimension`` or a total voxel count above
  ``max_voxels`` are refused from the headers, before anything is decoded or
  allocated.
* **Lossy input** (a lossy transfer syntax, or LossyImageCompression "01") is
  flagged ``lossy_compression``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from ictus.imaging.dicom_values import (
    float_value,
    float_values,
    functional_item,
    get_value,
    int_value,
    parse_age_years,
    text_value,
)
from ictus.imaging.errors import InvalidInputError
from ictus.imaging.volume import Acquisition, SourceSlice, Volume

if TYPE_CHECKING:
    from ictus.imaging.dicom_io import KeptHeader

log = logging.getLogger(__name__)

AIR_HU = -1024.0
DEFAULT_MAX_VOXELS = 2**29  # ~537 M voxels, 2 GiB of float32
DEFAULT_MAX_DIMENSION = 4096

FLAG_LOSSY = "lossy_compression"
FLAG_TILT = "gantry_tilt_corrected"
FLAG_VARIABLE_SPACING = "variable_spacing_resampled"
FLAG_GAP = "gap_detected"
FLAG_DUPLICATES = "duplicate_slices_dropped"
FLAG_RESCALE = "rescale_derived"
FLAG_FRAME_OF_REFERENCE = "frame_of_reference_derived"
FLAG_THICKNESS = "slice_thickness_derived"
FLAG_AGE_UNKNOWN = "patient_age_unknown"

#: Modality rescale values beyond these cannot give Hounsfield units (fuzzed headers: 0, -1, 1e30).
MAX_RESCALE_SLOPE = 1000.0
MAX_ABS_RESCALE_INTERCEPT = 100000.0
#: With no rescale anywhere in the series, stored values are taken as HU only if air is at most this.
MAX_AIR_HU_WITHOUT_RESCALE = -900.0

# Transfer syntaxes that keep every bit. Anything encapsulated and not listed is lossy.
_LOSSLESS_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",  # implicit VR little endian
        "1.2.840.10008.1.2.1",  # explicit VR little endian
        "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
        "1.2.840.10008.1.2.2",  # explicit VR big endian
        "1.2.840.10008.1.2.5",  # RLE lossless
        "1.2.840.10008.1.2.4.57",  # JPEG lossless, process 14
        "1.2.840.10008.1.2.4.70",  # JPEG lossless, process 14, SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless only
        "1.2.840.10008.1.2.4.92",  # JPEG 2000 multi-component lossless only
        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
        "1.2.840.10008.1.2.4.112",  # JPEG XL lossless
    }
)

# ---------------------------------------------------------------------------
# Decoded frames
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameStack:
    """Decoded frames of one series, sorted along the slice normal.

    ``hu`` is float32 [frame, row, column]; ``positions_mm`` is (n, 3) LPS
    ImagePositionPatient; ``axes`` is the orthonormal (row direction, column
    direction, normal) as rows of a 3x3 array; ``normal_positions_mm`` is each
    frame's position along the normal. ``hu`` is read-only: it may share its
    memory with ``image`` and with the Volume built from it.
    """

    hu: np.ndarray
    positions_mm: np.ndarray
    axes: np.ndarray
    normal_positions_mm: np.ndarray
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing)
    slice_thickness_mm: tuple[float | None, ...]
    sop_instance_uids: tuple[str, ...]
    frame_numbers: tuple[int | None, ...]
    paths: tuple[str, ...]
    orientation: tuple[float, float, float, float, float, float]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    acquisition: Acquisition
    qc_flags: tuple[str, ...]
    image: sitk.Image | None = None  # owner of ``hu``'s memory when ``hu`` is a view on it

    def __len__(self) -> int:
        return int(self.hu.shape[0])

    def subset(self, keep: np.ndarray) -> "FrameStack":
        """A FrameStack holding only the frames at indices ``keep`` (in order)."""
        idx = [int(i) for i in keep]
        return FrameStack(
            hu=self.hu[idx],
            positions_mm=self.positions_mm[idx],
            axes=self.axes,
            normal_positions_mm=self.normal_positions_mm[idx],
            pixel_spacing_mm=self.pixel_spacing_mm,
            slice_thickness_mm=tuple(self.slice_thickness_mm[i] for i in idx),
            sop_instance_uids=tuple(self.sop_instance_uids[i] for i in idx),
            frame_numbers=tuple(self.frame_numbers[i] for i in idx),
            paths=tuple(self.paths[i] for i in idx),
            orientation=self.orientation,
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            frame_of_reference_uid=self.frame_of_reference_uid,
            acquisition=self.acquisition,
            qc_flags=self.qc_flags,
            image=None,
        )


@dataclass(frozen=True)
class _FrameRef:
    """Header-level facts of one frame, gathered before any pixel is decoded."""

    file_index: int
    frame_index: int  # 0-based inside its file
    frame_number: int | None  # 1-based for multi-frame objects
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None
    slope: float | None  # None: absent from the header (resolved by _resolve_rescale)
    intercept: float | None


def _worker_count(workers: int | None, n_items: int) -> int:
    if workers is not None:
        return max(1, int(workers))
    return max(1, min(8, (os.cpu_count() or 2) * 2, n_items))


def _read_dataset(path: str, kept: "KeptHeader | None" = None) -> tuple[Dataset, "KeptHeader | None"]:
    """The dataset of ``path``: the scan's header (``kept``) when the file has not changed since,
    returned with it (its pixel bytes are read when decoded, the header is not parsed again);
    else the whole file, read once (and None)."""
    from ictus.imaging.dicom_io import notify_header

    if kept is not None and kept.is_current(path):
        notify_header(kept.dataset)
        return kept.dataset, kept
    try:
        ds = pydicom.dcmread(path)
        notify_header(ds)  # the pipeline's PHI guard learns the identifying values (never logged here)
        return ds, None
    except FileNotFoundError as exc:
        raise InvalidInputError(f"file {path} does not exist; rescan the study folder") from exc
    except Exception as exc:  # pydicom raises many kinds on broken files
        raise InvalidInputError(
            f"file {path} is not readable DICOM ({type(exc).__name__}); remove it or re-export the series"
        ) from exc


def _frame_group(ds: Dataset, frame_index: int) -> Dataset | None:
    """The per-frame functional group of one frame, or None."""
    per_frame = get_value(ds, "PerFrameFunctionalGroupsSequence")
    try:
        return per_frame[frame_index] if per_frame is not None and frame_index < len(per_frame) else None
    except Exception:  # noqa: BLE001 - a sequence with a wrong VR reads as absent
        return None


def _frame_refs(ds: Dataset, file_index: int, path: str, wanted: Sequence[int] | None) -> list[_FrameRef]:
    """Geometry and rescale of every wanted frame of one dataset (no pixels decoded)."""
    n_frames = int_value(ds, "NumberOfFrames", 1) or 1
    multi = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    indices = range(n_frames) if wanted is None else [int(f) - 1 for f in wanted]
    refs = []
    for i in indices:
        if not 0 <= i < n_frames:
            raise InvalidInputError(f"file {path} has {n_frames} frames, frame {i + 1} was asked for")
        if multi:
            group = _frame_group(ds, i)
            pos_item = functional_item(ds, group, "PlanePositionSequence")
            ori_item = functional_item(ds, group, "PlaneOrientationSequence")
            meas_item = functional_item(ds, group, "PixelMeasuresSequence")
            pvt_item = functional_item(ds, group, "PixelValueTransformationSequence")
            position = float_values(pos_item, "ImagePositionPatient", 3)
            orientation = float_values(ori_item, "ImageOrientationPatient", 6)
            spacing = float_values(meas_item, "PixelSpacing", 2)
            thickness = float_value(meas_item, "SliceThickness")
            slope = float_value(pvt_item, "RescaleSlope")
            intercept = float_value(pvt_item, "RescaleIntercept")
            # Fall back to top-level attributes (some converters write both).
            position = position or float_values(ds, "ImagePositionPatient", 3)
            orientation = orientation or float_values(ds, "ImageOrientationPatient", 6)
            spacing = spacing or float_values(ds, "PixelSpacing", 2)
            thickness = thickness if thickness is not None else float_value(ds, "SliceThickness")
            slope = slope if slope is not None else float_value(ds, "RescaleSlope")
            intercept = intercept if intercept is not None else float_value(ds, "RescaleIntercept")
        else:
            position = float_values(ds, "ImagePositionPatient", 3)
            orientation = float_values(ds, "ImageOrientationPatient", 6)
            spacing = float_values(ds, "PixelSpacing", 2)
            thickness = float_value(ds, "SliceThickness")
            slope = float_value(ds, "RescaleSlope")
            intercept = float_value(ds, "RescaleIntercept")
        missing = [
            name
            for name, value in (
                ("ImagePositionPatient", position),
                ("ImageOrientationPatient", orientation),
                ("PixelSpacing", spacing),
            )
            if value is None
        ]
        if missing:
            where = f"frame {i + 1} of {path}" if n_frames > 1 else f"file {path}"
            raise InvalidInputError(
                f"{where} lacks {', '.join(missing)}; it cannot be placed in space, choose another series"
            )
        if min(spacing) <= 0:  # type: ignore[arg-type]
            raise InvalidInputError(f"file {path} has a non-positive PixelSpacing {spacing}; re-export the series")
        refs.append(
            _FrameRef(
                file_index=file_index,
                frame_index=i,
                frame_number=(i + 1) if (multi or n_frames > 1) else None,
                position=position,  # type: ignore[arg-type]
                orientation=orientation,  # type: ignore[arg-type]
                pixel_spacing=spacing,  # type: ignore[arg-type]
                slice_thickness=thickness,
                slope=slope,
                intercept=intercept,
            )
        )
    return refs


def _orthonormal_axes(orientation: Sequence[float], where: str) -> np.ndarray:
    """Rows: unit row direction, unit column direction (made orthogonal), normal."""
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:], dtype=float)
    n_row, n_col = np.linalg.norm(row), np.linalg.norm(col)
    if n_row < 1e-6 or n_col < 1e-6:
        raise InvalidInputError(f"{where} has a degenerate ImageOrientationPatient; re-export the series")
    row /= n_row
    col -= row * float(row @ col)
    if np.linalg.norm(col) < 1e-3:
        raise InvalidInputError(f"{where} has parallel row and column directions; re-export the series")
    col /= np.linalg.norm(col)
    return np.stack([row, col, np.cross(row, col)])


def is_lossy(ds: Dataset) -> bool:
    """Whether a dataset's pixels went through lossy compression (now or before)."""
    if str(get_value(ds, "LossyImageCompression", "")).strip() == "01":
        return True
    meta = getattr(ds, "file_meta", None)
    ts = str(get_value(meta, "TransferSyntaxUID", "")) if meta is not None else ""
    return bool(ts) and ts not in _LOSSLESS_TRANSFER_SYNTAXES


def _holder(ds: Dataset, keyword: str) -> Dataset | None:
    """The dataset holding ``keyword``: ``ds`` itself, or an item of its shared functional groups (Enhanced CT)."""
    try:
        if keyword in ds:
            return ds
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared:
            for element in shared[0]:
                if element.VR == "SQ" and element.value and keyword in element.value[0]:
                    return element.value[0]
    except Exception:  # noqa: BLE001 - a malformed sequence is left out
        return None
    return None


def acquisition_from_dataset(ds: Dataset, *, lossy: bool = False) -> Acquisition:
    """The non-identifying :class:`Acquisition` facts of one dataset (no names, no IDs)."""
    meta = getattr(ds, "file_meta", None)
    age = parse_age_years(text_value(ds, "PatientAge"))
    return Acquisition(
        source_format="dicom",
        modality=text_value(_holder(ds, "Modality"), "Modality"),
        manufacturer=text_value(_holder(ds, "Manufacturer"), "Manufacturer"),
        model_name=text_value(_holder(ds, "ManufacturerModelName"), "ManufacturerModelName"),
        kernel=text_value(_holder(ds, "ConvolutionKernel"), "ConvolutionKernel"),
        slice_thickness_mm=float_value(_holder(ds, "SliceThickness"), "SliceThickness"),
        tube_voltage_kvp=float_value(_holder(ds, "KVP"), "KVP"),
        contrast_agent=text_value(_holder(ds, "ContrastBolusAgent"), "ContrastBolusAgent"),
        patient_age_years=None if age is None else round(age, 3),
        lossy_compression=lossy,
        transfer_syntax_uid=text_value(meta, "TransferSyntaxUID") if meta is not None else "",
    )


_NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


def native_pixels(ds: Dataset, n_frames: int, rows: int, cols: int,
                  data: bytes | bytearray | None = None) -> np.ndarray | None:
    """Stored values of an uncompressed little-endian 16-bit dataset without pydicom's decoder.

    A view on the file bytes (no copy when BitsStored is 16), masked and
    sign-extended to BitsStored exactly as ``Dataset.pixel_array`` does; None
    when the fast path does not apply (then use ``pixel_array``). ``data``: the
    raw PixelData value when ``ds`` was read without it.
    """
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts not in _NATIVE_LITTLE_ENDIAN or (data is None and "PixelData" not in ds):
        return None
    bits_allocated = int(ds.get("BitsAllocated", 0) or 0)
    bits_stored = int(ds.get("BitsStored", 0) or 0)
    if bits_allocated != 16 or not 1 <= bits_stored <= 16 or int(ds.get("HighBit", bits_stored - 1)) != bits_stored - 1:
        return None
    if data is None:
        data = ds.PixelData
    count = n_frames * rows * cols
    if not isinstance(data, (bytes, bytearray)) or len(data) < 2 * count:
        return None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    array = np.frombuffer(data, dtype="<i2" if signed else "<u2", count=count).reshape(n_frames, rows, cols)
    if bits_stored < 16:
        shift = 16 - bits_stored
        if signed:
            array = (array << shift) >> shift  # drops bits above BitsStored, then sign-extends
        else:
            array = array & np.uint16((1 << bits_stored) - 1)
    return array


class _ImageBuffer:
    """Exposes a SimpleITK image's pixel buffer to numpy, writable, and keeps the image alive."""

    def __init__(self, image: sitk.Image) -> None:
        self.image = image
        interface = dict(sitk.GetArrayViewFromImage(image).__array_interface__)
        interface["data"] = (interface["data"][0], False)  # writable
        self.__array_interface__ = interface


def _writable_image(shape_zyx: tuple[int, int, int]) -> tuple[sitk.Image, np.ndarray]:
    """A new float32 SimpleITK image and a writable numpy view [z, y, x] on its buffer.

    Filling the view fills the image: no second full-volume copy through
    ``GetImageFromArray``. The view holds a reference to the image, so the
    buffer lives as long as either does.
    """
    z, y, x = (int(v) for v in shape_zyx)
    image = sitk.Image([x, y, z], sitk.sitkFloat32)
    array = np.asarray(_ImageBuffer(image))
    if array.shape != (z, y, x) or array.dtype != np.float32:
        raise RuntimeError(f"unexpected SimpleITK buffer layout {array.shape} {array.dtype}")
    return image, array


def _hu_from_stored(stored: np.ndarray, ds: Dataset, slope: float, intercept: float, out: np.ndarray) -> None:
    """Write HU of one stored frame into ``out`` (float32), padding and sub-air mapped to air."""
    if slope == 1.0:
        np.copyto(out, stored, casting="unsafe")
    else:
        np.multiply(stored, np.float32(slope), out=out, casting="unsafe")
    if intercept != 0.0:
        out += np.float32(intercept)
    padding = get_value(ds, "PixelPaddingValue")
    if isinstance(padding, int):  # an unresolved US/SS value (bytes) is ignored
        pad_limit = get_value(ds, "PixelPaddingRangeLimit")
        pad = int(padding)
        if get_value(ds, "PixelRepresentation", 0) == 1 and pad > 32767 and stored.dtype.kind == "i":
            pad -= 65536  # stored as US but the pixels are signed
        if pad_limit is not None and isinstance(pad_limit, int):
            lo, hi = sorted((pad, int(pad_limit)))
            mask = (stored >= lo) & (stored <= hi)
        else:
            mask = stored == pad
        out[mask] = AIR_HU
    np.maximum(out, np.float32(AIR_HU), out=out)


def _frame_of_reference(datasets: Sequence[Dataset], used: Sequence[int]) -> str:
    """The series' Frame of Reference UID: the one its files carry (the first found), or ""."""
    for i in used:
        uid = str(get_value(datasets[i], "FrameOfReferenceUID", "") or "").strip()
        if uid:
            return uid
    return ""


def _check_image_header(ds: Dataset, path: str, max_dimension: int, max_voxels: int,
                        has_pixels: bool = False) -> tuple[int, int]:
    """Refuse, from the header alone, a file that cannot be one CT image of a series; returns (rows, columns).

    ``has_pixels``: the pixel data was read apart from ``ds``."""
    if not has_pixels and "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InvalidInputError(f"file {path} has no pixel data; it is not an image, choose another series")
    r, c = int_value(ds, "Rows", 0), int_value(ds, "Columns", 0)
    if r is None or c is None or r <= 0 or c <= 0 or r > max_dimension or c > max_dimension:
        shown = "x".join("?" if v is None else str(v) for v in (r, c))
        raise InvalidInputError(
            f"file {path} claims {shown} pixels (limit {max_dimension}); refusing to decode it, re-export the series"
        )
    samples = int_value(ds, "SamplesPerPixel", 1)
    if samples != 1:
        raise InvalidInputError(
            f"file {path} has {samples if samples is not None else 'unreadable'} samples per pixel, not a CT image; "
            "choose another series"
        )
    n_frames = int_value(ds, "NumberOfFrames", 1)
    n_frames = 1 if n_frames == 0 else n_frames  # as pydicom reads it: an empty count is one frame
    if n_frames is None or n_frames < 0 or n_frames * r * c > max_voxels:
        raise InvalidInputError(
            f"file {path} claims {n_frames if n_frames is not None else 'an unreadable number of'} frames of "
            f"{r}x{c} pixels (limit {max_voxels} voxels); refusing to decode it"
        )
    return r, c


def _resolve_rescale(refs: list[_FrameRef], paths: Sequence[str]) -> tuple[list[_FrameRef], bool, bool]:
    """Fill in missing RescaleSlope/RescaleIntercept and refuse values that cannot give HU.

    Returns (refs with both values set, whether any value was derived, whether the
    series has no rescale at all, so that the stored values are taken as HU and must
    be checked against air after decoding). Frames that lack the pair get the value
    every other frame of the series agrees on; if the others disagree, the series is
    refused.
    """
    from dataclasses import replace

    for ref in refs:
        where = f"file {paths[ref.file_index]}"
        if ref.slope is not None and not 0.0 < ref.slope <= MAX_RESCALE_SLOPE:
            raise InvalidInputError(
                f"{where} has RescaleSlope {ref.slope:g}, which cannot give Hounsfield units; re-export the series"
            )
        if ref.intercept is not None and abs(ref.intercept) > MAX_ABS_RESCALE_INTERCEPT:
            raise InvalidInputError(
                f"{where} has RescaleIntercept {ref.intercept:g}, which cannot give Hounsfield units; re-export the series"
            )
    missing = [r for r in refs if r.slope is None or r.intercept is None]
    if not missing:
        return refs, False, False
    known = {(r.slope, r.intercept) for r in refs if r.slope is not None and r.intercept is not None}
    slopes = {r.slope for r in refs if r.slope is not None}
    intercepts = {r.intercept for r in refs if r.intercept is not None}
    if len(known) > 1 or len(slopes) > 1 or len(intercepts) > 1:
        raise InvalidInputError(
            f"{len(missing)} of {len(refs)} slices lack RescaleSlope/RescaleIntercept and the others disagree on "
            "them, so their Hounsfield units are unknown; re-export the series"
        )
    slope = next(iter(slopes)) if slopes else 1.0
    intercept = next(iter(intercepts)) if intercepts else 0.0
    log.info("%d of %d slices lack the modality rescale; using slope %g, intercept %g",
             len(missing), len(refs), slope, intercept)
    filled = [replace(r, slope=slope if r.slope is None else r.slope,
                      intercept=intercept if r.intercept is None else r.intercept) for r in refs]
    return filled, True, not slopes or not intercepts


def read_frames(
    files: Sequence[str | Path],
    *,
    frames: Mapping[str, Sequence[int]] | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    max_dimension: int = DEFAULT_MAX_DIMENSION,
    orientation_tolerance: float = 1e-3,
    workers: int | None = None,
    headers: "Mapping[str, KeptHeader] | None" = None,
) -> FrameStack:
    """Read and decode the frames of ``files`` into HU, sorted along the slice normal.

    Each file is read once. ``frames`` optionally maps a path (as given) to the
    1-based frame numbers to keep from a multi-frame file. Sizes are checked
    from the headers before any pixel is decoded. A single frame is allowed
    here (use :func:`build_volume` for the series-level checks). ``headers``
    (:attr:`ictus.imaging.dicom_io.ScanResult.headers` of a ``keep_headers`` scan):
    files found there, unchanged since, are not parsed again: only their pixel bytes are read, one
    file at a time into a reused buffer, and converted at once.
    """
    paths = [str(f) for f in files]
    if not paths:
        raise InvalidInputError("no DICOM files were given; point to a folder holding a CT series")
    n_workers = _worker_count(workers, len(paths))
    from ictus.imaging.dicom_io import _quiet_pydicom

    # pydicom's UserWarnings on odd values (e.g. an invalid UI) would reach stderr as extra lines
    # next to the one error line (found by scripts/fuzz_ingest.py); QC flags carry what matters
    kept = headers or {}
    with _quiet_pydicom(), ThreadPoolExecutor(max_workers=n_workers) as pool:
        loaded = list(pool.map(lambda p: _read_dataset(p, kept.get(p)), paths))
    datasets = [ds for ds, _ in loaded]
    deferred = [k for _, k in loaded]  # the scan's header, where the pixels are still to be read
    del loaded

    refs, (rows, cols) = _header_frame_refs(datasets, paths, frames, max_dimension, max_voxels, deferred)
    refs, rescale_derived, rescale_assumed = _resolve_rescale(refs, paths)
    total = len(refs) * rows * cols
    if total > max_voxels:
        raise InvalidInputError(
            f"the series claims {len(refs)} frames of {rows}x{cols} pixels ({total} voxels, limit {max_voxels}); "
            "refusing to allocate it"
        )
    first = refs[0]  # in file order: its orientation and pixel spacing are the series'
    axes = _check_common_geometry(refs, paths, orientation_tolerance)
    positions = np.array([r.position for r in refs], dtype=float)
    along = positions @ axes[2]
    order = np.argsort(along, kind="stable")
    refs = [refs[i] for i in order]
    positions, along = positions[order], along[order]

    image, hu = _decode_frames(datasets, paths, refs, (rows, cols), n_workers, deferred)
    if rescale_assumed:
        _check_stored_values_are_hu(hu)
    return _frame_stack(
        datasets, paths, refs, hu, image,
        reference=first, positions=positions, axes=axes, along=along, rescale_derived=rescale_derived,
    )


def _header_frame_refs(
    datasets: Sequence[Dataset],
    paths: Sequence[str],
    frames: Mapping[str, Sequence[int]] | None,
    max_dimension: int,
    max_voxels: int,
    deferred: "Sequence[KeptHeader | None] | None" = None,
) -> tuple[list[_FrameRef], tuple[int, int]]:
    """Header checks, before anything is decoded: every wanted frame's facts, and the common (rows, columns).

    ``deferred[i]``: file ``i``'s header came from the scan, which found its PixelData."""
    rows = cols = None
    refs: list[_FrameRef] = []
    for index, (path, ds) in enumerate(zip(paths, datasets)):
        try:
            has_pixels = deferred is not None and deferred[index] is not None
            r, c = _check_image_header(ds, path, max_dimension, max_voxels, has_pixels)
            if rows is None:
                rows, cols = r, c
            elif (r, c) != (rows, cols):
                raise InvalidInputError(
                    f"file {path} is {r}x{c} pixels while the series is {rows}x{cols}; "
                    "the series mixes images, choose another"
                )
            wanted = None if frames is None else frames.get(path)
            refs.extend(_frame_refs(ds, index, path, wanted))
        except InvalidInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed header fails in many ways (fuzzed)
            raise InvalidInputError(
                f"file {path} has a malformed image header ({type(exc).__name__}); remove it or re-export the series"
            ) from exc
    assert rows is not None and cols is not None
    return refs, (rows, cols)


def _check_common_geometry(refs: Sequence[_FrameRef], paths: Sequence[str], orientation_tolerance: float) -> np.ndarray:
    """Refuse frames whose orientation or pixel spacing differ from the first; returns its orthonormal axes."""
    first = refs[0]
    axes = _orthonormal_axes(first.orientation, f"file {paths[first.file_index]}")
    for ref in refs[1:]:
        if np.max(np.abs(np.asarray(ref.orientation) - np.asarray(first.orientation))) > orientation_tolerance:
            raise InvalidInputError(
                f"file {paths[ref.file_index]} has another ImageOrientationPatient than the rest of the series; "
                "split the series by orientation"
            )
        if np.max(np.abs(np.asarray(ref.pixel_spacing) - np.asarray(first.pixel_spacing))) > 1e-3 * max(first.pixel_spacing):
            raise InvalidInputError(
                f"file {paths[ref.file_index]} has PixelSpacing {ref.pixel_spacing} while the series has "
                f"{first.pixel_spacing}; the series mixes reconstructions, choose another"
            )
    return axes


def _decode_frames(
    datasets: Sequence[Dataset],
    paths: Sequence[str],
    refs: Sequence[_FrameRef],
    shape: tuple[int, int],
    n_workers: int,
    deferred: "Sequence[KeptHeader | None] | None" = None,
) -> tuple[sitk.Image, np.ndarray]:
    """Decode every file once, straight into the sorted slots; returns the image and its read-only HU view.

    ``deferred[i]``: file ``i``'s dataset is the scan's header; its pixel bytes are read here, into a
    buffer each thread reuses (no copy of the series' encoded bytes is held)."""
    rows, cols = shape
    image, hu = _writable_image((len(refs), rows, cols))
    local = threading.local()
    slots_by_file: dict[int, list[tuple[int, _FrameRef]]] = {}
    for slot, ref in enumerate(refs):
        slots_by_file.setdefault(ref.file_index, []).append((slot, ref))

    def decode(file_index: int) -> None:
        ds = datasets[file_index]
        n_frames = int_value(ds, "NumberOfFrames", 1) or 1
        kept = deferred[file_index] if deferred is not None else None
        data = None
        if kept is not None:
            buffer = getattr(local, "buffer", None)
            if buffer is None or len(buffer) != kept.pixel_length:
                buffer = local.buffer = bytearray(kept.pixel_length)
            data = kept.pixel_bytes(paths[file_index], buffer)
            if data is None:
                raise InvalidInputError(
                    f"file {paths[file_index]} changed while the series was being read; run the command again"
                )
        try:
            pixels = native_pixels(ds, n_frames, rows, cols, data)
            if pixels is None:
                # pydicom's decoder needs the whole file when only the header was at hand
                pixels = (ds if kept is None else _read_dataset(paths[file_index])[0]).pixel_array
        except Exception as exc:  # decoder errors come in many types
            raise InvalidInputError(
                f"file {paths[file_index]} could not be decoded ({type(exc).__name__}: {exc}); "
                "install the pylibjpeg decoders or re-export the series uncompressed"
            ) from exc
        if pixels.ndim == 2:
            pixels = pixels[None]
        if pixels.shape != (n_frames, rows, cols):
            raise InvalidInputError(
                f"file {paths[file_index]} decoded to shape {pixels.shape}, expected {(n_frames, rows, cols)}; "
                "the file is damaged"
            )
        for slot, ref in slots_by_file[file_index]:
            assert ref.slope is not None and ref.intercept is not None  # filled in by _resolve_rescale
            _hu_from_stored(pixels[ref.frame_index], ds, ref.slope, ref.intercept, hu[slot])
        del pixels  # a view on the reused buffer
        # The encoded bytes are no longer needed: free them early.
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in ds:
                del ds[keyword]

    from ictus.imaging.dicom_io import _quiet_pydicom

    with _quiet_pydicom(), ThreadPoolExecutor(max_workers=n_workers) as pool:
        list(pool.map(decode, sorted(slots_by_file)))
    hu.flags.writeable = False
    return image, hu


def _check_stored_values_are_hu(hu: np.ndarray) -> None:
    """With no rescale anywhere, refuse stored values whose air is not at Hounsfield-unit air."""
    sample = hu[:, ::4, ::4]
    air = float(np.percentile(sample, 0.5)) if sample.size else 0.0
    if air > MAX_AIR_HU_WITHOUT_RESCALE:
        raise InvalidInputError(
            f"the series has no RescaleSlope/RescaleIntercept and its stored values are not Hounsfield units "
            f"(air would be {air:.0f} HU); re-export the series with its modality rescale"
        )


def _frame_stack(
    datasets: Sequence[Dataset],
    paths: Sequence[str],
    refs: Sequence[_FrameRef],
    hu: np.ndarray,
    image: sitk.Image,
    *,
    reference: _FrameRef,
    positions: np.ndarray,
    axes: np.ndarray,
    along: np.ndarray,
    rescale_derived: bool,
) -> FrameStack:
    """Assemble the :class:`FrameStack` of decoded, sorted frames with the series' UIDs and acquisition facts.

    ``reference`` (the first frame in file order) gives the orientation and pixel spacing.
    """
    used = sorted({r.file_index for r in refs})
    lossy = any(is_lossy(datasets[i]) for i in used)
    head = datasets[refs[0].file_index]
    series_uids = {str(get_value(datasets[i], "SeriesInstanceUID", "")) for i in used}
    if len(series_uids) > 1:
        log.info("building one volume from %d SeriesInstanceUIDs", len(series_uids))
    return FrameStack(
        hu=hu,
        positions_mm=positions,
        axes=axes,
        normal_positions_mm=along,
        pixel_spacing_mm=(float(reference.pixel_spacing[0]), float(reference.pixel_spacing[1])),
        slice_thickness_mm=tuple(r.slice_thickness for r in refs),
        sop_instance_uids=tuple(str(get_value(datasets[r.file_index], "SOPInstanceUID", "")) for r in refs),
        frame_numbers=tuple(r.frame_number for r in refs),
        paths=tuple(paths[r.file_index] for r in refs),
        orientation=tuple(float(v) for v in reference.orientation),  # type: ignore[arg-type]
        study_instance_uid=str(get_value(head, "StudyInstanceUID", "")).strip(),
        series_instance_uid=str(get_value(head, "SeriesInstanceUID", "")).strip(),
        frame_of_reference_uid=_frame_of_reference(datasets, used),
        acquisition=acquisition_from_dataset(head, lossy=lossy),
        qc_flags=((FLAG_LOSSY,) if lossy else ()) + ((FLAG_RESCALE,) if rescale_derived else ()),
        image=image,
    )


# ---------------------------------------------------------------------------
# Geometry: duplicates, spacing, gaps, tilt
# ---------------------------------------------------------------------------
def _drop_duplicates(stack: FrameStack, tolerance_mm: float) -> tuple[FrameStack, int]:
    """Drop exact duplicates (same position, same pixels); refuse same position with other pixels."""
    keep = [0]
    for i in range(1, len(stack)):
        j = keep[-1]
        if abs(stack.normal_positions_mm[i] - stack.normal_positions_mm[j]) > tolerance_mm:
            keep.append(i)
            continue
        same_place = np.allclose(stack.positions_mm[i], stack.positions_mm[j], atol=tolerance_mm)
        if same_place and np.array_equal(stack.hu[i], stack.hu[j]):
            continue
        raise InvalidInputError(
            f"two slices lie at the same position ({stack.normal_positions_mm[i]:.2f} mm along the slice normal) "
            "with different pixels; the series mixes acquisitions, choose or split it"
        )
    dropped = len(stack) - len(keep)
    if dropped:
        stack = stack.subset(np.asarray(keep))
    return stack, dropped


def _smallest_common_step(steps: np.ndarray, tolerance_mm: float) -> float:
    """The smallest step that occurs in a run of two equal consecutive steps, else the median."""
    candidates = [
        float(steps[i]) for i in range(len(steps) - 1) if abs(steps[i + 1] - steps[i]) <= tolerance_mm
    ]
    return min(candidates) if candidates else float(np.median(steps))


def _shift_into_canvas(
    src: np.ndarray, shift_rows: float, shift_cols: float, shape: tuple[int, int], out: np.ndarray
) -> None:
    """Translate ``src`` by (rows, cols) pixels, bilinear, into ``out`` of ``shape``; air outside.

    ``out[r, c] = src(r - shift_rows, c - shift_cols)`` for shifts >= 0.
    """
    out.fill(AIR_HU)
    i_r, i_c = int(math.floor(shift_rows + 1e-6)), int(math.floor(shift_cols + 1e-6))
    f_r, f_c = max(shift_rows - i_r, 0.0), max(shift_cols - i_c, 0.0)
    h, w = src.shape
    out[i_r : i_r + h, i_c : i_c + w] = src[: shape[0] - i_r, : shape[1] - i_c]
    # Fractional part, one axis at a time: out[y] = (1 - f) * out[y] + f * out[y - 1].
    if f_r > 1e-6:
        previous = np.float32(f_r) * out[:-1]  # a copy, taken before the update
        out[1:] *= np.float32(1.0 - f_r)
        out[1:] += previous
        out[0] = np.float32(1.0 - f_r) * out[0] + np.float32(f_r * AIR_HU)
    if f_c > 1e-6:
        previous = np.float32(f_c) * out[:, :-1]
        out[:, 1:] *= np.float32(1.0 - f_c)
        out[:, 1:] += previous
        out[:, 0] = np.float32(1.0 - f_c) * out[:, 0] + np.float32(f_c * AIR_HU)


def build_volume(
    files: Sequence[str | Path],
    *,
    frames: Mapping[str, Sequence[int]] | None = None,
    min_slices: int = 2,
    max_gap_factor: float = 1.5,
    refuse_gap_factor: float = 3.0,
    max_gap_mm: float = 15.0,
    spacing_tolerance_mm: float = 0.05,
    position_tolerance_mm: float = 0.01,
    tilt_tolerance_px: float = 0.1,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    max_dimension: int = DEFAULT_MAX_DIMENSION,
    workers: int | None = None,
    headers: "Mapping[str, KeptHeader] | None" = None,
) -> Volume:
    """Build the HU volume of one series from exactly these files.

    See the module docstring for how tilt, variable spacing, gaps, duplicates
    and padding are handled. Raises :class:`InvalidInputError` for a series
    that cannot be turned into a trustworthy volume. ``headers``: the kept
    headers of a ``scan(..., keep_headers=True)``, so that each file is parsed once.
    """
    stack = read_frames(files, frames=frames, max_voxels=max_voxels, max_dimension=max_dimension, workers=workers,
                        headers=headers)
    return volume_from_frames(
        stack,
        min_slices=min_slices,
        max_gap_factor=max_gap_factor,
        refuse_gap_factor=refuse_gap_factor,
        max_gap_mm=max_gap_mm,
        spacing_tolerance_mm=spacing_tolerance_mm,
        position_tolerance_mm=position_tolerance_mm,
        tilt_tolerance_px=tilt_tolerance_px,
        max_voxels=max_voxels,
    )


def volume_from_frames(
    stack: FrameStack,
    *,
    min_slices: int = 2,
    max_gap_factor: float = 1.5,
    refuse_gap_factor: float = 3.0,
    max_gap_mm: float = 15.0,
    spacing_tolerance_mm: float = 0.05,
    position_tolerance_mm: float = 0.01,
    tilt_tolerance_px: float = 0.1,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Volume:
    """Turn decoded, sorted frames into a regular orthogonal :class:`Volume`.

    Nothing is read from disk. When no resampling is needed the Volume takes
    over the decoded buffer of ``stack`` (no copy); ``stack.hu`` is read-only.
    """
    flags = list(stack.qc_flags)
    stack, dropped = _drop_duplicates(stack, position_tolerance_mm)
    if dropped:
        log.info("dropped %d duplicate slice(s)", dropped)
        flags.append(FLAG_DUPLICATES)
    n = len(stack)
    if n < max(1, min_slices):
        raise InvalidInputError(
            f"the series has {n} distinct slice(s), at least {max(1, min_slices)} are needed; choose a volumetric series"
        )
    z = _slice_grid(
        stack,
        max_gap_factor=max_gap_factor,
        refuse_gap_factor=refuse_gap_factor,
        max_gap_mm=max_gap_mm,
        spacing_tolerance_mm=spacing_tolerance_mm,
    )
    flags.extend(z.flags)
    plane = _in_plane_grid(stack, tilt_tolerance_px)
    if plane.tilted:
        flags.append(FLAG_TILT)
    n_out_slices = len(z.grid_mm)
    if n_out_slices * plane.rows * plane.cols > max_voxels:
        raise InvalidInputError(
            f"the corrected grid would be {plane.cols}x{plane.rows}x{n_out_slices} voxels (limit {max_voxels}); "
            "refusing to allocate it"
        )

    image = _grid_image(stack, z, plane)
    acquisition = dataclasses.replace(stack.acquisition, source_slice_count=n)
    flags.extend(_missing_header_flags(stack, acquisition))
    return Volume(
        image=image,
        study_instance_uid=stack.study_instance_uid,
        series_instance_uid=stack.series_instance_uid,
        frame_of_reference_uid=stack.frame_of_reference_uid,
        sop_instance_uids=tuple(dict.fromkeys(stack.sop_instance_uids)),
        source_slices=_source_slices(stack),
        source_paths=tuple(dict.fromkeys(stack.paths)),
        qc_flags=tuple(dict.fromkeys(flags)),
        acquisition=acquisition,
    )


def _grid_image(stack: FrameStack, z: "_SliceGrid", plane: "_PlaneGrid") -> sitk.Image:
    """The volume image on the output grid (the decoded buffer itself when nothing moves), with its geometry."""
    row_mm, col_mm = stack.pixel_spacing_mm  # DICOM: spacing between rows, between columns
    x_axis, y_axis, normal = stack.axes
    s = stack.normal_positions_mm
    if plane.tilted or z.resample:
        image, array = _writable_image((len(z.grid_mm), plane.rows, plane.cols))
        _resample_stack(stack.hu, s, z.grid_mm, plane.shift_rows, plane.shift_cols, array)
        del array
    elif stack.image is not None and np.shares_memory(stack.hu, sitk.GetArrayViewFromImage(stack.image)):
        image = stack.image  # the decoded buffer becomes the volume: no copy
    else:
        image = sitk.GetImageFromArray(stack.hu)
    origin = (
        stack.positions_mm[0]
        + plane.base_cols * col_mm * x_axis
        + plane.base_rows * row_mm * y_axis
        + (z.grid_mm[0] - s[0]) * normal
    )
    image.SetSpacing((float(col_mm), float(row_mm), float(z.spacing_mm)))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(float(v) for v in np.column_stack([x_axis, y_axis, normal]).ravel()))
    return image


@dataclass(frozen=True)
class _SliceGrid:
    """Output positions along the slice normal, their spacing, and what it took to get them."""

    grid_mm: np.ndarray  # position of every output slice along the normal
    spacing_mm: float
    resample: bool  # True when the output slices are not the input slices
    flags: tuple[str, ...]


def _slice_grid(
    stack: FrameStack,
    *,
    max_gap_factor: float,
    refuse_gap_factor: float,
    max_gap_mm: float,
    spacing_tolerance_mm: float,
) -> _SliceGrid:
    """The output slice positions: the input ones when evenly spaced, else a uniform grid (gaps checked)."""
    s = stack.normal_positions_mm
    n = len(s)
    if n == 1:
        thickness = stack.slice_thickness_mm[0]
        return _SliceGrid(s.copy(), float(thickness) if thickness and thickness > 0 else 1.0, False, ())
    steps = np.diff(s)
    median = float(np.median(steps))
    flags = [FLAG_GAP] if _check_gaps(stack, steps, median, max_gap_factor, refuse_gap_factor, max_gap_mm) else []
    extent = float(s[-1] - s[0])
    if bool(np.max(np.abs(steps - median)) <= spacing_tolerance_mm):
        return _SliceGrid(s.copy(), extent / (n - 1), False, tuple(flags))
    target = _smallest_common_step(steps, spacing_tolerance_mm)
    n_out = int(round(extent / target)) + 1
    z_mm = extent / (n_out - 1)
    z_grid = s[0] + z_mm * np.arange(n_out)
    z_grid[-1] = s[-1]
    return _SliceGrid(z_grid, z_mm, True, tuple(flags + [FLAG_VARIABLE_SPACING]))


def _check_gaps(
    stack: FrameStack,
    steps: np.ndarray,
    median: float,
    max_gap_factor: float,
    refuse_gap_factor: float,
    max_gap_mm: float,
) -> bool:
    """Whether a step is a gap to interpolate over; refuses a gap too large to interpolate."""
    s = stack.normal_positions_mm
    n = len(s)
    thick = [t if (t is not None and t > 0) else 0.0 for t in stack.slice_thickness_mm]
    found = False
    for k, step in enumerate(steps):
        expected = max(median, min(thick[k], thick[k + 1]))
        if step <= max_gap_factor * expected:
            continue
        where = (
            f"between slices {k + 1} and {k + 2} of {n} "
            f"(at {s[k]:.1f} and {s[k + 1]:.1f} mm along the slice normal; expected spacing {expected:.2f} mm)"
        )
        if step > refuse_gap_factor * expected and step > max_gap_mm:
            raise InvalidInputError(
                f"a gap of {step:.1f} mm {where} is too large to interpolate; "
                "the series is incomplete, re-send it or choose another series"
            )
        log.info("gap of %.1f mm %s interpolated", step, where)
        found = True
    return found


@dataclass(frozen=True)
class _PlaneGrid:
    """The in-plane output grid: the union of all slices, each translated by its shift (pixels)."""

    tilted: bool
    rows: int
    cols: int
    base_rows: float  # offset of the grid origin from the first slice's, in pixels
    base_cols: float
    shift_rows: np.ndarray  # per slice
    shift_cols: np.ndarray


def _in_plane_grid(stack: FrameStack, tilt_tolerance_px: float) -> _PlaneGrid:
    """The in-plane grid; slices whose origins move in-plane (a sheared, tilted stack) widen it."""
    row_mm, col_mm = stack.pixel_spacing_mm
    x_axis, y_axis, _ = stack.axes
    rows, cols = stack.hu.shape[1:]
    # In-plane offset of every slice origin from the first one (non-zero = sheared stack).
    delta = stack.positions_mm - stack.positions_mm[0]
    off_cols = (delta @ x_axis) / col_mm  # in pixels along the column index
    off_rows = (delta @ y_axis) / row_mm
    tilted = bool(np.max(np.abs(off_cols)) > tilt_tolerance_px or np.max(np.abs(off_rows)) > tilt_tolerance_px)
    if not tilted:
        zeros = np.zeros(len(stack))
        return _PlaneGrid(False, int(rows), int(cols), 0.0, 0.0, zeros, zeros)
    base_c, base_r = float(np.min(off_cols)), float(np.min(off_rows))
    shift_c, shift_r = off_cols - base_c, off_rows - base_r
    out_cols = cols + int(math.ceil(float(np.max(shift_c)) - 1e-6))
    out_rows = rows + int(math.ceil(float(np.max(shift_r)) - 1e-6))
    return _PlaneGrid(True, int(out_rows), int(out_cols), base_r, base_c, shift_r, shift_c)


def _source_slices(stack: FrameStack) -> tuple[SourceSlice, ...]:
    """The geometry of every source frame kept (for outputs mapped back onto the acquired slices)."""
    rows, cols = stack.hu.shape[1:]
    return tuple(
        SourceSlice(
            sop_instance_uid=uid,
            frame_number=frame,
            image_position_patient=tuple(float(v) for v in pos),  # type: ignore[arg-type]
            image_orientation_patient=stack.orientation,
            pixel_spacing_mm=stack.pixel_spacing_mm,
            rows=int(rows),
            columns=int(cols),
        )
        for uid, frame, pos in zip(stack.sop_instance_uids, stack.frame_numbers, stack.positions_mm)
    )


def _missing_header_flags(stack: FrameStack, acquisition: Acquisition) -> list[str]:
    """Info flags for header facts that are absent and what is used instead (logged once each)."""
    flags = []
    if not stack.frame_of_reference_uid:
        log.info("no FrameOfReferenceUID in the series: DICOM outputs get one derived from the SeriesInstanceUID")
        flags.append(FLAG_FRAME_OF_REFERENCE)
    if all(t is None or t <= 0 for t in stack.slice_thickness_mm):
        log.info("no SliceThickness in the series: the slice spacing stands in for it")
        flags.append(FLAG_THICKNESS)
    if acquisition.patient_age_years is None:
        log.info("no PatientAge in the header: the paediatric check cannot be made")
        flags.append(FLAG_AGE_UNKNOWN)
    return flags


def _resample_stack(
    hu: np.ndarray,
    s: np.ndarray,
    z_grid: np.ndarray,
    shift_r: np.ndarray,
    shift_c: np.ndarray,
    out: np.ndarray,
) -> None:
    """Translate each slice onto the common in-plane grid and interpolate linearly along the normal, into ``out``."""
    shape = (int(out.shape[1]), int(out.shape[2]))
    cache: dict[int, np.ndarray] = {}

    def placed(k: int) -> np.ndarray:
        if k not in cache:
            for old in [key for key in cache if key < k - 1]:
                del cache[old]
            buf = np.empty(shape, dtype=np.float32)
            _shift_into_canvas(hu[k], float(shift_r[k]), float(shift_c[k]), shape, buf)
            cache[k] = buf
        return cache[k]

    n = len(s)
    for w, z in enumerate(z_grid):
        k = int(np.clip(np.searchsorted(s, z, side="right") - 1, 0, max(n - 2, 0)))
        if n == 1:
            out[w] = placed(0)
            continue
        f = float(np.clip((z - s[k]) / (s[k + 1] - s[k]), 0.0, 1.0))
        if f < 1e-6:
            out[w] = placed(k)
        elif f > 1 - 1e-6:
            out[w] = placed(k + 1)
        else:
            np.multiply(placed(k), np.float32(1.0 - f), out=out[w])
            out[w] += np.float32(f) * placed(k + 1)

