"""Builders of TriageResults for the writer tests (no model: phantom ground truth as the segmentation)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from imaging.build import build_volume
from imaging.midline import MidlinePlane, MidlineResult
from imaging.phantom import PhantomSpec, write_phantom
from imaging.volume import Volume
from models.registry import get_card
from models.types import Segmentation
from pipelines.triage import TriageResult

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


def findings_for(volume: Volume, labels: np.ndarray, *, shift_mm: float | None, direction: str | None,
                 priority: str = "critical", probability: float = 0.93) -> dict[str, Any]:
    """A findings dictionary with the keys of the findings.json schema, from the labels."""
    iph, eah, oed, ivh = (round(volume_ml(volume, labels, v), 1) for v in (1, 2, 3, 4))
    total = round(iph + eah + ivh, 1)
    return {
        "schema_version": "1.0",
        "study_instance_uid": volume.study_instance_uid,
        "series_instance_uid": volume.series_instance_uid,
        "priority": priority,
        "ich": {
            "present": total > 0,
            "probability": probability,
            "total_volume_ml": total,
            "subtypes": {
                "IPH": {"present": iph > 0, "volume_ml": iph},
                "EAH": {"present": eah > 0, "volume_ml": eah},
                "IVH": {"present": ivh > 0, "volume_ml": ivh},
            },
        },
        "oedema": {"volume_ml": oed},
        "midline_shift_mm": shift_mm,
        "midline_shift_direction": direction,
        "qc": {"flags": list(volume.qc_flags)},
        "provenance": {
            "ictus": "0.1.0",
            "models": [{"id": "blast-ct", "version": "v1", "sha256": "95f76e8b16fe42b6aa49388cb798e282c55cd70191544f4417445bb87803f99f"}],
            "series": volume.series_instance_uid,
        },
        "timings_s": {"scan": 0.05, "build_volume": 0.2, "segment": 9.8},
    }


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
    """The same result with findings made by the real findings code (pipelines.findings), not by hand."""
    import dataclasses

    from imaging.measure import measure_labels
    from pipelines.findings import build_findings, findings_to_dict

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
    return dataclasses.replace(result, segmentation=seg, findings=findings_to_dict(findings))
