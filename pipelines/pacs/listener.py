"""The DICOM listener: a storage SCP that triages complete studies and sends the results back.

``Listener(config).start()`` serves C-ECHO and C-STORE (pynetdicom) to the
calling AE titles in ``allowed_calling_aets`` (and, when ``allowed_hosts``
names them, only from those hosts); anything else gets an A-ASSOCIATE-RJ and a
log line with AE titles and address only. Received instances go to the
:class:`ictus.pipelines.pacs.spool.Spool`; a study is complete when no instance arrived
for ``quiet_period_s`` (an association release means nothing). Worker threads,
each with its own :class:`ictus.pipelines.triage.TriageEngine` (model loaded once),
triage complete studies through the same function as ``ictus triage``; the
SEG, SR, key images (and the report as Encapsulated PDF) get stable UIDs and
go to the destination AE by C-STORE, retried with exponential back-off.

Logs are ``key=value`` lines with UIDs, AE titles and counts, never patient
names or IDs: the identifying values of every received instance are held by
:mod:`ictus.pipelines.phi` from C-STORE until the study is triaged and redacted from
every log record and stored error. Only the outputs that were written are
sent; one that failed is logged (``event=output_not_written``). ``/health`` and ``/metrics`` on ``127.0.0.1:status_port`` (or
``ictus listen --status``) report the queue.

Configuration (TOML)::

    [listener]
    ae_title = "ICTUS"
    host = "127.0.0.1"
    port = 11112
    allowed_calling_aets = ["STORESCU", "ORTHANC"]
    allowed_hosts = { ORTHANC = ["127.0.0.1"] }   # optional, per AE title
    quiet_period_s = 5
    spool_dir = "/var/spool/ictus"
    workers = 1                 # triage threads, one engine each
    status_port = 8765          # 0 or absent: no HTTP endpoint
    poll_interval_s = 0.5

    [destination]               # where results are sent (absent: kept in the spool only)
    ae_title = "ORTHANC"
    host = "127.0.0.1"
    port = 4242
    calling_ae_title = "ICTUS"  # default: listener.ae_title
    retry_base_s = 2
    retry_max_s = 300
    send_report = true          # report.pdf as Encapsulated PDF

    [triage]                    # the fields of ictus.pipelines.triage.TriageOptions
    fast = false
    models_dir = "/opt/ictus/models"
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ictus.imaging.errors import IctusError, InvalidInputError
from ictus.models.backends import BACKENDS
from ictus.pipelines import phi
from ictus.pipelines.pacs.sender import Destination, DeliveryError, backoff_delay_s, send_files, stored
from ictus.pipelines.pacs.handover import EngineFactory, load_engine_factory, prepare_results
from ictus.pipelines.pacs.spool import Spool
from ictus.pipelines.triage import TriageOptions

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

    from pynetdicom.events import EventHandlerType
    from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ListenerConfig:
    """The listener's settings (see the module docstring for the TOML keys)."""

    ae_title: str = "ICTUS"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    allowed_hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    quiet_period_s: float = 5.0
    spool_dir: str = "/var/spool/ictus"
    workers: int = 1
    status_port: int = 0
    poll_interval_s: float = 0.5
    destination: Destination | None = None
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    send_report: bool = True
    triage: TriageOptions = field(default_factory=TriageOptions)
    engine: str | None = None  # "module:callable" making an engine from TriageOptions (tests, load runs)


def load_config(path: str | os.PathLike) -> ListenerConfig:
    """Read ``listener.toml``; InvalidInputError names a missing or wrong key."""
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InvalidInputError(f"listener config {path} does not exist; pass --config FILE") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"listener config {path} is not valid TOML ({exc}); fix the file") from exc
    return config_from_dict(data, base_dir=Path(path).parent)


def config_from_dict(data: Mapping[str, Any], base_dir: Path | None = None) -> ListenerConfig:
    """A :class:`ListenerConfig` from the parsed TOML tables."""
    lst = dict(data.get("listener") or {})
    if not lst:
        raise InvalidInputError("listener config has no [listener] table; see examples/listener.toml")
    known = {"ae_title", "host", "port", "allowed_calling_aets", "allowed_hosts", "quiet_period_s", "spool_dir",
             "workers", "status_port", "poll_interval_s"}
    unknown = sorted(set(lst) - known)
    if unknown:
        raise InvalidInputError(f"unknown key(s) {', '.join(unknown)} in [listener]; allowed: {', '.join(sorted(known))}")
    for key in ("allowed_calling_aets", "spool_dir"):
        if key not in lst:
            raise InvalidInputError(f"[listener] needs {key}; see examples/listener.toml")
    spool = Path(str(lst["spool_dir"])).expanduser()
    if not spool.is_absolute() and base_dir is not None:
        spool = base_dir / spool
    dst_tab = dict(data.get("destination") or {})
    destination = None
    if dst_tab:
        for key in ("ae_title", "host", "port"):
            if key not in dst_tab:
                raise InvalidInputError(f"[destination] needs {key}; see examples/listener.toml")
        destination = Destination(
            ae_title=str(dst_tab["ae_title"]), host=str(dst_tab["host"]), port=int(dst_tab["port"]),
            calling_aet=str(dst_tab.get("calling_ae_title", lst.get("ae_title", "ICTUS"))),
            timeout_s=float(dst_tab.get("timeout_s", 30)),
        )
    tri = dict(data.get("triage") or {})
    engine = tri.pop("engine", None)
    fields = {f.name for f in dataclasses.fields(TriageOptions)}
    bad = sorted(set(tri) - fields)
    if bad:
        raise InvalidInputError(f"unknown key(s) {', '.join(bad)} in [triage]; use fields of TriageOptions")
    if tri.get("backend", "auto") not in BACKENDS:
        raise InvalidInputError(f"[triage] backend {tri['backend']!r} is not one of {', '.join(BACKENDS)}")
    for key in ("outputs", "providers"):
        if key in tri and tri[key] is not None:
            tri[key] = tuple(tri[key])
    hosts = {str(k).strip(): tuple(str(h) for h in v) for k, v in dict(lst.get("allowed_hosts") or {}).items()}
    return ListenerConfig(
        ae_title=str(lst.get("ae_title", "ICTUS")),
        host=str(lst.get("host", "127.0.0.1")),
        port=int(lst.get("port", 11112)),
        allowed_calling_aets=tuple(str(a).strip() for a in lst["allowed_calling_aets"]),
        allowed_hosts=hosts,
        quiet_period_s=float(lst.get("quiet_period_s", 5)),
        spool_dir=str(spool),
        workers=max(1, int(lst.get("workers", 1))),
        status_port=int(lst.get("status_port", 0) or 0),
        poll_interval_s=float(lst.get("poll_interval_s", 0.5)),
        destination=destination,
        retry_base_s=float(dst_tab.get("retry_base_s", 2)),
        retry_max_s=float(dst_tab.get("retry_max_s", 300)),
        send_report=bool(dst_tab.get("send_report", True)),
        triage=TriageOptions(**tri),
        engine=engine,
    )


def kv(**fields: Any) -> str:
    """A structured log line: ``key=value`` pairs (values are UIDs, AE titles, numbers)."""
    return " ".join(f"{k}={v}" for k, v in fields.items())


class Listener:
    """The storage SCP, its triage workers, the sender and the status endpoint."""

    def __init__(self, config: ListenerConfig, engine_factory: EngineFactory | None = None) -> None:
        if config.triage.threads is None:  # workers x onnxruntime threads within the cores
            threads = max(1, (os.cpu_count() or 1) // config.workers)
            config = dataclasses.replace(config, triage=dataclasses.replace(config.triage, threads=threads))
        self.config = config
        self.engine_factory = engine_factory or load_engine_factory(config.engine)
        self.spool = Spool(config.spool_dir)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: ThreadedAssociationServer | None = None
        self._http: ThreadingHTTPServer | None = None
        self.counters = {"associations_accepted": 0, "associations_rejected": 0, "instances_stored": 0,
                         "instances_refused": 0, "echoes": 0}
        self._counter_lock = threading.Lock()
        self.state = "stopped"
        self.bound_port: int | None = None
        self._phi_keys: set[tuple[str, str]] = set()  # studies whose identifying values ictus.pipelines.phi holds

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        """Recover the spool, then serve DICOM, triage and send in background threads."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # set through globals()
        from pynetdicom import StoragePresentationContexts

        self.spool.recover()
        ae = AE(ae_title=self.config.ae_title)
        ae.add_supported_context(Verification)
        for cx in StoragePresentationContexts:
            assert cx.abstract_syntax is not None  # every storage context names its SOP class
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.maximum_associations = 16
        handlers: list[EventHandlerType] = [
            (evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_ACCEPTED, self._on_accepted)]
        server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        assert server is not None  # a non-blocking start returns the server
        self._server = server
        self.bound_port = server.server_address[1]
        self.state = "running"
        for i in range(self.config.workers):
            t = threading.Thread(target=self._worker, args=(i,), name=f"ictus-triage-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._sender, name="ictus-sender", daemon=True)
        t.start()
        self._threads.append(t)
        if self.config.status_port:
            self._start_http()
        log.info(kv(event="listening", ae_title=self.config.ae_title, host=self.config.host, port=self.bound_port,
                    workers=self.config.workers, quiet_period_s=self.config.quiet_period_s))

    def stop(self, timeout_s: float | None = 600) -> None:
        """Stop accepting, let the workers finish the study in hand and the sender its round, then return."""
        if self.state == "stopped":
            return
        self.state = "draining"
        log.info(kv(event="draining"))
        if self._server is not None:
            self._server.shutdown()
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        if self._http is not None:
            self._http.shutdown()
        self.state = "stopped"
        for key in list(self._phi_keys):  # studies received but not triaged: their values are dropped
            phi.forget(key)
        self._phi_keys.clear()
        log.info(kv(event="stopped", **{k: v for k, v in self.spool.status().items()
                                       if k in ("queue_length", "processed", "failed")}))
        self.spool.close()

    def request_stop(self) -> None:
        """Ask the workers and the sender to finish (safe from a signal handler); :meth:`stop` waits."""
        self._stop.set()

    def wait(self) -> None:
        """Block until :meth:`stop` is called from another thread (or a signal handler)."""
        while not self._stop.wait(0.5):
            pass

    def status(self) -> dict[str, Any]:
        status = self.spool.status()
        with self._counter_lock:
            status["counters"] = dict(self.counters)
        status["state"] = self.state
        return status

    def _count(self, name: str) -> None:
        with self._counter_lock:
            self.counters[name] += 1

    # -- DICOM events -------------------------------------------------------------
    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        host = assoc.requestor.address
        reason, diagnostic = None, 0x01
        if calling not in self.config.allowed_calling_aets:
            reason, diagnostic = "calling_aet_not_allowed", 0x03
        elif calling in self.config.allowed_hosts and host not in self.config.allowed_hosts[calling]:
            reason, diagnostic = "host_not_allowed", 0x03
        elif called != self.config.ae_title:
            reason, diagnostic = "called_aet_unknown", 0x07
        if reason is None:
            return
        self._count("associations_rejected")
        log.warning(kv(event="association_rejected", calling_aet=calling or "-", called_aet=called or "-",
                       host=host, reason=reason))
        assoc.acse.send_reject(0x01, 0x01, diagnostic)
        assoc.kill()

    def _on_accepted(self, event: Any) -> None:
        self._count("associations_accepted")
        log.info(kv(event="association_accepted", calling_aet=str(event.assoc.requestor.ae_title).strip(),
                    host=event.assoc.requestor.address))

    def _on_echo(self, event: Any) -> int:
        self._count("echoes")
        return 0x0000

    def _on_store(self, event: Any) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            data = event.encoded_dataset(include_meta=True)
            ds = event.dataset
            study_uid, series_uid = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
            sop_uid = str(event.request.AffectedSOPInstanceUID)
            phi.remember(("study", study_uid), ds)  # redacted from every log line until the study is triaged
            self._phi_keys.add(("study", study_uid))
            self.spool.store_instance(data, study_uid, series_uid or None, sop_uid, calling)
        except InvalidInputError as exc:
            self._count("instances_refused")
            log.warning(kv(event="instance_refused", calling_aet=calling, reason=str(exc).replace(" ", "_")[:80]))
            return 0xC000  # cannot understand
        except Exception as exc:  # noqa: BLE001 - the peer must get a failure status, and keep its copy
            self._count("instances_refused")
            log.error(kv(event="instance_not_stored", calling_aet=calling, error=type(exc).__name__))
            return 0xA700  # out of resources: the sender retries
        self._count("instances_stored")
        log.debug(kv(event="stored", study=study_uid, series=series_uid, sop=sop_uid, calling_aet=calling))
        return 0x0000

    # -- triage ---------------------------------------------------------------------
    def _worker(self, index: int) -> None:
        engine = None
        while not self._stop.is_set():
            try:
                for uid in self.spool.mark_complete(self.config.quiet_period_s):
                    log.info(kv(event="study_complete", study=uid))
                row = self.spool.claim_ready()
            except Exception as exc:  # noqa: BLE001 - a locked database is retried
                log.error(kv(event="queue_error", error=type(exc).__name__))
                row = None
            if row is None:
                self._stop.wait(self.config.poll_interval_s)
                continue
            if engine is None:
                try:
                    engine = self.engine_factory(self.config.triage)
                except Exception as exc:  # noqa: BLE001 - recorded on the study; the next one tries again
                    code = exc.exit_code if isinstance(exc, IctusError) else 1
                    self.spool.fail_triage(row.study_uid, row.round, f"engine not created: {exc}", code)
                    log.error(kv(event="engine_failed", study=row.study_uid, exit_code=code, error=type(exc).__name__))
                    continue
            self.process(engine, row.study_uid, row.round)

    def process(self, engine: Any, study_uid: str, round_: int) -> None:
        """Triage one claimed study and queue its results (errors recorded, never raised)."""
        t0 = time.perf_counter()
        out_dir = self.spool.result_dir(study_uid) / f"r{round_}"
        log.info(kv(event="triage_started", study=study_uid, round=round_))
        with phi.phi_guard(key=("study", study_uid)):
            try:
                result = engine.run(self.spool.study_dir(study_uid), out_dir)
                # only what was written is sent; a failed output is logged (and listed in findings.json)
                for kind, reason in (getattr(result.outputs, "failed", None) or {}).items():
                    log.warning(kv(event="output_not_written", study=study_uid, output=kind)
                                + f" reason={phi.redact(reason)!r}")
                results = prepare_results(result.outputs, study_uid, out_dir, self.config.send_report)
                priority = result.findings.priority.value
            except IctusError as exc:
                self.spool.fail_triage(study_uid, round_, phi.redact(exc), exc.exit_code)
                log.warning(kv(event="triage_failed", study=study_uid, exit_code=exc.exit_code,
                               error=type(exc).__name__))
                return
            except Exception as exc:  # noqa: BLE001 - one bad study must not stop the listener
                self.spool.fail_triage(study_uid, round_, f"internal error {type(exc).__name__}: {phi.redact(exc)}", 1)
                log.exception(kv(event="triage_failed", study=study_uid, exit_code=1, error=type(exc).__name__))
                return
            finally:
                phi.forget(("study", study_uid))
                self._phi_keys.discard(("study", study_uid))
        if self.config.destination is None:
            results = []  # nothing to send: outputs stay in the spool
        recorded = self.spool.finish_triage(study_uid, round_, results, priority)
        log.info(kv(event="triaged" if recorded else "triage_superseded", study=study_uid, round=round_,
                    priority=priority, results=len(results), seconds=round(time.perf_counter() - t0, 2)))

    # -- delivery -------------------------------------------------------------------
    def _sender(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                self.deliver_due()
            except Exception as exc:  # noqa: BLE001
                log.error(kv(event="sender_error", error=type(exc).__name__))
            if stopping:
                return
            self._stop.wait(self.config.poll_interval_s)

    def deliver_due(self) -> int:
        """Send the unsent results of every study due; returns how many instances were stored."""
        dest = self.config.destination
        n_stored = 0
        if dest is None:
            return 0
        for row in self.spool.due_for_sending():
            unsent = self.spool.unsent_results(row.study_uid)
            paths = [p for _k, p, _u in unsent]
            by_path = {p: u for _k, p, u in unsent}
            try:
                statuses = send_files(paths, dest)
                error = ""
            except DeliveryError as exc:
                statuses, error = {}, str(exc)
            ok = [by_path[p] for p, s in statuses.items() if stored(s)]
            if ok:
                self.spool.mark_sent(row.study_uid, ok)
                n_stored += len(ok)
            if len(ok) < len(paths):
                delay = backoff_delay_s(row.send_attempts, self.config.retry_base_s, self.config.retry_max_s)
                bad = {hex(s) for s in statuses.values() if not stored(s)}
                self.spool.defer_sending(row.study_uid, delay, error or f"statuses {sorted(bad)}")
                log.warning(kv(event="send_deferred", study=row.study_uid, attempt=row.send_attempts + 1,
                               unsent=len(paths) - len(ok), retry_in_s=delay))
            else:
                log.info(kv(event="delivered", study=row.study_uid, instances=len(ok), destination=dest.ae_title))
        return n_stored

    # -- status endpoint ------------------------------------------------------------
    def _start_http(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                status = listener.status()
                if self.path.startswith("/metrics"):
                    body = metrics_text(status).encode()
                    ctype = "text/plain; version=0.0.4"
                elif self.path.startswith("/health"):
                    body = json.dumps(status).encode()
                    ctype = "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200 if status["state"] == "running" else 503)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", self.config.status_port), Handler)
        threading.Thread(target=self._http.serve_forever, name="ictus-status", daemon=True).start()


def metrics_text(status: Mapping[str, Any]) -> str:
    """Prometheus text exposition of a status dictionary."""
    lines = [f"ictus_queue_length {status['queue_length']}", f"ictus_studies_processed_total {status['processed']}",
             f"ictus_studies_failed_total {status['failed']}",
             f"ictus_instances_received_total {status['instances_received']}",
             f"ictus_results_sent_total {status['results_sent']}"]
    for state, n in status.get("studies", {}).items():
        lines.append(f'ictus_studies{{state="{state}"}} {n}')
    for name, n in (status.get("counters") or {}).items():
        lines.append(f"ictus_{name}_total {n}")
    return "\n".join(lines) + "\n"
