"""``llcuda bench``: aggregate decode throughput of one engine at several concurrency levels."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .engine import InferenceEngine

BENCH_PROMPT = "Write a long story about a lighthouse keeper who finds a map."


def run_quick_bench(
    *,
    model: str | None,
    concurrency: list[int],
    max_tokens: int = 64,
    gpu_layers: int = 99,
    ctx_size: int = 4096,
    flash_attn: str = "auto",
    offline: bool | None = None,
    requests_per_level: int | None = None,
    load_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Greedy, end-of-sequence ignored, so every request decodes exactly ``max_tokens`` tokens.

    ``load_options`` go to ``load_model`` as they are (e.g. ``rpc``, ``split_mode``, ``tensor_split``).
    """
    top = max(concurrency)
    started = time.monotonic()
    engine = InferenceEngine()
    engine.load_model(model, gpu_layers=gpu_layers, ctx_size=max(ctx_size, top * (max_tokens + 64)),
                      n_parallel=top, flash_attn=flash_attn, offline=offline, **(load_options or {}))
    load_seconds = time.monotonic() - started
    runs = []
    try:
        engine.infer(BENCH_PROMPT, max_tokens=8, temperature=0.0)  # warm-up
        for level in concurrency:
            count = requests_per_level or level
            engine.reset_metrics()
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=level) as pool:
                results = list(pool.map(
                    lambda _: engine.infer(BENCH_PROMPT, max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
                    range(count)))
            wall = time.monotonic() - t0
            snapshot = engine.get_metrics()
            tokens = sum(r.tokens_generated for r in results)
            runs.append({
                "concurrency": level,
                "requests": count,
                "tokens": tokens,
                "wall_seconds": round(wall, 4),
                "throughput_tokens_per_sec": tokens / wall if wall > 0 else 0.0,
                "per_request_decode_tokens_per_sec": snapshot.tokens_per_sec_mean,
                "latency_ms_p50": snapshot.latency_ms_p50,
                "latency_ms_p95": snapshot.latency_ms_p95,
            })
        backend = (engine.server.binaries.build_info.get("backend", "?") if engine.server else "?")
        return {"model": engine.model_name, "backend": backend, "load_seconds": load_seconds,
                "max_tokens": max_tokens, "runs": runs}
    finally:
        engine.unload()
