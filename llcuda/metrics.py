"""Client-side request statistics: latency percentiles and throughput."""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

from llcuda.results import MetricsSnapshot

MAX_SAMPLES = 10_000


@dataclass(frozen=True)
class _Sample:
    started: float
    finished: float
    tokens: int
    tokens_per_sec: float


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals: wall time with at least one request running."""
    total = 0.0
    current_start = current_end = None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None and current_start is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None and current_start is not None:
        total += current_end - current_start
    return total


class MetricsRecorder:
    """Thread-safe record of the last MAX_SAMPLES requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: deque[_Sample] = deque(maxlen=MAX_SAMPLES)
        self._requests = 0
        self._failures = 0

    def record(self, started: float, finished: float, tokens: int, tokens_per_sec: float) -> None:
        with self._lock:
            self._requests += 1
            self._samples.append(_Sample(started, finished, tokens, tokens_per_sec))

    def record_failure(self) -> None:
        with self._lock:
            self._requests += 1
            self._failures += 1

    def reset(self) -> None:
        with self._lock:
            self._samples.clear()
            self._requests = 0
            self._failures = 0

    def snapshot(self, server: dict[str, float] | None = None) -> MetricsSnapshot:
        with self._lock:
            samples = list(self._samples)
            requests, failures = self._requests, self._failures
        latencies = sorted((s.finished - s.started) * 1000.0 for s in samples)
        tokens = sum(s.tokens for s in samples)
        busy = busy_seconds([(s.started, s.finished) for s in samples])
        return MetricsSnapshot(
            requests=requests,
            failures=failures,
            tokens_generated=tokens,
            latency_ms_p50=percentile(latencies, 50),
            latency_ms_p95=percentile(latencies, 95),
            latency_ms_p99=percentile(latencies, 99),
            latency_ms_mean=sum(latencies) / len(latencies) if latencies else 0.0,
            tokens_per_sec_mean=sum(s.tokens_per_sec for s in samples) / len(samples) if samples else 0.0,
            throughput_tokens_per_sec=tokens / busy if busy > 0 else 0.0,
            server=dict(server or {}),
        )
