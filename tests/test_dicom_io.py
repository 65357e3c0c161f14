"""ictus.imaging.dicom_io: scanning folders, DICOMDIRs and files; malformed input
built here from pydicom Datasets and bytes; real files from ../shared and pydicom.

The small factory at the top (``ct_dataset``, ``write_series``) is reused by
test_series.py and test_cli_series.py.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from conftest import shared_dicom
from ictus.imaging.dicom_io import InstanceHeader, parse_age_years, read_frame_hu, safe_path_component, scan
from ictus.imaging.errors import InvalidInputError

# ---------------------------------------------------------------------------
# factory


def ct_dataset(
    *,
    study_uid: str,
    series_uid: str,
    position: Sequence[float],
    instance: int = 1,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    size: int = 16,
    modality: str = "CT",
    sop_class: str = CTImageStorage,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    description: str = "HEAD ROUTINE",
    kernel: str = "STANDARD",
    thickness_mm: float = 5.0,
    pixels: bool = True,
    **extra: Any,
) -> Dataset:
    """A small single-frame CT image dataset (uncompressed, 16x16 by default)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-777"
    ds.PatientAge = "061Y"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.SeriesDescription = description
    ds.SeriesNumber = 2
    ds.InstanceNumber = instance
    ds.ConvolutionKernel = kernel
    ds.SliceThickness = thickness_mm
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    for key, value in extra.items():
        setattr(ds, key, value)
    if pixels:
        rng = np.random.default_rng(instance)
        ds.PixelData = (1064 + rng.normal(0, 3, (size, size))).astype(np.int16).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    n: int = 30,
    *,
    spacing_mm: float = 5.0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    **kw: Any,
) -> list[Path]:
    """Write ``n`` slices stacked along the slice normal, one file each."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    paths = []
    for i in range(n):
        pos = np.array([-4.0, -4.0, 0.0]) + i * spacing_mm * normal
        ds = ct_dataset(study_uid=study_uid, series_uid=series_uid, position=pos, instance=i + 1,
                        orientation=orientation, **kw)
        paths.append(save(ds, folder / f"{safe_path_component(series_uid)[-6:]}_{i:03d}.dcm"))
    return paths


def enhanced_ct(folder: Path, n_frames: int = 30, spacing_mm: float = 5.0, **kw: Any) -> Path:
    """One Enhanced CT file whose frames are stacked through per-frame functional groups."""
    base = ct_dataset(study_uid=generate_uid(), series_uid=generate_uid(), position=(0, 0, 0),
                      sop_class=EnhancedCTImageStorage, pixels=False, **kw)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "ConvolutionKernel", "RescaleSlope", "RescaleIntercept"):
        delattr(base, keyword)
    base.NumberOfFrames = n_frames
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = DicomSequence([orient])
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.5]
    measures.SliceThickness = spacing_mm
    shared.PixelMeasuresSequence = DicomSequence([measures])
    recon = Dataset()
    recon.ConvolutionKernel = kw.get("kernel", "STANDARD")
    shared.CTReconstructionSequence = DicomSequence([recon])
    transform = Dataset()
    transform.RescaleSlope = 1
    transform.RescaleIntercept = -1024
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    base.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for i in range(n_frames):
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, i * spacing_mm]
        item.PlanePositionSequence = DicomSequence([plane])
        frames.append(item)
    base.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    base.PixelData = np.full((n_frames, 16, 16), 1064, np.int16).tobytes()
    return save(base, folder / "enhanced.dcm")


# ---------------------------------------------------------------------------
# bad input


def test_missing_path_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not found"):
        scan(tmp_path / "nope")


def test_empty_folder_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="empty") as info:
        scan(tmp_path)
    assert "\n" not in str(info.value)


def test_random_bytes_named_dcm_are_skipped_and_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    (tmp_path / "noise.dcm").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InvalidInputError, match=r"1 files, 1 non-DICOM, 0 unreadable"):
        scan(tmp_path)
    write_series(tmp_path / "s", 3)
    (tmp_path / "notes.txt").write_text("not dicom")
    result = scan(tmp_path)
    assert len(result.instances) == 3
    assert result.skipped_non_dicom == 2 and result.unreadable == 0 and result.n_files == 5


def _cut_points(data: bytes) -> dict[str, int]:
    """Where to cut a file written by ``ct_dataset``: inside a header value,
    right after Rows (a clean element boundary), and inside the pixel data."""
    rows_at = data.index(b"\x28\x00\x10\x00US")
    pixels_at = data.index(b"\xe0\x7f\x10\x00")
    return {
        "inside_header_value": data.index(b"HEAD ROUTINE") + 4,
        "after_rows": rows_at + 10,
        "inside_pixels": pixels_at + (len(data) - pixels_at) // 2,
        "one_byte_short": len(data) - 1,
    }


@pytest.mark.parametrize("where", ["inside_header_value", "after_rows", "inside_pixels", "one_byte_short"])
def test_truncated_file_counted_as_unreadable(tmp_path: Path, where: str) -> None:
    paths = write_series(tmp_path, 4, size=64)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: _cut_points(data)[where]])
    result = scan(tmp_path)
    assert result.unreadable == 1
    assert str(paths[0]) in result.unreadable_paths
    assert len(result.instances) == 3


def test_truncated_encapsulated_file_counted_as_unreadable(tmp_path: Path) -> None:
    paths = write_series(tmp_path, 3, size=64)
    ds = pydicom.dcmread(paths[0])
    ds.compress(RLELossless)
    ds.save_as(paths[0], enforce_file_format=True)
    assert len(scan(tmp_path).instances) == 3  # intact RLE file reads
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) - 40])
    result = scan(tmp_path)
    assert result.unreadable == 1 and len(result.instances) == 2


def test_only_unreadable_files_is_invalid_input(tmp_path: Path) -> None:
    (path,) = write_series(tmp_path, 1, size=64)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InvalidInputError, match=r"1 files, 0 non-DICOM, 1 unreadable"):
        scan(tmp_path)


def test_dicom_without_pixel_data_is_read_and_marked(tmp_path: Path) -> None:
    write_series(tmp_path, 2, pixels=False)
    result = scan(tmp_path)
    assert [h.has_pixel_data for h in result.instances] == [False, False]


def test_implicit_vr_file_without_preamble_is_read(tmp_path: Path) -> None:
    ds = ct_dataset(study_uid=generate_uid(), series_uid=generate_uid(), position=(0, 0, 0))
    del ds.file_meta
    ds.save_as(tmp_path / "raw.dcm", implicit_vr=True, little_endian=True)
    assert (tmp_path / "raw.dcm").read_bytes()[128:132] != b"DICM"
    result = scan(tmp_path / "raw.dcm")
    assert result.source == "file" and len(result.instances) == 1
    assert result.instances[0].has_pixel_data


def test_headers_match_pydicom_and_keep_no_patient_identity(tmp_path: Path) -> None:
    paths = write_series(tmp_path, 3, kernel="H30s", ContrastBolusAgent="NONE", GantryDetectorTilt=12.0)
    result = scan(tmp_path)
    by_path = {h.path: h for h in result.instances}
    for path in paths:
        ref = pydicom.dcmread(path)
        h = by_path[str(path)]
        assert h.sop_instance_uid == ref.SOPInstanceUID
        assert h.series_instance_uid == ref.SeriesInstanceUID
        assert h.position == tuple(float(v) for v in ref.ImagePositionPatient)
        assert h.rows == ref.Rows and h.kernel == ref.ConvolutionKernel
        assert h.gantry_tilt_deg == pytest.approx(float(ref.GantryDetectorTilt))
        assert h.patient_age_years == pytest.approx(61)
        assert "Doe" not in repr(h) and "PID-777" not in repr(h)
    assert not any("patient_name" in f or "patient_id" in f for f in InstanceHeader.__dataclass_fields__)


def test_parallel_and_serial_scans_agree(tmp_path: Path) -> None:
    write_series(tmp_path, 12)
    assert scan(tmp_path, max_workers=1).instances == scan(tmp_path, max_workers=4).instances


@pytest.mark.parametrize("text,years", [("052Y", 52), ("006M", 0.5), ("014D", 14 / 365.25), ("xx", None), ("", None)])
def test_parse_age_years(text: str, years: float | None) -> None:
    assert parse_age_years(text) == (pytest.approx(years) if years is not None else None)


def test_enhanced_ct_frames_from_functional_groups(tmp_path: Path) -> None:
    path = enhanced_ct(tmp_path, n_frames=7, spacing_mm=2.0)
    (h,) = scan(path).instances
    ref = pydicom.dcmread(path)
    assert h.is_multiframe and h.n_frames == 7
    assert [p[2] for p in h.frame_positions] == [
        float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ref.PerFrameFunctionalGroupsSequence
    ]
    assert h.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0) and h.slice_thickness_mm == 2.0
    hu = read_frame_hu(str(path), 3)
    assert hu.shape == (16, 16) and float(hu.mean()) == pytest.approx(40.0)


# ---------------------------------------------------------------------------
# DICOMDIR


def _write_fileset(src: Path, out: Path) -> None:
    from pydicom.fileset import FileSet

    fs = FileSet()
    for path in sorted(src.glob("*.dcm")):
        fs.add(pydicom.dcmread(path))
    fs.write(out)


def test_dicomdir_lists_files_and_stale_dicomdir_falls_back(tmp_path: Path) -> None:
    write_series(tmp_path / "src", 5)
    out = tmp_path / "media"
    _write_fileset(tmp_path / "src", out)
    (out / "extra_not_indexed.bin").write_bytes(b"\x00" * 10)
    fresh = scan(out)
    assert fresh.source == "dicomdir" and len(fresh.instances) == 5 and fresh.flags == ()
    assert scan(out / "DICOMDIR").source == "dicomdir"

    victim = next(p for p in out.rglob("*") if p.is_file() and p.name != "DICOMDIR" and p.suffix != ".bin")
    victim.unlink()
    stale = scan(out / "DICOMDIR")
    assert "stale_dicomdir" in stale.flags
    assert stale.source == "folder" and len(stale.instances) == 4
    assert stale.index_files == 1 and stale.skipped_non_dicom == 1


def test_unreadable_dicomdir_falls_back_to_folder(tmp_path: Path) -> None:
    write_series(tmp_path, 3)
    (tmp_path / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM" + b"\x01\x02" * 20)
    result = scan(tmp_path)
    assert result.flags == ("invalid_dicomdir",) and len(result.instances) == 3


def test_pydicom_dicomdir_real() -> None:
    from pydicom.data import get_testdata_file

    dicomdir = Path(get_testdata_file("DICOMDIR"))
    result = scan(dicomdir)
    from pydicom.fileset import FileSet

    expected = {str(Path(i.path).resolve()) for i in FileSet(pydicom.dcmread(dicomdir))}
    assert result.source == "dicomdir" and result.flags == ()
    assert {h.path for h in result.instances} == expected


# ---------------------------------------------------------------------------
# file names from header text

NASTY = [
    "../../etc/passwd",
    "..",
    ".",
    "/abs/path",
    "a\\b\\..\\c",
    "1.2.3\x00\x1b[31m\r\n",
    "\u202e\u0000evil",
    "CON",
    "nul.txt",
    "",
    None,
    "x" * 500,
    "Ünïcödé / séries",
    "-rf",
]


@pytest.mark.parametrize("text", NASTY)
def test_safe_path_component_never_escapes(tmp_path: Path, text: object) -> None:
    name = safe_path_component(text, max_length=40)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", name), name
    assert len(name) <= 40 and name not in {".", ".."}
    assert name.split(".")[0].upper() not in {"CON", "NUL", "PRN", "AUX"}
    target = (tmp_path / name).resolve()
    assert target.parent == tmp_path.resolve()


def test_safe_path_component_keeps_uids_and_separates_long_texts() -> None:
    assert safe_path_component("1.2.840.10008.5.1.4") == "1.2.840.10008.5.1.4"
    a, b = safe_path_component("a" * 100 + "1"), safe_path_component("a" * 100 + "2")
    assert a != b and len(a) <= 64


def test_header_text_with_traversal_and_control_characters(tmp_path: Path) -> None:
    write_series(tmp_path, 3, series_uid="1.2.3/../../evil", description="head\x1b[2J/../x\x00")
    result = scan(tmp_path)
    assert {h.series_instance_uid for h in result.instances} == {"1.2.3/../../evil"}
    for h in result.instances:
        for text in (h.series_instance_uid, h.series_description, h.sop_instance_uid):
            assert (tmp_path / safe_path_component(text)).resolve().parent == tmp_path.resolve()


# ---------------------------------------------------------------------------
# real data


def test_philips_folder_dirfile_is_non_dicom() -> None:
    folder = shared_dicom("philips-head-phantom-tilted")
    dirfiles = [p for p in folder.rglob("DIRFILE")]
    result = scan(folder)
    assert result.skipped_non_dicom == len(dirfiles) > 0
    assert result.unreadable == 0
    assert len(result.instances) == result.n_files - len(dirfiles)


def test_wg04_compressed_headers_read() -> None:
    folder = shared_dicom("wg04-ct2-compression")
    result = scan(folder)
    syntaxes = {h.transfer_syntax_uid for h in result.instances}
    for path in folder.rglob("*"):
        if path.is_file():
            assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID in syntaxes
    assert len(result.instances) == sum(1 for p in folder.rglob("*") if p.is_file())
    assert all(h.has_pixel_data for h in result.instances)


def test_multiframe_real_frames() -> None:
    folder = shared_dicom("ct0012-multiframe-encodings")
    result = scan(folder)
    for h in result.instances:
        ref = pydicom.dcmread(h.path, stop_before_pixels=True)
        assert h.n_frames == int(ref.NumberOfFrames) == len(h.frame_positions)
        assert h.has_pixel_data


def test_corrupted_files_never_raise(tmp_path: Path) -> None:
    """Truncations and byte flips (seeded) end as a header, non-DICOM or unreadable."""
    from ictus.imaging.dicom_io import read_header

    (src,) = write_series(tmp_path / "src", 1, size=32)
    data = src.read_bytes()
    rng = np.random.default_rng(11)
    kinds = set()
    target = tmp_path / "mutant.dcm"
    for i in range(300):
        mutant = bytearray(data)
        if i % 2:
            mutant = mutant[: int(rng.integers(0, len(mutant)))]
        else:
            for _ in range(int(rng.integers(1, 12))):
                mutant[int(rng.integers(0, len(mutant)))] = int(rng.integers(0, 256))
        target.write_bytes(bytes(mutant))
        kind, header = read_header(str(target))
        assert kind in {"dicom", "non_dicom", "unreadable"}
        assert (header is not None) == (kind == "dicom")
        kinds.add(kind)
    assert {"dicom", "unreadable"} <= kinds
