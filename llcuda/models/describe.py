"""What a model is, read from its GGUF header: the facts ``llcuda models show`` prints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llcuda import config
from llcuda.errors import InvalidModelError, ModelNotFoundError
from llcuda.models import cache
from llcuda.models.gguf import GGUFInfo, read_gguf_info, split_paths, validate_gguf

TEMPLATE_LINE_MAX = 120


def _count(n: int) -> str:
    """``268098176`` -> ``268.1M``."""
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _locate(spec: str | os.PathLike[str], download: bool) -> Path:
    if isinstance(spec, os.PathLike):
        return Path(os.fspath(spec)).expanduser()
    text = str(spec).strip()
    local = Path(text).expanduser()
    if text and local.is_file():
        return local
    from llcuda.models.resolve import cached_path, resolve_model

    path = cached_path(text) if text else None
    if path is not None:
        return path
    if download:
        return resolve_model(text).path
    raise ModelNotFoundError(
        f"{text or 'An empty name'} is not in the model cache. Download it first (`llcuda models pull {text}`), "
        "or let show download it (`llcuda models show --pull`, describe_model(..., download=True))."
    )


def _int(info: GGUFInfo, key: str) -> int | None:
    value = info.metadata.get(f"{info.architecture}.{key}") if info.architecture else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _template(text: str | None, full: bool) -> str | None:
    if not text or full:
        return text or None
    first = next((line for line in text.splitlines() if line.strip()), "")
    return first if len(first) <= TEMPLATE_LINE_MAX else first[: TEMPLATE_LINE_MAX - 1] + "…"


def describe_model(
    spec: str | os.PathLike[str], *, download: bool = False, full_template: bool = False
) -> dict[str, Any]:
    """The facts of a GGUF model, from its header (the tensor data is never read).

    ``spec``: a path, or any spec :func:`~llcuda.models.resolve_model` takes (a registry name,
    ``owner/repo:Q4_K_M``, ``hf://…``, ``pypi:…``) already in the cache; with ``download`` a spec
    not in the cache is downloaded first. ``full_template``: the whole chat template instead of its
    first line (cut at 120 characters).

    Returns a JSON-ready dict: ``path``, ``name``, ``file_size`` (all parts of a split model),
    ``files``, ``architecture``, ``architecture_supported``, ``model_name`` (``general.name``),
    ``parameters`` (elements of every tensor), ``parameters_label`` (``268.1M``), ``quantization``
    (``general.file_type`` as a name, else the tensor type holding most parameters),
    ``tensor_types`` (parameters per tensor type, largest first), ``context_length``,
    ``embedding_length``, ``layers``, ``heads``, ``kv_heads`` (None where absent or set per layer),
    ``vocab_size``, ``has_chat_template``, ``chat_template``, ``gguf_version``, ``tensor_count``,
    ``loadable`` and ``problem`` (why llama.cpp would refuse it, else None), and from the cache's
    records ``source``, ``origin`` and ``sha256`` (None where unknown).

    Raises :class:`ModelNotFoundError` (unknown spec, missing file, or not cached without
    ``download``), :class:`InvalidModelError` (not a readable GGUF), and for ``download`` what
    :func:`~llcuda.models.resolve_model` raises.
    """
    path = _locate(spec, download)
    info = read_gguf_info(path)
    infos = [info]
    count = info.metadata.get("split.count")
    parts = split_paths(path) if isinstance(count, int) and count > 1 else None
    for part in (parts or [])[1:]:
        if part.is_file():
            infos.append(read_gguf_info(part))
    try:
        validate_gguf(path)
        problem = None
    except (InvalidModelError, ModelNotFoundError) as exc:
        problem = str(exc)
    by_type: dict[str, int] = {}
    for one in infos:
        for name, n in one.tensor_types.items():
            by_type[name] = by_type.get(name, 0) + n
    tensor_types = dict(sorted(by_type.items(), key=lambda item: (-item[1], item[0])))
    params = sum(by_type.values())
    meta = cache.read_meta(path)
    in_cache = path.resolve().is_relative_to(config.models_dir().resolve())
    return {
        "path": str(path.resolve()),
        "name": meta.get("name") or path.stem,
        "source": meta.get("source") or ("cache" if in_cache else "local"),
        "origin": meta.get("origin"),
        "sha256": meta.get("sha256"),
        "file_size": sum(one.file_size for one in infos),
        "files": len(infos),
        "architecture": info.architecture,
        "architecture_supported": info.architecture_supported,
        "model_name": info.name,
        "parameters": params,
        "parameters_label": _count(params),
        "quantization": info.file_type_name or next(iter(tensor_types), None),
        "file_type": info.file_type,
        "tensor_types": tensor_types,
        "context_length": info.context_length,
        "embedding_length": info.embedding_length,
        "layers": info.block_count,
        "heads": _int(info, "attention.head_count"),
        "kv_heads": _int(info, "attention.head_count_kv"),
        "vocab_size": info.vocab_size,
        "has_chat_template": info.has_chat_template,
        "chat_template": _template(info.chat_template, full_template),
        "gguf_version": info.version,
        "tensor_count": sum(one.tensor_count for one in infos),
        "loadable": problem is None,
        "problem": problem,
    }
