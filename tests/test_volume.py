"""The central type (ictus.imaging.volume): validation, geometry against SimpleITK, the Acquisition record."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from ictus.imaging.volume import Acquisition, Volume, index_to_lps, lps_to_index, volume_from_array

SHAPE_ZYX = (4, 5, 6)
SPACING_MM = (0.45, 0.6, 2.5)
ORIGIN_MM = (-120.0, 35.5, 410.0)


def _oblique_direction() -> tuple[float, ...]:
    """A proper rotation (20 degrees about z, then 15 about x): columns are the index axes in LPS."""
    a, b = np.radians(20.0), np.radians(15.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    return tuple(float(v) for v in (rz @ rx).ravel())


def _volume(**kwargs) -> Volume:
    array = np.arange(np.prod(SHAPE_ZYX), dtype=np.float32).reshape(SHAPE_ZYX) - 1000.0
    return volume_from_array(array, spacing_mm=SPACING_MM, origin_mm=ORIGIN_MM, direction=_oblique_direction(),
                             **kwargs)


# -- with_array ------------------------------------------------------------------------------


def test_with_array_keeps_grid_and_provenance():
    vol = _volume(series_instance_uid="1.2.3", qc_flags=("gap_detected",), acquisition=Acquisition(kernel="H30s"))
    new = vol.with_array(vol.array() + 10.0)
    assert new.image.GetPixelID() == sitk.sitkFloat32
    assert new.image.GetSpacing() == vol.image.GetSpacing()
    assert new.image.GetOrigin() == vol.image.GetOrigin()
    assert new.image.GetDirection() == vol.image.GetDirection()
    assert new.series_instance_uid == "1.2.3" and new.qc_flags == ("gap_detected",)
    assert new.acquisition.kernel == "H30s"
    assert np.array_equal(new.array(), vol.array() + 10.0)
    assert np.array_equal(vol.array()[0, 0, :2], [-1000.0, -999.0])  # the original is unchanged


def test_with_array_stores_integer_input_as_float32():
    vol = _volume()
    new = vol.with_array(np.full(SHAPE_ZYX, 40, dtype=np.int16))
    assert new.image.GetPixelID() == sitk.sitkFloat32
    assert float(new.array()[1, 2, 3]) == 40.0


@pytest.mark.parametrize("shape", [(5, 4, 6), (4, 5, 7), (6, 5, 4)])
def test_with_array_refuses_another_shape(shape):
    with pytest.raises(ValueError, match=r"shape \(4, 5, 6\)"):
        _volume().with_array(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("shape", [(4, 30), (120,), (4, 5, 6, 1)])
def test_with_array_refuses_another_ndim(shape):
    with pytest.raises(ValueError, match="3-D"):
        _volume().with_array(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("dtype", [bool, np.complex64, object, "U3"])
def test_with_array_refuses_non_numeric_dtypes(dtype):
    with pytest.raises(TypeError, match="dtype"):
        _volume().with_array(np.zeros(SHAPE_ZYX, dtype=dtype))


# -- geometry ----------------------------------------------------------------------------------


INDICES_ZYX = np.array([[0, 0, 0], [0, 0, 5], [0, 4, 0], [3, 0, 0], [3, 4, 5], [1, 2, 3], [2, 1, 4]])


def test_index_to_lps_matches_simpleitk_after_a_round_trip(tmp_path):
    vol = _volume()
    # Round trip through SimpleITK: the Volume's image written to disk and read back into a new Volume.
    sitk.WriteImage(vol.image, str(tmp_path / "vol.mha"))
    copy = sitk.ReadImage(str(tmp_path / "vol.mha"))
    back = Volume(image=copy)
    assert np.array_equal(back.array(), vol.array())
    assert np.allclose(back.affine, vol.affine)
    expected = np.array([copy.TransformIndexToPhysicalPoint([int(i) for i in zyx[::-1]]) for zyx in INDICES_ZYX])
    assert np.allclose(vol.index_to_lps(INDICES_ZYX), expected, atol=1e-9)
    assert np.allclose(back.index_to_lps(INDICES_ZYX), expected, atol=1e-9)
    # The affine says the same as the method.
    ijk1 = np.c_[INDICES_ZYX[:, ::-1], np.ones(len(INDICES_ZYX))]
    assert np.allclose((vol.affine @ ijk1.T).T[:, :3], expected, atol=1e-9)


def test_continuous_index_and_inverse():
    vol = _volume()
    zyx = np.array([[0.5, 1.25, 2.75], [3.0, 0.1, 4.9]])
    expected = np.array([vol.image.TransformContinuousIndexToPhysicalPoint([float(v) for v in p[::-1]]) for p in zyx])
    points = vol.index_to_lps(zyx)
    assert np.allclose(points, expected, atol=1e-9)
    assert np.allclose(vol.lps_to_index(points), zyx, atol=1e-9)
    assert np.allclose(lps_to_index(vol.image, points), zyx, atol=1e-9)
    assert np.allclose(index_to_lps(vol.image, zyx[0]), expected[:1], atol=1e-9)  # one index, as (3,)


def test_index_to_lps_is_not_the_identity():
    """Guards the test above: the geometry is non-trivial, so swapped axes or a dropped direction would show."""
    vol = _volume()
    plain = np.asarray(INDICES_ZYX[:, ::-1] * np.array(SPACING_MM) + np.array(ORIGIN_MM))
    assert not np.allclose(vol.index_to_lps(INDICES_ZYX), plain, atol=1e-3)
    assert not np.allclose(vol.index_to_lps(INDICES_ZYX), vol.index_to_lps(INDICES_ZYX[:, ::-1]), atol=1e-3)


# -- acquisition -------------------------------------------------------------------------------


def test_acquisition_defaults_are_unknown():
    acq = Acquisition()
    assert acq.source_format == "" and acq.kernel == "" and acq.manufacturer == "" and acq.model_name == ""
    assert acq.slice_thickness_mm is None and acq.patient_age_years is None and acq.tube_voltage_kvp is None
    assert acq.contrast_agent == "" and not acq.contrast_given
    assert acq.lossy_compression is False and acq.source_slice_count is None
    assert Volume(image=sitk.Image(2, 2, 2, sitk.sitkFloat32)).acquisition == Acquisition()


def test_acquisition_is_frozen_and_typed():
    acq = Acquisition(source_format="nifti")
    with pytest.raises(dataclasses.FrozenInstanceError):
        acq.source_format = "dicom"  # type: ignore[misc]
    assert "header" not in {f.name for f in dataclasses.fields(Volume)}


@pytest.mark.parametrize("agent,given", [("IOHEXOL", True), ("Omnipaque 350", True), ("NONE", False),
                                         ("none ", False), ("No", False), ("N", False), ("0", False), ("", False)])
def test_contrast_given(agent, given):
    assert Acquisition(contrast_agent=agent).contrast_given is given
