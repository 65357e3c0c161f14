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


def header_age_years(header: Mapping[str, Any]) -> float | None:
    """Patient age in years from the acquisition header, or None."""
    for key in ("PatientAgeYears", "PatientAge_years", "patient_age_years"):
        value = header.get(key)
        if value not in (None, ""):
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def _header_contrast(header: Mapping[str, Any]) -> str:
    value = header.get("ContrastBolusAgent") or header.get("contrast_agent") or ""
    text = str(value).strip()
    return "" if text.upper() in ("", "NONE", "NO", "N", "0") else text


def assess_qc(
    volume: Any,
    brain: BrainResult | None = None,
    *,
    extra_flags: Iterable[str] = (),
    patient_age_years: float | None = None,
    header: Mapping[str, Any] | None = None,
    thick_slice_mm: float = 5.0,
    min_coverage_mm: float = 100.0,
    edge_brain_fraction: float = 0.25,
    contrast_range_hu: tuple[float, float] = (150.0, 400.0),
    contrast_min_ml: float = 1.0,
    contrast_margin_mm: float = 8.0,
    metal_hu: float = 2500.0,
    metal_min_ml: float = 0.05,
    severities: Mapping[str, str] | None = None,
) -> QcReport:
    """The QC flags of a volume (a :class:`ictus.imaging.volume.Volume` or a HU image) and its brain result.

    ``header`` defaults to ``volume.header`` (keys ``SliceThickness``,
    ``ContrastBolusAgent``, ``PatientAgeYears``); ``extra_flags`` adds flags
    from elsewhere (series selection); ``severities`` overrides the table.
    """
    image = as_image(volume)
    header = dict(getattr(volume, "header", {}) or {}) if header is None else dict(header)
    severity_of = {k: v.severity for k, v in QC_FLAGS.items()}
    severity_of.update(severities or {})
    raised: dict[str, str] = {}
    measured: dict[str, Any] = {}

    def raise_flag(name: str, detail: str = "") -> None:
        if name not in raised:
            raised[name] = detail

    for name in tuple(getattr(volume, "qc_flags", ())) + tuple(extra_flags):
        raise_flag(name, "from ingest")

    # slice thickness: the header value or the grid's z spacing, whichever is larger
    lps = to_lps(image)
    sx, sy, sz = lps.GetSpacing()
    thickness = header.get("SliceThickness")
    try:
        thickness_mm = max(float(thickness), sz) if thickness not in (None, "") else sz
    except (TypeError, ValueError):
        thickness_mm = sz
    measured["slice_thickness_mm"] = thickness_mm
    if thickness_mm > thick_slice_mm + 1e-6:
        raise_flag("thick_slices", f"{thickness_mm:.1f} mm > {thick_slice_mm:.1f} mm")

    age = patient_age_years if patient_age_years is not None else header_age_years(header)
    measured["patient_age_years"] = age
    if age is not None and age < 18:
        raise_flag("paediatric_patient", f"age {age:.0f} years")

    agent = _header_contrast(header)
    if agent:
        raise_flag("contrast_suspected", "header ContrastBolusAgent is set")

    if brain is not None:
        measured["brain_volume_ml"] = brain.brain_volume_ml
        if not brain.brain_found:
            raise_flag("no_brain_found", brain.reason)
        elif getattr(brain, "skull_stripped", False):
            raise_flag("skull_stripped_input", brain.reason)
        # everything below runs on a ~1 mm in-plane grid (block means); metal is counted at full resolution
        f = bin_factor((sx, sy))
        full_hu = sitk.GetArrayViewFromImage(lps)
        hu = bin_axial(full_hu, f)
        head = bin_axial(sitk.GetArrayFromImage(to_lps(brain.head_mask)), f) >= 0.5
        intracranial = bin_axial(sitk.GetArrayFromImage(to_lps(brain.intracranial_mask)), f) >= 0.5
        brain_arr = bin_axial(sitk.GetArrayFromImage(to_lps(brain.brain_mask)), f) >= 0.5
        fine_voxel_ml = sx * sy * sz / 1000.0
        sx, sy = sx * f, sy * f
        voxel_ml = sx * sy * sz / 1000.0

        # coverage: head extent along z, and brain cut at the first or last slice
        z_head = np.flatnonzero(head.any(axis=(1, 2)))
        coverage_mm = float((z_head[-1] - z_head[0] + 1) * sz) if z_head.size else 0.0
        measured["head_coverage_mm"] = coverage_mm
        if brain.brain_found:
            areas = brain_arr.sum(axis=(1, 2)).astype(float)
            peak = areas.max()
            cut = [side for side, a in (("bottom", areas[0]), ("top", areas[-1])) if a >= edge_brain_fraction * peak]
            measured["brain_cut_at"] = cut
            if coverage_mm < min_coverage_mm or "top" in cut:
                why = [f"head covered over {coverage_mm:.0f} mm"] if coverage_mm < min_coverage_mm else []
                why += [f"brain cut at the {side} slice" for side in cut]
                raise_flag("incomplete_head_coverage", "; ".join(why))

            # contrast: dense (150-400 HU) structures well inside the skull, on the slices where the
            # cavity is wide (not the skull base or vertex), in components that touch no bone or
            # calcification (> 400 HU smoothed)
            ic_areas = intracranial.sum(axis=(1, 2))
            wide = ic_areas >= 0.5 * ic_areas.max()
            core = fill_holes_axial(erode_axial(intracranial, contrast_margin_mm, (sx, sy)))
            core &= wide[:, None, None]
            smooth = ndimage.gaussian_filter(hu, sigma=[0.0, 0.7 / sy, 0.7 / sx])
            lo, hi = contrast_range_hu
            candidates = core & (smooth >= lo)
            lab, n = ndimage.label(candidates, structure=np.ones((3, 3, 3), bool))
            dense_ml = 0.0
            if n:
                peak_hu = ndimage.maximum(smooth, lab, index=np.arange(1, n + 1))
                sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
                dense_ml = float(sizes[peak_hu <= hi].sum() * voxel_ml)
            measured["dense_intracranial_ml"] = dense_ml
            if dense_ml >= contrast_min_ml:
                raise_flag("contrast_suspected", f"{dense_ml:.1f} mL of {lo:.0f}-{hi:.0f} HU inside the skull")

        # metal: very dense voxels in or near the cranial cavity
        near = dilate_axial(intracranial, 15.0, (sx, sy)) if intracranial.any() else head
        metal_fraction = bin_axial(np.asarray(full_hu) >= metal_hu, f)
        metal_ml = float(metal_fraction[near].sum() * f * f * fine_voxel_ml)
        measured["metal_ml"] = metal_ml
        if metal_ml >= metal_min_ml:
            raise_flag("streak_or_metal_artefact", f"{metal_ml:.2f} mL above {metal_hu:.0f} HU near the brain")

    flags = []
    for name, detail in raised.items():
        spec = QC_FLAGS.get(name)
        severity = severity_of.get(name, "warning")
        if severity not in SEVERITIES:
            raise ValueError(f"QC severity {severity!r} for {name} is not one of {', '.join(SEVERITIES)}")
        description = spec.description if spec else f"Flag raised by ingest: {name}."
        flags.append(QcFlag(name=name, severity=severity, description=description, detail=detail))
    return QcReport(flags=tuple(flags), measurements=measured)
