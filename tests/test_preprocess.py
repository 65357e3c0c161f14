"""ictus.models.preprocess: our preprocessing against blast-ct's own functions, head box, way back."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from ictus.imaging.volume import volume_from_array
from ictus.models.preprocess import (
    deep_tissue,
    normalise_hu,
    preprocess,
    reoriented_geometry,
    to_original_grid,
)


def _head(shape=(30, 96, 96), spacing_zyx=(5.0, 2.0, 2.0), seed=0) -> np.ndarray:
    """Air, scalp, skull, brain and a blob, in HU (z, y, x)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing_zyx)], indexing="ij")
    r = np.sqrt((z / 65.0) ** 2 + (y / 85.0) ** 2 + (x / 70.0) ** 2)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[r < 1.0] = 40.0
    hu[r < 0.94] = 1000.0
    hu[r < 0.86] = 35.0
    hu[(z - 10) ** 2 + (y - 5) ** 2 + (x + 25) ** 2 < 15.0**2] = 70.0
    return hu + rng.normal(0, 3, shape).astype(np.float32)


def _reference():
    pytest.importorskip("blast_ct")
    from blast_ct.nifti.rescale import reorient_image, rescale
    from blast_ct.nifti.transformation import IntensityWindowNormalization

    return reorient_image, rescale, IntensityWindowNormalization


@pytest.mark.parametrize(
    "direction",
    [
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
        (1, 0, 0, 0, 1, 0, 0, 0, -1),  # slices stacked inferiorly: a flipped axis
        (0, 1, 0, 1, 0, 0, 0, 0, 1),  # permuted in-plane axes
    ],
)
def test_preprocessing_equals_blast_ct(direction):
    reorient_image, rescale, window = _reference()
    vol = volume_from_array(_head(), spacing_mm=(2.0, 2.0, 5.0), origin_mm=(-95, -95, -70), direction=direction)
    ours = preprocess(vol, crop_to_head=False)
    image = rescale([1.0, 1.0, 1.0], reorient_image(vol.image, False))
    ref = sitk.GetArrayFromImage(image).astype(np.float32)[None]
    ref, _, _ = window(-15.0, 100.0)(ref, None, np.ones(ref.shape[1:]))
    assert ours.array.shape == ref.shape[1:] == ours.grid_size
    assert ours.box_start == (0, 0, 0)
    np.testing.assert_allclose(ours.array, ref[0], atol=1e-5)
    # and the box geometry is the reference's 1 mm grid
    assert np.allclose(ours.box_image.GetOrigin(), image.GetOrigin())
    assert np.allclose(ours.box_image.GetDirection(), image.GetDirection())


def test_head_crop_is_a_sub_box_of_the_same_grid():
    vol = volume_from_array(_head(shape=(30, 128, 128)), spacing_mm=(2.0, 2.0, 5.0))
    full = preprocess(vol, crop_to_head=False)
    crop = preprocess(vol, tile_vox=30)
    assert all(a <= b for a, b in zip(crop.array.shape, full.array.shape))
    assert crop.array.size < full.array.size  # the air around the head is gone
    assert all(s % 15 == 0 for s in crop.region_start)
    sl = tuple(slice(s, s + n) for s, n in zip(crop.box_start, crop.array.shape))
    np.testing.assert_array_equal(crop.array, full.array[sl])
    # the box keeps the network's 40-voxel context around the head (or reaches the grid border)
    for s, r in zip(crop.box_start, crop.region_start):
        assert s == 0 or r - s >= 40


def test_normalise_hu_window():
    hu = np.array([-1000, -15, 42.5, 100, 3000], dtype=np.float32)
    np.testing.assert_allclose(normalise_hu(hu.copy(), (-15, 100)), [-1, -1, 0, 1, 1], atol=1e-6)


def test_deep_tissue_drops_the_scalp_keeps_the_brain():
    hu = _head(shape=(40, 96, 96), spacing_zyx=(4.0, 2.0, 2.0))
    vol = volume_from_array(hu, spacing_mm=(2.0, 2.0, 4.0))
    mi = preprocess(vol)
    assert mi.deep.sum() < mi.tissue.sum()
    centre = tuple(n // 2 for n in mi.array.shape)
    assert mi.deep[centre]
    # the outermost tissue (scalp) is not deep
    zc, yc = centre[0], centre[1]
    row = mi.tissue[zc, yc]
    first = int(np.argmax(row))
    assert not mi.deep[zc, yc, first]
    assert deep_tissue(np.full((8, 8, 8), 40.0, np.float32), np.ones((8, 8, 8), bool)).all()


def test_to_original_grid_round_trip():
    vol = volume_from_array(_head(), spacing_mm=(2.0, 2.0, 5.0), origin_mm=(3, -4, 10))
    mi = preprocess(vol)
    back = to_original_grid(mi.array, mi, default=-1.0, interpolator=sitk.sitkNearestNeighbor)
    assert back.shape == vol.array().shape
    expect = normalise_hu(vol.array(), (-15, 100))
    inside = (expect > -1) & (expect < 1)
    # nearest neighbour from the 1 mm grid: the same values up to interpolation inside smooth regions
    assert np.median(np.abs(back[inside] - expect[inside])) < 0.1


def test_reoriented_geometry_is_axis_aligned():
    image = sitk.Image(10, 12, 14, sitk.sitkFloat32)
    image.SetDirection((0, -1, 0, 1, 0, 0, 0, 0, 1))
    ref = reoriented_geometry(image)
    assert np.allclose(np.abs(np.array(ref.GetDirection()).reshape(3, 3)), np.eye(3))
    assert np.all(np.diag(np.array(ref.GetDirection()).reshape(3, 3)) > 0)


@pytest.mark.parametrize(
    "direction",
    [(1, 0, 0, 0, 1, 0, 0, 0, 1), (1, 0, 0, 0, 1, 0, 0, 0, -1), (0, 1, 0, 1, 0, 0, 0, 0, 1)],
)
def test_model_grid_volume_gives_the_model_the_same_input(direction):
    """Triage analyses the model's grid: the model must read there what it reads from the source."""
    from ictus.models.preprocess import model_grid_volume

    vol = volume_from_array(_head(shape=(30, 128, 128)), spacing_mm=(2.0, 2.0, 5.0), origin_mm=(-127, -120, -70),
                            direction=direction)
    grid = model_grid_volume(vol)
    assert grid.spacing_mm == pytest.approx((1.0, 1.0, 1.0))
    assert np.allclose(np.array(grid.image.GetDirection()).reshape(3, 3), np.eye(3))
    from_source = preprocess(vol, crop_to_head=False)
    from_grid = preprocess(grid, crop_to_head=False)
    assert from_grid.grid_size == from_source.grid_size == tuple(reversed(grid.size))
    np.testing.assert_allclose(from_grid.box_image.GetOrigin(), from_source.box_image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(from_grid.array, from_source.array, atol=1e-5)
    # the head box (where outputs are wanted) may move by one 15-voxel step: it is sampled every ~2 mm
    cropped = preprocess(grid, tile_vox=30)
    assert all(abs(a - b) <= 15 for a, b in zip(cropped.region_start, preprocess(vol, tile_vox=30).region_start))


def test_to_original_grid_copies_onto_the_model_grid_as_resampling_would():
    """The copy path (reference = the model grid) equals SimpleITK's resampling onto that grid."""
    from ictus.models.preprocess import model_grid_volume

    grid = model_grid_volume(volume_from_array(_head(), spacing_mm=(2.0, 2.0, 5.0), origin_mm=(3, -4, 10)))
    mi = preprocess(grid, tile_vox=30)
    values = np.random.default_rng(1).random(mi.array.shape).astype(np.float32)
    copied = to_original_grid(values, mi, default=-2.0)
    moving = sitk.GetImageFromArray(values)
    moving.CopyInformation(mi.box_image)
    resampled = sitk.GetArrayFromImage(sitk.Resample(moving, grid.image, sitk.Transform(), sitk.sitkLinear, -2.0))
    assert copied.shape == resampled.shape
    np.testing.assert_allclose(copied, resampled, atol=1e-5)
    # a box one voxel short in x: its voxels are copied in place, the rest of the grid gets the default
    short = to_original_grid(values[:, :, :-1], dataclasses.replace(mi, array=mi.array[:, :, :-1]), default=-2.0)
    z0, y0, x0 = mi.box_start
    nz, ny, nx = values.shape
    np.testing.assert_array_equal(short[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx - 1], values[:, :, :-1])
    assert (short[z0:z0 + nz, y0:y0 + ny, x0 + nx - 1] == -2.0).all()
