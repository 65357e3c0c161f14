"""Tests for ``ictus volume``: output file, summary line, exit codes."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ictus.imaging.build import build_volume
from tests.conftest import shared_dicom


@pytest.fixture(scope="module")
def phantom_study(tmp_path_factory):
    phantom = pytest.importorskip("ictus.imaging.phantom")
    out = tmp_path_factory.mktemp("phantom") / "study"
    spec = phantom.PhantomSpec(matrix=64, pixel_spacing_mm=3.5, gantry_tilt_deg=15.0, with_scout=True)
    written = phantom.write_phantom(spec, out)
    return out, written


def test_volume_writes_the_chosen_series(cli_runner, phantom_study, tmp_path):
    study, written = phantom_study
    out = tmp_path / "nested" / "vol.nii.gz"
    code, stdout, stderr = cli_runner("volume", study, "-o", out)
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and "gantry_tilt_corrected" in lines[0] and str(out) in lines[0]
    assert sorted(p.name for p in out.parent.iterdir()) == ["vol.nii.gz"]  # no temporary left behind

    # The file holds what build_volume gives for the axial series (the scout is not chosen).
    expected = build_volume(sorted(written.series_dir.glob("*.dcm")))
    image = sitk.ReadImage(str(out))
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == expected.image.GetSize()
    assert np.allclose(image.GetSpacing(), expected.image.GetSpacing(), atol=1e-4)
    assert np.allclose(image.GetOrigin(), expected.image.GetOrigin(), atol=1e-3)
    assert np.allclose(image.GetDirection(), expected.image.GetDirection(), atol=1e-5)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), expected.array())


def test_volume_series_option_builds_the_named_series(cli_runner, phantom_study, tmp_path):
    study, written = phantom_study
    import pydicom

    axial_uid = pydicom.dcmread(next(written.series_dir.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
    out = tmp_path / "vol.nii"
    code, stdout, stderr = cli_runner("volume", study, "-o", out, "--series", axial_uid)
    assert code == 0, stderr
    assert out.exists()
    # The scout is a single slice: naming it gets a one-line refusal, exit 4.
    scouts = [p for p in study.rglob("*.dcm") if p.parent != written.series_dir]
    if scouts:
        scout_uid = pydicom.dcmread(scouts[0], stop_before_pixels=True).SeriesInstanceUID
        code, _, stderr = cli_runner("volume", study, "-o", tmp_path / "scout.nii.gz", "--series", scout_uid)
        assert code == 4 and stderr.count("\n") == 1 and "Traceback" not in stderr


def test_volume_unknown_series_is_refused(cli_runner, phantom_study, tmp_path):
    study, _ = phantom_study
    code, _, stderr = cli_runner("volume", study, "-o", tmp_path / "v.nii.gz", "--series", "1.2.3.4")
    assert code == 4
    assert "1.2.3.4" in stderr and "Traceback" not in stderr


def test_volume_missing_input_exit_4(cli_runner, tmp_path):
    code, _, stderr = cli_runner("volume", tmp_path / "absent", "-o", tmp_path / "v.nii.gz")
    assert code == 4
    assert stderr.startswith("ictus: error:") and stderr.count("\n") == 1


def test_volume_empty_folder_is_refused(cli_runner, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, stderr = cli_runner("volume", tmp_path / "empty", "-o", tmp_path / "v.nii.gz")
    assert code in (3, 4)
    assert "Traceback" not in stderr and stderr.count("\n") == 1


def test_volume_unwritable_output_exit_6(cli_runner, phantom_study, tmp_path):
    study, _ = phantom_study
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, stderr = cli_runner("volume", study, "-o", blocker / "vol.nii.gz")
    assert code == 6 and "Traceback" not in stderr
    code, _, stderr = cli_runner("volume", study, "-o", tmp_path / "vol.png")
    assert code == 6 and ".nii.gz" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_volume_replaces_an_existing_output(cli_runner, phantom_study, tmp_path):
    study, _ = phantom_study
    out = tmp_path / "vol.nii.gz"
    out.write_bytes(b"old")
    code, _, stderr = cli_runner("volume", study, "-o", out)
    assert code == 0, stderr
    assert sitk.ReadImage(str(out)).GetDimension() == 3


def test_volume_real_tilted_head(cli_runner, tmp_path):
    folder = shared_dicom("ge-head-tilt-variable-spacing")
    out = tmp_path / "ge.nii.gz"
    code, stdout, stderr = cli_runner("volume", folder, "-o", out)
    assert code == 0, stderr
    assert "gantry_tilt_corrected" in stdout and "variable_spacing_resampled" in stdout
    image = sitk.ReadImage(str(out))
    assert 3.9 < image.GetSpacing()[2] < 4.1


def test_ingest_load_volume_matches_the_triage_one(phantom_study):
    """``ictus volume``'s light ingest (ictus.imaging.ingest) gives what the triage pipeline's gives."""
    from ictus.imaging.ingest import load_volume as light
    from ictus.pipelines.triage import load_volume as full

    study, _ = phantom_study
    (a, choice_a), (b, choice_b) = light(study), full(study)
    assert choice_a.chosen.key == choice_b.chosen.key
    assert [c.key for c in choice_a.candidates] == [c.key for c in choice_b.candidates]
    assert a.image.GetSize() == b.image.GetSize() and a.image.GetOrigin() == b.image.GetOrigin()
    assert a.image.GetSpacing() == b.image.GetSpacing() and a.image.GetDirection() == b.image.GetDirection()
    assert np.array_equal(a.array_view(), b.array_view())
    assert (a.qc_flags, a.source_slices, a.acquisition) == (b.qc_flags, b.source_slices, b.acquisition)
