"""DICOM Segmentation (highdicom) of the lesion labels, aligned with the SOURCE series.

The model's labels live on the analysed volume's grid, which may differ from
the acquired slices (gantry tilt corrected, variable spacing resampled). The
SEG must overlay the slices a viewer shows, so :func:`labels_on_source_frames`
samples the label volume at the physical (LPS) position of every pixel of
every source frame (nearest neighbour, SimpleITK), using each frame's own
Image Position/Orientation and Pixel Spacing. The SEG then references the
source instances frame by frame (BINARY, one segment per lesion class found),
with segment codes and algorithm identification from the model card.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from imaging.errors import OutputError
from imaging.volume import SourceSlice, Volume
from pipelines.writers import common

log = logging.getLogger(__name__)

SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "ICTUS segmentation"


@dataclass(frozen=True)
class SegmentInfo:
    """One segment written into the SEG: its number and the class it holds."""

    segment_number: int
    label_value: int
    name: str


def _frame_reference(s: SourceSlice) -> sitk.Image:
    """A one-slice reference image with the geometry of a source frame."""
    iop = np.asarray(s.image_orientation_patient, dtype=float)
    row_dir = iop[:3] / np.linalg.norm(iop[:3])
    col_dir = iop[3:] - (iop[3:] @ row_dir) * row_dir
    col_dir /= np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    ref = sitk.Image([int(s.columns), int(s.rows), 1], sitk.sitkUInt8)
    row_spacing, col_spacing = s.pixel_spacing_mm
    ref.SetSpacing((float(col_spacing), float(row_spacing), 1.0))
    ref.SetOrigin(tuple(float(v) for v in s.image_position_patient))
    ref.SetDirection(tuple(np.column_stack([row_dir, col_dir, normal]).ravel().tolist()))
    return ref


def labels_on_source_frames(labels_zyx: np.ndarray, volume: Volume, slices: Sequence[SourceSlice]) -> np.ndarray:
    """The label volume sampled on each source frame: uint8 [n_frames, rows, cols].

    Nearest-neighbour lookup at each source pixel's LPS position; pixels
    outside the volume are 0. Frames may differ in size (rare); the output
    uses the first frame's size and refuses others.
    """
    if labels_zyx.shape != tuple(reversed(volume.size)):
        raise OutputError(
            f"segmentation grid {labels_zyx.shape} does not match the volume {tuple(reversed(volume.size))}; "
            "run the model on this volume"
        )
    if not slices:
        raise OutputError("the volume lists no source slices; the SEG cannot be aligned with the source series")
    rows, cols = int(slices[0].rows), int(slices[0].columns)
    if any((int(s.rows), int(s.columns)) != (rows, cols) for s in slices):
        raise OutputError("source frames differ in size; a SEG of this series is not supported")
    out = np.zeros((len(slices), rows, cols), dtype=np.uint8)
    nonzero = [np.flatnonzero(np.asarray(labels_zyx).any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(idx.size == 0 for idx in nonzero):
        return out
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels_zyx, dtype=np.uint8))
    image.CopyInformation(volume.image)
    # corners of the labels' bounding box (LPS): frames whose plane misses it stay empty
    (z0, z1), (y0, y1), (x0, x1) = ((int(i[0]) - 1, int(i[-1]) + 1) for i in nonzero)
    corners = np.array([[x, y, z, 1.0] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)])
    corners_lps = (volume.affine @ corners.T)[:3].T
    reach_mm = float(np.linalg.norm(volume.spacing_mm))
    identity = sitk.Transform()
    for k, s in enumerate(slices):
        ref = _frame_reference(s)
        normal = np.array(ref.GetDirection()).reshape(3, 3)[:, 2]
        side = (corners_lps - np.asarray(s.image_position_patient)) @ normal
        if side.min() > reach_mm or side.max() < -reach_mm:
            continue
        frame = sitk.Resample(image, ref, identity, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        out[k] = sitk.GetArrayViewFromImage(frame)[0]
    return out


def algorithm_identification(card: Any) -> hd.AlgorithmIdentificationSequence:
    """AlgorithmIdentificationSequence from the model card (name, AI family, version)."""
    family = (card.raw.get("architecture") or {}).get("family") if getattr(card, "raw", None) else None
    params = {"model": card.ref}
    if family:
        params["architecture"] = str(family)
    return hd.AlgorithmIdentificationSequence(
        name=str(card.name)[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=str(card.version)[:64],
        source=str(card.source.repository)[:64] if getattr(card, "source", None) else None,
        parameters=params,
    )


def _coded(code: Any) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(
        value=code.code_value, scheme_designator=code.scheme_designator, meaning=code.code_meaning
    )


def _segment_description(number: int, cls: common.LesionClass, algorithm: hd.AlgorithmIdentificationSequence,
                         index: int) -> hd.seg.SegmentDescription:
    category = cls.codes.get("category")
    prop_type = cls.codes.get("type")
    if category is None or prop_type is None:
        raise OutputError(
            f"model card class {cls.name} lacks a category or type code; add them to the card to write a SEG"
        )
    region = cls.codes.get("anatomic_region")
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=cls.name,
        segmented_property_category=_coded(category),
        segmented_property_type=_coded(prop_type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=f"{cls.name} (ictus)",
        anatomic_regions=[_coded(region)] if region is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*(c / 255.0 for c in common.class_colour(cls.name, index))),
    )


def build_seg(result: Any, source_datasets: Sequence[Dataset]) -> tuple[hd.seg.Segmentation | None, list[SegmentInfo]]:
    """The DICOM SEG of ``result`` on the source series, or (None, []) when no lesion class is found.

    ``source_datasets`` are the source headers in ``volume.source_slices`` order
    (see :func:`pipelines.writers.common.read_source_datasets`).
    """
    seg = result.segmentation
    if seg is None:
        return None, []
    volume: Volume = result.volume
    card = common.card_of(result)
    classes = common.lesion_classes(result)
    slices = volume.source_slices
    frames = labels_on_source_frames(np.asarray(seg.labels), volume, slices)

    multi = any(s.frame_number is not None for s in slices)
    if multi:
        if len(source_datasets) != 1:
            raise OutputError("a SEG over several multi-frame source files is not supported; export single frames")
        n_frames = int(getattr(source_datasets[0], "NumberOfFrames", 1))
        full = np.zeros((n_frames,) + frames.shape[1:], dtype=np.uint8)
        for k, s in enumerate(slices):
            full[int(s.frame_number) - 1] = frames[k]
        frames = full
    elif len(source_datasets) != len(slices):
        raise OutputError("source files and source slices disagree; rerun triage on the study")

    present = [c for c in classes if (frames == c.value).any()]
    if not present:
        log.info("no lesion class on the source frames; no SEG written")
        return None, []
    algorithm = algorithm_identification(card)
    infos: list[SegmentInfo] = []
    descriptions: list[hd.seg.SegmentDescription] = []
    seg_numbers = np.zeros(256, dtype=np.uint8)
    for number, cls in enumerate(present, start=1):
        index = [c.value for c in classes].index(cls.value)
        descriptions.append(_segment_description(number, cls, algorithm, index))
        infos.append(SegmentInfo(number, cls.value, cls.name))
        seg_numbers[cls.value] = number
    pixel_array = seg_numbers[frames]  # label values -> segment numbers (other classes -> 0)

    try:
        obj = hd.seg.Segmentation(
            source_images=list(source_datasets),
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=common.MANUFACTURER,
            manufacturer_model_name=common.MODEL_NAME,
            software_versions=common.ictus_version(),
            device_serial_number=common.DEVICE_SERIAL_NUMBER,
            content_label="ICTUS_SEG",
            content_description="Ictus triage segmentation (triage aid, not for diagnosis)",
            series_description=SERIES_DESCRIPTION,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"DICOM SEG could not be built from the source series ({exc}); report this with the study") from exc
    return obj, infos
