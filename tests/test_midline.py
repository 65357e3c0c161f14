"""Midline shift (ictus.imaging.midline): known shifts on phantoms, ~0 on a real head, graceful failures."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from ictus.imaging.brain import segment_brain
from ictus.imaging.midline import ideal_midline_plane, measure_midline_shift
from ictus.imaging.volume import volume_from_array
from tests.conftest import shared_dicom


@functools.lru_cache(maxsize=None)
def _phantom(**kwargs):
    """(Volume, PhantomTruth) of a phantom."""
    from ictus.imaging.phantom import PhantomSpec, phantom_with_truth

    spec = dict(matrix=160, pixel_spacing_mm=1.25, slice_thickness_mm=5.0, z_coverage_mm=170.0)
    spec.update(kwargs)
    return phantom_with_truth(PhantomSpec(**spec))


@pytest.mark.parametrize(
    "shift_mm, direction",
    [(0.0, None), (3.0, "left"), (6.0, "right"), (10.0, "left"), (15.0, "right")],
)
def test_known_shift_on_phantom(shift_mm, direction):
    vol, truth = _phantom(midline_shift_mm=shift_mm, midline_shift_direction=direction)
    result = measure_midline_shift(vol, segment_brain(vol))
    assert result.shift_mm is not None, result.reason
    assert abs(result.shift_mm - truth["midline_shift_signed_mm"]) <= 1.5
    assert result.direction == (truth["midline_shift_direction"] or "none")
    # the ideal midline is the skull's symmetry plane x = 0
    assert abs(result.ideal_plane.a_mm - truth["ideal_midline_x_mm"]) <= 1.0


def test_shift_with_a_haemorrhage_and_thin_slices():
    vol, truth = _phantom(haemorrhage="IPH", haemorrhage_volume_ml=40.0, midline_shift_mm=8.0, slice_thickness_mm=2.5)
    result = measure_midline_shift(vol, segment_brain(vol))
    assert abs(result.shift_mm - truth["midline_shift_signed_mm"]) <= 1.5
    assert result.direction == truth["midline_shift_direction"]


def _rotated_head(shift_mm: float, yaw_deg: float) -> np.ndarray:
    """An ellipsoidal head turned by ``yaw_deg`` in the axial plane, ventricles shifted along its own x."""
    sx, sy, sz = 1.25, 1.25, 4.0
    z, y, x = np.meshgrid((np.arange(38) - 18.5) * sz, (np.arange(170) - 84.5) * sy, (np.arange(140) - 69.5) * sx,
                          indexing="ij")
    t = np.deg2rad(yaw_deg)
    xr, yr = np.cos(t) * x + np.sin(t) * y, -np.sin(t) * x + np.cos(t) * y

    def inside(cx, cy, cz, rx, ry, rz):
        return ((xr - cx) / rx) ** 2 + ((yr - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1

    hu = np.full(x.shape, -1000.0, np.float32)
    hu[inside(0, 0, 0, 78, 98, 68)] = 40
    hu[inside(0, 0, 0, 74, 94, 64)] = 1200
    hu[inside(0, 0, 0, 68, 88, 58)] = 32
    for side in (-1, 1):
        hu[inside(shift_mm + side * 8.5, -10, 5, 7, 28, 9)] = 5
    hu += np.random.default_rng(1).normal(0, 4, hu.shape).astype(np.float32)
    return hu


def test_rotated_head_measures_perpendicular_to_the_tilted_midline():
    yaw = 8.0
    vol = volume_from_array(_rotated_head(6.0, yaw), spacing_mm=(1.25, 1.25, 4.0))
    brain = segment_brain(vol)
    plane = ideal_midline_plane(brain.intracranial_mask)
    # x = a + b y: a mirror plane turned by the yaw has slope -tan(yaw) in LPS (x right-to-left, y front-to-back)
    assert abs(abs(plane.b) - np.tan(np.deg2rad(yaw))) < 0.02
    result = measure_midline_shift(vol, brain)
    assert abs(abs(result.shift_mm) - 6.0) <= 1.5


def test_no_ventricles_gives_none_with_a_reason():
    hu = _rotated_head(0.0, 0.0)
    hu[(hu > -20) & (hu < 20)] = 32  # fill the ventricles with brain
    vol = volume_from_array(hu, spacing_mm=(1.25, 1.25, 4.0))
    result = measure_midline_shift(vol, segment_brain(vol))
    assert result.shift_mm is None and result.direction is None
    assert "septum" in result.reason
    assert result.ideal_plane is not None


def test_no_brain_gives_none_with_a_reason():
    hu = np.full((20, 60, 60), -1000.0, np.float32)
    vol = volume_from_array(hu, spacing_mm=(2.0, 2.0, 5.0))
    result = measure_midline_shift(vol, segment_brain(vol))
    assert result.shift_mm is None
    assert result.reason.startswith("no brain found")


def test_real_ge_head_has_no_shift():
    from ictus.imaging.build import build_volume

    folder = shared_dicom("ge-head-tilt-variable-spacing")
    vol = build_volume(sorted(str(p) for p in folder.glob("*.dcm")))
    result = measure_midline_shift(vol, segment_brain(vol))
    assert result.shift_mm is not None, result.reason
    assert abs(result.shift_mm) <= 2.0


def test_tilted_phantom_through_dicom_and_tilt_correction(tmp_path):
    from ictus.imaging.build import build_volume
    from ictus.imaging.phantom import PhantomSpec, write_phantom

    spec = PhantomSpec(midline_shift_mm=10.0, gantry_tilt_deg=15.0, slice_thickness_mm=5.0, matrix=256,
                       pixel_spacing_mm=0.9)
    write_phantom(spec, tmp_path / "study")
    files = sorted(str(p) for p in (tmp_path / "study").rglob("*.dcm"))
    vol = build_volume(files)
    assert "gantry_tilt_corrected" in vol.qc_flags
    truth = json.loads((tmp_path / "study" / "ground_truth.json").read_text())
    result = measure_midline_shift(vol, segment_brain(vol))
    assert abs(result.shift_mm - truth["midline_shift_signed_mm"]) <= 1.5
