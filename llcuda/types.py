"""Frozen value types shared by the modules: results, settings, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InferResult:
    """One completed generation."""

    text: str
    tokens_generated: int
    prompt_tokens: int
    latency_ms: float
    tokens_per_sec: float
    finish_reason: str  # "stop" (EOS or stop string), "length" (max_tokens), or the server's word
    time_to_first_token_ms: float | None = None
    stop_word: str | None = None
    model: str = ""
    timings: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class StreamChunk:
    """One piece of a streamed generation; the last one has ``done=True`` and the result."""

    text: str
    done: bool = False
    result: InferResult | None = None


@dataclass(frozen=True)
class ServerSettings:
    """How to start one llama-server. See ``llama-server --help`` for each flag."""

    model_path: Path
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port is chosen
    ctx_size: int = 4096  # total context; each slot gets ctx_size / n_parallel
    gpu_layers: int = 99  # -ngl; 99 offloads every layer (ignored by a CPU build)
    n_parallel: int = 4  # server slots = concurrent requests decoded together
    flash_attn: str = "auto"  # on | off | auto
    batch_size: int | None = None
    ubatch_size: int | None = None
    threads: int | None = None
    embeddings: bool = False
    pooling: str | None = None
    api_key: str | None = None
    allow_unauthenticated: bool = False  # allow a non-loopback host without an api_key
    alias: str | None = None
    split_mode: str | None = None  # none | layer | row
    tensor_split: tuple[float, ...] = ()
    main_gpu: int | None = None
    rpc: tuple[str, ...] = ()
    backend_sampling: bool = False
    extra_args: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never show the API key
        shown = {k: v for k, v in self.__dict__.items() if k != "api_key"}
        shown["api_key"] = "***" if self.api_key else None
        return f"ServerSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


@dataclass(frozen=True)
class Binaries:
    """Where the llama.cpp executables were found."""

    bin_dir: Path
    lib_dir: Path | None
    source: str  # which search location found them, e.g. "LLCUDA_BIN_DIR" or "CONDA_PREFIX"
    build_info: dict[str, Any] = field(default_factory=dict)

    def executable(self, name: str) -> Path:
        return self.bin_dir / name


@dataclass(frozen=True)
class MetricsSnapshot:
    """Client-side request statistics, as returned by ``InferenceEngine.get_metrics()``."""

    requests: int
    failures: int
    tokens_generated: int
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    latency_ms_mean: float
    tokens_per_sec_mean: float  # mean per-request decode speed
    throughput_tokens_per_sec: float  # tokens generated / wall time busy (concurrency counted once)
    server: dict[str, float] = field(default_factory=dict)  # llama-server /metrics, when enabled
