"""The systems bench_matrix.py measures: llama-server over raw HTTP, llcuda's two backends, llama-cpp-python.

Each ``run_*`` function runs in a fresh Python process (bench_matrix.py starts one per section) and
returns a JSON-able dict: load time (with llcuda's per-phase ``load_timings`` where there are any),
single-stream medians, aggregate throughput at each concurrency level, and where a step's time goes.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
BASE_PROMPT = (
    "Write a long and detailed story about a lighthouse keeper who finds an old map in the attic, "
    "and describe every place the map leads to."
)

# name: (kind, settings). kind "server" = llama-server over raw HTTP; "engine" = llcuda.InferenceEngine
# (server backend); "inproc" = llcuda.InferenceEngine(backend="inprocess"). "single_only": one slot /
# sequence, single-stream numbers only.
SYSTEMS: dict[str, tuple[str, dict[str, Any]]] = {
    "server-default": ("server", {"args": []}),
    "server-bs": ("server", {"args": ["--backend-sampling"]}),
    "server-bs-kvu": ("server", {"args": ["--backend-sampling", "--kv-unified"]}),
    "server-bs-np1": ("server", {"args": ["--backend-sampling"], "single_only": True}),
    "engine-default": ("engine", {}),
    "engine-bs": ("engine", {"backend_sampling": True}),
    "inproc": ("inproc", {}),
    "inproc-kvu": ("inproc", {"kv_unified": True}),
    "inproc-np1": ("inproc", {"single_only": True}),
    # CPU threads beside a fully offloaded model: one thread, and OpenMP's workers sleeping instead of spinning
    "inproc-np1-t1": ("inproc", {"single_only": True, "threads": 1}),
    "inproc-np1-passive": ("inproc", {"single_only": True, "env": {"OMP_WAIT_POLICY": "PASSIVE"}}),
}
STEP_KEYS = ("decode_call_s", "wait_s", "host_s")


def prompt(i: int) -> str:
    return f"Story {i}. {BASE_PROMPT}"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- measurement helpers ---------------------------------------------------------------------
def concurrent(call: Callable[[int], dict[str, Any]], level: int) -> dict[str, Any]:
    """``level`` requests released together; aggregate = generated tokens / wall time of the whole wave."""
    barrier = threading.Barrier(level + 1)
    results: list[dict[str, Any] | None] = [None] * level
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        barrier.wait()
        try:
            out = call(i)
            out["end"] = time.perf_counter()
            results[i] = out
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(level)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {level} requests failed: {errors[0]!r}")
    done = [r for r in results if r is not None]
    wall = max(r["end"] for r in done) - t0
    tokens = sum(r["tokens"] for r in done)
    return {"level": level, "tokens": tokens, "wall_s": round(wall, 4), "tps": tokens / wall}


def singles(call: Callable[[int], dict[str, Any]], reps: int) -> dict[str, Any]:
    runs = [call(0) for _ in range(reps)]
    summary = {
        k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))
    }
    log(
        f"  single stream: decode {summary.get('decode_tps', 0):.1f} tok/s, e2e {summary.get('e2e_tps', 0):.1f} tok/s"
    )
    return {"median": summary, "runs": runs}


def per_step(stats: dict[str, float]) -> dict[str, float]:
    steps = max(1, int(stats.get("steps", 0)))
    out = {k: stats[k] / steps * 1e6 for k in STEP_KEYS if k in stats}
    out["steps"] = stats.get("steps", 0)
    out["bulk_reads"] = stats.get("bulk_reads", 0)  # steps whose sampled tokens came in one call (patch 0005)
    return out


def measure(
    a: Any,
    call: Callable[[int], dict[str, Any]],
    levels: list[int],
    out: dict[str, Any],
    stats_of: Any = None,
) -> None:
    """Warm up, single stream, then each level (a warm-up wave at full width first); step breakdowns if any."""
    call(0)
    if stats_of:
        stats_of.reset_stats()
    out["single"] = singles(call, a.reps)
    if stats_of:
        out["single"]["breakdown_us_per_step"] = per_step(stats_of.stats)
    if not levels:
        return
    concurrent(call, max(levels))
    out["concurrency"] = {}
    for level in levels:
        if stats_of:
            stats_of.reset_stats()
        runs = [concurrent(call, level) for _ in range(a.reps if level < 64 else max(1, a.reps - 1))]
        row: dict[str, Any] = {"tps": statistics.median(r["tps"] for r in runs), "runs": runs}
        if stats_of:
            row["breakdown_us_per_step"] = per_step(stats_of.stats)
        out["concurrency"][str(level)] = row
        log(f"  concurrency {level:3d}: {row['tps']:9.1f} tok/s")


# -- the systems -----------------------------------------------------------------------------
def _http_call(url: str, body: dict[str, Any]) -> Callable[[int], dict[str, Any]]:
    """A plain http.client POST to /completion, one keep-alive connection per thread."""
    host, port = url.split("//")[1].split(":")
    local = threading.local()

    def call(i: int) -> dict[str, Any]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=600)
        payload = json.dumps(dict(body, prompt=prompt(i))).encode()
        t0 = time.perf_counter()
        conn.request("POST", "/completion", payload, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        wall = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data}")
        timings = data["timings"]
        n = int(timings["predicted_n"])
        return {
            "tokens": n,
            "wall_s": wall,
            "e2e_tps": n / wall,
            "decode_tps": timings["predicted_per_second"],
            "server_prompt_ms": timings["prompt_ms"],
            "server_predicted_ms": timings["predicted_ms"],
            "http_overhead_ms": wall * 1000 - timings["prompt_ms"] - timings["predicted_ms"],
            "server_ms_per_token": timings["predicted_ms"] / max(1, n),
        }

    return call


def _result_call(infer: Callable[[str], Any]) -> Callable[[int], dict[str, Any]]:
    def call(i: int) -> dict[str, Any]:
        r = infer(prompt(i))
        wall = r.latency_ms / 1000
        row = {
            "tokens": r.tokens_generated,
            "wall_s": wall,
            "e2e_tps": r.tokens_generated / wall,
            "decode_tps": r.tokens_per_sec,
        }
        if getattr(r, "time_to_first_token_ms", None) is not None:
            row["ttft_ms"] = r.time_to_first_token_ms
        return row

    return call


def _inner_stats(engine: Any) -> Any:
    """The object with ``stats``/``reset_stats()``: the engine itself or the in-process engine it wraps."""
    if hasattr(engine, "reset_stats") and hasattr(engine, "stats"):
        return engine
    return next((v for v in vars(engine).values() if hasattr(v, "reset_stats") and hasattr(v, "stats")), None)


def run_system(a: Any, name: str, levels: list[int]) -> dict[str, Any]:
    kind, settings = SYSTEMS[name]
    os.environ.update(settings.get("env", {}))  # each section runs in its own process; set before libllama loads
    if settings.get("single_only"):
        levels = []
    top = max(levels or [1])
    ctx = top * (64 + a.max_tokens + 64)
    out: dict[str, Any] = {"kind": kind, "settings": settings, "n_parallel": top, "ctx_size": ctx}
    if kind == "server":
        from llcuda.system import binaries as bootstrap
        from llcuda.processes.llama_server import LlamaServer
        from llcuda.processes.llama_server import ServerSettings

        server = LlamaServer(
            ServerSettings(
                model_path=Path(a.model),
                ctx_size=ctx,
                n_parallel=top,
                flash_attn="on",
                gpu_layers=99,
                extra_args=tuple(settings["args"]),
            ),
            binaries=bootstrap.find_binaries(),
        )
        t0 = time.perf_counter()
        server.start(300)
        out["load_seconds"] = time.perf_counter() - t0
        try:
            greedy = {"n_predict": a.max_tokens, "temperature": 0.0, "ignore_eos": True, "cache_prompt": True}
            measure(a, _http_call(server.url, greedy), levels, out)
        finally:
            out["log_tail"] = server.log_tail(12)
            server.stop()
        return out

    from llcuda.engine import InferenceEngine

    greedy: dict[str, Any] = {"max_tokens": a.max_tokens, "temperature": 0.0, "ignore_eos": True}
    if kind == "engine":
        engine: Any = InferenceEngine()
        out["api"] = "InferenceEngine()"
        load = {
            "gpu_layers": 99,
            "ctx_size": ctx,
            "n_parallel": top,
            "flash_attn": "on",
            "backend_sampling": settings.get("backend_sampling", False),
        }
    else:
        load = {
            "ctx_size": ctx,
            "n_parallel": top,
            "flash_attn": "on",
            "kv_unified": settings.get("kv_unified", False),
        }
        if "threads" in settings:
            load["threads"] = settings["threads"]
        try:
            engine = InferenceEngine(backend="inprocess")
            out["api"] = "InferenceEngine(backend='inprocess')"
        except TypeError:  # before the in-process backend landed in InferenceEngine
            from llcuda.fastpath import InProcessEngine

            engine = InProcessEngine()
            out["api"] = "llcuda.fastpath.InProcessEngine (InferenceEngine has no backend= yet)"
            greedy.pop("temperature")  # fixed at load there (greedy by default)
    t0 = time.perf_counter()
    engine.load_model(a.model, **load)
    out["load_seconds"] = time.perf_counter() - t0
    out["load_timings"] = dict(getattr(engine, "load_timings", None) or {})
    try:
        measure(a, _result_call(lambda p: engine.infer(p, **greedy)), levels, out, _inner_stats(engine))
        inner = _inner_stats(engine)
        if inner is not None and hasattr(inner, "backend_sampling"):
            out["backend_sampling"] = inner.backend_sampling
    finally:
        engine.unload()
    return out


LOAD_CODE = """
import json, os, sys, time
t = time.perf_counter()
from llcuda import InferenceEngine
imp = time.perf_counter() - t
backend = sys.argv[2]
engine = InferenceEngine() if backend == "server" else InferenceEngine(backend=backend)
t = time.perf_counter()
engine.load_model(sys.argv[1])
wall = time.perf_counter() - t
print(json.dumps({"backend": backend, "variant": sys.argv[3], "import_s": imp, "load_model_s": wall,
                  "load_mode": os.environ.get("LLCUDA_LOAD_MODE") or "default",
                  "load_seconds": engine.load_seconds, "load_timings": getattr(engine, "load_timings", {})}))
engine.unload()
"""

# (variant, backend, extra environment): each backend's defaults, and the in-process backend reading the
# weights with read() into pinned buffers (LLCUDA_LOAD_MODE=none) instead of mmap.
LOAD_VARIANTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("inprocess", "inprocess", {}),
    ("inprocess load_mode=none", "inprocess", {"LLCUDA_LOAD_MODE": "none"}),
    ("inprocess load_mode=mmap", "inprocess", {"LLCUDA_LOAD_MODE": "mmap"}),
    ("server", "server", {}),
)


def run_load(a: Any) -> dict[str, Any]:
    """load_model -> ready per variant, each in a fresh interpreter (CUDA init included), variants interleaved."""
    base = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    base.pop("LLCUDA_LOAD_MODE", None)
    out: dict[str, Any] = {"runs": [], "errors": [], "variants": [v[0] for v in LOAD_VARIANTS]}
    for rep in range(a.load_reps):
        for variant, backend, extra in LOAD_VARIANTS:
            done = subprocess.run(
                [sys.executable, "-c", LOAD_CODE, a.model, backend, variant],
                capture_output=True,
                text=True,
                env=dict(base, **extra),
                timeout=120,
                check=False,
            )
            if done.returncode != 0:
                out["errors"].append({"variant": variant, "rep": rep, "stderr": done.stderr[-1500:]})
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            out["runs"].append(row)
            log(f"  load {variant}: {row['load_model_s']:.2f} s {json.dumps(row['load_timings'])}")
    for variant, _backend, _extra in LOAD_VARIANTS:
        times = [r["load_model_s"] for r in out["runs"] if r["variant"] == variant]
        if times:
            out[variant] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    return out


def run_llama_cpp_python(a: Any) -> dict[str, Any]:
    """llama-cpp-python (its own vendored llama.cpp, built from the sdist with CUDA): in-process, one stream."""
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(a.model, n_gpu_layers=-1, n_ctx=4096, flash_attn=True, verbose=False)
    load = time.perf_counter() - t0

    def call(i: int) -> dict[str, Any]:
        tokens = llm.tokenize(prompt(i).encode())
        n, first = 0, None
        t_start = time.perf_counter()
        for _tok in llm.generate(tokens, temp=0.0, top_k=1, reset=True):  # no EOS check: runs to max_tokens
            n += 1
            if first is None:
                first = time.perf_counter()
            if n >= a.max_tokens:
                break
        end = time.perf_counter()
        return {
            "tokens": n,
            "wall_s": end - t_start,
            "e2e_tps": n / (end - t_start),
            "decode_tps": (n - 1) / (end - first) if first and end > first else 0.0,
        }

    out: dict[str, Any] = {
        "kind": "llama-cpp-python",
        "version": llama_cpp.__version__,
        "load_seconds": load,
        "vendored_llama_cpp": os.environ.get("LCP_VENDOR_COMMIT", "?"),
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace")[:400],
    }
    measure(a, call, [], out)
    return out
