"""The phantom as a DICOM study: datasets, UIDs, pixel encoding and :func:`write_phantom`.

The only disk I/O of the geometric phantom; the study is written into a
temporary sibling folder and swapped into place (:func:`ictus.imaging.atomic.atomic_dir`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ictus.imaging.atomic import atomic_dir
from ictus.imaging.errors import OutputError
from ictus.imaging.phantom.anatomy import _Anatomy, _Block, _paint_anatomy
from ictus.imaging.phantom.lesions import _paint_haemorrhage
from ictus.imaging.phantom.rendering import PhantomRender, render_phantom, sample_phantom
from ictus.imaging.phantom.spec import LABELS, PhantomGeometry, PhantomSpec, _pose, tilt_corrected_grid
from ictus.imaging.phantom.truth import ground_truth
from ictus.imaging.uids import UID_ROOT

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# DICOM datasets
# ---------------------------------------------------------------------------
_TRANSFER_SYNTAX = {
    "none": "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "rle": "1.2.840.10008.1.2.5",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "j2k": "1.2.840.10008.1.2.4.90",
    "j2k-lossy": "1.2.840.10008.1.2.4.91",
}
_RESCALE_INTERCEPT = -1024.0
_J2K_LOSSY_RATIO = 8.0  # compression ratio of the lossy JPEG 2000 variant (clinical lossy CT is ~5-15)


def _uid(spec: PhantomSpec, *parts: Any, _spec_text: str | None = None) -> str:
    """A UID derived from the spec (so a spec + seed gives the same study)."""
    from pydicom.uid import generate_uid

    text = _spec_text if _spec_text is not None else json.dumps(dataclasses.asdict(spec), sort_keys=True)
    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=[text, *map(str, parts)]))


def _base_dataset(spec: PhantomSpec, uids: Mapping[str, str]) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "PH" + hashlib.sha1(uids["study_instance_uid"].encode()).hexdigest()[:10].upper()
    ds.Modality = "CT"
    ds.Manufacturer = "Ictus"
    ds.ManufacturerModelName = "Ictus synthetic head phantom"
    ds.InstitutionName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT HEAD WO CONTRAST (PHANTOM)" if not spec.contrast else "CT HEAD W CONTRAST (PHANTOM)"
    ds.PatientName = "PHANTOM^GEOMETRIC"
    ds.PatientID = "PHANTOM-" + hashlib.sha1(uids["study_instance_uid"].encode()).hexdigest()[:8].upper()
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    age = int(spec.patient_age_years)
    ds.PatientAge = f"{age:03d}Y" if age >= 1 else f"{max(int(round(spec.patient_age_years * 12)), 0):03d}M"
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uids["study_instance_uid"]
    ds.StudyID = "1"
    ds.FrameOfReferenceUID = uids["frame_of_reference_uid"]
    ds.PositionReferenceIndicator = ""
    ds.KVP = "120"
    ds.SoftwareVersions = "ictus-phantom-1"
    if spec.contrast:
        ds.ContrastBolusAgent = "IOHEXOL"
        ds.ContrastBolusRoute = "IV"
    return ds


def _file_meta(ds: Any, transfer_syntax: str) -> Any:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "ICTUS_PHANTOM"
    return meta


def _slice_dataset(spec: PhantomSpec, g: PhantomGeometry, uids: Mapping[str, str], k: int, stored: np.ndarray) -> Any:
    ds = _base_dataset(spec, uids)
    ds.SOPInstanceUID = uids["sop_instance_uids"][k]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesInstanceUID = uids["series_instance_uid"]
    ds.SeriesNumber = 2
    ds.SeriesDescription = f"HEAD {g.slice_thickness_mm:g}mm STANDARD" if g.is_regular else "HEAD VARIABLE STANDARD"
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120100"
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [f"{v:.6f}" for v in g.image_positions_patient[k]]
    ds.ImageOrientationPatient = [f"{v:.9f}" for v in g.image_orientation_patient]
    centre = np.asarray(g.image_positions_patient[k]) + (g.rows - 1) / 2 * g.pixel_spacing_mm[0] * g.column_direction \
        + (g.columns - 1) / 2 * g.pixel_spacing_mm[1] * g.row_direction
    ds.SliceLocation = f"{centre[2]:.6f}"  # table position of the plane's centre
    ds.SliceThickness = f"{g.thickness_of(k):g}"
    if g.is_regular:
        ds.SpacingBetweenSlices = f"{g.slice_spacing_mm:g}"
    ds.PixelSpacing = [f"{g.pixel_spacing_mm[0]:g}", f"{g.pixel_spacing_mm[1]:g}"]
    ds.GantryDetectorTilt = f"{g.gantry_tilt_deg:g}"
    ds.ConvolutionKernel = "STANDARD"
    ds.ReconstructionDiameter = f"{g.pixel_spacing_mm[1] * g.columns:g}"
    ds.DataCollectionDiameter = "250"
    ds.XRayTubeCurrent = 250
    ds.ExposureTime = 1000
    ds.RotationDirection = "CW"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = g.rows, g.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0 if spec.unsigned_pixels else 1
    ds.RescaleIntercept = f"{_rescale_intercept(spec):g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "80"
    ds.BurnedInAnnotation = "NO"
    ds.file_meta = _file_meta(ds, _TRANSFER_SYNTAX["none"])
    _set_pixels(ds, stored, spec.compression)
    return ds


def _rescale_intercept(spec: PhantomSpec) -> float:
    return _RESCALE_INTERCEPT if spec.unsigned_pixels else 0.0


def _stored_values(spec: PhantomSpec, hu: np.ndarray) -> np.ndarray:
    """HU -> stored pixel values (uint16 or int16) for the spec's pixel representation."""
    stored = np.rint(hu - _rescale_intercept(spec))
    if spec.unsigned_pixels:
        return stored.clip(0, 65535).astype(np.uint16)
    return stored.clip(-32768, 32767).astype(np.int16)


def _set_pixels(ds: Any, stored: np.ndarray, compression: str) -> None:
    """Store pixels uncompressed or compressed with pydicom's encoders."""
    stored = np.ascontiguousarray(stored)
    if compression == "none":
        ds.PixelData = stored.tobytes()
        return
    kwargs: dict[str, Any] = {}
    if compression == "j2k-lossy":
        kwargs["j2k_cr"] = [_J2K_LOSSY_RATIO]
    try:
        ds.compress(_TRANSFER_SYNTAX[compression], stored, generate_instance_uid=False, **kwargs)
    except RuntimeError as exc:
        raise OutputError(f"phantom: the {compression} encoder is unavailable ({exc}); "
                          "install pylibjpeg-openjpeg / pyjpegls or use --compression none") from exc
    if compression == "j2k-lossy":
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{_J2K_LOSSY_RATIO:g}"
        ds.LossyImageCompressionMethod = "ISO_15444_1"


def _scout_dataset(spec: PhantomSpec, anat: _Anatomy, uids: Mapping[str, str]) -> Any:
    """A lateral localizer: line integrals of attenuation through the head along x."""
    step = 1.5
    size = 256
    half = (size - 1) / 2.0 * step
    ys = np.linspace(-half, half, size)
    zs = np.linspace(half - 40.0, -half - 40.0, size)  # row 0 is superior
    xs = np.arange(-90.0, 90.0 + 1e-6, step)
    yy = np.broadcast_to(ys[None, :], (size, size))
    zz = np.broadcast_to(zs[:, None], (size, size))
    proj = np.zeros((size, size), dtype=np.float32)
    for z0 in range(0, size, 32):
        blk = _Block(xs, yy[z0:z0 + 32], zz[z0:z0 + 32], _pose(spec))
        _paint_anatomy(blk, anat)
        _paint_haemorrhage(blk, anat)
        mu = np.clip(blk.hu + 1000.0, 0.0, None) / 1000.0 * 0.019  # ~water attenuation per mm
        proj[z0:z0 + 32] = mu.sum(axis=2) * step
    stored = np.clip(proj / max(float(proj.max()), 1e-6) * 4000.0, 0, 4095).astype(np.uint16)
    ds = _base_dataset(spec, uids)
    ds.SOPInstanceUID = uids["scout_sop_instance_uid"]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesInstanceUID = uids["scout_series_instance_uid"]
    ds.SeriesNumber = 1
    ds.SeriesDescription = "SCOUT LAT"
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120000"
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [f"{0.0:.6f}", f"{-half:.6f}", f"{zs[0]:.6f}"]
    ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
    ds.PixelSpacing = [f"{step:g}", f"{step:g}"]
    ds.SliceThickness = f"{2 * 90.0:g}"
    ds.ConvolutionKernel = "STANDARD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    ds.BurnedInAnnotation = "NO"
    ds.file_meta = _file_meta(ds, _TRANSFER_SYNTAX["none"])
    ds.PixelData = stored.tobytes()
    return ds


def _multiframe_dataset(slices: list[Any], uids: Mapping[str, Any]) -> Any:
    """The slices as one Legacy Converted Enhanced CT Image (highdicom orders the frames spatially).

    The single-frame sources are never stored, so the Common Instance
    Reference to them is dropped (the per-frame Conversion Source Attributes
    keep their UIDs).
    """
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    mf = LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=uids["series_instance_uid"], series_number=2,
        sop_instance_uid=uids["multiframe_sop_instance_uid"], instance_number=1)
    if "ReferencedSeriesSequence" in mf:
        del mf.ReferencedSeriesSequence
    mf.SeriesDescription = slices[0].SeriesDescription + " (multi-frame)"
    if "LossyImageCompression" in slices[0]:
        for name in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            setattr(mf, name, slices[0].get(name))
    return mf


def phantom_uids(spec: PhantomSpec, n_slices: int) -> dict[str, Any]:
    """The UIDs of a phantom study, derived from its spec (deterministic)."""
    text = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    return {
        "study_instance_uid": _uid(spec, "study"),
        "series_instance_uid": _uid(spec, "series"),
        "frame_of_reference_uid": _uid(spec, "frame"),
        "scout_series_instance_uid": _uid(spec, "scout-series") if spec.with_scout else None,
        "scout_sop_instance_uid": _uid(spec, "scout-instance") if spec.with_scout else None,
        "sop_instance_uids": [_uid(spec, "instance", k, _spec_text=text) for k in range(n_slices)],
        "multiframe_sop_instance_uid": _uid(spec, "multiframe") if spec.multiframe else None,
    }


def _labels_image(render: PhantomRender) -> tuple[Any, dict[str, Any]]:
    """The label map as a SimpleITK image, and a description of its grid."""
    import SimpleITK as sitk

    g = render.geometry
    if g.is_orthogonal and g.is_regular:
        labels = render.labels
        origin = g.image_positions_patient[0]
        spacing = (g.pixel_spacing_mm[1], g.pixel_spacing_mm[0], g.slice_spacing_mm)
        direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        kind = "dicom"
    else:
        # A sheared or irregular stack cannot be stored in NIfTI as ITK reads it (orthonormal, regular
        # axes only), so the same analytic labels are sampled on the tilt-corrected / uniform grid.
        grid = tilt_corrected_grid(g)
        origin, spacing, direction = grid["origin_lps_mm"], grid["spacing_mm"], grid["direction"]
        _, labels = sample_phantom(render, origin, spacing, grid["size_xyz"], direction=direction,
                                   thickness_mm=g.slice_thickness_mm if g.is_regular else spacing[2])
        kind = "tilt_corrected" if not g.is_orthogonal else "uniform_resampled"
    img = sitk.GetImageFromArray(np.ascontiguousarray(labels, dtype=np.uint8))
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetSpacing(tuple(float(v) for v in spacing))
    img.SetDirection(tuple(float(v) for v in direction))
    desc = {
        "kind": kind,
        "description": {
            "dicom": "labels on the written DICOM grid",
            "tilt_corrected": "tilted series: labels sampled from the same analytic phantom on the tilt-corrected "
                              "orthonormal grid (axes: row, column and normal of the tilted planes; extra rows hold "
                              "the shear; irregular stacks resampled every smallest spacing), as dcm2niix corrects tilt",
            "uniform_resampled": "variable-spacing or gapped series: labels sampled from the same analytic phantom "
                                 "on a uniform grid every smallest spacing, from the first to the last slice",
        }[kind],
        "origin_lps_mm": [float(v) for v in origin],
        "spacing_mm": [float(v) for v in spacing],
        "size_xyz": [int(v) for v in img.GetSize()],
        "direction": [float(v) for v in direction],
        "voxel_counts": {name: int((labels == value).sum()) for name, value in LABELS.items() if value},
    }
    return img, desc


@dataclass(frozen=True)
class PhantomWritten:
    """What :func:`write_phantom` wrote."""

    out_dir: Path
    series_dir: Path
    n_files: int
    ground_truth_path: Path
    labels_path: Path
    truth: dict


def write_phantom(spec: PhantomSpec, out_dir: str | os.PathLike, *, force: bool = False) -> PhantomWritten:
    """Write the phantom as a DICOM study plus ``ground_truth.json`` and ``ground_truth_labels.nii.gz``.

    Layout: ``OUT_DIR/series-002-axial/CT0001.dcm...`` (inferior to superior),
    ``OUT_DIR/series-001-scout/SC0001.dcm`` with ``with_scout``, and the two
    ground-truth files at the top. Written into a temporary sibling folder and
    renamed into place. A non-empty ``out_dir`` is refused unless ``force``.
    """
    import SimpleITK as sitk

    spec = spec.validated()
    out = Path(out_dir)
    check_out_dir(out, force=force)
    render = render_phantom(spec)
    g = render.geometry
    uids = phantom_uids(spec, g.n_slices)
    stored = _stored_values(spec, render.hu)
    truth = ground_truth(render, uids)

    def fill(tmp: Path) -> None:
        series_dir = tmp / "series-002-axial"
        series_dir.mkdir()
        slices = (_slice_dataset(spec, g, uids, k, stored[k]) for k in range(g.n_slices))
        if spec.multiframe:
            _multiframe_dataset(list(slices), uids).save_as(series_dir / "CT0001.dcm", enforce_file_format=True)
        else:
            for k, ds in enumerate(slices):
                ds.save_as(series_dir / f"CT{k + 1:04d}.dcm", enforce_file_format=True)
        if spec.with_scout:
            scout_dir = tmp / "series-001-scout"
            scout_dir.mkdir()
            _scout_dataset(spec, render.model, uids).save_as(scout_dir / "SC0001.dcm", enforce_file_format=True)
        img, desc = _labels_image(render)
        sitk.WriteImage(img, str(tmp / "ground_truth_labels.nii.gz"), useCompression=True)
        truth["labels_file"] = "ground_truth_labels.nii.gz"
        truth["labels_grid"] = desc
        truth["series_folder"] = series_dir.name
        truth["n_files"] = 1 if spec.multiframe else g.n_slices
        write_truth_json(tmp, truth)

    write_study_dir(out, fill)
    log.info("phantom written to %s (%d slices)", out, g.n_slices)
    return PhantomWritten(out_dir=out, series_dir=out / "series-002-axial", n_files=truth["n_files"],
                          ground_truth_path=out / "ground_truth.json",
                          labels_path=out / "ground_truth_labels.nii.gz", truth=truth)


def check_out_dir(out: Path, *, force: bool) -> None:
    """Refuse an output path that is a file, or a non-empty folder unless ``force`` (OutputError)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"phantom: {out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputError(f"phantom: output folder {out} is not empty; choose an empty folder or use --force")


def write_study_dir(out: Path, fill: Callable[[Path], None]) -> None:
    """Build a study with ``fill(tmp)`` in a temporary sibling folder, then swap it in as ``out``.

    An OS error (no space, no permission) becomes an OutputError and leaves
    ``out`` as it was, with no temporary folder behind.
    """
    try:
        with atomic_dir(out) as tmp:
            fill(tmp)
    except OSError as exc:
        raise OutputError(f"phantom: cannot write {out} ({exc.strerror or exc}); check space and permissions") from exc


def write_truth_json(folder: Path, truth: Mapping[str, Any]) -> None:
    """``ground_truth.json`` of a phantom study (numpy values and paths made plain JSON)."""
    (folder / "ground_truth.json").write_text(json.dumps(truth, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
