"""DICOM outputs (SEG, SR, key-image SC) checked with tools nobody here wrote.

- dciodvfy (dicom3tools) must report 0 errors on every object, from a tilted
  phantom study and from the real tilted GE head with variable spacing;
- dsrdump (dcmtk) renders the SR, and its numbers are the findings';
- highdicom reads the SEG back; the masks on the source frames match an
  independent numpy mapping (phantom) and an analytic sphere (GE).
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ictus.imaging.build import build_volume
from ictus.pipelines.findings.record import ClassFinding, IchFinding, QcFinding
from ictus.pipelines.writers import write_outputs
from ictus.pipelines.writers.seg import labels_on_source_frames
from tests.conftest import shared_dicom
from tests.writers_support import (
    blob_result,
    dciodvfy_errors,
    make_findings,
    phantom_result,
    require_tool,
    segmentation_from_labels,
)

DICOM_OUTPUTS = ("seg", "sr", "sc")


@pytest.fixture(scope="module")
def tilted(tmp_path_factory):
    """A 15-degree tilted phantom with a 30 mL IPH and a 6 mm shift, and its DICOM outputs."""
    root = tmp_path_factory.mktemp("writers-tilted")
    result, written = phantom_result(root / "study", n_slices=30, tilt_deg=15.0, shift_mm=6.0)
    paths = write_outputs(result, root / "out", outputs=DICOM_OUTPUTS)
    return result, written, paths


@pytest.fixture(scope="module")
def ge(tmp_path_factory):
    """The real GE head (18.5 deg tilt, 4/7 mm slices) with a hand-made IPH sphere, and its DICOM outputs."""
    folder = shared_dicom("ge-head-tilt-variable-spacing")
    volume = build_volume(sorted(folder.glob("*.dcm")))
    result, centre, radius = blob_result(volume)
    out = tmp_path_factory.mktemp("writers-ge") / "out"
    paths = write_outputs(result, out, outputs=DICOM_OUTPUTS)
    return result, centre, radius, paths


def _all_dicom(paths):
    return [p for kind in DICOM_OUTPUTS for p in paths.get(kind, [])]


def test_phantom_outputs_pass_dciodvfy(tilted):
    _, _, paths = tilted
    files = _all_dicom(paths)
    assert len(paths["seg"]) == 1 and len(paths["sr"]) == 1 and len(paths["sc"]) >= 2
    for path in files:
        assert dciodvfy_errors(path) == [], path


def test_ge_outputs_pass_dciodvfy(ge):
    *_, paths = ge
    for path in _all_dicom(paths):
        assert dciodvfy_errors(path) == [], path


def test_seg_codes_algorithm_and_study(tilted):
    result, written, paths = tilted
    seg = hd.seg.segread(paths["seg"][0])
    source = pydicom.dcmread(next(written.series_dir.glob("*.dcm")), stop_before_pixels=True)
    card = result.card
    iph = card.class_label("IPH")
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.PatientID == source.PatientID and seg.PatientName == source.PatientName
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["IPH"]
    desc = seg.get_segment_description(1)
    assert desc.segmented_property_type.value == iph.code("type").code_value
    assert desc.segmented_property_category.value == iph.code("category").code_value
    algo = desc.algorithm_identification[0]
    assert algo.AlgorithmName == card.name[:64] and algo.AlgorithmVersion == card.version
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID


def _independent_frames(result, datasets):
    """Labels at every source pixel by plain numpy geometry (not SimpleITK): round(inverse affine @ position)."""
    labels = result.segmentation.labels
    inv = np.linalg.inv(result.volume.affine)
    out = []
    for ds in datasets:
        iop = np.array(ds.ImageOrientationPatient, float)
        ipp = np.array(ds.ImagePositionPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        pts = ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
        ijk = np.rint(pts @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        inside = np.all((ijk >= 0) & (ijk < np.array(labels.shape[::-1])), axis=-1)
        frame = np.zeros((ds.Rows, ds.Columns), np.uint8)
        i, j, k = ijk[inside].T
        frame[inside] = labels[k, j, i]
        out.append(frame)
    return np.stack(out)


def test_seg_round_trips_onto_source_frames(tilted):
    result, written, paths = tilted
    seg = hd.seg.segread(paths["seg"][0])
    datasets = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in written.series_dir.glob("*.dcm")),
                      key=lambda d: int(d.InstanceNumber))
    uids = [d.SOPInstanceUID for d in datasets]
    read_back = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1],
                                                  combine_segments=True)
    expected = _independent_frames(result, datasets) == 1
    got = read_back.astype(bool)
    assert got.sum() > 1000  # the lesion is there
    mismatch = np.count_nonzero(got != expected)
    assert mismatch <= 0.002 * expected.sum(), mismatch  # only rounding ties on voxel borders may differ
    # the same volume as the ground truth on the (tilted) acquisition grid
    voxel_ml = float(np.prod([float(v) for v in datasets[0].PixelSpacing]) * result.volume.spacing_mm[2]) / 1000
    truth_ml = written.truth["volumes_ml"]["IPH"]["on_grid_ml"]
    assert got.sum() * voxel_ml == pytest.approx(truth_ml, rel=0.02)
    # highdicom's frame geometry is the source's
    positions = {tuple(np.round(d.ImagePositionPatient, 3)) for d in datasets}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        pos = tuple(np.round(frame.PlanePositionSequence[0].ImagePositionPatient, 3))
        assert pos in positions


def test_seg_on_resampled_real_series_matches_the_analytic_sphere(ge):
    result, centre, radius, paths = ge
    seg = hd.seg.segread(paths["seg"][0])
    folder = shared_dicom("ge-head-tilt-variable-spacing")
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    uids = [d.SOPInstanceUID for d in datasets]
    segment = {s.SegmentLabel: int(s.SegmentNumber) for s in seg.SegmentSequence}["IPH"]
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[segment],
                                            combine_segments=True).astype(bool)
    dist = []
    for ds in datasets:
        iop = np.array(ds.ImageOrientationPatient, float)
        ipp = np.array(ds.ImagePositionPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        pts = ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
        dist.append(np.linalg.norm(pts - centre, axis=-1))
    dist = np.stack(dist)
    expected = dist < radius
    assert expected.sum() > 1000 and got.sum() > 1000
    dice = 2 * np.count_nonzero(got & expected) / (got.sum() + expected.sum())
    assert dice > 0.9, dice  # the 4 mm volume grid quantises the sphere; the bound below is the real check
    # every disagreement lies within half a voxel diagonal of the sphere's surface
    half_diag = 0.5 * float(np.linalg.norm(result.volume.spacing_mm))
    assert np.all(np.abs(dist[got != expected] - radius) <= half_diag + 1e-6)


def test_labels_on_source_frames_refuses_a_foreign_grid(tilted):
    result, _, _ = tilted
    from ictus.imaging.errors import OutputError

    with pytest.raises(OutputError, match="does not match the volume"):
        labels_on_source_frames(np.zeros((2, 3, 4), np.uint8), result.volume, result.volume.source_slices)


def _dsrdump(path) -> str:
    proc = subprocess.run([require_tool("dsrdump"), str(path)], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _num_items(text: str) -> list[tuple[str, float, str]]:
    return [(name, float(value), unit) for name, value, unit in
            re.findall(r'NUM:\(,,"([^"]+)"\)="([^"]+)" \(([^,]*),UCUM', text)]


def test_sr_renders_in_dsrdump_with_the_findings_numbers(tilted):
    result, _, paths = tilted
    text = _dsrdump(paths["sr"][0])
    f = result.findings
    nums = _num_items(text)
    volumes = [v for name, v, unit in nums if name == "Volume" and unit == "ml"]
    assert f.ich.subtypes["IPH"].volume_ml > 20
    assert f.ich.subtypes["IPH"].volume_ml in volumes
    assert f.ich.total_volume_ml in volumes
    assert f.oedema.volume_ml in volumes
    assert ("Midline shift", f.midline_shift_mm, "mm") in nums
    assert ("Probability of intracranial hemorrhage", f.ich.probability, "1") in nums
    assert '(,,"Intracranial hemorrhage")=(52101004,SCT,"Present")' in text
    assert '"Referenced Segment")=(SG image,,1)' in text
    assert f'="{f.priority}"' in text
    assert "gantry_tilt_corrected" in text
    assert "triage aid" in text
    assert '"Observer Type")=(121007,DCM,"Device")' in text
    sr = pydicom.dcmread(paths["sr"][0])
    seg = pydicom.dcmread(paths["seg"][0], stop_before_pixels=True)
    evidence = {item.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence
    assert sr.StudyInstanceUID == result.volume.study_instance_uid
    # highdicom parses it as a TID 1500 report: the IPH group references SEG segment 1
    report = hd.sr.srread(paths["sr"][0])
    (group,) = report.content.get_volumetric_roi_measurement_groups()
    assert group.tracking_identifier == "IPH (ictus)"
    assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert [(m.name.meaning, m.value, m.unit.value) for m in group.get_measurements()] == [
        ("Volume", f.ich.subtypes["IPH"].volume_ml, "ml")]


def test_key_images_are_marked_triage_output_with_overlays(tilted):
    result, _, paths = tilted
    for path in paths["sc"]:
        ds = pydicom.dcmread(path)
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription == "ICTUS key images"
        assert ds.StudyInstanceUID == result.volume.study_instance_uid
        assert ds.BurnedInAnnotation == "YES" and ds.PhotometricInterpretation == "RGB"
        rgb = ds.pixel_array
        banner = rgb[2:10, 2:10].reshape(-1, 3)
        assert np.all(banner[:, 0] > 150) and np.all(banner[:, 1] < 40)  # the red warning banner
    lesion = [pydicom.dcmread(p).pixel_array for p in paths["sc"] if "lesion" in pydicom.dcmread(p).ImageComments]
    assert lesion
    rgb = lesion[0].astype(int)
    reddish = (rgb[..., 0] - rgb[..., 1] > 60) & (rgb[..., 0] - rgb[..., 2] > 60)
    assert reddish[40:-120].sum() > 500  # the IPH overlay inside the image area


def test_no_lesion_gives_sr_and_key_images_but_no_seg(tilted, tmp_path):
    result, _, _ = tilted
    empty = np.zeros_like(result.segmentation.labels)
    findings = dataclasses.replace(
        result.findings, priority="routine",
        ich=IchFinding(present=False, probability=0.02, total_volume_ml=0.0,
                       subtypes={n: ClassFinding(present=False, volume_ml=0.0) for n in ("IPH", "EAH", "IVH")}),
        oedema=ClassFinding(present=None, volume_ml=0.0))
    quiet = dataclasses.replace(result, segmentation=segmentation_from_labels(empty), findings=findings)
    paths = write_outputs(quiet, tmp_path / "out", outputs=DICOM_OUTPUTS)
    assert "seg" not in paths and not (tmp_path / "out" / "seg.dcm").exists()
    assert dciodvfy_errors(paths["sr"][0]) == []
    text = _dsrdump(paths["sr"][0])
    assert '(,,"Intracranial hemorrhage")=(272519000,SCT,"Absent")' in text
    assert "Referenced Segment" not in text
    assert len(paths["sc"]) >= 1


def test_indeterminate_study_without_model_still_gets_sr_key_images_and_report(tilted, tmp_path):
    result, _, _ = tilted
    findings = make_findings(priority="indeterminate", qc=QcFinding(flags=("no_brain_found",)))
    bare = dataclasses.replace(result, segmentation=None, card=None, midline=None, findings=findings)
    paths = write_outputs(bare, tmp_path / "out", lang="ru")
    assert "seg" not in paths and {"json", "sr", "sc", "report"} <= set(paths)
    for path in paths["sr"] + paths["sc"]:
        assert dciodvfy_errors(path) == [], path
    text = _dsrdump(paths["sr"][0])
    assert "indeterminate" in text and "no_brain_found" in text
    assert "Present" not in text and "Absent" not in text  # nothing was assessed, nothing is claimed
    html = Path(paths["report"][0]).read_text(encoding="utf-8")
    assert "Не определён" in html and "Головной мозг не найден" in html


def test_seg_on_a_multiframe_source(tilted, tmp_path):
    """An enhanced (multi-frame) CT made from the phantom by highdicom's legacy converter."""
    result, written, _ = tilted
    legacy = [pydicom.dcmread(p) for p in sorted(written.series_dir.glob("*.dcm"))]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy, series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1)
    source = tmp_path / "enhanced.dcm"
    enhanced.save_as(source)
    volume = build_volume([source])
    assert {s.frame_number for s in volume.source_slices} == set(range(1, len(legacy) + 1))
    labels = labels_on_grid(result, volume)
    multi = dataclasses.replace(result, volume=volume, segmentation=segmentation_from_labels(labels))
    paths = write_outputs(multi, tmp_path / "out", outputs=("seg", "sr"))
    for path in paths["seg"] + paths["sr"]:
        assert dciodvfy_errors(path) == [], path
    seg = hd.seg.segread(paths["seg"][0])
    frames = seg.get_pixels_by_source_frame(source_sop_instance_uid=enhanced.SOPInstanceUID,
                                            source_frame_numbers=list(range(1, len(legacy) + 1)),
                                            segment_numbers=[1], combine_segments=True,
                                            assert_missing_frames_are_empty=True).astype(bool)
    expected = np.zeros_like(frames)
    for k, s in enumerate(volume.source_slices):
        expected[s.frame_number - 1] = labels_on_source_frames(labels, volume, volume.source_slices)[k] == 1
    assert frames.sum() > 1000 and np.array_equal(frames, expected)
    # and the same mask as on the single-frame originals, frame by frame (same planes)
    single = hd.seg.segread(written_seg_path(tilted))
    by_position = {tuple(np.round(d.ImagePositionPatient, 2)): d.SOPInstanceUID for d in legacy}
    for s in volume.source_slices:
        uid = by_position[tuple(np.round(s.image_position_patient, 2))]
        ref = single.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1],
                                                   combine_segments=True, skip_overlap_checks=True)[0]
        assert np.array_equal(ref.astype(bool), frames[s.frame_number - 1])


def labels_on_grid(result, volume):
    """The result's labels resampled (nearest neighbour) onto another volume's grid."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(result.segmentation.labels)
    image.CopyInformation(result.volume.image)
    return sitk.GetArrayFromImage(sitk.Resample(image, volume.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                sitk.sitkUInt8))


def written_seg_path(fixture):
    return fixture[2]["seg"][0]
