"""The listener's spool: instances on disk (atomic writes) and a persistent job queue (sqlite, WAL).

Layout of ``root``:

- ``incoming/<StudyInstanceUID>/<SOPInstanceUID>.dcm``: every received instance
  (written to ``tmp/`` first, fsynced, then renamed into place);
- ``results/<StudyInstanceUID>/``: the triage outputs of the study;
- ``queue.sqlite``: the job queue (WAL, ``synchronous=FULL``).

A study moves through these states::

    receiving --(quiet period, no new instance)--> ready --(a worker claims it)--> triaging
      --> sending --(every result stored at the destination)--> done
      --> failed (triage raised; error and exit code recorded)

A new instance for a study that is ``ready``, ``triaging``, ``sending``,
``done`` or ``failed`` puts it back to ``receiving`` (its round number goes up),
so late arrivals are triaged again; results keep their UIDs (see
:func:`ictus.pipelines.pacs.sender.stabilise_uids`), so the PACS replaces rather than
duplicates them.

Crash safety: a file is renamed into ``incoming`` before its row is committed,
and the C-STORE response is sent only after both. :meth:`Spool.recover` (run at
every start) removes temporary files, indexes instances whose row was lost,
sends ``triaging`` studies back to ``ready`` and leaves ``sending`` studies to
the sender, which sends only what is not yet marked sent.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ictus.imaging.atomic import atomic_path
from ictus.imaging.errors import InvalidInputError, OutputError

log = logging.getLogger(__name__)

STATES = ("receiving", "ready", "triaging", "sending", "done", "failed")
_UID_RE = re.compile(r"^[0-9.]{1,64}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    round INTEGER NOT NULL DEFAULT 1,
    n_instances INTEGER NOT NULL DEFAULT 0,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    triage_started_at REAL,
    triaged_at REAL,
    delivered_at REAL,
    send_attempts INTEGER NOT NULL DEFAULT 0,
    next_send_at REAL NOT NULL DEFAULT 0,
    priority TEXT,
    exit_code INTEGER,
    error TEXT
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT,
    path TEXT NOT NULL,
    received_at REAL NOT NULL,
    calling_aet TEXT
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS results (
    study_uid TEXT NOT NULL,
    round INTEGER NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sent_at REAL,
    PRIMARY KEY (study_uid, sop_uid)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    study_uid TEXT,
    kind TEXT NOT NULL,
    message TEXT
);
"""


@dataclass(frozen=True)
class StudyRow:
    """One study of the queue."""

    study_uid: str
    state: str
    round: int
    n_instances: int
    last_received_at: float
    send_attempts: int = 0
    error: str | None = None
    exit_code: int | None = None


def check_uid(uid: str, what: str) -> str:
    """A DICOM UID safe to use as a file name, or InvalidInputError."""
    uid = str(uid or "").strip().rstrip("\x00")
    if not _UID_RE.match(uid):
        raise InvalidInputError(f"{what} {uid[:70]!r} is not a valid DICOM UID; the instance was not stored")
    return uid


class Spool:
    """Spool folder plus sqlite queue; safe to share between threads of one process.

    ``now`` is injectable for tests (a callable returning seconds).
    """

    def __init__(self, root: str | os.PathLike, *, now: Any = time.time) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.results = self.root / "results"
        self.tmp = self.root / "tmp"
        self.now = now
        try:
            for d in (self.incoming, self.results, self.tmp):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the spool {self.root} ({exc.strerror}); check spool_dir") from exc
        self.db_path = self.root / "queue.sqlite"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _event(self, db: sqlite3.Connection, study_uid: str | None, kind: str, message: str = "") -> None:
        db.execute("INSERT INTO events(at, study_uid, kind, message) VALUES (?,?,?,?)",
                   (self.now(), study_uid, kind, message[:500]))

    # -- receiving -------------------------------------------------------------
    def study_dir(self, study_uid: str) -> Path:
        return self.incoming / check_uid(study_uid, "StudyInstanceUID")

    def result_dir(self, study_uid: str) -> Path:
        return self.results / check_uid(study_uid, "StudyInstanceUID")

    def store_instance(self, data: bytes, study_uid: str, series_uid: str | None, sop_uid: str,
                       calling_aet: str | None = None) -> Path:
        """Write one instance (DICOM file bytes) atomically and record it; returns its path.

        Idempotent: the same SOP Instance UID again replaces the file and keeps one row.
        """
        study_uid = check_uid(study_uid, "StudyInstanceUID")
        sop_uid = check_uid(sop_uid, "SOPInstanceUID")
        dest = self.incoming / study_uid / f"{sop_uid}.dcm"
        try:
            dest.parent.mkdir(exist_ok=True)
            # written in tmp/ (private, fsynced), renamed into place, the folder fsynced
            with atomic_path(dest, prefix=f"{sop_uid}.", suffix=".part", tmp_dir=self.tmp, readable=False) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            raise OutputError(f"cannot write into the spool {self.root} ({exc.strerror}); check free space") from exc
        self._record_instance(study_uid, series_uid, sop_uid, dest, calling_aet)
        return dest

    def _record_instance(self, study_uid: str, series_uid: str | None, sop_uid: str, path: Path,
                         calling_aet: str | None) -> None:
        now = self.now()
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO instances(sop_uid, study_uid, series_uid, path, received_at, calling_aet) "
                "VALUES (?,?,?,?,?,?)", (sop_uid, study_uid, series_uid, str(path), now, calling_aet))
            n = db.execute("SELECT COUNT(*) FROM instances WHERE study_uid=?", (study_uid,)).fetchone()[0]
            row = db.execute("SELECT state FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO studies(study_uid, state, n_instances, first_received_at, last_received_at) "
                    "VALUES (?,?,?,?,?)", (study_uid, "receiving", n, now, now))
            elif row[0] == "receiving":
                db.execute("UPDATE studies SET n_instances=?, last_received_at=? WHERE study_uid=?", (n, now, study_uid))
            else:
                # a late arrival: triage the study again (results keep their UIDs)
                db.execute(
                    "UPDATE studies SET state='receiving', round=round+1, n_instances=?, last_received_at=?, "
                    "error=NULL, exit_code=NULL WHERE study_uid=?", (n, now, study_uid))
                self._event(db, study_uid, "late_arrival", f"was {row[0]}")

    # -- the queue -------------------------------------------------------------
    def mark_complete(self, quiet_period_s: float) -> list[str]:
        """Studies with no new instance for ``quiet_period_s`` become ``ready``; returns their UIDs."""
        cutoff = self.now() - quiet_period_s
        with self._tx() as db:
            uids = [r[0] for r in db.execute(
                "SELECT study_uid FROM studies WHERE state='receiving' AND last_received_at <= ?", (cutoff,))]
            for uid in uids:
                db.execute("UPDATE studies SET state='ready' WHERE study_uid=?", (uid,))
        return uids

    def claim_ready(self) -> StudyRow | None:
        """Take the oldest ``ready`` study for triage (``triaging``), or None."""
        with self._tx() as db:
            row = db.execute(
                "SELECT study_uid FROM studies WHERE state='ready' ORDER BY last_received_at LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE studies SET state='triaging', triage_started_at=? WHERE study_uid=?",
                       (self.now(), row[0]))
        return self.study(row[0])

    def finish_triage(self, study_uid: str, round_: int, results: Sequence[tuple[str, str, str]],
                      priority: str | None) -> bool:
        """Record the results (kind, path, sop_uid) of a triage round and queue them for sending.

        Returns False (nothing recorded) when the study changed meanwhile (a
        late arrival started a new round): that round will be triaged again.
        """
        with self._tx() as db:
            row = db.execute("SELECT state, round FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            if row is None or row[0] != "triaging" or row[1] != round_:
                return False
            # unsent results of an earlier round are superseded by this round's
            db.execute("DELETE FROM results WHERE study_uid=? AND round<? AND sent_at IS NULL", (study_uid, round_))
            for kind, path, sop_uid in results:
                # stable UIDs: a UID sent in an earlier round is sent again with this round's content
                db.execute(
                    "INSERT INTO results(study_uid, round, kind, path, sop_uid, sent_at) VALUES (?,?,?,?,?,NULL) "
                    "ON CONFLICT(study_uid, sop_uid) DO UPDATE SET round=excluded.round, kind=excluded.kind, "
                    "path=excluded.path, sent_at=NULL", (study_uid, round_, kind, path, sop_uid))
            state = "sending" if results else "done"
            db.execute(
                "UPDATE studies SET state=?, triaged_at=?, priority=?, send_attempts=0, next_send_at=0, "
                "error=NULL, exit_code=NULL, delivered_at=CASE WHEN ?='done' THEN ? ELSE NULL END WHERE study_uid=?",
                (state, self.now(), priority, state, self.now(), study_uid))
            self._event(db, study_uid, "triaged", f"{len(results)} result(s), priority {priority}")
        return True

    def fail_triage(self, study_uid: str, round_: int, error: str, exit_code: int) -> None:
        """Record a failed triage (message without PHI, exit code of the error)."""
        with self._tx() as db:
            db.execute("UPDATE studies SET state='failed', error=?, exit_code=?, triaged_at=? "
                       "WHERE study_uid=? AND state='triaging' AND round=?",
                       (error[:500], exit_code, self.now(), study_uid, round_))
            self._event(db, study_uid, "failed", f"exit {exit_code}: {error}")

    def due_for_sending(self) -> list[StudyRow]:
        """Studies in ``sending`` whose next attempt is due."""
        with self._lock:
            uids = [r[0] for r in self._db.execute(
                "SELECT study_uid FROM studies WHERE state='sending' AND next_send_at <= ? ORDER BY triaged_at",
                (self.now(),))]
        return [s for s in (self.study(u) for u in uids) if s is not None]

    def unsent_results(self, study_uid: str) -> list[tuple[str, str, str]]:
        """(kind, path, sop_uid) of the results of a study not yet stored at the destination."""
        with self._lock:
            return [tuple(r) for r in self._db.execute(
                "SELECT kind, path, sop_uid FROM results WHERE study_uid=? AND sent_at IS NULL ORDER BY kind, path",
                (study_uid,))]

    def mark_sent(self, study_uid: str, sop_uids: Sequence[str]) -> None:
        """Mark results as stored at the destination; the study is ``done`` when none is left."""
        now = self.now()
        with self._tx() as db:
            db.executemany("UPDATE results SET sent_at=? WHERE study_uid=? AND sop_uid=?",
                           [(now, study_uid, u) for u in sop_uids])
            left = db.execute("SELECT COUNT(*) FROM results WHERE study_uid=? AND sent_at IS NULL",
                              (study_uid,)).fetchone()[0]
            if left == 0:
                n = db.execute("UPDATE studies SET state='done', delivered_at=? WHERE study_uid=? AND state='sending'",
                               (now, study_uid)).rowcount
                if n:
                    self._event(db, study_uid, "delivered")

    def defer_sending(self, study_uid: str, delay_s: float, error: str) -> None:
        """A failed delivery: try again after ``delay_s``."""
        with self._tx() as db:
            db.execute("UPDATE studies SET send_attempts=send_attempts+1, next_send_at=?, error=? "
                       "WHERE study_uid=? AND state='sending'", (self.now() + delay_s, error[:500], study_uid))
            self._event(db, study_uid, "send_retry", f"in {delay_s:.1f} s: {error}")

    # -- recovery and status ------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Bring the queue back in line with the disk after a crash (run before serving)."""
        removed = 0
        for part in self.tmp.iterdir():
            part.unlink(missing_ok=True)
            removed += 1
        with self._tx() as db:
            requeued = db.execute("UPDATE studies SET state='ready' WHERE state='triaging'").rowcount
            if requeued:
                self._event(db, None, "recovered", f"{requeued} study(ies) back to ready")
        with self._lock:
            known = {r[0] for r in self._db.execute("SELECT path FROM instances")}
        indexed = 0
        for path in sorted(self.incoming.glob("*/*.dcm")):
            if str(path) in known:
                continue
            uids = _read_uids(path)
            if uids is None:
                log.warning("spool file %s is unreadable; moved aside", path.name)
                os.replace(path, path.with_suffix(".unreadable"))
                continue
            self._record_instance(uids[0], uids[1], uids[2], path, None)
            indexed += 1
        counts = {"tmp_removed": removed, "indexed": indexed, "requeued": requeued}
        log.info("spool recovered: %s", counts)
        return counts

    def study(self, study_uid: str) -> StudyRow | None:
        with self._lock:
            r = self._db.execute(
                "SELECT study_uid, state, round, n_instances, last_received_at, send_attempts, error, exit_code "
                "FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
        return StudyRow(*r) if r else None

    def studies(self) -> list[StudyRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT study_uid, state, round, n_instances, last_received_at, send_attempts, error, exit_code "
                "FROM studies ORDER BY first_received_at").fetchall()
        return [StudyRow(*r) for r in rows]

    def status(self) -> dict[str, Any]:
        """Queue length, processed, failed, last error and counts (for --status and /health)."""
        return read_status(self._db, self._lock)


def read_status(db: sqlite3.Connection, lock: Any = None) -> dict[str, Any]:
    """The status dictionary from an open queue database."""
    lock = lock or threading.RLock()
    with lock:
        by_state = dict(db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall())
        n_inst = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        n_res, n_sent = db.execute("SELECT COUNT(*), COUNT(sent_at) FROM results").fetchone()
        last = db.execute("SELECT at, study_uid, message FROM events WHERE kind IN ('failed','send_retry') "
                          "ORDER BY id DESC LIMIT 1").fetchone()
        lat = [r[0] for r in db.execute(
            "SELECT delivered_at - last_received_at FROM studies WHERE state='done' AND delivered_at IS NOT NULL")]
    queue = sum(by_state.get(s, 0) for s in ("receiving", "ready", "triaging", "sending"))
    return {
        "queue_length": queue,
        "studies": {s: by_state.get(s, 0) for s in STATES},
        "processed": by_state.get("done", 0),
        "failed": by_state.get("failed", 0),
        "instances_received": n_inst,
        "results": n_res,
        "results_sent": n_sent,
        "last_error": ({"at": last[0], "study_uid": last[1], "message": last[2]} if last else None),
        "median_latency_s": (sorted(lat)[len(lat) // 2] if lat else None),
    }


def status_from_file(spool_dir: str | os.PathLike) -> dict[str, Any]:
    """Read the status of a spool without opening it for writing (``ictus listen --status``)."""
    path = Path(spool_dir) / "queue.sqlite"
    if not path.exists():
        raise InvalidInputError(f"no queue at {path}; check spool_dir in the listener config")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return read_status(db)
    finally:
        db.close()


def _read_uids(path: Path) -> tuple[str, str | None, str] | None:
    """(study, series, SOP instance) UIDs of a spooled file, or None when unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        return check_uid(ds.StudyInstanceUID, "StudyInstanceUID"), str(ds.get("SeriesInstanceUID", "")) or None, \
            check_uid(ds.SOPInstanceUID, "SOPInstanceUID")
    except Exception:  # noqa: BLE001 - any unreadable file is set aside, not fatal
        return None
