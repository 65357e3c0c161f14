"""The triage pipeline: one function that every entry point calls.

``triage(path)`` runs the named stages in order and returns a
:class:`TriageResult`; it never prints or exits. The CLI (``ictus triage``),
the batch runner, the DICOM listener and the notebook API all call it.

Stages (each timed into ``timings_s``):
  scan -> select -> volume -> grid -> brain -> qc -> anatomy -> segment
  -> midline -> measure -> ischaemia -> vessels -> findings
  -> (writers, when ``out_dir`` is given)

``grid`` resamples the source volume once onto the model's grid (the card's
spacing, 1 mm for BLAST-CT, axes reoriented): every later stage runs there, so
their cost does not grow with the source resolution, and the model reads the
same values it would read from the source. The SEG writer maps the labels back
onto the source frames.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from ictus.imaging.brain import BrainResult
from ictus.imaging.measure import Measurements
from ictus.imaging.midline import MidlineResult
from ictus.imaging.series import SeriesChoice
from ictus.imaging.volume import Volume
from ictus.models.registry import DEFAULT_MODEL, ModelCard
from ictus.models.types import Segmentation
from ictus.pipelines.findings.build import build_findings
from ictus.pipelines.findings.priority import Priority, load_rules
from ictus.pipelines.findings.record import Findings, Provenance
from ictus.pipelines.writers import ALL_OUTPUTS

if TYPE_CHECKING:  # types only: the stroke analyses are imported when they run
    import numpy as np

    from ictus.imaging.anatomy import Anatomy
    from ictus.imaging.ischaemia import IschaemiaResult
    from ictus.imaging.vessels import DenseArteryResult

log = logging.getLogger(__name__)

LOBAR_ATLAS_CARD = "blast-ct-atlas"
#: Registered ventricles are dilated by this much before blood in them is counted as IVH.
IVH_VENTRICLE_DILATION_MM = 2.0


@dataclass(frozen=True)
class TriageOptions:
    """Everything that changes what triage does (plain data, picklable for workers)."""

    model: str = DEFAULT_MODEL  # a card id ("blast-ct", "blast-ct:v1") or a path to a card file/folder
    models_dir: str | None = None  # overrides $ICTUS_MODELS_DIR and the user cache
    fast: bool = False  # one member instead of the ensemble
    members: str | None = None  # explicit member selection ("1,2"), overrides fast
    threads: int | None = None  # inference threads (None: all cores)
    backend: str = "auto"  # "auto", "openvino" or "onnxruntime" (see ictus.models.backends)
    providers: tuple[str, ...] | None = None  # onnxruntime providers (None: CUDA if available, else CPU)
    series_uid: str | None = None  # force a series instead of the automatic choice
    outputs: tuple[str, ...] = ALL_OUTPUTS
    lang: str = "en"
    min_lesion_ml: float | None = None  # None: the default in ictus.imaging.measure
    priority_rules: str | None = None  # path to a rules file (None: pipelines/findings/priority_rules.json)
    stroke: bool = True  # template anatomy, ASPECTS, dense artery and NWU (needs `ictus models pull stroke-atlas`)
    ischaemia_rules: str | None = None  # path to ischaemia rules (None: imaging/ischaemia_rules.json)


@dataclass(frozen=True)
class TriageResult:
    """What triage produced, for writers, the CLI and notebooks.

    - ``volume``: the HU volume that was analysed (LPS, QC flags inside): the source volume
      resampled onto the model's grid (1 mm for BLAST-CT; see the module docstring).
    - ``segmentation``: probabilities/labels/agreement on the volume's grid (None when
      the study was indeterminate before the model ran, e.g. no brain).
    - ``findings``: the typed :class:`ictus.pipelines.findings.record.Findings`
      (``findings.to_dict()`` is findings.json; after the writers ran it holds their ``outputs`` block).
    - ``choice``: every series with its score or rejection reason.
    - ``brain``, ``midline``, ``measurements``: the intermediate measurement objects.
    - ``anatomy``, ``ischaemia``, ``dense_artery``: the registered template and the stroke analyses.
    - ``outputs``: paths written, by output kind.
    """

    volume: Volume
    segmentation: Segmentation | None
    findings: Findings
    choice: SeriesChoice | None = None
    card: ModelCard | None = None
    brain: BrainResult | None = None
    midline: MidlineResult | None = None
    measurements: Measurements | None = None
    outputs: Mapping[str, Sequence[str]] = field(default_factory=dict)
    anatomy: "Anatomy | None" = None  # template registration, None when not run
    ischaemia: "IschaemiaResult | None" = None
    dense_artery: "DenseArteryResult | None" = None

    @property
    def priority(self) -> Priority:
        """The triage priority."""
        return self.findings.priority

    @property
    def qc_flags(self) -> tuple[str, ...]:
        """The QC flag names (the writers' flags included once they ran)."""
        return self.findings.qc_flags

    @property
    def provenance(self) -> Provenance:
        """The provenance (versions, models, series used)."""
        return self.findings.provenance

    def findings_dict(self) -> dict[str, Any]:
        """``findings.json`` as a dict (what the writers wrote, ``outputs`` block included)."""
        return self.findings.to_dict()


class _Timer:
    """Collects wall time per named stage."""

    def __init__(self) -> None:
        self.timings_s: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings_s[name] = round(time.perf_counter() - t0, 3)
            log.info("stage %s took %.2f s", name, self.timings_s[name])


class TriageEngine:
    """Triage with a model loaded once (for batch workers and the listener).

    ``TriageEngine(options).run(path, out_dir)`` is what :func:`triage` does;
    keeping the engine keeps the onnxruntime sessions warm between studies.
    """

    def __init__(self, options: TriageOptions | None = None, **overrides: Any) -> None:
        import dataclasses

        base = options or TriageOptions()
        self.options = dataclasses.replace(base, **overrides) if overrides else base
        self._card: ModelCard | None = None
        self._members: list[Any] | None = None
        self._ensemble = None

    # -- model --------------------------------------------------------------
    @property
    def card(self) -> ModelCard:
        """The model card (loaded on first use)."""
        if self._card is None:
            from ictus.models.registry import get_card

            self._card = get_card(self.options.model)
        return self._card

    def ensemble(self):
        """The onnxruntime ensemble (sessions created lazily, once)."""
        if self._ensemble is None:
            from ictus.models.runtime import Ensemble
            from ictus.models.weights import resolve_members

            opts = self.options
            selection = opts.members or ("fast" if opts.fast else None)
            self._members = resolve_members(self.card, opts.models_dir, selection)
            self._ensemble = Ensemble.from_card(  # class names, geometry, spacing, window from the card
                self.card, [m.onnx_path for m in self._members], threads=opts.threads, providers=opts.providers,
                backend=opts.backend,
            )
        return self._ensemble

    def template_atlas(self):
        """The stroke template atlas (template, ASPECTS regions, lobar atlas), loaded once.

        Raises :class:`ictus.imaging.errors.ModelError` (exit 5) when the assets are not installed."""
        from ictus.imaging.stroke_atlas import load_template_atlas
        from ictus.models.assets import resolve_asset_dir

        stroke_dir = resolve_asset_dir("stroke-atlas", self.options.models_dir)
        lobar_dir = resolve_asset_dir(LOBAR_ATLAS_CARD, self.options.models_dir)
        return load_template_atlas(str(stroke_dir), str(lobar_dir))

    # -- the pipeline -------------------------------------------------------
    def run(self, path: str | Path, out_dir: str | Path | None = None) -> TriageResult:
        """Triage the study at ``path``; write outputs into ``out_dir`` when given."""
        opts = self.options
        timer = _Timer()
        load_rules(opts.priority_rules)  # a bad rules file fails before any work
        volume, choice = load_volume(path, opts.series_uid, timer=timer)
        analysed, atlas, source_z_mm = self._prepare(volume, timer)
        del volume  # the source-resolution volume is not needed past here (memory)
        return self._run_analysis(analysed, out_dir, choice=choice, timer=timer, atlas=atlas, source_z_mm=source_z_mm)

    def analysis_volume(self, volume: Volume) -> Volume:
        """``volume`` on the model's grid (the card's spacing, about 1 mm, axes reoriented to
        LPS order), where every stage after ingest runs: the model reads the same values
        there as from the source, and brain, QC, anatomy, midline and measurements cost the
        same whatever the source resolution (a 0.625 mm study has ~8x the voxels)."""
        from ictus.models.preprocess import model_grid_volume

        spacing_mm = tuple(float(s) for s in self.card.preprocessing.spacing_mm)
        return model_grid_volume(volume, spacing_mm)  # type: ignore[arg-type]

    def _prepare(self, volume: Volume, timer: _Timer) -> tuple[Volume, Any, float]:
        """(the analysed volume, the stroke atlas or None, the source's slice spacing in mm).
        Missing or corrupt weights or stroke assets fail here, before any analysis."""
        self.ensemble()
        atlas = self.template_atlas() if self.options.stroke else None
        with timer.stage("grid"):
            analysed = self.analysis_volume(volume)
        return analysed, atlas, volume.spacing_mm[2]

    def run_volume(
        self, volume: Volume, out_dir: str | Path | None = None, *, choice: SeriesChoice | None = None,
        timer: _Timer | None = None,
    ) -> TriageResult:
        """Triage an already built HU volume (e.g. read from NIfTI by the notebook API or
        ``ictus evaluate``): the stages after ``load_volume``, exactly as :meth:`run`
        (``result.volume`` is the analysed volume, on the model's grid)."""
        timer = timer or _Timer()
        analysed, atlas, source_z_mm = self._prepare(volume, timer)
        return self._run_analysis(analysed, out_dir, choice=choice, timer=timer, atlas=atlas, source_z_mm=source_z_mm)

    def _run_analysis(
        self, volume: Volume, out_dir: str | Path | None, *, choice: SeriesChoice | None, timer: _Timer,
        atlas: Any, source_z_mm: float,
    ) -> TriageResult:
        """Every stage after ingest, on the analysed volume (the model's grid)."""
        from ictus.imaging.brain import segment_brain
        from ictus.imaging.midline import measure_midline_shift
        from ictus.imaging.qc import assess_qc

        opts = self.options
        rules = load_rules(opts.priority_rules)
        log.info("analysed volume %s at %s mm, flags %s", volume.size, volume.spacing_mm, volume.qc_flags)
        with timer.stage("brain"):
            brain = segment_brain(volume)
        with timer.stage("qc"):
            qc = assess_qc(volume, brain, extra_flags=volume.qc_flags, acquisition=volume.acquisition,
                           source_z_spacing_mm=source_z_mm)

        segmentation = measurements = midline = anatomy = ischaemia = dense = None
        stroke_reason = "stroke analysis switched off" if not opts.stroke else "not computed"
        ivh_moved_ml: float | None = None
        run_model = brain.brain_found and not qc.indeterminate
        if run_model:
            if atlas is not None:
                from ictus.imaging.anatomy import register_template

                with timer.stage("anatomy"):
                    anatomy = register_template(volume, brain.brain_mask, atlas,
                                                intracranial_mask=brain.intracranial_mask)
                stroke_reason = "ok" if anatomy.registered else (
                    f"registration_failed: template overlap {anatomy.quality_dice:.2f}")
            with timer.stage("segment"):
                segmentation = self.ensemble().segment(volume, fast=opts.fast and not opts.members)
            with timer.stage("midline"):
                midline = measure_midline_shift(volume, brain)
            with timer.stage("measure"):
                measurements, ivh_moved_ml = self._measure(volume, segmentation, midline, anatomy)
            if anatomy is not None and anatomy.registered:
                plane = midline.ideal_plane if midline is not None else None
                blood = _blood_on_grid(measurements, segmentation.class_names, volume, anatomy,
                                       self.card.class_names_by_role("blood"))
                from ictus.imaging.ischaemia import assess_ischaemia, load_ischaemia_rules
                from ictus.imaging.vessels import detect_dense_artery

                with timer.stage("ischaemia"):
                    ischaemia = assess_ischaemia(anatomy, plane, load_ischaemia_rules(opts.ischaemia_rules),
                                                 exclude_mask=blood)
                with timer.stage("vessels"):
                    dense = detect_dense_artery(anatomy, plane, exclude_mask=blood)
        else:
            log.info("model not run: brain found=%s, qc verdict=%s", brain.brain_found, qc.verdict)
            stroke_reason = "QC: study indeterminate"

        with timer.stage("findings"):
            findings = build_findings(
                volume,
                segmentation,
                measurements=measurements,
                brain=brain,
                midline=midline,
                qc=qc,
                card_info=self.card,
                timings_s=timer.timings_s,
                rules=rules,
                anatomy=anatomy,
                ischaemia=ischaemia,
                dense_artery=dense,
                stroke_reason=stroke_reason,
                age_years=volume.acquisition.patient_age_years,
                ivh_relabelled_ml=ivh_moved_ml,
            )
        result = TriageResult(
            volume=volume, segmentation=segmentation, findings=findings, choice=choice, card=self.card,
            brain=brain, midline=midline, measurements=measurements, anatomy=anatomy, ischaemia=ischaemia,
            dense_artery=dense,
        )
        if out_dir is not None:
            import dataclasses

            from ictus.pipelines.writers import findings_with_outputs, write_outputs

            t0 = time.perf_counter()
            written = write_outputs(result, out_dir, outputs=opts.outputs, lang=opts.lang)
            log.info("outputs written in %.2f s", time.perf_counter() - t0)  # after findings.json: not in it
            result = dataclasses.replace(result, outputs=written,
                                         findings=findings_with_outputs(findings, written, out_dir))
        return result


    def _measure(self, volume: Volume, segmentation: Segmentation, midline: MidlineResult | None,
                 anatomy: "Anatomy | None") -> tuple[Measurements, float | None]:
        """Lesion measurements; blood inside the registered ventricles is counted as IVH first."""
        from ictus.imaging.measure import measure_labels
        from ictus.pipelines.findings.stroke import relabel_ivh_by_location

        labels, moved_ml = segmentation.labels, None
        registered = anatomy is not None and anatomy.registered
        if anatomy is not None and registered and anatomy.ventricles is not None:
            ventricles = anatomy.mask_on(anatomy.ventricles, volume.image, dilate_mm=IVH_VENTRICLE_DILATION_MM)
            labels, moved_ml = relabel_ivh_by_location(labels, segmentation.class_names, ventricles,
                                                       volume.voxel_volume_ml,
                                                       blood_classes=self.card.class_names_by_role("blood"))
        if anatomy is None:
            region_status = "region unavailable: stroke analysis switched off"
        elif not registered:
            region_status = f"region unavailable: template registration overlap {anatomy.quality_dice:.2f}"
        else:
            region_status = "ok"
        kwargs: dict[str, Any] = {}
        if self.options.min_lesion_ml is not None:
            kwargs["min_lesion_ml"] = self.options.min_lesion_ml
        measurements = measure_labels(
            labels, volume, segmentation.class_names, probabilities=segmentation.probabilities,
            agreement=segmentation.agreement, plane=midline.ideal_plane if midline is not None else None,
            atlas=anatomy if registered else None, region_status=region_status,
            blood_classes=self.card.class_names_by_role("blood"),
            oedema_classes=self.card.class_names_by_role("oedema"), **kwargs,
        )
        return measurements, moved_ml


def _blood_on_grid(measurements: Measurements, class_names: Sequence[str], volume: Volume, anatomy: "Anatomy",
                   blood_classes: Sequence[str]) -> "np.ndarray | None":
    """The kept blood lesions (volume grid) as a bool mask on the anatomy's analysis grid."""
    import numpy as np
    import SimpleITK as sitk

    kept = measurements.kept_labels
    blood_values = [class_names.index(c) for c in blood_classes if c in class_names]
    if kept is None or not blood_values or not np.isin(kept, blood_values).any():
        return None
    mask = sitk.GetImageFromArray(np.isin(kept, blood_values).astype(np.uint8))
    mask.CopyInformation(volume.image)
    out = sitk.Resample(mask, anatomy.grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out).astype(bool)


def load_volume(path: str | Path, series_uid: str | None = None, *, timer: _Timer | None = None
                ) -> tuple[Volume, SeriesChoice]:
    """Scan ``path``, choose the series (or take ``series_uid``) and build its HU volume
    (:func:`ictus.imaging.ingest.load_volume`, each file parsed once), timing the
    "scan", "select" and "volume" stages.

    Returns the volume (scan flags such as ``stale_dicomdir`` added to its QC
    flags) and the :class:`ictus.imaging.series.SeriesChoice`.
    """
    from ictus.imaging import ingest

    return ingest.load_volume(path, series_uid, stage=(timer or _Timer()).stage)


def triage(path: str | Path, out_dir: str | Path | None = None, **options: Any) -> TriageResult:
    """Triage one study (folder, DICOMDIR or file) and return a :class:`TriageResult`.

    ``options`` are the fields of :class:`TriageOptions` (model, models_dir, fast,
    threads, outputs, lang, ...). With ``out_dir``, the outputs (findings.json,
    SEG, SR, key images, report) are written there atomically.
    """
    return TriageEngine(TriageOptions(**options)).run(path, out_dir)
