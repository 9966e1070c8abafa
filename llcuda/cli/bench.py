"""``llcuda bench``: aggregate decode throughput of one backend at several concurrency levels.

The quick check a user runs on their machine, through :class:`~llcuda.engine.InferenceEngine` on
any backend; the full comparison against llama.cpp's own tools is :mod:`llcuda.benchmark`.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llcuda.engine import InferenceEngine
from llcuda.options import LoadOptions

BENCH_PROMPT = "Write a long story about a lighthouse keeper who finds a map."


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_quick_bench(
    *,
    model: str | None,
    concurrency: list[int],
    max_tokens: int = 64,
    options: LoadOptions | None = None,
    offline: bool | None = None,
    requests_per_level: int | None = None,
    backend: str | None = None,
    rpc: list[str] | None = None,
) -> dict[str, Any]:
    """Greedy, end-of-generation ignored, so every request decodes exactly ``max_tokens`` tokens.

    ``options`` load the model (its ``n_parallel`` is raised to the highest concurrency level) on
    ``backend`` (default: InferenceEngine's).
    """
    top = max(concurrency)
    opts = options or LoadOptions()
    if opts.n_parallel < top:
        opts = opts.replace(n_parallel=top)
    started = time.monotonic()
    eng = InferenceEngine(backend=backend)
    eng.load_model(model, opts, offline=offline, rpc=rpc)
    load_seconds = time.monotonic() - started

    def one(_: int) -> Any:
        return eng.infer(BENCH_PROMPT, max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    runs = []
    try:
        eng.infer(BENCH_PROMPT, max_tokens=8, temperature=0.0)  # warm-up
        for level in concurrency:
            count = requests_per_level or level
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=level) as pool:
                results = list(pool.map(one, range(count)))
            wall = time.monotonic() - t0
            tokens = sum(r.tokens_generated for r in results)
            latencies = [r.latency_ms for r in results]
            runs.append({
                "concurrency": level,
                "requests": count,
                "tokens": tokens,
                "wall_seconds": round(wall, 4),
                "throughput_tokens_per_sec": tokens / wall if wall > 0 else 0.0,
                "per_request_decode_tokens_per_sec": statistics.fmean(r.tokens_per_sec for r in results),
                "latency_ms_p50": _percentile(latencies, 0.50),
                "latency_ms_p95": _percentile(latencies, 0.95),
            })
        from llcuda.system.binaries import find_binaries

        build = find_binaries().build_info.get("backend", "?")
        return {"model": eng.model_name, "backend": build, "engine": eng.backend, "load_seconds": load_seconds,
                "max_tokens": max_tokens, "runs": runs}
    finally:
        eng.unload()
