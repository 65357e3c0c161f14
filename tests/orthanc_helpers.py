"""Helpers for tests that drive real DICOM parts: Orthanc, dcmtk's storescu/echoscu, ``ictus listen``.

Everything listens on 127.0.0.1 on free ports, is configured from files in a
temporary folder and is stopped by PID. ``ThresholdEngine`` is a TriageEngine
whose model is a Hounsfield threshold (everything else is the real pipeline:
scan, series choice, volume, brain, QC, midline, measurements, findings,
writers), so plumbing tests produce real SEG/SR/SC without minutes of
inference on a loaded 2-core machine.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode} before opening port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def stop_pid(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
    """Stop a process we started, by its PID (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


# -- Orthanc -------------------------------------------------------------------------
@dataclass
class Orthanc:
    proc: subprocess.Popen
    http_port: int
    dicom_port: int
    aet: str
    folder: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def study_instances(self, study_uid: str) -> list[dict]:
        """Every instance of a study, with its main tags (Modality from the series)."""
        req = urllib.request.Request(self.url + "/tools/lookup", data=study_uid.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            found = [x for x in json.loads(r.read()) if x["Type"] == "Study"]
        if not found:
            return []
        out = []
        for series in self.get(f"/studies/{found[0]['ID']}/series"):
            for inst in self.get(f"/series/{series['ID']}/instances"):
                out.append({"modality": series["MainDicomTags"].get("Modality"),
                            "sop_uid": inst["MainDicomTags"].get("SOPInstanceUID"),
                            "series_description": series["MainDicomTags"].get("SeriesDescription")})
        return out

    def stop(self) -> None:
        stop_pid(self.proc)


def start_orthanc(folder: Path, modalities: dict[str, tuple[str, str, int]], *, aet: str = "ORTHANC",
                  stable_age_s: int = 1) -> Orthanc:
    """Start Orthanc from a config in ``folder``: loopback only, DICOM only from ``modalities``."""
    exe = shutil.which("Orthanc")
    if exe is None:
        import pytest

        pytest.skip("Orthanc is not installed (apt-get install orthanc; make sysdeps)")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "ictus-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomModalities": {name: list(v) for name, v in modalities.items()},
        "StableAge": stable_age_s,
        "OverwriteInstances": True,
        "SaveJobs": False,
        "HttpThreadsCount": 4,
    }
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    log = open(folder / "orthanc.log", "wb")
    proc = subprocess.Popen([exe, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    try:
        wait_port(http_port, 60, proc)
        wait_port(dicom_port, 30, proc)
    except Exception:
        stop_pid(proc)
        raise
    return Orthanc(proc, http_port, dicom_port, aet, folder)


# -- the listener as a process ----------------------------------------------------------
def write_listener_config(path: Path, *, port: int, spool: Path, dest: Orthanc | None, quiet_period_s: float = 1.0,
                          allowed: tuple[str, ...] = ("STORESCU",), engine: str | None = "orthanc_helpers:ThresholdEngine",
                          status_port: int = 0, models_dir: str | None = None, fast: bool = True,
                          retry_base_s: float = 0.5) -> Path:
    lines = [
        "[listener]", 'ae_title = "ICTUS"', 'host = "127.0.0.1"', f"port = {port}",
        f"allowed_calling_aets = {json.dumps(list(allowed))}", f"quiet_period_s = {quiet_period_s}",
        f'spool_dir = "{spool}"', f"status_port = {status_port}", "poll_interval_s = 0.2", "",
    ]
    if dest is not None:
        lines += ["[destination]", f'ae_title = "{dest.aet}"', 'host = "127.0.0.1"', f"port = {dest.dicom_port}",
                  f"retry_base_s = {retry_base_s}", "retry_max_s = 5", ""]
    lines += ["[triage]", f"fast = {'true' if fast else 'false'}", "threads = 1"]
    if models_dir:
        lines.append(f'models_dir = "{models_dir}"')
    if engine:
        lines.append(f'engine = "{engine}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def start_listener(config: Path, port: int, log_path: Path) -> subprocess.Popen:
    """``ictus -v listen --config CONFIG`` in a subprocess; returns once the port accepts."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "ictus.pipelines.cli", "-v", "listen", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        wait_port(port, 120, proc)
    except Exception:
        stop_pid(proc, signal.SIGKILL)
        raise
    return proc


def storescu(port: int, *paths: Path, aet: str = "STORESCU", called: str = "ICTUS") -> subprocess.CompletedProcess:
    """dcmtk's storescu: send every ``*.dcm`` under ``paths``."""
    exe = shutil.which("storescu")
    if exe is None:
        import pytest

        pytest.skip("dcmtk is not installed (make sysdeps)")
    return subprocess.run([exe, "-aet", aet, "-aec", called, "+sd", "+r", "+sp", "*.dcm", "-nh",
                           "127.0.0.1", str(port), *map(str, paths)], capture_output=True, text=True, timeout=300)


def echoscu(port: int, *, aet: str, called: str = "ICTUS") -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aet", aet, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    """Poll ``predicate()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


# -- a model stand-in ---------------------------------------------------------------------
class _ThresholdEnsemble:
    """Labels the largest connected blob of 55-90 HU inside the head as IPH."""

    def __init__(self, class_names: tuple[str, ...]) -> None:
        self.class_names = tuple(class_names)

    def segment(self, volume: Any, fast: bool = False) -> Any:
        from scipy import ndimage

        from ictus.models.types import Segmentation

        hu = volume.array()
        mask = (hu >= 55) & (hu <= 90)
        mask = ndimage.binary_opening(mask, iterations=1)
        labels, n = ndimage.label(mask)
        lab = np.zeros(hu.shape, np.uint8)
        if n:
            sizes = ndimage.sum(mask, labels, range(1, n + 1))
            lab[labels == (int(np.argmax(sizes)) + 1)] = self.class_names.index("IPH") if "IPH" in self.class_names else 1
        probs = np.zeros((len(self.class_names),) + hu.shape, np.float16)
        for c in range(len(self.class_names)):
            probs[c] = lab == c
        return Segmentation(probabilities=probs, labels=lab, agreement=np.ones(hu.shape, np.float16),
                            class_names=self.class_names, model_id="threshold-stub", model_version="0",
                            members_used=("threshold",), info={"method": "HU threshold stand-in for tests"})


def ThresholdEngine(options: Any) -> Any:  # noqa: N802 - a factory named like the class it makes
    """A real TriageEngine whose ensemble is :class:`_ThresholdEnsemble` (no weights needed)."""
    from ictus.pipelines.triage import TriageEngine

    engine = TriageEngine(options)
    engine._ensemble = _ThresholdEnsemble(engine.card.class_names)
    return engine
