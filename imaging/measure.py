"""Lesion measurements from a label map on the volume grid.

Pure functions: a label map ([z, y, x], the model's argmax or a ground truth)
plus the geometry of its volume in, frozen dataclasses out. Optional inputs
refine the result: the class probabilities and member agreement (for the ICH
probability and confidence), the ideal midline plane (for the hemisphere of
each lesion) and an atlas registration (for a region name).

**Minimum lesion size.** A connected component (26-connectivity, on the
labels' grid: triage's analysed 1 mm grid) smaller than ``min_lesion_ml`` (default
:data:`DEFAULT_MIN_LESION_ML` = 0.5 mL) is discarded as noise and does not
count towards presence or volume; its volume is reported as
``discarded_volume_ml``. The default comes from what single BLAST-CT members
produce on synthetic heads with one large bleed (``../shared/models/blast-ct/SOURCE.md``):
fragments of the *other* classes totalling 0.2-0.9 mL (EAH or IVH specks
inside or beside a 25-30 mL IPH), each fragment well under 0.5 mL, which the
12-member ensemble removes. 0.5 mL is also about one 5 mm slice of a 1 cm
patch: below it a segmentation on routine thick slices is not a reliable
measurement. Checked here with BLAST-CT member 1 alone (ONNX) on a 30 mL IPH
phantom (256x256x34, 0.9 x 0.9 x 5 mm): IPH 29.7 mL (truth 30.2); false EAH in
11 components (1.6 mL), 10 of them under 0.5 mL and one of 1.07 mL, which the
floor cannot remove: a single member over-calls EAH, so use the ensemble.
Pass a smaller value (or a per-class mapping) for thin-slice research use.

**ABC/2.** For the largest intraparenchymal lesion the bedside estimate of
Kothari RU, Brott T, Broderick JP, et al., "The ABCs of measuring
intracerebral hemorrhage volumes", Stroke 1996;27(8):1304-1305 is reported
beside the segmented volume: on the axial slice with the largest lesion area,
A is the largest diameter and B the largest diameter perpendicular to A; C is
the number of slices with blood times the slice thickness, each slice counted
1 if its lesion area is at least 75 % of the reference slice, 0.5 if 25-75 %,
and 0 below 25 %; volume = A x B x C / 2.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ictus.imaging.brain import as_image, to_lps
from ictus.imaging.volume import index_to_lps

log = logging.getLogger(__name__)

#: Defaults for a label map without a model card (BLAST-CT's classes); the pipeline passes
#: the card's (``card.class_names_by_role("blood")`` / ``("oedema")``) to :func:`measure_labels`.
BLOOD_CLASSES = ("IPH", "EAH", "IVH")
OEDEMA_CLASSES = ("oedema",)
MEASURED_CLASSES = BLOOD_CLASSES + OEDEMA_CLASSES
DEFAULT_MIN_LESION_ML = 0.5
#: Fraction of a lesion's voxels on one side of the ideal midline to call it one-sided.
HEMISPHERE_FRACTION = 0.9

_FULL = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class Lesion:
    """One connected component of one class."""

    class_name: str
    volume_ml: float
    voxel_count: int
    centroid_lps_mm: tuple[float, float, float]
    hemisphere: str  # "left" | "right" | "bilateral" | "unknown"
    region: str  # atlas region name or "region unavailable"
    compartment: str = "unknown"  # "supratentorial" | "infratentorial" | "unknown"
    mean_probability: float | None = None  # mean probability of this class inside the lesion
    mean_agreement: float | None = None


@dataclass(frozen=True)
class ClassMeasurement:
    """Presence and volume of one class, after discarding components under the minimum size."""

    class_name: str
    present: bool
    volume_ml: float
    lesion_count: int
    largest_lesion_ml: float
    lesions: tuple[Lesion, ...] = ()
    discarded_count: int = 0
    discarded_volume_ml: float = 0.0
    min_lesion_ml: float = DEFAULT_MIN_LESION_ML


@dataclass(frozen=True)
class AbcEstimate:
    """ABC/2 estimate (Kothari 1996) of one lesion, beside its segmented volume."""

    a_mm: float
    b_mm: float
    c_mm: float
    volume_ml: float
    segmented_volume_ml: float
    reference_slice: int  # axial index (LPS-oriented grid) of the largest area
    slices_counted: float  # weighted count (1 / 0.5 / 0)


@dataclass(frozen=True)
class IchSummary:
    """Intracranial haemorrhage overall (IPH + EAH + IVH)."""

    present: bool
    total_volume_ml: float
    probability: float  # ensemble-mean blood probability inside the blood lesions
    confidence: float | None  # mean member agreement inside the blood lesions
    lesion_count: int


@dataclass(frozen=True)
class Measurements:
    """Everything measured on one label map."""

    classes: Mapping[str, ClassMeasurement]
    ich: IchSummary
    abc2: AbcEstimate | None
    region_status: str  # "ok" or why regions are unavailable
    kept_labels: np.ndarray | None = field(repr=False, default=None)  # label map without discarded components
    blood_classes: tuple[str, ...] = BLOOD_CLASSES  # the classes summed into ``ich`` (from the model card)


# -- anatomy look-ups ------------------------------------------------------------------------


class RegionLookup(Protocol):
    """What the measurements need from a registered anatomy (:class:`ictus.imaging.anatomy.Anatomy`)."""

    def region_of(self, points_lps: np.ndarray) -> str: ...

    def compartment_of(self, points_lps: np.ndarray) -> str: ...


# -- measurements --------------------------------------------------------------------------


def _hemisphere(points_lps: np.ndarray, plane: Any) -> str:
    if plane is None or len(points_lps) == 0:
        return "unknown"
    left = float(np.mean(plane.signed_distance_mm(points_lps) > 0))
    if left >= HEMISPHERE_FRACTION:
        return "left"
    if left <= 1.0 - HEMISPHERE_FRACTION:
        return "right"
    return "bilateral"


def _extent_mm(points: np.ndarray, u: np.ndarray, pixel_mm: tuple[float, float]) -> float:
    proj = points @ u
    return float(proj.max() - proj.min() + abs(u[0]) * pixel_mm[0] + abs(u[1]) * pixel_mm[1])


def abc2_estimate(lesion_mask: np.ndarray, reference: Any) -> AbcEstimate | None:
    """ABC/2 (Kothari 1996, weighted slice count) of one lesion mask ([z, y, x] on the reference grid)."""
    image = as_image(reference)
    mask_img = sitk.GetImageFromArray(np.ascontiguousarray(lesion_mask, dtype=np.uint8))
    mask_img.CopyInformation(image)
    lps = to_lps(mask_img)
    m = sitk.GetArrayViewFromImage(lps).astype(bool)
    if not m.any():
        return None
    sx, sy, sz = lps.GetSpacing()
    areas = m.sum(axis=(1, 2))
    ref = int(np.argmax(areas))
    yy, xx = np.nonzero(m[ref])
    pts = np.column_stack([xx * sx, yy * sy]).astype(float)
    if len(pts) >= 3:
        try:
            from scipy.spatial import ConvexHull

            hull = pts[ConvexHull(pts).vertices]
        except Exception:  # noqa: BLE001 - collinear points: use them all
            hull = pts
    else:
        hull = pts
    diff = hull[:, None, :] - hull[None, :, :]
    d2 = (diff**2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    if d2[i, j] > 0:
        u = diff[i, j] / np.sqrt(d2[i, j])
    else:
        u = np.array([1.0, 0.0])
    v = np.array([-u[1], u[0]])
    a_mm = _extent_mm(pts, u, (sx, sy))
    b_mm = _extent_mm(pts, v, (sx, sy))
    ratio = areas / areas[ref]
    weights = np.where(ratio >= 0.75, 1.0, np.where(ratio >= 0.25, 0.5, 0.0))
    count = float(weights.sum())
    c_mm = count * sz
    volume_ml = a_mm * b_mm * c_mm / 2.0 / 1000.0
    voxel_ml = sx * sy * sz / 1000.0
    return AbcEstimate(
        a_mm=a_mm, b_mm=b_mm, c_mm=c_mm, volume_ml=volume_ml,
        segmented_volume_ml=float(m.sum() * voxel_ml), reference_slice=ref, slices_counted=count,
    )


def measure_labels(
    labels: np.ndarray,
    reference: Any,
    class_names: Sequence[str],
    *,
    probabilities: np.ndarray | None = None,
    agreement: np.ndarray | None = None,
    min_lesion_ml: float | Mapping[str, float] = DEFAULT_MIN_LESION_ML,
    plane: Any = None,
    atlas: RegionLookup | None = None,
    region_status: str | None = None,
    max_region_points: int = 2000,
    blood_classes: Sequence[str] = BLOOD_CLASSES,
    oedema_classes: Sequence[str] = OEDEMA_CLASSES,
    abc2_class: str = "IPH",
) -> Measurements:
    """Per-class lesions, ICH summary and ABC/2 from a label map on ``reference``'s grid.

    ``class_names[i]`` names label value ``i`` (0 = background). ``blood_classes``
    (haemorrhage subtypes, summed into the ICH summary) and ``oedema_classes`` are
    measured, in that order; the caller takes them from the model card's class roles.
    ABC/2 is estimated on the largest lesion of ``abc2_class``. ``plane`` is an
    ideal midline (:class:`ictus.imaging.midline.MidlinePlane`) for hemispheres;
    ``atlas`` (the registered :class:`ictus.imaging.anatomy.Anatomy`) gives region names and the
    supratentorial/infratentorial compartment of each lesion.
    """
    image = as_image(reference)
    labels = np.asarray(labels)
    if labels.shape != tuple(reversed(image.GetSize())):
        raise ValueError(f"label map shape {labels.shape} does not match the volume grid {tuple(reversed(image.GetSize()))}")
    sx, sy, sz = image.GetSpacing()
    voxel_ml = sx * sy * sz / 1000.0
    kept = np.zeros(labels.shape, dtype=np.uint8)
    classes: dict[str, ClassMeasurement] = {}
    largest_iph: np.ndarray | None = None
    largest_iph_ml = 0.0
    rng = np.random.default_rng(0)
    if region_status is None:
        region_status = "ok" if atlas is not None else "region unavailable: no atlas registration"

    for name in (*blood_classes, *oedema_classes):
        threshold = min_lesion_ml.get(name, DEFAULT_MIN_LESION_ML) if isinstance(min_lesion_ml, Mapping) else float(min_lesion_ml)
        if name not in class_names:
            classes[name] = ClassMeasurement(name, False, 0.0, 0, 0.0, min_lesion_ml=threshold)
            continue
        value = class_names.index(name)
        comp, n = ndimage.label(labels == value, structure=_FULL)
        if n == 0:
            classes[name] = ClassMeasurement(name, False, 0.0, 0, 0.0, min_lesion_ml=threshold)
            continue
        sizes = np.bincount(comp.ravel())[1:]
        objects = ndimage.find_objects(comp)
        lesions: list[Lesion] = []
        discarded, discarded_ml = 0, 0.0
        for k, (count, box) in enumerate(zip(sizes, objects), start=1):
            vol = float(count * voxel_ml)
            if vol < threshold:
                discarded += 1
                discarded_ml += vol
                continue
            local = comp[box] == k
            idx = np.argwhere(local) + np.array([s.start for s in box])
            kept[tuple(idx.T)] = value
            pts = index_to_lps(image, idx)
            sample = pts if len(pts) <= max_region_points else pts[rng.choice(len(pts), max_region_points, replace=False)]
            region = atlas.region_of(sample) if atlas is not None else "region unavailable"
            compartment = atlas.compartment_of(sample) if atlas is not None else "unknown"
            mean_p = mean_a = None
            if probabilities is not None:
                mean_p = float(np.mean(probabilities[value][box][local], dtype=np.float64))
            if agreement is not None:
                mean_a = float(np.mean(agreement[box][local], dtype=np.float64))
            cx, cy, cz = (float(c) for c in pts.mean(axis=0))
            lesions.append(Lesion(
                class_name=name, volume_ml=vol, voxel_count=int(count),
                centroid_lps_mm=(cx, cy, cz),
                hemisphere=_hemisphere(sample, plane), region=region, compartment=compartment,
                mean_probability=mean_p, mean_agreement=mean_a,
            ))
            if name == abc2_class and vol > largest_iph_ml:
                largest_iph_ml = vol
                largest_iph = np.zeros(labels.shape, dtype=bool)
                largest_iph[tuple(idx.T)] = True
        lesions.sort(key=lambda l: -l.volume_ml)
        total = float(sum(l.volume_ml for l in lesions))
        classes[name] = ClassMeasurement(
            class_name=name, present=bool(lesions), volume_ml=total, lesion_count=len(lesions),
            largest_lesion_ml=lesions[0].volume_ml if lesions else 0.0, lesions=tuple(lesions),
            discarded_count=discarded, discarded_volume_ml=discarded_ml, min_lesion_ml=threshold,
        )

    ich = _ich_summary(labels, kept, class_names, classes, probabilities, agreement, tuple(blood_classes))
    abc = abc2_estimate(largest_iph, image) if largest_iph is not None else None
    return Measurements(classes=classes, ich=ich, abc2=abc, region_status=region_status, kept_labels=kept,
                        blood_classes=tuple(blood_classes))


def _ich_summary(
    labels: np.ndarray,
    kept: np.ndarray,
    class_names: Sequence[str],
    classes: Mapping[str, ClassMeasurement],
    probabilities: np.ndarray | None,
    agreement: np.ndarray | None,
    blood_classes: Sequence[str] = BLOOD_CLASSES,
) -> IchSummary:
    """ICH presence, volume, probability and confidence (blood: ``blood_classes``).

    - present: at least one kept IPH/EAH/IVH lesion;
    - probability: the ensemble-mean probability of blood (P(IPH)+P(EAH)+P(IVH)) averaged over
      the voxels of the kept blood lesions. With no kept lesion, the evidence of the candidates
      that fell under the noise floor: their mean blood probability times
      min(1, candidate volume / noise floor), so a speck never reads like a lesion (0 when the
      model labelled no blood at all; 1/0 for a label map without probabilities);
    - confidence: the mean agreement between members over the same voxels (None without agreement).
    """
    blood_values = [class_names.index(c) for c in blood_classes if c in class_names]
    total = float(sum(classes[c].volume_ml for c in blood_classes))
    count = int(sum(classes[c].lesion_count for c in blood_classes))
    present = count > 0
    region = np.isin(kept, blood_values) if present else np.isin(labels, blood_values)
    probability = 1.0 if present else 0.0  # a label map without probabilities is taken as certain
    confidence: float | None = None
    if probabilities is not None:
        if region.any():
            blood_p = sum(probabilities[v][region].astype(np.float64) for v in blood_values)
            probability = float(np.mean(blood_p))
            if not present:
                floor = max(min(classes[c].min_lesion_ml for c in blood_classes), 1e-9)
                candidate_ml = float(sum(classes[c].discarded_volume_ml for c in blood_classes))
                probability *= min(1.0, candidate_ml / floor)
        else:
            probability = 0.0
    if agreement is not None and region.any():
        confidence = float(np.mean(agreement[region], dtype=np.float64))
    elif agreement is not None:
        confidence = float(np.mean(agreement, dtype=np.float64))
    return IchSummary(present=present, total_volume_ml=total, probability=probability, confidence=confidence, lesion_count=count)
