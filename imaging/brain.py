"""Head, skull, intracranial and brain masks from HU and morphology.

Pure functions on a HU image (a :class:`ictus.imaging.volume.Volume` or a SimpleITK
image in LPS). The work is done on the image re-oriented to the nearest LPS
axes (a lossless permutation/flip, ``sitk.DICOMOrient``), so axial slices are
array planes whatever the input orientation; gantry-tilt-corrected and
variable-spacing volumes need nothing special because every 2-D step runs slice
by slice in the axial plane and thick slices are never used as 3-D neighbours
for the structuring elements. Morphology runs on an in-plane grid binned to
about 1 mm (sub-millimetre pixels add cost, not accuracy, to a brain mask);
masks are returned on the original grid.

Method (classical threshold + morphology, as in most CT skull-stripping tools,
e.g. Muschelli et al. 2015, "Validated automatic brain extraction of head CT
images", NeuroImage 114:379-385):

1. head = largest component of HU > ``head_hu`` (drops the table and air);
2. skull = HU >= ``bone_hu`` inside the head, closed in-plane to seal sutures
   and thin bone;
3. intracranial = in-plane filled interior of the skull minus the skull;
4. brain = intracranial voxels whose lightly smoothed HU lies in
   ``brain_range_hu`` (CSF, grey/white matter and fresh blood), opened in-plane
   to cut partial-volume rims, then its largest 3-D component.

A head whose skull encloses no soft tissue (the air-filled plastic skull of
``philips-head-phantom-tilted``) gives ``brain_found=False`` with a reason, so
that no findings are invented on it.

**Skull-stripped input** (research data where everything outside the brain was
set to air, -1024 HU, or to 0 HU): when no closed skull is found, the volume is
checked for a soft-tissue region with almost no bone around it (bone under
``max_stripped_bone_fraction`` of the tissue). The background is the value most
voxels hold exactly (0 HU counts as outside only when it fills at least
``stripped_background_fraction`` of the volume: no real head CT holds that many
identical values in the brain range). Then the brain is that soft-tissue region
(the same HU range, opening and largest component as above), the intracranial
mask is its filled outline, the skull mask is empty, and the result says
``skull_stripped=True`` (``brain_found=True``) so that QC can report it as what it is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

log = logging.getLogger(__name__)

ImageLike = Any  # a sitk.Image, or anything with an ``image`` attribute (a Volume)

#: Defaults, in HU and mL; every one is a keyword argument of :func:`segment_brain`.
HEAD_HU = -400.0
BONE_HU = 300.0
BRAIN_RANGE_HU = (-10.0, 100.0)
MIN_BRAIN_ML = 150.0
MIN_BRAIN_FRACTION = 0.5
MAX_STRIPPED_BONE_FRACTION = 0.03
STRIPPED_BACKGROUND_FRACTION = 0.2


@dataclass(frozen=True)
class BrainResult:
    """Masks (uint8 SimpleITK images on the input grid) and the brain verdict."""

    brain_found: bool
    brain_volume_ml: float
    intracranial_volume_ml: float
    reason: str
    brain_mask: sitk.Image
    intracranial_mask: sitk.Image
    skull_mask: sitk.Image
    head_mask: sitk.Image
    skull_stripped: bool = False

    def brain_array(self) -> np.ndarray:
        """The brain mask as a bool array indexed [z, y, x] on the input grid."""
        return sitk.GetArrayViewFromImage(self.brain_mask).astype(bool)

    def intracranial_array(self) -> np.ndarray:
        """The intracranial mask as a bool array indexed [z, y, x] on the input grid."""
        return sitk.GetArrayViewFromImage(self.intracranial_mask).astype(bool)


# -- orientation helpers (shared with midline/measure) ---------------------------------


def as_image(volume_or_image: ImageLike) -> sitk.Image:
    """The SimpleITK image of a Volume, or the image itself."""
    image = getattr(volume_or_image, "image", volume_or_image)
    if not isinstance(image, sitk.Image):
        raise TypeError(f"expected a Volume or a SimpleITK image, got {type(volume_or_image).__name__}")
    return image


def orientation_code(image: sitk.Image) -> str:
    """The nearest-axis orientation code of an image (e.g. "LPS", "RAI")."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def to_lps(image: sitk.Image) -> sitk.Image:
    """The image permuted/flipped so array axes [z, y, x] run roughly S, P, L (lossless)."""
    if orientation_code(image) == "LPS":
        return image
    return sitk.DICOMOrient(image, "LPS")


def mask_like(array_zyx: np.ndarray, reference_lps: sitk.Image, original_code: str) -> sitk.Image:
    """A uint8 mask image from an array on ``reference_lps``, returned in ``original_code`` orientation."""
    mask = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx, dtype=np.uint8))
    mask.CopyInformation(reference_lps)
    if original_code != "LPS":
        mask = sitk.DICOMOrient(mask, original_code)
    return mask


def disk(radius_mm: float, spacing_xy_mm: tuple[float, float]) -> np.ndarray:
    """An in-plane disk structuring element as a (1, ny, nx) array (no through-plane reach)."""
    rx = max(1, int(round(radius_mm / spacing_xy_mm[0])))
    ry = max(1, int(round(radius_mm / spacing_xy_mm[1])))
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    return ((xx / rx) ** 2 + (yy / ry) ** 2 <= 1.0)[None]


def largest_component(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """The largest connected component of a bool mask (empty in, empty out)."""
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


_PLANE_CROSS = np.zeros((3, 3, 3), dtype=bool)
_PLANE_CROSS[1] = ndimage.generate_binary_structure(2, 1)


def fill_holes_axial(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice in the axial plane ([z, y, x] array): the background
    regions (4-connected in-plane) that touch no in-plane border of their slice.
    Equal to ``ndimage.binary_fill_holes(mask, structure=_PLANE_CROSS)``, which grows the
    outside by repeated dilation; one labelling is several times faster on a 1 mm head."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3 or min(mask.shape) == 0:
        return ndimage.binary_fill_holes(mask, structure=_PLANE_CROSS if mask.ndim == 3 else None)
    labels, n = ndimage.label(~mask, structure=_PLANE_CROSS)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outside[edge.ravel()] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[labels]


def _close_axial(mask: np.ndarray, radius_mm: float, spacing_xy_mm: tuple[float, float]) -> np.ndarray:
    se = disk(radius_mm, spacing_xy_mm)
    pad = max(se.shape)
    padded = np.pad(mask, ((0, 0), (pad, pad), (pad, pad)))
    closed = ndimage.binary_closing(padded, structure=se)
    return closed[:, pad:-pad, pad:-pad]


# -- in-plane binning: morphology runs on a ~1 mm grid, whatever the pixel size ------------


def bin_factor(spacing_xy_mm: tuple[float, float], target_mm: float = 1.0) -> int:
    """Integer in-plane binning factor that brings the pixel size up to about ``target_mm``."""
    return max(1, int(round(target_mm / max(1e-6, min(spacing_xy_mm)))))


def bin_axial(array: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over ``factor`` x ``factor`` pixels of each axial slice (edges padded by replication).

    Coarse pixel (j, i) covers fine pixels [j*f, (j+1)*f) x [i*f, (i+1)*f); its centre is
    fine index ``j*f + (f-1)/2`` (see :func:`coarse_to_fine`).
    """
    if factor == 1:
        return np.asarray(array, dtype=np.float32)
    nz, ny, nx = array.shape
    py, px = (-ny) % factor, (-nx) % factor
    a = np.asarray(array)
    if py or px:
        a = np.pad(a, ((0, 0), (0, py), (0, px)), mode="edge")
    out = np.zeros((nz, a.shape[1] // factor, a.shape[2] // factor), dtype=np.float32)
    for dy in range(factor):
        for dx in range(factor):
            out += a[:, dy::factor, dx::factor]
    out *= np.float32(1.0 / (factor * factor))
    return out


def coarse_to_fine(index: np.ndarray | float, factor: int) -> np.ndarray | float:
    """Fine (continuous) pixel index of a coarse pixel index after :func:`bin_axial`."""
    return index * factor + (factor - 1) / 2.0


def unbin_axial(mask: np.ndarray, factor: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour inverse of :func:`bin_axial` back onto ``shape``."""
    if factor == 1:
        return mask
    up = np.repeat(np.repeat(mask, factor, axis=1), factor, axis=2)
    return up[:, : shape[1], : shape[2]]


def _edt_axial(mask: np.ndarray, spacing_xy_mm: tuple[float, float]) -> np.ndarray:
    """In-plane Euclidean distance (mm) of each True voxel to the nearest False one, slice by slice."""
    out = np.zeros(mask.shape, dtype=np.float32)
    sx, sy = spacing_xy_mm
    for k in range(mask.shape[0]):
        if mask[k].any():
            padded = np.pad(mask[k], 1)
            out[k] = ndimage.distance_transform_edt(padded, sampling=(sy, sx))[1:-1, 1:-1]
    return out


def erode_axial(mask: np.ndarray, radius_mm: float, spacing_xy_mm: tuple[float, float]) -> np.ndarray:
    """In-plane erosion by a disk of ``radius_mm`` (outside the array counts as background)."""
    f = bin_factor(spacing_xy_mm)
    coarse = bin_axial(mask, f) >= 0.5
    eroded = _edt_axial(coarse, (spacing_xy_mm[0] * f, spacing_xy_mm[1] * f)) > radius_mm
    return unbin_axial(eroded, f, mask.shape) & mask


def dilate_axial(mask: np.ndarray, radius_mm: float, spacing_xy_mm: tuple[float, float]) -> np.ndarray:
    """In-plane dilation by a disk of ``radius_mm``."""
    f = bin_factor(spacing_xy_mm)
    coarse = bin_axial(mask, f) > 0.0
    dilated = _edt_axial(~coarse, (spacing_xy_mm[0] * f, spacing_xy_mm[1] * f)) <= radius_mm
    return unbin_axial(dilated, f, mask.shape) | mask


# -- the brain ---------------------------------------------------------------------------


def _skull_stripped_brain(
    hu: np.ndarray,
    smooth: np.ndarray,
    spacing_xy_mm: tuple[float, float],
    voxel_ml: float,
    *,
    head_hu: float,
    bone_hu: float,
    brain_range_hu: tuple[float, float],
    brain_opening_mm: float,
    min_brain_ml: float,
    min_brain_fraction: float,
    max_bone_fraction: float,
    background_fraction: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str] | None:
    """(tissue region, brain, filled outline, reason) when ``hu`` looks skull-stripped, else None.

    Skull-stripped: outside the tissue is one constant value (air, or 0 HU when that
    value fills at least ``background_fraction`` of the volume), the tissue region holds
    almost no bone, and most of it is brain-range soft tissue.
    """
    values, counts = np.unique(hu[:: max(1, hu.shape[0] // 16)], return_counts=True)
    mode, mode_fraction = float(values[np.argmax(counts)]), float(counts.max() / counts.sum())
    outside = hu <= head_hu
    background = "air"
    if mode > head_hu and mode_fraction >= background_fraction:
        outside |= hu == np.float32(mode)
        background = f"{mode:.0f} HU"
    tissue = largest_component(~outside)
    if not tissue.any():
        return None
    tissue_ml = float(tissue.sum() * voxel_ml)
    bone_ml = float(((hu >= bone_hu) & tissue).sum() * voxel_ml)
    if tissue_ml < min_brain_ml or bone_ml > max_bone_fraction * tissue_ml:
        return None
    lo, hi = brain_range_hu
    soft = tissue & (smooth >= lo) & (smooth <= hi)
    if background != "air":
        soft &= hu != np.float32(mode)
    soft = ndimage.binary_opening(soft, structure=disk(brain_opening_mm, spacing_xy_mm))
    brain = largest_component(soft)
    brain_ml = float(brain.sum() * voxel_ml)
    if brain_ml < min_brain_ml or brain_ml < min_brain_fraction * tissue_ml:
        return None
    outline = fill_holes_axial(tissue)
    reason = (
        f"skull-stripped input: {tissue_ml:.0f} mL of tissue with no skull around it (bone {bone_ml:.1f} mL, "
        f"background {background}); brain {brain_ml:.0f} mL"
    )
    return tissue, brain, outline, reason


def segment_brain(
    volume_or_image: ImageLike,
    *,
    head_hu: float = HEAD_HU,
    bone_hu: float = BONE_HU,
    brain_range_hu: tuple[float, float] = BRAIN_RANGE_HU,
    bone_closing_mm: float = 3.0,
    brain_opening_mm: float = 2.0,
    smoothing_mm: float = 1.0,
    min_brain_ml: float = MIN_BRAIN_ML,
    min_brain_fraction: float = MIN_BRAIN_FRACTION,
    max_stripped_bone_fraction: float = MAX_STRIPPED_BONE_FRACTION,
    stripped_background_fraction: float = STRIPPED_BACKGROUND_FRACTION,
) -> BrainResult:
    """Head, skull, intracranial and brain masks of a HU volume, and whether a brain is there.

    ``brain_found`` is False (with ``reason``) when the skull encloses less than
    ``min_brain_ml`` of soft tissue, or when soft tissue fills less than
    ``min_brain_fraction`` of the intracranial space (air or foam inside a skull).
    """
    image = as_image(volume_or_image)
    code = orientation_code(image)
    lps = to_lps(image)
    full_hu = sitk.GetArrayViewFromImage(lps)
    full_shape = full_hu.shape
    f = bin_factor(lps.GetSpacing()[:2])
    hu = bin_axial(full_hu, f)  # morphology on a ~1 mm in-plane grid; masks go back to the full grid
    sx, sy, sz = lps.GetSpacing()
    sx, sy = sx * f, sy * f
    voxel_ml = sx * sy * sz / 1000.0

    head = largest_component(hu > head_hu)
    head = fill_holes_axial(head)
    skull = (hu >= bone_hu) & head
    skull_closed = _close_axial(skull, bone_closing_mm, (sx, sy))
    intracranial = fill_holes_axial(skull_closed) & ~skull_closed
    # drop specks (sinuses, orbits closed by chance): keep the largest 3-D component
    intracranial = largest_component(intracranial) if intracranial.any() else intracranial

    sigma = [0.0, smoothing_mm / sy, smoothing_mm / sx]
    smooth = ndimage.gaussian_filter(hu, sigma=sigma) if smoothing_mm > 0 else hu
    lo, hi = brain_range_hu
    soft = intracranial & (smooth >= lo) & (smooth <= hi)
    se = disk(brain_opening_mm, (sx, sy))
    soft = ndimage.binary_opening(soft, structure=se)
    brain = largest_component(soft)

    intracranial_ml = float(intracranial.sum() * voxel_ml)
    brain_ml = float(brain.sum() * voxel_ml)
    if intracranial_ml < min_brain_ml:
        found, reason = False, (
            f"no closed skull enclosing a brain: intracranial space {intracranial_ml:.0f} mL "
            f"(< {min_brain_ml:.0f} mL)"
        )
    elif brain_ml < min_brain_ml or brain_ml < min_brain_fraction * intracranial_ml:
        found, reason = False, (
            f"the skull encloses {intracranial_ml:.0f} mL but only {brain_ml:.0f} mL of soft tissue "
            f"({brain_range_hu[0]:.0f}..{brain_range_hu[1]:.0f} HU): not a human brain (air-filled phantom?)"
        )
    else:
        found, reason = True, f"brain {brain_ml:.0f} mL in an intracranial space of {intracranial_ml:.0f} mL"
    skull_stripped = False
    if intracranial_ml < min_brain_ml:
        stripped = _skull_stripped_brain(
            hu, smooth, (sx, sy), voxel_ml, head_hu=head_hu, bone_hu=bone_hu, brain_range_hu=brain_range_hu,
            brain_opening_mm=brain_opening_mm, min_brain_ml=min_brain_ml, min_brain_fraction=min_brain_fraction,
            max_bone_fraction=max_stripped_bone_fraction, background_fraction=stripped_background_fraction,
        )
        if stripped is not None:
            head, brain, intracranial, reason = stripped
            skull = np.zeros_like(head)
            found, skull_stripped = True, True
            brain_ml, intracranial_ml = float(brain.sum() * voxel_ml), float(intracranial.sum() * voxel_ml)
    log.debug("brain mask: %s", reason)
    return BrainResult(
        skull_stripped=skull_stripped,
        brain_found=found,
        brain_volume_ml=brain_ml,
        intracranial_volume_ml=intracranial_ml,
        reason=reason,
        brain_mask=mask_like(unbin_axial(brain, f, full_shape), lps, code),
        intracranial_mask=mask_like(unbin_axial(intracranial, f, full_shape), lps, code),
        skull_mask=mask_like(unbin_axial(skull, f, full_shape), lps, code),
        head_mask=mask_like(unbin_axial(head, f, full_shape), lps, code),
    )
