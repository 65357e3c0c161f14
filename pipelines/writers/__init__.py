"""Writers of the outputs a radiologist opens: findings.json, DICOM SEG, SR, key images, report.

:func:`write_outputs` is the one entry point. Every output is independent:
each is built in its own ``try`` inside a staging folder in ``out_dir`` and
moved into place (atomic rename) as soon as it is complete, so one failing
writer (e.g. highdicom refusing a SEG) never costs the others, and nothing is
ever half-written. ``findings.json`` is written last and lists every output as
``written``, ``skipped`` (not requested, or nothing to write) or ``failed``
with the reason (its ``outputs`` block). Only a findings.json that cannot be
written (or an output folder that cannot be created) raises
:class:`OutputError` (exit 6).

Layout of ``out_dir``:

- ``findings.json`` (``json``)
- ``seg.dcm``: DICOM Segmentation on the source series (``seg``; absent when
  no lesion class was found)
- ``sr.dcm``: DICOM Comprehensive 3D SR, TID 1500 (``sr``)
- ``keyimages/KI0001.dcm ...``: DICOM Secondary Capture key images (``sc``)
- ``report.html`` and ``report.pdf`` (``report``; the PDF where reportlab and a
  DejaVu font are available)

A requested output that failed or was skipped has its file from an earlier
run removed, so the folder never mixes this run's findings with old images.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ictus.imaging import atomic
from ictus.imaging.errors import OutputError
from ictus.pipelines import phi
from ictus.pipelines.findings.record import Findings, QcDetail
from ictus.pipelines.writers import common

if TYPE_CHECKING:
    from ictus.pipelines.triage import TriageResult

log = logging.getLogger(__name__)

#: Every output kind, in the order they are listed (the one definition: triage and the CLI import it).
ALL_OUTPUTS = ("json", "seg", "sr", "sc", "report")
FINDINGS_FILE = "findings.json"
SEG_FILE = "seg.dcm"
SR_FILE = "sr.dcm"
KEY_IMAGES_DIR = "keyimages"
REPORT_HTML = "report.html"
REPORT_PDF = "report.pdf"
#: Where each output lives in ``out_dir`` (removed when this run did not write it).
FINAL_ENTRIES: Mapping[str, tuple[str, ...]] = {
    "seg": (SEG_FILE,), "sr": (SR_FILE,), "sc": (KEY_IMAGES_DIR,), "report": (REPORT_HTML, REPORT_PDF),
}
WRITTEN, SKIPPED, FAILED = "written", "skipped", "failed"


@dataclass
class OutputStatus:
    """What happened to one output: ``written`` (files), ``skipped`` or ``failed`` (reason), and notes."""

    status: str
    files: list[str] = field(default_factory=list)
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self, out_dir: Path) -> dict[str, Any]:
        """The findings.json form: file names relative to the output folder."""
        doc: dict[str, Any] = {"status": self.status}
        if self.files:
            doc["files"] = [_relative(p, out_dir) for p in self.files]
        if self.reason:
            doc["reason"] = self.reason
        if self.notes:
            doc["notes"] = list(self.notes)
        return doc


class WrittenOutputs(dict):
    """Paths written, by output kind (``{"seg": [...], ...}``: only kinds that were written), plus
    :attr:`status` (every requested kind's :class:`OutputStatus`) and :attr:`qc_flags` (e.g.
    ``frame_of_reference_derived``). A plain dict to code that only needs the paths."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.status: dict[str, OutputStatus] = {}
        self.qc_flags: list[str] = []

    @property
    def failed(self) -> dict[str, str]:
        """Reason by kind of every output that failed (a partly written report included)."""
        return {k: s.reason or "unknown reason" for k, s in self.status.items() if s.status == FAILED}

    @property
    def warnings(self) -> dict[str, str]:
        """Reasons of written outputs that lack a part (e.g. report.pdf), by kind."""
        return {k: s.reason for k, s in self.status.items() if s.status == WRITTEN and s.reason}

    def block(self, out_dir: str | os.PathLike) -> dict[str, Any]:
        """The ``outputs`` block of findings.json."""
        order = sorted(self.status, key=lambda k: ALL_OUTPUTS.index(k) if k in ALL_OUTPUTS else len(ALL_OUTPUTS))
        return {k: self.status[k].as_dict(Path(out_dir)) for k in order}


def _relative(path: str, out_dir: Path) -> str:
    try:
        return Path(path).relative_to(out_dir).as_posix()
    except ValueError:
        return Path(path).name


def failure_reason(exc: BaseException) -> str:
    """One line saying why an output failed, without identifying values."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {Path(exc.filename).name}" if exc.filename else "")
    if not isinstance(exc, OutputError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return phi.redact(text)[:500]


def findings_with_outputs(findings: Findings, outputs: Mapping[str, Sequence[str]],
                          out_dir: str | os.PathLike) -> Findings:
    """``findings`` with the ``outputs`` block and the writers' QC flags (what findings.json holds).

    ``outputs`` is what :func:`write_outputs` returned; plain paths by kind (no status) change nothing."""
    if not isinstance(outputs, WrittenOutputs):
        return findings
    flags = [f for f in outputs.qc_flags if f not in findings.qc.flags]
    qc = findings.qc
    if flags:
        details = list(qc.details)
        for flag in flags:
            if flag == common.FRAME_OF_REFERENCE_DERIVED:
                details.append(QcDetail(flag, "info",
                                        "the source series has no Frame of Reference UID; the DICOM "
                                        "outputs carry a new one derived from its Series Instance UID"))
        qc = dataclasses.replace(qc, flags=qc.flags + tuple(flags), details=tuple(details))
    return dataclasses.replace(findings, qc=qc, outputs=outputs.block(out_dir))


def _save_dicom(ds: Any, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)


def write_outputs(
    result: TriageResult,
    out_dir: str | os.PathLike,
    *,
    outputs: Sequence[str] = ALL_OUTPUTS,
    lang: str = "en",
    fail: Mapping[str, BaseException] | None = None,
) -> WrittenOutputs:
    """Write the requested outputs of a triage result into ``out_dir``, each on its own.

    ``outputs`` is any of ``json, seg, sr, sc, report``; ``lang`` is ``en``,
    ``ru`` or ``kk`` (report and key images). Returns a :class:`WrittenOutputs`
    (written paths by kind, and every requested kind's status). A writer that
    fails is recorded (status ``failed``, reason) and logged once; the others
    go on. Raises :class:`OutputError` only when the output folder cannot be
    used or findings.json cannot be written. ``fail`` (tests) makes the named
    writers raise the given exception.
    """
    wanted = tuple(dict.fromkeys(str(o).strip().lower() for o in outputs if str(o).strip()))
    unknown = [o for o in wanted if o not in ALL_OUTPUTS]
    if unknown:
        raise OutputError(f"unknown output(s) {', '.join(unknown)}; choose from {','.join(ALL_OUTPUTS)}")
    common.load_messages(lang)  # an unknown language fails before anything is built
    out = Path(out_dir)
    timings: dict[str, float] = {}
    written = WrittenOutputs()
    t_all = time.perf_counter()
    with atomic.staging_dir(out) as tmp:  # OutputError (exit 6) when the folder cannot be used
        _Writers(result, out, tmp, wanted, lang, timings, written, dict(fail or {})).run()
    log.info(
        "outputs written in %.2f s (%s)", time.perf_counter() - t_all,
        ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
    )
    for kind, reason in written.failed.items():
        log.info("output %s not written: %s", kind, reason)  # callers report it (CLI warning, summary)
    return written


class _Writers:
    """One run of the writers: each output in its own try, committed as soon as it is complete."""

    def __init__(self, result: TriageResult, out: Path, tmp: Path, wanted: Sequence[str], lang: str,
                 timings: dict[str, float], written: WrittenOutputs, fail: dict[str, BaseException]) -> None:
        self.result, self.out, self.tmp, self.wanted, self.lang = result, out, tmp, wanted, lang
        self.timings, self.written, self.fail = timings, written, fail

    # -- bookkeeping ----------------------------------------------------------------
    def _set(self, kind: str, status: OutputStatus) -> None:
        self.written.status[kind] = status
        if status.status == WRITTEN and status.files:
            self.written[kind] = list(status.files)

    def _attempt(self, kind: str, build: Callable[[], OutputStatus]) -> OutputStatus:
        """Run one writer; any exception becomes a ``failed`` status with its reason."""
        t0 = time.perf_counter()
        try:
            if kind in self.fail:
                raise self.fail[kind]
            status = build()
        except Exception as exc:  # noqa: BLE001 - one output's failure must not cost the others
            log.debug("output %s failed", kind, exc_info=True)
            status = OutputStatus(FAILED, reason=failure_reason(exc))
        self.timings[kind] = time.perf_counter() - t0
        if status.status != WRITTEN:
            self._remove_stale(kind)
        self._set(kind, status)
        return status

    def _remove_stale(self, kind: str) -> None:
        """Remove what an earlier run wrote for ``kind`` (this run's findings do not match it)."""
        for name in FINAL_ENTRIES.get(kind, ()):
            path = self.out / name
            try:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
                else:
                    continue
                log.info("removed %s from an earlier run (%s not written this time)", name, kind)
            except OSError as exc:
                log.warning("cannot remove the earlier %s (%s)", name, exc.strerror)

    def _commit(self, staged: Path, name: str) -> str:
        return str(atomic.commit(staged, self.out / name))

    # -- the run --------------------------------------------------------------------
    def run(self) -> None:
        wanted = self.wanted
        for kind in ALL_OUTPUTS:
            if kind not in wanted and kind != "json":
                self.written.status[kind] = OutputStatus(SKIPPED, reason="not requested")
        sources: list[Any] = []
        sources_error: BaseException | None = None
        if any(k in wanted for k in ("seg", "sr", "sc")):
            try:
                sources = common.read_source_datasets(self.result.volume)
                self.written.qc_flags.extend(common.complete_type1(sources))
            except Exception as exc:  # noqa: BLE001 - the DICOM outputs fail; json and report go on
                sources_error = exc

        def need_sources() -> list[Any]:
            if sources_error is not None:
                raise sources_error
            return sources

        seg_obj, segments = None, []
        if "seg" in wanted:
            def seg() -> OutputStatus:
                nonlocal seg_obj, segments
                from ictus.pipelines.writers.seg import build_seg

                obj, infos = build_seg(self.result, need_sources())
                if obj is None:
                    return OutputStatus(SKIPPED, reason="no lesion class found on the source slices")
                _save_dicom(obj, self.tmp / SEG_FILE)
                path = self._commit(self.tmp / SEG_FILE, SEG_FILE)
                seg_obj, segments = obj, infos
                notes = [common.FRAME_OF_REFERENCE_DERIVED] if common.FRAME_OF_REFERENCE_DERIVED in self.written.qc_flags else []
                return OutputStatus(WRITTEN, [path], notes=notes)

            self._attempt("seg", seg)

        if "sr" in wanted:
            def sr() -> OutputStatus:
                from ictus.pipelines.writers.sr import build_sr

                _save_dicom(build_sr(self.result, need_sources(), seg_obj, segments), self.tmp / SR_FILE)
                seg_status = self.written.status.get("seg")
                notes = ["no SEG references: the SEG was not written"] if seg_status and seg_status.status == FAILED else []
                return OutputStatus(WRITTEN, [self._commit(self.tmp / SR_FILE, SR_FILE)], notes=notes)

            self._attempt("sr", sr)

        images: list[Any] = []
        render_error: BaseException | None = None
        if "sc" in wanted or "report" in wanted:
            t0 = time.perf_counter()
            try:
                if "render" in self.fail:
                    raise self.fail["render"]
                from ictus.pipelines.writers.keyimages import render_key_images

                images = render_key_images(self.result, self.lang)
            except Exception as exc:  # noqa: BLE001 - key images fail; the report goes on without them
                render_error = exc
                log.debug("key images not rendered", exc_info=True)
            self.timings["render"] = time.perf_counter() - t0

        if "sc" in wanted:
            def sc() -> OutputStatus:
                from ictus.pipelines.writers.keyimages import build_sc_datasets

                if render_error is not None:
                    raise render_error
                srcs = need_sources()
                ki_dir = self.tmp / KEY_IMAGES_DIR
                ki_dir.mkdir()
                for n, ds in enumerate(build_sc_datasets(images, srcs[0]), start=1):
                    _save_dicom(ds, ki_dir / f"KI{n:04d}.dcm")
                folder = Path(self._commit(ki_dir, KEY_IMAGES_DIR))
                return OutputStatus(WRITTEN, sorted(str(p) for p in folder.glob("KI*.dcm")))

            self._attempt("sc", sc)

        if "report" in wanted:
            def report_() -> OutputStatus:
                from ictus.pipelines.writers import report

                pngs = [report.png_bytes(k.rgb) for k in images]
                html_text = report.render_html(self.result, images, self.lang, pngs=pngs)
                (self.tmp / REPORT_HTML).write_text(html_text, encoding="utf-8")
                files = [self._commit(self.tmp / REPORT_HTML, REPORT_HTML)]
                reason = None if render_error is None else f"without key images ({failure_reason(render_error)})"
                try:
                    if "report_pdf" in self.fail:
                        raise self.fail["report_pdf"]
                    made = report.render_pdf(self.result, images, self.tmp / REPORT_PDF, self.lang)
                    if made:
                        files.append(self._commit(self.tmp / REPORT_PDF, REPORT_PDF))
                except Exception as exc:  # noqa: BLE001 - the HTML report stands alone
                    log.debug("report.pdf failed", exc_info=True)
                    (self.out / REPORT_PDF).unlink(missing_ok=True)
                    reason = f"report.pdf not written ({failure_reason(exc)})"
                return OutputStatus(WRITTEN, files, reason=reason)

            self._attempt("report", report_)

        if "json" in wanted:
            self._write_findings()

    def _write_findings(self) -> None:
        """findings.json last, with every output's status; failing here is an OutputError (exit 6)."""
        from ictus.pipelines.writers.json_out import write_findings_json

        t0 = time.perf_counter()
        final = self.out / FINDINGS_FILE
        self.written.status["json"] = OutputStatus(WRITTEN, [str(final)])
        try:
            if "json" in self.fail:
                raise self.fail["json"]
            final_findings = findings_with_outputs(self.result.findings, self.written, self.out)
            write_findings_json(final_findings.to_dict(), self.tmp / FINDINGS_FILE)
            self._commit(self.tmp / FINDINGS_FILE, FINDINGS_FILE)
        except OutputError:
            self.written.status["json"] = OutputStatus(FAILED, reason="findings.json could not be written")
            raise
        except OSError as exc:
            raise OutputError(f"findings.json could not be written to {self.out} ({exc.strerror or exc}); "
                              "check the folder and free space") from exc
        self.written["json"] = [str(final)]
        self.timings["json"] = time.perf_counter() - t0
