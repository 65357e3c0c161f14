"""Tests for ictus.imaging.build: real files checked against dcm2niix, pydicom and highdicom,
and malformed or synthetic series built inside the tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ictus.imaging.build import (
    FLAG_DUPLICATES,
    FLAG_GAP,
    FLAG_LOSSY,
    FLAG_TILT,
    FLAG_VARIABLE_SPACING,
    build_volume,
    read_frames,
)
from ictus.imaging.errors import InvalidInputError
from tests.conftest import shared_dicom

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def write_ct_slice(
    path: Path,
    position,
    stored: np.ndarray,
    *,
    orientation=AXIAL,
    spacing=(0.5, 0.5),
    thickness: float | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    padding: int | None = None,
    rows: int | None = None,
    columns: int | None = None,
    sop_uid: str | None = None,
) -> Path:
    """A minimal single-frame CT file with signed 16-bit pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.Modality = "CT"
    ds.Manufacturer = "Test"
    ds.PatientName = "Secret^Name"
    ds.PatientID = "SECRET-ID"
    ds.PatientAge = "062Y"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    if thickness is not None:
        ds.SliceThickness = thickness
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows if rows is not None else stored.shape[0]
    ds.Columns = columns if columns is not None else stored.shape[1]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if padding is not None:
        ds.PixelPaddingValue = padding
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_stack(folder: Path, z_positions, shape=(8, 10), value=40, **kwargs) -> list[Path]:
    """Axial slices at ``z_positions``; slice i holds ``value + i`` HU everywhere."""
    paths = []
    for i, z in enumerate(z_positions):
        stored = np.full(shape, value + i + 1024, dtype=np.int16)
        paths.append(write_ct_slice(folder / f"s{i:03d}.dcm", (0.0, 0.0, z), stored, **kwargs))
    return paths


def voxel_world_points(image: sitk.Image) -> np.ndarray:
    """LPS position of every voxel centre, shaped like the [z, y, x] array plus a last axis of 3."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    return np.array(image.GetOrigin()) + (index * spacing) @ direction.T


def head_bbox_lps(image: sitk.Image, threshold_hu: float = -300.0) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (LPS mm) of the voxel centres above ``threshold_hu``.

    LPS is linear in the index, so along each x row only the first and last
    voxel above the threshold can be extreme: only those are transformed.
    """
    mask = sitk.GetArrayViewFromImage(image) > threshold_hu  # [z, y, x]
    rows = mask.any(axis=2)
    z, y = np.nonzero(rows)
    first = mask[z, y].argmax(axis=1)
    last = mask.shape[2] - 1 - mask[z, y][:, ::-1].argmax(axis=1)
    index = np.concatenate([np.stack([first, y, z], 1), np.stack([last, y, z], 1)]).astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    points = np.array(image.GetOrigin()) + (index * np.array(image.GetSpacing())) @ direction.T
    return points.min(axis=0), points.max(axis=0)


def dcm2niix_executable() -> str:
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    if not Path(exe).exists():
        pytest.skip("dcm2niix (PyPI package dcm2niix) is not installed")
    return exe


# ---------------------------------------------------------------------------
# real data: GE head with tilt and variable spacing, against dcm2niix
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ge_volume():
    folder = shared_dicom("ge-head-tilt-variable-spacing")
    return folder, build_volume(sorted(folder.glob("*.dcm")))


def test_ge_head_flags_and_uniform_grid(ge_volume):
    _, volume = ge_volume
    assert FLAG_TILT in volume.qc_flags
    assert FLAG_VARIABLE_SPACING in volume.qc_flags
    assert FLAG_GAP not in volume.qc_flags  # the 7 mm block is 7 mm thick: no missing anatomy
    assert len(volume.source_slices) == 28
    assert volume.image.GetPixelID() == sitk.sitkFloat32
    direction = np.array(volume.image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)  # orthogonal after tilt correction
    # The normal is tilted 18.5 degrees from the scanner z axis.
    assert np.degrees(np.arccos(direction[2, 2])) == pytest.approx(18.5, abs=0.1)
    assert 3.9 < volume.spacing_mm[2] < 4.1  # the 4 mm block keeps its resolution
    assert "PatientName" not in repr(volume.acquisition) and "PatientID" not in repr(volume.acquisition)
    assert volume.acquisition.kernel == "STD+"
    assert volume.acquisition.source_format == "dicom"


def test_ge_head_matches_dcm2niix(ge_volume, tmp_path):
    folder, volume = ge_volume
    subprocess.run(
        [dcm2niix_executable(), "-z", "n", "-b", "n", "-f", "ge", "-o", str(tmp_path), str(folder)],
        check=True,
        capture_output=True,
    )
    corrected = sorted(tmp_path.glob("ge*Tilt*.nii"))
    assert corrected, f"dcm2niix wrote no tilt-corrected file: {sorted(p.name for p in tmp_path.iterdir())}"
    reference = sitk.ReadImage(str(corrected[-1]), sitk.sitkFloat32)  # NIfTI RAS -> ITK LPS on reading

    ours_low, ours_high = head_bbox_lps(volume.image)
    ref_low, ref_high = head_bbox_lps(reference)
    assert np.all(np.abs(ours_low - ref_low) <= 1.0), (ours_low, ref_low)
    assert np.all(np.abs(ours_high - ref_high) <= 1.0), (ours_high, ref_high)

    on_our_grid = sitk.Resample(reference, volume.image, sitk.Transform(), sitk.sitkLinear, -5000.0)
    ours = sitk.GetArrayViewFromImage(volume.image)
    theirs = sitk.GetArrayViewFromImage(on_our_grid)
    inside = (ours > -300) & (theirs > -4000)
    assert inside.sum() > 100_000
    assert np.corrcoef(ours[inside], theirs[inside])[0, 1] >= 0.98


def test_ge_head_simpleitk_series_reader_averages_spacing(ge_volume):
    """Documentation, not a requirement: SimpleITK's reader averages the spacing (5.627 mm)."""
    folder, volume = ge_volume
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    image = reader.Execute()
    z_spacing = image.GetSpacing()[2]
    if abs(z_spacing - 5.627) > 0.05:
        pytest.skip(f"SimpleITK now reports {z_spacing:.3f} mm; it no longer averages the spacing")
    # An averaged spacing matches neither block, and the grid stays sheared (no tilt correction).
    assert abs(z_spacing - volume.spacing_mm[2]) > 1.0
    assert image.GetSize()[1] == 512 and volume.size[1] > 512


# ---------------------------------------------------------------------------
# real data: compressed transfer syntaxes
# ---------------------------------------------------------------------------
WG04_LOSSLESS = ("J2KR", "JLSL", "JPLL", "RLE")
WG04_LOSSY = ("J2KI", "JLSN")


def _wg04_file(name: str) -> Path:
    folder = shared_dicom("wg04-ct2-compression") / name
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert len(files) == 1
    return files[0]


def test_wg04_reference_hu_matches_pydicom_modality_lut():
    ref = _wg04_file("REF")
    stack = read_frames([ref])
    ds = pydicom.dcmread(ref)
    expected = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    assert np.array_equal(stack.hu[0], np.maximum(expected, -1024.0))
    assert stack.qc_flags == ()


@pytest.mark.parametrize("encoding", WG04_LOSSLESS)
def test_wg04_lossless_is_bit_identical_to_reference(encoding):
    reference = read_frames([_wg04_file("REF")]).hu
    decoded = read_frames([_wg04_file(encoding)])
    assert np.array_equal(decoded.hu, reference)
    assert FLAG_LOSSY not in decoded.qc_flags


@pytest.mark.parametrize("encoding", WG04_LOSSY)
def test_wg04_lossy_is_flagged(encoding):
    decoded = read_frames([_wg04_file(encoding)])
    assert FLAG_LOSSY in decoded.qc_flags
    volume = build_volume([_wg04_file(encoding)], min_slices=1)
    assert FLAG_LOSSY in volume.qc_flags


def test_single_slice_is_refused_by_default():
    with pytest.raises(InvalidInputError, match="1 distinct slice"):
        build_volume([_wg04_file("REF")])


# ---------------------------------------------------------------------------
# real data: Enhanced CT multi-frame
# ---------------------------------------------------------------------------
CT0012_LOSSLESS = (
    "CT0012.fragmented_no_bot_jpeg_lossless.57.dcm",
    "CT0012.fragmented_no_bot_jpeg_lossless.70.dcm",
    "CT0012.fragmented_no_bot_jpeg_ls.80.dcm",
    "CT0012.not_fragmented_bot_jpeg_ls.80.dcm",
    "CT0012.not_fragmented_no_bot_jpeg_ls.80.dcm",
    "CT0012.not_fragmented_bot_rle.dcm",
    "CT0012.not_fragmented_no_bot_rle.dcm",
)


def test_enhanced_ct_geometry_matches_highdicom():
    highdicom = pytest.importorskip("highdicom")
    path = shared_dicom("ct0012-multiframe-encodings") / "CT0012.explicit_little_endian.dcm"
    volume = build_volume([path])
    assert volume.size == (512, 512, 2)
    assert volume.spacing_mm[2] == pytest.approx(10.0)
    assert [s.frame_number for s in volume.source_slices] == [2, 1]  # sorted along the normal (0, 0, -1)
    reference = highdicom.imread(str(path)).get_volume()
    # Map every highdicom voxel (slice, row, column) to our (x, y, z) index through both affines.
    hd_index = np.argwhere(np.ones(reference.array.shape, dtype=bool))
    world = reference.affine[:3, :3] @ hd_index.T + reference.affine[:3, 3:4]
    ours_index = np.linalg.solve(volume.affine[:3, :3], world - volume.affine[:3, 3:4]).T
    rounded = np.round(ours_index).astype(int)
    assert np.abs(ours_index - rounded).max() < 1e-3
    ours = volume.array()[rounded[:, 2], rounded[:, 1], rounded[:, 0]]
    expected = np.maximum(reference.array[tuple(hd_index.T)], -1024.0)
    assert np.array_equal(ours, expected.astype(np.float32))


@pytest.mark.parametrize("name", CT0012_LOSSLESS)
def test_enhanced_ct_lossless_encodings_equal_uncompressed(name):
    folder = shared_dicom("ct0012-multiframe-encodings")
    reference = read_frames([folder / "CT0012.explicit_little_endian.dcm"])
    decoded = read_frames([folder / name])
    assert np.array_equal(decoded.hu, reference.hu)
    assert np.allclose(decoded.positions_mm, reference.positions_mm)
    assert FLAG_LOSSY not in decoded.qc_flags


@pytest.mark.parametrize(
    "name", ["CT0012.fragmented_no_bot_jpeg_baseline.51.dcm", "CT0012.fragmented_no_bot_jpeg_ls.81.dcm"]
)
def test_enhanced_ct_lossy_encodings_flagged(name):
    decoded = read_frames([shared_dicom("ct0012-multiframe-encodings") / name])
    assert FLAG_LOSSY in decoded.qc_flags


def test_enhanced_ct_frame_selection():
    path = shared_dicom("ct0012-multiframe-encodings") / "CT0012.explicit_little_endian.dcm"
    stack = read_frames([path], frames={str(path): [2]})
    assert len(stack) == 1 and stack.frame_numbers == (2,)
    assert stack.positions_mm[0][2] == pytest.approx(-149.0)


# ---------------------------------------------------------------------------
# pydicom's dicomdirtests: the 4-slice head series with a 202.5 mm gap
# ---------------------------------------------------------------------------
def test_dicomdirtests_head_gap_is_refused():
    from pydicom.data import get_testdata_file

    dicomdir = get_testdata_file("DICOMDIR")
    if dicomdir is None:
        pytest.skip("pydicom's test files are not installed")
    files = sorted((Path(dicomdir).parent / "77654033" / "CT2").iterdir())
    assert len(files) == 4
    with pytest.raises(InvalidInputError, match=r"gap of 202\.5 mm between slices 1 and 2 of 4"):
        build_volume(files)


# ---------------------------------------------------------------------------
# inputs built inside the tests
# ---------------------------------------------------------------------------
def test_regular_stack_is_sorted_and_kept_as_is(tmp_path):
    z = [10.0, 0.0, 5.0, 15.0]
    paths = write_stack(tmp_path, z, thickness=5.0)
    volume = build_volume(paths)
    assert volume.size == (10, 8, 4)
    assert volume.spacing_mm == pytest.approx((0.5, 0.5, 5.0))
    assert volume.image.GetOrigin() == pytest.approx((0.0, 0.0, 0.0))
    # Slice i was written with value 40 + i, so sorted by z the order is 1, 2, 0, 3.
    assert volume.array()[:, 0, 0].tolist() == [41.0, 42.0, 40.0, 43.0]
    assert volume.qc_flags == ()
    assert volume.acquisition.patient_age_years == 62
    assert volume.acquisition.source_slice_count == 4
    assert volume.acquisition.manufacturer == "Test" and volume.acquisition.modality == "CT"
    assert volume.acquisition.slice_thickness_mm == 5.0 and not volume.acquisition.lossy_compression
    assert "SECRET" not in repr(volume.acquisition) and "Secret" not in repr(volume.acquisition)


def test_duplicate_slices_are_dropped(tmp_path):
    paths = write_stack(tmp_path, [0.0, 5.0, 10.0], thickness=5.0)
    copy = tmp_path / "copy.dcm"
    shutil.copy(paths[1], copy)
    volume = build_volume([*paths, copy])
    assert volume.size[2] == 3
    assert FLAG_DUPLICATES in volume.qc_flags
    assert len(volume.source_slices) == 3


def test_same_position_with_other_pixels_is_refused(tmp_path):
    paths = write_stack(tmp_path / "a", [0.0, 5.0, 10.0])
    other = write_ct_slice(tmp_path / "b.dcm", (0.0, 0.0, 5.0), np.full((8, 10), 2000, dtype=np.int16))
    with pytest.raises(InvalidInputError, match="same position"):
        build_volume([*paths, other])


def test_inconsistent_rows_and_columns_are_refused(tmp_path):
    paths = write_stack(tmp_path, [0.0, 5.0])
    odd = write_ct_slice(tmp_path / "odd.dcm", (0.0, 0.0, 10.0), np.zeros((9, 10), dtype=np.int16))
    with pytest.raises(InvalidInputError, match="9x10 pixels while the series is 8x10"):
        build_volume([*paths, odd])


def test_missing_geometry_is_refused(tmp_path):
    paths = write_stack(tmp_path, [0.0, 5.0])
    ds = pydicom.dcmread(paths[1])
    del ds.ImagePositionPatient
    ds.save_as(paths[1])
    with pytest.raises(InvalidInputError, match="lacks ImagePositionPatient"):
        build_volume(paths)


def test_large_gap_is_refused(tmp_path):
    z = [0.0, 5.0, 10.0, 15.0, 215.0, 220.0, 225.0]
    paths = write_stack(tmp_path, z, thickness=5.0)
    with pytest.raises(InvalidInputError, match=r"gap of 200\.0 mm between slices 4 and 5 of 7"):
        build_volume(paths)


def test_moderate_gap_is_interpolated_and_flagged(tmp_path):
    z = [0.0, 5.0, 10.0, 20.0, 25.0, 30.0]  # one missing 5 mm slice at 15 mm
    paths = write_stack(tmp_path, z, thickness=5.0)
    volume = build_volume(paths)
    assert FLAG_GAP in volume.qc_flags
    assert volume.size[2] == 7 and volume.spacing_mm[2] == pytest.approx(5.0)
    column = volume.array()[:, 0, 0]
    # Slices hold 40..45; the missing one is the mean of its neighbours (42 and 43).
    assert column.tolist() == pytest.approx([40, 41, 42, 42.5, 43, 44, 45])


def test_absurd_dimensions_are_refused_before_allocating(tmp_path):
    paths = [
        write_ct_slice(tmp_path / f"{i}.dcm", (0.0, 0.0, 5.0 * i), np.zeros((2, 2), dtype=np.int16), rows=65535, columns=65535)
        for i in range(3)
    ]
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInputError, match="65535x65535"):
            build_volume(paths)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # nowhere near the 16 GiB the headers claim


def test_voxel_budget_is_checked_across_the_series(tmp_path):
    paths = write_stack(tmp_path, [0.0, 5.0, 10.0])
    with pytest.raises(InvalidInputError, match="refusing to allocate"):
        build_volume(paths, max_voxels=8 * 10 * 2)


def test_per_slice_rescale_slope_and_intercept(tmp_path):
    hu = np.array([[-1000, 0], [40, 1500]], dtype=np.int16)
    a = write_ct_slice(tmp_path / "a.dcm", (0, 0, 0), hu + 1024, slope=1.0, intercept=-1024.0)
    b = write_ct_slice(tmp_path / "b.dcm", (0, 0, 2), (hu + 2048) // 2, slope=2.0, intercept=-2048.0)
    c = write_ct_slice(tmp_path / "c.dcm", (0, 0, 4), hu, slope=1.0, intercept=0.0)
    volume = build_volume([a, b, c])
    array = volume.array()
    for k in range(3):
        assert np.array_equal(array[k], hu.astype(np.float32))


def test_padding_values_become_air(tmp_path):
    stored = np.array([[-2000, 1064], [-3024, 0]], dtype=np.int16)  # HU = stored - 1024 + ...
    a = write_ct_slice(tmp_path / "a.dcm", (0, 0, 0), stored, intercept=0.0, padding=-2000)
    b = write_ct_slice(tmp_path / "b.dcm", (0, 0, 1), stored + 1024, intercept=-1024.0, padding=-976)
    volume = build_volume([a, b])
    array = volume.array()
    assert array[0].tolist() == [[-1024.0, 1064.0], [-1024.0, 0.0]]
    # Slice b: stored -976 is the padding value (HU -2000); -3024+1024 -> HU -3024 below air.
    assert array[1].tolist() == [[-1024.0, 1064.0], [-1024.0, 0.0]]


def _ramp_hu(points_lps: np.ndarray) -> np.ndarray:
    """A linear HU field: linear interpolation reproduces it exactly."""
    return 0.5 * points_lps[..., 0] - 0.8 * points_lps[..., 1] + 1.3 * points_lps[..., 2] + 100.0


@pytest.mark.parametrize("tilt_deg", [18.5, -22.0])
def test_synthetic_tilted_variable_stack_matches_the_truth(tmp_path, tilt_deg):
    """Slices sample a known linear field on a sheared grid (couch moves along z, gantry tilted)."""
    t = np.radians(tilt_deg)
    row_dir = np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, np.cos(t), -np.sin(t)])
    rows, cols, spacing = 24, 20, (1.0, 1.25)  # (row spacing, column spacing)
    z_couch = np.concatenate([np.arange(0, 12, 3.0), 12 + np.arange(1, 5) * 5.0])  # 3 mm then 5 mm steps
    paths = []
    for k, z in enumerate(z_couch):
        origin = np.array([-10.0, -12.0, z])
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        points = origin + c[..., None] * spacing[1] * row_dir + r[..., None] * spacing[0] * col_dir
        stored = np.round((_ramp_hu(points) + 1024.0) * 8).astype(np.int16)  # slope 1/8 keeps precision
        paths.append(
            write_ct_slice(
                tmp_path / f"{k}.dcm", origin, stored, orientation=(*row_dir, *col_dir), spacing=spacing,
                slope=0.125, intercept=-1024.0,
            )
        )
    volume = build_volume(paths)
    assert FLAG_TILT in volume.qc_flags and FLAG_VARIABLE_SPACING in volume.qc_flags
    direction = np.array(volume.image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction[:, 0], row_dir) and np.allclose(direction[:, 1], col_dir)
    assert np.allclose(direction[:, 2], np.cross(row_dir, col_dir))
    normal_steps = np.diff(z_couch) * np.cos(t)
    assert volume.spacing_mm[2] == pytest.approx(normal_steps.min(), rel=0.05)

    # Compare every voxel that lies inside the sheared source stack with the analytic field.
    points = voxel_world_points(volume.image)
    array = volume.array()
    rel = points - np.array([-10.0, -12.0, 0.0])
    z_at = rel @ np.cross(row_dir, col_dir) / np.cos(t)  # couch position of the plane through each voxel
    col_mm = rel @ row_dir
    row_mm = (rel - np.outer(z_at.ravel(), [0, 0, 1]).reshape(rel.shape)) @ col_dir
    inside = (
        (col_mm >= 0) & (col_mm <= (cols - 1) * spacing[1])
        & (row_mm >= 2.5) & (row_mm <= (rows - 1) * spacing[0] - 2.5)  # both neighbours cover it
        & (z_at >= z_couch[0]) & (z_at <= z_couch[-1])
    )
    assert inside.sum() > 0.3 * inside.size
    assert np.abs(array[inside] - _ramp_hu(points[inside])).max() < 0.2
    outside = (row_mm < -4) | (row_mm > (rows - 1) * spacing[0] + 4)
    assert np.all(array[outside] == -1024.0)


# ---------------------------------------------------------------------------
# real data: the Philips phantom's two tilted series, checked against their own slices
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("series", ["S2010", "S3010"])
def test_philips_tilted_series_reproduce_their_source_pixels(series):
    """Each source pixel, placed by its own IPP/IOP, finds its value in the corrected volume.

    (dcm2niix is no reference here: it trusts GantryDetectorTilt, whose sign
    contradicts these files' ImageOrientationPatient.)
    """
    folder = shared_dicom("philips-head-phantom-tilted") / series
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != "DIRFILE")
    volume = build_volume(files)
    assert FLAG_TILT in volume.qc_flags and FLAG_VARIABLE_SPACING not in volume.qc_flags
    stack = read_frames(files)
    array = volume.array()
    errors = []
    for k in range(0, len(stack), 9):
        r, c = np.meshgrid(np.arange(0, 512, 8), np.arange(0, 512, 8), indexing="ij")
        points = (
            stack.positions_mm[k]
            + c[..., None] * stack.pixel_spacing_mm[1] * stack.axes[0]
            + r[..., None] * stack.pixel_spacing_mm[0] * stack.axes[1]
        ).reshape(-1, 3)
        index = np.linalg.solve(volume.affine[:3, :3], (points - volume.affine[:3, 3]).T).T
        # The source slices lie on the output planes; in-plane they fall between voxels.
        assert np.abs(index[:, 2] - np.round(index[:, 2])).max() < 1e-3
        near = np.round(index).astype(int)
        errors.append(np.abs(array[near[:, 2], near[:, 1], near[:, 0]] - stack.hu[k][r, c].ravel()).mean())
    assert np.mean(errors) < 10.0


# ---------------------------------------------------------------------------
# the phantom generator's tilted study against its analytic truth
# ---------------------------------------------------------------------------
def test_tilted_phantom_matches_its_analytic_truth(tmp_path):
    phantom = pytest.importorskip("ictus.imaging.phantom")
    from ictus.imaging.resample import reorient_to_nearest_axes

    spec = phantom.PhantomSpec(matrix=96, pixel_spacing_mm=2.5, gantry_tilt_deg=20.0, noise_hu=0.0, slice_thickness_mm=3.0)
    written = phantom.write_phantom(spec, tmp_path / "study")
    volume = build_volume(sorted(written.series_dir.glob("*.dcm")))
    assert volume.qc_flags == (FLAG_TILT,)
    axial = reorient_to_nearest_axes(volume, "LPS")
    truth, _ = phantom.sample_phantom(spec, axial.image.GetOrigin(), axial.spacing_mm, axial.size, thickness_mm=3.0)
    ours = axial.array()
    both = (ours > -300) & (truth > -300)  # the truth also covers the neck below the scanned range
    assert both.sum() > 50_000
    assert np.corrcoef(ours[both], truth[both])[0, 1] > 0.9
    assert np.median(np.abs(ours[both] - truth[both])) < 5.0


# ---------------------------------------------------------------------------
# the uncompressed fast path agrees with pydicom's decoder
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "signed, bits_stored, raw",
    [
        (1, 16, [-2000, -1, 0, 32767]),
        (1, 12, [0xF123, 0x0FFF, 0x0800, 0x07FF]),  # garbage above bit 11, sign bit 11
        (0, 12, [0xF123, 0x0FFF, 0x0800, 0x07FF]),
        (0, 16, [0, 1, 40000, 65535]),
    ],
)
def test_native_fast_path_matches_pydicom(tmp_path, signed, bits_stored, raw):
    from ictus.imaging.build import native_pixels

    path = write_ct_slice(tmp_path / "a.dcm", (0, 0, 0), np.zeros((1, 4), dtype=np.int16))
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = signed
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelData = (np.array(raw, dtype=np.int64) % 65536).astype("<u2").tobytes()
    fast = native_pixels(ds, 1, 1, 4)
    assert fast is not None
    expected = ds.pixel_array
    assert fast.dtype == expected.dtype
    assert np.array_equal(fast[0], expected)


def test_volume_shares_the_decoded_buffer_safely(tmp_path):
    from ictus.imaging.build import volume_from_frames

    paths = write_stack(tmp_path, [0.0, 2.0, 4.0])
    stack = read_frames(paths)
    assert not stack.hu.flags.writeable
    volume = volume_from_frames(stack)
    assert np.array_equal(volume.array(), stack.hu)
    del stack
    import gc

    gc.collect()
    assert volume.array()[:, 0, 0].tolist() == [40.0, 41.0, 42.0]
    # The decoded array outlives its FrameStack (it keeps the buffer's owner alive).
    hu = read_frames(paths).hu
    gc.collect()
    clutter = [np.full(hu.shape, -7.0, dtype=np.float32) for _ in range(50)]
    assert hu[:, 0, 0].tolist() == [40.0, 41.0, 42.0] and len(clutter) == 50


def test_pydicom_j2k_sign_mismatch_slice_decodes_to_plausible_hu():
    """pydicom's J2K_pixelrep_mismatch.dcm: a head slice whose J2K stream disagrees on signedness."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("J2K_pixelrep_mismatch.dcm")
    if path is None:
        pytest.skip("pydicom's test files are not installed")
    hu = read_frames([path]).hu[0]
    centre = hu[236:276, 236:276]
    assert 15.0 < float(np.median(centre)) < 45.0  # brain
    assert float(np.percentile(hu, 5)) == -1024.0  # air around the head
    assert float(hu.max()) < 3100.0  # no wrapped-around sign garbage


# ---------------------------------------------------------------------------
# headers kept by the scan: each file parsed once (issue 13)


def _same_volume(a, b) -> None:
    assert a.image.GetSize() == b.image.GetSize()
    assert a.image.GetSpacing() == b.image.GetSpacing()
    assert a.image.GetOrigin() == b.image.GetOrigin()
    assert a.image.GetDirection() == b.image.GetDirection()
    assert np.array_equal(a.array_view(), b.array_view())
    assert (a.qc_flags, a.source_slices, a.sop_instance_uids, a.source_paths, a.acquisition,
            a.frame_of_reference_uid, a.series_instance_uid, a.study_instance_uid) == (
        b.qc_flags, b.source_slices, b.sop_instance_uids, b.source_paths, b.acquisition,
        b.frame_of_reference_uid, b.series_instance_uid, b.study_instance_uid)


def test_kept_headers_build_the_same_volume_without_parsing_again(monkeypatch):
    """With the scan's headers, the builder reads only pixel bytes (no second dcmread) and builds
    exactly the volume it builds from the files alone (tilt, variable spacing, flags, provenance)."""
    from ictus.imaging import build as build_module
    from ictus.imaging.dicom_io import scan

    folder = shared_dicom("ge-head-tilt-variable-spacing")
    files = sorted(str(p) for p in folder.glob("*.dcm"))
    expected = build_volume(files)
    scanned = scan(folder, keep_headers=True)
    assert set(files) <= set(scanned.headers)
    assert scan(folder).headers == {}  # kept only when asked for

    def no_second_parse(*args, **kwargs):
        raise AssertionError("a kept header was parsed again")

    monkeypatch.setattr(build_module.pydicom, "dcmread", no_second_parse)
    _same_volume(build_volume(files, headers=scanned.headers), expected)


def test_kept_headers_of_changed_or_compressed_files_are_not_trusted(tmp_path):
    """A file rewritten after the scan is read again whole; compressed files keep no header."""
    from ictus.imaging.dicom_io import scan

    paths = write_stack(tmp_path / "s", [0.0, 2.0, 4.0, 6.0])
    scanned = scan(tmp_path / "s", keep_headers=True)
    write_ct_slice(paths[1], (0.0, 0.0, 2.0), np.full((8, 10), 5000, dtype=np.int16), intercept=-1000.0)
    st = paths[1].stat()  # same size, same inode: only the time tells (file systems tick coarsely)
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    volume = build_volume(paths, headers=scanned.headers)
    _same_volume(volume, build_volume(paths))
    assert volume.array()[1, 0, 0] == 4000.0

    folder = shared_dicom("wg04-ct2-compression")
    kept = scan(folder, keep_headers=True).headers
    assert kept and all(k.dataset.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
                        for k in kept.values())
    ref = _wg04_file("REF")
    assert np.array_equal(read_frames([ref], headers=kept).hu, read_frames([ref]).hu)
