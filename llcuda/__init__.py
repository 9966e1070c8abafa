"""llcuda: GPU LLM inference for Python on llama.cpp's CUDA binaries.

``import llcuda`` does no work: it neither searches for binaries nor downloads anything,
and heavy modules (requests, the engine) load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
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
    from .bootstrap import find_binaries
    from .engine import InferenceEngine, TokenStream
    from .models import resolve_model
    from .server import LlamaServer
    from .types import InferResult, MetricsSnapshot, ServerSettings

_LAZY = {
    "InferenceEngine": "llcuda.engine",
    "TokenStream": "llcuda.engine",
    "LlamaServer": "llcuda.server",
    "InferResult": "llcuda.types",
    "MetricsSnapshot": "llcuda.types",
    "ServerSettings": "llcuda.types",
    "find_binaries": "llcuda.bootstrap",
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
