"""The central data type: a CT volume in Hounsfield units with its geometry.

A :class:`Volume` wraps a SimpleITK image in LPS (SimpleITK's native patient
frame) together with the UIDs of the DICOM it came from, the QC flags raised
while building it and a typed :class:`Acquisition` record. It is immutable:
operations return a new object (:meth:`Volume.with_image`), so stages are pure
``Volume -> Volume`` functions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class SourceSlice:
    """Geometry of one source DICOM frame, kept so outputs (SEG) can be mapped
    back onto the acquired slices even after tilt correction or resampling."""

    sop_instance_uid: str
    frame_number: int | None  # 1-based for multi-frame objects, None for single-frame
    image_position_patient: tuple[float, float, float]
    image_orientation_patient: tuple[float, float, float, float, float, float]
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing), as DICOM orders it
    rows: int
    columns: int


#: ContrastBolusAgent values that mean "no contrast" (compared upper-case).
_NO_CONTRAST = frozenset({"", "NONE", "NO", "N", "0"})


@dataclass(frozen=True)
class Acquisition:
    """Non-identifying facts about how the volume was acquired (never names or IDs).

    Filled from the DICOM headers by :func:`ictus.imaging.build.build_volume`;
    other sources set what they know (NIfTI: only ``source_format``). ``None``
    or ``""`` means unknown.
    """

    source_format: str = ""  # "dicom", "nifti", "phantom"...; "" when unknown
    modality: str = ""
    manufacturer: str = ""
    model_name: str = ""  # ManufacturerModelName
    kernel: str = ""  # ConvolutionKernel (multiple values joined with "\\")
    slice_thickness_mm: float | None = None  # SliceThickness as written in the header
    tube_voltage_kvp: float | None = None
    contrast_agent: str = ""  # ContrastBolusAgent as written ("NONE" included)
    patient_age_years: float | None = None
    lossy_compression: bool = False  # lossy transfer syntax or LossyImageCompression "01"
    transfer_syntax_uid: str = ""
    source_slice_count: int | None = None  # distinct source slices the volume was built from

    @property
    def contrast_given(self) -> bool:
        """Whether the header names a contrast agent (not empty, "NONE", "NO"...)."""
        return self.contrast_agent.strip().upper() not in _NO_CONTRAST


@dataclass(frozen=True)
class Volume:
    """A HU volume (float32 SimpleITK image in LPS) plus provenance, QC flags and acquisition facts."""

    image: sitk.Image
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    source_slices: tuple[SourceSlice, ...] = ()
    source_paths: tuple[str, ...] = ()
    qc_flags: tuple[str, ...] = ()
    acquisition: Acquisition = field(default_factory=Acquisition)

    # -- geometry -------------------------------------------------------
    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel spacing (x, y, z) in mm."""
        return tuple(float(s) for s in self.image.GetSpacing())  # type: ignore[return-value]

    @property
    def size(self) -> tuple[int, int, int]:
        """Grid size (x, y, z) in voxels."""
        return tuple(int(s) for s in self.image.GetSize())  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL."""
        sx, sy, sz = self.spacing_mm
        return sx * sy * sz / 1000.0

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-index (i, j, k) to LPS-mm affine."""
        direction = np.array(self.image.GetDirection(), dtype=float).reshape(3, 3)
        spacing = np.array(self.image.GetSpacing(), dtype=float)
        out = np.eye(4)
        out[:3, :3] = direction * spacing[None, :]
        out[:3, 3] = self.image.GetOrigin()
        return out

    def index_to_lps(self, zyx: np.ndarray) -> np.ndarray:
        """LPS mm of (continuous) voxel indices (N, 3) given in [z, y, x] order."""
        return index_to_lps(self.image, zyx)

    def lps_to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """Continuous [z, y, x] voxel indices (N, 3) of LPS points (N, 3)."""
        return lps_to_index(self.image, points_lps)

    def array(self) -> np.ndarray:
        """A copy of the voxels as a numpy array indexed [z, y, x]."""
        return sitk.GetArrayFromImage(self.image)

    def array_view(self) -> np.ndarray:
        """A read-only view of the voxels, indexed [z, y, x] (no copy)."""
        view = sitk.GetArrayViewFromImage(self.image)
        return view

    # -- derivation -------------------------------------------------------
    def with_image(self, image: sitk.Image) -> "Volume":
        """A new Volume with another image and the same provenance."""
        return dataclasses.replace(self, image=image)

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new Volume whose voxels are ``array`` ([z, y, x]) on the same grid.

        ``array`` must be 3-D, have this grid's shape and a real numeric dtype
        (integer or floating point, not bool); it is stored as float32 HU.
        """
        array = np.asarray(array)
        expected = tuple(reversed(self.size))
        if array.ndim != 3:
            raise ValueError(f"with_array needs a 3-D [z, y, x] array, got {array.ndim}-D with shape {array.shape}")
        if array.shape != expected:
            raise ValueError(f"with_array needs an array of shape {expected} ([z, y, x] of this grid), got {array.shape}")
        if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise TypeError(f"with_array needs integer or floating-point HU values, got dtype {array.dtype}")
        image = sitk.GetImageFromArray(array.astype(np.float32, copy=False))
        image.CopyInformation(self.image)
        return self.with_image(image)

    def with_flags(self, *flags: str) -> "Volume":
        """A new Volume with extra QC flags (duplicates dropped, order kept)."""
        merged = tuple(dict.fromkeys(self.qc_flags + tuple(flags)))
        return dataclasses.replace(self, qc_flags=merged)


def index_to_lps(image: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    """LPS mm of (continuous) voxel indices (N, 3) in [z, y, x] order on ``image``'s grid."""
    zyx = np.atleast_2d(np.asarray(zyx, dtype=float))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    return origin + (zyx[:, ::-1] * spacing) @ direction.T


def lps_to_index(image: sitk.Image, points_lps: np.ndarray) -> np.ndarray:
    """Continuous [z, y, x] voxel indices (N, 3) of LPS points (N, 3) on ``image``'s grid."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    ijk = ((np.asarray(points_lps, dtype=float) - origin) @ direction) / spacing
    return ijk[:, ::-1]


def volume_from_array(
    array_zyx: np.ndarray,
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
    **kwargs: Any,
) -> Volume:
    """Build a Volume from a numpy array indexed [z, y, x] (for tests and notebooks)."""
    image = sitk.GetImageFromArray(np.asarray(array_zyx, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing_mm))
    image.SetOrigin(tuple(float(o) for o in origin_mm))
    image.SetDirection(tuple(float(d) for d in direction))
    return Volume(image=image, **kwargs)
