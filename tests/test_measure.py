"""Lesion measurements (ictus.imaging.measure): ground-truth label maps of phantoms as the segmentation."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from ictus.imaging.measure import (
    DEFAULT_MIN_LESION_ML,
    abc2_estimate,
    measure_labels,
)
from ictus.imaging.midline import MidlinePlane
from ictus.imaging.volume import volume_from_array

NAMES = ("background", "IPH", "EAH", "oedema", "IVH")
MIDLINE_X0 = MidlinePlane(a_mm=0.0, b=0.0, c=0.0, yc_mm=0.0, zc_mm=0.0)


@functools.lru_cache(maxsize=None)
def _phantom(**kwargs):
    """(Volume, PhantomTruth) of a phantom."""
    from ictus.imaging.phantom import PhantomSpec, phantom_with_truth

    spec = dict(matrix=160, pixel_spacing_mm=1.25, slice_thickness_mm=2.5, z_coverage_mm=170.0)
    spec.update(kwargs)
    return phantom_with_truth(PhantomSpec(**spec))


CASES = [(kind, ml) for kind in ("IPH", "EAH", "IVH") for ml in (5.0, 15.0, 30.0, 60.0)]


@pytest.mark.parametrize("kind, volume_ml", CASES)
def test_volumes_of_known_haemorrhages(kind, volume_ml):
    side = "both" if (kind == "IVH" and volume_ml > 30) else "right"
    vol, truth = _phantom(haemorrhage=kind, haemorrhage_volume_ml=volume_ml, haemorrhage_side=side)
    labels = truth.labels
    on_grid = truth["volumes_ml"][kind]["on_grid_ml"]

    exact = measure_labels(labels, vol, NAMES, min_lesion_ml=0.0, plane=MIDLINE_X0)
    assert exact.classes[kind].volume_ml == pytest.approx(on_grid, rel=1e-6)
    assert abs(on_grid - volume_ml) <= 0.1 * volume_ml  # the phantom's own discretisation

    m = measure_labels(labels, vol, NAMES, plane=MIDLINE_X0)
    c = m.classes[kind]
    assert c.present and c.lesion_count >= 1
    assert abs(c.volume_ml - on_grid) <= 0.1 * on_grid
    assert c.volume_ml + c.discarded_volume_ml == pytest.approx(on_grid, rel=1e-6)
    assert m.ich.present and m.ich.total_volume_ml == pytest.approx(c.volume_ml)
    others = [n for n in ("IPH", "EAH", "IVH") if n != kind]
    assert not any(m.classes[n].present for n in others)
    expected_side = truth["haemorrhage"]["hemisphere"]
    sides = {l.hemisphere for l in c.lesions}
    if expected_side == "bilateral":
        assert sides & {"left", "right", "bilateral"} and (len(sides) > 1 or sides == {"bilateral"})
    else:
        assert sides == {expected_side}
    if kind == "IPH":
        assert m.abc2 is not None
        assert m.abc2.segmented_volume_ml == pytest.approx(c.largest_lesion_ml)
        assert 0.4 * c.volume_ml <= m.abc2.volume_ml <= 1.5 * c.volume_ml
    else:
        assert m.abc2 is None


def test_oedema_rim_is_measured():
    vol, truth = _phantom(haemorrhage="IPH", haemorrhage_volume_ml=20.0, oedema_rim_mm=3.0)
    m = measure_labels(truth.labels, vol, NAMES, min_lesion_ml=0.0)
    assert m.classes["oedema"].volume_ml == pytest.approx(truth["volumes_ml"]["oedema"]["on_grid_ml"], rel=1e-6)
    assert not m.ich.total_volume_ml > m.classes["IPH"].volume_ml + 1e-9  # oedema is not blood


def _grid(shape=(20, 60, 60), spacing=(1.0, 1.0, 2.0)):
    return volume_from_array(np.zeros(shape, np.float32), spacing_mm=spacing, origin_mm=(-30.0, -30.0, -20.0))


def test_noise_floor_discards_small_components():
    vol = _grid()
    labels = np.zeros((20, 60, 60), np.uint8)
    labels[5:8, 10:20, 10:20] = 4  # 300 voxels x 2 uL = 0.6 mL IVH: kept
    labels[12, 40:45, 40:45] = 2  # 25 voxels = 0.05 mL EAH: noise
    m = measure_labels(labels, vol, NAMES)
    assert m.classes["IVH"].present and m.classes["IVH"].volume_ml == pytest.approx(0.6)
    assert not m.classes["EAH"].present
    assert m.classes["EAH"].discarded_count == 1 and m.classes["EAH"].discarded_volume_ml == pytest.approx(0.05)
    assert m.kept_labels[12, 42, 42] == 0 and m.kept_labels[6, 15, 15] == 4
    assert DEFAULT_MIN_LESION_ML > 0.05
    strict = measure_labels(labels, vol, NAMES, min_lesion_ml={"IVH": 1.0, "EAH": 0.01})
    assert not strict.classes["IVH"].present and strict.classes["EAH"].present


def test_lesion_count_largest_and_hemisphere():
    vol = _grid()
    labels = np.zeros((20, 60, 60), np.uint8)
    labels[2:6, 5:15, 5:15] = 1  # x index 5..14 -> x < 0 mm: patient right
    labels[10:16, 40:50, 40:55] = 1  # x index 40..54 -> patient left, larger
    labels[10:13, 20:30, 25:35] = 1  # straddles x = 0
    m = measure_labels(labels, vol, NAMES, plane=MIDLINE_X0)
    iph = m.classes["IPH"]
    assert iph.lesion_count == 3
    assert iph.largest_lesion_ml == pytest.approx(6 * 10 * 15 * 2 / 1000)
    assert [l.hemisphere for l in iph.lesions] == ["left", "right", "bilateral"]
    assert all(l.region == "region unavailable" for l in iph.lesions)
    assert m.abc2.segmented_volume_ml == pytest.approx(iph.largest_lesion_ml)
    no_plane = measure_labels(labels, vol, NAMES)
    assert {l.hemisphere for l in no_plane.classes["IPH"].lesions} == {"unknown"}


def test_probability_and_confidence_come_from_the_model_output():
    vol = _grid()
    labels = np.zeros((20, 60, 60), np.uint8)
    labels[5:10, 10:30, 10:30] = 1
    probs = np.zeros((5, 20, 60, 60), np.float16)
    probs[0] = 1.0
    probs[:, labels == 1] = np.array([0.1, 0.6, 0.2, 0.05, 0.05], np.float16)[:, None]
    agreement = np.ones((20, 60, 60), np.float16)
    agreement[labels == 1] = 0.75
    m = measure_labels(labels, vol, NAMES, probabilities=probs, agreement=agreement)
    assert m.ich.probability == pytest.approx(0.85, abs=2e-3)  # P(IPH)+P(EAH)+P(IVH)
    assert m.ich.confidence == pytest.approx(0.75)
    assert m.classes["IPH"].lesions[0].mean_probability == pytest.approx(0.6, abs=1e-3)
    none = measure_labels(np.zeros_like(labels), vol, NAMES, probabilities=probs, agreement=agreement)
    assert not none.ich.present and none.ich.probability == 0.0


def test_class_lists_come_from_the_caller():
    """Blood and oedema classes are parameters (the pipeline passes the card's roles)."""
    vol = _grid()
    labels = np.zeros((20, 60, 60), np.uint8)
    labels[5:10, 10:30, 10:30] = 1
    labels[12:16, 40:50, 40:50] = 2
    names = ("bg", "bleed", "swelling")
    m = measure_labels(labels, vol, names, blood_classes=("bleed",), oedema_classes=("swelling",), abc2_class="bleed")
    assert list(m.classes) == ["bleed", "swelling"] and m.blood_classes == ("bleed",)
    assert m.ich.present and m.ich.total_volume_ml == pytest.approx(m.classes["bleed"].volume_ml)
    assert m.classes["swelling"].present and m.abc2 is not None
    default = measure_labels(labels, vol, NAMES)
    assert list(default.classes) == ["IPH", "EAH", "IVH", "oedema"]
    assert default.ich.total_volume_ml == pytest.approx(default.classes["IPH"].volume_ml + default.classes["EAH"].volume_ml)


def test_abc2_on_a_box_and_a_cylinder():
    vol = _grid(shape=(20, 60, 60), spacing=(0.5, 0.5, 5.0))
    labels = np.zeros((20, 60, 60), bool)
    labels[4:10, 10:50, 20:40] = True  # 20 mm (y) x 10 mm (x) x 6 slices of 5 mm
    abc = abc2_estimate(labels, vol)
    assert abc.a_mm == pytest.approx(np.hypot(20, 10), abs=0.8)  # a box's largest diameter is its diagonal
    assert abc.c_mm == pytest.approx(30.0)
    z, y, x = np.mgrid[0:20, 0:60, 0:60]
    cyl = ((y - 30) / 24.0) ** 2 + ((x - 30) / 12.0) ** 2 <= 1  # ellipse 24 mm x 12 mm (0.5 mm pixels)
    cyl &= (z >= 3) & (z < 7)
    abc = abc2_estimate(cyl, vol)
    assert abc.a_mm == pytest.approx(24.5, abs=1.0) and abc.b_mm == pytest.approx(12.5, abs=1.0)
    assert abc.slices_counted == 4 and abc.c_mm == pytest.approx(20.0)
    # tapering slices count 1 (>= 75 %), 0.5 (25-75 %) or 0 (< 25 %) of the largest area (Kothari 1996)
    taper = cyl.copy()
    taper[7] = ((y[0] - 30) / 14.4) ** 2 + ((x[0] - 30) / 7.2) ** 2 <= 1  # 36 % of the area -> 0.5
    taper[8] = ((y[0] - 30) / 4.0) ** 2 + ((x[0] - 30) / 2.0) ** 2 <= 1  # ~3 % -> 0
    assert abc2_estimate(taper, vol).slices_counted == 4.5


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        measure_labels(np.zeros((3, 4, 5), np.uint8), _grid(), NAMES)


class _Lookup:
    """A stand-in for a registered anatomy: left of x=0 is 'LeftLobe', below z=-40 infratentorial."""

    def region_of(self, points):
        return "LeftLobe" if np.mean(points[:, 0] > 0) > 0.5 else "RightLobe"

    def compartment_of(self, points):
        return "infratentorial" if np.mean(points[:, 2] < -40) > 0.5 else "supratentorial"


def test_regions_and_compartment_come_from_the_anatomy():
    vol, truth = _phantom(haemorrhage="IPH", haemorrhage_volume_ml=15.0, haemorrhage_side="left",
                          haemorrhage_location="thalamus", slice_thickness_mm=5.0)
    m = measure_labels(truth.labels, vol, NAMES, atlas=_Lookup(), plane=MIDLINE_X0)
    lesion = m.classes["IPH"].lesions[0]
    assert lesion.region == "LeftLobe" and lesion.compartment == "supratentorial"
    assert m.region_status == "ok"


def test_no_anatomy_gives_no_region():
    vol, truth = _phantom(haemorrhage="IPH", haemorrhage_volume_ml=15.0, slice_thickness_mm=5.0)
    m = measure_labels(truth.labels, vol, NAMES)
    lesion = m.classes["IPH"].lesions[0]
    assert lesion.region == "region unavailable" and lesion.compartment == "unknown"
    assert m.region_status.startswith("region unavailable")


def test_probability_of_a_study_with_only_specks_is_scaled_down():
    vol = _grid()
    labels = np.zeros((20, 60, 60), np.uint8)
    labels[5, 10:15, 10:15] = 1  # 25 voxels x 2 uL = 0.05 mL: under the 0.5 mL floor
    probs = np.zeros((5, 20, 60, 60), np.float16)
    probs[0] = 1.0
    probs[:, labels == 1] = np.array([0.2, 0.8, 0.0, 0.0, 0.0], np.float16)[:, None]
    m = measure_labels(labels, vol, NAMES, probabilities=probs)
    assert not m.ich.present
    assert m.ich.probability == pytest.approx(0.8 * 0.05 / DEFAULT_MIN_LESION_ML, rel=0.01)
