"""ictus.imaging.series: grouping, rules-as-data selection, reasons, the pixel check;
synthetic studies built with pydicom, real ones from ../shared and pydicom."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import shared_dicom
from ictus.imaging.dicom_io import read_frame_hu, scan
from ictus.imaging.errors import InvalidInputError, NoEligibleSeriesError
from ictus.imaging.series import (
    SeriesChoice,
    find_candidate,
    group_series,
    load_rules,
    require_choice,
    select_series,
    sharp_by_histogram,
)
from test_dicom_io import ct_dataset, enhanced_ct, save, write_series


def choose(folder: Path, **kw) -> SeriesChoice:
    return select_series(scan(folder), **kw)


def only(choice: SeriesChoice):
    (candidate,) = choice.candidates
    return candidate


def tilted(deg: float) -> tuple[float, ...]:
    """Row along x, column tilted about x: gantry tilt of ``deg`` degrees."""
    r = math.radians(deg)
    return (1.0, 0.0, 0.0, 0.0, math.cos(r), -math.sin(r))


# ---------------------------------------------------------------------------
# synthetic studies


def test_good_series_is_chosen_with_facts(tmp_path: Path) -> None:
    paths = write_series(tmp_path, 30, spacing_mm=5.0, thickness_mm=5.0)
    choice = choose(tmp_path)
    c = require_choice(choice)
    assert c.eligible and c.score is not None and c.reason is None
    assert c.n_slices == 30 and c.n_instances == 30
    assert c.coverage_mm == pytest.approx(29 * 5.0 + 5.0)
    assert c.spacing_mm == pytest.approx(5.0) and c.max_gap_mm == pytest.approx(5.0)
    assert c.tilt_deg == pytest.approx(0.0, abs=1e-6)
    assert set(c.files) == {str(p) for p in paths}
    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in c.files]
    assert z == sorted(z)


def test_mr_only_study_has_no_eligible_series(tmp_path: Path) -> None:
    study = generate_uid()
    write_series(tmp_path / "a", 30, modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4", study_uid=study)
    write_series(tmp_path / "b", 20, modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4", study_uid=study)
    choice = choose(tmp_path)
    assert choice.chosen is None and len(choice.candidates) == 2
    assert all(c.rejected_by[0] == "not_ct" for c in choice.candidates)
    with pytest.raises(NoEligibleSeriesError, match=r"2 series rejected \(2 not CT\)") as info:
        require_choice(choice)
    assert "\n" not in str(info.value)


def test_single_slice_is_too_few(tmp_path: Path) -> None:
    write_series(tmp_path, 1)
    c = only(choose(tmp_path))
    assert "too_few_slices" in c.rejected_by and not c.eligible


def test_short_coverage_rejected(tmp_path: Path) -> None:
    write_series(tmp_path, 10, spacing_mm=5.0)
    c = only(choose(tmp_path))
    assert c.rejected_by == ("short_coverage",)
    assert "50 mm" in c.reason  # 9 steps of 5 mm plus one 5 mm slice


def test_no_pixel_data_rejected(tmp_path: Path) -> None:
    write_series(tmp_path, 30, pixels=False)
    assert "no_pixel_data" in only(choose(tmp_path)).rejected_by


def test_series_mixing_orientations_is_split(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    write_series(tmp_path / "ax", 30, study_uid=study, series_uid=series)
    write_series(tmp_path / "cor", 30, study_uid=study, series_uid=series, orientation=(1, 0, 0, 0, 0, -1))
    choice = choose(tmp_path)
    assert sorted(c.key for c in choice.candidates) == [series + ".1", series + ".2"]
    assert {c.series_instance_uid for c in choice.candidates} == {series}
    by_tilt = sorted(choice.candidates, key=lambda c: c.tilt_deg)
    assert by_tilt[0].eligible and by_tilt[1].rejected_by == ("not_axial",)
    assert choice.chosen == by_tilt[0]
    assert find_candidate(choice, series) == by_tilt[0]
    assert find_candidate(choice, series + ".2").key == series + ".2"
    with pytest.raises(InvalidInputError):
        find_candidate(choice, "9.9.9")


def test_series_mixing_image_types_is_split(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    write_series(tmp_path / "o", 30, study_uid=study, series_uid=series)
    write_series(tmp_path / "l", 2, study_uid=study, series_uid=series, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    choice = choose(tmp_path)
    assert len(choice.candidates) == 2
    assert choice.chosen.n_slices == 30
    assert [c.rejected_by[0] for c in choice.candidates if not c.eligible] == ["localizer"]


@pytest.mark.parametrize("tilt_deg,eligible", [(0, True), (18.5, True), (-27, True), (30, True), (45, False), (90, False)])
def test_gantry_tilt_is_axial_up_to_the_limit(tmp_path: Path, tilt_deg: float, eligible: bool) -> None:
    write_series(tmp_path, 40, spacing_mm=3.0, orientation=tilted(tilt_deg))
    c = only(choose(tmp_path))
    assert c.tilt_deg == pytest.approx(abs(tilt_deg), abs=1e-6)
    assert c.eligible is eligible
    if not eligible:
        assert c.rejected_by == ("not_axial",)
    assert c.coverage_mm == pytest.approx(39 * 3.0 + 5.0)  # measured along the slice normal


def test_sagittal_reformat_rejected(tmp_path: Path) -> None:
    write_series(tmp_path, 40, orientation=(0, 1, 0, 0, 0, -1))
    assert only(choose(tmp_path)).rejected_by[0] == "not_axial"


@pytest.mark.parametrize(
    "description,agent,contrast",
    [
        ("HEAD WO CONTRAST", "", False),
        ("CT HEAD W/O CONTRAST", "", False),
        ("Non-contrast head", "", False),
        ("NONCON HEAD 5mm", "", False),
        ("HEAD C-", "", False),
        ("Brain 5mm", "NONE", False),
        ("Brain 5mm", "", False),
        ("HEAD C+", "", True),
        ("CTA circle of Willis", "", True),
        ("Angio head", "", True),
        ("HEAD W CONTRAST", "", True),
        ("Post contrast brain", "", True),
        ("Brain 5mm", "Omnipaque 350", True),
    ],
)
def test_contrast_detection(tmp_path: Path, description: str, agent: str, contrast: bool) -> None:
    write_series(tmp_path, 30, description=description, ContrastBolusAgent=agent)
    c = only(choose(tmp_path))
    assert ("contrast" in c.rejected_by) is contrast, c.rejections


def test_enhanced_contrast_usage_sequence(tmp_path: Path) -> None:
    path = enhanced_ct(tmp_path, n_frames=30)
    ds = pydicom.dcmread(path)
    usage = pydicom.Dataset()
    usage.ContrastBolusAgentNumber = 1
    usage.ContrastBolusAgentAdministered = "YES"
    ds.SharedFunctionalGroupsSequence[0].ContrastBolusUsageSequence = pydicom.Sequence([usage])
    ds.save_as(path, enforce_file_format=True)
    assert only(choose(tmp_path)).rejected_by == ("contrast",)


@pytest.mark.parametrize(
    "kernel,sharp",
    [("BONE", True), ("BONEPLUS", True), ("LUNG", True), ("H70h", True), ("B60f", True), ("Hr64", True),
     ("FC30", True), ("FC81", True), ("YC", True), ("D", True),
     ("STANDARD", False), ("SOFT", False), ("H30s", False), ("Hr40", False), ("J40s", False),
     ("FC21", False), ("UB", False), ("B", False), ("STD+", False), ("", False)],
)
def test_kernel_names(tmp_path: Path, kernel: str, sharp: bool) -> None:
    write_series(tmp_path, 30, kernel=kernel)
    c = only(choose(tmp_path))
    assert ("sharp_kernel" in c.rejected_by) is sharp


def test_prefers_soft_kernel_original_and_coverage(tmp_path: Path) -> None:
    study = generate_uid()
    soft = write_series(tmp_path / "soft", 30, study_uid=study, kernel="H30s")
    write_series(tmp_path / "bone", 30, study_uid=study, kernel="H70h")
    write_series(tmp_path / "unknown", 30, study_uid=study, kernel="XYZ")
    write_series(tmp_path / "short", 22, study_uid=study, kernel="H30s")
    choice = choose(tmp_path)
    assert choice.chosen.files == tuple(str(p) for p in soft)
    scores = {c.n_slices: c.score for c in choice.candidates if c.eligible and c.kernel == "H30s"}
    assert scores[30] > scores[22]
    eligible = [c for c in choice.candidates if c.eligible]
    assert [c.score for c in eligible] == sorted((c.score for c in eligible), reverse=True)


def test_derived_rejected_only_when_an_original_exists(tmp_path: Path) -> None:
    study = generate_uid()
    write_series(tmp_path / "mpr", 40, spacing_mm=3.0, study_uid=study,
                 image_type=("DERIVED", "SECONDARY", "MPR"))
    alone = only(choose(tmp_path / "mpr"))
    assert alone.eligible
    write_series(tmp_path / "orig", 30, study_uid=study)
    choice = choose(tmp_path)
    derived = next(c for c in choice.candidates if c.image_type[0] == "DERIVED")
    assert derived.rejected_by == ("derived_with_original",)
    assert choice.chosen.image_type[0] == "ORIGINAL"


def test_secondary_capture_and_dose_report_rejected(tmp_path: Path) -> None:
    study = generate_uid()
    write_series(tmp_path / "sc", 30, study_uid=study, sop_class="1.2.840.10008.5.1.4.1.1.7")
    sr = ct_dataset(study_uid=study, series_uid=generate_uid(), position=(0, 0, 0),
                    sop_class="1.2.840.10008.5.1.4.1.1.88.67", modality="SR", pixels=False)
    save(sr, tmp_path / "dose.dcm")
    choice = choose(tmp_path)
    assert sorted(c.rejected_by[0] for c in choice.candidates) == ["dose_report", "secondary_capture"]


def test_enhanced_ct_counts_frames_as_slices(tmp_path: Path) -> None:
    path = enhanced_ct(tmp_path, n_frames=30, spacing_mm=5.0)
    c = require_choice(choose(tmp_path))
    assert c.n_instances == 1 and c.n_slices == 30 and c.is_multiframe
    assert [f.frame_number for f in c.frames] == list(range(1, 31))
    assert c.files == (str(path),)
    assert c.coverage_mm == pytest.approx(29 * 5.0 + 5.0)
    assert c.to_dict()["frames"][0] == {"path": str(path), "frame_number": 1}


def test_copies_of_one_instance_count_once(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "a", 30)
    for p in paths[:5]:
        (tmp_path / "copy" / p.name).parent.mkdir(exist_ok=True)
        (tmp_path / "copy" / p.name).write_bytes(p.read_bytes())
    c = only(choose(tmp_path))
    assert c.n_instances == 35 and c.n_slices == 30 and c.n_duplicate_files == 5
    assert len(c.frames) == 30


def test_gap_is_measured(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    for i, z in enumerate([0, 5, 10, 15, 215, 220, 225]):
        save(ct_dataset(study_uid=study, series_uid=series, position=(0, 0, z), instance=i + 1), tmp_path / f"{i}.dcm")
    c = only(choose(tmp_path))
    assert c.max_gap_mm == pytest.approx(200.0) and c.spacing_mm == pytest.approx(5.0) and c.has_gap


def test_patient_identity_not_in_json(tmp_path: Path) -> None:
    write_series(tmp_path, 30)
    text = repr(choose(tmp_path).to_dict())
    assert "Doe" not in text and "PID-777" not in text


# ---------------------------------------------------------------------------
# rules are data


def test_rules_drive_the_verdicts(tmp_path: Path) -> None:
    write_series(tmp_path, 30)
    rules = copy.deepcopy(dict(load_rules()))
    for rule in rules["rejections"]:
        if rule["name"] == "too_few_slices":
            rule["any_of"][0]["min_slices"] = 50
    c = only(select_series(scan(tmp_path), rules=rules))
    assert c.rejected_by == ("too_few_slices",) and "need 50" in c.reason
    rules["rejections"].append({"name": "bogus", "reason": "x", "any_of": [{"test": "no_such_test"}]})
    with pytest.raises(ValueError, match="no_such_test"):
        select_series(scan(tmp_path), rules=rules)


def test_every_rule_names_a_known_test() -> None:
    from ictus.imaging.series import TESTS

    rules = load_rules()
    for group in ("rejections", "context_rejections"):
        for rule in rules[group]:
            assert rule["name"] and rule["reason"] and rule["any_of"]
            for test in rule["any_of"]:
                assert test["test"] in TESTS


# ---------------------------------------------------------------------------
# pixel check


def test_sharp_by_histogram_on_synthetic_slices() -> None:
    rng = np.random.default_rng(1)
    head = np.full((256, 256), -1000.0, np.float32)
    yy, xx = np.mgrid[:256, :256]
    head[(yy - 128) ** 2 + (xx - 128) ** 2 < 110**2] = 35.0
    soft = head + rng.normal(0, 4, head.shape)
    sharp = head + rng.normal(0, 60, head.shape)
    assert sharp_by_histogram(soft)[0] is False
    assert sharp_by_histogram(sharp)[0] is True
    assert sharp_by_histogram(soft[:20, :20])[0] is None  # too few soft-tissue pixels


def _sharp_by_histogram_with_scipy(hu: np.ndarray) -> tuple[bool | None, float]:
    """The check as first written, on scipy.ndimage (the numpy version must agree with it)."""
    from scipy import ndimage

    arr = np.asarray(hu, dtype=np.float32)
    local = ndimage.uniform_filter(arr, size=(1, 5, 5) if arr.ndim == 3 else (5, 5))
    mask = (local >= 0.0) & (local <= 80.0)
    structure = ndimage.generate_binary_structure(arr.ndim, 1)
    if arr.ndim == 3:
        structure[0] = structure[2] = False
    mask = ndimage.binary_erosion(mask, structure=structure, iterations=2)
    if int(mask.sum()) < 2000:
        return None, float("nan")
    residual = (arr - local)[mask]
    sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    return sigma > 30.0, sigma


@pytest.mark.parametrize("shape", [(256, 256), (3, 70, 90), (2, 2), (1, 9), (120, 1)])
def test_sharp_by_histogram_agrees_with_scipy(shape) -> None:
    rng = np.random.default_rng(7)
    for spread in (4.0, 60.0):
        hu = (40.0 + rng.normal(0, spread, shape)).astype(np.float32)
        hu[..., : shape[-1] // 4] = -1000.0  # air, edges of the soft tissue
        verdict, residual = sharp_by_histogram(hu)
        expected, expected_residual = _sharp_by_histogram_with_scipy(hu)
        assert verdict is expected
        assert residual == pytest.approx(expected_residual, rel=1e-5, nan_ok=True)


def test_pixel_check_rejects_a_sharp_looking_series(tmp_path: Path) -> None:
    study = generate_uid()
    best = write_series(tmp_path / "best", 64, spacing_mm=2.5, thickness_mm=2.5, study_uid=study)
    second = write_series(tmp_path / "second", 30, study_uid=study)
    rng = np.random.default_rng(3)
    reads: list[str] = []

    def reader(path: str, frame: int | None) -> np.ndarray:
        reads.append(path)
        noise = 60.0 if path in {str(p) for p in best} else 3.0
        return (35.0 + rng.normal(0, noise, (128, 128))).astype(np.float32)

    choice = choose(tmp_path, pixel_reader=reader)
    assert choice.chosen.files == tuple(str(p) for p in second)
    rejected = next(c for c in choice.candidates if not c.eligible)
    assert rejected.rejected_by == ("sharp_kernel_histogram",)
    assert len(reads) == 2
    no_pixels = choose(tmp_path, pixel_reader=reader, check_pixels=False)
    assert no_pixels.chosen.files == tuple(str(p) for p in best)


def test_pixel_check_reads_the_real_middle_slice(tmp_path: Path) -> None:
    write_series(tmp_path, 30, size=16)
    reads = []

    def reader(path: str, frame: int | None) -> np.ndarray:
        reads.append(path)
        return read_frame_hu(path, frame)

    choice = choose(tmp_path, pixel_reader=reader)
    assert choice.chosen is not None and reads == [choice.chosen.frames[15].path]


# ---------------------------------------------------------------------------
# real data


def test_philips_localizer_and_sc_rejected_tilted_series_eligible() -> None:
    folder = shared_dicom("philips-head-phantom-tilted")
    choice = choose(folder)
    by_folder: dict[str, list] = {}
    for c in choice.candidates:
        by_folder.setdefault(Path(c.files[0]).parent.name, []).append(c)
    assert [c.rejected_by[0] for c in by_folder["S1000"]] == ["localizer"]
    assert {c.rejected_by[0] for c in by_folder["S4010"]} == {"secondary_capture"}
    for name in ("S2010", "S3010"):
        (c,) = by_folder[name]
        ref = pydicom.dcmread(c.files[0], stop_before_pixels=True)
        assert c.eligible
        assert c.n_slices == len(list((folder / name).glob("I*")))
        assert c.tilt_deg == pytest.approx(abs(float(ref.GantryDetectorTilt)), abs=0.1)
    assert choice.chosen in by_folder["S2010"] + by_folder["S3010"]


def test_pydicom_dicomdir_real() -> None:
    from pydicom.data import get_testdata_file

    choice = choose(Path(get_testdata_file("DICOMDIR")))
    for c in choice.candidates:
        modality = c.instances[0].modality
        if modality in ("MR", "CR"):
            assert c.rejected_by[0] == "not_ct"
        elif "LOCALIZER" in c.image_type:
            assert c.rejected_by[0] == "localizer"
    head = next(c for c in choice.candidates if c.description == "Routine Brain")
    z = sorted(float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in head.files)
    assert head.n_slices == len(z) == 4
    assert head.max_gap_mm == pytest.approx(max(np.diff(z)), abs=0.01)
    assert head.coverage_mm >= z[-1] - z[0]
    assert head.has_gap


def test_ge_tilted_variable_spacing_chosen() -> None:
    folder = shared_dicom("ge-head-tilt-variable-spacing")
    files = sorted(folder.glob("*.dcm"))
    c = require_choice(choose(folder))
    ref = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert c.tilt_deg == pytest.approx(abs(float(ref.GantryDetectorTilt)), abs=0.1)
    assert c.n_slices == len(files) and set(c.files) == {str(p) for p in files}
    hu = read_frame_hu(c.frames[len(c.frames) // 2].path)
    verdict, residual = sharp_by_histogram(hu)
    assert verdict is False and residual < 10


def test_wg04_single_slices_rejected() -> None:
    choice = choose(shared_dicom("wg04-ct2-compression"))
    assert choice.chosen is None
    assert all("too_few_slices" in c.rejected_by for c in choice.candidates)
    with pytest.raises(NoEligibleSeriesError, match="too few slices"):
        require_choice(choice)


def test_group_series_keeps_every_instance() -> None:
    folder = shared_dicom("philips-head-phantom-tilted")
    result = scan(folder)
    candidates = group_series(result.instances)
    assert sum(c.n_instances for c in candidates) == len(result.instances)
