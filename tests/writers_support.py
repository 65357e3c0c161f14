"""Builders of TriageResults for the writer tests (no model: phantom ground truth as the segmentation)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from ictus.imaging.build import build_volume
from ictus.imaging.midline import MidlinePlane, MidlineResult
from ictus.imaging.phantom import PhantomSpec, write_phantom
from ictus.imaging.volume import Volume
from ictus.models.registry import get_card
from ictus.models.types import Segmentation
from ictus.pipelines.findings.record import (BrainFinding, ClassFinding, Findings, IchFinding, LocationFinding,
                                           MidlineFinding, ModelProvenance, Provenance, QcFinding, SeriesUsed)
from ictus.pipelines.triage import TriageResult

CLASS_NAMES = ("background", "IPH", "EAH", "oedema", "IVH")


def segmentation_from_labels(labels: np.ndarray) -> Segmentation:
    """A Segmentation holding only labels (writers do not read probabilities)."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    return Segmentation(
        probabilities=np.zeros((len(CLASS_NAMES), 1, 1, 1), np.float16),
        labels=labels,
        agreement=np.ones((1, 1, 1), np.float16),
        class_names=CLASS_NAMES,
        model_id="blast-ct",
        model_version="v1",
    )


def volume_ml(volume: Volume, labels: np.ndarray, value: int) -> float:
    return float((labels == value).sum()) * volume.voxel_volume_ml


def empty_provenance(volume: Volume | None = None, models: tuple[ModelProvenance, ...] = ()) -> Provenance:
    """Provenance with the given models, of ``volume``'s series (or of none)."""
    series = SeriesUsed("", volume.series_instance_uid if volume is not None else "", "", 0, (0, 0, 0), (0.0, 0.0, 0.0))
    return Provenance(ictus_version="0.1.0", models=models, series_used=series)


def make_findings(**fields: Any) -> Findings:
    """A findings record with empty parts (no clinical value, no stroke blocks), ``fields`` replacing them."""
    base: dict[str, Any] = dict(
        schema_version="1.0", study_instance_uid="", series_instance_uid="", priority="indeterminate",
        priority_reasons=(), findings_reported=True,
        ich=IchFinding(present=None, probability=None, total_volume_ml=None, subtypes={}),
        oedema=ClassFinding(present=None, volume_ml=None), midline_shift_mm=None, midline_shift_direction=None,
        midline=MidlineFinding(computed=False, measured=False, reason="not computed"),
        brain=BrainFinding(found=None, volume_ml=None, reason="not computed"), qc=QcFinding(),
        location=LocationFinding("", "not computed", "", None, ""), min_lesion_ml=None,
        provenance=empty_provenance(), timings_s={},
    )
    base.update(fields)
    return Findings(**base)


def findings_for(volume: Volume, labels: np.ndarray, *, shift_mm: float | None, direction: str | None,
                 priority: str = "critical", probability: float = 0.93) -> Findings:
    """A findings record (haemorrhage, oedema, midline, QC flags, provenance) from the labels."""
    iph, eah, oed, ivh = (round(volume_ml(volume, labels, v), 1) for v in (1, 2, 3, 4))
    total = round(iph + eah + ivh, 1)
    return make_findings(
        study_instance_uid=volume.study_instance_uid,
        series_instance_uid=volume.series_instance_uid,
        priority=priority,
        ich=IchFinding(present=total > 0, probability=probability, total_volume_ml=total, subtypes={
            "IPH": ClassFinding(present=iph > 0, volume_ml=iph),
            "EAH": ClassFinding(present=eah > 0, volume_ml=eah),
            "IVH": ClassFinding(present=ivh > 0, volume_ml=ivh),
        }),
        oedema=ClassFinding(present=None, volume_ml=oed),
        midline_shift_mm=shift_mm,
        midline_shift_direction=direction,
        qc=QcFinding(flags=tuple(volume.qc_flags)),
        provenance=empty_provenance(volume, (ModelProvenance(
            "blast-ct", "v1", (), (), "95f76e8b16fe42b6aa49388cb798e282c55cd70191544f4417445bb87803f99f"),)),
        timings_s={"scan": 0.05, "build_volume": 0.2, "segment": 9.8},
    )


def phantom_result(out_dir: Path, *, n_slices: int = 30, tilt_deg: float = 0.0, shift_mm: float = 6.0,
                   volume_ml_: float = 30.0) -> tuple[TriageResult, Any]:
    """Write a small phantom study (256 x 256, 5 mm, IPH, shift) and build its TriageResult."""
    spec = PhantomSpec(
        haemorrhage="IPH", haemorrhage_volume_ml=volume_ml_, midline_shift_mm=shift_mm, matrix=256,
        pixel_spacing_mm=0.9, slice_thickness_mm=5.0, n_slices=n_slices, gantry_tilt_deg=tilt_deg,
        noise_hu=3.0,
    )
    written = write_phantom(spec, out_dir)
    volume = build_volume(sorted(written.series_dir.glob("*.dcm")))
    truth = sitk.ReadImage(str(written.labels_path))
    labels = sitk.GetArrayFromImage(
        sitk.Resample(truth, volume.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    )
    signed = float(written.truth["midline_shift_signed_mm"])
    direction = "none" if signed == 0 else ("left" if signed > 0 else "right")
    midline = MidlineResult(
        shift_mm=signed, direction=direction, method="phantom ground truth", confidence=1.0, reason="test",
        ideal_plane=MidlinePlane(a_mm=float(written.truth["ideal_midline_x_mm"]), b=0.0, c=0.0, yc_mm=0.0,
                                 zc_mm=20.0),
    )
    findings = findings_for(volume, labels, shift_mm=abs(signed), direction=direction)
    result = TriageResult(volume=volume, segmentation=segmentation_from_labels(labels), findings=findings,
                          card=get_card("blast-ct"), midline=midline)
    return result, written


def blob_result(volume: Volume, *, centre_offset_mm=(20.0, 0.0, 10.0), radius_mm: float = 15.0,
                rim_mm: float = 3.0) -> tuple[TriageResult, np.ndarray, float]:
    """A hand-made IPH sphere (plus an oedema rim) in physical space, inside the head of a real volume."""
    img = volume.image
    size = np.array(img.GetSize())
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2.0).tolist())) + centre_offset_mm
    dist = distance_to(volume, centre)
    labels = np.zeros(dist.shape, np.uint8)
    labels[dist < radius_mm] = 1
    labels[(dist >= radius_mm) & (dist < radius_mm + rim_mm)] = 3
    findings = findings_for(volume, labels, shift_mm=None, direction=None, priority="urgent", probability=0.8)
    result = TriageResult(volume=volume, segmentation=segmentation_from_labels(labels), findings=findings,
                          card=get_card("blast-ct"))
    return result, centre, radius_mm


def distance_to(volume: Volume, point_lps: np.ndarray) -> np.ndarray:
    """Distance (mm) of every voxel centre of ``volume`` to a point, indexed [z, y, x]."""
    img = volume.image
    nx, ny, nz = img.GetSize()
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    ijk = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3).astype(float)
    lps = volume.affine[:3, :3] @ ijk.T + volume.affine[:3, 3:4]
    return np.linalg.norm(lps.T - point_lps, axis=1).reshape(nz, ny, nx)


def require_tool(name: str) -> str:
    """Path of an external tool, or skip the test with the package to install."""
    path = shutil.which(name)
    if path is None:
        package = {"dciodvfy": "dicom3tools", "dsrdump": "dcmtk", "chromium": "chromium"}.get(name, name)
        pytest.skip(f"{name} is not installed (apt-get install {package}, or make sysdeps)")
    return path


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The Error lines dciodvfy reports for a file."""
    proc = subprocess.run([require_tool("dciodvfy"), str(path)], check=False, capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def with_pipeline_findings(result: TriageResult) -> TriageResult:
    """The same result with findings made by the real findings code (ictus.pipelines.findings.record), not by hand."""
    import dataclasses

    from ictus.imaging.measure import measure_labels
    from ictus.pipelines.findings.build import build_findings

    seg = result.segmentation
    probabilities = np.zeros((len(CLASS_NAMES),) + seg.labels.shape, np.float16)
    for value in range(len(CLASS_NAMES)):
        probabilities[value][seg.labels == value] = 0.9
    seg = dataclasses.replace(seg, probabilities=probabilities, agreement=np.ones(seg.labels.shape, np.float16))
    plane = result.midline.ideal_plane if result.midline is not None else None
    measurements = measure_labels(seg.labels, result.volume, CLASS_NAMES, probabilities=seg.probabilities,
                                  agreement=seg.agreement, plane=plane, region_status="no atlas in tests")
    findings = build_findings(result.volume, seg, measurements=measurements, midline=result.midline,
                              card_info=result.card, timings_s={"segment": 9.8})
    return dataclasses.replace(result, segmentation=seg, findings=findings)


# -- stroke fixtures: fake anatomy / ischaemia / dense-artery objects with the attributes the writers read --

ASPECTS_ORDER = ("C", "LN", "InCa", "IC", "M1", "M2", "M3", "M4", "M5", "M6")


def fake_aspects_labels(grid: sitk.Image, midline_x_mm: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Geometric stand-ins for the 20 ASPECTS regions on ``grid`` ([z, y, x], 1-10 left, 11-20 right)
    and lps coordinates relative to the midline and the grid centre (lateral, ap, dz in mm)."""
    nx, ny, nz = grid.GetSize()
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    ijk = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3).astype(float)
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    lps = np.asarray(grid.GetOrigin()) + (ijk * np.asarray(grid.GetSpacing())) @ direction.T
    centre = np.asarray(grid.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in grid.GetSize()]))
    x = (lps[:, 0] - midline_x_mm).reshape(nz, ny, nx)
    ap = (lps[:, 1] - centre[1]).reshape(nz, ny, nx)
    dz = (lps[:, 2] - centre[2]).reshape(nz, ny, nx)
    lat = np.abs(x)
    gang = (dz > -10) & (dz < 6)
    supra = (dz > 14) & (dz < 36)
    rules = {
        "C": gang & (lat >= 6) & (lat < 14) & (ap >= -22) & (ap < -6),
        "InCa": gang & (lat >= 8) & (lat < 16) & (ap >= -6) & (ap < 10),
        "LN": gang & (lat >= 16) & (lat < 28) & (ap >= -12) & (ap < 12),
        "IC": gang & (lat >= 28) & (lat < 34) & (ap >= -15) & (ap < 15),
        "M1": gang & (lat >= 30) & (lat < 60) & (ap < -15),
        "M2": gang & (lat >= 34) & (lat < 60) & (ap >= -15) & (ap < 15),
        "M3": gang & (lat >= 30) & (lat < 60) & (ap >= 15) & (ap < 45),
        "M4": supra & (lat >= 18) & (lat < 58) & (ap < -15) & (ap > -50),
        "M5": supra & (lat >= 18) & (lat < 58) & (ap >= -15) & (ap < 15),
        "M6": supra & (lat >= 18) & (lat < 58) & (ap >= 15) & (ap < 45),
    }
    labels = np.zeros((nz, ny, nx), np.uint8)
    for n, code in enumerate(ASPECTS_ORDER):
        region = rules[code] & (labels == 0)
        labels[region & (x > 0)] = n + 1  # LPS x grows to the patient's left
        labels[region & (x < 0)] = n + 11
    return labels, {"x": x, "ap": ap, "dz": dz}


def with_stroke(result: TriageResult, *, registered: bool = True, affected: dict[str, tuple[str, ...]] | None = None,
                dense: bool = True) -> TriageResult:
    """The result with a fake registered anatomy (geometric ASPECTS regions on an LPS grid of the
    volume), an ischaemia result (``affected`` regions hypodense) and a left M1 dense artery, and
    the stroke blocks of findings.json made by ictus.pipelines.findings.stroke from them."""
    import dataclasses
    from types import SimpleNamespace

    from ictus.pipelines.findings import stroke

    affected = {"left": ("LN", "M2"), "right": ()} if affected is None else affected
    grid = sitk.Cast(sitk.DICOMOrient(result.volume.image, "LPS"), sitk.sitkFloat32)
    plane = result.midline.ideal_plane if result.midline is not None else None
    midline_x = float(plane.a_mm) if plane is not None else float(
        grid.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in grid.GetSize()])[0])
    labels, rel = fake_aspects_labels(grid, midline_x)
    anatomy = SimpleNamespace(grid=grid, aspects=labels, registered=registered, quality_dice=0.91 if registered else 0.42)
    if not registered:
        isch = stroke.ischaemia_finding(None, "registration_failed: template overlap 0.42")
        art = stroke.dense_artery_finding(None, "registration_failed: template overlap 0.42")
        findings = dataclasses.replace(result.findings, **_stroke_blocks(result, anatomy, isch, art))
        return dataclasses.replace(result, anatomy=anatomy, ischaemia=None, dense_artery=None, findings=findings)
    rows = []
    affected_mask = np.zeros_like(labels)
    for side in ("left", "right"):
        for n, code in enumerate(ASPECTS_ORDER):
            label = n + (1 if side == "left" else 11)
            hit = code in affected.get(side, ())
            if hit:
                affected_mask[labels == label] = label
            mean = 30.5 - (3.1 if hit else 0.2 * (n % 3))
            mirror = 30.4
            rows.append(SimpleNamespace(
                code=code, side=side, name=f"{code} region", voxel_count=int((labels == label).sum()),
                mean_hu=mean, mirror_mean_hu=mirror, difference_hu=mean - mirror, ratio=mean / mirror,
                nwu_percent=(1 - mean / mirror) * 100 if hit else None, noise_se_hu=0.4,
                z_score=(mirror - mean) / 0.4, affected=hit, chronic=False, reason="ok"))
    aspects = {side: 10 - len(affected.get(side, ())) for side in ("left", "right")}
    isch_obj = SimpleNamespace(
        assessed=True, reason="ok", regions=tuple(rows), aspects=aspects,
        affected_side=next((s for s in ("left", "right") if affected.get(s)), None),
        affected_regions={s: tuple(affected.get(s, ())) for s in ("left", "right")}, score_reliable=True,
        reliability_note="", nwu_percent=10.2 if any(affected.values()) else None,
        onset_within_4_5h_likely=True if any(affected.values()) else None, nwu_cutoff_percent=11.5,
        nwu_source="Broocks G et al., Radiology 2019 (NWU 11.5% ~ 4.5 h)", hypodensity=(),
        large_mca_hypodensity=False, chronic=(), noise_hu=3.0, affected_mask=affected_mask)
    artery = np.zeros_like(labels, dtype=bool)
    if dense:
        artery = (rel["x"] > 8) & (rel["x"] < 32) & (np.abs(rel["ap"] + 2) < 2.5) & (np.abs(rel["dz"] + 14) < 3)
    vessel_rows = (
        SimpleNamespace(name="M1", side="left", peak_hu=62.0, mean_hu=55.3, contralateral_mean_hu=40.1,
                        ratio=1.38, length_mm=14.0, dense=dense, reason="ok"),
        SimpleNamespace(name="M1", side="right", peak_hu=44.0, mean_hu=40.1, contralateral_mean_hu=55.3,
                        ratio=0.73, length_mm=0.0, dense=False, reason="ok"),
    )
    dense_obj = SimpleNamespace(present=dense, side="left" if dense else None, mask=artery, segments=vessel_rows,
                                reason="ok", caution="")
    isch = stroke.ischaemia_finding(isch_obj, "ok")
    art = stroke.dense_artery_finding(dense_obj, "ok")
    findings = dataclasses.replace(result.findings, **_stroke_blocks(result, anatomy, isch, art))
    return dataclasses.replace(result, anatomy=anatomy, ischaemia=isch_obj, dense_artery=dense_obj, findings=findings)


def _stroke_blocks(result: TriageResult, anatomy: Any, isch: Any, art: Any) -> dict[str, Any]:
    """The stroke parts of the findings record (as ictus.pipelines.findings.build makes them)."""
    from ictus.pipelines.findings import stroke

    ich = result.findings.ich
    summary = stroke.stroke_summary(ich.present, ich.total_volume_ml, isch, art)
    ich_score = stroke.IchScoreFinding(volume_ge_30_ml=bool((ich.total_volume_ml or 0) >= 30),
                                       ivh_present=False, infratentorial_origin=False, age_ge_80=None,
                                       imaging_points=int((ich.total_volume_ml or 0) >= 30))
    return {
        "ischaemia": isch, "dense_artery": art, "anatomy": stroke.anatomy_finding(anatomy, 0.7),
        "ich_score": ich_score, "stroke_summary": summary,
    }
