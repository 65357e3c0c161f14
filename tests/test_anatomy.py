"""Template anatomy (ictus.imaging.anatomy): the CT template registered to real and synthetic heads."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import SimpleITK as sitk

from ictus.imaging.anatomy import (
    MIN_REGISTRATION_NCC,
    analysis_grid,
    intensity_correlation,
    register_template,
    resample_mask_to,
)
from ictus.imaging.brain import segment_brain, to_lps
from ictus.imaging.stroke_atlas import ASPECTS_CODES, aspects_label, cormack_to_hu
from tests.conftest import ge_head_volume, template_atlas


_atlas = template_atlas


@functools.lru_cache(maxsize=None)
def _ge():
    volume = ge_head_volume()
    brain = segment_brain(volume)
    return volume, brain, register_template(volume, brain.brain_mask, _atlas(), intracranial_mask=brain.intracranial_mask)


def test_cormack_conversion_matches_the_toolbox_forward_formula():
    hu = np.array([-1024.0, -500.0, -124.0, 0.0, 30.0, 76.0, 300.0, 1000.0])
    v = hu + 1024
    e = np.maximum(v - 900, 0)
    cormack = v + e + 9 * np.minimum(e, 200)  # clinical_h2c.m
    assert np.allclose(cormack_to_hu(cormack), hu, atol=1e-3)


def test_real_head_registers_with_quality_above_threshold():
    volume, brain, anatomy = _ge()
    assert anatomy.registered, (anatomy.quality_dice, anatomy.quality_ncc)
    assert anatomy.quality_dice >= 0.85 and anatomy.quality_ncc >= MIN_REGISTRATION_NCC + 0.1
    # every ASPECTS region lands on the grid, both sides, roughly mirror-sized
    counts = np.bincount(anatomy.aspects.ravel(), minlength=21)
    for code in ASPECTS_CODES:
        left, right = counts[aspects_label(code, "left")], counts[aspects_label(code, "right")]
        assert left > 50 and right > 50, code
        assert 0.6 < left / right < 1.6, (code, left, right)
    # patient left is +x in LPS: left regions lie left of the brain's centre
    centre_x = anatomy.index_to_lps(np.argwhere(anatomy.brain))[:, 0].mean()
    left_x = anatomy.index_to_lps(np.argwhere(anatomy.aspects == aspects_label("M2", "left")))[:, 0].mean()
    assert left_x > centre_x + 30
    assert anatomy.ventricles.any() and anatomy.infratentorial.any()
    assert anatomy.territories["MCA_left"].sum() > anatomy.territories["ACA_left"].sum() > 0


def test_region_names_and_compartments_on_the_real_head():
    _, _, anatomy = _ge()
    left_m2 = anatomy.index_to_lps(np.argwhere(anatomy.aspects == aspects_label("M2", "left")))
    assert anatomy.region_of(left_m2).startswith("Left"), anatomy.region_of(left_m2)
    assert anatomy.compartment_of(left_m2) == "supratentorial"
    cerebellum = anatomy.index_to_lps(np.argwhere(anatomy.infratentorial))
    assert anatomy.compartment_of(cerebellum) == "infratentorial"


def test_quality_falls_for_a_misregistration():
    _, brain, anatomy = _ge()
    atlas = _atlas()
    ic = resample_mask_to(to_lps(brain.intracranial_mask), anatomy.grid)

    def ncc(transform):
        warped = sitk.Resample(atlas.template_hu, anatomy.grid, transform, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
        return intensity_correlation(anatomy.grid, warped, ic)

    good = ncc(anatomy.transform)
    assert good >= MIN_REGISTRATION_NCC
    moved = sitk.CompositeTransform([anatomy.transform, sitk.TranslationTransform(3, (12.0, 0.0, 0.0))])
    assert ncc(moved) < MIN_REGISTRATION_NCC < good


def test_a_non_anatomical_head_is_not_registered():
    """The geometric phantom (ellipsoids) is not a head the template fits: indeterminate, never wrong."""
    from ictus.imaging.phantom import PhantomSpec, phantom_volume

    volume = phantom_volume(PhantomSpec(matrix=160, pixel_spacing_mm=1.4, slice_thickness_mm=5.0))
    brain = segment_brain(volume)
    anatomy = register_template(volume, brain.brain_mask, _atlas(), intracranial_mask=brain.intracranial_mask)
    assert not anatomy.registered
    assert anatomy.region_of(np.array([[20.0, 0.0, 10.0]])) == "region unavailable"
    assert anatomy.compartment_of(np.array([[20.0, 0.0, 10.0]])) == "unknown"


def test_analysis_grid_bins_thin_slices_to_about_1mm():
    image = sitk.Image(100, 80, 64, sitk.sitkFloat32)
    image.SetSpacing((0.45, 0.45, 0.625))
    grid = analysis_grid(image)
    assert grid.GetSpacing()[0] == pytest.approx(0.9) and grid.GetSpacing()[2] == pytest.approx(1.25)
    thick = sitk.Image(100, 80, 20, sitk.sitkFloat32)
    thick.SetSpacing((0.45, 0.45, 5.0))
    assert analysis_grid(thick).GetSpacing()[2] == pytest.approx(5.0)


def test_mask_on_another_grid_follows_world_coordinates():
    _, _, anatomy = _ge()
    volume, _, _ = _ge()
    on_volume = anatomy.mask_on(anatomy.ventricles, volume.image)
    assert on_volume.shape == tuple(reversed(volume.image.GetSize()))
    ml = on_volume.sum() * volume.voxel_volume_ml
    assert ml == pytest.approx(anatomy.ventricles.sum() * anatomy.voxel_ml, rel=0.15)
    dilated = anatomy.mask_on(anatomy.ventricles, volume.image, dilate_mm=2.0)
    assert dilated.sum() > on_volume.sum()
