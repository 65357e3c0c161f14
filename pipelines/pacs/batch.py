"""Batch triage of many studies: local worker processes or a Dask cluster, resumable.

``run_batch(sources, out_dir, options)`` finds the studies (:func:`discover`),
triages each with :class:`ictus.pipelines.triage.TriageEngine` (the same function as
``ictus triage``; one engine, i.e. one loaded model, per worker) into
``out_dir/<study_id>/``, and writes ``out_dir/summary.csv`` and
``summary.jsonl`` (one row per study: status, exit code, error, priority,
volumes, midline shift, QC, seconds, and ``outputs_failed``: the outputs that
could not be written, with the reason; the study is still ``ok``).

- **Isolation:** a study that fails is a row with its error and exit code
  (3 no eligible series, 4 invalid input, 5 model, 6 output, 1 internal); the
  batch goes on.
- **Resume:** each study folder gets ``batch-record.json`` with the sha256 of
  its input files; with ``resume=True`` a study whose record says ``ok``, whose
  outputs all exist and whose input hash is unchanged is skipped (status ``skipped``,
  the earlier values are kept in the summary).
- **Parallelism:** ``workers=0`` in this process; ``workers=N`` (default 1) a
  :class:`concurrent.futures.ProcessPoolExecutor`; ``scheduler="local"`` an
  embedded Dask ``LocalCluster`` with N single-threaded workers;
  ``scheduler="tcp://host:port"`` an existing Dask cluster. The engine lives in
  a per-process cache (:func:`worker_engine`), so every worker loads the model once.

Sources: a study folder (holds DICOM files, a DICOMDIR, or series folders of
one study), a folder of study folders, a single DICOM file, or a CSV manifest
with a ``path`` column (optional ``study_id``; relative paths are relative to
the manifest).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ictus.imaging.atomic import write_text
from ictus.imaging.errors import IctusError, InvalidInputError
from ictus.pipelines.findings.record import Findings
from ictus.pipelines.pacs.handover import load_engine_factory
from ictus.pipelines.phi import phi_guard, redact
from ictus.pipelines.triage import TriageOptions

log = logging.getLogger(__name__)

RECORD_FILE = "batch-record.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSONL = "summary.jsonl"
CSV_FIELDS = (
    "study_id", "status", "exit_code", "error", "priority", "ich_present", "ich_total_volume_ml", "iph_volume_ml",
    "eah_volume_ml", "ivh_volume_ml", "oedema_volume_ml", "midline_shift_mm", "qc_verdict", "qc_flags",
    "seconds", "worker", "input_sha256", "path", "out_dir", "outputs_failed",
)


@dataclass(frozen=True)
class StudyJob:
    """One study to triage: a name (its output folder) and where its DICOM is."""

    study_id: str
    path: str


@dataclass
class BatchSummary:
    """The rows of a batch (one per study, in job order) and where the summary files are."""

    rows: list[dict[str, Any]]
    csv_path: Path
    jsonl_path: Path
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)


# -- finding the studies -----------------------------------------------------------
def _is_dicom_file(path: Path) -> bool:
    if path.name.upper() == "DICOMDIR":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() == ".dcm"


def _direct_dicom(folder: Path) -> bool:
    return any(p.is_file() and _is_dicom_file(p) for p in folder.iterdir())


def _study_uid_of(folder: Path) -> str | None:
    """StudyInstanceUID of the first DICOM file directly in ``folder``."""
    import pydicom

    for p in sorted(folder.iterdir()):
        if p.is_file() and _is_dicom_file(p) and p.name.upper() != "DICOMDIR":
            try:
                return str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
            except Exception:  # noqa: BLE001 - unreadable: decided by triage later
                return None
    return None


def is_study_folder(folder: Path) -> bool:
    """True when ``folder`` is one study: DICOM (or a DICOMDIR) directly in it, or series folders of one study."""
    if _direct_dicom(folder):
        return True
    subdirs = [d for d in sorted(folder.iterdir()) if d.is_dir()]
    with_dicom = [d for d in subdirs if _direct_dicom(d)]
    if not with_dicom or len(with_dicom) < len(subdirs):
        return False
    uids = {_study_uid_of(d) for d in with_dicom}
    return len(uids) == 1 and None not in uids


def _safe_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "study"


def read_manifest(path: Path) -> list[StudyJob]:
    """Jobs from a CSV manifest with a ``path`` column (and optionally ``study_id``)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise InvalidInputError(f"manifest {path} has no 'path' column; add a header row with 'path'")
        jobs = []
        for row in reader:
            p = Path(row["path"].strip())
            if not p.is_absolute():
                p = path.parent / p
            jobs.append(StudyJob(_safe_id(row.get("study_id") or p.name), str(p)))
    return jobs


def discover(sources: Sequence[str | os.PathLike]) -> list[StudyJob]:
    """Every study named by ``sources`` (folders, folders of studies, files, CSV manifests).

    Study ids are the folder names, made unique with a suffix. A source that
    does not exist is an InvalidInputError (nothing is run).
    """
    jobs: list[StudyJob] = []
    for src in map(Path, sources):
        if not src.exists():
            raise InvalidInputError(f"{src} does not exist; pass study folders, a folder of studies or a CSV manifest")
        if src.is_file() and src.suffix.lower() == ".csv":
            jobs.extend(read_manifest(src))
        elif src.is_file() or is_study_folder(src):
            jobs.append(StudyJob(_safe_id(src.resolve().name), str(src)))
        else:
            for child in sorted(src.iterdir()):
                if child.is_dir() or (child.is_file() and _is_dicom_file(child)):
                    jobs.append(StudyJob(_safe_id(child.name), str(child)))
    seen: dict[str, int] = {}
    unique = []
    for job in jobs:
        n = seen.get(job.study_id, 0)
        seen[job.study_id] = n + 1
        unique.append(job if n == 0 else StudyJob(f"{job.study_id}-{n + 1}", job.path))
    return unique


def input_sha256(path: str | os.PathLike) -> str:
    """sha256 over the relative names and bytes of every file of a study (sorted)."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root) if p != root else p.name).encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# -- one study -----------------------------------------------------------------------
def summary_row(findings: Findings) -> dict[str, Any]:
    """The summary columns (plain JSON values for summary.csv and summary.jsonl) of a study's findings."""
    ich = findings.ich

    def vol(name: str) -> float | None:
        sub = ich.subtypes.get(name)
        return sub.volume_ml if sub is not None else None

    return {
        "priority": findings.priority.value,
        "ich_present": ich.present,
        "ich_total_volume_ml": ich.total_volume_ml,
        "iph_volume_ml": vol("IPH"), "eah_volume_ml": vol("EAH"), "ivh_volume_ml": vol("IVH"),
        "oedema_volume_ml": findings.oedema.volume_ml,
        "midline_shift_mm": findings.midline_shift_mm,
        "qc_verdict": findings.qc.verdict,
        "qc_flags": list(findings.qc.flags),
    }


def _outputs_exist(record: dict[str, Any]) -> bool:
    outs = [p for paths in (record.get("outputs") or {}).values() for p in paths]
    return bool(outs) and all(Path(p).exists() for p in outs)


def run_study(job: StudyJob, out_root: str | os.PathLike, engine: Any, *, resume: bool = False) -> dict[str, Any]:
    """Triage one study into ``out_root/<study_id>``; never raises for a bad study: returns its row."""
    t0 = time.perf_counter()
    out_dir = Path(out_root) / job.study_id
    row: dict[str, Any] = dict.fromkeys(CSV_FIELDS)
    row.update(study_id=job.study_id, path=job.path, out_dir=str(out_dir), worker=f"{os.uname().nodename}:{os.getpid()}")
    try:
        digest = input_sha256(job.path) if Path(job.path).exists() else ""
    except OSError as exc:
        digest = ""
        log.warning("cannot hash %s (%s)", job.path, exc.strerror)
    row["input_sha256"] = digest
    record_path = out_dir / RECORD_FILE
    if resume and record_path.exists():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("status") == "ok" and digest and record.get("input_sha256") == digest and _outputs_exist(record):
            row.update(record.get("row") or {})
            row.update(status="skipped", seconds=round(time.perf_counter() - t0, 3), worker=row["worker"])
            return row
    with phi_guard():  # this study's identifying values are redacted from logs and from its row
        try:
            result = engine.run(job.path, out_dir)
            row.update(summary_row(result.findings))
            failed = dict(getattr(result.outputs, "failed", None) or {})
            row.update(status="ok", exit_code=0, error="",
                       outputs_failed="; ".join(f"{k}: {redact(v)}" for k, v in failed.items()))
            outputs = {k: list(v) for k, v in result.outputs.items()}
            for kind, reason in failed.items():
                log.warning("study %s: output %s not written: %s", job.study_id, kind, reason)
        except IctusError as exc:
            row.update(status="failed", exit_code=exc.exit_code, error=redact(exc))
            outputs = {}
        except Exception as exc:  # noqa: BLE001 - per-study isolation: the batch goes on
            log.exception("study %s failed with an internal error", job.study_id)
            row.update(status="failed", exit_code=1, error=f"internal error {type(exc).__name__}: {redact(exc)}")
            outputs = {}
    row["seconds"] = round(time.perf_counter() - t0, 3)
    try:
        keep = {k: v for k, v in row.items() if k not in ("worker",)}
        write_text(record_path, json.dumps({"status": row["status"], "input_sha256": digest, "outputs": outputs,
                                            "row": keep}, indent=1, default=str))
    except IctusError as exc:
        log.warning("cannot write the batch record of %s (%s)", job.study_id, exc)
    return row


# -- the engine cache of a worker ----------------------------------------------------------
_ENGINES: dict[tuple[Any, str | None], Any] = {}
_ENGINES_LOCK = threading.Lock()


def worker_engine(options: TriageOptions, engine_spec: str | None = None) -> Any:
    """The engine of this worker process for ``options`` (created once, then reused)."""
    key = (options, engine_spec)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:

            engine = _ENGINES[key] = load_engine_factory(engine_spec)(options)
            log.info("worker %d: engine created", os.getpid())
        return engine


def _run_job(job: StudyJob, out_root: str, options: TriageOptions, engine_spec: str | None, resume: bool) -> dict[str, Any]:
    """What a worker runs (a module-level function: picklable for processes and Dask)."""
    return run_study(job, out_root, worker_engine(options, engine_spec), resume=resume)


def _failed_row(job: StudyJob, out_root: str, exc: BaseException) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(CSV_FIELDS)
    row.update(study_id=job.study_id, path=job.path, out_dir=str(Path(out_root) / job.study_id), status="failed",
               exit_code=1, error=f"worker lost: {type(exc).__name__}: {exc}")
    return row


# -- the batch -----------------------------------------------------------------------------
def run_batch(
    sources: Sequence[str | os.PathLike] | Sequence[StudyJob],
    out_dir: str | os.PathLike,
    options: TriageOptions | None = None,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    resume: bool = False,
    engine: str | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> BatchSummary:
    """Triage every study of ``sources`` into ``out_dir`` and write the summary files.

    ``engine`` is an optional ``"module:callable"`` making the engine from the
    options (default :class:`TriageEngine`). ``on_row`` is called in this
    process as each study finishes (the progress bar).
    """
    options = options or TriageOptions()
    jobs = [s for s in sources if isinstance(s, StudyJob)] or discover([s for s in sources if not isinstance(s, StudyJob)])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: dict[int, dict[str, Any]] = {}

    def done(i: int, row: dict[str, Any]) -> None:
        rows[i] = row
        if on_row is not None:
            on_row(row)

    args = (str(out), options, engine, resume)
    if scheduler:
        _run_dask(jobs, args, scheduler, max(1, workers), done)
    elif workers <= 0:
        for i, job in enumerate(jobs):
            done(i, _run_job(job, *args))
    else:
        _run_processes(jobs, args, workers, done)

    ordered = [rows[i] for i in range(len(jobs))]
    summary = BatchSummary(ordered, out / SUMMARY_CSV, out / SUMMARY_JSONL, round(time.perf_counter() - t0, 3))
    for row in ordered:
        summary.counts[row["status"]] = summary.counts.get(row["status"], 0) + 1
    write_summary(ordered, summary.csv_path, summary.jsonl_path)
    log.info("batch of %d studies in %.1f s: %s", len(jobs), summary.seconds, summary.counts)
    return summary


def _run_processes(jobs: list[StudyJob], args: tuple, workers: int, done: Callable) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")  # no inherited threads or onnxruntime state
    with ProcessPoolExecutor(max_workers=min(workers, max(1, len(jobs))), mp_context=ctx) as pool:
        futures = {pool.submit(_run_job, job, *args): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                done(i, fut.result())
            except Exception as exc:  # noqa: BLE001 - a dead worker process fails its study only
                done(i, _failed_row(jobs[i], args[0], exc))


def _run_dask(jobs: list[StudyJob], args: tuple, scheduler: str, workers: int, done: Callable) -> None:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise InvalidInputError("--scheduler needs dask.distributed; pip install 'ictus[distributed]'") from exc
    # workers may run elsewhere: give them absolute paths (shared file system assumed)
    jobs = [StudyJob(j.study_id, str(Path(j.path).resolve())) for j in jobs]
    args = (str(Path(args[0]).resolve()), *args[1:])
    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               host="127.0.0.1")
        client = Client(cluster)
    elif scheduler.startswith("tcp://"):
        client = Client(scheduler)
    else:
        raise InvalidInputError(f"scheduler {scheduler!r} is neither 'local' nor tcp://HOST:PORT")
    try:
        futures = [client.submit(_run_job, job, *args, pure=False, key=f"ictus-{job.study_id}-{time.time_ns()}")
                   for job in jobs]
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            i = index[fut.key]
            try:
                done(i, fut.result())
            except Exception as exc:  # noqa: BLE001
                done(i, _failed_row(jobs[i], args[0], exc))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def write_summary(rows: Iterable[dict[str, Any]], csv_path: Path, jsonl_path: Path) -> None:
    """summary.csv (CSV_FIELDS; QC flags joined by ';') and summary.jsonl (every field), atomically."""
    rows = list(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        flat = dict(row)
        if isinstance(flat.get("qc_flags"), list):
            flat["qc_flags"] = ";".join(flat["qc_flags"])
        writer.writerow({k: ("" if flat.get(k) is None else flat.get(k)) for k in CSV_FIELDS})
    write_text(csv_path, buf.getvalue())
    write_text(jsonl_path, "".join(json.dumps(r, default=str) + "\n" for r in rows))
