"""The model registry: model cards as plain data.

A card (``models/cards/<id>-<version>.json``) is the single source of truth for
a model: id and version, class labels with standard codes and roles ("blood",
"oedema", ...: :meth:`ModelCard.class_names_by_role`), preprocessing
(spacing, HU window, scaling), patch and context sizes and the runtime's tile
sizes and cost model (read by :class:`ictus.models.geometry.TileGeometry`), ensemble members with
their sha256 and pinned upstream URLs, source, licence, citation, intended use
and known limitations. This module imports no onnxruntime and no torch; the CLI
takes its choices from it and its tests need no weights.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ictus.imaging.errors import ModelError
from ictus.models.geometry import TileGeometry

log = logging.getLogger(__name__)

CARDS_DIR = Path(__file__).resolve().parent / "cards"
#: Class roles a card may give (``classes[].role``): what the pipeline measures and reports.
CLASS_ROLES = ("background", "blood", "oedema", "other")
#: Roles of cards that give none, by class name (the BLAST-CT classes).
_LEGACY_ROLES = {"background": "background", "IPH": "blood", "EAH": "blood", "IVH": "blood", "oedema": "oedema"}
#: The card triage uses when none is named (CLI ``--model`` default, ``TriageOptions.model``).
DEFAULT_MODEL = "blast-ct"
CARD_FORMAT = 1
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MEMBER_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Code:
    """A coded concept, as DICOM writes it (e.g. SCT 274100004 "Cerebral hemorrhage")."""

    scheme_designator: str
    code_value: str
    code_meaning: str

    def to_dict(self) -> dict[str, str]:
        return {
            "scheme_designator": self.scheme_designator,
            "code_value": self.code_value,
            "code_meaning": self.code_meaning,
        }


@dataclass(frozen=True)
class ClassLabel:
    """One output channel / label value of the model.

    ``codes`` maps a role to a :class:`Code`: ``category`` and ``type`` (the
    DICOM SEG segmented property category and type, CIDs 7150/7151),
    ``anatomic_region`` (optional) and ``finding`` (the clinical concept).
    ``role`` says what the class is to the pipeline (:data:`CLASS_ROLES`): "blood"
    classes are haemorrhage subtypes, "oedema" is measured and reported on its own.
    """

    value: int
    name: str
    description: str
    codes: Mapping[str, Code] = field(default_factory=dict)
    code_note: str = ""
    role: str = "other"

    def code(self, role: str) -> Code | None:
        """The code for ``role`` ("category", "type", "anatomic_region", "finding"), or None."""
        return self.codes.get(role)


@dataclass(frozen=True)
class Member:
    """One ensemble member: its weights file and where it comes from."""

    name: str
    file: str
    path: str
    size_bytes: int
    sha256: str
    url: str

    @property
    def onnx_file(self) -> str:
        """File name of the converted ONNX model (next to the weights)."""
        return f"{self.name}.onnx"


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects before the network (see the card's ``preprocessing``)."""

    spacing_mm: tuple[float, float, float]
    window_hu: tuple[float, float]
    scaling: str
    interpolation: str = "linear"
    reorient: str = ""
    postprocessing: str = ""


@dataclass(frozen=True)
class PatchGeometry:
    """Patch and context sizes, in voxels at ``spacing_mm``.

    A valid input size per axis is ``valid_input_offset_vox + k *
    valid_input_step_vox`` and gives ``k * valid_input_step_vox`` output voxels.
    """

    input_size_vox: int
    output_size_vox: int
    valid_input_offset_vox: int
    valid_input_step_vox: int
    context_vox: int
    tile_multiple_vox: int
    valid_input_rule: str = ""
    note: str = ""

    def is_valid_input_size(self, size_vox: int) -> bool:
        """True where ``size_vox`` is an input size the network accepts."""
        k, rest = divmod(size_vox - self.valid_input_offset_vox, self.valid_input_step_vox)
        return rest == 0 and k > 0

    def output_size_for(self, input_size_vox: int) -> int:
        """Output voxels per axis for a valid input size."""
        if not self.is_valid_input_size(input_size_vox):
            raise ValueError(
                f"input size {input_size_vox} is not valid; use {self.valid_input_offset_vox} + "
                f"k * {self.valid_input_step_vox} voxels"
            )
        return input_size_vox - self.valid_input_offset_vox


@dataclass(frozen=True)
class Source:
    """Where the weights come from, pinned to a commit."""

    repository: str
    commit: str
    url: str
    raw_base_url: str
    weights_path: str = ""
    note: str = ""


@dataclass(frozen=True)
class ModelCard:
    """A model card (plain data). Load with :func:`get_card` or :func:`load_card`.

    ``card_path`` is the JSON file it was read from; for a card loaded by path
    (``--model PATH``) the members are looked for next to it.
    """

    id: str
    version: str
    name: str
    description: str
    classes: tuple[ClassLabel, ...]
    preprocessing: Preprocessing
    patch: PatchGeometry
    members: tuple[Member, ...]
    fast_member: str
    default_members: tuple[str, ...]
    source: Source
    license_spdx: str
    license_text: str
    citation: str
    doi: str
    intended_use: str
    known_limitations: tuple[str, ...]
    card_path: Path | None = None
    builtin: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ref(self) -> str:
        """``id:version``, e.g. ``blast-ct:v1``."""
        return f"{self.id}:{self.version}"

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in label-value order (index 0 = background)."""
        return tuple(c.name for c in self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_names_by_role(self, role: str) -> tuple[str, ...]:
        """Names of the classes with ``role`` ("background", "blood", "oedema", "other"),
        in label-value order, e.g. ``("IPH", "EAH", "IVH")`` for "blood"."""
        if role not in CLASS_ROLES:
            raise ModelError(f"unknown class role {role!r}; use one of {', '.join(CLASS_ROLES)}")
        return tuple(c.name for c in self.classes if c.role == role)

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    def class_label(self, name_or_value: str | int) -> ClassLabel:
        """A class by name ("IPH") or label value (1)."""
        for c in self.classes:
            if c.name == name_or_value or c.value == name_or_value:
                return c
        raise ModelError(f"model {self.ref} has no class {name_or_value!r}; classes are {', '.join(self.class_names)}")

    def member(self, name: str) -> Member:
        """A member by name ("model_1")."""
        for m in self.members:
            if m.name == name:
                return m
        raise ModelError(f"model {self.ref} has no member {name!r}; members are {', '.join(self.member_names)}")

    def select_members(self, selection: Iterable[str | int] | str | None = None) -> tuple[Member, ...]:
        """Members for a selection: None/"default" = the default members, "fast" = the
        fast member, "all" = every member, or names / 1-based numbers ("model_2", "2", 2),
        also as one comma-separated string ("1,2")."""
        if selection is None:
            return tuple(self.member(n) for n in self.default_members)
        if isinstance(selection, str):
            key = selection.strip().lower()
            if key in ("", "default"):
                return tuple(self.member(n) for n in self.default_members)
            if key == "fast":
                return (self.member(self.fast_member),)
            if key == "all":
                return self.members
            selection = [s for s in selection.split(",") if s.strip()]
        chosen: list[Member] = []
        for item in selection:
            name = str(item).strip()
            if name.isdigit():
                index = int(name)
                if not 1 <= index <= len(self.members):
                    raise ModelError(
                        f"model {self.ref} has members 1..{len(self.members)}; {index} is out of range"
                    )
                member = self.members[index - 1]
            else:
                member = self.member(name)
            if member not in chosen:
                chosen.append(member)
        if not chosen:
            raise ModelError(f"no members selected for model {self.ref}")
        return tuple(chosen)

    def normalise_hu(self, hu: np.ndarray) -> np.ndarray:
        """Clip HU to the card's window and map it linearly to [-1, 1] (float32).

        ``(2 * clip(HU, lo, hi) - lo - hi) / (hi - lo)``; for [-15, 100] this is
        ``(2*HU + 15 - 100) / 115``, as the upstream ``IntensityWindowNormalization``.
        """
        lo, hi = self.preprocessing.window_hu
        x = np.clip(np.asarray(hu, dtype=np.float32), np.float32(lo), np.float32(hi))
        return ((2.0 * x - np.float32(lo + hi)) / np.float32(hi - lo)).astype(np.float32, copy=False)

    def onnx_metadata(self, member: str | Member | None = None) -> dict[str, str]:
        """String metadata to embed in an exported ONNX model."""
        meta = {
            "ictus.model_id": self.id,
            "ictus.model_version": self.version,
            "ictus.class_names": json.dumps(list(self.class_names)),
            "ictus.spacing_mm": json.dumps(list(self.preprocessing.spacing_mm)),
            "ictus.window_hu": json.dumps(list(self.preprocessing.window_hu)),
            "ictus.scaling": self.preprocessing.scaling,
            "ictus.valid_input": f"{self.patch.valid_input_offset_vox} + k * {self.patch.valid_input_step_vox}",
            "ictus.source": f"{self.source.repository}@{self.source.commit}",
            "ictus.license": self.license_spdx,
            "ictus.citation_doi": self.doi,
        }
        if member is not None:
            m = member if isinstance(member, Member) else self.member(member)
            meta["ictus.member"] = m.name
            meta["ictus.source_sha256"] = m.sha256
            meta["ictus.source_url"] = m.url
        return meta

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-able data (the file it was read from)."""
        return json.loads(json.dumps(self.raw))

    def summary(self) -> dict[str, Any]:
        """A short JSON-able description (for ``ictus models list --json`` and provenance)."""
        return {
            "id": self.id,
            "version": self.version,
            "name": self.name,
            "classes": list(self.class_names),
            "members": len(self.members),
            "fast_member": self.fast_member,
            "source": f"{self.source.repository}@{self.source.commit}",
            "license": self.license_spdx,
            "doi": self.doi,
            "card": str(self.card_path) if self.card_path else None,
        }


def _require(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ModelError(f"model card {where} lacks the field {key!r}; fix the card file")
    return data[key]


def _code(d: Mapping[str, Any], where: str) -> Code:
    return Code(
        scheme_designator=str(_require(d, "scheme_designator", where)),
        code_value=str(_require(d, "code_value", where)),
        code_meaning=str(_require(d, "code_meaning", where)),
    )


def card_from_dict(data: Mapping[str, Any], *, card_path: Path | None = None, builtin: bool = False) -> ModelCard:
    """Build and check a :class:`ModelCard` from parsed JSON. Raises ModelError if malformed."""
    where = str(card_path) if card_path else "(in memory)"
    if not isinstance(data, Mapping):
        raise ModelError(f"model card {where} is not a JSON object; fix the card file")
    fmt = data.get("card_format", CARD_FORMAT)
    if fmt != CARD_FORMAT:
        raise ModelError(f"model card {where} has card_format {fmt!r}; this Ictus reads format {CARD_FORMAT}")
    try:
        classes = tuple(
            ClassLabel(
                value=int(_require(c, "value", where)),
                name=str(_require(c, "name", where)),
                description=str(c.get("description", "")),
                codes={role: _code(code, where) for role, code in (c.get("codes") or {}).items()},
                code_note=str(c.get("code_note", "")),
                role=str(c.get("role") or _LEGACY_ROLES.get(str(c.get("name")))
                         or ("background" if int(c.get("value", -1)) == 0 else "other")),
            )
            for c in _require(data, "classes", where)
        )
        members = tuple(
            Member(
                name=str(_require(m, "name", where)),
                file=str(_require(m, "file", where)),
                path=str(m.get("path", m["file"])),
                size_bytes=int(_require(m, "size_bytes", where)),
                sha256=str(_require(m, "sha256", where)).lower(),
                url=str(m.get("url", "")),
            )
            for m in _require(data, "members", where)
        )
        pre = _require(data, "preprocessing", where)
        spacing = tuple(float(v) for v in _require(pre, "spacing_mm", where))
        window = tuple(float(v) for v in _require(pre, "window_hu", where))
        patch = _require(data, "patch", where)
        src = data.get("source") or {}
        lic = data.get("license") or {}
        cit = data.get("citation") or {}
        card = ModelCard(
            id=str(_require(data, "id", where)),
            version=str(_require(data, "version", where)),
            name=str(data.get("name", data["id"])),
            description=str(data.get("description", "")),
            classes=classes,
            preprocessing=Preprocessing(
                spacing_mm=spacing,  # type: ignore[arg-type]
                window_hu=window,  # type: ignore[arg-type]
                scaling=str(pre.get("scaling", "")),
                interpolation=str(pre.get("interpolation", "linear")),
                reorient=str(pre.get("reorient", "")),
                postprocessing=str(pre.get("postprocessing", "")),
            ),
            patch=PatchGeometry(
                input_size_vox=int(_require(patch, "input_size_vox", where)),
                output_size_vox=int(_require(patch, "output_size_vox", where)),
                valid_input_offset_vox=int(_require(patch, "valid_input_offset_vox", where)),
                valid_input_step_vox=int(_require(patch, "valid_input_step_vox", where)),
                context_vox=int(_require(patch, "context_vox", where)),
                tile_multiple_vox=int(_require(patch, "tile_multiple_vox", where)),
                valid_input_rule=str(patch.get("valid_input_rule", "")),
                note=str(patch.get("note", "")),
            ),
            members=members,
            fast_member=str(data.get("fast_member", members[0].name if members else "")),
            default_members=tuple(str(n) for n in data.get("default_members", [m.name for m in members])),
            source=Source(
                repository=str(src.get("repository", "")),
                commit=str(src.get("commit", "")),
                url=str(src.get("url", "")),
                raw_base_url=str(src.get("raw_base_url", "")),
                weights_path=str(src.get("weights_path", "")),
                note=str(src.get("note", "")),
            ),
            license_spdx=str(lic.get("spdx", "")),
            license_text=str(lic.get("copyright", "")),
            citation=str(cit.get("text", "")),
            doi=str(cit.get("doi", "")),
            intended_use=str(data.get("intended_use", "")),
            known_limitations=tuple(str(s) for s in data.get("known_limitations", [])),
            card_path=card_path,
            builtin=builtin,
            raw=json.loads(json.dumps(data)),
        )
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"model card {where} is malformed ({type(exc).__name__}: {exc}); fix the card file") from None
    _check(card, where)
    return card


def _check(card: ModelCard, where: str) -> None:
    """Consistency checks; one ModelError naming the first problem."""
    problems: list[str] = []
    if [c.value for c in card.classes] != list(range(len(card.classes))):
        problems.append("class values must be 0..C-1 in order")
    bad_roles = sorted({c.role for c in card.classes} - set(CLASS_ROLES))
    if bad_roles:
        problems.append(f"unknown class role(s) {', '.join(bad_roles)}; use {', '.join(CLASS_ROLES)}")
    if not card.members:
        problems.append("no members")
    names = [m.name for m in card.members]
    if len(set(names)) != len(names):
        problems.append("member names repeat")
    for m in card.members:
        if not _SHA256_RE.match(m.sha256):
            problems.append(f"member {m.name} sha256 is not 64 hex digits")
        if not _MEMBER_NAME_RE.match(m.name) or not _MEMBER_NAME_RE.match(m.file):
            problems.append(f"member {m.name} has an unsafe name or file name")
        if m.size_bytes <= 0:
            problems.append(f"member {m.name} size_bytes must be positive")
    for n in (card.fast_member, *card.default_members):
        if n not in names:
            problems.append(f"member {n!r} is named but not listed")
    if len(card.preprocessing.spacing_mm) != 3 or min(card.preprocessing.spacing_mm) <= 0:
        problems.append("spacing_mm must be 3 positive numbers")
    lo_hi = card.preprocessing.window_hu
    if len(lo_hi) != 2 or not lo_hi[0] < lo_hi[1]:
        problems.append("window_hu must be [low, high] with low < high")
    try:
        TileGeometry.from_card(card)  # the runtime's reading of the patch and runtime blocks
    except ModelError as exc:
        problems.append(str(exc).removesuffix("; fix the model card").removesuffix("; fix the card"))
    if problems:
        raise ModelError(f"model card {where} is invalid: {'; '.join(problems)}")


def load_card(path: str | Path) -> ModelCard:
    """Read a card from a JSON file, or from a folder holding ``card.json`` (or one ``*.json``).

    Members of such a card are looked for next to the card file.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        candidates = [p / "card.json"] if (p / "card.json").is_file() else sorted(p.glob("*.json"))
        if len(candidates) != 1:
            raise ModelError(
                f"folder {p} holds {len(candidates)} card files; pass the card file itself (e.g. {p}/card.json)"
            )
        p = candidates[0]
    return card_from_dict(read_card_json(p, "model card", "a known model id"), card_path=p.resolve(), builtin=False)


def read_card_json(p: Path, kind: str, alternative: str) -> Any:
    """The parsed JSON of a card file, or ModelError saying what is wrong (``kind`` e.g.
    "model card"; ``alternative`` what else the user may pass, e.g. "a known model id")."""
    if not p.is_file():
        raise ModelError(f"{kind} {p} does not exist; pass a {kind} JSON file or {alternative}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{kind} {p} cannot be read as JSON ({exc}); fix or replace the file") from None


def list_cards() -> list[ModelCard]:
    """Every card shipped with Ictus (``models/cards/*.json``), sorted by id and version."""
    cards = []
    for p in sorted(CARDS_DIR.glob("*.json")):
        data = json.loads(p.read_text(encoding="utf-8"))
        cards.append(card_from_dict(data, card_path=p, builtin=True))
    return sorted(cards, key=lambda c: (c.id, c.version))


def get_card(model: str) -> ModelCard:
    """A shipped card by id ("blast-ct", the newest version), ``id:version``
    ("blast-ct:v1") or ``id-version`` ("blast-ct-v1"); a path to a card file
    is also accepted. Unknown ids raise ModelError listing the known ones."""
    key = model.strip()
    cards = list_cards()
    for c in cards:
        if key in (c.ref, f"{c.id}-{c.version}", f"{c.id}/{c.version}"):
            return c
    same_id = [c for c in cards if c.id == key]
    if same_id:
        return same_id[-1]
    if key.endswith(".json") or "/" in key or Path(key).is_dir():
        return load_card(key)
    known = ", ".join(c.ref for c in cards) or "none"
    raise ModelError(f"unknown model {model!r}; known models: {known} (or pass a path to a card JSON file)")
