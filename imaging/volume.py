"""The central data type: a CT volume in Hounsfield units with its geometry.

A :class:`Volume` wraps a SimpleITK image in LPS (SimpleITK's native patient
frame) together with the UIDs of the DICOM it came from and the QC flags raised
while building it. It is immutable: operations return a new object
(:meth:`Volume.with_image`), so stages are pure ``Volume -> Volume`` functions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

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


@dataclass(frozen=True)
class Volume:
    """A HU volume (float32 SimpleITK image in LPS) plus provenance and QC.

    ``header`` holds a few non-identifying acquisition attributes (kernel,
    slice thickness, KVP, contrast agent, patient age, manufacturer...) used by
    QC; it never holds patient names or IDs.
    """

    image: sitk.Image
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    source_slices: tuple[SourceSlice, ...] = ()
    source_paths: tuple[str, ...] = ()
    qc_flags: tuple[str, ...] = ()
    header: Mapping[str, Any] = field(default_factory=dict)

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
        """A new Volume whose voxels are ``array`` ([z, y, x]) on the same grid."""
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(self.image)
        return self.with_image(image)

    def with_flags(self, *flags: str) -> "Volume":
        """A new Volume with extra QC flags (duplicates dropped, order kept)."""
        merged = tuple(dict.fromkeys(self.qc_flags + tuple(flags)))
        return dataclasses.replace(self, qc_flags=merged)


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
