"""The llcuda error hierarchy.

Every error derives from :class:`LlcudaError` and, where one fits, from the
built-in exception it resembles, so callers can catch either
(``except FileNotFoundError`` still catches a missing binary).
Every message says what went wrong and what to do next.
"""

from __future__ import annotations


class LlcudaError(Exception):
    """Base class of every error llcuda raises on purpose."""


class ConfigError(LlcudaError, ValueError):
    """An argument or environment variable has an invalid value."""


class BinaryNotFoundError(LlcudaError, FileNotFoundError):
    """llama.cpp executables or libraries could not be found or are damaged."""


class BuildMismatchError(BinaryNotFoundError):
    """The llama.cpp binaries found are another build than the one llcuda is made for.

    ``found`` and ``expected`` are llama.cpp build numbers (``b11434`` is build 11434). A subclass of
    :class:`BinaryNotFoundError`: the build llcuda needs was not found.
    """

    def __init__(self, message: str, *, found: int, expected: int) -> None:
        super().__init__(message)
        self.found = found
        self.expected = expected


class GPUCompatibilityError(LlcudaError, RuntimeError):
    """The GPU or driver cannot run the installed binaries."""


class InsufficientMemoryError(GPUCompatibilityError, MemoryError):
    """The model clearly cannot fit in the free memory of the GPUs (checked before llama-server starts)."""


class ServerStartError(LlcudaError, RuntimeError):
    """llama-server exited or failed before it became ready."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        if log_tail:
            message = f"{message}\n--- last lines of the server log ---\n{log_tail}"
        super().__init__(message)
        self.log_tail = log_tail


class ServerTimeoutError(ServerStartError, TimeoutError):
    """llama-server did not become ready before its deadline."""


class ModelNotFoundError(LlcudaError, FileNotFoundError):
    """A model name, path or repository file does not exist."""

    def __init__(self, message: str, *, suggestions: tuple[str, ...] = ()) -> None:
        if suggestions:
            message = f"{message} Did you mean: {', '.join(suggestions)}?"
        super().__init__(message)
        self.suggestions = suggestions


class InvalidModelError(LlcudaError, ValueError):
    """A file exists but is not a usable GGUF model (bad magic, truncated, unsupported)."""


class DownloadError(LlcudaError, OSError):
    """A download failed after its retries."""


class ChecksumError(DownloadError):
    """Downloaded bytes do not match the expected size or sha256."""


class OfflineModeError(LlcudaError, ConnectionError):
    """A download was needed while offline mode is on."""


class InferenceError(LlcudaError, RuntimeError):
    """A request to llama-server failed.

    ``status_code`` is the HTTP status (``None`` when no response came back) and
    ``server_message`` the server's own error text.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        server_message: str = "",
        log_tail: str = "",
    ) -> None:
        if log_tail:
            message = f"{message}\n--- last lines of the server log ---\n{log_tail}"
        super().__init__(message)
        self.status_code = status_code
        self.server_message = server_message
        self.log_tail = log_tail


class RequestTimeoutError(InferenceError, TimeoutError):
    """llama-server did not answer a request in time."""


__all__ = [
    "BinaryNotFoundError",
    "BuildMismatchError",
    "ChecksumError",
    "ConfigError",
    "DownloadError",
    "GPUCompatibilityError",
    "InferenceError",
    "InsufficientMemoryError",
    "InvalidModelError",
    "LlcudaError",
    "ModelNotFoundError",
    "OfflineModeError",
    "RequestTimeoutError",
    "ServerStartError",
    "ServerTimeoutError",
]


class ContextLengthError(ConfigError):
    """A prompt does not fit the model's context (HTTP 400 ``context_length_exceeded`` from ``llcuda serve``)."""

    def __init__(self, message: str, *, prompt_tokens: int = 0, n_ctx: int = 0) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
