"""The spool and job queue: atomic instance files, quiet-period completion, states, crash recovery."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ictus.imaging.errors import InvalidInputError
from ictus.pipelines.pacs.spool import Spool, status_from_file


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def instance_bytes(study_uid: str, sop_uid: str | None = None) -> tuple[bytes, str]:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), str(ds.SOPInstanceUID)


def test_store_is_atomic_idempotent_and_readable(tmp_path):
    spool = Spool(tmp_path, now=Clock())
    study = generate_uid()
    data, sop = instance_bytes(study)
    path = spool.store_instance(data, study, None, sop, "STORESCU")
    assert path == tmp_path / "incoming" / study / f"{sop}.dcm"
    assert pydicom.dcmread(path).SOPInstanceUID == sop
    spool.store_instance(data, study, None, sop, "STORESCU")  # same instance again
    assert spool.study(study).n_instances == 1
    assert not list((tmp_path / "tmp").iterdir())
    # the WAL database is a real sqlite file that another process can read
    assert sqlite3.connect(tmp_path / "queue.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("uid", ["../../etc", "1.2.3/4", "", "1.2." + "9" * 70])
def test_bad_uids_are_refused(tmp_path, uid):
    spool = Spool(tmp_path)
    with pytest.raises(InvalidInputError, match="UID"):
        spool.store_instance(b"x", uid, None, "1.2.3")
    with pytest.raises(InvalidInputError, match="UID"):
        spool.store_instance(b"x", "1.2.3", None, uid)


def test_quiet_period_not_release_completes_a_study(tmp_path):
    clock = Clock()
    spool = Spool(tmp_path, now=clock)
    study = generate_uid()
    spool.store_instance(instance_bytes(study)[0], study, None, generate_uid())
    clock.t += 4
    assert spool.mark_complete(5) == []
    spool.store_instance(instance_bytes(study)[0], study, None, generate_uid())  # a second association
    clock.t += 4.9
    assert spool.mark_complete(5) == []  # 8.9 s after the first but 4.9 s after the last instance
    clock.t += 0.2
    assert spool.mark_complete(5) == [study]
    claimed = spool.claim_ready()
    assert claimed.study_uid == study and claimed.n_instances == 2
    assert spool.claim_ready() is None


def test_lifecycle_send_retry_and_late_arrival(tmp_path):
    clock = Clock()
    spool = Spool(tmp_path, now=clock)
    study = generate_uid()
    spool.store_instance(instance_bytes(study)[0], study, None, generate_uid())
    clock.t += 10
    spool.mark_complete(5)
    row = spool.claim_ready()
    assert spool.finish_triage(study, row.round, [("sr", "/r/sr.dcm", "9.1"), ("seg", "/r/seg.dcm", "9.2")], "urgent")
    assert spool.study(study).state == "sending"
    assert [s.study_uid for s in spool.due_for_sending()] == [study]
    spool.mark_sent(study, ["9.2"])
    spool.defer_sending(study, 30, "destination down")
    assert spool.due_for_sending() == []
    assert spool.unsent_results(study) == [("sr", "/r/sr.dcm", "9.1")]
    status = spool.status()
    assert status["last_error"]["message"].endswith("destination down")
    assert status["queue_length"] == 1
    clock.t += 31
    assert spool.due_for_sending()[0].send_attempts == 1
    spool.mark_sent(study, ["9.1"])
    assert spool.study(study).state == "done"
    assert spool.status()["processed"] == 1

    # a late instance re-opens the study for a new round; results keep their UIDs and are sent again
    spool.store_instance(instance_bytes(study)[0], study, None, generate_uid())
    again = spool.study(study)
    assert again.state == "receiving" and again.round == 2 and again.n_instances == 2
    clock.t += 10
    spool.mark_complete(5)
    row = spool.claim_ready()
    assert not spool.finish_triage(study, 1, [], "routine")  # a stale round is ignored
    assert spool.finish_triage(study, row.round, [("sr", "/r2/sr.dcm", "9.1")], "urgent")
    assert spool.unsent_results(study) == [("sr", "/r2/sr.dcm", "9.1")]


def test_failed_triage_is_recorded(tmp_path):
    clock = Clock()
    spool = Spool(tmp_path, now=clock)
    study = generate_uid()
    spool.store_instance(instance_bytes(study)[0], study, None, generate_uid())
    clock.t += 10
    spool.mark_complete(5)
    row = spool.claim_ready()
    spool.fail_triage(study, row.round, "no eligible series: 1 rejected", 3)
    status = status_from_file(tmp_path)
    assert status["failed"] == 1 and status["queue_length"] == 0
    assert spool.study(study).exit_code == 3


def test_recover_after_kill9(tmp_path):
    """A process killed at each point: file renamed but not recorded, study mid-triage, stray temp file."""
    study = generate_uid()
    data, sop = instance_bytes(study)
    data2, sop2 = instance_bytes(study)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from ictus.pipelines.pacs.spool import Spool
        import ictus.pipelines.pacs.spool as sp
        s = Spool({str(tmp_path)!r}, now=lambda: 0.0)
        s.store_instance(open({str(tmp_path / 'a.bin')!r}, 'rb').read(), {study!r}, None, {sop!r})
        s.mark_complete(0)
        s.claim_ready()                                     # now 'triaging'
        (s.tmp / 'x.part').write_bytes(b'half')             # a write in progress
        def crash(*a, **k):
            os.kill(os.getpid(), 9)
        s._record_instance = crash                          # die after the rename, before the row
        s.store_instance(open({str(tmp_path / 'b.bin')!r}, 'rb').read(), {study!r}, None, {sop2!r})
    """)
    (tmp_path / "a.bin").write_bytes(data)
    (tmp_path / "b.bin").write_bytes(data2)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]

    spool = Spool(tmp_path)
    assert spool.study(study).state == "triaging"
    counts = spool.recover()
    assert counts == {"tmp_removed": 1, "indexed": 1, "requeued": 1}
    row = spool.study(study)
    assert row.n_instances == 2 and row.state == "receiving"  # the recovered instance re-opens it
    assert sorted(p.name for p in (tmp_path / "incoming" / study).iterdir()) == sorted([f"{sop}.dcm", f"{sop2}.dcm"])
    assert not list((tmp_path / "tmp").iterdir())
    assert os.path.exists(tmp_path / "queue.sqlite")
