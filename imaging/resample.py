"""Pure resampling functions on :class:`~ictus.imaging.volume.Volume` or SimpleITK images.

Each function accepts a ``Volume`` or a ``sitk.Image`` and returns the same
kind (a ``Volume`` keeps its provenance and QC flags). Nothing here touches disk.
"""
from __future__ import annotations

import math
from typing import TypeVar, Union

import numpy as np
import SimpleITK as sitk

from ictus.imaging.volume import Volume

AIR_HU = -1024.0

ImageLike = TypeVar("ImageLike", sitk.Image, Volume)

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "label": sitk.sitkLabelGaussian,
    "bspline": sitk.sitkBSpline,
    "lanczos": sitk.sitkLanczosWindowedSinc,
}

Interpolator = Union[str, int]


def _interpolator(value: Interpolator) -> int:
    if isinstance(value, str):
        try:
            return _INTERPOLATORS[value.lower()]
        except KeyError:
            raise ValueError(f"unknown interpolator {value!r}; use one of {sorted(_INTERPOLATORS)}") from None
    return int(value)


def _image(obj: sitk.Image | Volume) -> sitk.Image:
    return obj.image if isinstance(obj, Volume) else obj


def _wrap(original: ImageLike, image: sitk.Image) -> ImageLike:
    return original.with_image(image) if isinstance(original, Volume) else image  # type: ignore[return-value]


def _resample(
    image: sitk.Image,
    size: tuple[int, ...],
    spacing: tuple[float, ...],
    origin: tuple[float, ...],
    direction: tuple[float, ...],
    interpolator: int,
    default: float,
) -> sitk.Image:
    out_type = image.GetPixelID()
    if interpolator not in (sitk.sitkNearestNeighbor, sitk.sitkLabelGaussian) and out_type not in (
        sitk.sitkFloat32,
        sitk.sitkFloat64,
    ):
        out_type = sitk.sitkFloat32
    return sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        interpolator,
        [float(o) for o in origin],
        [float(s) for s in spacing],
        [float(d) for d in direction],
        float(default),
        out_type,
    )


def resample_to_spacing(
    volume_or_image: ImageLike,
    spacing_mm: float | tuple[float, float, float],
    interpolator: Interpolator = "linear",
    default_hu: float = AIR_HU,
) -> ImageLike:
    """Resample onto a grid with ``spacing_mm`` (same origin, direction and physical extent).

    The new size is the old extent (first to last voxel centre plus one voxel)
    divided by the new spacing, rounded. Voxels outside the input get ``default_hu``.
    """
    image = _image(volume_or_image)
    if np.isscalar(spacing_mm):
        new_spacing = (float(spacing_mm),) * image.GetDimension()  # type: ignore[arg-type]
    else:
        new_spacing = tuple(float(s) for s in spacing_mm)  # type: ignore[union-attr]
    if len(new_spacing) != image.GetDimension() or min(new_spacing) <= 0:
        raise ValueError(f"spacing_mm must hold {image.GetDimension()} positive values, got {spacing_mm}")
    old_spacing = image.GetSpacing()
    size = tuple(
        max(1, int(round(n * old / new))) for n, old, new in zip(image.GetSize(), old_spacing, new_spacing)
    )
    # Keep the outer edge of the first voxel where it was, so the extent is centred.
    direction = np.array(image.GetDirection(), dtype=float).reshape(image.GetDimension(), -1)
    shift = (np.array(new_spacing) - np.array(old_spacing)) / 2.0
    origin = np.array(image.GetOrigin(), dtype=float) + direction @ shift
    out = _resample(
        image, size, new_spacing, tuple(origin), image.GetDirection(), _interpolator(interpolator), default_hu
    )
    return _wrap(volume_or_image, out)


def resample_like(
    image: ImageLike,
    reference: sitk.Image | Volume,
    interpolator: Interpolator = "linear",
    default: float = AIR_HU,
) -> ImageLike:
    """Resample ``image`` onto the grid (size, spacing, origin, direction) of ``reference``.

    When both grids already match, ``image`` is returned unchanged (no interpolation).
    """
    ref = _image(reference)
    src = _image(image)
    if (
        src.GetSize() == ref.GetSize()
        and np.allclose(src.GetSpacing(), ref.GetSpacing(), rtol=0, atol=1e-6)
        and np.allclose(src.GetOrigin(), ref.GetOrigin(), rtol=0, atol=1e-5)
        and np.allclose(src.GetDirection(), ref.GetDirection(), rtol=0, atol=1e-7)
    ):
        return image
    out = _resample(
        _image(image),
        ref.GetSize(),
        ref.GetSpacing(),
        ref.GetOrigin(),
        ref.GetDirection(),
        _interpolator(interpolator),
        default,
    )
    return _wrap(image, out)


def reorient_to_nearest_axes(
    volume_or_image: ImageLike,
    orientation: str = "LPS",
    interpolator: Interpolator = "linear",
    default_hu: float = AIR_HU,
    tolerance_deg: float = 0.01,
) -> ImageLike:
    """Put the image on the nearest axis-aligned grid of ``orientation`` (DICOM letters).

    ``"LPS"`` (ITK's "RAI") gives an identity direction. Axes are first
    permuted and flipped without interpolation (``sitk.DICOMOrient``); if the
    result is still oblique (a tilted head) by more than ``tolerance_deg``,
    it is resampled onto an exactly axis-aligned grid covering the same
    physical box, with the same spacing.
    """
    image = _image(volume_or_image)
    target = _axis_directions(orientation.upper())
    oriented = sitk.DICOMOrient(image, orientation.upper())
    direction = np.array(oriented.GetDirection(), dtype=float).reshape(3, 3)
    cos = np.clip(np.abs(np.sum(direction * target, axis=0)), 0.0, 1.0)
    if float(np.degrees(np.arccos(cos.min()))) <= tolerance_deg:
        return _wrap(volume_or_image, oriented)
    # Oblique: bounding box of the corners in the target frame.
    size = np.array(oriented.GetSize())
    spacing = np.array(oriented.GetSpacing())
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in size], indexing="ij")).reshape(3, -1).T
    physical = np.array([oriented.TransformContinuousIndexToPhysicalPoint(c.astype(float).tolist()) for c in corners])
    in_target = physical @ target  # coordinates along the target axes
    low, high = in_target.min(axis=0), in_target.max(axis=0)
    new_size = tuple(int(math.ceil((hi - lo) / sp - 1e-6)) + 1 for lo, hi, sp in zip(low, high, spacing))
    origin = target @ low
    out = _resample(
        oriented,
        new_size,
        tuple(spacing),
        tuple(origin),
        tuple(target.ravel()),
        _interpolator(interpolator),
        default_hu,
    )
    return _wrap(volume_or_image, out)


def _axis_directions(orientation: str) -> np.ndarray:
    """Direction matrix (columns = axes) for DICOM orientation letters such as 'LPS' or 'RAS'."""
    letters = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    if len(orientation) != 3 or any(c not in letters for c in orientation):
        raise ValueError(f"orientation must be three of L/R, P/A, S/I letters, got {orientation!r}")
    matrix = np.zeros((3, 3))
    for column, letter in enumerate(orientation):
        axis, sign = letters[letter]
        matrix[axis, column] = sign
    if abs(abs(np.linalg.det(matrix)) - 1.0) > 1e-6:
        raise ValueError(f"orientation {orientation!r} repeats an axis")
    return matrix
