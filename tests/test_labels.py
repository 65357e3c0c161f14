"""Readers of the published label layouts, on fixtures written here in those layouts."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ictus.imaging.errors import InvalidInputError
from ictus.pipelines.research.datasets import (
    complete_findings,
    load_mask_on_grid,
    load_volume_and_mask,
    parse_rsna_id,
    read_cq500_reads,
    read_dataset,
    read_physionet_ct_ich,
    read_rsna_labels,
)

CQ500_ITEMS = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right",
               "ChronicBleed", "Fracture", "CalvarialFracture", "OtherFracture", "MassEffect", "MidlineShift")
PHYSIONET_HEADER = ("PatientNumber", "SliceNumber", "Intraventricular", "Intraparenchymal", "Subarachnoid",
                    "Epidural", "Subdural", "No_Hemorrhage", "Fracture_Yes_No")


def _write_nifti(path: Path, array: np.ndarray, spacing=(0.5, 0.5, 5.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


# -- PhysioNet CT-ICH -------------------------------------------------------------------
@pytest.fixture
def physionet(tmp_path: Path) -> Path:
    """Two patients (049 with IPH+IVH on slices 2-3, 050 with nothing) in the published layout."""
    (tmp_path / "ct_scans").mkdir()
    (tmp_path / "masks").mkdir()
    for number in (49, 50):
        hu = np.full((4, 8, 8), 30, dtype=np.int16)
        mask = np.zeros((4, 8, 8), dtype=np.uint8)
        if number == 49:
            mask[1:3, 2:5, 2:5] = 255  # the published masks are binary
        _write_nifti(tmp_path / "ct_scans" / f"{number:03d}.nii", hu)
        _write_nifti(tmp_path / "masks" / f"{number:03d}.nii", mask)
    with (tmp_path / "hemorrhage_diagnosis_raw_ct.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PHYSIONET_HEADER)
        for s in range(1, 5):
            ivh, iph = int(s == 2), int(s in (2, 3))
            w.writerow([49, s, ivh, iph, 0, 0, 0, int(not (ivh or iph)), 0])
        for s in range(1, 5):
            w.writerow([50, s, 0, 0, 0, 0, 0, 1, 0])
    return tmp_path


def test_physionet_subtypes_are_any_slice(physionet: Path) -> None:
    cases = {c.case_id: c for c in read_physionet_ct_ich(physionet)}
    assert sorted(cases) == ["049", "050"]
    a, b = cases["049"], cases["050"]
    assert a.findings["IPH"] and a.findings["IVH"] and a.findings["ICH"]
    assert a.findings["SDH"] is False and a.findings["EAH"] is False
    assert not any(b.findings[k] for k in ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "EAH"))
    assert a.mask_path.name == "049.nii" and a.mask_kind == "binary"


def test_physionet_volume_and_mask_on_grid(physionet: Path) -> None:
    volume, mask = load_volume_and_mask(physionet / "ct_scans" / "049.nii", physionet / "masks" / "049.nii")
    assert volume.size == (8, 8, 4)
    assert mask.shape == (4, 8, 8) and int((mask > 0).sum()) == 2 * 3 * 3


def test_physionet_without_csv_has_unknown_findings(physionet: Path) -> None:
    (physionet / "hemorrhage_diagnosis_raw_ct.csv").unlink()
    cases = read_physionet_ct_ich(physionet)
    assert all(c.findings["ICH"] is None for c in cases)


def test_physionet_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="ct_scans"):
        read_physionet_ct_ich(tmp_path)


def test_mask_resampled_by_nearest_neighbour(tmp_path: Path) -> None:
    """A mask on a 2x coarser grid lands on the image grid without new label values."""
    mask = np.zeros((4, 4, 4), dtype=np.uint8)
    mask[1:3, 1:3, 1:3] = 4
    path = tmp_path / "m.nii.gz"
    _write_nifti(path, mask, spacing=(2.0, 2.0, 2.0))
    ref = sitk.Image(8, 8, 8, sitk.sitkFloat32)
    out = load_mask_on_grid(path, ref)
    assert out.shape == (8, 8, 8) and set(np.unique(out)) == {0, 4}
    assert int((out == 4).sum()) == 4 * 4 * 4


# -- CQ500 ------------------------------------------------------------------------------
def _cq500_row(name: str, reads: dict[str, tuple[int, int, int]]) -> list:
    row = [name, "B1"]
    for r in range(3):
        row += [reads.get(item, (0, 0, 0))[r] for item in CQ500_ITEMS]
    return row


def test_cq500_majority_of_three(tmp_path: Path) -> None:
    header = ["name", "Category"] + [f"R{r}:{i}" for r in (1, 2, 3) for i in CQ500_ITEMS]
    with (tmp_path / "reads.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow(_cq500_row("CQ500-CT-0", {"ICH": (1, 1, 0), "SDH": (1, 0, 0), "MidlineShift": (1, 1, 1)}))
        w.writerow(_cq500_row("CQ500-CT-1", {"ICH": (0, 0, 1), "IPH": (0, 1, 1)}))
    (tmp_path / "CQ500CT0 CQ500CT0").mkdir()
    cases = {c.case_id: c for c in read_cq500_reads(tmp_path / "reads.csv", tmp_path)}
    a, b = cases["CQ500-CT-0"], cases["CQ500-CT-1"]
    assert a.findings["ICH"] is True and a.findings["SDH"] is False and a.findings["MidlineShift"] is True
    assert a.image_path == tmp_path / "CQ500CT0 CQ500CT0"
    assert b.findings["ICH"] is False and b.findings["IPH"] is True  # majority per finding, as published
    assert b.image_path is None
    assert a.info["votes"]["ICH"] == [True, True, False]


def test_cq500_wrong_header(tmp_path: Path) -> None:
    (tmp_path / "reads.csv").write_text("name,R1:ICH\nx,1\n")
    with pytest.raises(InvalidInputError, match="reads.csv"):
        read_cq500_reads(tmp_path / "reads.csv")


# -- RSNA 2019 --------------------------------------------------------------------------
def _write_rsna_dicom(path: Path, sop: str, study: str, series: str) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.dataset import Dataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop  # RSNA's files carry "ID_<hex>" here
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # RSNA writes ID_<hex> UIDs
def test_rsna_study_is_positive_when_any_slice_is(tmp_path: Path) -> None:
    dicom = tmp_path / "stage_2_train"
    dicom.mkdir()
    slices = {"ID_aa01": "ID_s1", "ID_aa02": "ID_s1", "ID_bb01": "ID_s2"}
    for sop, study in slices.items():
        _write_rsna_dicom(dicom / f"{sop}.dcm", sop, study, study + "_series")
    positive = {("ID_aa02", "any"), ("ID_aa02", "subdural")}
    with (tmp_path / "stage_2_train.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "Label"])
        for sop in slices:
            for sub in ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"):
                w.writerow([f"{sop}_{sub}", int((sop, sub) in positive)])
        w.writerow(["ID_cc99_any", 1])  # a labelled slice without a file is counted, not guessed
    cases = read_rsna_labels(tmp_path / "stage_2_train.csv", dicom)
    by_study = {c.info["study_instance_uid"]: c for c in cases}
    assert set(by_study) == {"ID_s1", "ID_s2"}
    s1, s2 = by_study["ID_s1"], by_study["ID_s2"]
    assert s1.findings["ICH"] and s1.findings["SDH"] and s1.findings["EAH"]
    assert s1.findings["IPH"] is False and len(s1.files) == 2
    assert s2.findings["ICH"] is False and len(s2.files) == 1
    assert read_dataset("rsna", dicom, labels=tmp_path / "stage_2_train.csv")[0].source == "rsna-2019"


def test_rsna_id_parsing() -> None:
    assert parse_rsna_id("ID_12cadc6af_epidural") == ("ID_12cadc6af", "epidural")
    with pytest.raises(InvalidInputError, match="subtype"):
        parse_rsna_id("ID_12cadc6af_bleed")


def test_complete_findings_derives_eah_and_ich() -> None:
    f = complete_findings({"SDH": False, "EDH": True, "SAH": False, "IPH": False, "IVH": False})
    assert f["EAH"] is True and f["ICH"] is True
    assert complete_findings({})["ICH"] is None


def test_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="layout"):
        read_dataset("bogus", tmp_path)
