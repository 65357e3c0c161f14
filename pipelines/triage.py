"""The triage pipeline: one function that every entry point calls.

``triage(path)`` runs the named stages in order and returns a
:class:`TriageResult`; it never prints or exits. The CLI (``ictus triage``),
the batch runner, the DICOM listener and the notebook API all call it.

Stages (each timed into ``timings_s``):
  scan -> select -> build_volume -> brain -> segment -> measure -> midline
  -> qc -> findings -> (writers, when ``out_dir`` is given)
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from imaging.volume import Volume
from models.types import Segmentation

log = logging.getLogger(__name__)

ALL_OUTPUTS = ("json", "seg", "sr", "sc", "report")


@dataclass(frozen=True)
class TriageOptions:
    """Everything that changes what triage does (plain data, picklable for workers)."""

    model: str = "blast-ct"  # a card id ("blast-ct", "blast-ct:v1") or a path to a card file/folder
    models_dir: str | None = None  # overrides $ICTUS_MODELS_DIR and the user cache
    fast: bool = False  # one member instead of the ensemble
    members: str | None = None  # explicit member selection ("1,2"), overrides fast
    threads: int | None = None  # onnxruntime intra-op threads (None: all cores)
    providers: tuple[str, ...] | None = None  # onnxruntime providers (None: CUDA if available, else CPU)
    series_uid: str | None = None  # force a series instead of the automatic choice
    outputs: tuple[str, ...] = ALL_OUTPUTS
    lang: str = "en"
    min_lesion_ml: float | None = None  # None: the default in imaging.measure
    priority_rules: str | None = None  # path to a rules file (None: pipelines/priority_rules.json)
    atlas_dir: str | None = None  # BLAST-CT localisation files (None: $ICTUS_ATLAS_DIR or models dir)


@dataclass(frozen=True)
class TriageResult:
    """What triage produced, for writers, the CLI and notebooks.

    - ``volume``: the HU volume that was analysed (LPS, QC flags inside).
    - ``segmentation``: probabilities/labels/agreement on the volume's grid (None when
      the study was indeterminate before the model ran, e.g. no brain).
    - ``findings``: the ``findings.json`` dictionary (schema in pipelines/schemas).
    - ``choice``: every series with its score or rejection reason.
    - ``brain``, ``midline``, ``measurements``: the intermediate measurement objects.
    - ``outputs``: paths written, by output kind.
    """

    volume: Volume
    segmentation: Segmentation | None
    findings: Mapping[str, Any]
    choice: Any = None
    card: Any = None
    brain: Any = None
    midline: Any = None
    measurements: Any = None
    outputs: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def priority(self) -> str:
        return str(self.findings.get("priority"))

    @property
    def qc_flags(self) -> tuple[str, ...]:
        return tuple(self.findings.get("qc", {}).get("flags", ()))

    @property
    def provenance(self) -> Mapping[str, Any]:
        return self.findings.get("provenance", {})


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
