"""Input QC flags (ictus.imaging.qc) on phantoms and real data."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from ictus.imaging.brain import segment_brain
from ictus.imaging.qc import QC_FLAGS, SEVERITIES, assess_qc
from ictus.imaging.volume import volume_from_array
from tests.conftest import shared_dicom

INGEST_FLAGS = ("gantry_tilt_corrected", "variable_spacing_resampled", "lossy_compression", "gap_detected",
                "stale_dicomdir", "duplicate_slices_dropped")


@functools.lru_cache(maxsize=None)
def _phantom(**kwargs):
    from ictus.imaging.phantom import PhantomSpec, phantom_volume

    spec = dict(matrix=160, pixel_spacing_mm=1.25, slice_thickness_mm=5.0, z_coverage_mm=170.0)
    spec.update(kwargs)
    return phantom_volume(PhantomSpec(**spec))


def test_flag_table_is_complete_and_valid():
    required = INGEST_FLAGS + ("contrast_suspected", "incomplete_head_coverage", "thick_slices", "no_brain_found",
                               "paediatric_patient", "streak_or_metal_artefact")
    for name in required:
        assert name in QC_FLAGS
    for spec in QC_FLAGS.values():
        assert spec.severity in SEVERITIES and spec.description
    assert QC_FLAGS["no_brain_found"].severity == "indeterminate"
    assert QC_FLAGS["lossy_compression"].severity == "warning"


def test_clean_phantom_has_no_flags():
    vol = _phantom()
    report = assess_qc(vol, segment_brain(vol))
    assert report.flags == () and report.verdict == "ok"


def test_ingest_flags_are_carried_with_their_severity():
    vol = _phantom().with_flags(*INGEST_FLAGS, "some_future_flag")
    report = assess_qc(vol, segment_brain(vol))
    assert report.names[: len(INGEST_FLAGS) + 1] == INGEST_FLAGS + ("some_future_flag",)
    by_name = {f.name: f for f in report.flags}
    assert by_name["gantry_tilt_corrected"].severity == "info"
    assert by_name["some_future_flag"].severity == "warning"
    assert report.verdict == "warning" and not report.indeterminate


def test_contrast_from_header_and_from_dense_vessels():
    vol = _phantom(contrast=True)
    report = assess_qc(vol, segment_brain(vol))
    assert "contrast_suspected" in report.names and report.indeterminate
    no_header = dataclasses.replace(vol, acquisition=dataclasses.replace(vol.acquisition, contrast_agent=""))
    report = assess_qc(no_header, segment_brain(no_header))
    assert "contrast_suspected" in report.names, report.measurements
    detail = {f.name: f.detail for f in report.flags}["contrast_suspected"]
    assert "HU inside the skull" in detail  # image-based, since the header no longer says so
    assert report.measurements["dense_intracranial_ml"] >= 1.0


def test_incomplete_coverage_thick_slices_and_child():
    vol = _phantom(z_coverage_mm=80.0, slice_thickness_mm=7.0, patient_age_years=8.0)
    report = assess_qc(vol, segment_brain(vol))
    assert {"incomplete_head_coverage", "thick_slices", "paediatric_patient"} <= set(report.names)
    assert report.verdict == "warning"
    adult = assess_qc(vol, segment_brain(vol), patient_age_years=40.0)
    assert "paediatric_patient" not in adult.names


def test_metal_near_the_brain():
    vol = _phantom()
    hu = vol.array()
    nz, ny, nx = hu.shape
    hu[nz // 2, ny // 2 - 2 : ny // 2 + 2, nx // 4 : nx // 4 + 4] = 3071.0  # a clip
    vol = vol.with_array(hu)
    report = assess_qc(vol, segment_brain(vol))
    assert "streak_or_metal_artefact" in report.names


def test_severity_override():
    vol = _phantom(slice_thickness_mm=7.0)
    report = assess_qc(vol, segment_brain(vol), severities={"thick_slices": "indeterminate"})
    assert report.indeterminate
    with pytest.raises(ValueError):
        assess_qc(vol, segment_brain(vol), severities={"thick_slices": "fatal"})


def test_no_brain_is_indeterminate():
    vol = volume_from_array(np.full((10, 40, 40), -1000.0), spacing_mm=(2.0, 2.0, 5.0))
    report = assess_qc(vol, segment_brain(vol))
    assert "no_brain_found" in report.names and report.verdict == "indeterminate"


def test_real_data():
    from ictus.imaging.build import build_volume

    ge = build_volume(sorted(str(p) for p in shared_dicom("ge-head-tilt-variable-spacing").glob("*.dcm")))
    report = assess_qc(ge, segment_brain(ge))
    assert {"gantry_tilt_corrected", "variable_spacing_resampled"} <= set(report.names)
    assert not report.indeterminate, report.flags  # a real non-contrast head: no contrast, brain found
    plastic = build_volume(sorted(str(p) for p in (shared_dicom("philips-head-phantom-tilted") / "S2010").glob("I*")))
    report = assess_qc(plastic, segment_brain(plastic))
    assert "no_brain_found" in report.names and report.indeterminate


def test_thick_slices_are_judged_on_the_source_spacing_after_resampling():
    """Triage analyses the model's 1 mm grid: the thickness check must read the source spacing."""
    import SimpleITK as sitk

    vol = _phantom(slice_thickness_mm=7.0)
    no_header = dataclasses.replace(vol, acquisition=dataclasses.replace(vol.acquisition, slice_thickness_mm=None))
    fine = no_header.with_image(sitk.Resample(no_header.image, [int(n * s) for n, s in zip(vol.image.GetSize(), vol.image.GetSpacing())],
                                              sitk.Transform(), sitk.sitkLinear, vol.image.GetOrigin(), (1.0, 1.0, 1.0),
                                              vol.image.GetDirection(), -1024.0, sitk.sitkFloat32))
    brain = segment_brain(fine)
    assert "thick_slices" not in assess_qc(fine, brain).names  # the 1 mm grid alone looks thin
    report = assess_qc(fine, brain, source_z_spacing_mm=7.0)
    assert "thick_slices" in report.names and report.measurements["slice_thickness_mm"] == pytest.approx(7.0)
