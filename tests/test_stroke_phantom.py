"""The template-based stroke phantom (ictus.imaging.phantom.stroke) and ``ictus phantom --stroke``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ictus.imaging.errors import InvalidInputError
from ictus.imaging.stroke_atlas import ASPECTS_CODES, VESSEL_COURSES, aspects_label, load_template_atlas
from ictus.imaging.phantom.stroke import (
    StrokePhantomSpec,
    expected_aspects,
    render_stroke_phantom,
    template_asymmetry_hu,
    write_stroke_phantom,
)
from tests.conftest import shared_root

STROKE_DIR = shared_root() / "models" / "stroke-atlas"
LOBAR_DIR = shared_root() / "models" / "blast-ct" / "localisation_files"


def _atlas():
    if not (STROKE_DIR / "template" / "scct.nii").exists() or not (LOBAR_DIR / "atlas_labels.csv").exists():
        pytest.skip(f"stroke atlas {STROKE_DIR} or BLAST-CT atlas {LOBAR_DIR} absent (set ICTUS_SHARED_DIR)")
    return load_template_atlas(str(STROKE_DIR), str(LOBAR_DIR))


def _read(series_dir: Path):
    from ictus.imaging.build import build_volume

    return build_volume([str(f) for f in sorted(series_dir.glob("*.dcm"))])


def _mni_to_patient(truth: dict) -> sitk.AffineTransform:
    m = np.array(truth["pose"]["mni_to_patient"])
    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(float(v) for v in m[:3, :3].ravel()))
    t.SetTranslation(tuple(float(v) for v in m[:3, 3]))
    return t


def _back_to_mni(image: sitk.Image, truth: dict, atlas) -> np.ndarray:
    """The patient image sampled on the 1 mm MNI grid through the truth's pose ([z, y, x])."""
    return sitk.GetArrayFromImage(sitk.Resample(image, atlas.aspects, _mni_to_patient(truth), sitk.sitkLinear, -1000.0))


def _tissue(atlas) -> np.ndarray:
    template = sitk.GetArrayFromImage(sitk.Resample(atlas.template_hu, atlas.aspects, sitk.Transform(), sitk.sitkLinear))
    brain = sitk.GetArrayFromImage(sitk.Resample(atlas.brain_mask, atlas.aspects, sitk.Transform(),
                                                 sitk.sitkNearestNeighbor)) > 0
    return (template > 15) & (template < 60) & brain


def _mirror_difference(back: np.ndarray, atlas) -> dict[str, float]:
    """Left minus right mean HU per region over template tissue, less the template's own asymmetry."""
    labels = sitk.GetArrayViewFromImage(atlas.aspects)
    tissue = _tissue(atlas)
    asym = template_asymmetry_hu(atlas)
    out = {}
    for code in ASPECTS_CODES:
        left = back[(labels == aspects_label(code, "left")) & tissue].mean()
        right = back[(labels == aspects_label(code, "right")) & tissue].mean()
        out[code] = float(left - right - asym[code])
    return out


def _artery_hu(back: np.ndarray, atlas, side: str, length_mm: float = 12.0) -> float:
    """The 90th percentile HU within 1 mm of the first ``length_mm`` of the M1 course (MNI grid)."""
    course = next(c for c in VESSEL_COURSES if c.name == "M1" and c.side == side)
    pts = np.array(course.points_mm)
    samples = []
    start = 0.0
    for a, b in zip(pts[:-1], pts[1:]):
        seg = np.linalg.norm(b - a)
        for t in np.arange(0.0, seg, 0.5):
            if start + t <= length_mm:
                samples.append(a + (b - a) * t / seg)
        start += seg
    ref = atlas.aspects
    values = []
    for p in samples:
        for dx in (-1, 0, 1):
            for dz in (-1, 0, 1):
                idx = ref.TransformPhysicalPointToIndex(tuple(float(v) for v in p + np.array([dx, 0, dz])))
                values.append(back[idx[2], idx[1], idx[0]])
    return float(np.percentile(values, 90))


def _max_near_m1(back: np.ndarray, atlas, side: str, radius_vox: int = 3) -> float:
    """The highest HU within ``radius_vox`` mm (a cube) of the M1 course."""
    pts = np.array(next(c for c in VESSEL_COURSES if c.name == "M1" and c.side == side).points_mm)
    best = -np.inf
    for a, b in zip(pts[:-1], pts[1:]):
        for f in np.linspace(0.0, 1.0, 9):
            i, j, k = atlas.aspects.TransformPhysicalPointToIndex(tuple(float(v) for v in a + (b - a) * f))
            r = radius_vox
            best = max(best, float(back[k - r:k + r + 1, j - r:j + r + 1, i - r:i + r + 1].max()))
    return best


@pytest.fixture(scope="module")
def atlas():
    return _atlas()


@pytest.fixture(scope="module")
def ischaemic_study(tmp_path_factory, atlas):
    out = tmp_path_factory.mktemp("stroke") / "study"
    spec = StrokePhantomSpec(ischaemia_regions=("M2", "IC", "LN"), ischaemia_side="left", ischaemia_drop_hu=6.0,
                             dense_artery_side="left", old_infarct_regions=("M5",), old_infarct_side="right",
                             pose_seed=4, seed=4)
    written = write_stroke_phantom(spec, atlas, out)
    return spec, written, _read(written.series_dir)


def test_written_study_reads_back_with_the_truth_geometry(ischaemic_study):
    import pydicom

    spec, written, volume = ischaemic_study
    truth = json.loads(written.ground_truth_path.read_text())
    g = truth["geometry"]
    assert volume.size == (g["columns"], g["rows"], g["n_slices"]) == (256, 256, written.n_files)
    assert volume.spacing_mm == pytest.approx((0.9, 0.9, 5.0))
    assert volume.image.GetOrigin() == pytest.approx(g["first_image_position_patient"], abs=1e-3)
    assert not volume.qc_flags
    ds = pydicom.dcmread(sorted(written.series_dir.glob("*.dcm"))[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert ds.PatientAge == "070Y" and str(ds.PatientName) == "PHANTOM^STROKE"
    assert ds.PatientID == truth["patient"]["id"] and ds.SeriesInstanceUID == truth["uids"]["series_instance_uid"]
    hu = volume.array_view()
    assert np.percentile(hu, 1) == pytest.approx(-1000, abs=25)  # air
    assert hu.max() > 1000  # the stretched skull
    # the truth's keys
    for key in ("spec", "pose", "geometry", "affected_regions", "expected_aspects", "ischaemia", "dense_artery",
                "arteries", "old_infarct", "old_infarct_regions", "noise_sigma_hu", "template_asymmetry_hu"):
        assert key in truth, key
    assert truth["expected_aspects"] == {"left": 7, "right": 10}  # the old right M5 infarct is not acute
    assert truth["affected_regions"] == {"left": ["M2", "IC", "LN"], "right": []}
    assert truth["old_infarct_regions"] == {"left": [], "right": ["M5"]}
    assert truth["noise_sigma_hu"] == pytest.approx(4.0)
    assert np.allclose(np.array(truth["pose"]["mni_to_patient"]) @ np.array(truth["pose"]["patient_to_mni"]), np.eye(4))


def test_region_drop_lies_where_the_truth_says(ischaemic_study, atlas):
    _, written, volume = ischaemic_study
    truth = json.loads(written.ground_truth_path.read_text())
    diff = _mirror_difference(_back_to_mni(volume.image, truth, atlas), atlas)
    for code in ("M2", "IC", "LN"):  # drop 6 HU, a little less after the soft edge and 5 mm slabs
        assert -6.8 < diff[code] < -4.0, (code, diff)
    for code in ("C", "InCa", "M1", "M3"):
        assert abs(diff[code]) < 1.5, (code, diff)
    assert diff["M5"] > 8.0, diff  # right M5 is CSF: left minus right is large


def test_old_infarct_is_csf_with_a_wider_ventricle(ischaemic_study, atlas):
    _, written, volume = ischaemic_study
    truth = json.loads(written.ground_truth_path.read_text())
    back = _back_to_mni(volume.image, truth, atlas)
    labels = sitk.GetArrayViewFromImage(atlas.aspects)
    tissue = _tissue(atlas)
    assert back[(labels == aspects_label("M5", "right")) & tissue].mean() < 15.0
    loss = truth["old_infarct"]["volume_loss"]
    assert loss["ventricle_ml_after"] > loss["ventricle_ml_before"] * 1.3


def test_brain_is_found_with_a_plausible_volume(ischaemic_study):
    from ictus.imaging.brain import segment_brain

    _, _, volume = ischaemic_study
    brain = segment_brain(volume)
    assert brain.brain_found, brain.reason
    assert 900 < brain.brain_volume_ml < 1600 and brain.intracranial_volume_ml > brain.brain_volume_ml


def test_dense_artery_present_on_one_side_only(ischaemic_study, atlas):
    _, written, volume = ischaemic_study
    truth = json.loads(written.ground_truth_path.read_text())
    back = _back_to_mni(volume.image, truth, atlas)
    assert truth["dense_artery"]["side"] == "left" and truth["dense_artery"]["length_mm"] == 15.0
    assert _artery_hu(back, atlas, "left") > _artery_hu(back, atlas, "right") + 6.0


def test_normal_haematocrit_and_calcified_arteries_are_symmetric(atlas):
    common = dict(noise_hu=0.0, slice_thickness_mm=2.5, pose_seed=1, matrix=192, pixel_spacing_mm=1.2)
    normal = render_stroke_phantom(StrokePhantomSpec(**common), atlas)
    high = render_stroke_phantom(StrokePhantomSpec(haematocrit_hu=52.0, **common), atlas)
    calcified = render_stroke_phantom(StrokePhantomSpec(calcified_wall=True, calcified_wall_side="right", **common),
                                      atlas)
    values = {}
    for name, render in (("normal", normal), ("high", high), ("calcified", calcified)):
        assert render.truth["dense_artery"] is None and render.truth["dense_artery_side"] is None
        assert render.truth["expected_aspects"] == {"left": 10, "right": 10}
        back = _back_to_mni(render.volume().image, render.truth, atlas)
        values[name] = {side: _artery_hu(back, atlas, side) for side in ("left", "right")}
        values[name].update({f"max_{side}": _max_near_m1(back, atlas, side) for side in ("left", "right")})
    assert abs(values["normal"]["left"] - values["normal"]["right"]) < 3.0
    assert abs(values["high"]["left"] - values["high"]["right"]) < 3.0
    assert values["high"]["left"] > values["normal"]["left"] + 5.0
    assert values["calcified"]["max_right"] > 100.0 > values["calcified"]["max_left"]  # the wall
    assert values["calcified"]["right"] < 60.0  # the lumen stays blood
    assert calcified.truth["arteries"]["calcified_wall"]["counts_as_dense_artery"] is False


def test_tilted_thin_variant_is_tilt_corrected_on_reading(tmp_path, atlas):
    spec = StrokePhantomSpec(gantry_tilt_deg=15.0, slice_thickness_mm=2.5, matrix=192, pixel_spacing_mm=1.2,
                             ischaemia_regions=("M2",), ischaemia_side="right", ischaemia_drop_hu=8.0, pose_seed=2)
    written = write_stroke_phantom(spec, atlas, tmp_path / "tilted")
    volume = _read(written.series_dir)
    assert "gantry_tilt_corrected" in volume.qc_flags
    truth = written.truth
    assert truth["geometry"]["gantry_tilt_deg"] == 15.0 and "tilt_corrected_grid" in truth["geometry"]
    assert truth["noise_sigma_hu"] == pytest.approx(4.0 * np.sqrt(2.0))
    diff = _mirror_difference(_back_to_mni(volume.image, truth, atlas), atlas)
    assert 6.0 < diff["M2"] < 9.0, diff  # right M2 darker: left minus right positive
    assert abs(diff["M3"]) < 1.5 and abs(diff["LN"]) < 1.5, diff


def test_template_registration_lands_near_the_truth(atlas):
    """The point of the phantom: the registration used by Ictus finds the pose."""
    from ictus.imaging.anatomy import register_template
    from ictus.imaging.brain import segment_brain

    render = render_stroke_phantom(StrokePhantomSpec(pose_seed=1, dense_artery_side="right"), atlas)
    volume = render.volume()
    brain = segment_brain(volume)
    anatomy = register_template(volume, brain.brain_mask, atlas, intracranial_mask=brain.intracranial_mask)
    assert anatomy.registered, (anatomy.quality_dice, anatomy.quality_ncc)
    mask = sitk.GetArrayViewFromImage(atlas.brain_mask)
    idx = np.argwhere(mask[::6, ::6, ::6] > 0) * 6
    mni = np.array([atlas.brain_mask.TransformIndexToPhysicalPoint(tuple(int(v) for v in p[::-1])) for p in idx])
    m = render.pose.mni_to_patient
    error = np.linalg.norm(anatomy.to_template(mni @ m[:3, :3].T + m[:3, 3]) - mni, axis=1)
    assert error.mean() < 3.0, error.mean()


def test_pose_is_random_by_seed_and_overridable(atlas):
    a = render_stroke_phantom(StrokePhantomSpec(pose_seed=5, matrix=64, pixel_spacing_mm=3.0), atlas)
    b = render_stroke_phantom(StrokePhantomSpec(pose_seed=6, matrix=64, pixel_spacing_mm=3.0), atlas)
    assert a.pose.rotation_deg != b.pose.rotation_deg
    assert all(0.92 <= s <= 1.08 for s in a.pose.scale)
    fixed = render_stroke_phantom(StrokePhantomSpec(rotation_deg=(0, 0, 0), translation_mm=(0, 0, 0),
                                                    scale=(1, 1, 1), matrix=64, pixel_spacing_mm=3.0), atlas)
    assert np.allclose(fixed.pose.mni_to_patient[:3, :3], np.eye(3))


def test_bad_specs_are_refused():
    with pytest.raises(InvalidInputError, match="unknown ASPECTS region"):
        StrokePhantomSpec(ischaemia_regions=("M9",)).validated()
    with pytest.raises(InvalidInputError, match="both acutely ischaemic and an old infarct"):
        StrokePhantomSpec(ischaemia_regions=("M2",), old_infarct_regions=("M2",), old_infarct_side="left").validated()
    with pytest.raises(InvalidInputError, match="scale"):
        StrokePhantomSpec(scale=(1.3, 1.0, 1.0)).validated()
    assert expected_aspects(StrokePhantomSpec(ischaemia_regions=("M1", "M2"), ischaemia_side="right")) == \
        {"left": 10, "right": 8}
    assert expected_aspects(StrokePhantomSpec(ischaemia_regions=("M1",), ischaemia_drop_hu=0.0))["left"] == 10


def test_cli_writes_a_stroke_study_and_its_truth(tmp_path, cli_runner, atlas):
    out = tmp_path / "cli"
    code, stdout, stderr = cli_runner(
        "phantom", out, "--stroke", "--atlas-dir", STROKE_DIR, "--lobar-atlas-dir", LOBAR_DIR,
        "--ischaemia-regions", "M2,IC,LN", "--ischaemia-side", "left", "--ischaemia-drop-hu", "6",
        "--dense-artery", "left", "--dense-artery-hu", "55", "--dense-artery-length-mm", "15",
        "--old-infarct", "M3", "--old-infarct-side", "right", "--pose-seed", "7", "--slice-thickness-mm", "5",
        "--gantry-tilt-deg", "10", "--matrix", "128", "--pixel-spacing-mm", "1.8", "--noise-hu", "3")
    assert code == 0, stderr
    assert "left: ASPECTS 7" in stdout and "right: ASPECTS 10" in stdout
    truth = json.loads((out / "ground_truth.json").read_text())
    assert truth["spec"]["pose_seed"] == 7 and truth["noise_sigma_hu"] == 3.0
    assert truth["dense_artery"]["side"] == "left" and truth["old_infarct"]["regions"] == ["M3"]
    assert truth["geometry"]["rows"] == 128 and truth["geometry"]["gantry_tilt_deg"] == 10.0
    assert "gantry_tilt_corrected" in _read(out / "series-002-axial").qc_flags
    # stroke options need --stroke; geometric ones are refused with it
    code, _, stderr = cli_runner("phantom", tmp_path / "x", "--ischaemia-regions", "M2")
    assert code == 2 and "--stroke" in stderr
    code, _, stderr = cli_runner("phantom", tmp_path / "y", "--stroke", "--atlas-dir", STROKE_DIR,
                                 "--haemorrhage", "IPH")
    assert code == 2 and "--haemorrhage" in stderr
    code, _, stderr = cli_runner("phantom", tmp_path / "z", "--stroke", "--atlas-dir", tmp_path)
    assert code == 5 and "stroke atlas" in stderr
