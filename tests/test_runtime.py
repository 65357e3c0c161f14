"""ictus.models.runtime: tiling, ensemble, cascade, mapping back, and equivalence with blast-ct.

Most tests use tiny stand-in ONNX models with the same shape behaviour as
DeepMedic (input 5k+80 -> output 5k, logits per voxel) so they run in
milliseconds; the real members run only on a few small windows.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ictus.imaging.errors import InvalidInputError, ModelError
from ictus.imaging.volume import volume_from_array
from ictus.models.preprocess import preprocess
from ictus.models.deepmedic import member_gmac
from ictus.models.geometry import TileGeometry
from ictus.models.registry import get_card
from ictus.models.runtime import (
    Ensemble,
    extract_window,
    plan_tiles,
    segment,
    softmax,
    synthetic_head_hu,
)

from conftest import blast_ct_weights

NAMES = ("background", "IPH", "EAH", "oedema", "IVH")
GEOMETRY = TileGeometry.from_card(get_card("blast-ct"))  # context 40, tiles aligned to 15


def _dummy_member(path: Path, weights, bias) -> Path:
    """A stand-in member: crops 40 voxels per side (the real context), then a 1x1x1
    convolution of the intensity gives 5 logits per voxel."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    starts = numpy_helper.from_array(np.array([40, 40, 40], np.int64), "starts")
    ends = numpy_helper.from_array(np.array([-40, -40, -40], np.int64), "ends")
    axes = numpy_helper.from_array(np.array([2, 3, 4], np.int64), "axes")
    w = numpy_helper.from_array(np.asarray(weights, np.float32).reshape(5, 1, 1, 1, 1), "w")
    b = numpy_helper.from_array(np.asarray(bias, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["core"]),
         helper.make_node("Conv", ["core", "w", "b"], ["logits"])],
        "dummy",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, "z", "y", "x"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5, "oz", "oy", "ox"])],
        [starts, ends, axes, w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def dummies(tmp_path_factory) -> list[Path]:
    """Three stand-in members: background wins in air and bone; blood-like values
    (around 0.5 normalised, ~70 HU) favour IPH, more or less strongly per member."""
    d = tmp_path_factory.mktemp("dummy")
    out = []
    for k, gain in enumerate((8.0, 6.0, 10.0)):
        w = [0.0, gain, 0.0, 0.0, 0.0]
        b = [3.0, -gain * 0.35, -1.0, -1.0 - k, -1.0]
        out.append(_dummy_member(d / f"m{k + 1}.onnx", w, b))
    return out


def _head_volume(shape=(36, 96, 96), spacing_zyx=(5.0, 2.2, 2.2), haemorrhage_ml=20.0):
    hu = synthetic_head_hu(shape, spacing_zyx, haemorrhage_ml=haemorrhage_ml)
    return volume_from_array(hu, spacing_mm=spacing_zyx[::-1], origin_mm=(-100.0, -100.0, -80.0))


@pytest.fixture(scope="module")
def head():
    return _head_volume()


# -- stand-in members: the machinery ------------------------------------------------
def test_output_on_the_original_grid(dummies, head):
    seg = segment(head, dummies, class_names=NAMES, geometry=GEOMETRY, threads=1, cascade_threshold=None)
    z, y, x = head.array().shape
    assert seg.probabilities.shape == (5, z, y, x) and seg.probabilities.dtype == np.float16
    assert seg.labels.shape == (z, y, x) and seg.labels.dtype == np.uint8
    assert seg.agreement.shape == (z, y, x) and seg.agreement.dtype == np.float16
    total = seg.probabilities.astype(np.float32).sum(axis=0)
    np.testing.assert_allclose(total, 1.0, atol=5e-3)
    np.testing.assert_array_equal(seg.labels, seg.probabilities.argmax(axis=0))
    # the blood sphere is found where the volume has blood-like HU
    blood = head.array() > 55
    assert seg.labels[blood].mean() > 0.8 and (seg.labels[~blood] == 1).mean() < 0.02
    assert seg.class_names == NAMES and len(seg.members_used) == 3
    assert "cascade" not in seg.info["method"] and "3 members" in seg.info["method"]


def test_tiled_equals_untiled(dummies, head):
    ens = Ensemble(dummies[:1], class_names=NAMES, geometry=GEOMETRY, threads=1)
    mi = preprocess(head, tile_vox=90)
    p15, _, _ = ens.predict_box(mi, [0], tile_vox=15, skip="none")
    p90, _, _ = ens.predict_box(mi, [0], tile_vox=90, skip="none")
    np.testing.assert_allclose(p15, p90, atol=1e-6)


def test_ensemble_mean_equals_manual_mean(dummies, head):
    ens = Ensemble(dummies, class_names=NAMES, geometry=GEOMETRY, threads=1)
    mi = preprocess(head, tile_vox=30)
    plan = plan_tiles(mi, 30, GEOMETRY, skip="none")
    start, size = plan.tiles[len(plan.tiles) // 2]
    window = extract_window(mi, start, size, GEOMETRY)
    manual = np.mean([ens.predict(k, window) for k in range(3)], axis=0)
    probs, agreement, _ = ens.predict_box(mi, [0, 1, 2], tile_vox=30, skip="none", cascade_threshold=None)
    sl = tuple(slice(s - b, s - b + n) for s, b, n in zip(start, mi.box_start, size))
    np.testing.assert_allclose(probs[(slice(None),) + sl], manual, atol=1e-6)
    votes = np.stack([ens.predict(k, window).argmax(0) for k in range(3)])
    expect = (votes == manual.argmax(0)).mean(axis=0)
    np.testing.assert_allclose(agreement[sl].astype(np.float32), expect, atol=1e-3)


def test_fast_is_member_one(dummies, head):
    fast = segment(head, dummies, class_names=NAMES, geometry=GEOMETRY, threads=1, fast=True)
    one = segment(head, dummies[:1], class_names=NAMES, geometry=GEOMETRY, threads=1)
    both = segment(head, dummies, class_names=NAMES, geometry=GEOMETRY, threads=1, cascade_threshold=None)
    np.testing.assert_array_equal(fast.probabilities, one.probabilities)
    assert fast.members_used == ("m1.onnx",)
    assert np.all(fast.agreement == 1)
    assert not np.array_equal(fast.probabilities, both.probabilities)


def test_cascade_runs_later_members_only_where_member_one_is_unsure(dummies, head):
    ens = Ensemble(dummies, class_names=NAMES, geometry=GEOMETRY, threads=1)
    mi = preprocess(head, tile_vox=30)
    plain, _, _ = ens.predict_box(mi, [0, 1, 2], tile_vox=30, cascade_threshold=None)
    first, _, _ = ens.predict_box(mi, [0], tile_vox=30)
    thr = 0.2
    casc, agreement, stats = ens.predict_box(mi, [0, 1, 2], tile_vox=30, cascade_threshold=thr)
    plan = plan_tiles(mi, 30, GEOMETRY)
    n_unsure = n_partial = 0
    for start, size in plan.tiles:
        sl = tuple(slice(s - b, s - b + n) for s, b, n in zip(start, mi.box_start, size))
        unsure = (1 - first[0][sl]) > thr
        # inside the tile, the ensemble is used on the 15-aligned box of the unsure voxels
        expected_region = np.zeros(unsure.shape, bool)
        if unsure.any():
            n_unsure += 1
            idx = np.nonzero(unsure)
            lo = [int(i.min()) // 15 * 15 for i in idx]
            hi = [-(-(int(i.max()) + 1) // 15) * 15 for i in idx]
            expected_region[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
            n_partial += not expected_region.all()
        for c in range(len(NAMES)):
            want = np.where(expected_region, plain[c][sl], first[c][sl])
            np.testing.assert_allclose(casc[c][sl], want, atol=1e-6)
        assert np.all(agreement[sl][~expected_region] == 1)
    assert stats["member_tiles"] == [len(plan.tiles), n_unsure, n_unsure]
    assert 0 < n_unsure < len(plan.tiles)  # the test data exercises both branches
    assert n_partial > 0  # and at least one tile where only part of it went to members 2-3
    assert stats["ensemble_voxels"] < stats["output_voxels_per_member"]


def test_air_only_volume_computes_nothing(dummies):
    vol = volume_from_array(np.full((10, 40, 40), -1000, np.float32), spacing_mm=(2.0, 2.0, 5.0))
    seg = segment(vol, dummies, class_names=NAMES, geometry=GEOMETRY, threads=1)
    assert seg.info["tiles_computed"] == 0
    assert np.all(seg.labels == 0) and np.all(seg.probabilities[0] == 1)


def test_skip_rules_keep_the_tissue(dummies, head):
    mi = preprocess(head, tile_vox=60)
    every = plan_tiles(mi, 60, GEOMETRY, skip="none")
    tissue = plan_tiles(mi, 60, GEOMETRY, skip="tissue")
    deep = plan_tiles(mi, 60, GEOMETRY, skip="intracranial")
    assert deep.estimated_gmac <= tissue.estimated_gmac < every.estimated_gmac
    for plan, mask in ((tissue, mi.tissue), (deep, mi.deep)):
        covered = np.zeros(mi.array.shape, bool)
        for start, size in plan.tiles:
            covered[tuple(slice(s - b, s - b + n) for s, b, n in zip(start, mi.box_start, size))] = True
        assert not np.any(mask & ~covered)  # every kept voxel lies in a computed brick


def _region_mask(mi, kind: str) -> np.ndarray:
    """A test mask on the model box, true only inside the output region."""
    from ictus.models.runtime import region_slices

    sl = region_slices(mi)
    ext = [s.stop - s.start for s in sl]
    z, y, x = np.ogrid[: ext[0], : ext[1], : ext[2]]
    c = [n / 2 for n in ext]
    if kind == "sphere":  # wider than the largest tile: forced splits
        m = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < 70**2
    elif kind == "ellipsoid":
        m = ((z - c[0] + 10) / 55) ** 2 + ((y - c[1] - 7) / 88) ** 2 + ((x - c[2] + 3) / 62) ** 2 < 1
    elif kind == "two_blobs":  # opposite corners of the region
        m = (((z - 30) ** 2 + (y - 35) ** 2 + (x - 40) ** 2 < 22**2)
             | ((z - ext[0] + 40) ** 2 + (y - ext[1] + 30) ** 2 + (x - ext[2] + 50) ** 2 < 28**2))
    else:
        m = np.zeros(ext, bool)
    out = np.zeros(mi.array.shape, bool)
    out[sl] = m
    return out


@pytest.mark.parametrize("kind", ["sphere", "ellipsoid", "two_blobs", "empty"])
def test_cover_plan_covers_the_mask_once_aligned_and_cheaper_than_the_grid(head, kind):
    import dataclasses

    from ictus.models.runtime import DEFAULT_MAX_WINDOW_VOXELS, plan_cover, region_slices

    base = preprocess(head, tile_vox=90)
    mi = dataclasses.replace(base, deep=_region_mask(base, kind))
    plan = plan_cover(mi, GEOMETRY)  # skip="intracranial": the deep mask
    assert plan.planner == "cover" and plan.tile_vox == 90 and plan.max_window_voxels == DEFAULT_MAX_WINDOW_VOXELS
    count = np.zeros(mi.array.shape, np.int32)
    for start, size in plan.tiles:
        assert all(s % 15 == 0 for s in start) and all(n % 15 == 0 and 0 < n <= 90 for n in size)
        assert np.prod([GEOMETRY.window_vox(n) for n in size]) <= DEFAULT_MAX_WINDOW_VOXELS
        assert all(r0 <= s < r1 for s, r0, r1 in zip(start, mi.region_start, mi.region_stop))
        count[tuple(slice(s - b, s - b + n) for s, b, n in zip(start, mi.box_start, size))] += 1
    assert count.max(initial=0) <= 1  # no overlap
    inside = count[region_slices(mi)][mi.deep[region_slices(mi)]]
    assert np.all(inside == 1)  # every mask voxel computed once
    grid = min((plan_tiles(mi, t, GEOMETRY) for t in GEOMETRY.tile_candidates_vox), key=lambda p: p.estimated_gmac)
    if kind == "empty":
        assert plan.tiles == () and plan.estimated_gmac == 0
    else:
        assert plan.estimated_gmac < grid.estimated_gmac
        assert plan.estimated_gmac == pytest.approx(sum(GEOMETRY.estimated_gmac(s) for _, s in plan.tiles))


def test_cover_plan_splits_only_where_it_saves(head):
    import dataclasses

    from ictus.models.runtime import plan_cover

    base = preprocess(head, tile_vox=90)
    corner = [r - b + 15 for r, b in zip(base.region_start, base.box_start)]  # an aligned 90^3 cube in the region
    cube = tuple(slice(c, c + 90) for c in corner)
    solid = np.zeros(base.array.shape, bool)
    solid[cube] = True
    plan = plan_cover(dataclasses.replace(base, deep=solid), GEOMETRY, max_window_voxels=None)
    assert [size for _, size in plan.tiles] == [(90, 90, 90)]  # one large tile beats any split of it
    bounded = plan_cover(dataclasses.replace(base, deep=solid), GEOMETRY, max_window_voxels=150**3)
    assert len(bounded.tiles) > 1 and bounded.output_voxels == 90**3  # split for memory only, still no waste
    assert all(np.prod([GEOMETRY.window_vox(n) for n in size]) <= 150**3 for _, size in bounded.tiles)
    apart = np.zeros(base.array.shape, bool)
    apart[tuple(slice(c + 2, c + 12) for c in corner)] = True  # two small blobs at opposite corners of the cube
    apart[tuple(slice(c + 78, c + 88) for c in corner)] = True
    plan = plan_cover(dataclasses.replace(base, deep=apart), GEOMETRY, max_window_voxels=None)
    assert sorted(size for _, size in plan.tiles) == [(15, 15, 15)] * 2  # split for cost alone
    assert plan.estimated_gmac < GEOMETRY.estimated_gmac((90, 90, 90))


def test_cover_plan_is_the_default_and_equals_untiled(dummies, head):
    from ictus.models.runtime import choose_tile_vox, plan_cover, region_slices

    ens = Ensemble(dummies[:1], class_names=NAMES, geometry=GEOMETRY, threads=1)
    mi = preprocess(head, tile_vox=90)
    plan = plan_cover(mi, GEOMETRY)
    assert choose_tile_vox(mi, GEOMETRY) == plan
    assert choose_tile_vox(mi, GEOMETRY, "tissue") == plan_cover(mi, GEOMETRY, skip="tissue")
    assert choose_tile_vox(mi, GEOMETRY, "none").planner == "grid"
    covered, _, stats = ens.predict_box(mi, [0])
    untiled, _, _ = ens.predict_box(mi, [0], tile_vox=15, skip="none")
    sl = region_slices(mi)
    needed = mi.deep[sl]
    assert needed.sum() > 0
    np.testing.assert_allclose(covered[(slice(None),) + sl][:, needed], untiled[(slice(None),) + sl][:, needed],
                               atol=1e-6)
    assert stats["tile_planner"] == "cover" and stats["tiles_computed"] == len(plan.tiles)
    assert stats["output_voxels_per_member"] == plan.output_voxels
    assert stats["needed_voxels"] == int(needed.sum())
    assert stats["computed_over_needed"] == round(plan.output_voxels / int(needed.sum()), 3) >= 1
    seg = ens.segment(head, fast=True)
    assert ("non-overlapping 15-voxel-aligned boxes of sides up to 90 and input windows of at most 140^3 voxels"
            in seg.info["method"])
    assert seg.info["computed_over_needed"] == stats["computed_over_needed"]


def test_bad_arguments(dummies, head, tmp_path):
    with pytest.raises(ModelError):
        Ensemble([tmp_path / "missing.onnx"], class_names=NAMES, geometry=GEOMETRY)
    with pytest.raises(ModelError):
        Ensemble([], class_names=NAMES, geometry=GEOMETRY)
    with pytest.raises(ModelError):
        Ensemble(dummies, class_names=NAMES[:3], geometry=GEOMETRY, threads=1).segment(head, fast=True)
    with pytest.raises(InvalidInputError):
        Ensemble(dummies, class_names=NAMES, geometry=GEOMETRY, threads=1).segment(head, tile_vox=20)


def test_softmax_and_cost_model():
    x = np.random.default_rng(0).normal(size=(5, 3, 4, 2)).astype(np.float32) * 30
    p = softmax(x)
    np.testing.assert_allclose(p.sum(0), 1, atol=1e-6)
    params = {k: v for k, v in GEOMETRY.cost_model.items() if k not in ("kind", "note")}
    assert member_gmac((60, 60, 60), **params) / 60**3 < member_gmac((30, 30, 30), **params) / 30**3
    assert GEOMETRY.estimated_gmac((60, 60, 60)) == member_gmac((60, 60, 60), **params)


# -- real members --------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_members(tmp_path_factory):
    weights = blast_ct_weights()
    from ictus.models.onnx_build import convert_member

    d = tmp_path_factory.mktemp("onnx")
    return [
        convert_member(weights / "saved_models_v1" / f"model_{k}.pt", d / f"model_{k}.onnx") for k in (1, 2)
    ], weights


def _lesion_roi():
    """A small ROI (1 mm grid 11 x 13 x 28) of the project phantom, across a 10 mL IPH."""
    from ictus.imaging.phantom import PhantomSpec, phantom_with_truth

    vol, truth = phantom_with_truth(PhantomSpec(haemorrhage="IPH", haemorrhage_volume_ml=10, matrix=128,
                                                pixel_spacing_mm=1.5, partial_volume_samples=1))
    labels = truth.labels
    z, y, x = (int(np.median(a)) for a in np.nonzero(labels == 1))
    roi = sitk.RegionOfInterest(vol.image, (19, 9, 3), (x - 9, y - 4, z - 1))
    return vol.with_image(roi)


@pytest.mark.slow
def test_real_member_tiled_untiled_and_reference_agree(real_members):
    """Tiles of 15 (two of them), one untiled window, and blast-ct's own network
    module with its own 110^3 -> 30^3 patch grid give the same probabilities."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("blast_ct")
    from blast_ct.models.deepmedic import DeepMedic
    from blast_ct.nifti.datasets import FullImageToOverlappingPatchesNiftiDataset
    from blast_ct.nifti.patch_samplers import PatchSampler
    from blast_ct.nifti.rescale import reorient_image, rescale
    from blast_ct.nifti.savers import reconstruct_image
    from blast_ct.nifti.transformation import IntensityWindowNormalization

    members, weights = real_members
    roi = _lesion_roi()
    ens = Ensemble(members[:1], class_names=NAMES, geometry=GEOMETRY, threads=2)
    mi = preprocess(roi, tile_vox=30, crop_to_head=False)
    assert max(mi.grid_size) <= 29  # one reference patch covers it
    p15, _, st = ens.predict_box(mi, [0], tile_vox=15, skip="none")
    assert st["tiles_computed"] >= 2
    p30, _, st = ens.predict_box(mi, [0], tile_vox=30, skip="none")
    assert st["tiles_computed"] == 1
    np.testing.assert_allclose(p15, p30, atol=1e-5)

    # the reference: its preprocessing, its patch grid, its network class, its reassembly
    image = rescale([1.0, 1.0, 1.0], reorient_image(roi.image, False))
    arr = sitk.GetArrayFromImage(image).astype(np.float32)[None]
    arr, _, _ = IntensityWindowNormalization(-15.0, 100.0)(arr, None, np.ones(arr.shape[1:]))
    config = json.loads((weights / "config.json").read_text())
    net = DeepMedic(1, 5, **config["model"]["DeepMedic"])
    net.load_state_dict(torch.load(weights / "saved_models_v1" / "model_1.pt", map_location="cpu", weights_only=True))
    net.eval()
    centres = FullImageToOverlappingPatchesNiftiDataset.get_center_points(arr.shape[1:], (30, 30, 30))
    sampler = PatchSampler((110,) * 3, (30,) * 3)
    with torch.no_grad():
        patches = [
            torch.softmax(net(torch.from_numpy(np.ascontiguousarray(sampler.get_image_patch(arr, c)[None])))[0], 1)[0].numpy()
            for c in centres
        ]
    ref = reconstruct_image(patches, arr.shape[1:], centres, (30, 30, 30)).transpose(3, 0, 1, 2)
    np.testing.assert_allclose(p15, ref, atol=1e-4)
    ours, theirs = p15.argmax(0), ref.argmax(0)
    for c in np.unique(theirs):
        dice = 2 * np.sum((ours == c) & (theirs == c)) / (np.sum(ours == c) + np.sum(theirs == c))
        assert dice >= 0.99


@pytest.mark.slow
def test_real_int8_close_to_fp32(real_members, tmp_path):
    """The int8 copy of member 1 agrees with fp32 on a small window (labels mostly equal)."""
    from ictus.models.runtime import quantize_member

    members, _ = real_members
    q = quantize_member(members[0], tmp_path / "m1.int8.onnx", geometry=GEOMETRY, window_hu=(-15.0, 100.0),
                        conv_name_patterns=get_card("blast-ct").raw["runtime"]["int8"]["conv_name_patterns"],
                        n_calibration=1)
    import onnx

    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(q)).graph.node) > 0
    roi = _lesion_roi()
    mi = preprocess(roi, tile_vox=30, crop_to_head=False)
    window = extract_window(mi, mi.region_start, (30, 30, 30), GEOMETRY)
    fp32 = Ensemble(members[:1], class_names=NAMES, geometry=GEOMETRY, threads=2).predict(0, window)
    int8 = Ensemble([q], class_names=NAMES, geometry=GEOMETRY, threads=2).predict(0, window)
    assert np.mean(fp32.argmax(0) == int8.argmax(0)) > 0.98
    assert np.abs(fp32 - int8).mean() < 0.01


def test_flush_denormals(tmp_path):
    import onnx

    from ictus.models.runtime import flush_denormals

    path = _dummy_member(tmp_path / "d.onnx", [1e-40, 1.0, 0.0, -1e-39, 0.0], [0.0] * 5)
    model = onnx.load(str(path))
    assert flush_denormals(model) == 2
    w = [t for t in model.graph.initializer if t.name == "w"][0]
    assert list(onnx.numpy_helper.to_array(w).ravel()) == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert flush_denormals(model) == 0


def test_unsure_brick_is_the_aligned_box_of_the_unsure_voxels():
    from ictus.models.runtime import unsure_brick

    p_bg = np.ones((45, 45, 30), np.float32)
    assert unsure_brick(p_bg, 0.05, (15, 30, 45), 15) is None
    p_bg[16, 3, 29] = 0.9  # foreground 0.1: unsure at 0.05, not at 0.2
    p_bg[20, 14, 20] = 0.5
    assert unsure_brick(p_bg, 0.05, (15, 30, 45), 15) == ((30, 30, 60), (15, 15, 15))
    assert unsure_brick(p_bg, 0.2, (15, 30, 45), 15) == ((30, 30, 60), (15, 15, 15))
    p_bg[44, 0, 0] = 0.0
    assert unsure_brick(p_bg, 0.2, (15, 30, 45), 15) == ((30, 30, 45), (30, 15, 30))


def test_cuda_provider_is_chosen_when_onnxruntime_offers_it(monkeypatch):
    import onnxruntime as ort

    from ictus.models.runtime import available_providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert available_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert available_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert available_providers() == ["CPUExecutionProvider"]


def test_argmax_classes_equals_numpy_argmax_with_ties():
    from ictus.models.runtime import argmax_classes

    rng = np.random.default_rng(3)
    probs = rng.integers(0, 4, size=(5, 7, 8, 9)).astype(np.float16)  # many ties: first class must win
    np.testing.assert_array_equal(argmax_classes(probs), probs.argmax(axis=0).astype(np.uint8))
