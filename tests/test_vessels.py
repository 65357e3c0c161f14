"""Hyperdense artery sign (ictus.imaging.vessels): the real GE head with inserted arteries, and a synthetic head."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ictus.imaging.anatomy import Anatomy
from ictus.imaging.errors import InvalidInputError
from ictus.imaging.stroke_atlas import VESSEL_COURSES
from ictus.imaging.vessels import DenseArteryResult, detect_dense_artery, load_vessel_rules, polyline_projection
from tests.conftest import ge_head_volume, shared_dicom, template_atlas


_atlas = template_atlas


@functools.lru_cache(maxsize=None)
def _ge_cached():
    from ictus.imaging.anatomy import register_template
    from ictus.imaging.brain import segment_brain
    from ictus.imaging.midline import ideal_midline_plane

    volume = ge_head_volume()
    brain = segment_brain(volume)
    anatomy = register_template(volume, brain.brain_mask, _atlas(), intracranial_mask=brain.intracranial_mask)
    return anatomy, ideal_midline_plane(brain.intracranial_mask)


@pytest.fixture(scope="module")
def ge():
    shared_dicom("ge-head-tilt-variable-spacing")
    _atlas()
    anatomy, plane = _ge_cached()
    assert anatomy.registered
    return anatomy, plane


def _course(anatomy: Anatomy, name: str, side: str) -> np.ndarray:
    course = next(c for c in VESSEL_COURSES if c.name == name and c.side == side)
    return anatomy.to_patient(np.array(course.points_mm))


def _tube_voxels(anatomy: Anatomy, polyline: np.ndarray, radius_mm: float,
                 arc_mm: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """([z, y, x] voxels whose centre lies within radius_mm of the polyline, their distance)."""
    shape = anatomy.hu().shape
    idx = anatomy.lps_to_index(polyline)
    lo = np.maximum(np.floor(idx.min(axis=0)) - 8, 0).astype(int)
    hi = np.minimum(np.ceil(idx.max(axis=0)) + 9, shape).astype(int)
    zyx = np.stack([g.ravel() for g in np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")], 1)
    dist, arc = polyline_projection(anatomy.index_to_lps(zyx), polyline)
    keep = dist <= radius_mm
    if arc_mm is not None:
        keep &= (arc >= arc_mm[0]) & (arc <= arc_mm[1])
    return zyx[keep], dist[keep]


def _with_hu(anatomy: Anatomy, hu: np.ndarray) -> Anatomy:
    image = sitk.GetImageFromArray(hu.astype(np.float32))
    image.CopyInformation(anatomy.grid)
    return dataclasses.replace(anatomy, grid=image)


def insert_artery(anatomy: Anatomy, polyline: np.ndarray, value_hu: float, *, radius_mm: float = 1.75,
                  arc_mm: tuple[float, float] | None = None, noise_hu: float = 2.0, seed: int = 0,
                  hu: np.ndarray | None = None, core_fraction: float = 0.5) -> np.ndarray:
    """HU with a tube along ``polyline`` (a copy) that the image shows at ``value_hu`` (plus noise):
    a voxel with at least ``core_fraction`` of its volume inside the tube (2 x 2 x 8 samples) takes
    the value, one with less a proportional part (its partial-volume edge). A tube crossing from
    one thick slice to the next stays continuous. ``core_fraction`` 1: plain partial volume."""
    out = np.array(anatomy.hu(), dtype=np.float32) if hu is None else hu.copy()
    zyx, _ = _tube_voxels(anatomy, polyline, radius_mm + 0.5 * max(anatomy.spacing_mm), None)
    offsets = np.stack([g.ravel() for g in np.meshgrid(
        (np.arange(8) + 0.5) / 8 - 0.5, (np.arange(2) + 0.5) / 2 - 0.5, (np.arange(2) + 0.5) / 2 - 0.5,
        indexing="ij")], 1)
    samples = (zyx[:, None, :] + offsets[None]).reshape(-1, 3)
    dist, arc = polyline_projection(anatomy.index_to_lps(samples), polyline)
    inside = dist <= radius_mm
    if arc_mm is not None:
        inside &= (arc >= arc_mm[0]) & (arc <= arc_mm[1])
    fraction = np.clip(inside.reshape(len(zyx), len(offsets)).mean(axis=1) / core_fraction, 0.0, 1.0)
    zyx, fraction = zyx[fraction > 0], fraction[fraction > 0]
    rng = np.random.default_rng(seed)
    old = out[tuple(zyx.T)]
    out[tuple(zyx.T)] = old + fraction * (value_hu - old) + rng.normal(0.0, noise_hu, len(zyx))
    return out


def _normal_arteries(anatomy: Anatomy, value_hu: float = 40.0) -> np.ndarray:
    hu = None
    for k, side in enumerate(("left", "right")):
        hu = insert_artery(anatomy, _course(anatomy, "M1", side), value_hu, seed=k, hu=hu)
    assert hu is not None
    return hu


# -- the real GE head ----------------------------------------------------------------------------


def test_real_head_has_no_dense_artery(ge):
    anatomy, plane = ge
    for p in (plane, None):
        result = detect_dense_artery(anatomy, p)
        assert result.present is False, result.reason
        assert result.side is None and not result.mask.any()
        assert [(s.name, s.side) for s in result.segments] == [(c.name, c.side) for c in VESSEL_COURSES]
        # what is there is a skull-base speck beside the clinoid (17 voxels, 0.4 mm along the course)
        assert all(s.length_mm < 5.0 for s in result.segments), result.segments


@pytest.mark.parametrize("side", ["left", "right"])
def test_inserted_dense_m1_is_found_on_its_side_with_its_length(ge, side):
    anatomy, plane = ge
    normal = _normal_arteries(anatomy)
    hu = insert_artery(anatomy, _course(anatomy, "M1", side), 55.0, arc_mm=(4.0, 16.0), seed=5, hu=normal)
    result = detect_dense_artery(_with_hu(anatomy, hu), plane)
    assert result.present is True, result.reason
    assert result.side == side
    m1 = next(s for s in result.segments if s.name == "M1" and s.side == side)
    assert m1.dense and abs(m1.length_mm - 12.0) <= 2.5, m1
    assert 45.0 < m1.mean_hu < 56.0 and m1.ratio > 1.2  # the mean after 1 mm smoothing, edge voxels included
    other = next(s for s in result.segments if s.name == "M1" and s.side != side)
    assert not other.dense
    raised = (hu - normal > 10.0) & (hu >= 45.0)  # the thrombus above the threshold, off its edge
    assert result.mask[raised].mean() > 0.9
    assert result.mask.sum() < 2 * raised.sum()


def test_dense_m1_off_the_course_centre_is_still_found(ge):
    anatomy, plane = ge
    hu = _normal_arteries(anatomy)
    shifted = _course(anatomy, "M1", "left") + np.array([0.0, 3.0, 0.0])  # 3 mm posterior: registration error
    hu = insert_artery(anatomy, shifted, 58.0, arc_mm=(2.0, 14.0), seed=6, hu=hu)
    result = detect_dense_artery(_with_hu(anatomy, hu), plane)
    assert result.present and result.side == "left", result.reason


def test_mirror_from_the_registration_when_no_plane(ge):
    anatomy, _ = ge
    hu = insert_artery(anatomy, _course(anatomy, "M1", "right"), 55.0, arc_mm=(4.0, 16.0), seed=5,
                       hu=_normal_arteries(anatomy))
    result = detect_dense_artery(_with_hu(anatomy, hu), None)
    assert result.present and result.side == "right", result.reason


def test_raised_haematocrit_both_sides_is_not_dense(ge):
    anatomy, plane = ge
    result = detect_dense_artery(_with_hu(anatomy, _normal_arteries(anatomy, 52.0)), plane)
    assert result.present is False, result.reason
    m1 = [s for s in result.segments if s.name == "M1"]
    assert all(s.voxel_count > 20 and 0.9 < s.ratio < 1.1 for s in m1), m1  # seen, and compared


def test_dense_but_low_ratio_is_not_dense(ge):
    anatomy, plane = ge
    hu = insert_artery(anatomy, _course(anatomy, "M1", "left"), 47.0, arc_mm=(4.0, 16.0), seed=5,
                       hu=_normal_arteries(anatomy, 45.0))  # both above 43 HU, ratio 1.04
    result = detect_dense_artery(_with_hu(anatomy, hu), plane)
    assert result.present is False, result.reason
    m1 = next(s for s in result.segments if s.name == "M1" and s.side == "left")
    assert m1.length_mm >= 10.0 and m1.ratio < 1.1 and "ratio" in m1.reason


def test_calcified_wall_does_not_trigger(ge):
    """Fragments of a 250 HU ring (radius 2-3 mm) around the left M1, blurred in-plane like a CT kernel."""
    anatomy, plane = ge
    hu = _normal_arteries(anatomy)
    polyline = _course(anatomy, "M1", "left")
    zyx, dist = _tube_voxels(anatomy, polyline, 3.0)
    ring = zyx[dist >= 2.0]
    lps = anatomy.index_to_lps(ring)
    angle = np.arctan2(lps[:, 2] - polyline[:, 2].mean(), lps[:, 1] - polyline[:, 1].mean())
    fragments = ring[np.cos(3 * angle) > 0.0]  # three arcs of the wall
    calcium = np.zeros(hu.shape, np.float32)
    calcium[tuple(fragments.T)] = 250.0 - hu[tuple(fragments.T)]
    hu = hu + ndimage.gaussian_filter(calcium, sigma=(0.0, 0.6, 0.6))
    assert (hu[tuple(fragments.T)] >= 100).mean() > 0.8
    result = detect_dense_artery(_with_hu(anatomy, hu), plane)
    assert result.present is False, result.reason


def test_haemorrhage_mask_is_excluded(ge):
    anatomy, plane = ge
    polyline = _course(anatomy, "M1", "left")
    hu = insert_artery(anatomy, polyline, 60.0, arc_mm=(4.0, 16.0), hu=_normal_arteries(anatomy))
    blood = np.zeros(hu.shape, bool)
    zyx, _ = _tube_voxels(anatomy, polyline, 4.0)
    blood[tuple(zyx.T)] = True
    assert detect_dense_artery(_with_hu(anatomy, hu), plane).present is True
    result = detect_dense_artery(_with_hu(anatomy, hu), plane, exclude_mask=blood)
    assert result.present is False and not (result.mask & blood).any()


# -- synthetic head (no shared data) ----------------------------------------------------------------


def _synthetic(registered: bool = True, background_hu: float = 32.0, seed: int = 1) -> Anatomy:
    """An identity-registered block of brain-like tissue over the template's arterial courses."""
    spacing = (1.0, 1.0, 2.0)
    origin = (-60.0, -40.0, -50.0)
    size = (121, 81, 36)  # x -60..60, y -40..40, z -50..20
    rng = np.random.default_rng(seed)
    hu = (background_hu + rng.normal(0.0, 3.0, size[::-1])).astype(np.float32)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    identity = sitk.AffineTransform(3)
    return Anatomy(grid=image, transform=identity, inverse=identity, quality_dice=0.95 if registered else 0.3,
                   registered=registered, aspects=np.zeros(hu.shape, np.uint8), quality_ncc=0.9,
                   brain=np.ones(hu.shape, bool))


def test_synthetic_dense_left_m1_and_basilar():
    anatomy = _synthetic()
    hu = _normal_arteries(anatomy)
    hu = insert_artery(anatomy, _course(anatomy, "M1", "left"), 56.0, arc_mm=(2.0, 20.0), seed=3, hu=hu)
    result = detect_dense_artery(_with_hu(anatomy, hu))
    assert isinstance(result, DenseArteryResult)
    assert result.present is True and result.side == "left", result.reason
    m1 = next(s for s in result.segments if s.name == "M1" and s.side == "left")
    assert abs(m1.length_mm - 18.0) <= 2.5 and m1.centroid_lps_mm[0] > 0  # patient left is +x
    # the basilar artery is compared with the M1s
    hu = insert_artery(anatomy, _course(anatomy, "basilar", "midline"), 58.0, arc_mm=(5.0, 20.0), seed=4,
                       hu=_normal_arteries(anatomy))
    result = detect_dense_artery(_with_hu(anatomy, hu))
    assert result.present is True and result.side == "midline", result.reason
    # a raised haematocrit everywhere: nothing
    hu = _normal_arteries(anatomy, 52.0)
    hu = insert_artery(anatomy, _course(anatomy, "basilar", "midline"), 52.0, seed=4, hu=hu)
    assert detect_dense_artery(_with_hu(anatomy, hu)).present is False


def test_synthetic_not_registered_and_bad_input():
    anatomy = _synthetic(registered=False)
    result = detect_dense_artery(anatomy)
    assert result.present is None and result.segments == () and "registration" in result.reason
    assert result.mask.shape == anatomy.hu().shape and not result.mask.any()
    good = _synthetic()
    rules = dict(load_vessel_rules())
    for bad in ({**rules, "min_ratio": "1.2"}, {**rules, "schema": "x"}, {**rules, "dense_min_hu": 120.0},
                {k: v for k, v in rules.items() if k != "min_length_mm"}, [1, 2]):
        with pytest.raises(InvalidInputError):
            detect_dense_artery(good, rules=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        detect_dense_artery(good, exclude_mask=np.zeros((3, 3, 3), bool))
    assert detect_dense_artery(good, rules={**rules, "min_length_mm": 8.0}).rules["min_length_mm"] == 8.0
