"""The listener in-process: config, who may connect, quiet period, delivery with retry, stable UIDs.

The destination is a pynetdicom storage SCP in this process that records what
it receives (and can fail on purpose). The model is the threshold stand-in.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from ictus.imaging.errors import InvalidInputError
from orthanc_helpers import ThresholdEngine, free_port, wait_for
from ictus.pipelines.pacs.listener import Listener, ListenerConfig, config_from_dict, load_config, metrics_text, prepare_results
from ictus.pipelines.pacs.sender import Destination, DeliveryError, backoff_delay_s, send_with_retry
from ictus.pipelines.triage import TriageOptions

ROOT = Path(__file__).resolve().parent.parent


class Pacs:
    """A storage SCP that records SOP Instance UIDs; ``fail_next`` C-STOREs answer 0xA700."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.fail_next = 0
        self.port = free_port()
        self.ae = AE(ae_title="PACS")
        for cx in StoragePresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax)
        self.server = None

    def _store(self, event):
        if self.fail_next > 0:
            self.fail_next -= 1
            return 0xA700
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def start(self):
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._store)])
        return self

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server = None


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from ictus.imaging.phantom import PhantomSpec, write_phantom

    path = tmp_path_factory.mktemp("ph") / "study"
    write_phantom(PhantomSpec(haemorrhage="IPH", haemorrhage_volume_ml=30, matrix=96, pixel_spacing_mm=2.4,
                              slice_thickness_mm=10, seed=301), path)
    return path


def _config(tmp_path, pacs: Pacs | None, **kw) -> ListenerConfig:
    base = dict(ae_title="ICTUS", port=free_port(), allowed_calling_aets=("STORESCU",), quiet_period_s=0.5,
                spool_dir=str(tmp_path / "spool"), poll_interval_s=0.1, retry_base_s=0.2, retry_max_s=1.0,
                destination=Destination("PACS", "127.0.0.1", pacs.port, "ICTUS", 10) if pacs else None,
                triage=TriageOptions(fast=True, threads=1))
    base.update(kw)
    return ListenerConfig(**base)


def _send(port: int, files, aet="STORESCU", called="ICTUS"):
    ae = AE(ae_title=aet)
    ae.add_requested_context(Verification)
    for ds in files:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    statuses = [int(assoc.send_c_store(ds).Status) for ds in files]
    assoc.release()
    return statuses


def test_example_config_and_key_checks(tmp_path):
    cfg = load_config(ROOT / "examples" / "listener.toml")
    assert cfg.ae_title == "ICTUS" and cfg.port == 11112 and cfg.quiet_period_s == 5
    assert cfg.allowed_calling_aets == ("STORESCU", "ORTHANC")
    assert cfg.destination == Destination("ORTHANC", "127.0.0.1", 4242, "ICTUS", 30.0)
    with pytest.raises(InvalidInputError, match="unknown key"):
        config_from_dict({"listener": {"allowed_calling_aets": [], "spool_dir": "x", "quiet_period": 5}})
    with pytest.raises(InvalidInputError, match="spool_dir"):
        config_from_dict({"listener": {"allowed_calling_aets": []}})
    with pytest.raises(InvalidInputError, match="backend 'tensorrt'"):
        config_from_dict({"listener": {"allowed_calling_aets": [], "spool_dir": "x"}, "triage": {"backend": "tensorrt"}})
    with pytest.raises(InvalidInputError, match="port"):
        config_from_dict({"listener": {"allowed_calling_aets": [], "spool_dir": "x"},
                          "destination": {"ae_title": "X", "host": "h"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[listener\n")
    with pytest.raises(InvalidInputError, match="TOML"):
        load_config(bad)


def test_backoff_doubles_and_is_capped():
    assert [backoff_delay_s(i, 2, 30) for i in range(6)] == [2, 4, 8, 16, 30, 30]


def test_who_may_connect(tmp_path, caplog):
    cfg = _config(tmp_path, None, allowed_calling_aets=("STORESCU", "MODALITY"),
                  allowed_hosts={"MODALITY": ("10.9.9.9",)})
    listener = Listener(cfg, engine_factory=ThresholdEngine)
    listener.start()
    try:
        caplog.set_level("WARNING", logger="ictus.pipelines.pacs.listener")

        def echo(aet, called="ICTUS"):
            ae = AE(ae_title=aet)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", listener.bound_port, ae_title=called)
            ok = assoc.is_established
            rejected = assoc.is_rejected
            if ok:
                status = assoc.send_c_echo()
                assoc.release()
                return int(status.Status)
            return "rejected" if rejected else "failed"

        assert echo("STORESCU") == 0
        assert echo("INTRUDER") == "rejected"
        assert echo("MODALITY") == "rejected"  # right AE title, wrong host
        assert echo("STORESCU", called="SOMEONE") == "rejected"
        lines = [r.getMessage() for r in caplog.records if "association_rejected" in r.getMessage()]
        assert any("calling_aet=INTRUDER" in ln and "reason=calling_aet_not_allowed" in ln for ln in lines)
        assert any("calling_aet=MODALITY" in ln and "reason=host_not_allowed" in ln for ln in lines)
        assert any("reason=called_aet_unknown" in ln for ln in lines)
        assert listener.status()["counters"]["associations_rejected"] == 3
        assert "ictus_associations_rejected_total 3" in metrics_text(listener.status())
    finally:
        listener.stop()


def test_receive_triage_deliver_with_retry(tmp_path, phantom):
    pacs = Pacs().start()
    pacs.fail_next = 2  # the first two C-STOREs fail: the sender retries after a back-off
    listener = Listener(_config(tmp_path, pacs), engine_factory=ThresholdEngine)
    listener.start()
    try:
        files = [pydicom.dcmread(p) for p in sorted(phantom.rglob("*.dcm"))]
        half = len(files) // 2
        assert _send(listener.bound_port, files[:half]) == [0] * half
        assert _send(listener.bound_port, files[half:]) == [0] * (len(files) - half)  # a second association
        study = str(files[0].StudyInstanceUID)
        wait_for(lambda: listener.spool.study(study).state == "done", 120, "delivery")
        row = listener.spool.study(study)
        assert row.n_instances == len(files) and row.round == 1  # one study, triaged once
        expected = {u for _k, _p, u in listener.spool._db.execute(
            "SELECT kind, path, sop_uid FROM results WHERE study_uid=?", (study,))}
        assert set(pacs.received) == expected and len(pacs.received) == len(expected)
        assert listener.spool.status()["last_error"] is not None  # the failed attempt is reported
    finally:
        listener.stop()
        pacs.stop()


def test_destination_down_then_up(tmp_path, phantom):
    pacs = Pacs()  # not started yet
    listener = Listener(_config(tmp_path, pacs), engine_factory=ThresholdEngine)
    listener.start()
    try:
        files = [pydicom.dcmread(p) for p in sorted(phantom.rglob("*.dcm"))]
        _send(listener.bound_port, files)
        study = str(files[0].StudyInstanceUID)
        wait_for(lambda: (listener.spool.study(study).send_attempts or 0) >= 2, 120, "two failed attempts")
        assert listener.spool.study(study).state == "sending"
        pacs.start()
        wait_for(lambda: listener.spool.study(study).state == "done", 60, "delivery once the PACS is up")
        assert len(pacs.received) == len(set(pacs.received)) > 0
    finally:
        listener.stop()
        pacs.stop()


def test_results_keep_their_uids_when_triaged_again(tmp_path, phantom):
    import pydicom

    engine = ThresholdEngine(TriageOptions(fast=True, threads=1))
    study = str(pydicom.dcmread(next(phantom.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
    runs = []
    for n in (1, 2):
        out = tmp_path / f"r{n}"
        result = engine.run(phantom, out)
        runs.append(prepare_results(result.outputs, study, out))
    assert [(k, u) for k, _p, u in runs[0]] == [(k, u) for k, _p, u in runs[1]]
    kinds = {k for k, _p, _u in runs[0]}
    assert {"seg", "sr", "sc", "pdf"} <= kinds
    by_kind = {k: p for k, p, _u in runs[1]}
    seg = pydicom.dcmread(by_kind["seg"])
    sr = pydicom.dcmread(by_kind["sr"])
    pdf = pydicom.dcmread(by_kind["pdf"])
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == pdf.StudyInstanceUID == study
    assert seg.file_meta.MediaStorageSOPInstanceUID == seg.SOPInstanceUID
    # the SR still points at the SEG it describes, under its new UID
    refs = {str(e.value) for e in sr.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
    assert str(seg.SOPInstanceUID) in refs
    assert pdf.EncapsulatedDocument[:5] == b"%PDF-"


def test_send_with_retry_gives_up_with_a_clear_error(tmp_path, phantom):
    files = sorted(phantom.rglob("*.dcm"))[:2]
    dest = Destination("PACS", "127.0.0.1", free_port(), "ICTUS", 5)
    sleeps = []
    with pytest.raises(DeliveryError, match="not stored at PACS after 3 attempts"):
        send_with_retry(files, dest, attempts=3, base_s=1, sleep=sleeps.append)
    assert sleeps == [1, 2]
    pacs = Pacs().start()
    try:
        pacs.fail_next = 1
        statuses = send_with_retry(files, Destination("PACS", "127.0.0.1", pacs.port), attempts=3, base_s=0,
                                   sleep=lambda s: None)
        assert all(s == 0 for s in statuses.values())
        assert len(pacs.received) == 2
    finally:
        pacs.stop()


def test_a_failing_study_is_recorded_and_the_listener_goes_on(tmp_path, phantom):
    from ictus.imaging.errors import ModelError

    def broken_engine(options):
        raise ModelError("model blast-ct has no weights in /nowhere; run ictus models pull blast-ct")

    listener = Listener(_config(tmp_path, None), engine_factory=broken_engine)
    listener.start()
    try:
        files = [pydicom.dcmread(p) for p in sorted(phantom.rglob("*.dcm"))[:3]]
        assert _send(listener.bound_port, files) == [0, 0, 0]
        study = str(files[0].StudyInstanceUID)
        wait_for(lambda: listener.spool.study(study).state == "failed", 60, "the failure to be recorded")
        row = listener.spool.study(study)
        assert row.exit_code == ModelError.exit_code and "no weights" in row.error
        status = listener.status()
        assert status["failed"] == 1 and "no weights" in status["last_error"]["message"]
        assert _send(listener.bound_port, files[:1]) == [0]  # still receiving
    finally:
        listener.stop()
