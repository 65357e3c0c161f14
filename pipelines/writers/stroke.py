"""What the writers share about the stroke findings: the code table and the stroke masks.

The codes of the ASPECTS and dense-artery segments and of the SR concepts are plain data in
``stroke_codes.json`` (with a ``code_note`` on every code not checked against DICOM PS3.16).
The masks live on the registered anatomy's analysis grid (``result.anatomy.grid``):
``result.ischaemia.affected_mask`` holds the ASPECTS label value (1-10 left, 11-20 right) of
each affected region's voxels and ``result.dense_artery.mask`` the hyperdense artery.
Nothing here is drawn or written when the anatomy is missing or not registered.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from ictus.imaging.errors import OutputError

log = logging.getLogger(__name__)

CODES_PATH = Path(__file__).with_name("stroke_codes.json")
ASPECTS_CODES = ("C", "LN", "InCa", "IC", "M1", "M2", "M3", "M4", "M5", "M6")  # = ictus.imaging.stroke_atlas
SIDES = ("left", "right")


@functools.lru_cache(maxsize=None)
def load_codes() -> Mapping[str, Any]:
    """The stroke code table (``stroke_codes.json``)."""
    try:
        return json.loads(CODES_PATH.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"stroke code table {CODES_PATH} is unreadable ({exc}); reinstall Ictus") from exc


def coded(entry: Mapping[str, str]) -> Any:
    """A highdicom CodedConcept of a table entry."""
    import highdicom as hd

    return hd.sr.CodedConcept(entry["value"], entry["scheme"], entry["meaning"])


def sr_concept(name: str) -> Any:
    """An SR concept of the table's ``sr`` section."""
    return coded(load_codes()["sr"][name])


def unit(name: str) -> Any:
    """A UCUM unit of the table's ``units`` section."""
    return coded(load_codes()["units"][name])


def laterality(side: str | None) -> Any | None:
    """The SCT laterality code of "left"/"right" (None otherwise)."""
    entry = load_codes()["laterality"].get(str(side))
    return coded(entry) if entry else None


def region_codes(code: str) -> list[Any]:
    """Anatomic region codes of an ASPECTS region (the lentiform nucleus has two)."""
    return [coded(e) for e in load_codes()["aspects_regions"][code]]


def vessel_code(segment: str | None) -> Any:
    """Anatomic code of an arterial segment ("M1", "M2", "basilar"; the MCA otherwise)."""
    table = load_codes()["vessel_segments"]
    return coded(table.get(str(segment), table["_default"]))


def aspects_label(code: str, side: str) -> int:
    """ASPECTS label value of a region (1-10 left, 11-20 right)."""
    return ASPECTS_CODES.index(code) + (1 if side == "left" else 11)


def aspects_region(label: int) -> tuple[str, str]:
    """``(code, side)`` of an ASPECTS label value."""
    return ASPECTS_CODES[(int(label) - 1) % 10], "left" if label <= 10 else "right"


def registered(result: Any) -> bool:
    """True when the template anatomy was registered (stroke masks can be drawn)."""
    anatomy = getattr(result, "anatomy", None)
    return bool(anatomy is not None and getattr(anatomy, "registered", False))


@dataclass(frozen=True)
class StrokeMask:
    """One stroke structure to segment: a bool mask on the anatomy grid and its description."""

    kind: str  # "aspects" or "dense_artery"
    key: str  # "M2_left", "M1_left"
    code: str  # ASPECTS code or vessel segment name
    side: str | None
    mask_zyx: np.ndarray


def stroke_masks(result: Any) -> list[StrokeMask]:
    """The affected ASPECTS regions (one mask each) and the dense artery, on ``result.anatomy.grid``.

    Empty unless the anatomy is registered. Regions are taken from the findings'
    ``ischaemia.affected_regions``; a region with no voxel in ``affected_mask`` is skipped.
    """
    if not registered(result):
        return []
    grid_shape = tuple(reversed(result.anatomy.grid.GetSize()))
    out: list[StrokeMask] = []
    isch = getattr(result, "ischaemia", None)
    mask = getattr(isch, "affected_mask", None) if isch is not None else None
    record = result.findings.ischaemia
    if mask is not None and record is not None and record.assessed:
        mask = np.asarray(mask)
        if mask.shape != grid_shape:
            raise OutputError(f"ischaemia mask {mask.shape} is not on the anatomy grid {grid_shape}; rerun triage")
        for side in SIDES:
            for code in record.affected_regions.get(side) or ():
                region = mask == aspects_label(code, side)
                if region.any():
                    out.append(StrokeMask("aspects", f"{code}_{side}", code, side, region))
                else:
                    log.info("affected region %s %s has no voxel in the ischaemia mask", code, side)
    dense = getattr(result, "dense_artery", None)
    dense_record = result.findings.dense_artery
    if dense is not None and getattr(dense, "present", None) and getattr(dense, "mask", None) is not None:
        artery = np.asarray(dense.mask, dtype=bool)
        if artery.shape != grid_shape:
            raise OutputError(f"dense-artery mask {artery.shape} is not on the anatomy grid {grid_shape}; rerun triage")
        if artery.any():
            segment = str((dense_record.segment if dense_record is not None else None) or "MCA")
            artery_side = (dense_record.side if dense_record is not None else None) or getattr(dense, "side", None)
            out.append(StrokeMask("dense_artery", f"{segment}_{artery_side}", segment, artery_side, artery))
    return out


def grid_image(array_zyx: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """A uint8 image of ``array_zyx`` with the geometry of ``grid``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx, dtype=np.uint8))
    image.CopyInformation(grid)
    return image


#: Display colours (SEG, key images, report): affected ASPECTS regions and the hyperdense artery.
ISCHAEMIA_RGB = (255, 215, 0)
DENSE_ARTERY_RGB = (230, 0, 230)
