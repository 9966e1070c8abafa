"""llcuda: GPU LLM inference for Python on llama.cpp's CUDA binaries.

``import llcuda`` does no work: it neither searches for binaries nor downloads anything,
and heavy modules (requests, the engine) load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from llcuda.errors import (
    BinaryNotFoundError,
    BuildMismatchError,
    ChecksumError,
    ConfigError,
    DownloadError,
    GPUCompatibilityError,
    InferenceError,
    InsufficientMemoryError,
    InvalidModelError,
    LlcudaError,
    ModelNotFoundError,
    OfflineModeError,
    RequestTimeoutError,
    ServerStartError,
    ServerTimeoutError,
)

if TYPE_CHECKING:
    from llcuda.engine import InferenceEngine, TokenStream
    from llcuda.models import resolve_model
    from llcuda.processes.llama_server import LlamaServer, ServerSettings
    from llcuda.results import InferResult, MetricsSnapshot
    from llcuda.system.binaries import find_binaries

_LAZY = {
    "InferenceEngine": "llcuda.engine",
    "TokenStream": "llcuda.engine",
    "LlamaServer": "llcuda.processes.llama_server",
    "InferResult": "llcuda.results",
    "MetricsSnapshot": "llcuda.results",
    "ServerSettings": "llcuda.results",
    "find_binaries": "llcuda.system.binaries",
    "resolve_model": "llcuda.models",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("llcuda")
        except PackageNotFoundError:
            return "0+unknown"
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llcuda' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BinaryNotFoundError",
    "BuildMismatchError",
    "ChecksumError",
    "ConfigError",
    "DownloadError",
    "GPUCompatibilityError",
    "InferResult",
    "InferenceEngine",
    "InferenceError",
    "InsufficientMemoryError",
    "InvalidModelError",
    "LlamaServer",
    "LlcudaError",
    "MetricsSnapshot",
    "ModelNotFoundError",
    "OfflineModeError",
    "RequestTimeoutError",
    "ServerSettings",
    "ServerStartError",
    "ServerTimeoutError",
    "TokenStream",
    "__version__",
    "find_binaries",
    "resolve_model",
]
