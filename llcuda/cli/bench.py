"""``llcuda bench``: aggregate decode throughput of one engine at several concurrency levels.

Two engines can be measured: ``"server"`` (:class:`InferenceEngine`, llama-server over loopback HTTP,
the default) and ``"inprocess"`` (:class:`llcuda.fastpath.InProcessEngine`, libllama in this process
with sampling on the GPU). ``benchmarks/bench_matrix.py`` is the full comparison against llama.cpp's
own ceilings; this is the quick check a user runs on their machine.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llcuda.engine import InferenceEngine

BENCH_PROMPT = "Write a long story about a lighthouse keeper who finds a map."
ENGINES = ("server", "inprocess")


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
    gpu_layers: int = 99,
    ctx_size: int = 4096,
    flash_attn: str = "auto",
    offline: bool | None = None,
    requests_per_level: int | None = None,
    load_options: dict[str, Any] | None = None,
    engine: str = "server",
    backend_sampling: bool = False,
) -> dict[str, Any]:
    """Greedy, end-of-sequence ignored, so every request decodes exactly ``max_tokens`` tokens.

    ``load_options`` go to ``load_model`` as they are (e.g. ``rpc``, ``split_mode``, ``tensor_split``
    for the server engine; ``kv_unified`` for the in-process one). ``backend_sampling`` passes
    ``--backend-sampling`` to llama-server (the in-process engine always samples on the backend).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} must be one of {', '.join(ENGINES)}")
    top = max(concurrency)
    ctx = max(ctx_size, top * (max_tokens + 64))
    started = time.monotonic()
    eng: Any
    if engine == "server":
        eng = InferenceEngine()
        eng.load_model(model, gpu_layers=gpu_layers, ctx_size=ctx, n_parallel=top, flash_attn=flash_attn,
                       offline=offline, backend_sampling=backend_sampling, **(load_options or {}))
    else:
        from llcuda.libllama.engine import InProcessEngine

        eng = InProcessEngine()
        eng.load_model(model, gpu_layers=gpu_layers, ctx_size=ctx, n_parallel=top,
                       flash_attn="on" if flash_attn == "auto" else flash_attn, offline=offline,
                       **(load_options or {}))
    load_seconds = time.monotonic() - started

    def one(_: int) -> Any:
        if engine == "server":
            return eng.infer(BENCH_PROMPT, max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        return eng.infer(BENCH_PROMPT, max_tokens=max_tokens, ignore_eos=True)

    runs = []
    try:
        if engine == "server":
            eng.infer(BENCH_PROMPT, max_tokens=8, temperature=0.0)  # warm-up
        else:
            eng.infer(BENCH_PROMPT, max_tokens=8)
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
        if engine == "server":
            backend = eng.server.binaries.build_info.get("backend", "?") if eng.server else "?"
        else:
            from llcuda.system import binaries as bootstrap

            backend = bootstrap.find_binaries().build_info.get("backend", "?")
        return {"model": eng.model_name, "backend": backend, "engine": engine, "load_seconds": load_seconds,
                "max_tokens": max_tokens, "runs": runs}
    finally:
        eng.unload()
