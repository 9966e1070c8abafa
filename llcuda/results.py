"""What a generation gives back: InferResult, a stream of its pieces (TokenStream), metrics snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable


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


class TokenStream(Iterator[str]):
    """Yields text pieces as the model generates them; ``.result`` holds the InferResult at the end."""

    def __init__(self, pieces: Iterator[str], finish: Callable[[], InferResult]) -> None:
        self._pieces = pieces
        self._finish = finish
        self.result: InferResult | None = None

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            if self.result is None:
                self.result = self._finish()
            raise

    def text(self) -> str:
        """Consume the rest of the stream and return the whole generated text."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result.text

    def close(self) -> None:
        """Stop reading early; the engine stops generating for this stream."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()
