"""Model assets (templates, atlases): installed, verified and resolved like weights.

An asset card (``models/cards/assets/<id>.json``, plain JSON with ``"kind": "asset"``)
lists every file of an asset with its relative path in the installed folder, size,
sha256 and pinned upstream URL, plus sources, licences and citations. Shipped assets:

- ``stroke-atlas``: Rorden's CT template (``template/``) and the ASPECTS region masks
  (``aspects/``), as :mod:`ictus.imaging.stroke_atlas` reads them;
- ``blast-ct-atlas``: BLAST-CT's localisation atlas (``atlas_template_space.nii.gz``,
  ``ct_template_mask.nii.gz``, ``atlas_labels.csv``).

An asset lives in ``<models dir>/<id>/<version>/`` with the card's relative paths and a
copy of the card (``card.json``); the models dir is resolved as for weights
(:func:`ictus.models.weights.models_home`: ``--models-dir``, ``$ICTUS_MODELS_DIR``, the user
cache). :func:`pull_asset` reuses the weights' download (retries, back-off, resume),
copy, size/sha256 refusal and atomic rename; :func:`verify_asset` checks sha256;
:func:`resolve_asset_dir` (cheap: presence and size) is what the pipeline calls.
"""
from __future__ import annotations

import json
import logging
import re
import urllib.error
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from ictus.imaging.atomic import move_file, write_text
from ictus.imaging.errors import InvalidInputError, ModelError
from ictus.models.registry import Member, read_card_json
from ictus.models.weights import (
    CARD_FILE,
    ENV_MODELS_DIR,
    _copy_checked,
    _download,
    _is_url,
    _refuse_mismatch,
    file_sha256,
    models_home,
)

log = logging.getLogger(__name__)

ASSET_CARDS_DIR = Path(__file__).resolve().parent / "cards" / "assets"
ASSET_KIND = "asset"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


# -------------------------------------------------------------------------- cards
@dataclass(frozen=True)
class AssetFile:
    """One file of an asset: where it goes, what it must be, where it comes from."""

    path: str  # relative path in the installed folder, "/"-separated
    size_bytes: int
    sha256: str
    url: str
    source: str = ""
    upstream_path: str = ""
    mirror_paths: tuple[str, ...] = ()

    def as_member(self) -> Member:
        """The file as a :class:`Member`, for the shared download/check helpers."""
        return Member(name=self.path, file=self.path, path=self.upstream_path or self.path,
                      size_bytes=self.size_bytes, sha256=self.sha256, url=self.url)


@dataclass(frozen=True)
class AssetCard:
    """An asset card (plain data). Load with :func:`get_asset_card` or :func:`load_asset_card`."""

    id: str
    version: str
    name: str
    description: str
    files: tuple[AssetFile, ...]
    license_spdx: str
    citation: str
    doi: str
    card_path: Path | None = None
    builtin: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ref(self) -> str:
        """``id:version``, e.g. ``stroke-atlas:v1``."""
        return f"{self.id}:{self.version}"

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-able data (the file it was read from)."""
        return json.loads(json.dumps(self.raw))

    def summary(self) -> dict[str, Any]:
        """A short JSON-able description (for ``ictus models list --json``)."""
        sources = [f"{s.get('repository', '')}@{s.get('commit', '')}" for s in self.raw.get("sources", [])]
        return {
            "id": self.id,
            "version": self.version,
            "kind": ASSET_KIND,
            "name": self.name,
            "files": len(self.files),
            "size_bytes": self.size_bytes,
            "sources": sources,
            "license": self.license_spdx,
            "doi": self.doi,
            "card": str(self.card_path) if self.card_path else None,
        }


def is_asset_data(data: Any) -> bool:
    """True where parsed card JSON is an asset card (``"kind": "asset"``)."""
    return isinstance(data, Mapping) and data.get("kind") == ASSET_KIND


def _safe_rel(path: str) -> bool:
    p = PurePosixPath(path)
    return bool(path) and not p.is_absolute() and ".." not in p.parts and "\\" not in path and all(
        _ID_RE.match(part) for part in p.parts
    )


def asset_card_from_dict(data: Mapping[str, Any], *, card_path: Path | None = None, builtin: bool = False) -> AssetCard:
    """Build and check an :class:`AssetCard` from parsed JSON. Raises ModelError if malformed."""
    where = str(card_path) if card_path else "(in memory)"
    if not is_asset_data(data):
        raise ModelError(f"asset card {where} is not a JSON object with \"kind\": \"asset\"; fix the card file")
    try:
        files = tuple(
            AssetFile(
                path=str(f["path"]),
                size_bytes=int(f["size_bytes"]),
                sha256=str(f["sha256"]).lower(),
                url=str(f.get("url", "")),
                source=str(f.get("source", "")),
                upstream_path=str(f.get("upstream_path", "")),
                mirror_paths=tuple(str(p) for p in f.get("mirror_paths", [])),
            )
            for f in data["files"]
        )
        lic = data.get("license") or {}
        cit = data.get("citation") or {}
        card = AssetCard(
            id=str(data["id"]),
            version=str(data["version"]),
            name=str(data.get("name", data["id"])),
            description=str(data.get("description", "")),
            files=files,
            license_spdx=str(lic.get("spdx", "")),
            citation=str(cit.get("text", "")),
            doi=str(cit.get("doi", "")),
            card_path=card_path,
            builtin=builtin,
            raw=json.loads(json.dumps(data)),
        )
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"asset card {where} is malformed ({type(exc).__name__}: {exc}); fix the card file") from None
    problems: list[str] = []
    if data.get("card_format", 1) != 1:
        problems.append(f"card_format {data.get('card_format')!r} is not 1")
    if not _ID_RE.match(card.id) or not _ID_RE.match(card.version):
        problems.append("id and version must be letters, digits, '.', '_' or '-'")
    if not card.files:
        problems.append("no files")
    paths = [f.path for f in card.files]
    if len(set(paths)) != len(paths):
        problems.append("file paths repeat")
    for f in card.files:
        if not _safe_rel(f.path) or not all(_safe_rel(p) for p in f.mirror_paths):
            problems.append(f"{f.path!r} is not a safe relative path")
        if not _SHA256_RE.match(f.sha256):
            problems.append(f"{f.path} sha256 is not 64 hex digits")
        if f.size_bytes <= 0:
            problems.append(f"{f.path} size_bytes must be positive")
    if problems:
        raise ModelError(f"asset card {where} is invalid: {'; '.join(problems)}")
    return card


def load_asset_card(path: str | Path) -> AssetCard:
    """Read an asset card from a JSON file; its files are looked for next to it."""
    p = Path(path).expanduser()
    data = read_card_json(p, "asset card", "a known asset id")
    return asset_card_from_dict(data, card_path=p.resolve(), builtin=False)


def list_asset_cards() -> list[AssetCard]:
    """Every asset card shipped with Ictus (``models/cards/assets/*.json``), sorted by id and version."""
    cards = []
    for p in sorted(ASSET_CARDS_DIR.glob("*.json")):
        data = json.loads(p.read_text(encoding="utf-8"))
        cards.append(asset_card_from_dict(data, card_path=p, builtin=True))
    return sorted(cards, key=lambda c: (c.id, c.version))


def find_asset_card(name: str | Path) -> AssetCard | None:
    """A shipped asset card by id, ``id:version`` or ``id-version``, or an asset card
    file by path; None when ``name`` names no asset (it may name a model)."""
    key = str(name).strip()
    cards = list_asset_cards()
    for c in cards:
        if key in (c.ref, f"{c.id}-{c.version}", f"{c.id}/{c.version}"):
            return c
    same_id = [c for c in cards if c.id == key]
    if same_id:
        return same_id[-1]
    p = Path(key).expanduser()
    if p.suffix == ".json" and p.is_file():
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if is_asset_data(data):
            return asset_card_from_dict(data, card_path=p.resolve(), builtin=False)
    return None


def get_asset_card(name: str | Path) -> AssetCard:
    """Like :func:`find_asset_card`, but raises ModelError naming the known assets."""
    card = find_asset_card(name)
    if card is None:
        known = ", ".join(c.ref for c in list_asset_cards()) or "none"
        raise ModelError(f"unknown asset {str(name)!r}; known assets: {known}")
    return card


def asset_dir(card: AssetCard, models_dir: str | Path | None = None) -> tuple[Path, str]:
    """The installed folder of ``card`` and where that choice came from.

    A shipped card lives in ``<models home>/<id>/<version>``; a card loaded from a path
    keeps its files next to the card file unless ``models_dir`` is given.
    """
    if not card.builtin and card.card_path is not None and models_dir is None:
        return card.card_path.parent, "card folder"
    home, origin = models_home(models_dir)
    return home / card.id / card.version, origin


def _pull_command(card: AssetCard, models_dir: str | Path | None, origin: str) -> str:
    cmd = f"ictus models pull {card.card_path if origin == 'card folder' else card.id}"
    if origin == "--models-dir":
        cmd += f" --models-dir {models_dir}"
    return cmd


# ------------------------------------------------------------------------ resolve
def _complete(card: "AssetCard", directory: Path) -> bool:
    return all((directory / f.path).is_file() and (directory / f.path).stat().st_size == f.size_bytes
               for f in card.files)


def resolve_asset_dir(card_id: str, models_dir: str | Path | None = None) -> Path:
    """The installed folder of asset ``card_id`` ("stroke-atlas", "blast-ct-atlas").

    Looked for in ``models_dir`` (``--models-dir``), then ``$ICTUS_MODELS_DIR`` or the user
    cache. Checks that every file of the card is there with the right size (sha256 is checked
    by ``ictus models pull`` and ``ictus models verify``). Raises ModelError (exit 5)
    naming the missing files and the ``ictus models pull`` command to run.
    """
    card = get_asset_card(card_id)
    directory, origin = asset_dir(card, models_dir)
    if models_dir is not None and not _complete(card, directory):
        # weights in a project folder, atlases in the usual place: fall back like a search path
        fallback, _ = asset_dir(card, None)
        if _complete(card, fallback):
            return fallback
    missing: list[str] = []
    wrong: list[str] = []
    for f in card.files:
        p = directory / f.path
        if not p.is_file():
            missing.append(f.path)
        elif p.stat().st_size != f.size_bytes:
            wrong.append(f.path)
    if not missing and not wrong:
        return directory
    cmd = _pull_command(card, models_dir, origin)
    where = {
        ENV_MODELS_DIR: f"the folder named by {ENV_MODELS_DIR}",
        "--models-dir": "the given models folder",
        "card folder": "the card's folder",
    }.get(origin, "the user cache")
    if missing:
        what = f"missing {_names(missing)}" + (f", wrong size {_names(wrong)}" if wrong else "")
        state = "not installed" if len(missing) == len(card.files) else "incomplete"
    else:
        what, state = f"wrong size (corrupt or partial) {_names(wrong)}", "corrupt"
    raise ModelError(
        f"the {card.id} {card.version} asset is {state} in {directory} ({where}): {what}; "
        f"run `{cmd}` (downloads from the pinned upstream URLs) or `{cmd} --from /path/to/mirror` "
        f"(imports a local copy), or point --models-dir or {ENV_MODELS_DIR} at a folder that has it"
    )


def _names(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 3 else f"{len(names)} files ({names[0]} .. {names[-1]})"


# ------------------------------------------------------------------------- verify
@dataclass(frozen=True)
class AssetFileStatus:
    """What :func:`verify_asset` found for one file."""

    path: str
    local_path: Path
    present: bool
    size_bytes: int | None
    sha256: str | None
    sha256_ok: bool

    @property
    def corrupt(self) -> bool:
        """The file is there but is not the one the card names."""
        return self.present and not self.sha256_ok

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["local_path"] = str(self.local_path)
        return d


@dataclass(frozen=True)
class AssetVerifyReport:
    """Per-file state of one asset in one folder."""

    asset: str
    directory: Path
    origin: str
    files: tuple[AssetFileStatus, ...]

    @property
    def ok(self) -> bool:
        return all(f.sha256_ok for f in self.files)

    @property
    def verified(self) -> int:
        return sum(f.sha256_ok for f in self.files)

    def problems(self) -> list[str]:
        """One line per file that is missing or corrupt."""
        out = []
        for f in self.files:
            if f.corrupt:
                out.append(f"{f.path}: sha256 {f.sha256} ({f.size_bytes} bytes) does not match the card")
            elif not f.present:
                out.append(f"{f.path}: missing")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "asset": self.asset,
            "directory": str(self.directory),
            "origin": self.origin,
            "ok": self.ok,
            "verified": self.verified,
            "checked": len(self.files),
            "files": [f.to_dict() for f in self.files],
        }


def verify_asset(card: AssetCard, models_dir: str | Path | None = None) -> AssetVerifyReport:
    """Check every file of ``card``: present, size and sha256 as the card names."""
    directory, origin = asset_dir(card, models_dir)
    statuses = []
    for f in card.files:
        p = directory / f.path
        present = p.is_file()
        size = p.stat().st_size if present else None
        sha = file_sha256(p) if present else None
        statuses.append(AssetFileStatus(f.path, p, present, size, sha, present and size == f.size_bytes and sha == f.sha256))
    return AssetVerifyReport(asset=card.ref, directory=directory, origin=origin, files=tuple(statuses))


def verify_hint(card: AssetCard, models_dir: str | Path | None, report: AssetVerifyReport) -> str:
    """The one-line ModelError message for a failed :func:`verify_asset`."""
    bad = report.problems()
    cmd = _pull_command(card, models_dir, report.origin)
    return (
        f"{report.asset}: {len(bad)} file(s) missing or corrupt in {report.directory} (first: {bad[0]}); "
        f"run `{cmd}` (add --from DIR for a local mirror)"
    )


# --------------------------------------------------------------------------- pull
@dataclass(frozen=True)
class PulledFile:
    """What :func:`pull_asset` did for one file."""

    path: str
    action: str  # "downloaded", "copied" or "present"
    source: str
    size_bytes: int


@dataclass
class AssetPullReport:
    """The result of :func:`pull_asset`."""

    asset: str
    directory: Path
    files: list[PulledFile] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"asset": self.asset, "directory": str(self.directory), "files": [asdict(f) for f in self.files]}


def _layouts(card: AssetCard, f: AssetFile) -> list[str]:
    """Relative paths a file may have in a mirror (folder or base URL), in order:
    the installed layout, the card's mirror paths, the upstream path, ``<id>/<version>/``."""
    out = [f.path, *f.mirror_paths, *([f.upstream_path] if f.upstream_path else []), f"{card.id}/{card.version}/{f.path}"]
    return list(dict.fromkeys(out))


def _find_local(card: AssetCard, f: AssetFile, root: Path) -> Path | None:
    for rel in _layouts(card, f):
        p = root / rel
        if p.is_file():
            return p
    return None


def _fetch(card: AssetCard, f: AssetFile, base: str | None, part: Path, **kw: Any) -> str:
    """Fetch one file over HTTP(S)/file with the weights' retrying download; returns its URL."""
    m = f.as_member()
    urls = [f.url] if base is None else [f"{base.rstrip('/')}/{rel}" for rel in _layouts(card, f)]
    if not urls[0]:
        raise ModelError(f"the card for {card.ref} names no URL for {f.path}; use --from with a local mirror")
    not_found = []
    for url in urls:
        try:
            _download(url, part, m, **kw)
            return url
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise ModelError(
                    f"HTTP {exc.code} {exc.reason} for {url}; {f.path} was not installed: "
                    "check the URL or use --from with a local mirror"
                ) from None
            not_found.append(url)
    raise ModelError(
        f"{f.path} was not found (HTTP 404) at {' or '.join(not_found)}; it was not installed: "
        f"check the mirror, or run `ictus models pull {card.id}` without --from to use the pinned upstream URL"
    )


def pull_asset(
    card: AssetCard,
    models_dir: str | Path | None = None,
    source: str | Path | None = None,
    *,
    force: bool = False,
    retries: int = 3,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
) -> AssetPullReport:
    """Install every file of ``card`` into :func:`asset_dir`.

    ``source``: None for the pinned upstream URLs; an ``http(s)://`` or ``file://`` base
    URL; or a local mirror folder (the installed layout, e.g. ``../shared/models/stroke-atlas``,
    or the card's ``mirror_paths``, e.g. ``../shared/models/blast-ct``). Each file is
    streamed to a temporary name, checked (size, sha256) and renamed into place; a
    mismatch is refused and removed, and the other files are still installed. Intact
    files are kept unless ``force``. Raises InvalidInputError for a bad local
    ``source`` and one ModelError listing the files not installed.
    """
    directory, _ = asset_dir(card, models_dir)
    local_root: Path | None = None
    base_url: str | None = None
    if source is not None and str(source).strip():
        if _is_url(str(source)):
            base_url = str(source)
        else:
            local_root = Path(source).expanduser().resolve()
            if not local_root.is_dir():
                raise InvalidInputError(
                    f"--from {local_root} is not a folder; pass a mirror folder (e.g. one holding "
                    f"{card.files[0].path}) or an http(s):// base URL"
                )
            absent = [f.path for f in card.files if _find_local(card, f, local_root) is None]
            if absent:
                raise InvalidInputError(
                    f"--from {local_root} lacks {_names(absent)} of {card.id} (looked for "
                    f"{', '.join(_layouts(card, card.files[0]))} and the same for the others); "
                    "pass a folder that has them"
                )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the models folder {directory} ({exc}); pass a writable --models-dir") from None

    report = AssetPullReport(asset=card.ref, directory=directory)
    failed: list[str] = []
    for f in card.files:
        target = directory / f.path
        if not force and target.is_file() and target.stat().st_size == f.size_bytes and file_sha256(target) == f.sha256:
            report.files.append(PulledFile(f.path, "present", str(target), f.size_bytes))
            continue
        part = target.with_name(f".{target.name}.part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if local_root is not None:
                src = _find_local(card, f, local_root)
                assert src is not None
                part.unlink(missing_ok=True)
                _copy_checked(src, part)
                origin, action = str(src), "copied"
            else:
                if force:
                    part.unlink(missing_ok=True)
                origin = _fetch(card, f, base_url, part, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s)
                action = "downloaded"
            _refuse_mismatch(part, f.as_member(), origin)
        except ModelError as exc:
            log.warning("%s: %s", card.id, exc)
            failed.append(str(exc))
            continue
        except OSError as exc:
            part.unlink(missing_ok=True)
            failed.append(f"{f.path} could not be written in {directory} ({exc})")
            continue
        move_file(part, target)
        log.info("%s %s from %s (sha256 ok)", action, f.path, origin)
        report.files.append(PulledFile(f.path, action, origin, f.size_bytes))

    _write_card_copy(card, directory)
    if failed:
        rest = "nothing was installed" if len(failed) == len(card.files) else "the others are installed"
        raise ModelError(
            f"{card.ref}: {len(failed)} of {len(card.files)} file(s) not installed in {directory}, "
            f"{rest} (first: {failed[0]})"
        )
    return report


def _write_card_copy(card: AssetCard, directory: Path) -> None:
    """Keep a copy of the card next to the files, so the folder describes itself."""
    target = directory / CARD_FILE
    if card.card_path is not None and card.card_path.resolve() == target.resolve():
        return
    write_text(target, json.dumps(card.to_dict(), indent=2, ensure_ascii=False) + "\n")
