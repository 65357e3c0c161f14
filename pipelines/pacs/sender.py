"""Delivery of results to a PACS by C-STORE: stable UIDs, retry with back-off.

- :func:`stabilise_uids` gives the DICOM outputs of a study UIDs derived from
  the study and the output's place (kind, index), and rewrites every reference
  between them (the SR points at the SEG), so triaging a study again yields
  the same SOP Instance UIDs: a PACS replaces (or keeps) the earlier objects
  instead of storing duplicates.
- :func:`encapsulate_pdf` wraps ``report.pdf`` as an Encapsulated PDF instance
  in the same study.
- :func:`send_files` stores files over one association and reports per-file status.
- :func:`send_with_retry` and :func:`backoff_delay_s` retry with exponential back-off.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ictus.imaging.errors import OutputError
from ictus.imaging.uids import UID_ROOT

log = logging.getLogger(__name__)

DICOM_KINDS = ("seg", "sr", "sc", "pdf")
# C-STORE statuses that mean "stored" (success and the warnings of PS3.4 B.2.3)
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DeliveryError(OutputError):
    """Results could not be stored at the destination (exit 6)."""


@dataclass(frozen=True)
class Destination:
    """Where results go: the peer AE and our own calling AE title."""

    ae_title: str
    host: str
    port: int
    calling_aet: str = "ICTUS"
    timeout_s: float = 30.0


def backoff_delay_s(attempt: int, base_s: float = 2.0, max_s: float = 300.0) -> float:
    """Delay before retry number ``attempt`` (0-based): base * 2**attempt, capped at ``max_s``."""
    return float(min(max_s, base_s * (2 ** max(0, attempt))))


def result_files(outputs: Mapping[str, Sequence[str]]) -> list[tuple[str, Path]]:
    """(kind, path) of the DICOM outputs of a triage result (SEG, SR, key images)."""
    files: list[tuple[str, Path]] = []
    for kind in ("seg", "sr", "sc"):
        files.extend((kind, Path(p)) for p in outputs.get(kind, ()) or ())
    return files


def stabilise_uids(files: Sequence[tuple[str, Path]], study_uid: str) -> list[tuple[str, Path, str]]:
    """Rewrite the outputs' Series/SOP Instance UIDs as a function of (study, kind, index).

    Every UI element anywhere in the outputs that held one of the old UIDs
    (references between outputs included) gets the new one. Files are rewritten
    atomically. Returns (kind, path, new SOP Instance UID).
    """
    import pydicom
    from pydicom.uid import generate_uid

    from ictus.imaging.atomic import write_with

    datasets = [(kind, path, pydicom.dcmread(path)) for kind, path in files]
    mapping: dict[str, str] = {}
    counters: dict[str, int] = {}
    for kind, _path, ds in datasets:
        counters[kind] = counters.get(kind, 0) + 1
        idx = counters[kind]
        old_series = str(ds.SeriesInstanceUID)
        if old_series not in mapping:
            mapping[old_series] = generate_uid(UID_ROOT, entropy_srcs=["ictus-series", study_uid, kind])
        mapping[str(ds.SOPInstanceUID)] = generate_uid(UID_ROOT, entropy_srcs=["ictus-sop", study_uid, kind, str(idx)])

    def remap(ds: Any) -> None:
        for elem in ds.iterall():
            if elem.VR != "UI" or elem.value is None:
                continue
            if isinstance(elem.value, (list, pydicom.multival.MultiValue)):
                elem.value = [mapping.get(str(v), str(v)) for v in elem.value]
            elif str(elem.value) in mapping:
                elem.value = mapping[str(elem.value)]

    out: list[tuple[str, Path, str]] = []
    for kind, path, ds in datasets:
        remap(ds)
        if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        write_with(path, functools.partial(ds.save_as, enforce_file_format=True))
        out.append((kind, path, str(ds.SOPInstanceUID)))
    return out


def encapsulate_pdf(pdf_path: str | Path, like: str | Path, out_path: str | Path, study_uid: str) -> tuple[Path, str]:
    """Write ``pdf_path`` as an Encapsulated PDF instance in the study of the DICOM file ``like``.

    Patient and study attributes are copied from ``like`` (one of our outputs);
    the UIDs derive from the study, like :func:`stabilise_uids`. Returns (path, SOP Instance UID).
    """
    import datetime

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from ictus.imaging.atomic import write_with
    from ictus.pipelines.writers.common import MANUFACTURER

    src = pydicom.dcmread(like, stop_before_pixels=True)
    data = Path(pdf_path).read_bytes()
    ds = Dataset()
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if kw in src:
            setattr(ds, kw, src[kw].value)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"  # Encapsulated PDF Storage
    ds.SOPInstanceUID = generate_uid(UID_ROOT, entropy_srcs=["ictus-sop", study_uid, "pdf", "1"])
    ds.SeriesInstanceUID = generate_uid(UID_ROOT, entropy_srcs=["ictus-series", study_uid, "pdf"])
    ds.Modality = "DOC"
    ds.SeriesNumber = 9904
    ds.InstanceNumber = 1
    ds.SeriesDescription = "Ictus triage report"
    ds.Manufacturer = MANUFACTURER
    now = datetime.datetime.now()
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"  # the report names the study
    ds.DocumentTitle = "Ictus head CT triage report"
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = data + (b"\x00" if len(data) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(data)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = Path(out_path)
    write_with(out, lambda tmp: ds.save_as(tmp, enforce_file_format=True))
    return out, str(ds.SOPInstanceUID)


def send_files(paths: Sequence[str | Path], dest: Destination) -> dict[str, int]:
    """C-STORE ``paths`` over one association; returns {path: status} (-1: not sent).

    Raises :class:`DeliveryError` when no association could be made.
    """
    import pydicom
    from pynetdicom import AE

    items = []
    for p in paths:
        ds = pydicom.dcmread(p)
        items.append((str(p), ds))
    ae = AE(ae_title=dest.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout_s
    seen = set()
    for _p, ds in items:
        key = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        if key not in seen:
            seen.add(key)
            ae.add_requested_context(key[0], [key[1]])
    statuses = {p: -1 for p, _ in items}
    if not items:
        return statuses
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        raise DeliveryError(f"cannot associate with {dest.ae_title} at {dest.host}:{dest.port} ({why}); "
                            "check the destination in the listener config")
    try:
        for p, ds in items:
            status = assoc.send_c_store(ds)
            statuses[p] = int(status.Status) if status and "Status" in status else -1
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def stored(status: int) -> bool:
    """True when a C-STORE status means the instance is stored."""
    return status in _STORED


def send_with_retry(paths: Sequence[str | Path], dest: Destination, *, attempts: int = 5, base_s: float = 2.0,
                    max_s: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """Send until every file is stored or ``attempts`` are spent; resends only what failed.

    Raises :class:`DeliveryError` naming how many files were not stored.
    """
    pending = [str(p) for p in paths]
    result: dict[str, int] = {}
    last = ""
    for attempt in range(attempts):
        try:
            statuses = send_files(pending, dest)
        except DeliveryError as exc:
            statuses, last = {}, str(exc)
        result.update(statuses)
        pending = [p for p in pending if not stored(statuses.get(p, -1))]
        if not pending:
            return result
        if attempt + 1 < attempts:
            delay = backoff_delay_s(attempt, base_s, max_s)
            log.warning("%d file(s) not stored at %s; retry in %.1f s", len(pending), dest.ae_title, delay)
            sleep(delay)
    raise DeliveryError(f"{len(pending)} result file(s) not stored at {dest.ae_title} after {attempts} attempts"
                        f"{f' ({last})' if last else ''}; check that the destination is up")
