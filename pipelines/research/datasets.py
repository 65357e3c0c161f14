"""Readers of published haemorrhage label layouts, into one list of :class:`LabelledCase`.

Three public layouts are read as they are published (nothing needs converting):

- **PhysioNet CT-ICH** (Hssayeni et al., physionet.org/content/ct-ich): a folder
  with ``ct_scans/NNN.nii`` and ``masks/NNN.nii`` (binary "any haemorrhage"
  masks on the image grid) and ``hemorrhage_diagnosis_raw_ct.csv`` with columns
  ``PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,
  Epidural,Subdural,No_Hemorrhage,Fracture_Yes_No`` (one row per slice). A study
  is positive for a subtype when any of its slices is.
  :func:`read_physionet_ct_ich`.
- **CQ500** (Chilamkurthy et al. 2018): ``reads.csv`` with ``name,Category`` then
  ``R1:ICH,R1:IPH,R1:IVH,R1:SDH,R1:EDH,R1:SAH,R1:BleedLocation-Left,...,
  R1:MidlineShift`` for readers R1, R2 and R3. The reference standard is the
  majority (2 of 3) per finding. :func:`read_cq500_reads`.
- **RSNA 2019** (Kaggle intracranial haemorrhage detection): ``ID,Label`` rows
  ``ID_<sop>_<subtype>`` for the subtypes any, epidural, intraparenchymal,
  intraventricular, subarachnoid and subdural, one per slice. Slices are
  grouped into studies by reading the DICOM headers (SOPInstanceUID,
  StudyInstanceUID, SeriesInstanceUID); a study is positive for a subtype when
  any of its slices is. :func:`read_rsna_labels`.

Findings are named as in the CQ500 header: ICH, IPH, IVH, SDH, EDH, SAH,
MidlineShift, plus EAH (extra-axial: SDH or EDH or SAH), which is what a
BLAST-CT-style model reports. Values are ``True``/``False`` or ``None`` when the
layout does not say.
"""
from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from ictus.imaging.errors import InvalidInputError

if TYPE_CHECKING:
    from ictus.imaging.volume import Volume

log = logging.getLogger(__name__)

FINDINGS = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "EAH", "MidlineShift")
EXTRA_AXIAL = ("SDH", "EDH", "SAH")
CQ500_FINDINGS = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "MidlineShift")
CQ500_READERS = ("R1", "R2", "R3")
PHYSIONET_COLUMNS = {
    "Intraventricular": "IVH",
    "Intraparenchymal": "IPH",
    "Subarachnoid": "SAH",
    "Epidural": "EDH",
    "Subdural": "SDH",
}
PHYSIONET_CSV_NAMES = ("hemorrhage_diagnosis_raw_ct.csv", "hemorrhage_diagnosis.csv")
RSNA_SUBTYPES = {
    "any": "ICH",
    "epidural": "EDH",
    "intraparenchymal": "IPH",
    "intraventricular": "IVH",
    "subarachnoid": "SAH",
    "subdural": "SDH",
}
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class LabelledCase:
    """One case of an evaluation dataset.

    - ``image_path``: a NIfTI volume, or a DICOM study folder/file.
    - ``files``: explicit DICOM files of the case (RSNA, where all studies share
      one folder); empty when ``image_path`` says it all.
    - ``mask_path``: a NIfTI label map (0 background; binary "any blood" or the
      BLAST-CT values 1 IPH, 2 EAH, 3 oedema, 4 IVH, see ``mask_kind``), or None.
    - ``mask_kind``: "binary" or "blast-ct".
    - ``findings``: reference per finding name of :data:`FINDINGS` (True/False/None).
    """

    case_id: str
    image_path: Path | None
    findings: Mapping[str, bool | None]
    mask_path: Path | None = None
    mask_kind: str = "binary"
    files: tuple[Path, ...] = ()
    source: str = ""
    info: Mapping[str, object] = field(default_factory=dict)


def complete_findings(findings: Mapping[str, bool | None]) -> dict[str, bool | None]:
    """All of :data:`FINDINGS`, with EAH derived from SDH/EDH/SAH and ICH from the
    subtypes where the layout does not give them."""
    out: dict[str, bool | None] = {name: findings.get(name) for name in FINDINGS}
    if out["EAH"] is None:
        parts = [out[n] for n in EXTRA_AXIAL]
        if any(p is True for p in parts):
            out["EAH"] = True
        elif parts and all(p is False for p in parts):
            out["EAH"] = False
    if out["ICH"] is None:
        parts = [out[n] for n in ("IPH", "IVH", "EAH")]
        if any(p is True for p in parts):
            out["ICH"] = True
        elif all(p is False for p in parts):
            out["ICH"] = False
    return out


def _flag(value: str, where: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true", "yes", "y"):
        return True
    if text in ("0", "0.0", "false", "no", "n", ""):
        return False
    raise InvalidInputError(f"{where}: value {value!r} is not 0 or 1; fix the label file")


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise InvalidInputError(f"label file {path} does not exist; point to the published CSV")
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        return [c.strip() for c in (reader.fieldnames or [])], rows


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _nifti_files(folder: Path) -> dict[str, Path]:
    return {_nifti_stem(p): p for p in sorted(folder.iterdir()) if p.name.endswith(NIFTI_SUFFIXES)}


# -- PhysioNet CT-ICH ---------------------------------------------------------------
def read_physionet_ct_ich(root: str | Path) -> list[LabelledCase]:
    """Cases of a PhysioNet CT-ICH folder (``ct_scans/``, ``masks/``, diagnosis CSV).

    Subtypes come from the per-slice CSV when it is there; without it only the
    masks are known and the study-level findings are None (the evaluation then
    takes ICH from the mask).
    """
    root = Path(root)
    scans_dir, masks_dir = root / "ct_scans", root / "masks"
    if not scans_dir.is_dir():
        raise InvalidInputError(f"{root} has no ct_scans/ folder; point to the PhysioNet CT-ICH root")
    scans = _nifti_files(scans_dir)
    if not scans:
        raise InvalidInputError(f"{scans_dir} holds no .nii or .nii.gz files; point to the PhysioNet CT-ICH root")
    masks = _nifti_files(masks_dir) if masks_dir.is_dir() else {}
    per_patient: dict[int, dict[str, bool]] = {}
    csv_path = next((root / n for n in PHYSIONET_CSV_NAMES if (root / n).is_file()), None)
    if csv_path is not None:
        columns, rows = _read_csv(csv_path)
        missing = [c for c in ("PatientNumber", *PHYSIONET_COLUMNS) if c not in columns]
        if missing:
            raise InvalidInputError(f"{csv_path.name} lacks the columns {', '.join(missing)}; is it the CT-ICH CSV?")
        for i, row in enumerate(rows, start=2):
            try:
                patient = int(float(row["PatientNumber"]))
            except ValueError:
                raise InvalidInputError(f"{csv_path.name} line {i}: PatientNumber is not a number") from None
            entry = per_patient.setdefault(patient, {v: False for v in PHYSIONET_COLUMNS.values()})
            for column, name in PHYSIONET_COLUMNS.items():
                entry[name] = entry[name] or _flag(row[column], f"{csv_path.name} line {i}")
    cases = []
    for stem, image in scans.items():
        findings: dict[str, bool | None] = {}
        if stem.isdigit() and int(stem) in per_patient:
            findings.update(per_patient[int(stem)])
        elif per_patient and csv_path is not None:
            log.warning("PhysioNet case %s is not in %s; its subtypes are unknown", stem, csv_path.name)
        cases.append(
            LabelledCase(
                case_id=stem, image_path=image, mask_path=masks.get(stem), mask_kind="binary",
                findings=complete_findings(findings), source="physionet-ct-ich",
            )
        )
    return cases


# -- CQ500 --------------------------------------------------------------------------
def _normalise_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _cq500_folders(studies_dir: Path | None) -> dict[str, Path]:
    """CQ500 study folders by normalised case name ("CQ500CT0 CQ500CT0" -> "cq500ct0")."""
    if studies_dir is None:
        return {}
    folders: dict[str, Path] = {}
    for p in sorted(Path(studies_dir).iterdir()):
        if p.is_dir() or p.name.endswith(NIFTI_SUFFIXES):
            key = _normalise_name(p.name.split()[0] if " " in p.name else _nifti_stem(p))
            folders.setdefault(key, p)
    return folders


def read_cq500_reads(reads_csv: str | Path, studies_dir: str | Path | None = None) -> list[LabelledCase]:
    """Cases of CQ500's ``reads.csv``: majority of readers R1-R3 per finding.

    ``studies_dir`` holds the studies (``CQ500CT0 CQ500CT0/`` folders or NIfTI
    files named after the case); a case without one keeps ``image_path`` None.
    """
    path = Path(reads_csv)
    columns, rows = _read_csv(path)
    needed = ["name"] + [f"{r}:{f}" for r in CQ500_READERS for f in CQ500_FINDINGS]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise InvalidInputError(
            f"{path.name} lacks the columns {', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}; "
            "is it CQ500's reads.csv?"
        )
    folders = _cq500_folders(Path(studies_dir) if studies_dir else None)
    cases = []
    for i, row in enumerate(rows, start=2):
        name = row["name"].strip()
        findings: dict[str, bool | None] = {}
        votes_all: dict[str, list[bool]] = {}
        for finding in CQ500_FINDINGS:
            votes = [_flag(row[f"{r}:{finding}"], f"{path.name} line {i}") for r in CQ500_READERS]
            votes_all[finding] = votes
            findings[finding] = sum(votes) >= 2
        cases.append(
            LabelledCase(
                case_id=name, image_path=folders.get(_normalise_name(name)), findings=complete_findings(findings),
                source="cq500", info={"category": row.get("Category", ""), "votes": votes_all},
            )
        )
    return cases


# -- RSNA 2019 ----------------------------------------------------------------------
def parse_rsna_id(row_id: str) -> tuple[str, str]:
    """``ID_<sop>_<subtype>`` -> (``ID_<sop>``, subtype). RSNA's DICOM files carry
    ``ID_<sop>`` as their SOPInstanceUID."""
    head, sep, subtype = row_id.strip().rpartition("_")
    if not sep or not head or subtype not in RSNA_SUBTYPES:
        raise InvalidInputError(
            f"RSNA label id {row_id!r} is not ID_<sop>_<subtype> with a subtype of {', '.join(RSNA_SUBTYPES)}"
        )
    return head, subtype


def read_rsna_slice_labels(labels_csv: str | Path) -> dict[str, dict[str, bool]]:
    """Slice labels of an RSNA CSV: ``{sop: {subtype: bool}}`` (subtype in RSNA's names)."""
    path = Path(labels_csv)
    columns, rows = _read_csv(path)
    if "ID" not in columns or "Label" not in columns:
        raise InvalidInputError(f"{path.name} has columns {columns[:3]}; RSNA's label CSV has ID,Label")
    slices: dict[str, dict[str, bool]] = defaultdict(dict)
    for i, row in enumerate(rows, start=2):
        sop, subtype = parse_rsna_id(row["ID"])
        slices[sop][subtype] = _flag(row["Label"], f"{path.name} line {i}")
    return dict(slices)


def _sop_key(uid: str) -> str:
    return uid[3:] if uid.startswith("ID_") else uid


def scan_dicom_uids(paths: Iterable[Path]) -> dict[str, tuple[str, str, Path]]:
    """``{SOPInstanceUID: (StudyInstanceUID, SeriesInstanceUID, path)}`` from DICOM headers."""
    import pydicom

    out: dict[str, tuple[str, str, Path]] = {}
    tags = ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
    for p in paths:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=tags)
        except Exception:  # not DICOM: skipped, like the scanner does  # noqa: BLE001
            log.debug("skipping %s (not readable as DICOM)", p.name)
            continue
        sop = str(getattr(ds, "SOPInstanceUID", "") or "")
        if sop:
            out[sop] = (str(getattr(ds, "StudyInstanceUID", "")), str(getattr(ds, "SeriesInstanceUID", "")), Path(p))
    return out


def read_rsna_labels(labels_csv: str | Path, dicom_dir: str | Path) -> list[LabelledCase]:
    """Study-level cases from RSNA's slice CSV: a study is positive for a subtype
    when any of its labelled slices is. Slices are matched to the DICOM files of
    ``dicom_dir`` (searched recursively) by SOPInstanceUID (with or without the
    ``ID_`` prefix). Slices without a file are counted and logged, not guessed."""
    slices = read_rsna_slice_labels(labels_csv)
    folder = Path(dicom_dir)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a folder; point to the folder of RSNA DICOM files")
    uids = scan_dicom_uids(p for p in sorted(folder.rglob("*")) if p.is_file())
    by_key = {_sop_key(sop): v for sop, v in uids.items()}
    studies: dict[str, dict[str, bool]] = {}
    files: dict[str, list[Path]] = defaultdict(list)
    series: dict[str, set[str]] = defaultdict(set)
    unmatched = 0
    for sop, labels in slices.items():
        hit = by_key.get(_sop_key(sop))
        if hit is None:
            unmatched += 1
            continue
        study, series_uid, path = hit
        entry = studies.setdefault(study, {})
        for subtype, value in labels.items():
            name = RSNA_SUBTYPES[subtype]
            entry[name] = entry.get(name, False) or value
        files[study].append(path)
        series[study].add(series_uid)
    if unmatched:
        log.warning("%d labelled RSNA slice(s) have no DICOM file under %s", unmatched, folder)
    if not studies:
        raise InvalidInputError(f"no labelled RSNA slice matched a DICOM file under {folder}; check the folder")
    cases = []
    for n, (study, findings) in enumerate(sorted(studies.items()), start=1):
        cases.append(
            LabelledCase(
                case_id=f"rsna-{n:05d}", image_path=None, files=tuple(sorted(files[study])),
                findings=complete_findings(findings), source="rsna-2019",
                info={"study_instance_uid": study, "series": sorted(series[study]), "slices": len(files[study])},
            )
        )
    return cases


# -- Ictus phantoms -----------------------------------------------------------------
def read_phantom_dataset(root: str | Path) -> list[LabelledCase]:
    """Cases of a folder of ``ictus phantom`` outputs (one sub-folder per phantom, each
    with a DICOM study, ``ground_truth.json`` and ``ground_truth_labels.nii.gz``)."""
    import json

    root = Path(root)
    cases = []
    for folder in sorted(p for p in root.iterdir() if (p / "ground_truth.json").is_file()):
        truth = json.loads((folder / "ground_truth.json").read_text())
        findings = _phantom_findings(truth)
        mask = folder / "ground_truth_labels.nii.gz"
        cases.append(
            LabelledCase(
                case_id=folder.name, image_path=folder, mask_path=mask if mask.is_file() else None,
                mask_kind="blast-ct", findings=complete_findings(findings), source="ictus-phantom",
            )
        )
    if not cases:
        raise InvalidInputError(f"{root} holds no phantom folders with ground_truth.json; make some with `ictus phantom`")
    return cases


def _phantom_findings(truth: Mapping[str, Any]) -> dict[str, bool | None]:
    kind = truth.get("haemorrhage")
    if isinstance(kind, Mapping):
        kind = kind.get("type")
    shift = truth.get("midline_shift_mm", truth.get("midline_shift_signed_mm", 0.0))
    findings: dict[str, bool | None] = {"IPH": kind == "IPH", "IVH": kind == "IVH", "EAH": kind == "EAH"}
    findings["ICH"] = kind in ("IPH", "IVH", "EAH")
    findings["MidlineShift"] = bool(abs(float(shift or 0.0)) >= 5.0) if shift is not None else None
    return findings


def read_dataset(layout: str, root: str | Path, *, labels: str | Path | None = None) -> list[LabelledCase]:
    """Read a dataset by layout name: "physionet", "cq500" (``labels`` = reads.csv,
    ``root`` = studies), "rsna" (``labels`` = the slice CSV, ``root`` = DICOM
    folder) or "phantom"."""
    layout = layout.lower()
    if layout in ("physionet", "physionet-ct-ich", "ct-ich"):
        return read_physionet_ct_ich(root)
    if layout == "cq500":
        return read_cq500_reads(labels or Path(root) / "reads.csv", root)
    if layout in ("rsna", "rsna-2019"):
        if labels is None:
            raise InvalidInputError("the RSNA layout needs the label CSV (--labels stage_2_train.csv)")
        return read_rsna_labels(labels, root)
    if layout == "phantom":
        return read_phantom_dataset(root)
    raise InvalidInputError(f"unknown label layout {layout!r}; use physionet, cq500, rsna or phantom")


LAYOUTS: Sequence[str] = ("physionet", "cq500", "rsna", "phantom")


# -- volumes and masks --------------------------------------------------------------
def is_nifti(path: str | Path) -> bool:
    """True for a ``.nii`` or ``.nii.gz`` file."""
    return Path(path).is_file() and Path(path).name.endswith(NIFTI_SUFFIXES)


def read_nifti_volume(path: str | Path) -> Volume:
    """A NIfTI CT (HU) as a :class:`ictus.imaging.volume.Volume` (SimpleITK reads it into LPS)."""
    import SimpleITK as sitk

    from ictus.imaging.volume import Acquisition, Volume

    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise InvalidInputError(f"cannot read {Path(path).name} as NIfTI ({str(exc).splitlines()[0][:120]})") from None
    if image.GetDimension() != 3:
        raise InvalidInputError(f"{Path(path).name} is {image.GetDimension()}-D; expected a 3-D CT volume")
    return Volume(image=image, source_paths=(str(path),), acquisition=Acquisition(source_format="nifti"))


def load_mask_on_grid(mask_path: str | Path, reference) -> np.ndarray:
    """A NIfTI label map resampled by nearest neighbour onto ``reference`` (a SimpleITK
    image or a Volume), as uint8 [z, y, x]. The same grid is passed through unchanged."""
    import SimpleITK as sitk

    image_ref = getattr(reference, "image", reference)
    try:
        mask = sitk.ReadImage(str(mask_path))
    except RuntimeError as exc:
        raise InvalidInputError(f"cannot read mask {Path(mask_path).name} ({str(exc).splitlines()[0][:120]})") from None
    if mask.GetNumberOfComponentsPerPixel() != 1 or mask.GetDimension() != 3:
        raise InvalidInputError(f"mask {Path(mask_path).name} is not a 3-D single-channel label map")
    same = (
        mask.GetSize() == image_ref.GetSize()
        and np.allclose(mask.GetSpacing(), image_ref.GetSpacing(), atol=1e-3)
        and np.allclose(mask.GetOrigin(), image_ref.GetOrigin(), atol=1e-2)
        and np.allclose(mask.GetDirection(), image_ref.GetDirection(), atol=1e-4)
    )
    if not same:
        mask = sitk.Resample(mask, image_ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, mask.GetPixelID())
    arr = sitk.GetArrayFromImage(mask)
    if arr.min() < 0 or arr.max() > 255:
        raise InvalidInputError(f"mask {Path(mask_path).name} has values outside 0..255; is it a label map?")
    return arr.astype(np.uint8)


def load_volume_and_mask(image_path: str | Path, mask_path: str | Path | None = None):
    """(Volume, mask or None) for evaluation: ``image_path`` is a NIfTI CT or a DICOM
    study (folder, DICOMDIR or file, series chosen as triage does); ``mask_path`` a
    NIfTI label map, resampled onto the volume's grid (uint8 [z, y, x])."""
    if is_nifti(image_path):
        volume = read_nifti_volume(image_path)
    else:
        from ictus.pipelines.triage import load_volume

        volume, _ = load_volume(image_path)
    mask = load_mask_on_grid(mask_path, volume) if mask_path is not None else None
    return volume, mask
