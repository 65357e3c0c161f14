"""Template anatomy for stroke analysis: the CT template in MNI space, the ASPECTS
regions, the BLAST-CT lobar atlas and the arterial search courses.

Pure data loading and constants; no registration here (see :mod:`ictus.imaging.anatomy`).
The files are model assets, installed and verified by ``ictus models pull stroke-atlas``
(and ``blast-ct`` for the lobar atlas); this module is handed their folders and never
reads environment variables.

Coordinates are LPS millimetres in MNI space (x grows to the patient's **left**,
y to posterior, z to superior), as SimpleITK reads the NIfTI files.

- **Template:** Rorden's CT template (``template/scct.nii``, whole head, and
  ``template/scct_stripped.nii``, brain only), 2 mm, in Cormack units;
  :func:`cormack_to_hu` inverts the Clinical Toolbox's ``clinical_h2c.m``.
- **ASPECTS regions:** ten per hemisphere (Barber et al., Lancet 2000), binary masks on
  the MNI152 1 mm grid, merged into one label image (:data:`ASPECTS_CODES`). Masks overlap
  slightly at borders; a shared voxel goes to the region listed first in
  :data:`ASPECTS_CODES` (deep and insular regions before the cortical M regions), so every
  voxel is counted once.
- **Lobar atlas:** BLAST-CT's ``atlas_template_space.nii.gz`` (31 labels; its brain mask
  overlaps the Rorden brain with Dice 0.93 in world coordinates, so both share MNI space).
  Used for lesion region names, ventricles (IVH), infratentorial location and the
  approximate vascular territories (:data:`TERRITORY_LOBES`).
- **Arterial courses:** :data:`VESSEL_COURSES`, polylines through the M1 and M2 segments of
  each MCA and the basilar artery, in MNI LPS mm, with a search radius that absorbs
  registration error and anatomical variation.
"""
from __future__ import annotations

import csv
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

#: ASPECTS region codes in label order; left label = index + 1, right label = index + 11.
ASPECTS_CODES: tuple[str, ...] = ("C", "LN", "InCa", "IC", "M1", "M2", "M3", "M4", "M5", "M6")
ASPECTS_NAMES: Mapping[str, str] = {
    "C": "caudate",
    "LN": "lentiform nucleus",
    "InCa": "internal capsule",
    "IC": "insular ribbon",
    "M1": "anterior MCA cortex (ganglionic level)",
    "M2": "lateral MCA cortex (ganglionic level)",
    "M3": "posterior MCA cortex (ganglionic level)",
    "M4": "anterior MCA cortex (supraganglionic level)",
    "M5": "lateral MCA cortex (supraganglionic level)",
    "M6": "posterior MCA cortex (supraganglionic level)",
}
#: Regions of the ganglionic (basal ganglia) and supraganglionic levels, for key images.
GANGLIONIC_CODES = ("C", "LN", "InCa", "IC", "M1", "M2", "M3")
SUPRAGANGLIONIC_CODES = ("M4", "M5", "M6")
SIDES = ("left", "right")

TEMPLATE_FILES = ("template/scct.nii", "template/scct_stripped.nii")
ASPECTS_FILES = tuple(f"aspects/MNI152_{code}_{s}.nii.gz" for code in ASPECTS_CODES for s in ("L", "R"))
STROKE_ATLAS_FILES = TEMPLATE_FILES + ASPECTS_FILES
LOBAR_ATLAS_FILES = ("atlas_template_space.nii.gz", "atlas_labels.csv")

#: Approximate vascular territories from the lobar atlas (label names, per side; the
#: side-less labels are listed under both). An approximation: lobes are not territories
#: (the medial parietal lobe is ACA, the posterior temporal lobe partly PCA); documented
#: as such wherever a territory volume is reported.
TERRITORY_LOBES: Mapping[str, tuple[str, ...]] = {
    "MCA": ("FrontalLobe-lateral", "Insula", "TemporalLobe", "ParietalLobe", "BasalGanglia",
            "Basalganglia-lentiform-nucleus", "Caudate"),
    "ACA": ("FrontalLobe-medial", "FrontalLobe-inferior-orbital", "BasalForebrain"),
    "PCA": ("OccipitalLobe", "ThalamusProper", "Hippocampus"),
}
INFRATENTORIAL_LABELS = ("BrainStem", "Cerebellum", "LeftCerebellum", "RightCerebellum")
VENTRICLE_LABELS = ("Ventricle",)


@dataclass(frozen=True)
class VesselCourse:
    """An arterial segment to search: a polyline (MNI LPS mm) and a tube radius."""

    name: str  # "M1", "M2", "basilar"
    side: str  # "left", "right" or "midline"
    points_mm: tuple[tuple[float, float, float], ...]
    radius_mm: float

    def mirror(self) -> "VesselCourse":
        """The same course in the other hemisphere (x negated)."""
        other = {"left": "right", "right": "left"}.get(self.side, self.side)
        pts = tuple((-x, y, z) for x, y, z in self.points_mm)
        return VesselCourse(self.name, other, pts, self.radius_mm)


def _courses() -> tuple[VesselCourse, ...]:
    # MNI coordinates of the proximal arteries, from the probabilistic arterial atlases in
    # MNI space (Mouches & Forkert, Sci Data 2019; Kim et al., ASPECTS vessel maps): the M1
    # runs laterally from the internal carotid terminus (about x 12, y +3 RAS, z -14) to the
    # limen insulae (about x 34, z -10), slightly anterior to the anterior commissure; the
    # M2 trunks run posterior-superiorly over the insula (x about 38-42); the basilar artery
    # runs on the anterior surface of the pons (y about -14 RAS) from the vertebral
    # confluence (z about -42) to its tip (z about -14). LPS y = -RAS y.
    m1 = VesselCourse("M1", "left", ((12.0, -3.0, -15.0), (20.0, -4.0, -13.0), (28.0, -4.0, -11.0), (35.0, -2.0, -9.0)), 7.0)
    m2 = VesselCourse("M2", "left", ((36.0, -2.0, -7.0), (39.0, 6.0, -2.0), (41.0, 14.0, 4.0), (42.0, 22.0, 10.0)), 7.0)
    basilar = VesselCourse("basilar", "midline", ((0.0, 17.0, -42.0), (0.0, 15.0, -30.0), (0.0, 14.0, -20.0), (0.0, 13.0, -14.0)), 7.0)
    return (m1, m1.mirror(), m2, m2.mirror(), basilar)


VESSEL_COURSES: tuple[VesselCourse, ...] = _courses()


def cormack_to_hu(cormack: np.ndarray) -> np.ndarray:
    """Hounsfield units from Cormack units (the inverse of Rorden's ``clinical_h2c.m``).

    With ``v = HU + 1024`` and ``e = max(v - 900, 0)``, Cormack = ``v + e + 9 min(e, 200)``:
    slope 1 up to -124 HU, 11 from -124 to +76 HU, 2 above.
    """
    c = np.asarray(cormack, dtype=np.float32)
    e = np.where(c <= 900.0, 0.0, np.where(c <= 3100.0, (c - 900.0) / 11.0, (c - 2700.0) / 2.0))
    v = np.where(c <= 900.0, c, 900.0 + e)
    return (v - 1024.0).astype(np.float32)


@dataclass(frozen=True)
class TemplateAtlas:
    """The template images and label maps, all in MNI LPS world coordinates."""

    template_hu: sitk.Image  # float32 HU, whole head, 2 mm
    brain_mask: sitk.Image  # uint8, 2 mm (template grid)
    aspects: sitk.Image  # uint8 labels on the 1 mm MNI152 grid (0, 1-10 left, 11-20 right)
    lobar: sitk.Image | None = None  # uint8 BLAST-CT labels (1 mm), None when not installed
    lobar_names: Mapping[int, str] = field(default_factory=dict)

    def lobar_values(self, names: tuple[str, ...], side: str | None = None) -> tuple[int, ...]:
        """Label values of the lobar atlas whose names end with one of ``names``
        (``side`` "left"/"right" keeps that side and the side-less labels)."""
        out = []
        for value, full in self.lobar_names.items():
            for n in names:
                if full == n or full.endswith(n):
                    prefix = full[: len(full) - len(n)]
                    if side is None or prefix == "" or prefix.lower() == side:
                        out.append(value)
        return tuple(sorted(set(out)))


def aspects_label(code: str, side: str) -> int:
    """The label value of region ``code`` on ``side`` ("left" or "right")."""
    return ASPECTS_CODES.index(code) + (1 if side == "left" else 11)


def aspects_region(label: int) -> tuple[str, str]:
    """``(code, side)`` of a label value."""
    side = "left" if label <= 10 else "right"
    return ASPECTS_CODES[(label - 1) % 10], side


def missing_files(folder: str | Path | None, files: tuple[str, ...]) -> list[str]:
    """The files of ``files`` that ``folder`` lacks (all of them for no folder)."""
    if folder is None:
        return list(files)
    return [f for f in files if not (Path(folder) / f).is_file()]


def _merge_aspects(folder: Path) -> sitk.Image:
    merged: np.ndarray | None = None
    reference: sitk.Image | None = None
    for code in ASPECTS_CODES:  # order = priority for shared voxels
        for side, suffix in (("left", "L"), ("right", "R")):
            image = sitk.ReadImage(str(folder / f"aspects/MNI152_{code}_{suffix}.nii.gz"), sitk.sitkFloat32)
            arr = sitk.GetArrayViewFromImage(image) > 0.5
            if merged is None:
                merged, reference = np.zeros(arr.shape, dtype=np.uint8), image
            merged[arr & (merged == 0)] = aspects_label(code, side)
    assert merged is not None and reference is not None
    out = sitk.GetImageFromArray(merged)
    out.CopyInformation(reference)
    return out


@functools.lru_cache(maxsize=4)
def load_template_atlas(stroke_atlas_dir: str, lobar_atlas_dir: str | None = None) -> TemplateAtlas:
    """Read the template, the merged ASPECTS labels and (optionally) the lobar atlas (cached)."""
    folder = Path(stroke_atlas_dir)
    raw = sitk.ReadImage(str(folder / "template/scct.nii"), sitk.sitkFloat32)
    template = sitk.GetImageFromArray(cormack_to_hu(sitk.GetArrayViewFromImage(raw)))
    template.CopyInformation(raw)
    stripped = sitk.ReadImage(str(folder / "template/scct_stripped.nii"))
    brain = sitk.Cast(stripped > 0, sitk.sitkUInt8)
    lobar, names = None, {}
    if lobar_atlas_dir and not missing_files(lobar_atlas_dir, LOBAR_ATLAS_FILES):
        lf = Path(lobar_atlas_dir)
        lobar = sitk.Cast(sitk.ReadImage(str(lf / "atlas_template_space.nii.gz")), sitk.sitkUInt8)
        with open(lf / "atlas_labels.csv", newline="") as fh:
            names = {int(r["ROIIndex"]): r["ROIName"] for r in csv.DictReader(fh)}
    return TemplateAtlas(template_hu=template, brain_mask=brain, aspects=_merge_aspects(folder), lobar=lobar,
                         lobar_names=names)
