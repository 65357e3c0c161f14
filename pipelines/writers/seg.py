"""DICOM Segmentation (highdicom) of the lesion labels, aligned with the SOURCE series.

The model's labels live on the analysed volume's grid, which may differ from
the acquired slices (gantry tilt corrected, variable spacing resampled). The
SEG must overlay the slices a viewer shows, so :func:`labels_on_source_frames`
samples the label volume at the physical (LPS) position of every pixel of
every source frame (nearest neighbour, SimpleITK), using each frame's own
Image Position/Orientation and Pixel Spacing. The SEG then references the
source instances frame by frame (BINARY, one segment per lesion class found),
with segment codes and algorithm identification from the model card.

Stroke segments (only when the template anatomy is registered): one segment per
affected ASPECTS region ("ASPECTS M2 left", type SCT "Cerebral infarction", its
anatomic region with a laterality modifier) and one for the hyperdense artery
(type SCT "Thrombus", the arterial segment as region). Per region rather than
per side, so each SR region group references its own segment. Their masks live
on the anatomy's analysis grid and are sampled on the source frames exactly as
the lesion labels (:func:`image_on_source_frames`). Codes: ``stroke_codes.json``.
When stroke segments are present the segments may overlap (an artery inside a
region), so the pixel data are given per segment.
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

from ictus.imaging.errors import OutputError
from ictus.imaging.volume import SourceSlice, Volume
from ictus.pipelines.writers import common
from ictus.pipelines.writers import stroke as stroke_out

log = logging.getLogger(__name__)

SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "ICTUS segmentation"


@dataclass(frozen=True)
class SegmentInfo:
    """One segment written into the SEG: its number and what it holds.

    ``kind`` is "lesion" (a model class, ``label_value`` its label), "aspects" (an affected
    ASPECTS region, ``key`` e.g. "M2_left") or "dense_artery" (``key`` e.g. "M1_left");
    stroke segments have ``label_value`` 0.
    """

    segment_number: int
    label_value: int
    name: str
    kind: str = "lesion"
    key: str = ""


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
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels_zyx, dtype=np.uint8))
    image.CopyInformation(volume.image)
    return image_on_source_frames(image, slices)


def image_on_source_frames(image: sitk.Image, slices: Sequence[SourceSlice]) -> np.ndarray:
    """A uint8 label image on any grid (the volume's, or the anatomy's analysis grid) sampled on
    each source frame: uint8 [n_frames, rows, cols], nearest neighbour, 0 outside the image."""
    if not slices:
        raise OutputError("the volume lists no source slices; the SEG cannot be aligned with the source series")
    rows, cols = int(slices[0].rows), int(slices[0].columns)
    if any((int(s.rows), int(s.columns)) != (rows, cols) for s in slices):
        raise OutputError("source frames differ in size; a SEG of this series is not supported")
    out = np.zeros((len(slices), rows, cols), dtype=np.uint8)
    labels_zyx = sitk.GetArrayViewFromImage(image)
    nonzero = [np.flatnonzero(np.asarray(labels_zyx).any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(idx.size == 0 for idx in nonzero):
        return out
    # corners of the labels' bounding box (LPS): frames whose plane misses it stay empty
    (z0, z1), (y0, y1), (x0, x1) = ((int(i[0]) - 1, int(i[-1]) + 1) for i in nonzero)
    corners_lps = np.array([image.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
                            for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)])
    reach_mm = float(np.linalg.norm(image.GetSpacing()))
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


def _stroke_description(number: int, item: stroke_out.StrokeMask,
                        algorithm: hd.AlgorithmIdentificationSequence) -> hd.seg.SegmentDescription:
    """The description of an affected ASPECTS region or of the hyperdense artery."""
    table = stroke_out.load_codes()["segment"]
    side = item.side or ""
    if item.kind == "aspects":
        label = f"ASPECTS {item.code} {side}".strip()
        text = f"ASPECTS region {item.code} {side} (affected)".replace("  ", " ")
        prop_type = stroke_out.coded(table["ischaemia_type"])
        regions = stroke_out.region_codes(item.code)
        colour = stroke_out.ISCHAEMIA_RGB
    else:
        label = f"Hyperdense artery {item.code} {side}".strip()
        text = f"Hyperdense artery sign, {side} {item.code} (suspected thrombus)".replace("  ", " ")
        prop_type = stroke_out.coded(table["dense_artery_type"])
        regions = [stroke_out.vessel_code(item.code)]
        colour = stroke_out.DENSE_ARTERY_RGB
    desc = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label[:64],
        segmented_property_category=stroke_out.coded(table["category"]),
        segmented_property_type=prop_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=f"{label} (ictus)"[:64],
        anatomic_regions=regions,
        display_color=hd.color.CIELabColor.from_rgb(*(c / 255.0 for c in colour)),
    )
    modifier = stroke_out.laterality(item.side)
    if modifier is not None:
        for region in desc.AnatomicRegionSequence:
            region.AnatomicRegionModifierSequence = [modifier]
    desc.SegmentDescription = text
    return desc


def _stroke_frames(result: Any, slices: Sequence[SourceSlice]) -> list[tuple[stroke_out.StrokeMask, np.ndarray]]:
    """Each stroke mask sampled on the source frames (bool [n_frames, rows, cols]), empty ones dropped."""
    items = stroke_out.stroke_masks(result)
    if not items:
        return []
    grid = result.anatomy.grid
    regions = [i for i in items if i.kind == "aspects"]
    out: list[tuple[stroke_out.StrokeMask, np.ndarray]] = []
    if regions:  # affected regions do not overlap: one label image, one resampling
        labels = np.zeros(regions[0].mask_zyx.shape, dtype=np.uint8)
        for item in regions:
            labels[item.mask_zyx] = stroke_out.aspects_label(item.code, item.side or "left")
        frames = image_on_source_frames(stroke_out.grid_image(labels, grid), slices)
        for item in regions:
            out.append((item, frames == stroke_out.aspects_label(item.code, item.side or "left")))
    for item in items:
        if item.kind == "dense_artery":
            out.append((item, image_on_source_frames(stroke_out.grid_image(item.mask_zyx, grid), slices) > 0))
    kept = [(item, f) for item, f in out if f.any()]
    for item, _ in out:
        if all(item is not k for k, _ in kept):
            log.info("stroke segment %s %s misses every source frame; not written", item.kind, item.key)
    return kept


def build_seg(result: Any, source_datasets: Sequence[Dataset]) -> tuple[hd.seg.Segmentation | None, list[SegmentInfo]]:
    """The DICOM SEG of ``result`` on the source series, or (None, []) when nothing is found.

    ``source_datasets`` are the source headers in ``volume.source_slices`` order
    (see :func:`ictus.pipelines.writers.common.read_source_datasets`). Lesion classes come
    first, then the affected ASPECTS regions and the hyperdense artery.
    """
    seg = result.segmentation
    volume: Volume = result.volume
    slices = volume.source_slices
    stroke_frames = _stroke_frames(result, slices) if slices else []
    if seg is None and not stroke_frames:
        return None, []
    card = common.card_of(result, required=seg is not None)
    classes = common.lesion_classes(result) if card is not None else ()
    frames = (labels_on_source_frames(np.asarray(seg.labels), volume, slices) if seg is not None
              else np.zeros((len(slices), int(slices[0].rows), int(slices[0].columns)), dtype=np.uint8))

    multi = any(s.frame_number is not None for s in slices)
    n_frames = len(slices)
    if multi:
        if len(source_datasets) != 1:
            raise OutputError("a SEG over several multi-frame source files is not supported; export single frames")
        n_frames = int(getattr(source_datasets[0], "NumberOfFrames", 1))
    elif len(source_datasets) != len(slices):
        raise OutputError("source files and source slices disagree; rerun triage on the study")

    def on_source(arr: np.ndarray) -> np.ndarray:
        if not multi:
            return arr
        full = np.zeros((n_frames,) + arr.shape[1:], dtype=arr.dtype)
        for k, s in enumerate(slices):
            if s.frame_number is None:
                raise OutputError("source files and source slices disagree; rerun triage on the study")
            full[int(s.frame_number) - 1] = arr[k]
        return full

    frames = on_source(frames)
    present = [c for c in classes if (frames == c.value).any()]
    if not present and not stroke_frames:
        log.info("no lesion class or stroke finding on the source frames; no SEG written")
        return None, []
    algorithm = algorithm_identification(card) if card is not None else None
    infos: list[SegmentInfo] = []
    descriptions: list[hd.seg.SegmentDescription] = []
    seg_numbers = np.zeros(256, dtype=np.uint8)
    for number, cls in enumerate(present, start=1):
        assert algorithm is not None  # lesion classes come from the card
        index = [c.value for c in classes].index(cls.value)
        descriptions.append(_segment_description(number, cls, algorithm, index))
        infos.append(SegmentInfo(number, cls.value, cls.name))
        seg_numbers[cls.value] = number
    if stroke_frames:
        stacks = [frames == cls.value for cls in present]
        stroke_algo = stroke_algorithm()
        for item, mask in stroke_frames:
            number = len(descriptions) + 1
            descriptions.append(_stroke_description(number, item, stroke_algo))
            infos.append(SegmentInfo(number, 0, descriptions[-1].SegmentLabel, item.kind, item.key))
            stacks.append(on_source(mask))
        pixel_array = np.stack(stacks, axis=-1)  # segments may overlap: one binary plane each
    else:
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


def stroke_algorithm() -> hd.AlgorithmIdentificationSequence:
    """Algorithm identification of the template-based stroke analysis (when no model card applies)."""
    return hd.AlgorithmIdentificationSequence(
        name="Ictus stroke template analysis",
        family=codes.cid7162.HistogramAnalysis,  # region densities against the mirror (no learned model)
        version=common.ictus_version()[:64],
        parameters={"method": "registered CT template, ASPECTS regions, mirror-region density"},
    )
