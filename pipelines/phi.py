"""PHI guard: patient-identifying values of the study in hand never reach a log, a warning or an error line.

The DICOM reader (:mod:`ictus.imaging.dicom_io`) hands every header it reads to the
observers registered with :func:`ictus.imaging.dicom_io.add_header_observer`; this
module's observer (:func:`observe_dataset`) takes the identifying values
(:data:`IDENTIFYING_KEYWORDS`: patient name and its components, IDs, birth
date, accession number, institution, physicians...) and keeps them, without
logging them, in the open *scopes*. While a value is held, it is replaced by
``[redacted]``:

- in every log record (a log-record factory formats the message, the
  exception text and the stack text at creation and redacts them, so every
  handler, file or stream, sees only the redacted text);
- in Python warnings (``logging.captureWarnings(True)`` routes them through
  the ``py.warnings`` logger, i.e. through the same factory);
- in text the entry points print or store themselves (:func:`redact`): CLI
  error lines, batch summaries, the listener's spool.

Scopes: :func:`phi_guard` opens one (per CLI run, per batch study, per
listener study, per notebook call) and drops its values when it closes. A
value observed in a thread that has no scope of its own (the reader's thread
pool) goes to every open scope. :func:`remember`/:func:`forget` hold values
under a key (the listener, between C-STORE and triage).

The DICOM outputs themselves still carry the patient's name and IDs (they
join the source study); only logs, warnings, errors and summaries are redacted.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import re
import threading
import traceback
import warnings
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)

REDACTED = "[redacted]"

#: Header attributes whose values identify the patient (or the place of care).
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "InstitutionAddress",
    "OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientAddress",
    "PatientTelephoneNumbers", "MilitaryRank", "MedicalRecordLocator", "IssuerOfPatientID",
    "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName",
    "RequestingPhysician", "InstitutionalDepartmentName", "StationName",
)
_PERSON_NAME_KEYWORDS = {
    "PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "ReferringPhysicianName",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician",
}
#: Values shorter than this are ignored (a one-letter initial would wreck every log line).
MIN_LENGTH = 2
#: Values shorter than this (and all-digit values) are redacted only as whole tokens.
SUBSTRING_MIN_LENGTH = 4
#: The highdicom warning that quotes a single-component patient name (shown once, redacted).
PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


class _Registry:
    """The held values: per scope, with a compiled pattern of their union (rebuilt on change)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.scopes: dict[Any, set[str]] = {}
        self.refs: dict[Any, int] = {}
        self.local = threading.local()
        self._pattern: re.Pattern[str] | None = None
        self._dirty = False

    def changed(self) -> None:
        self._dirty = True

    def pattern(self) -> re.Pattern[str] | None:
        with self.lock:
            if self._dirty:
                values = set().union(*self.scopes.values()) if self.scopes else set()
                self._pattern = _compile(values)
                self._dirty = False
            return self._pattern


_REGISTRY = _Registry()
_COUNTER = itertools.count(1)
_INSTALL_LOCK = threading.Lock()
_installed = False


def _compile(values: Iterable[str]) -> re.Pattern[str] | None:
    parts = []
    for value in sorted(set(values), key=len, reverse=True):  # longest first: the full name before its parts
        escaped = re.escape(value)
        if len(value) < SUBSTRING_MIN_LENGTH or value.isdigit():
            parts.append(rf"(?<![^\W_]){escaped}(?![^\W_])")
        else:
            parts.append(escaped)
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def _variants(keyword: str, text: str) -> set[str]:
    """The strings under which a header value may show up in text."""
    text = text.strip().strip("\x00").strip()
    out = {text}
    if keyword in _PERSON_NAME_KEYWORDS or "^" in text:
        for group in text.split("="):  # alphabetic, ideographic, phonetic representations
            comps = [c.strip() for c in group.split("^") if c.strip()]
            out.add(group.strip())
            out.update(comps)
            out.add(" ".join(comps))
            out.add(", ".join(comps))
            out.update(w for c in comps for w in c.split())
    if keyword == "PatientBirthDate" and re.fullmatch(r"\d{8}", text):
        out.update({f"{text[:4]}-{text[4:6]}-{text[6:]}", f"{text[6:]}.{text[4:6]}.{text[:4]}",
                    f"{text[4:6]}/{text[6:]}/{text[:4]}", f"{text[6:]}/{text[4:6]}/{text[:4]}"})
    return {v for v in out if len(v) >= MIN_LENGTH}


def identifiers_from_dataset(ds: Any) -> set[str]:
    """The identifying values of a pydicom dataset (header keywords and name components); never logs them."""
    found: set[str] = set()
    for keyword in IDENTIFYING_KEYWORDS:
        try:
            elem = ds.get(keyword) if hasattr(ds, "get") else None
        except Exception:  # noqa: BLE001 - a malformed value must not stop the reader
            continue
        if elem is None:
            continue
        values = elem if isinstance(elem, (list, tuple)) or type(elem).__name__ == "MultiValue" else [elem]
        for value in values:
            try:
                text = str(value)
            except Exception:  # noqa: BLE001
                continue
            if text:
                found |= _variants(keyword, text)
    try:
        for item in ds.get("OtherPatientIDsSequence") or ():
            for kw in ("PatientID", "IssuerOfPatientID"):
                if item.get(kw):
                    found |= _variants(kw, str(item.get(kw)))
    except Exception:  # noqa: BLE001
        pass
    return found


def _current_scopes() -> list[Any]:
    return list(getattr(_REGISTRY.local, "stack", ()) or ())


def add_identifiers(values: Iterable[str], key: Any = None) -> None:
    """Hold ``values``: in scope ``key``, else this thread's innermost scope, else every open scope."""
    values = {str(v) for v in values if v and len(str(v)) >= MIN_LENGTH}
    if not values:
        return
    with _REGISTRY.lock:
        if key is not None:
            targets = [key]
            _REGISTRY.scopes.setdefault(key, set())
        else:
            mine = _current_scopes()
            targets = mine[-1:] if mine else list(_REGISTRY.scopes)
        for target in targets:
            held = _REGISTRY.scopes.get(target)
            if held is not None and not values <= held:
                held |= values
                _REGISTRY.changed()


def observe_dataset(ds: Any) -> None:
    """Header observer: hold the identifying values of ``ds`` in the open scopes (nothing when none is open)."""
    if not _REGISTRY.scopes:
        return
    add_identifiers(identifiers_from_dataset(ds))


def remember(key: Any, ds_or_values: Any) -> None:
    """Hold identifying values (a dataset, or strings) under ``key`` until :func:`forget` (the listener)."""
    install()
    values = ds_or_values if isinstance(ds_or_values, (set, frozenset, list, tuple)) \
        else identifiers_from_dataset(ds_or_values)
    add_identifiers(values, key=key)


def forget(key: Any) -> None:
    """Drop the values held under ``key`` (unless a guard on that key is still open)."""
    with _REGISTRY.lock:
        if _REGISTRY.refs.get(key, 0) == 0 and _REGISTRY.scopes.pop(key, None) is not None:
            _REGISTRY.changed()


def held_count() -> int:
    """How many distinct values are held now (for tests and /metrics; never the values)."""
    with _REGISTRY.lock:
        return len(set().union(*_REGISTRY.scopes.values())) if _REGISTRY.scopes else 0


def redact(text: Any) -> str:
    """``text`` with every held identifying value replaced by ``[redacted]``."""
    s = text if isinstance(text, str) else str(text)
    pattern = _REGISTRY.pattern()
    return pattern.sub(REDACTED, s) if pattern is not None and s else s


def redact_obj(value: Any) -> Any:
    """:func:`redact` applied to every string in a JSON-like value (dicts, lists)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_obj(v) for v in value)
    return value


# -- logging ---------------------------------------------------------------------------------
def _redact_record(record: logging.LogRecord) -> None:
    if _REGISTRY.pattern() is None:
        return
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: keep what we have, redacted
        message = f"{record.msg} {record.args!r}"
    record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
        record.exc_info = None  # the formatter uses exc_text; the raw exception keeps the values
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _wrap_factory(factory: Any) -> Any:
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        _redact_record(record)
        return record

    make_record.__ictus_phi__ = True  # type: ignore[attr-defined]
    return make_record


class PhiFilter(logging.Filter):
    """A logging filter that redacts held values (for handlers fed records made before :func:`install`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


class _PersonNameWarningOnce(logging.Filter):
    """Lets highdicom's single-component person-name warning through once per process (it comes
    once per DICOM object written, and says nothing a radiologist can act on)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen = False
        self._pattern = re.compile(PERSON_NAME_WARNING)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern.search(record.getMessage()):
            if self._seen:
                return False
            self._seen = True
        return True


def install() -> None:
    """Route warnings into logging and redact every log record made from now on (idempotent).

    The highdicom warning about a single-component person name is shown once
    (redacted), not once per object written.
    """
    global _installed
    with _INSTALL_LOCK:
        if not getattr(logging.getLogRecordFactory(), "__ictus_phi__", False):
            logging.setLogRecordFactory(_wrap_factory(logging.getLogRecordFactory()))
        if warnings.showwarning is not getattr(logging, "_showwarning", None):
            # another tool (a test runner, a notebook) replaced showwarning since: route through logging again
            logging.captureWarnings(False)
            logging.captureWarnings(True)
        if not _installed:
            warnings.filterwarnings("once", message=PERSON_NAME_WARNING, category=UserWarning)
            logging.getLogger("py.warnings").addFilter(_PersonNameWarningOnce())
            from ictus.imaging.dicom_io import add_header_observer

            add_header_observer(observe_dataset)
            _installed = True


@contextlib.contextmanager
def phi_guard(identifiers: Iterable[str] = (), *, key: Any = None) -> Iterator[Any]:
    """Redact the identifying values of the study read inside this block (and ``identifiers``).

    Opens a scope (``key``, or a fresh one), makes it this thread's current
    scope, so headers read inside the block add their values to it, and drops
    the values on exit. Yields the scope key.
    """
    install()
    scope = key if key is not None else ("guard", next(_COUNTER))
    with _REGISTRY.lock:
        _REGISTRY.scopes.setdefault(scope, set())
        _REGISTRY.refs[scope] = _REGISTRY.refs.get(scope, 0) + 1
    stack = getattr(_REGISTRY.local, "stack", None)
    if stack is None:
        stack = _REGISTRY.local.stack = []
    stack.append(scope)
    try:
        add_identifiers(identifiers, key=scope)
        yield scope
    finally:
        stack.pop()
        with _REGISTRY.lock:
            _REGISTRY.refs[scope] -= 1
            if _REGISTRY.refs[scope] <= 0:
                _REGISTRY.refs.pop(scope, None)
                _REGISTRY.scopes.pop(scope, None)
                _REGISTRY.changed()
