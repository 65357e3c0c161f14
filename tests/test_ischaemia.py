"""Early ischaemic change (ictus.imaging.ischaemia) on the real GE head, with drops inserted into it."""
from __future__ import annotations

import copy
import dataclasses
import functools

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ictus.imaging.errors import InvalidInputError
from ictus.imaging.ischaemia import assess_ischaemia, load_ischaemia_rules, mirror_points, validate_ischaemia_rules
from ictus.imaging.stroke_atlas import ASPECTS_CODES, aspects_label
from tests.test_anatomy import _ge


@functools.lru_cache(maxsize=None)
def _plane():
    from ictus.imaging.midline import measure_midline_shift

    volume, brain, _ = _ge()
    return measure_midline_shift(volume, brain).ideal_plane


def _with_drop(anatomy, codes, side, drop_hu, *, noise_hu=0.0, seed=0, fluid=False, region=None):
    """The anatomy with ``drop_hu`` taken off the tissue of regions ``codes`` on ``side`` (or of
    the mask ``region``; edges softened over one voxel), plus correlated noise."""
    hu = sitk.GetArrayFromImage(anatomy.grid).astype(np.float32)
    if region is None:
        region = np.isin(anatomy.aspects, [aspects_label(c, side) for c in codes])
    tissue = region & (hu > 15) & (hu < 60)
    weight = ndimage.gaussian_filter(tissue.astype(np.float32), [0.0, 0.7, 0.7])
    if fluid:
        hu = np.where(tissue, 8.0, hu)
    else:
        hu = hu - drop_hu * weight * (hu > 15) * (hu < 60)
    if noise_hu:
        n = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=hu.shape).astype(np.float32), [0, 0.8, 0.8])
        hu = hu + n * (noise_hu / n.std())
    image = sitk.GetImageFromArray(hu)
    image.CopyInformation(anatomy.grid)
    return dataclasses.replace(anatomy, grid=image)


def test_real_head_scores_10_on_both_sides_and_shows_its_posterior_hypodensity():
    _, _, anatomy = _ge()
    result = assess_ischaemia(anatomy, _plane())
    assert result.assessed
    assert result.aspects == {"left": 10, "right": 10}
    assert result.affected_side is None and result.nwu_percent is None and not result.chronic
    assert len(result.regions) == 20 and all(r.voxel_count > 100 for r in result.regions)
    # the GE head carries a real left occipito-temporal hypodensity (PCA territory, outside ASPECTS)
    pca_left = next(h for h in result.hypodensity if h.territory == "PCA" and h.side == "left")
    pca_right = next(h for h in result.hypodensity if h.territory == "PCA" and h.side == "right")
    assert pca_left.volume_ml > 10.0 and pca_right.volume_ml < 1.0
    assert not result.large_mca_hypodensity


def _single_region_sensitivity(drop_hu: float, noise_hu: float) -> tuple[float, int]:
    """Each of the 20 regions in turn gets ``drop_hu``: (fraction found, false regions elsewhere)."""
    _, _, anatomy = _ge()
    hits = false = 0
    for side in ("left", "right"):
        for i, code in enumerate(ASPECTS_CODES):
            result = assess_ischaemia(_with_drop(anatomy, (code,), side, drop_hu, noise_hu=noise_hu, seed=i), _plane())
            hits += code in result.affected_regions[side]
            false += sum(r.affected for r in result.regions if (r.code, r.side) != (code, side))
    return hits / 20.0, false


@pytest.mark.parametrize(("drop_hu", "noise_hu", "min_sensitivity"), [(4.0, 0.0, 0.65), (5.0, 3.0, 0.9)])
def test_single_region_drops_are_found_without_false_regions(drop_hu, noise_hu, min_sensitivity):
    # measured on the GE head (README / module doc): 4 HU 0.70, 5-6 HU 0.95, 7-8 HU 1.00; the misses
    # at 4 HU are regions that are 0.6-2.9 HU denser than their mirror in this normal head
    sensitivity, false = _single_region_sensitivity(drop_hu, noise_hu)
    assert sensitivity >= min_sensitivity
    assert false <= (0 if noise_hu == 0 else 4)  # of 380 untouched regions (measured 0 and 3)


@pytest.mark.parametrize("drop_hu", [5.0, 8.0])
def test_inserted_drops_are_found_on_the_right_side(drop_hu):
    _, _, anatomy = _ge()
    codes = ("M4", "IC", "LN", "M5")
    result = assess_ischaemia(_with_drop(anatomy, codes, "right", drop_hu, noise_hu=3.0), _plane())
    found = set(result.affected_regions["right"])
    assert found == set(codes), (drop_hu, found)
    assert not result.affected_regions["left"]
    assert result.aspects == {"left": 10, "right": 6} and result.affected_side == "right" and result.score_reliable
    # NWU of the affected regions against the inserted drop over their mean tissue density
    rows = [r for r in result.regions if r.side == "right" and r.affected]
    expected = np.average([drop_hu / r.mirror_mean_hu * 100.0 for r in rows], weights=[r.voxel_count for r in rows])
    assert result.nwu_percent == pytest.approx(expected, abs=4.0)
    assert result.onset_within_4_5h_likely is (result.nwu_percent < 11.5)
    mask_labels = set(np.unique(result.affected_mask)) - {0}
    assert mask_labels == {aspects_label(c, "right") for c in found}


def test_a_small_drop_in_heavy_noise_is_not_called():
    _, _, anatomy = _ge()
    result = assess_ischaemia(_with_drop(anatomy, ("InCa",), "right", 2.0, noise_hu=12.0, seed=3), _plane())
    row = next(r for r in result.regions if r.code == "InCa" and r.side == "right")
    assert not row.affected and row.noise_se_hu > 0.3


def test_large_drop_sets_the_mca_caution_and_a_low_score():
    _, _, anatomy = _ge()
    territory = anatomy.territories["MCA_right"] | np.isin(anatomy.aspects, [aspects_label(c, "right") for c in ASPECTS_CODES])
    result = assess_ischaemia(_with_drop(anatomy, (), "right", 10.0, region=territory), _plane())
    assert result.aspects["right"] <= 2
    assert result.large_mca_hypodensity
    assert result.onset_within_4_5h_likely is False  # NWU ~30 % > 11.5 %


def test_drops_on_both_sides_make_the_score_unreliable():
    _, _, anatomy = _ge()
    a = _with_drop(anatomy, ("M4", "M5"), "right", 8.0)
    b = _with_drop(a, ("C", "LN"), "left", 8.0)
    result = assess_ischaemia(b, _plane())
    assert result.affected_side == "both" and not result.score_reliable
    assert "both sides" in result.reliability_note


def test_an_old_infarct_is_chronic_not_acute():
    _, _, anatomy = _ge()
    result = assess_ischaemia(_with_drop(anatomy, ("M2", "M3"), "right", 0.0, fluid=True), _plane())
    assert result.chronic and result.chronic[0].side == "right" and result.chronic[0].volume_ml > 5.0
    assert {"M2", "M3"} <= set(result.chronic[0].regions) and result.chronic[0].mean_hu < 15.0
    rows = {r.code: r for r in result.regions if r.side == "right"}
    assert rows["M2"].chronic and not rows["M2"].affected and rows["M3"].chronic
    assert not result.affected_regions["right"] and result.aspects["right"] == 10


def test_fluid_density_with_a_compressed_ventricle_is_not_called_old():
    _, _, anatomy = _ge()
    lesion = _with_drop(anatomy, ("M2", "M3"), "right", 0.0, fluid=True)
    hu = sitk.GetArrayFromImage(lesion.grid)
    plane = _plane()
    idx = np.argwhere(anatomy.ventricles)
    right = idx[plane.signed_distance_mm(anatomy.index_to_lps(idx)) < 0]
    hu[tuple(right.T)] = 30.0  # the right ventricle squeezed shut: mass effect, not volume loss
    image = sitk.GetImageFromArray(hu)
    image.CopyInformation(anatomy.grid)
    result = assess_ischaemia(dataclasses.replace(anatomy, grid=image), plane)
    assert not any(c.side == "right" for c in result.chronic)


def test_nwu_formula_on_a_synthetic_pair():
    from ictus.imaging.ischaemia import net_water_uptake_percent

    assert net_water_uptake_percent(27.0, 30.0) == pytest.approx(10.0)
    assert net_water_uptake_percent(30.0, 30.0) == pytest.approx(0.0)
    assert net_water_uptake_percent(30.0, 0.0) is None


def test_not_registered_means_not_assessed():
    _, _, anatomy = _ge()
    result = assess_ischaemia(dataclasses.replace(anatomy, registered=False), _plane())
    assert not result.assessed and "registration_failed" in result.reason and result.aspects == {}


def test_mirror_is_about_the_plane_not_the_image_axis():
    _, _, anatomy = _ge()
    plane = _plane()
    pts = np.array([[30.0, 0.0, 20.0], [-25.0, 10.0, 40.0]])
    mirrored = mirror_points(pts, plane, anatomy)
    assert np.allclose(plane.signed_distance_mm(mirrored), -plane.signed_distance_mm(pts), atol=1e-6)
    fallback = mirror_points(pts, None, anatomy)  # the template's mid-sagittal plane
    assert np.allclose(fallback, mirrored, atol=6.0)


def test_rules_are_validated():
    rules = load_ischaemia_rules()
    assert len(rules["description"]) > 500 and rules["sources"]
    for mutate in (lambda r: r.pop("tissue_hu"), lambda r: r["region"].update(min_drop_hu="x"),
                   lambda r: r.update(tissue_hu=[50, 10]), lambda r: r.update(overrides={"M9": {}}),
                   lambda r: r.update(schema="other")):
        bad = copy.deepcopy(dict(rules))
        mutate(bad)
        with pytest.raises(InvalidInputError):
            validate_ischaemia_rules(bad)
    with pytest.raises(InvalidInputError):
        load_ischaemia_rules("/nonexistent/rules.json")


def test_region_override_changes_one_region():
    _, _, anatomy = _ge()
    rules = copy.deepcopy(dict(load_ischaemia_rules()))
    rules["overrides"] = {"M2": {"min_drop_hu": 50.0}}
    result = assess_ischaemia(_with_drop(anatomy, ("M2", "M5"), "right", 8.0), _plane(), rules)
    assert result.affected_regions["right"] == ("M5",)
