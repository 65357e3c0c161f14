"""A synthetic head-CT phantom with known ground truth.

The anatomy is defined *analytically* as functions of physical LPS coordinates
(mm; +x = patient left, +y = posterior, +z = superior; the head centre is the
origin), so any acquisition geometry (slice thickness, gantry tilt, pixel
spacing) samples the same object:

- scalp (skin ~40 HU, subcutaneous fat ~-90 HU, galea ~40 HU) and a neck;
- skull: outer table, diploe, inner table;
- subarachnoid CSF rim, cortical grey matter, white matter, deep grey nuclei;
- paired lateral ventricles, third ventricle, septum pellucidum (the tissue
  left between the two lateral ventricles), suprasellar cistern, a falx in the
  interhemispheric fissure;
- dural venous sinuses (dense even without contrast), and with ``contrast``
  enhancing arteries and sinuses.

An adult head is ~156 mm wide and ~192 mm long, with a 1.44 L intracranial
volume and ~1.2 L of brain at 60 years (children are smaller, the elderly
atrophic with larger ventricles). Options add cortical sulci, a brainstem and
a headrest (``detailed_anatomy``), a metal clip with streaks
(``metal_artefact``), a head pose (yaw, roll, pitch, offset), variable slice
spacing and gaps, gantry tilt and compressed transfer syntaxes.

Optional haemorrhage (IPH, EAH, IVH) of an exact volume, an optional
perihaematomal oedema rim, and an optional midline shift: the midline brain
structures are displaced along patient x by the shift inside a central
plateau, and the displacement decays smoothly (raised cosine) to zero at the
inner table, so the skull stays symmetric.

Conventions recorded in the ground truth:

- Labels follow BLAST-CT: 0 background, 1 IPH, 2 EAH, 3 oedema, 4 IVH.
- ``midline_shift_signed_mm`` is positive towards patient LEFT (+x in LPS),
  negative towards patient right. The ideal midline is the plane x = 0 (the
  skull's symmetry plane). By default the shift points away from the
  haemorrhage.
- Nominal volumes are realised on a fine grid (0.4-0.7 mm) and hit the
  requested volume; ``on_grid`` volumes are label voxel counts on the written
  grid times the voxel volume (a label voxel is one where most of the
  sub-samples across the slice thickness fall inside the class), and
  ``on_grid_partial_volume`` weighs each voxel by the fraction inside.
- The label map lies on the written grid; for tilted or irregular stacks
  (which NIfTI as ITK reads it cannot hold) it is sampled from the same
  analytic phantom on the tilt-corrected or uniform grid, as dcm2niix builds.
- With a head pose, positions given for the haemorrhage and the ``_x_mm``
  values are in the head's frame; the truth gives the midsagittal plane in LPS.

Use :func:`render_phantom` (in memory, no DICOM), :func:`phantom_volume` (a
:class:`ictus.imaging.volume.Volume`) or :func:`phantom_with_truth` (the Volume
and its :class:`PhantomTruth` apart: truth never rides inside a Volume),
:func:`sample_phantom` (any orthogonal or sheared grid), :func:`head_hu` (a plain
HU array of the head, for int8 calibration and benchmarks) and
:func:`write_phantom` (DICOM study + ``ground_truth.json``; the only function
here that touches disk).

The package, by job:

- :mod:`~ictus.imaging.phantom.spec`: options (:class:`PhantomSpec`), codes and
  densities, the written grid (:class:`PhantomGeometry`) and the head pose;
- :mod:`~ictus.imaging.phantom.anatomy`: the analytic head and its painter;
- :mod:`~ictus.imaging.phantom.lesions`: haemorrhage and oedema, fitted to volume;
- :mod:`~ictus.imaging.phantom.rendering`: sampling, partial volume, metal, noise;
- :mod:`~ictus.imaging.phantom.truth`: the ground-truth record, :class:`PhantomTruth`;
- :mod:`~ictus.imaging.phantom.dicom`: DICOM datasets, UIDs and :func:`write_phantom`;
- :mod:`~ictus.imaging.phantom.stroke`: the template-based *ischaemic* phantom
  (import it from there; it needs the stroke atlas).
"""
from __future__ import annotations

from ictus.imaging.phantom.dicom import PhantomWritten, phantom_uids, write_phantom
from ictus.imaging.phantom.lesions import build_model
from ictus.imaging.phantom.rendering import (
    PhantomRender,
    head_hu,
    phantom_volume,
    phantom_with_truth,
    render_phantom,
    sample_phantom,
)
from ictus.imaging.phantom.spec import (
    COMPRESSIONS,
    EAH_LOCATIONS,
    HAEMORRHAGE_TYPES,
    HU,
    IPH_LOCATIONS,
    LABELS,
    PARENCHYMA_TISSUES,
    TISSUES,
    VENTRICLE_TISSUES,
    PhantomGeometry,
    PhantomSpec,
    head_rotation,
    phantom_geometry,
    tilt_corrected_grid,
)
from ictus.imaging.phantom.truth import PhantomTruth, ground_truth

__all__ = [
    "COMPRESSIONS",
    "EAH_LOCATIONS",
    "HAEMORRHAGE_TYPES",
    "HU",
    "IPH_LOCATIONS",
    "LABELS",
    "PARENCHYMA_TISSUES",
    "TISSUES",
    "VENTRICLE_TISSUES",
    "PhantomGeometry",
    "PhantomRender",
    "PhantomSpec",
    "PhantomTruth",
    "PhantomWritten",
    "build_model",
    "ground_truth",
    "head_hu",
    "head_rotation",
    "phantom_geometry",
    "phantom_uids",
    "phantom_volume",
    "phantom_with_truth",
    "render_phantom",
    "sample_phantom",
    "tilt_corrected_grid",
    "write_phantom",
]
