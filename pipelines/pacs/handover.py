"""What the PACS services share: which triage engine runs, and the results handed back.

The listener (:mod:`ictus.pipelines.pacs.listener`), the Orthanc poller
(:mod:`ictus.pipelines.pacs.orthanc`) and the batch runner (:mod:`ictus.pipelines.pacs.batch`)
all build their engine with :func:`load_engine_factory` and send the same DICOM results,
listed by :func:`prepare_results`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Mapping

from ictus.imaging.errors import InvalidInputError
from ictus.pipelines.pacs.sender import encapsulate_pdf, result_files, stabilise_uids
from ictus.pipelines.triage import TriageEngine, TriageOptions

EngineFactory = Callable[[TriageOptions], Any]


def load_engine_factory(spec: str | None) -> EngineFactory:
    """``"module:callable"`` -> that callable; None -> :class:`TriageEngine`."""
    if not spec:
        return TriageEngine
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InvalidInputError(f"engine {spec!r} cannot be imported ({exc}); use 'module:callable'") from exc


def prepare_results(outputs: Mapping[str, Any], study_uid: str, out_dir: Path,
                    send_report: bool = True) -> list[tuple[str, str, str]]:
    """(kind, path, SOP Instance UID) of the DICOM results to send, UIDs made stable."""
    files = result_files(outputs)
    stable = stabilise_uids(files, study_uid) if files else []
    results = [(kind, str(path), uid) for kind, path, uid in stable]
    pdfs = [p for p in outputs.get("report", ()) or () if str(p).endswith(".pdf")]
    if send_report and pdfs and stable:
        path, uid = encapsulate_pdf(pdfs[0], stable[0][1], out_dir / "report-pdf.dcm", study_uid)
        results.append(("pdf", str(path), uid))
    return results
