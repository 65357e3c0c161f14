"""Tests for ictus.imaging.resample, on analytic fields where the truth is known."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ictus.imaging.resample import reorient_to_nearest_axes, resample_like, resample_to_spacing
from ictus.imaging.volume import Volume, volume_from_array


def _world(image: sitk.Image) -> np.ndarray:
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + (index * np.array(image.GetSpacing())) @ direction.T


def _ramp(points: np.ndarray) -> np.ndarray:
    return 2.0 * points[..., 0] - 1.5 * points[..., 1] + 0.7 * points[..., 2] + 10.0


def _ramp_volume(size_zyx=(12, 20, 24), spacing=(0.8, 0.9, 3.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), origin=(-5.0, 3.0, 10.0)) -> Volume:
    image = sitk.Image([size_zyx[2], size_zyx[1], size_zyx[0]], sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    values = _ramp(_world(image)).astype(np.float32)
    return volume_from_array(values, spacing, origin, direction, qc_flags=("gap_detected",), series_instance_uid="1.2.3")


def _interior(image: sitk.Image, margin: int = 1) -> tuple[slice, slice, slice]:
    return tuple(slice(margin, n - margin) for n in image.GetSize()[::-1])  # type: ignore[return-value]


def test_resample_to_spacing_keeps_a_linear_field_and_provenance():
    volume = _ramp_volume()
    out = resample_to_spacing(volume, (1.0, 1.0, 1.0))
    assert isinstance(out, Volume)
    assert out.qc_flags == ("gap_detected",) and out.series_instance_uid == "1.2.3"
    assert out.spacing_mm == pytest.approx((1.0, 1.0, 1.0))
    assert out.size == (round(24 * 0.8), round(20 * 0.9), 12 * 3)
    # The physical extent (outer edges) is kept: centred grid.
    old_low = np.array(volume.image.GetOrigin()) - np.array(volume.spacing_mm) / 2
    new_low = np.array(out.image.GetOrigin()) - np.array(out.spacing_mm) / 2
    assert np.allclose(old_low, new_low)
    inner = _interior(out.image, 3)
    assert np.allclose(out.array()[inner], _ramp(_world(out.image))[inner], atol=1e-3)


def test_resample_to_spacing_outside_gets_default_and_image_in_image_out():
    image = _ramp_volume().image
    out = resample_to_spacing(image, 0.5, interpolator="nearest", default_hu=-1024.0)
    assert isinstance(out, sitk.Image)
    assert out.GetPixelID() == sitk.sitkFloat32
    with pytest.raises(ValueError):
        resample_to_spacing(image, (1.0, -1.0, 1.0))
    with pytest.raises(ValueError):
        resample_to_spacing(image, 1.0, interpolator="cubic-ish")


def test_resample_like_identity_and_outside():
    volume = _ramp_volume()
    same = resample_like(volume, volume)
    assert np.array_equal(same.array(), volume.array())
    reference = sitk.Image([10, 10, 10], sitk.sitkFloat32)
    reference.SetOrigin((1000.0, 1000.0, 1000.0))
    far = resample_like(volume.image, reference, "linear", -1024.0)
    assert np.all(sitk.GetArrayViewFromImage(far) == -1024.0)


def test_resample_like_labels_stay_labels():
    labels = sitk.Image([8, 8, 4], sitk.sitkUInt8)
    arr = np.zeros((4, 8, 8), dtype=np.uint8)
    arr[1:3, 2:6, 2:6] = 3
    labels = sitk.GetImageFromArray(arr)
    reference = sitk.Image([16, 16, 8], sitk.sitkFloat32)
    reference.SetSpacing((0.5, 0.5, 0.5))
    reference.SetOrigin((-0.25, -0.25, -0.25))
    out = resample_like(labels, reference, "nearest", 0)
    assert out.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(out))) == {0, 3}


def test_reorient_flipped_axes_is_exact():
    direction = (-1, 0, 0, 0, 1, 0, 0, 0, -1)
    volume = _ramp_volume(direction=direction)
    out = reorient_to_nearest_axes(volume, "LPS")
    assert out.image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert np.array_equal(out.array(), volume.array()[::-1, :, ::-1])  # no interpolation
    assert np.allclose(out.array(), _ramp(_world(out.image)), atol=1e-3)
    ras = reorient_to_nearest_axes(volume, "RAS")
    assert np.array(ras.image.GetDirection()).reshape(3, 3) == pytest.approx(np.diag([-1, -1, 1]))


@pytest.mark.parametrize("tilt_deg", [18.5, -22.0])
def test_reorient_tilted_volume_resamples_onto_axis_aligned_grid(tilt_deg):
    t = np.radians(tilt_deg)
    col = (0.0, np.cos(t), -np.sin(t))
    normal = (0.0, np.sin(t), np.cos(t))
    direction = tuple(np.column_stack([(1.0, 0.0, 0.0), col, normal]).ravel())
    volume = _ramp_volume(direction=direction)
    out = reorient_to_nearest_axes(volume, "LPS")
    assert out.image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert out.spacing_mm == pytest.approx(volume.spacing_mm)
    array = out.array()
    inside = array != -1024.0
    assert inside.mean() > 0.3
    # Voxels well inside the tilted box carry the analytic value.
    world = _world(out.image)
    index = np.stack(
        [np.array(volume.image.TransformPhysicalPointToContinuousIndex(p.tolist())) for p in world.reshape(-1, 3)]
    ).reshape(world.shape)
    size = np.array(volume.size, dtype=float)
    deep = np.all((index >= 1) & (index <= size - 2), axis=-1)
    assert deep.sum() > 100
    assert np.allclose(array[deep], _ramp(world[deep]), atol=1e-2)
    # Every corner of the input lies inside the output box.
    for corner in np.array(np.meshgrid([0, 1], [0, 1], [0, 1])).reshape(3, -1).T:
        point = volume.image.TransformIndexToPhysicalPoint([int(c * (n - 1)) for c, n in zip(corner, volume.size)])
        idx = np.array(out.image.TransformPhysicalPointToContinuousIndex(point))
        assert np.all(idx >= -0.5 - 1e-6) and np.all(idx <= np.array(out.size) - 0.5 + 1e-6)


def test_reorient_rejects_bad_orientation():
    with pytest.raises(ValueError):
        reorient_to_nearest_axes(_ramp_volume(), "LPX")
