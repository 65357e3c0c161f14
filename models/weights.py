"""Model weights: where they live, how they arrive, and whether they are intact.

Resolution order of the models folder (the first one that is set is used):

1. the ``models_dir`` argument (CLI ``--models-dir``);
2. the environment variable ``ICTUS_MODELS_DIR``;
3. the user cache folder (``$XDG_CACHE_HOME/ictus/models`` or
   ``~/.cache/ictus/models``; ``~/Library/Caches/ictus/models`` on macOS,
   ``%LOCALAPPDATA%\\ictus\\Cache\\models`` on Windows).

Inside it a model lives in ``<dir>/<id>/<version>/``: the upstream weights
(``model_N.pt``, checked against the card's sha256), the converted ONNX models
(``model_N.onnx``, made on demand, never committed), a stamp per ONNX model
(``model_N.onnx.json``: the sha256 of the weights it was made from and of the
ONNX file itself) and a copy of the card (``card.json``). A card loaded from a
path (``--model PATH/TO/card.json``) keeps its members next to the card file.

:func:`pull` downloads from the card's pinned URLs (or a base URL, or a local
mirror folder), streams to a temporary file, checks size and sha256 and only
then renames it into place. No onnxruntime and no torch here; the converter
(``ictus.models.onnx_build``) is imported only when a conversion is needed.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ictus.imaging.atomic import move_file, write_text
from ictus.imaging.errors import InvalidInputError, ModelError
from ictus.models.hashing import file_sha256
from ictus.models.registry import Member, ModelCard

log = logging.getLogger(__name__)

ENV_MODELS_DIR = "ICTUS_MODELS_DIR"
CARD_FILE = "card.json"
STAMP_SUFFIX = ".json"  # model_N.onnx -> model_N.onnx.json
CHUNK_BYTES = 1 << 20
USER_AGENT = "ictus-models/1"

_URL_RE = re.compile(r"^(https?|file)://", re.IGNORECASE)


# --------------------------------------------------------------------- locations
def user_cache_dir(kind: str = "models") -> Path:
    """The platform's per-user cache folder for Ictus's ``kind`` of files ("models";
    "int8" for the runtime's quantised copies): ``$XDG_CACHE_HOME/ictus/<kind>`` or
    ``~/.cache/ictus/<kind>``, ``~/Library/Caches/ictus/<kind>`` on macOS,
    ``%LOCALAPPDATA%\\ictus\\Cache\\<kind>`` on Windows. The only place that computes it."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "ictus" / "Cache" / kind
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "ictus" / kind
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "ictus" / kind


def models_home(models_dir: str | Path | None = None) -> tuple[Path, str]:
    """The models folder and where that choice came from ("--models-dir",
    "ICTUS_MODELS_DIR" or "user cache")."""
    if models_dir is not None and str(models_dir).strip():
        return Path(models_dir).expanduser().resolve(), "--models-dir"
    env = os.environ.get(ENV_MODELS_DIR, "").strip()
    if env:
        return Path(env).expanduser().resolve(), ENV_MODELS_DIR
    return user_cache_dir(), "user cache"


def install_dir(card: ModelCard, models_dir: str | Path | None = None) -> tuple[Path, str]:
    """The folder that holds ``card``'s members, and where that choice came from.

    A card loaded from a path keeps its members next to the card file unless
    ``models_dir`` is given; a shipped card lives in ``<models home>/<id>/<version>``.
    """
    if not card.builtin and card.card_path is not None and models_dir is None:
        return card.card_path.parent, "card folder"
    home, origin = models_home(models_dir)
    return home / card.id / card.version, origin


# ----------------------------------------------------------------------- stamps
def _stamp_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + STAMP_SUFFIX)


def _read_stamp(onnx_path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_stamp_path(onnx_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def onnx_is_current(member: Member, onnx_path: Path, *, deep: bool = True) -> bool:
    """True where ``onnx_path`` exists and its stamp says it was made from exactly
    this member's weights (sha256) and the ONNX file is unchanged since (size, and
    sha256 when ``deep``)."""
    if not onnx_path.is_file():
        return False
    stamp = _read_stamp(onnx_path)
    if not stamp or stamp.get("source_sha256") != member.sha256:
        return False
    if stamp.get("onnx_size_bytes") != onnx_path.stat().st_size:
        return False
    return not deep or stamp.get("onnx_sha256") == file_sha256(onnx_path)


# ------------------------------------------------------------------------ reports
@dataclass(frozen=True)
class ResolvedMember:
    """A member ready for the runtime: its ONNX file and the weights it came from."""

    name: str
    onnx_path: Path
    weights_path: Path | None
    source_sha256: str
    converted: bool = False


@dataclass(frozen=True)
class MemberStatus:
    """What :func:`verify` found for one member."""

    name: str
    weights_path: Path
    present: bool
    size_bytes: int | None
    sha256: str | None
    sha256_ok: bool
    onnx_path: Path
    onnx_present: bool
    onnx_current: bool

    @property
    def corrupt(self) -> bool:
        """The weights file is there but is not the one the card names."""
        return self.present and not self.sha256_ok

    @property
    def usable(self) -> bool:
        """The runtime can use this member (verified weights, or an ONNX made from them)."""
        return not self.corrupt and (self.sha256_ok or self.onnx_current)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights_path"] = str(self.weights_path)
        d["onnx_path"] = str(self.onnx_path)
        d["usable"] = self.usable
        return d


@dataclass(frozen=True)
class VerifyReport:
    """Per-member state of one model in one folder."""

    model: str
    directory: Path
    origin: str
    members: tuple[MemberStatus, ...]

    @property
    def ok(self) -> bool:
        """Every member checked is usable and none is corrupt."""
        return all(m.usable for m in self.members)

    @property
    def installed(self) -> int:
        """How many members are usable."""
        return sum(m.usable for m in self.members)

    def problems(self) -> list[str]:
        """One line per member that is missing or corrupt."""
        out = []
        for m in self.members:
            if m.corrupt:
                out.append(f"{m.name}: {m.weights_path.name} sha256 {m.sha256} does not match the card")
            elif not m.usable:
                out.append(f"{m.name}: missing")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "directory": str(self.directory),
            "origin": self.origin,
            "ok": self.ok,
            "usable": self.installed,
            "checked": len(self.members),
            "members": [m.to_dict() for m in self.members],
        }


@dataclass(frozen=True)
class PulledMember:
    """What :func:`pull` did for one member."""

    name: str
    action: str  # "downloaded", "copied" or "present"
    source: str
    size_bytes: int
    onnx: str = "skipped"  # "converted", "current", "skipped" or "converter unavailable"


@dataclass
class PullReport:
    """The result of :func:`pull`."""

    model: str
    directory: Path
    members: list[PulledMember] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "directory": str(self.directory),
            "members": [asdict(m) for m in self.members],
        }


# ----------------------------------------------------------------------- verify
def verify(
    card: ModelCard,
    models_dir: str | Path | None = None,
    members: Iterable[str | int] | str | None = None,
) -> VerifyReport:
    """Check which members are present, match their sha256, and have an up-to-date ONNX."""
    directory, origin = install_dir(card, models_dir)
    statuses = []
    for m in card.select_members(members):
        pt = directory / m.file
        onnx = directory / m.onnx_file
        present = pt.is_file()
        size = pt.stat().st_size if present else None
        sha = file_sha256(pt) if present else None
        statuses.append(
            MemberStatus(
                name=m.name,
                weights_path=pt,
                present=present,
                size_bytes=size,
                sha256=sha,
                sha256_ok=sha == m.sha256 and size == m.size_bytes,
                onnx_path=onnx,
                onnx_present=onnx.is_file(),
                onnx_current=onnx_is_current(m, onnx),
            )
        )
    return VerifyReport(model=card.ref, directory=directory, origin=origin, members=tuple(statuses))


# ----------------------------------------------------------------------- resolve
def _pull_hint(card: ModelCard, models_dir: str | Path | None, origin: str, names: list[str], all_default: bool) -> str:
    """The exact command(s) to run when weights are missing."""
    cmd = f"ictus models pull {card.card_path if origin == 'card folder' else card.id}"
    if origin == "--models-dir":
        cmd += f" --models-dir {models_dir}"
    if not all_default:
        cmd += " --members " + ",".join(n.split("_")[-1] if n.startswith("model_") else n for n in names)
    where = {
        ENV_MODELS_DIR: f"the folder named by {ENV_MODELS_DIR}",
        "--models-dir": "the folder given by --models-dir",
        "card folder": "the card's folder",
    }.get(origin, "the user cache")
    return (
        f"run `{cmd}` (downloads from the pinned upstream URLs) or `{cmd} --from /path/to/mirror` "
        f"(imports a local copy) to install them into {where}, "
        f"or point --models-dir or {ENV_MODELS_DIR} at a folder that already has them"
    )


def _converter() -> Callable[..., Any]:
    """``ictus.models.onnx_build.convert_member``, imported only when a conversion is needed."""
    try:
        from ictus.models.onnx_build import convert_member  # noqa: PLC0415 - lazy on purpose
    except ImportError as exc:
        raise ModelError(
            f"the ONNX converter ictus.models.onnx_build is not available ({exc}); "
            "install Ictus with its onnx dependency, or place converted model_N.onnx files next to the weights"
        ) from None
    return convert_member


def converter_available() -> bool:
    """True where :func:`convert_to_onnx` can run (ictus.models.onnx_build imports)."""
    try:
        _converter()
    except ModelError:
        return False
    return True


def convert_to_onnx(card: ModelCard, member: Member, weights_path: Path, onnx_path: Path) -> Path:
    """Convert verified weights to ONNX next to them (temp file, then rename), and stamp it."""
    convert_member = _converter()
    log.info("converting %s to ONNX", weights_path.name)
    t0 = time.monotonic()
    _stamp_path(onnx_path).unlink(missing_ok=True)
    try:
        written = convert_member(weights_path, onnx_path, metadata=card.onnx_metadata(member))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any converter failure is a model error
        raise ModelError(
            f"converting {weights_path.name} to ONNX failed ({type(exc).__name__}: {exc}); "
            f"check the weights with `ictus models verify {card.id}`"
        ) from exc
    if written is not None and Path(written) != onnx_path:
        move_file(written, onnx_path)
    if not onnx_path.is_file():
        raise ModelError(f"the converter wrote no {onnx_path}; report this as a bug")
    try:
        onnx_path.chmod(0o644)
    except OSError:
        pass
    stamp = {
        "model": card.ref,
        "member": member.name,
        "source_file": member.file,
        "source_sha256": member.sha256,
        "onnx_size_bytes": onnx_path.stat().st_size,
        "onnx_sha256": file_sha256(onnx_path),
        "converted_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "convert_s": round(time.monotonic() - t0, 2),
    }
    write_text(_stamp_path(onnx_path), json.dumps(stamp, indent=2) + "\n")
    return onnx_path


def resolve_members(
    card: ModelCard,
    models_dir: str | Path | None = None,
    members: Iterable[str | int] | str | None = None,
) -> list[ResolvedMember]:
    """ONNX files for the selected members (default: the card's default members).

    An ONNX file is used when its stamp matches the card's sha256 for the
    member; otherwise the weights are checked (sha256) and converted on demand.
    Raises ModelError whose message says exactly what to run when something is
    missing, and refuses weights whose sha256 does not match the card.
    """
    directory, origin = install_dir(card, models_dir)
    selected = card.select_members(members)
    ready: dict[str, ResolvedMember] = {}
    to_convert: list[Member] = []
    missing: list[str] = []
    for m in selected:
        onnx = directory / m.onnx_file
        pt = directory / m.file
        if onnx_is_current(m, onnx):
            ready[m.name] = ResolvedMember(m.name, onnx, pt if pt.is_file() else None, m.sha256)
        elif pt.is_file():
            to_convert.append(m)
        elif not card.builtin and onnx.is_file() and _read_stamp(onnx) is None:
            # A card shipped with bare ONNX members and nothing to convert from.
            log.info("using %s without a stamp (no weights to check it against)", onnx)
            ready[m.name] = ResolvedMember(m.name, onnx, None, m.sha256)
        else:
            missing.append(m.name)
    if missing:
        all_default = [m.name for m in selected] == list(card.default_members)
        raise ModelError(
            f"no {card.id} {card.version} weights for {_names(missing)} in {directory} ({origin}); "
            + _pull_hint(card, models_dir, origin, missing if not all_default else [], all_default)
        )
    for m in to_convert:
        pt = directory / m.file
        _check_file(card, m, pt, directory, models_dir, origin)
        onnx = convert_to_onnx(card, m, pt, directory / m.onnx_file)
        ready[m.name] = ResolvedMember(m.name, onnx, pt, m.sha256, converted=True)
    return [ready[m.name] for m in selected]


def _names(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{len(names)} members ({names[0]} .. {names[-1]})"


def _check_file(card: ModelCard, m: Member, path: Path, directory: Path, models_dir: Any, origin: str) -> None:
    """Refuse weights whose size or sha256 differ from the card."""
    size = path.stat().st_size
    sha = file_sha256(path)
    if size != m.size_bytes or sha != m.sha256:
        again = f"ictus models pull {card.id} --members {m.name.split('_')[-1]}" + (f" --models-dir {models_dir}" if origin == "--models-dir" else "")
        raise ModelError(
            f"{path} is not the {card.ref} {m.name} the card names (expected sha256 {m.sha256}, "
            f"{m.size_bytes} bytes; got {sha}, {size} bytes); refusing it: run `{again}` to replace it"
        )


# -------------------------------------------------------------------------- pull
def _layouts(card: ModelCard, m: Member) -> list[str]:
    """Relative paths a member may have in a mirror (folder or base URL), in order."""
    out = [m.path, f"saved_models_{card.version}/{m.file}", f"{card.id}/{card.version}/{m.file}", m.file]
    return list(dict.fromkeys(out))


def _is_url(source: str | Path) -> bool:
    return isinstance(source, str) and bool(_URL_RE.match(source))


def _refuse_mismatch(part: Path, m: Member, origin: str) -> None:
    """Check size and sha256 of a fetched file; remove it and raise if they differ."""
    size = part.stat().st_size
    sha = file_sha256(part)
    if size == m.size_bytes and sha == m.sha256:
        return
    part.unlink(missing_ok=True)
    raise ModelError(
        f"{m.file} from {origin} is not the file the card names (expected sha256 {m.sha256}, {m.size_bytes} bytes; "
        f"got {sha}, {size} bytes); the download was removed and nothing was installed: "
        "check the source or mirror, or use the pinned upstream URL (omit --from)"
    )


def _download_once(url: str, part: Path, m: Member, timeout_s: float) -> None:
    """One HTTP(S)/file GET into ``part``, resuming a partial file with a Range request."""
    have = part.stat().st_size if part.exists() else 0
    if have >= m.size_bytes:
        part.unlink()
        have = 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have and not url.lower().startswith("file:"):
        req.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        status = getattr(resp, "status", None) or 200
        append = status == 206 and have > 0
        if append:
            content_range = resp.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                append = False
        length = resp.headers.get("Content-Length")
        expected_rest = m.size_bytes - (have if append else 0)
        if length is not None and length.isdigit() and int(length) != expected_rest:
            raise ModelError(
                f"{url} offers {int(length)} bytes for {m.file}, the card expects {expected_rest}; "
                "nothing was installed: check the source or mirror"
            )
        written = have if append else 0
        with open(part, "ab" if append else "wb") as out:
            for chunk in iter(lambda: resp.read(CHUNK_BYTES), b""):
                written += len(chunk)
                if written > m.size_bytes:
                    break
                out.write(chunk)
    if written > m.size_bytes:
        part.unlink(missing_ok=True)
        raise ModelError(
            f"{url} sent more than the {m.size_bytes} bytes the card names for {m.file}; "
            "the download was removed and nothing was installed: check the source or mirror"
        )
    if written < m.size_bytes:
        raise ConnectionError(f"connection closed after {written} of {m.size_bytes} bytes")


def _download(url: str, part: Path, m: Member, *, retries: int, backoff_s: float, timeout_s: float) -> None:
    """GET with retries and exponential back-off on network errors and 5xx/408/429."""
    attempt = 0
    while True:
        try:
            _download_once(url, part, m, timeout_s)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code not in (408, 429):
                raise
            error: Exception = exc
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            error = exc
        attempt += 1
        if attempt > retries:
            raise ModelError(
                f"downloading {m.file} from {url} failed after {attempt} attempts ({error}); "
                "check the network, then run the same command again (it resumes), or use --from with a local mirror"
            )
        delay = backoff_s * (2 ** (attempt - 1))
        log.warning("download of %s failed (%s); retry %d of %d in %.1f s", m.file, error, attempt, retries, delay)
        time.sleep(delay)


def _fetch_url(card: ModelCard, m: Member, base: str | None, part: Path, **kw: Any) -> str:
    """Fetch one member over HTTP(S)/file; returns the URL it came from."""
    urls = [m.url] if base is None else [f"{base.rstrip('/')}/{rel}" for rel in _layouts(card, m)]
    if not urls[0]:
        raise ModelError(f"the card for {card.ref} names no URL for {m.name}; use --from with a local mirror")
    not_found = []
    for url in urls:
        try:
            _download(url, part, m, **kw)
            return url
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise ModelError(
                    f"HTTP {exc.code} {exc.reason} for {url}; nothing was installed: "
                    "check the URL or use --from with a local mirror"
                ) from None
            not_found.append(url)
    raise ModelError(
        f"{m.file} was not found (HTTP 404) at {' or '.join(not_found)}; nothing was installed for {m.name}: "
        f"check the mirror, or run `ictus models pull {card.id}` without --from to use the pinned upstream URL"
    )


def _find_local(card: ModelCard, m: Member, root: Path) -> Path | None:
    for rel in _layouts(card, m):
        p = root / rel
        if p.is_file():
            return p
    return None


def _copy_checked(src: Path, part: Path) -> None:
    with open(src, "rb") as fin, open(part, "wb") as fout:
        shutil.copyfileobj(fin, fout, CHUNK_BYTES)


def pull(
    card: ModelCard,
    models_dir: str | Path | None = None,
    source: str | Path | None = None,
    *,
    members: Iterable[str | int] | str | None = None,
    convert: bool | None = None,
    force: bool = False,
    retries: int = 3,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
) -> PullReport:
    """Install ``card``'s members into its folder under ``models_dir`` (see :func:`models_home`).

    ``source``: None for the card's pinned upstream URLs; an ``http(s)://`` or
    ``file://`` base URL (members at ``<base>/<card path>``, e.g.
    ``blast_ct/data/saved_models/model_1.pt``, or a mirror layout); or a local
    folder (the upstream repository layout, ``saved_models_<version>/``,
    ``<id>/<version>/`` or flat). Each file is streamed to a temporary name,
    checked (size, sha256) and renamed into place; a mismatch is refused and
    the file removed. Members already present and intact are kept unless
    ``force``. ``convert``: True converts (ModelError if the converter is
    missing), None converts when the converter is available, False skips.
    Raises InvalidInputError for a bad local ``source`` and ModelError otherwise.
    """
    selected = card.select_members(members)
    directory, _ = install_dir(card, models_dir)
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
                    f"saved_models_{card.version}/{selected[0].file}) or an http(s):// base URL"
                )
            absent = [m.file for m in selected if _find_local(card, m, local_root) is None]
            if absent:
                raise InvalidInputError(
                    f"--from {local_root} lacks {_names(absent)} (looked for "
                    f"{', '.join(_layouts(card, selected[0]))} and the same for the others); pass a folder that has them"
                )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the models folder {directory} ({exc}); pass a writable --models-dir") from None

    report = PullReport(model=card.ref, directory=directory)
    for m in selected:
        target = directory / m.file
        if not force and target.is_file() and target.stat().st_size == m.size_bytes and file_sha256(target) == m.sha256:
            report.members.append(PulledMember(m.name, "present", str(target), m.size_bytes))
            continue
        part = directory / f".{m.file}.part"
        if local_root is not None:
            src = _find_local(card, m, local_root)
            assert src is not None
            part.unlink(missing_ok=True)
            _copy_checked(src, part)
            origin, action = str(src), "copied"
        else:
            if force:
                part.unlink(missing_ok=True)
            origin = _fetch_url(
                card, m, base_url, part, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s
            )
            action = "downloaded"
        _refuse_mismatch(part, m, origin)
        move_file(part, target)
        log.info("%s %s from %s (sha256 ok)", action, m.file, origin)
        report.members.append(PulledMember(m.name, action, origin, m.size_bytes))

    _write_card_copy(card, directory)
    want_convert = convert if convert is not None else converter_available()
    if convert is None and not want_convert:
        log.warning("ictus.models.onnx_build is not available; ONNX conversion skipped (it runs on first use)")
    for i, pm in enumerate(report.members):
        m = card.member(pm.name)
        onnx = directory / m.onnx_file
        if not force and onnx_is_current(m, onnx):
            state = "current"
        elif want_convert:
            convert_to_onnx(card, m, directory / m.file, onnx)
            state = "converted"
        else:
            state = "converter unavailable" if convert is None else "skipped"
        report.members[i] = PulledMember(pm.name, pm.action, pm.source, pm.size_bytes, state)
    return report


def _write_card_copy(card: ModelCard, directory: Path) -> None:
    """Keep a copy of the card next to the weights, so the folder describes itself."""
    target = directory / CARD_FILE
    if card.card_path is not None and card.card_path.resolve() == target.resolve():
        return
    write_text(target, json.dumps(card.to_dict(), indent=2, ensure_ascii=False) + "\n")
