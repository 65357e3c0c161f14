"""Writers of the outputs a radiologist opens: findings.json, DICOM SEG, SR, key images, report.

:func:`write_outputs` is the one entry point. Everything is built inside a
staging folder in ``out_dir`` and moved into place only when every requested
output was made, so a failure leaves no new or half-written output behind.

Layout of ``out_dir``:

- ``findings.json`` (``json``)
- ``seg.dcm``: DICOM Segmentation on the source series (``seg``; absent when
  no lesion class was found)
- ``sr.dcm``: DICOM Comprehensive 3D SR, TID 1500 (``sr``)
- ``keyimages/KI0001.dcm ...``: DICOM Secondary Capture key images (``sc``)
- ``report.html`` and ``report.pdf`` (``report``; the PDF where reportlab and a
  DejaVu font are available)
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from imaging.errors import OutputError
from pipelines.writers import atomic, common

log = logging.getLogger(__name__)

ALL_OUTPUTS = ("json", "seg", "sr", "sc", "report")
FINDINGS_FILE = "findings.json"
SEG_FILE = "seg.dcm"
SR_FILE = "sr.dcm"
KEY_IMAGES_DIR = "keyimages"
REPORT_HTML = "report.html"
REPORT_PDF = "report.pdf"


def _save_dicom(ds: Any, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)


def write_outputs(
    result: Any,
    out_dir: str | os.PathLike,
    *,
    outputs: Sequence[str] = ALL_OUTPUTS,
    lang: str = "en",
) -> dict[str, list[str]]:
    """Write the requested outputs of a triage result into ``out_dir``.

    ``outputs`` is any of ``json, seg, sr, sc, report``; ``lang`` is ``en``,
    ``ru`` or ``kk`` (report and key images). Returns the written paths by
    output kind. Raises :class:`OutputError` (nothing new written) on failure.
    """
    wanted = tuple(dict.fromkeys(str(o).strip().lower() for o in outputs if str(o).strip()))
    unknown = [o for o in wanted if o not in ALL_OUTPUTS]
    if unknown:
        raise OutputError(f"unknown output(s) {', '.join(unknown)}; choose from {','.join(ALL_OUTPUTS)}")
    common.load_messages(lang)  # an unknown language fails before anything is built
    out = Path(out_dir)
    timings: dict[str, float] = {}
    written: dict[str, list[str]] = {}
    t_all = time.perf_counter()
    try:
        _write_all(result, out, wanted, lang, timings, written)
    except OSError as exc:
        raise OutputError(f"outputs could not be written to {out} ({exc.strerror or exc}); check the folder and free space") from exc
    log.info(
        "outputs written in %.2f s (%s)", time.perf_counter() - t_all,
        ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
    )
    return written


def _write_all(result: Any, out: Path, wanted: Sequence[str], lang: str, timings: dict[str, float],
               written: dict[str, list[str]]) -> None:
    """Build every output in a staging folder, then move them into ``out``."""
    with atomic.staging_dir(out) as tmp:
        staged: list[tuple[str, Path, Path]] = []  # (kind, staged path, final path)
        sources: list[Any] = []
        if any(k in wanted for k in ("seg", "sr", "sc")):
            sources = common.read_source_datasets(result.volume)

        if "json" in wanted:
            from pipelines.writers.json_out import write_findings_json

            t0 = time.perf_counter()
            write_findings_json(result.findings, tmp / FINDINGS_FILE)
            staged.append(("json", tmp / FINDINGS_FILE, out / FINDINGS_FILE))
            timings["json"] = time.perf_counter() - t0

        seg_obj, segments = None, []
        if "seg" in wanted:
            from pipelines.writers.seg import build_seg

            t0 = time.perf_counter()
            seg_obj, segments = build_seg(result, sources)
            if seg_obj is not None:
                _save_dicom(seg_obj, tmp / SEG_FILE)
                staged.append(("seg", tmp / SEG_FILE, out / SEG_FILE))
            timings["seg"] = time.perf_counter() - t0

        if "sr" in wanted:
            from pipelines.writers.sr import build_sr

            t0 = time.perf_counter()
            _save_dicom(build_sr(result, sources, seg_obj, segments), tmp / SR_FILE)
            staged.append(("sr", tmp / SR_FILE, out / SR_FILE))
            timings["sr"] = time.perf_counter() - t0

        images: list[Any] = []
        pngs: list[bytes] = []
        if "sc" in wanted or "report" in wanted:
            from pipelines.writers.keyimages import render_key_images

            t0 = time.perf_counter()
            images = render_key_images(result, lang)
            timings["render"] = time.perf_counter() - t0

        if "sc" in wanted:
            from pipelines.writers.keyimages import build_sc_datasets

            t0 = time.perf_counter()
            ki_dir = tmp / KEY_IMAGES_DIR
            ki_dir.mkdir()
            for n, sc in enumerate(build_sc_datasets(images, sources[0]), start=1):
                _save_dicom(sc, ki_dir / f"KI{n:04d}.dcm")
            staged.append(("sc", ki_dir, out / KEY_IMAGES_DIR))
            timings["sc"] = time.perf_counter() - t0

        if "report" in wanted:
            from pipelines.writers import report

            t0 = time.perf_counter()
            pngs = [report.png_bytes(k.rgb) for k in images]
            html_text = report.render_html(result, images, lang, pngs=pngs)
            (tmp / REPORT_HTML).write_text(html_text, encoding="utf-8")
            staged.append(("report", tmp / REPORT_HTML, out / REPORT_HTML))
            try:
                made = report.render_pdf(result, images, tmp / REPORT_PDF, lang)
            except OSError as exc:
                raise OutputError(f"report.pdf could not be written ({exc.strerror}); check the output folder") from exc
            if made:
                staged.append(("report", tmp / REPORT_PDF, out / REPORT_PDF))
            timings["report"] = time.perf_counter() - t0

        for kind, src, dst in staged:
            atomic.commit(src, dst)
            written.setdefault(kind, []).append(str(dst))
        if "sc" in written:
            folder = out / KEY_IMAGES_DIR
            written["sc"] = sorted(str(p) for p in folder.glob("KI*.dcm"))
