#!/usr/bin/env python3
"""The benchmark matrix: llama.cpp's own ceilings, llama-server, llcuda (server and in-process), llama-cpp-python.

Same machine, same run, same llama.cpp build, same model, greedy decoding, end-of-sequence ignored so
every request decodes exactly ``--max-tokens`` tokens. Each section runs in its own Python process
(two libllama builds must never share one process; GPU memory is returned between sections) and
the merged results are rewritten to ``--out`` after every section, so a run cut short keeps what it
measured. ``benchmarks/report.py`` turns the JSON into a table and a plot.

    python benchmarks/bench_matrix.py --prefix PREFIX --model model.gguf --out results.json \\
        [--sections llama_bench,batched_bench,server-bs,engine-bs,fastpath,...] [--levels 1,4,16,64]

Sections: env, llama_bench, batched_bench, import_time, llama_cpp_python, and every name in
``SYSTEMS`` (server-*: llama-server over raw HTTP; engine-*: llcuda.InferenceEngine; fastpath*:
llcuda.fastpath.InProcessEngine).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
BASE_PROMPT = ("Write a long and detailed story about a lighthouse keeper who finds an old map in the attic, "
               "and describe every place the map leads to.")
NPP = 32  # llama-batched-bench prompt tokens per sequence, about the length of BASE_PROMPT

# name: (kind, settings). kind "server" = llama-server over raw HTTP, "engine" = llcuda.InferenceEngine,
# "fastpath" = llcuda.fastpath.InProcessEngine. "single_only": one slot, single-stream numbers only.
SYSTEMS: dict[str, tuple[str, dict[str, Any]]] = {
    "server-default": ("server", {"args": []}),
    "server-bs": ("server", {"args": ["--backend-sampling"]}),
    "server-bs-kvu": ("server", {"args": ["--backend-sampling", "--kv-unified"]}),
    "server-bs-np1": ("server", {"args": ["--backend-sampling"], "single_only": True}),
    "engine-default": ("engine", {"backend_sampling": False}),
    "engine-bs": ("engine", {"backend_sampling": True}),
    "fastpath": ("fastpath", {}),
    "fastpath-kvu": ("fastpath", {"kv_unified": True}),
    "fastpath-np1": ("fastpath", {"single_only": True}),
}


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


def sweep(call: Callable[[int], dict[str, Any]], levels: list[int], reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for level in levels:
        runs = [concurrent(call, level) for _ in range(reps if level < 64 else max(1, reps - 1))]
        out[str(level)] = {"tps": statistics.median(r["tps"] for r in runs), "runs": runs}
        log(f"  concurrency {level:3d}: {out[str(level)]['tps']:9.1f} tok/s")
    return out


def singles(call: Callable[[int], dict[str, Any]], reps: int) -> dict[str, Any]:
    runs = [call(0) for _ in range(reps)]
    summary = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))}
    log(f"  single stream: decode {summary.get('decode_tps', 0):.1f} tok/s, e2e {summary.get('e2e_tps', 0):.1f} tok/s")
    return {"median": summary, "runs": runs}


# -- sections --------------------------------------------------------------------------------
def section_env(a: argparse.Namespace) -> dict[str, Any]:
    def sh(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    info = json.loads((Path(a.prefix) / "share/llcuda/build-info.json").read_text())
    smi = sh(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm",
              "--format=csv,noheader"])
    header = sh(["nvidia-smi"])
    cuda = next((line.split("CUDA Version:")[1].split()[0] for line in header.splitlines() if "CUDA Version" in line), "")
    return {
        "gpu": smi, "driver_cuda_version": cuda, "nvcc": sh(["nvcc", "--version"]).splitlines()[-1:],
        "cpu": platform.processor() or sh(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo"]), "nproc": os.cpu_count(),
        "python": platform.python_version(), "build_info": info,
        "model": str(a.model), "model_label": a.model_label, "model_bytes": Path(a.model).stat().st_size,
        "max_tokens": a.max_tokens, "levels": a.levels, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "prompt": prompt(0),
    }


def section_llama_bench(a: argparse.Namespace) -> dict[str, Any]:
    cmd = [f"{a.prefix}/bin/llama-bench", "-m", a.model, "-p", "512", "-n", str(a.max_tokens), "-ngl", "99",
           "-fa", "on", "-r", "5", "-o", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    rows = json.loads(done.stdout)
    out: dict[str, Any] = {"cmd": cmd}
    for row in rows:
        key = f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"
        out[key] = {"tps": row["avg_ts"], "stddev": row["stddev_ts"], "backends": row.get("backends"),
                    "gpu_info": row.get("gpu_info"), "model_type": row.get("model_type")}
        log(f"  llama-bench {key}: {row['avg_ts']:.1f} ± {row['stddev_ts']:.1f} tok/s")
    return out


def section_batched_bench(a: argparse.Namespace) -> dict[str, Any]:
    top = max(a.levels)
    cmd = [f"{a.prefix}/bin/llama-batched-bench", "-m", a.model, "-c", str(top * (NPP + a.max_tokens + 16)),
           "-b", "2048", "-ub", "512", "-npp", str(NPP), "-ntg", str(a.max_tokens),
           "-npl", ",".join(map(str, a.levels)), "-ngl", "99", "-fa", "on", "--output-format", "jsonl"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    out: dict[str, Any] = {"cmd": cmd}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            out[str(row["pl"])] = {"S_TG": row["speed_tg"], "S_PP": row["speed_pp"], "t": row["t"], "S": row["speed"]}
            log(f"  batched-bench B={row['pl']:3d}: S_TG {row['speed_tg']:9.1f} tok/s")
    return out


def section_import_time(a: argparse.Namespace) -> dict[str, Any]:
    code = "import time; t = time.perf_counter(); import llcuda; print(time.perf_counter() - t)"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                  check=True).stdout) for _ in range(7)]
    log(f"  import llcuda: median {statistics.median(times) * 1000:.1f} ms")
    return {"seconds_median": statistics.median(times), "seconds": times}


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
        return {"tokens": n, "wall_s": wall, "e2e_tps": n / wall, "decode_tps": timings["predicted_per_second"],
                "server_prompt_ms": timings["prompt_ms"], "server_predicted_ms": timings["predicted_ms"],
                "http_overhead_ms": wall * 1000 - timings["prompt_ms"] - timings["predicted_ms"],
                "server_ms_per_token": timings["predicted_ms"] / max(1, n)}

    return call


def run_system(a: argparse.Namespace, name: str) -> dict[str, Any]:
    kind, settings = SYSTEMS[name]
    single_only = settings.get("single_only", False)
    top = 1 if single_only else max(a.levels)
    ctx = top * (64 + a.max_tokens + 64)
    levels = [] if single_only else a.levels
    greedy = {"n_predict": a.max_tokens, "temperature": 0.0, "ignore_eos": True, "cache_prompt": True}
    out: dict[str, Any] = {"kind": kind, "settings": settings, "n_parallel": top, "ctx_size": ctx}
    if kind == "server":
        from llcuda import bootstrap
        from llcuda.server import LlamaServer
        from llcuda.types import ServerSettings

        binaries = bootstrap.find_binaries()
        server = LlamaServer(ServerSettings(model_path=Path(a.model), ctx_size=ctx, n_parallel=top,
                                            flash_attn="on", gpu_layers=99, extra_args=tuple(settings["args"])),
                             binaries=binaries)
        t0 = time.perf_counter()
        server.start(300)
        out["load_seconds"] = time.perf_counter() - t0
        out["command"] = server.settings.extra_args
        try:
            call = _http_call(server.url, greedy)
            call(0)  # warm-up
            out["single"] = singles(call, a.reps)
            if levels:
                concurrent(call, top)  # warm-up at full width
                out["concurrency"] = sweep(call, levels, a.reps)
        finally:
            out["log_tail"] = server.log_tail(12)
            server.stop()
    elif kind == "engine":
        from llcuda import InferenceEngine

        engine = InferenceEngine()
        engine.load_model(a.model, gpu_layers=99, ctx_size=ctx, n_parallel=top, flash_attn="on",
                          backend_sampling=settings["backend_sampling"])
        out["load_seconds"] = engine.load_seconds

        def call(i: int) -> dict[str, Any]:
            r = engine.infer(prompt(i), max_tokens=a.max_tokens, temperature=0.0, ignore_eos=True)
            wall = r.latency_ms / 1000
            return {"tokens": r.tokens_generated, "wall_s": wall, "e2e_tps": r.tokens_generated / wall,
                    "decode_tps": r.tokens_per_sec}

        try:
            call(0)
            out["single"] = singles(call, a.reps)
            if levels:
                concurrent(call, top)
                out["concurrency"] = sweep(call, levels, a.reps)
        finally:
            engine.unload()
    else:
        from llcuda.fastpath import InProcessEngine

        engine = InProcessEngine()
        t0 = time.perf_counter()
        engine.load_model(a.model, gpu_layers=99, ctx_size=ctx, n_parallel=top, flash_attn="on",
                          kv_unified=settings.get("kv_unified", False))
        out["load_seconds"] = time.perf_counter() - t0
        out["backend_sampling"] = engine.backend_sampling

        def call(i: int) -> dict[str, Any]:
            r = engine.infer(prompt(i), max_tokens=a.max_tokens, ignore_eos=True)
            wall = r.latency_ms / 1000
            return {"tokens": r.tokens_generated, "wall_s": wall, "e2e_tps": r.tokens_generated / wall,
                    "decode_tps": r.tokens_per_sec, "ttft_ms": r.time_to_first_token_ms}

        try:
            call(0)
            engine.reset_stats()
            out["single"] = singles(call, a.reps)
            s = engine.stats
            out["single"]["breakdown_us_per_step"] = {k: s[k] / s["steps"] * 1e6 for k in
                                                      ("decode_call_s", "wait_s", "host_s")}
            if levels:
                concurrent(call, top)
                out["concurrency"] = {}
                for level in levels:
                    engine.reset_stats()
                    out["concurrency"].update(sweep(call, [level], a.reps))
                    s = engine.stats
                    out["concurrency"][str(level)]["breakdown_us_per_step"] = {
                        k: s[k] / max(1, s["steps"]) * 1e6 for k in ("decode_call_s", "wait_s", "host_s")}
        finally:
            engine.unload()
    return out


def section_llama_cpp_python(a: argparse.Namespace) -> dict[str, Any]:
    """llama-cpp-python (its own vendored llama.cpp, built from the sdist with CUDA): in-process, one stream."""
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(a.model, n_gpu_layers=-1, n_ctx=4096, flash_attn=True, verbose=False)
    load = time.perf_counter() - t0

    def call(i: int) -> dict[str, Any]:
        tokens = llm.tokenize(prompt(i).encode())
        llm.reset()
        n, first = 0, None
        t_start = time.perf_counter()
        for _tok in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
            n += 1
            if first is None:
                first = time.perf_counter()
            if n >= a.max_tokens:
                break
        end = time.perf_counter()
        return {"tokens": n, "wall_s": end - t_start, "e2e_tps": n / (end - t_start),
                "decode_tps": (n - 1) / (end - first)}

    call(0)
    single = singles(call, a.reps)
    return {"kind": "llama-cpp-python", "version": llama_cpp.__version__, "load_seconds": load, "single": single,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace")[:400]}


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "env": section_env,
    "llama_bench": section_llama_bench,
    "batched_bench": section_batched_bench,
    "import_time": section_import_time,
    "llama_cpp_python": section_llama_cpp_python,
}


def run_section(a: argparse.Namespace, name: str) -> dict[str, Any]:
    if name in SYSTEMS:
        return run_system(a, name)
    return SECTIONS[name](a)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", required=True, help="install prefix of the llama.cpp build (bin/, lib/, share/)")
    p.add_argument("--model", required=True)
    p.add_argument("--model-label", default="")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sections", default="env,llama_bench,batched_bench," + ",".join(SYSTEMS) + ",import_time")
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--section-timeout", type=float, default=240)
    p.add_argument("--deadline", type=float, default=0, help="epoch seconds after which no section starts")
    p.add_argument("--one", help=argparse.SUPPRESS)  # run one section in this process, JSON to stdout's last line
    a = p.parse_args(argv)
    os.environ.setdefault("LLCUDA_BIN_DIR", f"{a.prefix}/bin")
    if a.one:
        result = run_section(a, a.one)
        print("@@RESULT@@" + json.dumps(result, default=str), flush=True)
        return 0

    results: dict[str, Any] = json.loads(a.out.read_text()) if a.out.is_file() else {}
    results.setdefault("sections", {})
    for name in [s for s in a.sections.split(",") if s]:
        timeout = a.section_timeout
        if a.deadline:
            timeout = min(timeout, a.deadline - time.time())
            if timeout < 20:
                log(f"{name}: skipped, the stage's time is up")
                results["sections"].setdefault(name, {"skipped": "deadline"})
                continue
        log(f"{name} ...")
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--one", name, "--prefix", a.prefix, "--model", a.model, "--out", str(a.out),
               "--model-label", a.model_label, "--levels", ",".join(map(str, a.levels)),
               "--max-tokens", str(a.max_tokens), "--reps", str(a.reps)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
            lines = done.stdout.splitlines()
            for line in lines:
                if not line.startswith("@@RESULT@@"):
                    print("   ", line, flush=True)
            found = [line for line in lines if line.startswith("@@RESULT@@")]
            if done.returncode != 0 or not found:
                results["sections"][name] = {"error": f"exit {done.returncode}", "stderr": done.stderr[-3000:]}
                log(f"{name}: FAILED (exit {done.returncode})\n{done.stderr[-1500:]}")
            else:
                results["sections"][name] = json.loads(found[-1][len("@@RESULT@@"):])
        except subprocess.TimeoutExpired as exc:
            results["sections"][name] = {"error": f"timeout after {timeout:.0f} s",
                                         "stdout": (exc.stdout or b"")[-2000:].decode(errors="replace")
                                         if isinstance(exc.stdout, bytes) else str(exc.stdout)[-2000:]}
            log(f"{name}: TIMEOUT")
        results["sections"][name]["section_seconds"] = round(time.perf_counter() - t0, 1)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
