"""Model-input preprocessing for BLAST-CT-style networks (SimpleITK + numpy, torch-free).

What the reference implementation (PyPI ``blast-ct``) does, reproduced here:

1. reorient to the nearest axis-aligned direction (``reorient_like_reference``,
   linear, filled with the image minimum, including the reference's one-voxel
   origin quirk on flipped axes so that the grids coincide);
2. resample to 1 mm (linear, same origin, size ``round((n-1)*s/1 + 1)``);
3. clip HU to the window and scale to [-1, 1] with ``(2*HU - lo - hi)/(hi - lo)``.

What we add: only a box around the head (plus the network's context) is
resampled and normalised; air is not worth computing. The box starts on a
multiple of the tile size in the full 1 mm grid, so tiles stay aligned with the
reference's patch grid, and it remembers whether it touches the full grid's
border (where the reference pads by edge replication). :class:`ModelInput`
keeps what is needed to map results back onto the original grid
(:func:`to_original_grid`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ictus.imaging.errors import InvalidInputError
from ictus.imaging.volume import Volume

log = logging.getLogger(__name__)

HEAD_THRESHOLD_HU = -300.0


@dataclass(frozen=True)
class ModelInput:
    """A normalised box of the model's 1 mm grid, and how to get back.

    - ``array``: float32 [z, y, x], normalised intensities of the box.
    - ``tissue``: bool [z, y, x], voxels of the box whose HU lies strictly
      inside the window (soft tissue, not air/fat and not bone).
    - ``deep``: bool [z, y, x], tissue voxels more than ``shell_vox`` dilation
      steps away from the air outside the head (drops the scalp, keeps what the
      skull encloses; see :func:`deep_tissue`).
    - ``box_start``: (z, y, x) index of the box in the full 1 mm grid.
    - ``region_start``/``region_stop``: (z, y, x) full-grid range where outputs
      are wanted (the head box, start aligned to the tile grid); the box holds it
      plus the network's context (cut at the grid border, where tiles pad by edge).
    - ``grid_size``: (z, y, x) size of the full 1 mm grid.
    - ``box_image``: a SimpleITK image carrying the box's geometry (voxels unused).
    - ``reference_image``: the original volume's image (geometry for the way back).
    """

    array: np.ndarray
    tissue: np.ndarray
    deep: np.ndarray
    box_start: tuple[int, int, int]
    grid_size: tuple[int, int, int]
    box_image: sitk.Image
    reference_image: sitk.Image
    region_start: tuple[int, int, int] = (0, 0, 0)
    region_stop: tuple[int, int, int] = (0, 0, 0)
    head_found: bool = True

    @property
    def box_stop(self) -> tuple[int, int, int]:
        return tuple(int(s + n) for s, n in zip(self.box_start, self.array.shape))  # type: ignore[return-value]


def reoriented_geometry(image: sitk.Image) -> sitk.Image:
    """An empty image with the reference's reoriented geometry (nearest axis-aligned,
    positive diagonal), reproducing blast-ct's ``create_reference_reoriented_image``."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    index = np.argmax(np.abs(direction), axis=0)
    new_size = np.array(image.GetSize())[index]
    new_spacing = np.array(image.GetSpacing())[index]
    new_extent = new_size * new_spacing
    new_dir = direction[:, index]
    flip = np.diag(new_dir) < 0
    flip_diag = np.where(flip, -1.0, 1.0)
    # blast-ct offsets flipped axes by the full extent (n*s, not (n-1)*s); kept for grid identity.
    new_origin = np.array(image.GetOrigin()) + new_dir @ (new_extent * flip)
    new_dir = new_dir @ np.diag(flip_diag)
    reference = sitk.Image([int(s) for s in new_size], sitk.sitkUInt8)
    reference.SetSpacing([float(s) for s in new_spacing])
    reference.SetOrigin([float(o) for o in new_origin])
    try:
        reference.SetDirection([float(d) for d in new_dir.flatten()])
    except RuntimeError as exc:  # singular direction matrix
        raise InvalidInputError(f"volume direction cannot be reoriented ({exc}); rebuild the volume") from exc
    return reference


def reorient_like_reference(image: sitk.Image) -> sitk.Image:
    """Resample onto :func:`reoriented_geometry` (linear, filled with the image minimum)."""
    reference = reoriented_geometry(image)
    if _same_geometry(reference, image):
        return image
    default = float(np.min(sitk.GetArrayViewFromImage(image)))
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)


def model_grid_geometry(reoriented: sitk.Image, spacing_mm: tuple[float, float, float]) -> sitk.Image:
    """The full model grid (blast-ct's ``get_reference_image``): same origin and direction,
    size ``round((n-1)*s/new_s + 1)``."""
    size = [int(round((n - 1) * s / t + 1)) for n, s, t in zip(reoriented.GetSize(), reoriented.GetSpacing(), spacing_mm)]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetOrigin(reoriented.GetOrigin())
    grid.SetDirection(reoriented.GetDirection())
    grid.SetSpacing([float(s) for s in spacing_mm])
    return grid


def model_grid_volume(volume: Volume, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Volume:
    """``volume`` resampled onto the model's full grid (reoriented to the nearest axes,
    ``spacing_mm``), exactly as :func:`preprocess` samples it: linear, filled with the
    minimum. The other stages of triage analyse this grid (about 1 mm whatever the
    source resolution), and :func:`preprocess` of the result reads the same values
    at the same points as :func:`preprocess` of ``volume``, so the model sees the
    same input either way. Provenance, QC flags and source slices are kept."""
    reoriented, grid = _reoriented_and_grid(volume, spacing_mm)
    if _same_geometry(grid, reoriented):
        return volume.with_image(reoriented)
    default = float(np.min(sitk.GetArrayViewFromImage(reoriented)))
    return volume.with_image(sitk.Resample(reoriented, grid, sitk.Transform(), sitk.sitkLinear, default,
                                           sitk.sitkFloat32))


def _reoriented_and_grid(volume: Volume, spacing_mm: tuple[float, float, float]) -> tuple[sitk.Image, sitk.Image]:
    """The float32 image reoriented as the reference does, and the model's full grid over it
    (the first steps of both :func:`preprocess` and :func:`model_grid_volume`)."""
    image = volume.image
    if image.GetDimension() != 3:
        raise InvalidInputError(f"expected a 3-D volume, found {image.GetDimension()}-D; pass a CT volume")
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    reoriented = reorient_like_reference(image)
    return reoriented, model_grid_geometry(reoriented, spacing_mm)


def normalise_hu(array_hu: np.ndarray, window_hu: tuple[float, float]) -> np.ndarray:
    """Clip to the window and scale linearly to [-1, 1] (float32, in place when possible)."""
    lo, hi = float(window_hu[0]), float(window_hu[1])
    out = np.asarray(array_hu, dtype=np.float32)
    np.clip(out, lo, hi, out=out)
    out *= np.float32(2.0 / (hi - lo))
    out -= np.float32((lo + hi) / (hi - lo))
    return out


def head_box_mm(image: sitk.Image, threshold_hu: float = HEAD_THRESHOLD_HU) -> np.ndarray | None:
    """Physical corners (8 x 3, LPS mm) of the bounding box of the largest
    connected component above ``threshold_hu`` (the head; the table and
    headrest are usually separate), or None when nothing is above it."""
    view = sitk.GetArrayViewFromImage(image)
    step = [max(1, int(round(2.0 / s))) for s in image.GetSpacing()[::-1]]  # ~2 mm sampling
    sub = np.asarray(view[:: step[0], :: step[1], :: step[2]]) > threshold_hu
    if not sub.any():
        return None
    labels, n = ndimage.label(sub)
    if n > 1:
        counts = np.bincount(labels.ravel())
        counts[0] = 0
        sub = labels == int(np.argmax(counts))
    idx = np.nonzero(sub)
    lo = [int(i.min()) * s for i, s in zip(idx, step)]
    hi = [min(int(i.max()) * s + s - 1, n - 1) for i, s, n in zip(idx, step, view.shape)]
    corners = []
    for z in (lo[0], hi[0]):
        for y in (lo[1], hi[1]):
            for x in (lo[2], hi[2]):
                corners.append(image.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z))))
    return np.array(corners)


def preprocess(
    volume: Volume,
    *,
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    window_hu: tuple[float, float] = (-15.0, 100.0),
    tile_vox: int = 15,
    context_vox: int = 40,
    phase_vox: int = 15,
    shell_vox: int = 8,
    crop_to_head: bool = True,
) -> ModelInput:
    """Reorient, resample (only the head box plus context) and normalise.

    The output region starts on a multiple of ``phase_vox`` in the full 1 mm
    grid (tiles start on multiples of 15 voxels to keep the network's
    sub-sampling phase equal to the reference's); the box adds ``context_vox``
    per side (the network needs 40), and ``tile_vox`` (the largest tile) more at
    the far end so that a tile overhanging the head still has real input.
    """
    reoriented, grid = _reoriented_and_grid(volume, spacing_mm)
    size_xyz = np.array(grid.GetSize())

    region_lo = np.zeros(3, dtype=int)
    region_hi = size_xyz.copy()
    head_found = True
    if crop_to_head:
        corners = head_box_mm(reoriented)
        if corners is None:
            head_found = False
            log.warning("no voxel above %s HU; the whole grid is kept", HEAD_THRESHOLD_HU)
        else:
            idx = np.array([grid.TransformPhysicalPointToContinuousIndex(tuple(map(float, c))) for c in corners])
            lo = np.clip(np.floor(idx.min(axis=0)).astype(int), 0, size_xyz - 1)
            hi = np.clip(np.ceil(idx.max(axis=0)).astype(int) + 1, 1, size_xyz)
            region_lo = (lo // phase_vox) * phase_vox
            region_hi = np.maximum(hi, region_lo + 1)
    start = np.clip(region_lo - context_vox, 0, size_xyz)
    stop = np.clip(region_hi + tile_vox + context_vox, 0, size_xyz)  # room for any tile of <= tile_vox
    box = sitk.Image([int(v) for v in stop - start], sitk.sitkUInt8)
    box.SetSpacing(grid.GetSpacing())
    box.SetDirection(grid.GetDirection())
    box.SetOrigin(grid.TransformIndexToPhysicalPoint([int(v) for v in start]))
    default = float(np.min(sitk.GetArrayViewFromImage(reoriented)))
    resampled = sitk.Resample(reoriented, box, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)
    hu = sitk.GetArrayFromImage(resampled)
    del resampled
    lo_hu, hi_hu = window_hu
    tissue = (hu > lo_hu) & (hu < hi_hu)
    deep = deep_tissue(hu, tissue, shell_vox=shell_vox)
    array = normalise_hu(hu, window_hu)
    return ModelInput(
        array=array,
        tissue=tissue,
        deep=deep,
        box_start=tuple(int(v) for v in start[::-1]),  # type: ignore[arg-type]
        grid_size=tuple(int(v) for v in size_xyz[::-1]),  # type: ignore[arg-type]
        box_image=box,
        reference_image=volume.image,
        region_start=tuple(int(v) for v in region_lo[::-1]),  # type: ignore[arg-type]
        region_stop=tuple(int(v) for v in region_hi[::-1]),  # type: ignore[arg-type]
        head_found=head_found,
    )


def deep_tissue(hu: np.ndarray, tissue: np.ndarray, *, shell_vox: int = 8, air_hu: float = -300.0) -> np.ndarray:
    """Tissue voxels farther than ``shell_vox`` dilation steps (18-connected, so
    4.6 to 11 mm at 1 mm) from the air that touches the box border: drops the
    scalp and skin, keeps the intracranial space (behind >= ~8 mm of scalp and
    skull). Computed at 2-voxel sampling for speed."""
    air = hu[::2, ::2, ::2] < air_hu
    labels, _ = ndimage.label(air)
    border = np.unique(np.concatenate([
        labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel(),
        labels[:, :, 0].ravel(), labels[:, :, -1].ravel(),
    ]))
    outside = np.isin(labels, border[border > 0])
    steps = max(1, int(round(shell_vox / 2)))
    near = ndimage.binary_dilation(outside, ndimage.generate_binary_structure(3, 2), iterations=steps)
    near_full = np.repeat(np.repeat(np.repeat(near, 2, 0), 2, 1), 2, 2)[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    return tissue & ~near_full


def to_original_grid(
    array_box: np.ndarray,
    model_input: ModelInput,
    *,
    default: float = 0.0,
    interpolator: int = sitk.sitkLinear,
    dtype: type = np.float32,
) -> np.ndarray:
    """Map an array on the model box ([z, y, x]) back onto the original volume grid.

    Outside the box the value is ``default``. Use linear for probabilities and
    nearest neighbour for labels (what the reference does with its label map).
    """
    offset = _grid_offset(model_input.box_image, model_input.reference_image)
    if offset is not None:  # the reference is the model grid itself (triage's analysis grid): copy, no resampling
        out_zyx = np.full(model_input.reference_image.GetSize()[::-1], default, dtype=dtype)
        src, dst = [], []
        for start, n_box, n_ref in zip(offset[::-1], array_box.shape, out_zyx.shape):
            lo, hi = max(start, 0), max(min(start + n_box, n_ref), max(start, 0))  # the box's part inside the grid
            src.append(slice(lo - start, hi - start))
            dst.append(slice(lo, hi))
        out_zyx[tuple(dst)] = array_box[tuple(src)]
        return out_zyx
    moving = sitk.GetImageFromArray(np.ascontiguousarray(array_box))
    moving.CopyInformation(model_input.box_image)
    out = sitk.Resample(moving, model_input.reference_image, sitk.Transform(), interpolator, float(default))
    return sitk.GetArrayFromImage(out).astype(dtype, copy=False)


def _grid_offset(box: sitk.Image, reference: sitk.Image) -> tuple[int, int, int] | None:
    """(x, y, z) index of ``box``'s first voxel in ``reference`` when both share spacing and
    direction and the box sits on the reference's voxels; None otherwise."""
    if not (np.allclose(box.GetSpacing(), reference.GetSpacing(), rtol=0, atol=1e-6)
            and np.allclose(box.GetDirection(), reference.GetDirection(), rtol=0, atol=1e-9)):
        return None
    index = np.array(reference.TransformPhysicalPointToContinuousIndex(box.GetOrigin()))
    nearest = np.round(index)
    if np.abs(index - nearest).max() > 1e-3:
        return None
    return tuple(int(v) for v in nearest)  # type: ignore[return-value]


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing())
        and np.allclose(a.GetOrigin(), b.GetOrigin())
        and np.allclose(a.GetDirection(), b.GetDirection())
    )
