"""The Orthanc-driven alternative to the listener: poll Orthanc's ``/changes`` for stable studies.

Orthanc emits a ``StableStudy`` change when a study has received no new
instance for its ``StableAge`` (seconds, in orthanc.json). :class:`OrthancPoller`
reads ``/changes?since=N``, and for every stable study downloads its source
instances (``/instances/{id}/file``; our own results are left out), triages
them with the same :class:`ictus.pipelines.triage.TriageEngine` as every other entry
point, and uploads SEG, SR, key images and the Encapsulated PDF report back with
``POST /instances``. Results carry stable UIDs (see :mod:`ictus.pipelines.pacs.sender`),
so a study triaged twice is overwritten, not duplicated.

State (``orthanc-state.json`` in the work folder: the last change sequence
number and, per study, a hash of its source SOP Instance UIDs) makes the poller
restartable and keeps it from triaging a study again because our own uploads
made it "stable" once more.

Run it with ``ictus listen --config listener.toml --orthanc http://127.0.0.1:8042``
next to Orthanc (loopback; no credentials are stored by Ictus; use
``ICTUS_ORTHANC_USER``/``ICTUS_ORTHANC_PASSWORD`` when Orthanc asks for them).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ictus.imaging.atomic import write_text
from ictus.imaging.errors import IctusError, OutputError
from ictus.pipelines.pacs.handover import prepare_results

log = logging.getLogger(__name__)

OUR_MANUFACTURER = "Ictus"


class OrthancError(OutputError):
    """Orthanc's REST API answered with an error or could not be reached (exit 6)."""


class OrthancClient:
    """A minimal client of Orthanc's REST API (urllib, JSON)."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None, timeout_s: float = 60) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        user = user or os.environ.get("ICTUS_ORTHANC_USER")
        password = password or os.environ.get("ICTUS_ORTHANC_PASSWORD")
        self._auth = ("Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()) if user else None

    def _request(self, method: str, path: str, data: bytes | None = None, ctype: str | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self._auth:
            req.add_header("Authorization", self._auth)
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.read()
        except (urllib.error.URLError, OSError) as exc:
            raise OrthancError(f"Orthanc {method} {path} failed ({exc}); check that Orthanc runs at {self.url}") from exc

    def get_json(self, path: str) -> Any:
        return json.loads(self._request("GET", path))

    def changes(self, since: int, limit: int = 100) -> dict[str, Any]:
        return self.get_json(f"/changes?since={since}&limit={limit}")

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        """Instances of a study with the Manufacturer/Modality of their series."""
        out = []
        for series in self.get_json(f"/studies/{study_id}/series"):
            tags = series.get("MainDicomTags", {})
            for inst in self.get_json(f"/series/{series['ID']}/instances"):
                out.append({"id": inst["ID"], "sop_uid": inst["MainDicomTags"].get("SOPInstanceUID", ""),
                            "modality": tags.get("Modality", ""), "manufacturer": tags.get("Manufacturer", ""),
                            "series_description": tags.get("SeriesDescription", "")})
        return out

    def download(self, instance_id: str) -> bytes:
        return self._request("GET", f"/instances/{instance_id}/file")

    def upload(self, data: bytes) -> dict[str, Any]:
        return json.loads(self._request("POST", "/instances", data, "application/dicom"))

    def study_uid(self, study_id: str) -> str:
        return str(self.get_json(f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"])


def is_our_result(instance: dict[str, Any]) -> bool:
    """True for SEG/SR/SC/report objects that Ictus made (they are not triaged again)."""
    return instance.get("manufacturer") == OUR_MANUFACTURER and \
        str(instance.get("series_description", "")).lower().startswith("ictus")


class OrthancPoller:
    """Triage every stable study that Orthanc reports, upload the results back."""

    def __init__(self, client: OrthancClient, engine: Any, work_dir: str | os.PathLike, *, send_report: bool = True) -> None:
        self.client = client
        self.engine = engine
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.send_report = send_report
        self.state_path = self.work_dir / "orthanc-state.json"
        self.state = self._load_state()
        self._stop = threading.Event()

    def _load_state(self) -> dict[str, Any]:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"last_seq": 0, "studies": {}}

    def _save_state(self) -> None:
        write_text(self.state_path, json.dumps(self.state, indent=1))

    def stop(self) -> None:
        self._stop.set()

    def run(self, interval_s: float = 2.0) -> None:
        """Poll until :meth:`stop`; errors are logged and retried at the next poll."""
        while not self._stop.is_set():
            try:
                self.poll_once()
            except IctusError as exc:
                log.warning("event=orthanc_poll_failed error=%s", type(exc).__name__)
            self._stop.wait(interval_s)

    def poll_once(self) -> list[dict[str, Any]]:
        """Process every change since the last one seen; returns one record per stable study handled."""
        records = []
        while not self._stop.is_set():
            page = self.client.changes(int(self.state["last_seq"]))
            for change in page.get("Changes", []):
                if change.get("ChangeType") == "StableStudy":
                    records.append(self.process_study(change["ID"]))
                self.state["last_seq"] = int(change["Seq"])
                self._save_state()
            self.state["last_seq"] = max(int(self.state["last_seq"]), int(page.get("Last", 0)))
            self._save_state()
            if page.get("Done", True):
                break
        return records

    def process_study(self, study_id: str) -> dict[str, Any]:
        """Download, triage and upload one study (skipped when its sources did not change)."""
        instances = [i for i in self.client.study_instances(study_id) if not is_our_result(i)]
        source_hash = hashlib.sha256("\n".join(sorted(i["sop_uid"] for i in instances)).encode()).hexdigest()
        study_uid = self.client.study_uid(study_id)
        known = self.state["studies"].get(study_uid)
        if not instances or (known and known.get("source_hash") == source_hash):
            return {"study_uid": study_uid, "status": "skipped", "n_sources": len(instances)}
        tmp = Path(tempfile.mkdtemp(prefix="study-", dir=self.work_dir))
        try:
            src = tmp / "in"
            src.mkdir()
            for n, inst in enumerate(instances):
                (src / f"{n:05d}.dcm").write_bytes(self.client.download(inst["id"]))

            out = tmp / "out"
            from ictus.pipelines.phi import phi_guard, redact

            try:
                with phi_guard():  # the study's identifying values are redacted from logs and the state file
                    try:
                        result = self.engine.run(src, out)
                    except IctusError as exc:
                        exc.args = (redact(exc),)
                        raise
            except IctusError as exc:
                self.state["studies"][study_uid] = {"source_hash": source_hash, "status": "failed",
                                                    "exit_code": exc.exit_code, "error": str(exc)}
                log.warning("event=triage_failed study=%s exit_code=%s", study_uid, exc.exit_code)
                return {"study_uid": study_uid, "status": "failed", "exit_code": exc.exit_code}
            results = prepare_results(result.outputs, study_uid, out, self.send_report)
            for _kind, path, _uid in results:
                self.client.upload(Path(path).read_bytes())
            record = {"source_hash": source_hash, "status": "done", "priority": result.findings.priority.value,
                      "results": [uid for _k, _p, uid in results]}
            self.state["studies"][study_uid] = record
            self._save_state()
            log.info("event=delivered study=%s instances=%d destination=orthanc-rest", study_uid, len(results))
            return {"study_uid": study_uid, "status": "done", **record}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
