"""Brain, intracranial and skull masks (ictus.imaging.brain) on phantoms and real heads."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ictus.imaging.brain import segment_brain
from ictus.imaging.volume import volume_from_array
from tests.conftest import shared_dicom


@functools.lru_cache(maxsize=None)
def _phantom(**kwargs):
    from ictus.imaging.phantom import PhantomSpec, phantom_volume

    spec = dict(matrix=160, pixel_spacing_mm=1.25, slice_thickness_mm=5.0, z_coverage_mm=170.0)
    spec.update(kwargs)
    return phantom_volume(PhantomSpec(**spec))


@functools.lru_cache(maxsize=None)
def _phantom_truth(**kwargs):
    """The PhantomTruth of ``_phantom(**kwargs)`` (truth is kept apart from the Volume)."""
    from ictus.imaging.phantom import PhantomSpec, phantom_with_truth

    spec = dict(matrix=160, pixel_spacing_mm=1.25, slice_thickness_mm=5.0, z_coverage_mm=170.0)
    spec.update(kwargs)
    return phantom_with_truth(PhantomSpec(**spec))[1]


def test_phantom_brain_found_with_plausible_volume():
    vol = _phantom()
    truth = _phantom_truth()
    result = segment_brain(vol)
    assert result.brain_found, result.reason
    # our "brain" is intracranial soft tissue: parenchyma + ventricles, less the thin CSF rim
    assert truth["brain_volume_ml"] * 0.95 <= result.brain_volume_ml <= truth["intracranial_volume_ml"] * 1.05
    assert abs(result.intracranial_volume_ml - truth["intracranial_volume_ml"]) <= 0.1 * truth["intracranial_volume_ml"]
    # masks live on the input grid
    for mask in (result.brain_mask, result.intracranial_mask, result.skull_mask, result.head_mask):
        assert mask.GetSize() == vol.image.GetSize()
        assert np.allclose(mask.GetDirection(), vol.image.GetDirection())
        assert np.allclose(mask.GetOrigin(), vol.image.GetOrigin())
    assert not (result.brain_array() & (vol.array() > 300)).any()


def test_orientation_does_not_change_the_result():
    vol = _phantom()
    flipped = sitk.DICOMOrient(vol.image, "RAI")
    a = segment_brain(vol)
    b = segment_brain(flipped)
    assert b.brain_found
    assert abs(a.brain_volume_ml - b.brain_volume_ml) < 1e-6 * a.brain_volume_ml + 0.01
    back = sitk.DICOMOrient(b.brain_mask, "LPS")
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(a.brain_mask))


def _air_filled_skull() -> np.ndarray:
    z, y, x = np.meshgrid(np.arange(40) * 4.0 - 80, np.arange(110) * 2.0 - 110, np.arange(90) * 2.0 - 90, indexing="ij")
    r = (x / 75) ** 2 + (y / 95) ** 2 + (z / 70) ** 2
    hu = np.full(r.shape, -1000.0, np.float32)
    hu[r <= 1.0] = 700.0  # plastic
    hu[r <= 0.85] = -1000.0  # air inside
    return hu


def test_air_filled_skull_is_no_brain():
    vol = volume_from_array(_air_filled_skull(), spacing_mm=(2.0, 2.0, 4.0))
    result = segment_brain(vol)
    assert not result.brain_found
    assert result.intracranial_volume_ml > 500
    assert "soft tissue" in result.reason


def test_empty_volume_is_no_brain():
    vol = volume_from_array(np.full((10, 40, 40), -1000.0), spacing_mm=(2.0, 2.0, 5.0))
    result = segment_brain(vol)
    assert not result.brain_found
    assert result.brain_volume_ml == 0.0
    assert "skull" in result.reason


def _build(folder: Path, pattern: str):
    from ictus.imaging.build import build_volume

    return build_volume(sorted(str(p) for p in folder.glob(pattern)))


def test_plastic_skull_phantom_has_no_brain():
    vol = _build(shared_dicom("philips-head-phantom-tilted") / "S2010", "I*")
    result = segment_brain(vol)
    assert not result.brain_found, result.reason


def test_real_ge_head_has_a_brain():
    vol = _build(shared_dicom("ge-head-tilt-variable-spacing"), "*.dcm")
    result = segment_brain(vol)
    assert result.brain_found, result.reason
    assert 900 <= result.brain_volume_ml <= 1700


def test_fill_holes_axial_equals_scipy_per_slice_fill():
    """The labelling fill equals scipy's dilation-based fill with the in-plane structure."""
    from scipy import ndimage

    from ictus.imaging.brain import _PLANE_CROSS, fill_holes_axial

    rng = np.random.default_rng(5)
    masks = [rng.random((6, 30, 40)) < p for p in (0.3, 0.55, 0.8)]
    ring = np.zeros((3, 40, 40), bool)
    yy, xx = np.mgrid[:40, :40]
    ring[:] = np.abs(np.hypot(yy - 20, xx - 20) - 12) < 2  # a closed ring per slice: its inside is a hole
    ring[2, 20, 30:] = False  # broken on the last slice: not a hole there
    masks.append(ring)
    for m in masks:
        np.testing.assert_array_equal(fill_holes_axial(m), ndimage.binary_fill_holes(m, structure=_PLANE_CROSS))
    filled = fill_holes_axial(ring)
    assert filled[0, 20, 20] and not filled[2, 20, 20]
