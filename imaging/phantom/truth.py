"""Ground truth of a phantom: the JSON-ready record and :class:`PhantomTruth` (labels + record).

Truth never travels inside a :class:`~ictus.imaging.volume.Volume`: it is
returned next to it (:func:`ictus.imaging.phantom.phantom_with_truth`) or
written to ``ground_truth.json`` (:func:`ictus.imaging.phantom.write_phantom`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ictus.imaging.phantom.anatomy import _Anatomy, _Block, _paint_anatomy
from ictus.imaging.phantom.lesions import _evaluate, _fine_grid, _haemorrhage_box
from ictus.imaging.phantom.spec import LABELS, PARENCHYMA_TISSUES, TISSUES, _to_lps, acquisition_geometry, head_rotation

if TYPE_CHECKING:
    from ictus.imaging.phantom.rendering import PhantomRender


# ---------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PhantomTruth:
    """The known answer for a phantom :class:`~ictus.imaging.volume.Volume`, kept apart from it.

    ``labels``: uint8 BLAST-CT labels ([z, y, x], on the volume's grid; see
    ``LABELS``); ``record``: the ground-truth record (:func:`ground_truth`, as in
    ``ground_truth.json``: volumes, midline shift, geometry...).
    """

    labels: np.ndarray = field(repr=False)
    record: Mapping[str, Any] = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        """A field of the record (``truth["midline_shift_mm"]``)."""
        return self.record[key]


def _brain_volumes_ml(anat: _Anatomy, step: float = 1.0) -> dict[str, float]:
    """Parenchyma, intracranial and ventricular volumes on a 1 mm grid (before haemorrhage)."""
    lo, hi = anat.intracranial.bbox()
    xs, ys, zs = _fine_grid(lo, hi, step)
    counts = np.zeros(256, dtype=np.int64)
    probe = dataclasses.replace(anat, haemorrhage=None)
    for z0 in range(0, ys.shape[0], 16):
        blk = _Block(xs, ys[z0:z0 + 16], zs[z0:z0 + 16])
        _paint_anatomy(blk, probe)
        counts += np.bincount(blk.tissue.ravel(), minlength=256)
    dv = step**3 / 1000.0
    T = TISSUES
    parenchyma = sum(counts[c] for c in PARENCHYMA_TISSUES)
    lv = counts[T["lateral_ventricle_left"]] + counts[T["lateral_ventricle_right"]]
    icv = parenchyma + lv + sum(counts[T[name]] for name in ("third_ventricle", "csf", "falx", "venous_sinus", "artery"))
    return {
        "brain_volume_ml": float(parenchyma * dv),
        "intracranial_volume_ml": float(icv * dv),
        "lateral_ventricles_volume_ml": float(lv * dv),
        "left_lateral_ventricle_volume_ml": float(counts[T["lateral_ventricle_left"]] * dv),
        "right_lateral_ventricle_volume_ml": float(counts[T["lateral_ventricle_right"]] * dv),
    }


def ground_truth(render: PhantomRender, uids: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ground-truth record (JSON-ready) of a rendered phantom."""
    spec, anat, g = render.spec, render.model, render.geometry
    vox_ml = g.voxel_volume_ml
    # per-slice volumes: pixel area x the length along the normal each slice stands for
    slice_ml = g.pixel_spacing_mm[0] * g.pixel_spacing_mm[1] * g.slice_extents_mm / 1000.0
    counts = np.stack([np.bincount(render.labels[k].ravel(), minlength=8)[:8] for k in range(g.n_slices)])
    fractions = render.label_fractions_per_slice
    if fractions is None:
        fractions = np.zeros((g.n_slices, 8))
    volumes: dict[str, Any] = {}
    h = anat.haemorrhage
    for name in ("IPH", "EAH", "oedema", "IVH"):
        nominal = 0.0
        if h is not None and name == h.kind:
            nominal = spec.haemorrhage_volume_ml
        volumes[name] = {
            "nominal_ml": nominal,
            "on_grid_ml": float(counts[:, LABELS[name]] @ slice_ml),
            "on_grid_partial_volume_ml": float(fractions[:, LABELS[name]] @ slice_ml),
        }
    if h is not None and h.kind == "IPH" and h.oedema_semi is not None:
        volumes["oedema"]["nominal_ml"] = _oedema_volume_ml(anat)
    shift = anat.shift_signed_mm
    direction = None if shift == 0 else ("left" if shift > 0 else "right")
    hem = None
    if h is not None:
        hem = "bilateral" if h.side == "both" else h.side
    truth: dict[str, Any] = {
        "schema": "ictus-phantom-ground-truth/1",
        "spec": dataclasses.asdict(spec),
        "conventions": {
            "coordinates": "DICOM patient LPS in mm: +x patient left, +y posterior, +z superior; head centre at x=0",
            "labels": dict(LABELS),
            "midline_shift_sign": "midline_shift_signed_mm > 0 means the midline structures moved towards patient LEFT (+x)",
            "ideal_midline": "the plane x = 0 mm (the skull's symmetry plane)",
            "on_grid": "label voxel count on the written DICOM grid x voxel volume (pixel area x slice spacing; "
                       "for an irregular stack each slice stands for half the distance to each neighbour); "
                       "a voxel is labelled when most sub-samples across the slice thickness are inside "
                       "(thin or oblique layers lose volume on thick slices)",
            "on_grid_partial_volume": "sum over voxels of the fraction of sub-samples inside x voxel volume",
            "nominal": "the requested volume, realised on a fine grid (fit_info.fine_grid_step_mm)",
        },
        "haemorrhage": None if h is None else {
            "type": h.kind,
            "hemisphere": hem,
            "hu": h.hu,
            "nominal_volume_ml": spec.haemorrhage_volume_ml,
            "on_grid_volume_ml": volumes[h.kind]["on_grid_ml"],
            "centroid_lps_mm": render.fit_info.get("centroid_lps_mm"),
            "scanned_fraction": render.fit_info.get("scanned_fraction"),
            "fit_info": dict(render.fit_info),
        },
        "volumes_ml": volumes,
        "ich_total_volume_ml": {
            "nominal_ml": sum(volumes[c]["nominal_ml"] for c in ("IPH", "EAH", "IVH")),
            "on_grid_ml": sum(volumes[c]["on_grid_ml"] for c in ("IPH", "EAH", "IVH")),
        },
        "midline_shift_mm": abs(shift),
        "midline_shift_direction": direction,
        "midline_shift_signed_mm": shift,
        "midline_shift_where": "septum pellucidum, third ventricle and lateral ventricles move rigidly by the shift; "
                               "the displacement decays to 0 at the inner table (skull unchanged)",
        "ideal_midline_x_mm": 0.0,
        "septum_pellucidum_x_mm": shift,
        "head_pose": {
            "yaw_deg": spec.head_yaw_deg,
            "roll_deg": spec.head_roll_deg,
            "pitch_deg": spec.head_pitch_deg,
            "offset_lps_mm": [float(v) for v in spec.head_offset_mm],
            "rotation_head_to_lps": head_rotation(spec).round(12).tolist(),
            "note": "x_mm values above are in the head frame: signed distances from the midsagittal plane",
        },
        "midsagittal_plane": {
            "point_lps_mm": [float(v) for v in spec.head_offset_mm],
            "normal_lps": [float(v) for v in head_rotation(spec)[:, 0]],  # towards the patient's left
        },
        "septum_pellucidum_centre_lps_mm": _to_lps(spec, (shift, -5.0 * anat.k, 14.0 * anat.k)),
        "ventricle_dilation_factor": anat.ventricle_dilation,
        "head_scale": anat.k,
        **_brain_volumes_ml(anat),
        "contrast": spec.contrast,
        "metal_artefact": render.fit_info.get("metal_artefact"),
        "geometry": {
            **acquisition_geometry(g),
            "affine_ijk_to_lps": g.affine.round(6).tolist(),
            "voxel_volume_ml": vox_ml,
            "regular": g.is_regular,
            "slice_thicknesses_mm": None if g.is_regular else list(g.slice_thicknesses_mm or ()),
            "slice_positions_along_normal_mm": [float(v) for v in g.normal_positions_mm.round(6)],
        },
    }
    if uids:
        truth["uids"] = dict(uids)
    return truth


def _oedema_volume_ml(anat: _Anatomy) -> float:
    h = anat.haemorrhage
    assert h is not None  # only called for a phantom with an IPH and oedema
    lo, hi = _haemorrhage_box(anat, h)
    step = 0.5
    xs, ys, zs = _fine_grid(lo, hi, step)
    total = 0
    for z0 in range(0, ys.shape[0], 32):
        blk = _evaluate(anat, xs, ys[z0:z0 + 32], zs[z0:z0 + 32])
        total += int((blk.label == LABELS["oedema"]).sum())
    return total * step**3 / 1000.0

