"""The notebook API: the hospital's pipeline, from Python.

>>> from ictus.pipelines.api import triage, plot_montage
>>> result = triage("study/", fast=True)          # same code path as `ictus triage`
>>> result.findings.ich.present, result.qc_flags
>>> plot_montage(result)                           # axial slices with overlays

- :func:`triage` / :class:`TriageResult` / :class:`TriageEngine` (from
  :mod:`ictus.pipelines.triage`): the result holds the analysed HU ``volume`` (the
  source resampled onto the model's 1 mm grid), the
  ``segmentation`` (per-class ``probabilities`` float16 [C, z, y, x] and
  ``labels`` on the volume's grid), the typed ``findings`` record
  (:class:`ictus.pipelines.findings.record.Findings`; ``findings.to_dict()`` is findings.json),
  ``qc_flags`` and ``provenance``. Nothing here prints or exits; errors are
  :class:`ictus.imaging.errors.IctusError` subclasses. Runs inside
  :func:`ictus.pipelines.phi.phi_guard` (no patient identifier in logs, warnings
  or error messages). ``result.outputs`` lists what was written;
  ``result.outputs.failed`` what was not, with the reason.
- :func:`triage_volume`: the same stages on a Volume you already have (NIfTI).
- :func:`load_volume_and_mask`: a NIfTI or DICOM volume and a NIfTI mask on its grid.
- :func:`plot_montage`, :func:`plot_midline`, :func:`plot_roc`,
  :func:`plot_bland_altman`: matplotlib figures.
- :func:`read_dataset` and :func:`evaluate_dataset`: evaluation on labelled data
  (PhysioNet CT-ICH, CQ500, RSNA 2019 or phantoms), as ``ictus evaluate``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ictus.imaging.volume import Volume
from ictus.pipelines.research.evaluate import EvaluationResult, evaluate_dataset, summarise
from ictus.pipelines.research.datasets import LabelledCase, load_volume_and_mask, read_dataset, read_nifti_volume
from ictus.pipelines.research.plots import plot_bland_altman, plot_midline, plot_montage, plot_roc
from ictus.pipelines import phi
from ictus.pipelines import triage as _triage_module
from ictus.pipelines.triage import TriageEngine, TriageOptions, TriageResult


def triage(path: str | Path, out_dir: str | Path | None = None, **options: Any) -> TriageResult:
    """Triage one study, exactly as :func:`ictus.pipelines.triage.triage` (``options`` are the fields of
    :class:`TriageOptions`), inside :func:`ictus.pipelines.phi.phi_guard`: Python warnings go through
    logging and the study's patient name, IDs, birth date, accession number and institution are
    redacted from every log record, warning and error message (the DICOM outputs keep them)."""
    with phi.phi_guard():
        try:
            return _triage_module.triage(path, out_dir, **options)
        except Exception as exc:
            exc.args = tuple(phi.redact(a) if isinstance(a, str) else a for a in exc.args)
            raise


def triage_volume(volume: Volume | str | Path, out_dir: str | Path | None = None, **options: Any) -> TriageResult:
    """Triage a :class:`Volume` (or a NIfTI file) with the stages ``triage`` runs after
    reading DICOM. ``options`` are the fields of :class:`TriageOptions`."""
    if not isinstance(volume, Volume):
        volume = read_nifti_volume(volume)
    with phi.phi_guard():
        return TriageEngine(TriageOptions(**options)).run_volume(volume, out_dir)


__all__ = [
    "EvaluationResult", "LabelledCase", "TriageEngine", "TriageOptions", "TriageResult", "Volume",
    "evaluate_dataset", "load_volume_and_mask", "plot_bland_altman", "plot_midline", "plot_montage", "plot_roc",
    "read_dataset", "summarise", "triage", "triage_volume",
]
