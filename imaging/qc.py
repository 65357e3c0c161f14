"""Input quality control: flags, each with a severity that says what happens to the findings.

The flag table :data:`QC_FLAGS` is data: a name, a description and a severity:

- ``info``: recorded, findings reported as usual;
- ``warning``: findings are still reported, with the caveat;
- ``indeterminate``: the study cannot be triaged automatically; findings are
  not to be trusted and the priority becomes ``indeterminate``.

:func:`assess_qc` carries every flag raised by ingest (``Volume.qc_flags``)
and adds the image-based ones: no brain, contrast suspected, incomplete head
coverage, thick slices, paediatric patient, streak/metal artefact, and
skull-stripped input (indeterminate: see the table). A flag that
is not in the table (a new ingest flag) is kept with severity ``warning``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ictus.imaging.brain import (
    BrainResult,
    as_image,
    bin_axial,
    bin_factor,
    dilate_axial,
    erode_axial,
    fill_holes_axial,
    to_lps,
)
from ictus.imaging.volume import Acquisition

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "indeterminate")


@dataclass(frozen=True)
class QcFlagSpec:
    """One row of the flag table."""

    name: str
    description: str
    severity: str  # "info" | "warning" | "indeterminate"


def _table(*rows: tuple[str, str, str]) -> dict[str, QcFlagSpec]:
    return {name: QcFlagSpec(name, description, severity) for name, severity, description in rows}


#: The flag table (name -> spec). Severities can be overridden per call.
QC_FLAGS: Mapping[str, QcFlagSpec] = _table(
    # from ingest
    ("gantry_tilt_corrected", "info", "Gantry tilt was corrected by resampling onto an orthogonal grid."),
    ("variable_spacing_resampled", "info", "Variable slice spacing was resampled to a uniform spacing."),
    ("duplicate_slices_dropped", "info", "Exact duplicate slices were dropped."),
    ("stale_dicomdir", "info", "The DICOMDIR index was stale; the folder was scanned instead."),
    ("gap_detected", "warning", "A gap between slices was interpolated; findings inside it may be missed."),
    ("lossy_compression", "warning", "Pixels went through lossy compression; small or faint findings may be lost."),
    ("unreadable_files_skipped", "warning",
     "Some files of the study were truncated or corrupt and were left out; if they belonged to the chosen "
     "series, its slices there are missing (a gap is flagged separately)."),
    ("rescale_derived", "warning",
     "Some slices lacked RescaleSlope/RescaleIntercept: the value the rest of the series agrees on was used "
     "(or, with none anywhere, stored values that already looked like HU were taken as HU)."),
    ("frame_of_reference_derived", "info",
     "The source series has no Frame of Reference UID; the DICOM outputs carry a new one derived from its "
     "Series Instance UID."),
    ("slice_thickness_derived", "info", "SliceThickness is absent: the slice spacing stands in for it."),
    ("patient_age_unknown", "info", "PatientAge is absent: the paediatric check (model not validated under 18) "
     "could not be made."),
    # image and header based
    ("no_brain_found", "indeterminate", "No brain inside a skull was found (not a human head, or no head in the field)."),
    ("skull_stripped_input", "indeterminate",
     "Skull-stripped input (research data: everything outside the brain removed): the brain mask is the "
     "soft-tissue region, but the model, the midline and the template registration expect a whole head, and "
     "extra-axial blood may have been stripped with the skull; the study is not triaged automatically."),
    ("contrast_suspected", "indeterminate",
     "Iodinated contrast suspected (header or dense vessels/sinuses): enhancement mimics blood; "
     "the model is validated on non-contrast CT only."),
    ("incomplete_head_coverage", "warning",
     "The head is not covered from skull base to vertex; findings outside the covered range are not assessed."),
    ("thick_slices", "warning", "Slices thicker than 5 mm: small haemorrhages and shifts are measured less reliably."),
    ("paediatric_patient", "warning", "Patient younger than 18 years: the model is not validated on children."),
    ("registration_failed", "warning",
     "The CT template could not be registered to this head with enough overlap: ASPECTS, the dense artery "
     "sign, net water uptake and lesion regions are not assessed (indeterminate, never guessed)."),
    ("streak_or_metal_artefact", "warning",
     "Metal or heavy streak artefact near the brain: dense or dark streaks can mimic or hide blood."),
)


@dataclass(frozen=True)
class QcFlag:
    """A raised flag: its name, severity, description and what was measured."""

    name: str
    severity: str
    description: str
    detail: str = ""


@dataclass(frozen=True)
class QcReport:
    """All flags of one study, and measurements behind them."""

    flags: tuple[QcFlag, ...]
    measurements: Mapping[str, Any]

    @property
    def names(self) -> tuple[str, ...]:
        """The flag names, in order raised."""
        return tuple(f.name for f in self.flags)

    @property
    def indeterminate(self) -> bool:
        """Whether a flag makes the study indeterminate."""
        return any(f.severity == "indeterminate" for f in self.flags)

    @property
    def verdict(self) -> str:
        """"indeterminate", "warning" or "ok" (the worst severity raised)."""
        if self.indeterminate:
            return "indeterminate"
        return "warning" if any(f.severity == "warning" for f in self.flags) else "ok"


def assess_qc(
    volume: Any,
    brain: BrainResult | None = None,
    *,
    extra_flags: Iterable[str] = (),
    patient_age_years: float | None = None,
    acquisition: Acquisition | None = None,
    thick_slice_mm: float = 5.0,
    min_coverage_mm: float = 100.0,
    edge_brain_fraction: float = 0.25,
    contrast_range_hu: tuple[float, float] = (150.0, 400.0),
    contrast_min_ml: float = 1.0,
    contrast_margin_mm: float = 8.0,
    metal_hu: float = 2500.0,
    metal_min_ml: float = 0.05,
    severities: Mapping[str, str] | None = None,
    source_z_spacing_mm: float | None = None,
) -> QcReport:
    """The QC flags of a volume (a :class:`ictus.imaging.volume.Volume` or a HU image) and its brain result.

    ``acquisition`` defaults to ``volume.acquisition`` (slice thickness,
    contrast agent and patient age are read from it); ``patient_age_years``
    overrides its age; ``extra_flags`` adds flags from elsewhere (series
    selection); ``severities`` overrides the table. ``source_z_spacing_mm``: the
    source series' slice spacing when ``volume`` was resampled (triage analyses the
    model's ~1 mm grid); the slice-thickness check reads it instead of the grid's.
    """
    image = as_image(volume)
    if acquisition is None:
        acquisition = getattr(volume, "acquisition", None) or Acquisition()
    raised: dict[str, str] = {}  # flag name -> detail, in the order raised (the first detail wins)
    measured: dict[str, Any] = {}
    for name in tuple(getattr(volume, "qc_flags", ())) + tuple(extra_flags):
        raised.setdefault(name, "from ingest")
    lps = to_lps(image)
    z_spacing_mm = lps.GetSpacing()[2] if source_z_spacing_mm is None else float(source_z_spacing_mm)
    _check_header(acquisition, z_spacing_mm, patient_age_years, thick_slice_mm, raised, measured)
    if brain is not None:
        measured["brain_volume_ml"] = brain.brain_volume_ml
        if not brain.brain_found:
            raised.setdefault("no_brain_found", brain.reason)
        elif getattr(brain, "skull_stripped", False):
            raised.setdefault("skull_stripped_input", brain.reason)
        grid = _binned_grid(lps, brain)
        _check_coverage(grid, brain.brain_found, min_coverage_mm, edge_brain_fraction, raised, measured)
        if brain.brain_found:
            _check_dense_vessels(grid, contrast_range_hu, contrast_min_ml, contrast_margin_mm, raised, measured)
        _check_metal(grid, metal_hu, metal_min_ml, raised, measured)
    return QcReport(flags=_report_flags(raised, severities), measurements=measured)


def _check_header(
    acquisition: Acquisition,
    z_spacing_mm: float,
    patient_age_years: float | None,
    thick_slice_mm: float,
    raised: dict[str, str],
    measured: dict[str, Any],
) -> None:
    """Flags from acquisition facts: thick slices, paediatric patient, contrast agent named in the header."""
    # slice thickness: the header value or the grid's z spacing, whichever is larger
    thickness = acquisition.slice_thickness_mm
    thickness_mm = max(float(thickness), z_spacing_mm) if thickness is not None else z_spacing_mm
    measured["slice_thickness_mm"] = thickness_mm
    if thickness_mm > thick_slice_mm + 1e-6:
        raised.setdefault("thick_slices", f"{thickness_mm:.1f} mm > {thick_slice_mm:.1f} mm")

    age = patient_age_years if patient_age_years is not None else acquisition.patient_age_years
    measured["patient_age_years"] = age
    if age is not None and age < 18:
        raised.setdefault("paediatric_patient", f"age {age:.0f} years")

    if acquisition.contrast_given:
        raised.setdefault("contrast_suspected", "header ContrastBolusAgent is set")


@dataclass(frozen=True)
class _BinnedGrid:
    """The image checks' arrays on a ~1 mm in-plane grid (block means); metal is counted at full resolution."""

    full_hu: np.ndarray  # full resolution, [z, y, x] on the LPS-oriented grid
    hu: np.ndarray
    head: np.ndarray
    intracranial: np.ndarray
    brain: np.ndarray
    factor: int  # in-plane binning factor
    spacing_mm: tuple[float, float, float]  # (x, y, z) of the binned grid
    fine_voxel_ml: float  # one full-resolution voxel

    @property
    def voxel_ml(self) -> float:
        """Volume of one binned voxel in mL."""
        sx, sy, sz = self.spacing_mm
        return sx * sy * sz / 1000.0


def _binned_grid(lps: sitk.Image, brain: BrainResult) -> _BinnedGrid:
    """Bin the HU image and the brain result's masks in-plane to about 1 mm."""
    sx, sy, sz = lps.GetSpacing()
    f = bin_factor((sx, sy))
    full_hu = sitk.GetArrayViewFromImage(lps)

    def mask(image: sitk.Image) -> np.ndarray:
        return bin_axial(sitk.GetArrayFromImage(to_lps(image)), f) >= 0.5

    return _BinnedGrid(
        full_hu=full_hu,
        hu=bin_axial(full_hu, f),
        head=mask(brain.head_mask),
        intracranial=mask(brain.intracranial_mask),
        brain=mask(brain.brain_mask),
        factor=f,
        spacing_mm=(sx * f, sy * f, sz),
        fine_voxel_ml=sx * sy * sz / 1000.0,
    )


def _check_coverage(
    grid: _BinnedGrid,
    brain_found: bool,
    min_coverage_mm: float,
    edge_brain_fraction: float,
    raised: dict[str, str],
    measured: dict[str, Any],
) -> None:
    """Head extent along z, and a brain cut at the first or last slice."""
    sz = grid.spacing_mm[2]
    z_head = np.flatnonzero(grid.head.any(axis=(1, 2)))
    coverage_mm = float((z_head[-1] - z_head[0] + 1) * sz) if z_head.size else 0.0
    measured["head_coverage_mm"] = coverage_mm
    if not brain_found:
        return
    areas = grid.brain.sum(axis=(1, 2)).astype(float)
    peak = areas.max()
    cut = [side for side, a in (("bottom", areas[0]), ("top", areas[-1])) if a >= edge_brain_fraction * peak]
    measured["brain_cut_at"] = cut
    if coverage_mm < min_coverage_mm or "top" in cut:
        why = [f"head covered over {coverage_mm:.0f} mm"] if coverage_mm < min_coverage_mm else []
        why += [f"brain cut at the {side} slice" for side in cut]
        raised.setdefault("incomplete_head_coverage", "; ".join(why))


def _check_dense_vessels(
    grid: _BinnedGrid,
    contrast_range_hu: tuple[float, float],
    contrast_min_ml: float,
    contrast_margin_mm: float,
    raised: dict[str, str],
    measured: dict[str, Any],
) -> None:
    """Contrast: dense (150-400 HU) structures well inside the skull.

    Only on the slices where the cavity is wide (not the skull base or vertex),
    in components that touch no bone or calcification (> 400 HU smoothed).
    """
    sx, sy, _ = grid.spacing_mm
    ic_areas = grid.intracranial.sum(axis=(1, 2))
    wide = ic_areas >= 0.5 * ic_areas.max()
    core = np.zeros_like(grid.intracranial)
    core[wide] = fill_holes_axial(erode_axial(grid.intracranial[wide], contrast_margin_mm, (sx, sy)))  # in-plane: per slice
    smooth = ndimage.gaussian_filter(grid.hu, sigma=[0.0, 0.7 / sy, 0.7 / sx])
    lo, hi = contrast_range_hu
    candidates = core & (smooth >= lo)
    lab, n = ndimage.label(candidates, structure=np.ones((3, 3, 3), bool))
    dense_ml = 0.0
    if n:
        inside = lab > 0  # per-component peak over the candidates only (ndimage.maximum argsorts the whole grid)
        peak_hu = np.full(n, -np.inf)
        np.maximum.at(peak_hu, lab[inside] - 1, smooth[inside])
        sizes = np.bincount(lab[inside], minlength=n + 1)[1:]
        dense_ml = float(sizes[peak_hu <= hi].sum() * grid.voxel_ml)
    measured["dense_intracranial_ml"] = dense_ml
    if dense_ml >= contrast_min_ml:
        raised.setdefault("contrast_suspected", f"{dense_ml:.1f} mL of {lo:.0f}-{hi:.0f} HU inside the skull")


def _check_metal(
    grid: _BinnedGrid, metal_hu: float, metal_min_ml: float, raised: dict[str, str], measured: dict[str, Any]
) -> None:
    """Metal: very dense voxels in or near the cranial cavity (counted at full resolution)."""
    sx, sy, _ = grid.spacing_mm
    f = grid.factor
    metal = np.asarray(grid.full_hu) >= metal_hu
    if not metal.any():  # the usual case: nothing to place
        measured["metal_ml"] = 0.0
        return
    near = dilate_axial(grid.intracranial, 15.0, (sx, sy)) if grid.intracranial.any() else grid.head
    metal_fraction = bin_axial(metal, f)
    metal_ml = float(metal_fraction[near].sum() * f * f * grid.fine_voxel_ml)
    measured["metal_ml"] = metal_ml
    if metal_ml >= metal_min_ml:
        raised.setdefault("streak_or_metal_artefact", f"{metal_ml:.2f} mL above {metal_hu:.0f} HU near the brain")


def _report_flags(raised: Mapping[str, str], severities: Mapping[str, str] | None) -> tuple[QcFlag, ...]:
    """The raised flags with their severity (the table's, or an override) and description."""
    severity_of = {k: v.severity for k, v in QC_FLAGS.items()}
    severity_of.update(severities or {})
    flags = []
    for name, detail in raised.items():
        spec = QC_FLAGS.get(name)
        severity = severity_of.get(name, "warning")
        if severity not in SEVERITIES:
            raise ValueError(f"QC severity {severity!r} for {name} is not one of {', '.join(SEVERITIES)}")
        description = spec.description if spec else f"Flag raised by ingest: {name}."
        flags.append(QcFlag(name=name, severity=severity, description=description, detail=detail))
    return tuple(flags)
