"""Group scanned instances into series and choose the one to triage.

Selection is data: :data:`RULES_PATH` (``series_rules.json``) lists rejection
rules (name, reason, tests), the scoring weights and the pixel check. This
module only holds the small named tests the rules refer to (:data:`TESTS`) and
the plumbing. Every candidate ends with either a score or at least one reason.

The pixel check (bone or sharp kernel by HU histogram) reads one middle slice,
and only of the best-scored eligible candidates, until one passes: so in the
usual case it reads one slice of the series that is then chosen. The same
function, :func:`sharp_by_histogram`, can be called on a whole volume by the
builder. Pass ``check_pixels=False`` to :func:`select_series` to skip it.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ictus.imaging.dicom_io import InstanceHeader, ScanResult, read_frame_hu
from ictus.imaging.errors import InvalidInputError, NoEligibleSeriesError

log = logging.getLogger(__name__)

RULES_PATH = Path(__file__).with_name("series_rules.json")
GAP_FACTOR = 1.5  # a step above 1.5 x the median spacing is a gap


@dataclass(frozen=True)
class FrameRef:
    """One slice of a candidate: a file, and its 1-based frame for multi-frame objects."""

    path: str
    frame_number: int | None
    sop_instance_uid: str
    offset_mm: float | None  # position along the slice normal


@dataclass(frozen=True)
class SeriesCandidate:
    """A series (or one homogeneous part of it) with its facts and verdict.

    ``key`` is the SeriesInstanceUID, with ``.1``, ``.2``... appended when the
    series mixed orientations or image types and was split. ``frames`` are
    ordered along the slice normal, one per distinct SOP instance and frame.
    """

    key: str
    series_instance_uid: str
    study_instance_uid: str
    series_number: int | None
    description: str
    modality: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    kernel: str
    body_part: str
    contrast_agent: str
    contrast_administered: bool
    n_instances: int
    n_slices: int
    n_duplicate_files: int
    coverage_mm: float | None
    spacing_mm: float | None
    max_gap_mm: float | None
    slice_thickness_mm: float | None
    tilt_deg: float | None
    gantry_tilt_deg: float | None
    orientation: tuple[float, ...] | None
    has_pixel_data: bool
    is_multiframe: bool
    frames: tuple[FrameRef, ...]
    instances: tuple[InstanceHeader, ...] = field(default=(), repr=False)
    score: float | None = None
    rejections: tuple[tuple[str, str], ...] = ()  # (rule name, reason)

    @property
    def eligible(self) -> bool:
        """True when no rule rejected this candidate."""
        return not self.rejections

    @property
    def reason(self) -> str | None:
        """The headline rejection reason, or None if eligible."""
        return self.rejections[0][1] if self.rejections else None

    @property
    def rejected_by(self) -> tuple[str, ...]:
        """Names of the rules that rejected this candidate."""
        return tuple(name for name, _ in self.rejections)

    @property
    def files(self) -> tuple[str, ...]:
        """Distinct file paths, in slice order."""
        return tuple(dict.fromkeys(f.path for f in self.frames))

    @property
    def has_gap(self) -> bool:
        """A step between slices above 1.5 x the median spacing."""
        return bool(
            self.spacing_mm and self.max_gap_mm and self.n_slices >= 3
            and self.max_gap_mm > GAP_FACTOR * self.spacing_mm
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no patient data)."""
        return {
            "key": self.key,
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "series_number": self.series_number,
            "description": self.description,
            "modality": self.modality,
            "sop_class_uid": self.sop_class_uid,
            "image_type": list(self.image_type),
            "kernel": self.kernel,
            "n_instances": self.n_instances,
            "n_slices": self.n_slices,
            "coverage_mm": _round(self.coverage_mm),
            "spacing_mm": _round(self.spacing_mm),
            "max_gap_mm": _round(self.max_gap_mm),
            "slice_thickness_mm": _round(self.slice_thickness_mm),
            "tilt_deg": _round(self.tilt_deg),
            "eligible": self.eligible,
            "score": _round(self.score),
            "reason": self.reason,
            "rejections": [{"rule": n, "reason": r} for n, r in self.rejections],
            "files": list(self.files),
            "frames": [
                {"path": f.path, "frame_number": f.frame_number} for f in self.frames
            ] if self.is_multiframe else None,
        }


@dataclass(frozen=True)
class SeriesChoice:
    """Every candidate series with its score or reasons, and the chosen one."""

    candidates: tuple[SeriesCandidate, ...]
    chosen: SeriesCandidate | None
    n_files: int = 0
    skipped_non_dicom: int = 0
    unreadable: int = 0
    flags: tuple[str, ...] = ()

    def rejection_counts(self) -> Counter[str]:
        """How many candidates each rule rejected (headline reason only), by label."""
        labels = _labels(load_rules())
        return Counter(labels.get(c.rejected_by[0], c.rejected_by[0]) for c in self.candidates if c.rejections)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no patient data)."""
        return {
            "chosen": self.chosen.key if self.chosen else None,
            "n_files": self.n_files,
            "skipped_non_dicom": self.skipped_non_dicom,
            "unreadable": self.unreadable,
            "flags": list(self.flags),
            "series": [c.to_dict() for c in self.candidates],
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


# ---------------------------------------------------------------------------
# rules


@functools.lru_cache(maxsize=4)
def _load_rules_file(path: str) -> Mapping[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load_rules(path: str | Path | None = None) -> Mapping[str, Any]:
    """The selection rules (``series_rules.json`` unless ``path`` is given)."""
    return _load_rules_file(str(path or RULES_PATH))


def _labels(rules: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key in ("rejections", "context_rejections", "pixel_checks"):
        for rule in rules.get(key, ()):
            out[rule["name"]] = rule.get("label", rule["name"].replace("_", " "))
    return out


def _search_any(patterns: Iterable[str], text: str) -> str | None:
    for pattern in patterns:
        match = re.search(pattern, text, flags=re.IGNORECASE)
        if match:
            return match.group(0)
    return None


TestResult = tuple[bool, Mapping[str, Any]]


def _t_sop_class_in(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return c.sop_class_uid in p["uids"], {}


def _t_sop_class_not_in(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return c.sop_class_uid not in p["uids"], {}


def _t_sop_class_prefix(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return any(c.sop_class_uid.startswith(x) for x in p["prefixes"]), {}


def _t_modality_in(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return c.modality in p["values"], {}


def _t_modality_not_in(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return c.modality not in p["values"], {}


def _t_image_type_any(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return any(v in c.image_type for v in p["values"]), {}


def _t_description_matches(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return _search_any(p["patterns"], c.description) is not None, {}


def _t_body_part_in(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return c.body_part.replace(" ", "") in p["values"], {}


def _t_no_pixel_data(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return not c.has_pixel_data, {}


def _t_no_geometry(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return c.orientation is None or any(f.offset_mm is None for f in c.frames), {}


def _t_tilt_above(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return c.tilt_deg is not None and c.tilt_deg > p["max_deg"], {}


def _t_contrast_agent_present(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    agent = c.contrast_agent.strip().upper()
    hit = bool(agent) and agent not in {v.upper() for v in p["none_values"]}
    return hit, {"contrast_evidence": f"agent {c.contrast_agent.strip()}"}


def _t_contrast_administered(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return c.contrast_administered, {"contrast_evidence": "contrast/bolus administered"}


def _t_description_contrast(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    text = c.description.upper()
    for pattern in p["negative"]:
        text = re.sub(pattern, " ", text, flags=re.IGNORECASE)
    token = _search_any(p["positive"], text)
    return token is not None, {"contrast_evidence": f"description says {token}"}


def _t_kernel_matches(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return bool(c.kernel) and _search_any(p["patterns"], c.kernel.upper()) is not None, {}


def _t_slices_below(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return c.n_slices < p["min_slices"], {}


def _t_coverage_below(c: SeriesCandidate, p: Mapping[str, Any], _: Sequence[SeriesCandidate]) -> TestResult:
    return c.coverage_mm is not None and c.coverage_mm < p["min_mm"], {}


def _is_derived(c: SeriesCandidate, derived_values: Iterable[str]) -> bool:
    return any(v in c.image_type for v in derived_values)


def _t_derived_while_original_eligible(
    c: SeriesCandidate, p: Mapping[str, Any], others: Sequence[SeriesCandidate]
) -> TestResult:
    if not _is_derived(c, p["derived_values"]):
        return False, {}
    hit = any(
        o.key != c.key and o.study_instance_uid == c.study_instance_uid and o.eligible
        and o.image_type[:1] == ("ORIGINAL",) and not _is_derived(o, p["derived_values"])
        for o in others
    )
    return hit, {}


TESTS: dict[str, Callable[[SeriesCandidate, Mapping[str, Any], Sequence[SeriesCandidate]], TestResult]] = {
    "sop_class_in": _t_sop_class_in,
    "sop_class_not_in": _t_sop_class_not_in,
    "sop_class_prefix": _t_sop_class_prefix,
    "modality_in": _t_modality_in,
    "modality_not_in": _t_modality_not_in,
    "image_type_any": _t_image_type_any,
    "description_matches": _t_description_matches,
    "body_part_in": _t_body_part_in,
    "no_pixel_data": _t_no_pixel_data,
    "no_geometry": _t_no_geometry,
    "tilt_above": _t_tilt_above,
    "contrast_agent_present": _t_contrast_agent_present,
    "contrast_administered": _t_contrast_administered,
    "description_contrast": _t_description_contrast,
    "kernel_matches": _t_kernel_matches,
    "slices_below": _t_slices_below,
    "coverage_below": _t_coverage_below,
    "derived_while_original_eligible": _t_derived_while_original_eligible,
}
"""The named tests rules may use: ``test(candidate, params, all_candidates) -> (hit, facts)``."""


class _Facts(dict):
    """Format mapping that leaves unknown placeholders visible instead of failing."""

    def __missing__(self, key: str) -> str:
        return "?"


def _facts(c: SeriesCandidate) -> dict[str, Any]:
    return {
        "modality": c.modality or "none",
        "sop_class_uid": c.sop_class_uid or "none",
        "kernel": c.kernel or "none",
        "body_part": c.body_part or "none",
        "n_slices": c.n_slices,
        "coverage_mm": c.coverage_mm if c.coverage_mm is not None else float("nan"),
        "tilt_deg": c.tilt_deg if c.tilt_deg is not None else float("nan"),
        "description": c.description,
    }


def _format_reason(template: str, facts: Mapping[str, Any]) -> str:
    try:
        return template.format_map(_Facts(facts))
    except (ValueError, TypeError, IndexError):
        return template.split("(")[0].split("{")[0].strip() or template


def _apply_rule(rule: Mapping[str, Any], c: SeriesCandidate, others: Sequence[SeriesCandidate]) -> str | None:
    for test in rule["any_of"]:
        fn = TESTS.get(test["test"])
        if fn is None:
            raise ValueError(f"series rule {rule['name']!r} names an unknown test {test['test']!r}")
        hit, extra = fn(c, test, others)
        if hit:
            params = {k: v for k, v in test.items() if k != "test" and not isinstance(v, (list, dict))}
            return _format_reason(rule["reason"], {**_facts(c), **params, **extra})
    return None


def _features(c: SeriesCandidate, rules: Mapping[str, Any]) -> dict[str, float]:
    thickness = c.slice_thickness_mm or c.spacing_mm or 0.0
    head_text = f"{c.body_part} {c.description}"
    return {
        "soft_kernel": float(bool(c.kernel) and _search_any(rules["soft_kernel_patterns"], c.kernel.upper()) is not None),
        "original": float(c.image_type[:1] == ("ORIGINAL",)),
        "primary": float(c.image_type[1:2] == ("PRIMARY",)),
        "head_named": float(_search_any(rules["head_patterns"], head_text) is not None),
        "coverage_fraction": min((c.coverage_mm or 0.0) / 150.0, 1.0),
        "slice_thickness_mm": float(thickness),
        "has_gap": float(c.has_gap),
        "n_slices": float(c.n_slices),
    }


def evaluate(candidates: Sequence[SeriesCandidate], rules: Mapping[str, Any] | None = None) -> list[SeriesCandidate]:
    """Apply the rejection rules, then score the candidates left (header facts only)."""
    rules = rules or load_rules()
    judged = []
    for c in candidates:
        rejections = []
        for rule in rules["rejections"]:
            reason = _apply_rule(rule, c, candidates)
            if reason is not None:
                rejections.append((rule["name"], reason))
        judged.append(replace(c, rejections=tuple(rejections)))
    context = []
    for c in judged:
        extra = []
        for rule in rules.get("context_rejections", ()):
            reason = _apply_rule(rule, c, judged)
            if reason is not None:
                extra.append((rule["name"], reason))
        context.append(replace(c, rejections=c.rejections + tuple(extra)) if extra else c)
    scored = []
    for c in context:
        if c.rejections:
            scored.append(c)
            continue
        features = _features(c, rules)
        score = sum(float(s["weight"]) * features[s["feature"]] for s in rules["scores"])
        scored.append(replace(c, score=round(score, 3)))
    return scored


# ---------------------------------------------------------------------------
# grouping


def _unit(v: Sequence[float] | np.ndarray) -> np.ndarray | None:
    arr = np.asarray(v, dtype=float)
    norm = float(np.linalg.norm(arr))
    return arr / norm if norm > 1e-6 else None


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, float(np.dot(a, b))))))


def _same_orientation(a: tuple[float, ...], b: tuple[float, ...], tol_deg: float) -> bool:
    ra, ca, rb, cb = _unit(a[:3]), _unit(a[3:]), _unit(b[:3]), _unit(b[3:])
    if ra is None or ca is None or rb is None or cb is None:
        return a == b
    return _angle_deg(ra, rb) <= tol_deg and _angle_deg(ca, cb) <= tol_deg


def _mode(values: Iterable[Any], default: Any = "") -> Any:
    counts = Counter(v for v in values if v not in (None, ""))
    return counts.most_common(1)[0][0] if counts else default


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(vals)) if vals else None


def _build_candidate(key: str, members: list[InstanceHeader]) -> SeriesCandidate:
    first = members[0]
    orientation = first.orientation
    normal = None
    if orientation is not None:
        row, col = _unit(orientation[:3]), _unit(orientation[3:])
        if row is not None and col is not None:
            normal = _unit(np.cross(row, col))
    frames: dict[tuple[str, int | None], FrameRef] = {}
    n_duplicates = 0
    for h in members:
        frame_numbers: list[int | None] = list(range(1, h.n_frames + 1)) if h.is_multiframe else [None]
        positions = list(h.frame_positions)
        seen_before = any((h.sop_instance_uid, fn) in frames for fn in frame_numbers) and bool(h.sop_instance_uid)
        if seen_before:
            n_duplicates += 1
            continue
        for i, fn in enumerate(frame_numbers):
            pos = positions[i] if i < len(positions) else None
            offset = float(np.dot(normal, pos)) if (normal is not None and pos is not None) else None
            uid_key = h.sop_instance_uid or h.path
            frames[(uid_key, fn)] = FrameRef(h.path, fn, h.sop_instance_uid, offset)
    ordered = sorted(frames.values(), key=lambda f: (f.offset_mm is None, f.offset_mm or 0.0, f.path, f.frame_number or 0))
    offsets = [f.offset_mm for f in ordered if f.offset_mm is not None]
    distinct = sorted({round(o, 2) for o in offsets})
    n_slices = len(distinct) if len(offsets) == len(ordered) and offsets else len(ordered)
    steps = np.diff(distinct) if len(distinct) > 1 else np.array([])
    spacing = float(np.median(steps)) if steps.size else None
    max_gap = float(steps.max()) if steps.size else None
    thickness = _median(h.slice_thickness_mm for h in members)
    coverage = None
    if distinct:
        coverage = (distinct[-1] - distinct[0]) + (thickness if thickness else (spacing or 0.0))
    tilt = _angle_deg(np.abs(normal), np.array([0.0, 0.0, 1.0])) if normal is not None else None
    return SeriesCandidate(
        key=key,
        series_instance_uid=first.series_instance_uid,
        study_instance_uid=first.study_instance_uid,
        series_number=_mode((h.series_number for h in members), None),
        description=_mode(h.series_description for h in members),
        modality=_mode(h.modality for h in members),
        sop_class_uid=_mode(h.sop_class_uid for h in members),
        image_type=first.image_type,
        kernel=_mode(h.kernel for h in members),
        body_part=_mode(h.body_part for h in members),
        contrast_agent=_mode(h.contrast_agent for h in members),
        contrast_administered=any(h.contrast_administered for h in members),
        n_instances=len(members),
        n_slices=n_slices,
        n_duplicate_files=n_duplicates,
        coverage_mm=coverage,
        spacing_mm=spacing,
        max_gap_mm=max_gap,
        slice_thickness_mm=thickness,
        tilt_deg=tilt,
        gantry_tilt_deg=_median(h.gantry_tilt_deg for h in members),
        orientation=orientation,
        has_pixel_data=all(h.has_pixel_data for h in members),
        is_multiframe=any(h.is_multiframe for h in members),
        frames=tuple(ordered),
        instances=tuple(members),
    )


def group_series(
    instances: Iterable[InstanceHeader], *, orientation_split_deg: float = 1.0
) -> list[SeriesCandidate]:
    """Group instances by study and series, splitting a series that mixes
    orientations (beyond ``orientation_split_deg``) or image types (first three
    ImageType values) into candidates keyed ``UID.1``, ``UID.2``..."""
    by_series: dict[tuple[str, str], list[InstanceHeader]] = defaultdict(list)
    for h in instances:
        by_series[(h.study_instance_uid, h.series_instance_uid or "unknown-series")].append(h)
    candidates = []
    for (_, series_uid), members in sorted(by_series.items()):
        parts: list[tuple[tuple[str, ...], tuple[float, ...] | None, list[InstanceHeader]]] = []
        for h in sorted(members, key=lambda m: (m.instance_number or 0, m.path)):
            type_key = h.image_type[:3]
            for p_type, p_orient, p_members in parts:
                if p_type != type_key:
                    continue
                if (p_orient is None) != (h.orientation is None):
                    continue
                if p_orient is None or _same_orientation(p_orient, h.orientation, orientation_split_deg):  # type: ignore[arg-type]
                    p_members.append(h)
                    break
            else:
                parts.append((type_key, h.orientation, [h]))
        parts.sort(key=lambda p: (-len(p[2]), "\\".join(p[0])))
        for i, (_, _, p_members) in enumerate(parts, start=1):
            key = series_uid if len(parts) == 1 else f"{series_uid}.{i}"
            candidates.append(_build_candidate(key, p_members))
    return candidates


# ---------------------------------------------------------------------------
# pixels: sharp-kernel check


def sharp_by_histogram(
    hu: np.ndarray,
    *,
    max_residual_hu: float = 30.0,
    soft_tissue_hu: tuple[float, float] = (0.0, 80.0),
    min_pixels: int = 2000,
) -> tuple[bool | None, float]:
    """Does a CT slice (or volume) look reconstructed with a bone/sharp kernel?

    Takes the soft-tissue part of the HU histogram (pixels whose 5x5 in-plane
    mean lies in ``soft_tissue_hu``, eroded away from edges) and measures the
    spread of the pixel values around their local mean (robust sigma,
    1.4826 x MAD). A
    soft or brain kernel gives a few HU; a bone kernel tens. Returns
    ``(verdict, residual_hu)``; the verdict is None when too few soft-tissue
    pixels are present to tell (a phantom, a tiny test image).

    In numpy alone (what ``scipy.ndimage.uniform_filter`` with mirrored edges and
    ``binary_erosion`` with the in-plane cross do): importing scipy.ndimage would
    cost series selection, and so ``ictus volume``, a quarter of a second.
    """
    arr = np.asarray(hu, dtype=np.float32)
    if arr.ndim not in (2, 3) or arr.size == 0:
        return None, float("nan")
    local = _box_mean_5(_box_mean_5(arr, -2), -1)
    mask = (local >= soft_tissue_hu[0]) & (local <= soft_tissue_hu[1])
    mask = _erode_in_plane(_erode_in_plane(mask))
    if int(mask.sum()) < min_pixels:
        return None, float("nan")
    residual = (arr - local)[mask]
    sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    return sigma > max_residual_hu, sigma


def _box_mean_5(arr: np.ndarray, axis: int) -> np.ndarray:
    """Mean of 5 neighbours along ``axis``, edges mirrored (``abc|cba``), summed in float64, float32 out
    (as ``scipy.ndimage.uniform_filter1d(arr, 5, axis)`` with its default mode)."""
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (2, 2)
    padded = np.moveaxis(np.pad(arr.astype(np.float64), pad, mode="symmetric"), axis, -1)
    n = arr.shape[axis]
    total = padded[..., 0:n].copy()
    for k in range(1, 5):
        total += padded[..., k : k + n]
    return np.moveaxis(total / 5.0, -1, axis).astype(np.float32)


def _erode_in_plane(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by the in-plane cross (4 neighbours in the last two axes), outside = False
    (``scipy.ndimage.binary_erosion`` with that structure and its default border)."""
    out = mask.copy()
    out[..., 1:, :] &= mask[..., :-1, :]
    out[..., :-1, :] &= mask[..., 1:, :]
    out[..., :, 1:] &= mask[..., :, :-1]
    out[..., :, :-1] &= mask[..., :, 1:]
    out[..., 0, :] = False
    out[..., -1, :] = False
    out[..., :, 0] = False
    out[..., :, -1] = False
    return out


def _middle_frame(c: SeriesCandidate) -> FrameRef:
    return c.frames[len(c.frames) // 2]


def _pixel_check(
    c: SeriesCandidate, check: Mapping[str, Any], pixel_reader: Callable[[str, int | None], np.ndarray]
) -> str | None:
    frame = _middle_frame(c)
    try:
        hu = pixel_reader(frame.path, frame.frame_number)
    except InvalidInputError as exc:
        # info, not warning: the builder reports the same file as the one error line if this series is
        # chosen (a warning here made a second stderr line; found by scripts/fuzz_ingest.py)
        log.info("pixel check skipped for one series: %s", exc)
        return None
    verdict, residual = sharp_by_histogram(
        hu,
        max_residual_hu=float(check["max_residual_hu"]),
        soft_tissue_hu=tuple(check["soft_tissue_hu"]),  # type: ignore[arg-type]
        min_pixels=int(check["min_pixels"]),
    )
    log.debug("series %s: soft-tissue residual %.1f HU", c.key, residual)
    if verdict:
        return _format_reason(check["reason"], {"residual_hu": residual, **{k: v for k, v in check.items() if not isinstance(v, (list, dict))}})
    return None


# ---------------------------------------------------------------------------
# selection


def _rank_key(c: SeriesCandidate) -> tuple[Any, ...]:
    return (not c.eligible, -(c.score or 0.0), c.study_instance_uid, c.series_number if c.series_number is not None else 1 << 30, c.key)


def select_series(
    scan_result: ScanResult,
    *,
    rules: Mapping[str, Any] | None = None,
    check_pixels: bool = True,
    pixel_reader: Callable[[str, int | None], np.ndarray] = read_frame_hu,
) -> SeriesChoice:
    """Group the scanned instances, judge every candidate and choose the best.

    Every candidate gets a score or its rejection reasons. With
    ``check_pixels``, the best-scored eligible candidates (at most
    ``max_candidates`` of the rule) have one middle slice read and are rejected
    when its HU histogram shows a sharp kernel, until one passes. Never raises
    for "nothing eligible": see :func:`require_choice`.
    """
    rules = rules or load_rules()
    tol = float(rules.get("tolerances", {}).get("orientation_split_deg", 1.0))
    candidates = sorted(evaluate(group_series(scan_result.instances, orientation_split_deg=tol), rules), key=_rank_key)
    if check_pixels:
        for check in rules.get("pixel_checks", ()):
            if check.get("test") != "sharp_by_histogram":
                raise ValueError(f"pixel check {check.get('name')!r} names an unknown test")
            limit = int(check.get("max_candidates", 3))
            for i, c in enumerate(candidates):
                if limit <= 0 or not c.eligible:
                    break
                limit -= 1
                reason = _pixel_check(c, check, pixel_reader)
                if reason is None:
                    break  # the best candidate passes: the others need no pixels
                candidates[i] = replace(c, score=None, rejections=((check["name"], reason),))
            candidates.sort(key=_rank_key)
    chosen = candidates[0] if candidates and candidates[0].eligible else None
    if chosen is not None:
        log.info("chose series %s (score %.1f) among %d", chosen.key, chosen.score or 0.0, len(candidates))
    return SeriesChoice(
        candidates=tuple(candidates),
        chosen=chosen,
        n_files=scan_result.n_files,
        skipped_non_dicom=scan_result.skipped_non_dicom,
        unreadable=scan_result.unreadable,
        flags=scan_result.flags,
    )


def require_choice(choice: SeriesChoice) -> SeriesCandidate:
    """The chosen candidate, or :class:`NoEligibleSeriesError` saying why none."""
    if choice.chosen is not None:
        return choice.chosen
    counts = choice.rejection_counts()
    common = ", ".join(f"{n} {label}" for label, n in counts.most_common(3))
    n = len(choice.candidates)
    raise NoEligibleSeriesError(
        f"no usable non-contrast head CT: {n} series rejected ({common}); "
        "give a study with an axial non-contrast head CT (run 'ictus series' to see every reason)"
    )


def find_candidate(choice: SeriesChoice, uid: str) -> SeriesCandidate:
    """The candidate whose key or SeriesInstanceUID is ``uid`` (the best one if
    a split series matches several), or InvalidInputError."""
    matches = [c for c in choice.candidates if uid in (c.key, c.series_instance_uid)]
    if not matches:
        raise InvalidInputError(
            f"no series {uid!r} in the input ({len(choice.candidates)} series found); "
            "run 'ictus series' to list them"
        )
    return sorted(matches, key=_rank_key)[0]
