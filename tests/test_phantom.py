"""Tests of the synthetic head-CT phantom (ictus.imaging.phantom and ``ictus phantom``).

Small grids (128 x 128 at 1.8 mm) keep them fast. The DICOM output is checked
with readers nobody here wrote: pydicom, SimpleITK's ImageSeriesReader and the
dcm2niix converter (PyPI), including dcm2niix's own gantry-tilt correction.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ictus.imaging import phantom as ph
from ictus.imaging.errors import InvalidInputError, OutputError
from ictus.imaging.phantom import LABELS, TISSUES, PhantomSpec

SMALL = dict(matrix=128, pixel_spacing_mm=1.8)


def small(**kw) -> PhantomSpec:
    return PhantomSpec(**{**SMALL, **kw})


def read_series(folder: Path) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """pydicom datasets sorted by z and their HU (slope/intercept applied)."""
    dss = sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss]).astype(np.float32)
    return dss, hu


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def dcm2niix_exe() -> str:
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    if not Path(exe).exists():
        pytest.skip("dcm2niix (PyPI) is not installed")
    return exe


# ---------------------------------------------------------------------------
# Spec validation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    dict(haemorrhage="SAH"),
    dict(haemorrhage="IPH", haemorrhage_side="both"),
    dict(midline_shift_mm=-3),
    dict(gantry_tilt_deg=50),
    dict(compression="jpeg-lossy"),
    dict(oedema_rim_mm=3),  # oedema needs an IPH
    dict(haemorrhage="EAH", haemorrhage_location="thalamus"),
    dict(matrix=4),
])
def test_bad_spec_is_refused(kw):
    with pytest.raises(InvalidInputError, match="phantom:"):
        PhantomSpec(**kw).validated()


def test_haemorrhage_that_cannot_fit_is_refused():
    with pytest.raises(InvalidInputError, match="does not fit"):
        ph.render_phantom(small(haemorrhage="IVH", haemorrhage_volume_ml=190, haemorrhage_side="left"))


# ---------------------------------------------------------------------------
# Volumes, sides and places
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["IPH", "EAH", "IVH"])
@pytest.mark.parametrize("volume_ml", [5, 15, 30, 60])
def test_haemorrhage_volume_on_grid(kind, volume_ml):
    r = ph.render_phantom(small(haemorrhage=kind, haemorrhage_volume_ml=volume_ml, noise_hu=0))
    truth = ph.ground_truth(r)
    vox_ml = r.geometry.voxel_volume_ml
    count_ml = float((r.labels == LABELS[kind]).sum() * vox_ml)
    assert truth["volumes_ml"][kind]["nominal_ml"] == volume_ml
    assert truth["volumes_ml"][kind]["on_grid_ml"] == pytest.approx(count_ml)
    # fraction-weighted volume on the written grid: the phantom really holds the requested blood
    assert truth["volumes_ml"][kind]["on_grid_partial_volume_ml"] == pytest.approx(volume_ml, rel=0.03)
    # voxel count (what a segmentation measures): thin layers lose a little on 5 mm slices
    assert count_ml == pytest.approx(volume_ml, rel=0.05 if volume_ml >= 15 else 0.13)
    assert truth["haemorrhage"]["scanned_fraction"] == 1.0
    # no other class, and the blood is dense
    others = [v for n, v in LABELS.items() if v and n != kind]
    assert not np.isin(r.labels, others).any()
    inside = r.labels == LABELS[kind]
    assert np.median(r.hu[inside]) > 55
    # side: default right for IPH/EAH (patient right = -x), both for IVH
    cx = truth["haemorrhage"]["centroid_lps_mm"][0]
    if kind == "IVH":
        assert truth["haemorrhage"]["hemisphere"] == "bilateral"
        assert abs(cx) < 2.0
    else:
        assert truth["haemorrhage"]["hemisphere"] == "right" and cx < -10


def test_haemorrhage_places():
    # IPH: in parenchyma, away from the ventricles
    r = ph.render_phantom(small(haemorrhage="IPH", haemorrhage_volume_ml=20, haemorrhage_side="left", noise_hu=0))
    base = ph.render_phantom(small(noise_hu=0))
    blood = r.labels == LABELS["IPH"]
    assert np.isin(base.tissue[blood], ph.PARENCHYMA_TISSUES).mean() > 0.97
    assert ph.ground_truth(r)["haemorrhage"]["centroid_lps_mm"][0] > 10  # patient left = +x
    # EAH: a crescent against the inner table (next to bone), not in the ventricles
    r = ph.render_phantom(small(haemorrhage="EAH", haemorrhage_volume_ml=30, noise_hu=0))
    blood = r.labels == LABELS["EAH"]
    from scipy.ndimage import binary_dilation

    bone = base.tissue == TISSUES["cortical_bone"]
    assert (blood & binary_dilation(bone, iterations=2)).sum() > 0.2 * blood.sum()
    assert not np.isin(base.tissue[blood], ph.VENTRICLE_TISSUES).any()
    # IVH on one side: in that lateral ventricle, in its dependent (posterior, +y) part
    r = ph.render_phantom(small(haemorrhage="IVH", haemorrhage_volume_ml=5, haemorrhage_side="left", noise_hu=0))
    blood = r.labels == LABELS["IVH"]
    no_blood = ph.render_phantom(small(noise_hu=0, haemorrhage="IVH", haemorrhage_volume_ml=0.05,
                                       haemorrhage_side="left"))
    assert (no_blood.tissue[blood] == TISSUES["lateral_ventricle_left"]).mean() > 0.8
    ventricle = no_blood.tissue == TISSUES["lateral_ventricle_left"]
    rows = np.nonzero(blood)[1].mean(), np.nonzero(ventricle)[1].mean()
    assert rows[0] > rows[1]  # row index grows towards posterior


def test_large_ivh_dilates_the_ventricles():
    r = ph.render_phantom(small(haemorrhage="IVH", haemorrhage_volume_ml=60, noise_hu=0))
    truth = ph.ground_truth(r)
    assert truth["ventricle_dilation_factor"] > 1.5
    assert truth["lateral_ventricles_volume_ml"] >= 60 / 0.8 * 0.98


def test_partly_scanned_haemorrhage_is_reported():
    # thin slices over 60 mm from the vertex cut through a basal-ganglia IPH
    r = ph.render_phantom(small(haemorrhage="IPH", haemorrhage_volume_ml=30, slice_thickness_mm=2.0,
                                z_coverage_mm=70, noise_hu=0))
    truth = ph.ground_truth(r)
    fraction = truth["haemorrhage"]["scanned_fraction"]
    assert 0.05 < fraction < 0.95
    assert truth["volumes_ml"]["IPH"]["on_grid_partial_volume_ml"] == pytest.approx(30 * fraction, rel=0.05)


def test_oedema_rim_is_labelled_around_the_iph():
    r = ph.render_phantom(small(haemorrhage="IPH", haemorrhage_volume_ml=15, oedema_rim_mm=4, noise_hu=0))
    truth = ph.ground_truth(r)
    assert truth["volumes_ml"]["oedema"]["on_grid_ml"] > 5
    assert truth["volumes_ml"]["oedema"]["nominal_ml"] == pytest.approx(
        truth["volumes_ml"]["oedema"]["on_grid_partial_volume_ml"], rel=0.05)
    oedema = r.labels == LABELS["oedema"]
    assert 10 < float(np.median(r.hu[oedema])) < 30


def test_realistic_sizes_and_densities():
    r = ph.render_phantom(PhantomSpec(noise_hu=0, matrix=256, pixel_spacing_mm=0.9))
    truth = ph.ground_truth(r)
    assert 1000 < truth["brain_volume_ml"] < 1500
    assert 1200 < truth["intracranial_volume_ml"] < 1600
    head = r.tissue > 0
    cols = np.nonzero(head.any(axis=(0, 1)))[0]
    rows = np.nonzero(head.any(axis=(0, 2)))[0]
    width_mm = (cols[-1] - cols[0] + 1) * 0.9
    length_mm = (rows[-1] - rows[0] + 1) * 0.9
    assert 140 < width_mm < 165 and 175 < length_mm < 200
    slab_mid = r.geometry.n_slices // 2
    t, hu = r.tissue[slab_mid - 3: slab_mid + 3], r.hu[slab_mid - 3: slab_mid + 3]
    assert 36 < np.median(hu[t == TISSUES["grey_matter"]]) <= 42
    assert 24 < np.median(hu[t == TISSUES["white_matter"]]) < 31
    assert np.percentile(hu[t == TISSUES["cortical_bone"]], 75) > 1000
    assert np.median(hu[t == TISSUES["lateral_ventricle_left"]]) < 12
    assert np.median(hu[t == TISSUES["fat"]]) < -50
    # a child has a smaller head
    child = ph.ground_truth(ph.render_phantom(small(patient_age_years=2, noise_hu=0)))
    assert child["intracranial_volume_ml"] < 0.75 * truth["intracranial_volume_ml"]


@pytest.mark.parametrize("kind,location", [("IPH", "lobar-parietal"), ("EAH", "convexity"), ("IVH", None)])
def test_detailed_anatomy_keeps_the_truth_exact(kind, location):
    spec = small(detailed_anatomy=True, haemorrhage=kind, haemorrhage_volume_ml=20, haemorrhage_location=location,
                 noise_hu=0, patient_age_years=75)
    r = ph.render_phantom(spec)
    truth = ph.ground_truth(r)
    assert truth["volumes_ml"][kind]["on_grid_partial_volume_ml"] == pytest.approx(20, rel=0.03)
    assert (r.labels == LABELS[kind]).sum() * r.geometry.voxel_volume_ml == pytest.approx(20, rel=0.06)
    plain = ph.ground_truth(ph.render_phantom(small(noise_hu=0, patient_age_years=75)))
    # sulci take CSF out of the parenchyma; the skull and intracranial space are unchanged
    assert 0.8 * plain["brain_volume_ml"] < truth["brain_volume_ml"] < 0.97 * plain["brain_volume_ml"]
    assert truth["intracranial_volume_ml"] == pytest.approx(plain["intracranial_volume_ml"], rel=0.01)
    # the headrest lies behind the head, apart from it, in the scanner frame
    rest = r.tissue == TISSUES["headrest"]
    assert np.median(r.hu[rest]) > 150
    from scipy.ndimage import binary_dilation

    head = (r.tissue > 0) & ~rest
    assert rest.sum() > 100 and not (binary_dilation(head, iterations=3) & rest).any()
    centre_row = np.nonzero(rest[:, :, 64].any(axis=0))[0]  # in the midline the headrest is below (posterior to) the head
    assert centre_row.min() > np.nonzero(head[:, :, 64].any(axis=0))[0].max()


# ---------------------------------------------------------------------------
# Midline shift
# ---------------------------------------------------------------------------
def _third_ventricle_x_mm(r: ph.PhantomRender) -> float:
    """Centroid x (LPS mm) of the third ventricle in the tissue map."""
    k, j, i = np.nonzero(r.tissue == TISSUES["third_ventricle"])
    g = r.geometry
    return float(g.image_positions_patient[0][0] + i.mean() * g.pixel_spacing_mm[1])


def _septum_x_mm_from_hu(r: ph.PhantomRender) -> float:
    """Septum position from the HU map alone: the midpoint between the two dark lateral ventricles."""
    from scipy.ndimage import label

    g = r.geometry
    xs = g.image_positions_patient[0][0] + np.arange(g.columns) * g.pixel_spacing_mm[1]
    mids = []
    for k in range(r.geometry.n_slices):
        z = g.image_positions_patient[k][2]
        if not 8 <= z <= 20:
            continue
        dark = (r.hu[k] < 15) & (np.abs(xs)[None, :] < 30)
        lab, n = label(dark)
        sizes = np.bincount(lab.ravel())[1:]
        if n < 2:
            continue
        a, b = np.argsort(sizes)[-2:] + 1
        xa, xb = xs[np.nonzero(lab == a)[1]].mean(), xs[np.nonzero(lab == b)[1]].mean()
        mids.append((xa + xb) / 2)
    assert mids, "no slice shows both lateral ventricles"
    return float(np.median(mids))


@pytest.mark.parametrize("shift_mm", [0, 3, 6, 10, 15])
def test_midline_shift_moves_midline_structures_not_the_skull(shift_mm):
    spec = PhantomSpec(matrix=200, pixel_spacing_mm=0.9, noise_hu=0, midline_shift_mm=shift_mm,
                       haemorrhage="IPH", haemorrhage_volume_ml=15, haemorrhage_location="lobar-frontal")
    r = ph.render_phantom(spec)
    truth = ph.ground_truth(r)
    # lesion on the right -> the midline moves towards the patient's left (+x, positive sign)
    assert truth["midline_shift_signed_mm"] == shift_mm
    assert truth["midline_shift_direction"] == (None if shift_mm == 0 else "left")
    assert _third_ventricle_x_mm(r) == pytest.approx(shift_mm, abs=0.5)
    assert _septum_x_mm_from_hu(r) == pytest.approx(shift_mm, abs=1.0)
    # the skull (and scalp) stay mirror-symmetric about x = 0 (the grid is centred on x = 0)
    bone = r.tissue == TISSUES["cortical_bone"]
    assert (bone == bone[:, :, ::-1]).mean() > 0.9999


def test_midline_shift_direction_option():
    r = ph.render_phantom(small(midline_shift_mm=5, midline_shift_direction="right", noise_hu=0))
    truth = ph.ground_truth(r)
    assert truth["midline_shift_signed_mm"] == -5 and truth["midline_shift_direction"] == "right"
    assert _third_ventricle_x_mm(r) < -3


def test_rotated_and_offset_head_keeps_shift_relative_to_its_midsagittal_plane():
    spec = PhantomSpec(matrix=200, pixel_spacing_mm=0.9, noise_hu=0, midline_shift_mm=6, head_yaw_deg=8,
                       head_roll_deg=4, head_offset_mm=(5, -8, 3), haemorrhage="IVH", haemorrhage_volume_ml=10)
    r = ph.render_phantom(spec)
    truth = ph.ground_truth(r)
    normal = np.array(truth["midsagittal_plane"]["normal_lps"])
    point = np.array(truth["midsagittal_plane"]["point_lps_mm"])
    assert normal @ [1, 0, 0] == pytest.approx(np.cos(np.radians(8)) * np.cos(np.radians(4)), abs=1e-6)

    def lps(mask):
        k, j, i = np.nonzero(mask)
        return (r.geometry.affine @ np.stack([i, j, k, np.ones_like(i)]).astype(float))[:3].T

    third = lps(r.tissue == TISSUES["third_ventricle"]).mean(axis=0)
    assert (third - point) @ normal == pytest.approx(6.0, abs=0.5)
    bone = lps(r.tissue == TISSUES["cortical_bone"])
    assert abs(((bone - point) @ normal).mean()) < 0.5  # the skull is symmetric about the plane
    # the IVH fluid level stays horizontal in the scanner (supine): blood lies at the largest y of each ventricle
    blood = lps(r.labels == LABELS["IVH"])
    assert truth["volumes_ml"]["IVH"]["on_grid_partial_volume_ml"] == pytest.approx(10, rel=0.03)
    assert np.allclose(truth["haemorrhage"]["centroid_lps_mm"], blood.mean(axis=0), atol=1.5)


# ---------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------
def test_noise_sigma_in_homogeneous_white_matter():
    from scipy.ndimage import binary_erosion

    r = ph.render_phantom(PhantomSpec(matrix=256, pixel_spacing_mm=0.9, noise_hu=5.0, seed=3))
    wm = binary_erosion(r.tissue == TISSUES["white_matter"], iterations=3)
    # one slab far from partial volume in z: compare with its neighbours' tissue too
    wm &= np.roll(r.tissue, 1, axis=0) == TISSUES["white_matter"]
    wm &= np.roll(r.tissue, -1, axis=0) == TISSUES["white_matter"]
    assert wm.sum() > 5000
    assert float(r.hu[wm].std()) == pytest.approx(5.0, rel=0.1)
    quiet = ph.render_phantom(PhantomSpec(matrix=256, pixel_spacing_mm=0.9, noise_hu=0.0))
    assert float(quiet.hu[wm].std()) < 0.5


def test_same_seed_same_pixels_other_seed_other_noise():
    a = ph.render_phantom(small(seed=1, n_slices=3)).hu
    b = ph.render_phantom(small(seed=1, n_slices=3)).hu
    c = ph.render_phantom(small(seed=2, n_slices=3)).hu
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ---------------------------------------------------------------------------
# DICOM output
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "study"
    spec = small(haemorrhage="IPH", haemorrhage_volume_ml=30, midline_shift_mm=6, with_scout=True, seed=7)
    return spec, ph.write_phantom(spec, out)


def test_dicom_reads_back_with_pydicom(written):
    spec, w = written
    files = sorted(w.series_dir.glob("*.dcm"))
    assert [f.name for f in files] == [f"CT{k:04d}.dcm" for k in range(1, len(files) + 1)]
    dss, hu = read_series(w.series_dir)
    r = ph.render_phantom(spec)
    assert len(dss) == r.geometry.n_slices
    np.testing.assert_allclose(hu, r.hu, atol=0.51)  # stored values are rounded HU
    d = dss[0]
    assert d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
    assert list(d.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert d.Modality == "CT" and str(d.PatientName) == "PHANTOM^GEOMETRIC" and d.PatientID
    assert d.ConvolutionKernel == "STANDARD" and float(d.KVP) == 120
    assert float(d.SliceThickness) == 5.0 and [float(v) for v in d.PixelSpacing] == [1.8, 1.8]
    assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert "ContrastBolusAgent" not in d
    assert len({x.SOPInstanceUID for x in dss}) == len(dss)
    assert len({x.SeriesInstanceUID for x in dss}) == 1
    z = [float(x.ImagePositionPatient[2]) for x in dss]
    assert np.allclose(np.diff(z), 5.0)
    truth = json.loads(w.ground_truth_path.read_text())
    assert truth["uids"]["study_instance_uid"] == d.StudyInstanceUID
    assert truth["uids"]["series_instance_uid"] == d.SeriesInstanceUID
    assert truth["uids"]["sop_instance_uids"] == [x.SOPInstanceUID for x in dss]
    # the scout: its own series, same study and frame of reference, a localizer
    scout = pydicom.dcmread(next((w.out_dir / "series-001-scout").glob("*.dcm")))
    assert "LOCALIZER" in scout.ImageType
    assert scout.StudyInstanceUID == d.StudyInstanceUID and scout.SeriesInstanceUID != d.SeriesInstanceUID
    assert scout.FrameOfReferenceUID == d.FrameOfReferenceUID
    assert scout.pixel_array.max() > 1000


def test_dicom_reads_back_with_simpleitk(written):
    spec, w = written
    img = sitk_series(w.series_dir)
    r = ph.render_phantom(spec)
    g = r.geometry
    assert img.GetSize() == (128, 128, g.n_slices)
    np.testing.assert_allclose(img.GetSpacing(), (1.8, 1.8, 5.0), atol=1e-4)
    np.testing.assert_allclose(img.GetOrigin(), g.image_positions_patient[0], atol=1e-4)
    np.testing.assert_allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-6)
    hu = sitk.GetArrayFromImage(img).astype(np.float32)
    brain = np.isin(r.tissue, ph.PARENCHYMA_TISSUES) & (r.labels == 0)
    assert 26 < float(hu[brain].mean()) < 40
    assert np.percentile(hu[r.tissue == TISSUES["cortical_bone"]], 75) > 700
    # the label map lies on the same grid, and its counts are the truth's
    labels = sitk.ReadImage(str(w.labels_path))
    assert labels.GetSize() == img.GetSize()
    np.testing.assert_allclose(labels.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetSpacing(), img.GetSpacing(), atol=1e-4)
    truth = json.loads(w.ground_truth_path.read_text())
    lab = sitk.GetArrayFromImage(labels)
    vox_ml = float(np.prod(img.GetSpacing())) / 1000
    assert (lab == 1).sum() * vox_ml == pytest.approx(truth["volumes_ml"]["IPH"]["on_grid_ml"])
    assert truth["labels_grid"]["kind"] == "dicom"
    # the blood in the label map is dense in the image
    assert np.median(hu[lab == 1]) > 55
    assert truth["midline_shift_signed_mm"] == 6 and truth["haemorrhage"]["hemisphere"] == "right"


def test_dcm2niix_converts_the_series(written, tmp_path):
    spec, w = written
    exe = dcm2niix_exe()
    res = subprocess.run([exe, "-z", "y", "-f", "vol", "-o", str(tmp_path), str(w.series_dir)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "error" not in (res.stdout + res.stderr).lower()
    img = sitk.ReadImage(str(tmp_path / "vol.nii.gz"))
    ours = sitk_series(w.series_dir)
    # same physical grid and values after resampling dcm2niix's (RAS-stored) image onto ours
    back = sitk.Resample(img, ours, sitk.Transform(), sitk.sitkNearestNeighbor, -3000)
    assert np.array_equal(sitk.GetArrayFromImage(back).astype(np.int32), sitk.GetArrayFromImage(ours).astype(np.int32))
    sidecar = json.loads((tmp_path / "vol.json").read_text())
    assert sidecar["SliceThickness"] == 5 and sidecar["Modality"] == "CT"


def test_tilted_phantom_is_a_sheared_stack_that_dcm2niix_corrects(tmp_path):
    # A positive tilt: for negative tilts of manufacturers it does not know, dcm2niix flips the shear
    # (a vendor kludge in nii_saveNII3Dtilt), so its corrected output would not be a fair reference.
    tilt = 20.0
    spec = small(gantry_tilt_deg=tilt, noise_hu=0, haemorrhage="IPH", haemorrhage_volume_ml=15)
    w = ph.write_phantom(spec, tmp_path / "study")
    dss, _ = read_series(w.series_dir)
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    t = np.radians(tilt)
    np.testing.assert_allclose(iop, [1, 0, 0, 0, np.cos(t), -np.sin(t)], atol=1e-6)  # GE sign convention
    assert float(dss[0].GantryDetectorTilt) == tilt
    ipp = np.array([[float(v) for v in d.ImagePositionPatient] for d in dss])
    step = np.diff(ipp, axis=0)
    np.testing.assert_allclose(step[:, :2], 0, atol=1e-5)  # positions advance along the table only
    np.testing.assert_allclose(step[:, 2], 5.0 / np.cos(t), atol=1e-4)
    normal = np.cross(iop[:3], iop[3:])
    assert step[0] @ normal == pytest.approx(5.0, abs=1e-4)  # 5 mm between planes
    assert abs(step[0] @ iop[3:]) > 1.0  # sheared: each slice slides along the columns
    truth = json.loads(w.ground_truth_path.read_text())
    assert truth["labels_grid"]["kind"] == "tilt_corrected"
    labels = sitk.ReadImage(str(w.labels_path))
    vox_ml = float(np.prod(labels.GetSpacing())) / 1000
    assert (sitk.GetArrayFromImage(labels) == 1).sum() * vox_ml == pytest.approx(15, rel=0.06)
    # dcm2niix recognises the tilt from the geometry and its corrected volume matches our analytic phantom
    exe = dcm2niix_exe()
    out = tmp_path / "nii"
    out.mkdir()
    res = subprocess.run([exe, "-z", "y", "-f", "vol", "-o", str(out), str(w.series_dir)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "estimated from slice vector 20" in res.stdout
    img = sitk.ReadImage(str(out / "vol_Tilt_1.nii.gz"))
    theirs = sitk.GetArrayFromImage(img).astype(np.float32)
    hu, lab = ph.sample_phantom(spec, img.GetOrigin(), img.GetSpacing(), img.GetSize(),
                                direction=img.GetDirection(), thickness_mm=5.0)
    inside = (hu > -500) & (theirs > -1500)
    assert np.corrcoef(hu[inside], theirs[inside])[0, 1] > 0.98
    # and our own tilt-corrected label grid is the same grid up to dcm2niix's row flip
    lab_img = sitk.ReadImage(str(w.labels_path))
    assert lab_img.GetSize() == img.GetSize()
    d_ours = np.array(lab_img.GetDirection()).reshape(3, 3)
    d_theirs = np.array(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(np.abs(d_ours), np.abs(d_theirs), atol=1e-6)


def test_variable_spacing_and_gap(tmp_path):
    # a GE-like head: 4 mm then 7 mm contiguous blocks
    spec = small(slice_blocks=((4, 10), (7, 12)), haemorrhage="IPH", haemorrhage_volume_ml=20, noise_hu=0)
    w = ph.write_phantom(spec, tmp_path / "blocks")
    dss, _ = read_series(w.series_dir)
    z = np.array([float(d.ImagePositionPatient[2]) for d in dss])
    np.testing.assert_allclose(np.diff(z), [4] * 9 + [5.5] + [7] * 11, atol=1e-5)
    assert [float(d.SliceThickness) for d in dss] == [4.0] * 10 + [7.0] * 12
    assert "SpacingBetweenSlices" not in dss[0]
    truth = w.truth
    assert truth["geometry"]["regular"] is False and truth["labels_grid"]["kind"] == "uniform_resampled"
    assert truth["volumes_ml"]["IPH"]["on_grid_partial_volume_ml"] == pytest.approx(20, rel=0.03)
    labels = sitk.ReadImage(str(w.labels_path))
    assert labels.GetSpacing()[2] == pytest.approx(4.0)
    assert (sitk.GetArrayFromImage(labels) == 1).sum() * np.prod(labels.GetSpacing()) / 1000 == pytest.approx(20, rel=0.05)
    res = subprocess.run([dcm2niix_exe(), "-f", "v", "-o", str(tmp_path), str(w.series_dir)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Interslice distance varies" in res.stdout
    # a 30 mm gap through a basal-ganglia IPH: part of it is not scanned
    spec = small(gap_after_slice=20, gap_mm=30, haemorrhage="IPH", haemorrhage_volume_ml=30, noise_hu=0)
    w = ph.write_phantom(spec, tmp_path / "gap")
    dss, _ = read_series(w.series_dir)
    steps = np.diff([float(d.ImagePositionPatient[2]) for d in dss])
    assert np.count_nonzero(np.isclose(steps, 35.0)) == 1 and np.count_nonzero(np.isclose(steps, 5.0)) == len(steps) - 1
    assert 0.2 < w.truth["haemorrhage"]["scanned_fraction"] < 0.9


@pytest.mark.parametrize("compression,uid,lossy", [
    ("rle", "1.2.840.10008.1.2.5", False),
    ("jpeg-ls", "1.2.840.10008.1.2.4.80", False),
    ("j2k", "1.2.840.10008.1.2.4.90", False),
    ("j2k-lossy", "1.2.840.10008.1.2.4.91", True),
])
@pytest.mark.parametrize("unsigned", [False, True])
def test_compressed_variants_decode_to_the_same_hu(tmp_path, compression, uid, lossy, unsigned):
    base = dict(matrix=96, pixel_spacing_mm=2.4, n_slices=3, unsigned_pixels=unsigned, seed=5)
    ref = ph.write_phantom(small(**base), tmp_path / "ref")
    comp = ph.write_phantom(small(**base, compression=compression), tmp_path / compression)
    ref_ds, ref_hu = read_series(ref.series_dir)
    dss, hu = read_series(comp.series_dir)
    assert all(d.file_meta.TransferSyntaxUID == uid for d in dss)
    assert dss[0].PixelRepresentation == (0 if unsigned else 1)
    if lossy:
        assert dss[0].LossyImageCompression == "01"
        assert dss[0].LossyImageCompressionMethod == "ISO_15444_1"
        assert 0 < np.abs(hu - ref_hu).mean() < 10
    else:
        assert dss[0].get("LossyImageCompression", "00") == "00"
        assert np.array_equal(hu, ref_hu)
    # SimpleITK (GDCM) decodes them too
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk_series(comp.series_dir)), hu, atol=0.01)


@pytest.mark.parametrize("compression", ["none", "jpeg-ls"])
def test_multiframe_holds_the_same_frames(tmp_path, compression):
    base = dict(matrix=96, pixel_spacing_mm=2.4, n_slices=6, gantry_tilt_deg=12, seed=2, compression=compression)
    single = ph.write_phantom(small(**base), tmp_path / "single")
    multi = ph.write_phantom(small(**base, multiframe=True), tmp_path / "multi")
    files = list(multi.series_dir.glob("*.dcm"))
    assert len(files) == 1 and multi.n_files == 1
    mf = pydicom.dcmread(files[0])
    assert mf.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.2" and int(mf.NumberOfFrames) == 6
    assert mf.SOPInstanceUID == multi.truth["uids"]["multiframe_sop_instance_uid"]
    frames = mf.PerFrameFunctionalGroupsSequence
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in frames]
    order = np.argsort(z)
    shared = mf.SharedFunctionalGroupsSequence[0]
    pvt = (frames[0].get("PixelValueTransformationSequence") or shared.PixelValueTransformationSequence)[0]
    hu = mf.pixel_array[order] * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)
    dss, ref = read_series(single.series_dir)
    assert np.array_equal(hu, ref)
    np.testing.assert_allclose(np.sort(z), [float(d.ImagePositionPatient[2]) for d in dss], atol=1e-4)
    iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    np.testing.assert_allclose(iop, [float(v) for v in dss[0].ImageOrientationPatient], atol=1e-6)
    res = subprocess.run([dcm2niix_exe(), "-f", "v", "-o", str(tmp_path), str(multi.series_dir)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "error" not in (res.stdout + res.stderr).lower()


def test_contrast_phantom_has_dense_vessels_and_says_so(tmp_path):
    spec = small(contrast=True, n_slices=20, noise_hu=0)
    r = ph.render_phantom(spec)
    assert (r.tissue == TISSUES["artery"]).any()
    assert np.median(r.hu[r.tissue == TISSUES["venous_sinus"]]) > 150
    plain = ph.render_phantom(small(n_slices=20, noise_hu=0))
    assert np.median(plain.hu[plain.tissue == TISSUES["venous_sinus"]]) < 60  # partial volume with bone aside
    w = ph.write_phantom(spec, tmp_path / "c")
    d = pydicom.dcmread(next(w.series_dir.glob("*.dcm")))
    assert d.ContrastBolusAgent and json.loads(w.ground_truth_path.read_text())["contrast"] is True


def test_metal_artefact_streaks_only_the_slices_with_the_clip():
    spec = small(metal_artefact=True, noise_hu=0)
    r = ph.render_phantom(spec)
    truth = ph.ground_truth(r)
    m = truth["metal_artefact"]
    affected = m["slices_affected"]
    with_metal = set((r.tissue == TISSUES["metal"]).any(axis=(1, 2)).nonzero()[0].tolist())
    assert with_metal and with_metal <= set(affected) and len(affected) <= 3
    assert m["centre_lps_mm"][0] < -30  # patient right
    plain = ph.render_phantom(small(noise_hu=0))
    brain = np.isin(plain.tissue, ph.PARENCHYMA_TISSUES)
    strongest = max(np.percentile(np.abs(r.hu[k] - plain.hu[k])[brain[k]], 90) for k in affected)
    assert strongest > 20  # streaks across the brain
    for k in range(r.geometry.n_slices):
        if k in affected:
            assert np.abs(r.hu[k] - plain.hu[k])[brain[k]].max() > 5
        else:
            assert np.array_equal(r.hu[k], plain.hu[k])
    assert ph.ground_truth(plain)["metal_artefact"] is None


def test_uids_are_deterministic_and_differ_between_specs():
    a = ph.phantom_uids(small(seed=1), 3)
    assert a == ph.phantom_uids(small(seed=1), 3)
    b = ph.phantom_uids(small(seed=2), 3)
    assert a["study_instance_uid"] != b["study_instance_uid"]
    assert len(set(a["sop_instance_uids"])) == 3
    from pydicom.uid import UID

    assert all(UID(u).is_valid for u in a["sop_instance_uids"])


def test_refuses_non_empty_folder_and_writes_atomically(tmp_path, monkeypatch):
    out = tmp_path / "study"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    spec = small(n_slices=2)
    with pytest.raises(OutputError, match="not empty"):
        ph.write_phantom(spec, out)
    assert (out / "keep.txt").exists()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ph.dicom, "_slice_dataset", boom)
    with pytest.raises(OutputError, match="cannot write"):
        ph.write_phantom(spec, out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study"]  # no temporary folder left
    assert (out / "keep.txt").exists()  # the old content is untouched
    monkeypatch.undo()
    w = ph.write_phantom(spec, out, force=True)
    assert not (out / "keep.txt").exists() and w.n_files == 2


def test_phantom_volume_for_other_modules():
    vol, truth = ph.phantom_with_truth(small(haemorrhage="EAH", haemorrhage_volume_ml=15, n_slices=30))
    assert vol.size == (128, 128, 30)
    assert vol.spacing_mm == pytest.approx((1.8, 1.8, 5.0))
    assert vol.acquisition.source_format == "phantom" and vol.acquisition.slice_thickness_mm == 5.0
    assert truth["volumes_ml"]["EAH"]["nominal_ml"] == 15
    labels = truth.labels
    assert labels.shape == vol.array().shape
    assert (labels == LABELS["EAH"]).sum() * vol.voxel_volume_ml == pytest.approx(15, rel=0.06)
    with pytest.raises(InvalidInputError):
        ph.phantom_volume(small(gantry_tilt_deg=10))


def test_phantom_volume_carries_no_truth_and_matches_the_render():
    spec = small(haemorrhage="IPH", haemorrhage_volume_ml=10, n_slices=12)
    vol = ph.phantom_volume(spec)
    vol2, truth = ph.phantom_with_truth(spec)
    np.testing.assert_array_equal(vol.array(), vol2.array())
    np.testing.assert_array_equal(vol.array(), ph.render_phantom(spec).hu)
    assert not hasattr(vol, "header") and vol.acquisition.patient_age_years == spec.patient_age_years
    assert truth.labels.shape == vol.array().shape and truth["haemorrhage"]["type"] == "IPH"


def test_head_hu_is_deterministic_and_centred():
    hu, labels = ph.head_hu((40, 48, 44), (4.0, 4.0, 4.0), haemorrhage_ml=20.0, seed=1)
    hu2, _ = ph.head_hu((40, 48, 44), (4.0, 4.0, 4.0), haemorrhage_ml=20.0, seed=1)
    np.testing.assert_array_equal(hu, hu2)
    assert hu.dtype == np.float32 and hu.shape == labels.shape == (40, 48, 44)
    assert (labels == LABELS["IPH"]).sum() * 64 / 1000 == pytest.approx(20.0, rel=0.25)
    x_blood = np.argwhere(labels > 0)[:, 2].mean()
    assert x_blood < (44 - 1) / 2  # the right hemisphere: lower x in LPS
    assert hu[20, 24, 22] < 60 and hu.max() > 1000 and hu.min() < -900  # brain at the centre, skull, air
    none, lab0 = ph.head_hu((20, 24, 22), (8.0, 8.0, 8.0), haemorrhage_ml=0.0)
    assert not lab0.any()


def test_sample_phantom_matches_the_render_on_its_own_grid():
    spec = small(noise_hu=0, haemorrhage="IPH", haemorrhage_volume_ml=10, n_slices=10)
    r = ph.render_phantom(spec)
    g = r.geometry
    hu, lab = ph.sample_phantom(r, g.image_positions_patient[0], (1.8, 1.8, 5.0), (128, 128, 10))
    np.testing.assert_allclose(hu, r.hu, atol=1e-3)
    assert np.array_equal(lab, r.labels)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def test_cli_writes_a_study_and_prints_the_truth(cli_runner, tmp_path):
    out = tmp_path / "study"
    code, stdout, stderr = cli_runner("phantom", out, "--haemorrhage", "IPH", "--haemorrhage-volume-ml", "30",
                                      "--midline-shift-mm", "6", "--matrix", "96", "--pixel-spacing-mm", "2.4",
                                      "--slices", "20")
    assert code == 0, stderr
    assert str(out) in stdout and "IPH right" in stdout and "6 mm towards patient left" in stdout
    truth = json.loads((out / "ground_truth.json").read_text())
    assert truth["spec"]["haemorrhage"] == "IPH" and truth["geometry"]["n_slices"] == 20
    assert len(list((out / "series-002-axial").glob("*.dcm"))) == 20
    # a non-empty folder is refused (exit 6), --force replaces it
    code, _, stderr = cli_runner("phantom", out, "--matrix", "64", "--slices", "2")
    assert code == 6 and "--force" in stderr and "Traceback" not in stderr
    code, stdout, _ = cli_runner("phantom", out, "--matrix", "64", "--slices", "2", "--force", "--json")
    assert code == 0 and json.loads(stdout)["haemorrhage"] is None


def test_cli_bad_input(cli_runner, tmp_path):
    code, _, stderr = cli_runner("phantom", tmp_path / "a", "--haemorrhage", "IVH", "--haemorrhage-volume-ml",
                                 "190", "--haemorrhage-side", "left", "--matrix", "64")
    assert code == 4 and "does not fit" in stderr
    code, _, _ = cli_runner("phantom", tmp_path / "b", "--compression", "zip")
    assert code == 2
    code, _, stderr = cli_runner("phantom", tmp_path / "c", "--haemorrhage", "IPH", "--haemorrhage-side", "both")
    assert code == 2


def test_dciodvfy_finds_no_errors(tmp_path):
    """dicom3tools' IOD validator (Debian package dicom3tools) accepts every variant we write."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    variants = {
        "plain": small(n_slices=2, with_scout=True),
        "tilt-contrast-lossy": small(n_slices=2, gantry_tilt_deg=12, contrast=True, compression="j2k-lossy",
                                     unsigned_pixels=True, patient_age_years=0.5),
        "rle": small(n_slices=2, compression="rle", haemorrhage="IPH", haemorrhage_volume_ml=5),
        "irregular-metal": small(slice_blocks=((4, 2), (7, 2)), metal_artefact=True, detailed_anatomy=True),
        "multiframe": small(n_slices=3, multiframe=True, gantry_tilt_deg=10, compression="rle"),
    }
    for name, spec in variants.items():
        w = ph.write_phantom(spec, tmp_path / name)
        for f in sorted(w.out_dir.rglob("*.dcm")):
            res = subprocess.run([exe, str(f)], capture_output=True, text=True, timeout=60)
            report = res.stdout + res.stderr
            assert "Error" not in report, f"{name}/{f.name}: {report}"
            # Enhanced CT lists other Image Flavors than AXIAL, which the legacy conversion keeps
            warnings = [line for line in report.splitlines() if "Warning" in line and "<AXIAL>" not in line]
            assert not warnings, f"{name}/{f.name}: {report}"


@pytest.mark.parametrize("kind,location", [("IPH", n) for n in ph.IPH_LOCATIONS] + [("EAH", n) for n in ph.EAH_LOCATIONS])
def test_every_named_location_fits_on_the_requested_side(kind, location):
    r = ph.render_phantom(small(haemorrhage=kind, haemorrhage_volume_ml=10, haemorrhage_location=location,
                                haemorrhage_side="left", noise_hu=0, pixel_spacing_mm=2.4, matrix=96))
    truth = ph.ground_truth(r)
    assert truth["volumes_ml"][kind]["on_grid_partial_volume_ml"] == pytest.approx(10, rel=0.05)
    assert truth["haemorrhage"]["hemisphere"] == "left" and truth["haemorrhage"]["centroid_lps_mm"][0] > 5


def test_explicit_centre_in_lps_mm():
    r = ph.render_phantom(small(haemorrhage="IPH", haemorrhage_volume_ml=8, haemorrhage_centre_lps_mm=(-30, 20, 25),
                                noise_hu=0))
    truth = ph.ground_truth(r)
    assert np.allclose(truth["haemorrhage"]["centroid_lps_mm"], (-30, 20, 25), atol=1.5)
    assert truth["haemorrhage"]["hemisphere"] == "right"
    # an EAH towards a point: its thickest part faces that direction
    r = ph.render_phantom(small(haemorrhage="EAH", haemorrhage_volume_ml=15, haemorrhage_centre_lps_mm=(40, 40, 20),
                                noise_hu=0))
    c = np.array(ph.ground_truth(r)["haemorrhage"]["centroid_lps_mm"])
    assert c[0] > 20 and c[1] > 20


def test_cli_rejects_a_malformed_centre(cli_runner, tmp_path):
    code, _, stderr = cli_runner("phantom", tmp_path / "x", "--haemorrhage", "IPH", "--haemorrhage-centre-mm", "1,2")
    assert code == 2 and "three comma-separated numbers" in stderr
