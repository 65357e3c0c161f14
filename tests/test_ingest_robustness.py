"""Ingest of real-but-damaged input: missing attributes, bugs the fuzzer found, skull-stripped heads.

Every study here is a copy of the GE head (../shared/data/dicom, skipped when
absent) with one thing changed, written into tmp_path.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from tests.conftest import shared_dicom

GE = "ge-head-tilt-variable-spacing"


def ge_copy(tmp_path: Path, edit: Callable[[Dataset, int], None] | None = None, *, only: set[int] | None = None) -> Path:
    """Copy the GE head into tmp_path/study, applying ``edit(ds, index)`` to the files (or to ``only``)."""
    study = tmp_path / "study"
    study.mkdir()
    for i, src in enumerate(sorted(shared_dicom(GE).glob("*.dcm"))):
        ds = pydicom.dcmread(src)
        if edit is not None and (only is None or i in only):
            edit(ds, i)
        ds.save_as(study / src.name, enforce_file_format=False)
    return study


def _remove(*keywords: str) -> Callable[[Dataset, int], None]:
    def edit(ds: Dataset, _i: int) -> None:
        for keyword in keywords:
            if keyword in ds:
                del ds[keyword]

    return edit


def _raw(keyword: str, vr: str, value: bytes) -> Callable[[Dataset, int], None]:
    def edit(ds: Dataset, _i: int) -> None:
        tag = Tag(keyword)
        ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)  # type: ignore[index]

    return edit


# ---------------------------------------------------------------------------
# missing attributes: exit 0, and the volume says what was derived
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("keywords", "flag"),
    [
        (("FrameOfReferenceUID",), "frame_of_reference_derived"),
        (("SliceThickness",), "slice_thickness_derived"),
        (("PatientAge",), "patient_age_unknown"),
        (("StudyDescription", "SeriesDescription"), None),
    ],
)
def test_missing_attribute_still_ingests(tmp_path, cli_runner, keywords, flag):
    from ictus.pipelines.triage import load_volume

    study = ge_copy(tmp_path, _remove(*keywords))
    volume, choice = load_volume(study)
    assert volume.size == (512, 611, 37)
    assert "variable_spacing_resampled" in volume.qc_flags and "gantry_tilt_corrected" in volume.qc_flags
    if flag:
        assert flag in volume.qc_flags
    code, out, err = cli_runner("series", study)
    assert code == 0, err
    code, out, err = cli_runner("volume", study, "-o", tmp_path / "v.nii.gz")
    assert code == 0, err
    if flag:
        assert flag in out  # the summary line lists the QC flags
    assert sitk.ReadImage(str(tmp_path / "v.nii.gz")).GetSize() == (512, 611, 37)


def test_missing_frame_of_reference_leaves_the_uid_empty_for_the_writers(tmp_path):
    from ictus.pipelines.triage import load_volume

    volume, _ = load_volume(ge_copy(tmp_path, _remove("FrameOfReferenceUID")))
    assert volume.frame_of_reference_uid == ""  # the writers derive one from the Series UID


def test_frame_of_reference_missing_on_some_slices_is_taken_from_the_others(tmp_path):
    from ictus.pipelines.triage import load_volume

    volume, _ = load_volume(ge_copy(tmp_path, _remove("FrameOfReferenceUID"), only={0, 1, 2}))
    assert volume.frame_of_reference_uid and "frame_of_reference_derived" not in volume.qc_flags


def test_single_component_patient_name(tmp_path, cli_runner):
    from ictus.pipelines.triage import load_volume

    def edit(ds: Dataset, _i: int) -> None:
        ds.PatientName = "Mononym"

    study = ge_copy(tmp_path, edit)
    volume, _ = load_volume(study)
    assert volume.size == (512, 611, 37)
    code, out, err = cli_runner("volume", study, "-o", tmp_path / "v.nii.gz")
    assert code == 0 and err == "" and "Mononym" not in out


def test_patient_age_present_gives_no_age_flag(tmp_path):
    from ictus.pipelines.triage import load_volume

    def edit(ds: Dataset, _i: int) -> None:
        ds.PatientAge = "067Y"

    volume, _ = load_volume(ge_copy(tmp_path, edit))
    assert "patient_age_unknown" not in volume.qc_flags and volume.acquisition.patient_age_years == 67


# ---------------------------------------------------------------------------
# bugs the fuzzer found (scripts/fuzz_ingest.py), each with its regression test
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("keyword", "vr", "value"),
    [
        ("Rows", "AE", b"\x00\x02"),  # a VR code overwritten: int('\x00\x02') was an internal error
        ("Columns", "CS", b"\x02\x00"),
        ("SamplesPerPixel", "LO", b"\x01\x00"),
        ("NumberOfFrames", "US", struct.pack("<H", 2)),
    ],
)
def test_malformed_integer_attribute_is_invalid_input_not_a_crash(tmp_path, cli_runner, keyword, vr, value):
    study = ge_copy(tmp_path, _raw(keyword, vr, value), only={5})
    code, out, err = cli_runner("volume", study, "-o", tmp_path / "v.nii.gz")
    assert code in (0, 3, 4), err
    if code:
        assert err.count("\n") == 1 and err.startswith("ictus: error: ")
        assert not (tmp_path / "v.nii.gz").exists()


def test_undecodable_pixels_give_exactly_one_stderr_line(tmp_path, cli_runner):
    """Before: the series pixel check logged a warning for the same file, so stderr had two lines."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    study = ge_copy(tmp_path, _raw("BitsStored", "US", struct.pack("<H", 17)))
    proc = subprocess.run([sys.executable, "-m", "ictus.pipelines.cli", "volume", str(study), "-o", str(tmp_path / "v.nii.gz")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    err = proc.stderr
    assert proc.returncode == 4 and err.count("\n") == 1 and err.startswith("ictus: error: ") and "decoded" in err
    assert not (tmp_path / "v.nii.gz").exists()


def test_pydicom_warnings_do_not_add_stderr_lines(tmp_path):
    """Before: an invalid UI value (a cut transfer syntax UID) made pydicom warn while the volume was
    read; the warning reached stderr through logging next to the error line."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    study = ge_copy(tmp_path)
    for path in study.glob("*.dcm"):
        data = path.read_bytes()
        assert b"1.2.840.10008.1.2.1\x00" in data[:400]
        path.write_bytes(data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.4.", 1))
    proc = subprocess.run([sys.executable, "-m", "ictus.pipelines.cli", "volume", str(study), "-o", str(tmp_path / "v.nii.gz")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode in (3, 4) and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("ictus: error: ")


@pytest.mark.parametrize("value", [b"0", b"-1", b"1e30", b"1e308"])
def test_absurd_rescale_slope_is_refused(tmp_path, cli_runner, value):
    """Before: RescaleSlope 0 gave a constant volume and 1e30 a volume of inf, both with exit 0."""
    study = ge_copy(tmp_path, _raw("RescaleSlope", "DS", value + (b" " if len(value) % 2 else b"")))
    code, _out, err = cli_runner("volume", study, "-o", tmp_path / "v.nii.gz")
    assert code == 4 and "RescaleSlope" in err and err.count("\n") == 1
    assert list(tmp_path.glob("*.nii.gz")) == []


def test_absurd_rescale_intercept_is_refused(tmp_path):
    from ictus.imaging.errors import InvalidInputError
    from ictus.pipelines.triage import load_volume

    with pytest.raises(InvalidInputError, match="RescaleIntercept"):
        load_volume(ge_copy(tmp_path, _raw("RescaleIntercept", "DS", b"1e30"), only={3}))


def test_rescale_missing_on_some_slices_is_taken_from_the_others(tmp_path):
    from ictus.pipelines.triage import load_volume

    reference, _ = load_volume(shared_dicom(GE))
    volume, _ = load_volume(ge_copy(tmp_path, _remove("RescaleSlope", "RescaleIntercept"), only={4, 20}))
    assert "rescale_derived" in volume.qc_flags
    assert np.array_equal(volume.array(), reference.array())


def test_rescale_missing_everywhere_with_non_hu_values_is_refused(tmp_path):
    """Before: a series stored unsigned with intercept -1024 (Siemens style) whose rescale was
    stripped gave a volume 1024 HU too bright with exit 0. Its air is at 0: not HU."""
    from ictus.imaging.errors import InvalidInputError
    from ictus.pipelines.triage import load_volume

    def edit(ds: Dataset, _i: int) -> None:
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        ds.PixelRepresentation = 0
        ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
        for keyword in ("RescaleSlope", "RescaleIntercept", "PixelPaddingValue"):
            if keyword in ds:
                del ds[keyword]

    with pytest.raises(InvalidInputError, match="not Hounsfield units"):
        load_volume(ge_copy(tmp_path, edit))


def test_rescale_missing_everywhere_with_hu_values_is_accepted_and_flagged(tmp_path):
    from ictus.pipelines.triage import load_volume

    def edit(ds: Dataset, _i: int) -> None:
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        ds.PixelRepresentation = 1
        ds.PixelData = np.maximum(hu, -1024).astype(np.int16).tobytes()
        del ds["RescaleSlope"], ds["RescaleIntercept"]
        if "PixelPaddingValue" in ds:
            del ds["PixelPaddingValue"]

    reference, _ = load_volume(shared_dicom(GE))
    volume, _ = load_volume(ge_copy(tmp_path, edit))
    assert "rescale_derived" in volume.qc_flags
    assert np.allclose(volume.array(), reference.array(), atol=1e-3)


def test_truncated_slice_is_reported_as_skipped(tmp_path):
    from ictus.pipelines.triage import load_volume

    study = ge_copy(tmp_path)
    path = sorted(study.glob("*.dcm"))[10]
    path.write_bytes(path.read_bytes()[:-1000])
    volume, choice = load_volume(study)
    assert "unreadable_files_skipped" in volume.qc_flags and choice.unreadable == 1


# ---------------------------------------------------------------------------
# skull-stripped input
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ge_volume_and_brain():
    from ictus.imaging.brain import segment_brain
    from ictus.pipelines.triage import load_volume

    volume, _ = load_volume(shared_dicom(GE))
    return volume, segment_brain(volume)


def _stripped_image(volume, brain, background: float) -> sitk.Image:
    array = sitk.GetArrayFromImage(volume.image)
    array[~brain.brain_array()] = background
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(volume.image)
    return image


@pytest.mark.parametrize("background", [-1024.0, 0.0])
def test_skull_stripped_volume_is_flagged_not_no_brain(ge_volume_and_brain, background):
    from ictus.imaging.brain import segment_brain
    from ictus.imaging.qc import QC_FLAGS, assess_qc

    volume, brain = ge_volume_and_brain
    stripped = segment_brain(_stripped_image(volume, brain, background))
    assert stripped.brain_found and stripped.skull_stripped
    assert "skull-stripped" in stripped.reason
    # the brain mask is the soft-tissue region: close to the mask it was stripped with
    a, b = stripped.brain_array(), brain.brain_array()
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice > 0.95
    qc = assess_qc(_stripped_image(volume, brain, background), stripped)
    assert "skull_stripped_input" in qc.names and "no_brain_found" not in qc.names
    assert qc.indeterminate and QC_FLAGS["skull_stripped_input"].severity == "indeterminate"


def test_whole_head_is_not_called_skull_stripped(ge_volume_and_brain):
    from ictus.imaging.qc import assess_qc

    volume, brain = ge_volume_and_brain
    assert brain.brain_found and not brain.skull_stripped
    assert "skull_stripped_input" not in assess_qc(volume, brain).names


@pytest.mark.parametrize("background", [-1024, 0])
def test_skull_stripped_dicom_series_ingests_and_is_flagged(tmp_path, ge_volume_and_brain, background):
    """The GE files with their pixels replaced by the stripped values (through each file's rescale)."""
    from ictus.imaging.brain import segment_brain
    from ictus.imaging.qc import assess_qc
    from ictus.pipelines.triage import load_volume

    volume, brain = ge_volume_and_brain
    # the brain mask in each source slice: sample the mask at every source pixel's position
    mask_image = brain.brain_mask

    def edit(ds: Dataset, _i: int) -> None:
        rows, cols = int(ds.Rows), int(ds.Columns)
        origin = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        r, c = np.mgrid[0:rows, 0:cols]
        points = origin + c[..., None] * col_mm * iop[:3] + r[..., None] * row_mm * iop[3:]
        direction = np.array(mask_image.GetDirection()).reshape(3, 3)
        index = np.rint(((points - np.array(mask_image.GetOrigin())) @ direction) / np.array(mask_image.GetSpacing()))
        index = index.astype(int)
        size = np.array(mask_image.GetSize())
        inside = np.all((index >= 0) & (index < size), axis=-1)
        mask_arr = sitk.GetArrayViewFromImage(mask_image)
        keep = np.zeros((rows, cols), bool)
        idx = index[inside]
        keep[inside] = mask_arr[idx[:, 2], idx[:, 1], idx[:, 0]] > 0
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        stored = ds.pixel_array.copy()
        stored[~keep] = np.int64(round((background - intercept) / slope)).astype(stored.dtype)
        ds.PixelData = stored.tobytes()
        if "PixelPaddingValue" in ds:
            del ds["PixelPaddingValue"]

    stripped_volume, _ = load_volume(ge_copy(tmp_path, edit))
    stripped = segment_brain(stripped_volume)
    assert stripped.brain_found and stripped.skull_stripped, stripped.reason
    qc = assess_qc(stripped_volume, stripped)
    assert "skull_stripped_input" in qc.names and "no_brain_found" not in qc.names


def test_plastic_skull_phantom_is_still_no_brain(tmp_path):
    from ictus.imaging.brain import segment_brain
    from ictus.imaging.qc import assess_qc
    from ictus.pipelines.triage import load_volume

    volume, _ = load_volume(shared_dicom("philips-head-phantom-tilted"))
    brain = segment_brain(volume)
    assert not brain.brain_found and not brain.skull_stripped
    names = assess_qc(volume, brain).names
    assert "no_brain_found" in names and "skull_stripped_input" not in names
