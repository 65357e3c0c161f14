"""Helpers the writers share: message catalogues, fonts, colours, source datasets, equipment.

Pure helpers except :func:`read_source_datasets` (reads DICOM headers) and
:func:`load_messages` (reads a catalogue shipped with the package).
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pydicom
from pydicom.dataset import Dataset

from ictus.imaging.errors import OutputError
from ictus.imaging.uids import UID_ROOT
from ictus.imaging.volume import Volume
from ictus.pipelines.findings.record import DISCLAIMER

log = logging.getLogger(__name__)

LOCALES_DIR = Path(__file__).resolve().parent / "locales"
#: Report languages: one per message catalogue ``locales/<lang>.json``, English first.
LANGUAGES: tuple[str, ...] = tuple(sorted((p.stem for p in LOCALES_DIR.glob("*.json")),
                                          key=lambda code: (code != "en", code)))
MANUFACTURER = "Ictus"
MODEL_NAME = "Ictus head CT triage"
DEVICE_SERIAL_NUMBER = "ictus"  # software, no hardware serial; DICOM requires a value
INSTITUTION_CODE = "ICTUS"

#: RGB display colours per class name (SEG display colour, key-image overlays, report legend).
CLASS_COLOURS_RGB: Mapping[str, tuple[int, int, int]] = {
    "IPH": (230, 40, 40),
    "EAH": (255, 170, 0),
    "oedema": (60, 200, 90),
    "IVH": (40, 150, 255),
}
_FALLBACK_COLOURS = ((200, 60, 200), (0, 200, 200), (200, 200, 0))

#: Where to look for a font with Latin and Cyrillic glyphs (first found wins).
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
)


def ictus_version() -> str:
    """The installed Ictus version ("0+unknown" when not installed)."""
    try:
        return importlib.metadata.version("ictus")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@functools.lru_cache(maxsize=None)
def load_messages(lang: str) -> Mapping[str, str]:
    """The message catalogue of ``lang`` (``pipelines/writers/locales/<lang>.json``).

    Keys missing from a translation fall back to English.
    """
    if lang not in LANGUAGES:
        raise OutputError(f"report language {lang!r} is not available; use one of {', '.join(LANGUAGES)}")

    def read(code: str) -> dict[str, str]:
        path = LOCALES_DIR / f"{code}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OutputError(f"message catalogue {path} is unreadable ({exc}); reinstall Ictus") from exc
        return {k: v for k, v in data.items() if not k.startswith("_")}

    messages = read("en")
    messages["disclaimer"] = DISCLAIMER  # the one English text; en.json keeps a copy for translators
    if lang != "en":
        messages.update(read(lang))
    return messages


@functools.lru_cache(maxsize=None)
def font_path() -> str | None:
    """A TrueType font with Cyrillic glyphs: ``$ICTUS_FONT``, DejaVu Sans, or matplotlib's copy."""
    env = os.environ.get("ICTUS_FONT")
    candidates = ([env] if env else []) + list(FONT_CANDIDATES)
    try:  # matplotlib ships DejaVu Sans; use it where the system has no fonts
        import matplotlib

        candidates.append(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"))
    except ImportError:
        pass
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    log.warning("no DejaVu Sans font found; install fonts-dejavu-core or set ICTUS_FONT (Cyrillic needs it)")
    return None


def bold_font_path() -> str | None:
    """The bold face next to :func:`font_path` (or the regular one)."""
    regular = font_path()
    if regular is None:
        return None
    bold = Path(regular).with_name(Path(regular).stem + "-Bold.ttf")
    return str(bold) if bold.is_file() else regular


def class_colour(name: str, index: int = 0) -> tuple[int, int, int]:
    """Display colour (RGB 0-255) of a class."""
    return CLASS_COLOURS_RGB.get(name, _FALLBACK_COLOURS[index % len(_FALLBACK_COLOURS)])


@dataclass(frozen=True)
class LesionClass:
    """A lesion class of the model: label value, name and codes (from the model card)."""

    value: int
    name: str
    description: str
    codes: Mapping[str, Any]
    role: str = "other"  # the card's class role: "blood", "oedema", ...


def lesion_classes(result: Any) -> tuple[LesionClass, ...]:
    """The non-background classes of the model that produced ``result`` (from its card)."""
    card = card_of(result)
    return tuple(
        LesionClass(c.value, c.name, c.description, dict(c.codes), c.role) for c in card.classes if c.value != 0
    )


def card_of(result: Any, *, required: bool = True) -> Any:
    """The model card of a result (from the registry when the result lacks it).

    Without a card and a segmentation naming its model: OutputError, or None
    when not ``required`` (an indeterminate study where no model ran).
    """
    if getattr(result, "card", None) is not None:
        return result.card
    seg = result.segmentation
    if seg is None or not seg.model_id:
        if not required:
            return None
        raise OutputError("the triage result has no model card; DICOM SEG needs the card's class codes")
    from ictus.models.registry import get_card

    return get_card(f"{seg.model_id}:{seg.model_version}" if seg.model_version else seg.model_id)


#: Type 2 attributes of the Patient and General Study modules that derived objects copy.
_TYPE2_COPIED = (
    ("PatientName", "PN"), ("PatientID", "LO"), ("PatientBirthDate", "DA"), ("PatientSex", "CS"),
    ("StudyDate", "DA"), ("StudyTime", "TM"), ("ReferringPhysicianName", "PN"), ("StudyID", "SH"),
    ("AccessionNumber", "SH"),
)


def complete_type2(ds: Dataset) -> Dataset:
    """Add the Type 2 patient/study attributes a source lacks, empty (as DICOM allows).

    Real scanners and anonymisers drop some of them; derived objects must
    carry them (empty when unknown). Changes only this in-memory copy.
    """
    for keyword, vr in _TYPE2_COPIED:
        if keyword not in ds:
            ds.add_new(keyword, vr, None)
    if str(ds.get("PatientIdentityRemoved", "")).upper() == "YES" and not ds.get("DeidentificationMethod") \
            and "DeidentificationMethodCodeSequence" not in ds:
        # Type 1C when the identity was removed; some anonymisers leave it empty
        ds.DeidentificationMethod = "not stated in the source series"
    return ds


#: QC flag set when the source series had no Frame of Reference UID and the writers derived one.
FRAME_OF_REFERENCE_DERIVED = "frame_of_reference_derived"
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def derived_frame_of_reference_uid(series_uid: str) -> str:
    """A new Frame of Reference UID for a series that has none: the same for every run on that series."""
    from pydicom.uid import generate_uid

    return generate_uid(UID_ROOT, entropy_srcs=["ictus-frame-of-reference", str(series_uid)])


def complete_type1(sources: Sequence[Dataset]) -> list[str]:
    """Fill in (in memory) the Type 1 attributes the DICOM writers need where the standard lets us derive them.

    - Frame of Reference UID (Type 1 in the CT image's Frame of Reference
      module; anonymisers drop it): every source slice of one series shares
      its patient coordinate system (Image Position/Orientation), so a *new*
      UID is created for it, derived from the Series Instance UID (stable
      between runs); when some slices carry a UID, theirs is used for the
      rest. Returns the QC flag :data:`FRAME_OF_REFERENCE_DERIVED`.
    - SOP Class UID from the file meta information; Modality ``CT`` for CT
      Image Storage.

    Study/Series/SOP Instance UIDs are never invented (the outputs must join
    the source study): a writer that needs a missing one fails with the
    reason, and the other outputs are still written. Returns the flags to record.
    """
    flags: list[str] = []
    if not sources:
        return flags
    present = [str(ds.get("FrameOfReferenceUID", "") or "").strip() for ds in sources]
    if not all(present):
        known = [uid for uid in present if uid]
        series_uid = str(sources[0].get("SeriesInstanceUID", "") or "")
        uid = known[0] if known else derived_frame_of_reference_uid(series_uid or str(sources[0].get("StudyInstanceUID", "")))
        for ds in sources:
            if not str(ds.get("FrameOfReferenceUID", "") or "").strip():
                ds.FrameOfReferenceUID = uid
                if "PositionReferenceIndicator" not in ds:
                    ds.add_new("PositionReferenceIndicator", "LO", None)  # Type 2: empty when unknown
        flags.append(FRAME_OF_REFERENCE_DERIVED)
        log.info("source series has no Frame of Reference UID; derived one for the outputs (%s)", uid)
    for ds in sources:
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
        if not ds.get("Modality") and str(ds.get("SOPClassUID", "")) == _CT_IMAGE_STORAGE:
            ds.Modality = "CT"
    return flags


def read_source_datasets(volume: Volume) -> list[Dataset]:
    """Headers (no pixels) of the source files, in the order of ``volume.source_slices``.

    Single-frame sources give one dataset per source slice; a multi-frame
    source gives its one dataset once. Raises :class:`OutputError` when a
    source file is gone or no longer matches the volume.
    """
    if not volume.source_paths:
        raise OutputError("the volume lists no source files; DICOM outputs need the source series")
    by_uid: dict[str, Dataset] = {}
    for path in volume.source_paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise OutputError(
                f"source file {path} cannot be read again ({exc}); keep the study in place until triage ends"
            ) from exc
        by_uid[str(ds.SOPInstanceUID)] = complete_type2(ds)
    ordered: list[Dataset] = []
    seen: set[str] = set()
    for src in volume.source_slices or ():
        found = by_uid.get(src.sop_instance_uid)
        if found is None:
            raise OutputError(
                f"source instance {src.sop_instance_uid} is missing from the source files; rerun triage on the study"
            )
        if src.sop_instance_uid not in seen:
            ordered.append(found)
            seen.add(src.sop_instance_uid)
    if not ordered:
        ordered = list(by_uid.values())
    return ordered


def fmt_number(value: Any, digits: int = 1) -> str:
    """A number with fixed decimals, or an em dash for None."""
    if value is None:
        return "\u2014"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)
