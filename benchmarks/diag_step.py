#!/usr/bin/env python3
"""Where a decode step's time goes at 16 and 64 sequences, in-process: one JSON line per variant.

    LLCUDA_BIN_DIR=<build>/bin python benchmarks/diag_step.py model.gguf out.json

Variants: the engine with each of three libllama log sinks (the shipped one: recipe/llcuda_log.c's C filter
where the binaries have it; every line through the Python callback; a C no-op); and a bare loop over
libllama (no engine: consecutive sequence ids, one token each per step) with and without GPU (backend)
samplers, which isolates what the samplers cost on the GPU and what the engine adds on the host.
DIAG_VARIANTS=logs runs only the three engine variants, twice, interleaved; DIAG_VARIANTS=core the engine
with the shipped sink and the two bare loops. DIAG_LEVELS (default 16,64) picks the levels. For a profiler:
DIAG_VARIANTS=bare1 (one sequence; DIAG_SAMPLERS=0 without samplers, DIAG_KEEP=0 without the sampled
logits' copy) and DIAG_VARIANTS=engine. DIAG_THREADS sets the bare loops' CPU threads.
DIAG_CLIENTS=threads submits an engine wave from one client thread per request instead of batch_infer.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from llcuda import libllama  # noqa: E402
from llcuda.system import binaries as bootstrap
from llcuda.system import gpu
from llcuda.fastpath import InProcessEngine  # noqa: E402

MODEL, OUT = sys.argv[1], sys.argv[2]
LEVELS = tuple(int(x) for x in os.environ.get("DIAG_LEVELS", "16,64").split(","))
TOKENS = int(os.environ.get("DIAG_TOKENS", "128"))
THREADS = int(os.environ.get("DIAG_THREADS", "0"))  # CPU threads of the bare loops (0: llama.cpp's default)
CLIENTS = os.environ.get("DIAG_CLIENTS", "batch")  # "threads": one client thread per request
rows: list[dict] = []


def emit(row: dict) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)
    with open(OUT, "w") as fh:
        json.dump(rows, fh, indent=1)


def environment() -> dict:
    """What ran: machine, GPU, the llama.cpp build (build-info.json) and its patches, the model."""
    binaries = bootstrap.find_binaries()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    patches = sorted(Path(__file__).resolve().parent.parent.glob("recipe/patches/*.patch"))
    return {"variant": "environment", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpu": cpu, "nproc": os.cpu_count(), "gpus": [g.name for g in gpu.detect().gpus] or "none (CPU)",
            "build_info": bootstrap.read_build_info(binaries.bin_dir), "git_head": head,
            "llama_cpp_patches": {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in patches},
            "model": os.path.basename(MODEL), "model_bytes": os.path.getsize(MODEL), "tokens": TOKENS,
            "levels": LEVELS, "variants": os.environ.get("DIAG_VARIANTS", "all")}


def _threaded(eng: InProcessEngine, prompts: list[str]) -> list:
    barrier = threading.Barrier(len(prompts))
    results: list = [None] * len(prompts)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = eng.infer(prompts[i], max_tokens=TOKENS, ignore_eos=True)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results


def engine_wave(eng: InProcessEngine, level: int) -> dict:
    prompts = [f"Story {i}. Write a long story about a lighthouse keeper and an old map." for i in range(level)]
    eng.batch_infer(prompts[:level], max_tokens=16, ignore_eos=True)  # warm-up at this level
    eng.reset_stats()
    libllama.LOG_LINES.clear()
    t = time.perf_counter()
    if CLIENTS == "threads":  # one client thread per request, released together (as bench_systems does)
        results = _threaded(eng, prompts)
    else:
        results = eng.batch_infer(prompts, max_tokens=TOKENS, ignore_eos=True)
    wall = time.perf_counter() - t
    s = eng.stats
    steps = max(1, s["steps"])
    return {"level": level, "tps": sum(r.tokens_generated for r in results) / wall, "steps": s["steps"],
            "us_decode_call": s["decode_call_s"] / steps * 1e6, "us_wait": s["wait_s"] / steps * 1e6,
            "us_host": s["host_s"] / steps * 1e6, "log_lines": len(libllama.LOG_LINES),
            "log_sample": sorted(set(line.strip()[:90] for line in list(libllama.LOG_LINES)))[:6]}


def run_engine(name: str, n_parallel: int = 64, levels: tuple[int, ...] = LEVELS, **kw: object) -> None:
    eng = InProcessEngine().load_model(MODEL, n_parallel=n_parallel, ctx_size=n_parallel * 256, flash_attn="on",
                                       **kw)
    for level in levels:
        emit({"variant": name, "n_parallel": n_parallel, **engine_wave(eng, level)})
    eng.unload()


def bare_loop(name: str, level: int, samplers: bool, n_seq: int = 64, keep_sampled_data: bool = True) -> None:
    """libllama alone: ``level`` sequences 0..level-1, 8-token prompts, then TOKENS steps of one token each,
    in a context of ``n_seq`` sequences (a greedy chain each with ``samplers``). ``keep_sampled_data=False``:
    the sampled rows' logits are not copied to the host (patch 0006), as the engine does."""
    lib = libllama.load_library(bootstrap.find_binaries())
    mp = lib.llama_model_default_params()
    mp.n_gpu_layers = 99
    model = lib.llama_model_load_from_file(MODEL.encode(), mp)
    chains = []
    cp = lib.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_seq * 256, 2048, 512, n_seq
    cp.flash_attn_type, cp.no_perf = 1, True
    if THREADS:
        cp.n_threads = cp.n_threads_batch = THREADS
    if samplers:
        configs = (libllama.SamplerSeqConfig * n_seq)()
        for s in range(n_seq):
            chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            chains.append(chain)
            configs[s].seq_id, configs[s].sampler = s, chain
        cp.samplers, cp.n_samplers = configs, n_seq
    ctx = lib.llama_init_from_model(model, cp)
    if not keep_sampled_data:
        lib.llama_set_keep_sampled_data(ctx, False)
    arrays = libllama.new_batch(level * 8)
    bulk = hasattr(lib, "llama_get_sampled_tokens")
    rows, sampled = (ctypes.c_int32 * level)(*range(level)), (ctypes.c_int32 * level)()
    batch, tok, pos, seqv, out = arrays.batch, arrays.token, arrays.pos, arrays.seq, arrays.logits
    for rep in range(2):  # the first pass warms up
        lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
        k = 0
        for s in range(level):
            for p in range(8):
                tok[k], pos[k], seqv[k], out[k] = 100 + p, p, s, int(p == 7)
                k += 1
        batch.n_tokens = k
        lib.llama_decode(ctx, batch)
        lib.llama_synchronize(ctx)
        t_call = t_wait = 0.0
        t = time.perf_counter()
        for step in range(TOKENS):
            for s in range(level):
                tok[s], pos[s], seqv[s], out[s] = 200 + s, 8 + step, s, 1
            batch.n_tokens = level
            t0 = time.perf_counter()
            lib.llama_decode(ctx, batch)
            t1 = time.perf_counter()
            lib.llama_synchronize(ctx)
            t_call += t1 - t0
            t_wait += time.perf_counter() - t1
            if samplers and bulk and level > 1:  # one call, as the engine reads them (patch 0005)
                lib.llama_get_sampled_tokens(ctx, rows, level, sampled)
            elif samplers:
                for s in range(level):
                    lib.llama_get_sampled_token_ith(ctx, s)
        wall = time.perf_counter() - t
    emit({"variant": name, "n_seq_max": n_seq, "level": level, "tps": level * TOKENS / wall, "us_step": wall / TOKENS * 1e6,
          "us_decode_call": t_call / TOKENS * 1e6, "us_wait": t_wait / TOKENS * 1e6})
    lib.llama_free(ctx)
    lib.llama_model_free(model)
    for chain in chains:
        lib.llama_sampler_free(chain)


VARIANT = os.environ.get("DIAG_VARIANTS", "all")  # "logs": the three log sinks, interleaved; "core": see above
emit(environment())
if VARIANT == "bare1":  # one bare loop only, for a profiler: one sequence, samplers per DIAG_SAMPLERS
    with_samplers = os.environ.get("DIAG_SAMPLERS", "1") == "1"
    keep = os.environ.get("DIAG_KEEP", "1") == "1"  # 0: sampled logits not copied (patch 0006)
    name = "bare+gpu-samplers" + ("" if keep else ", sampled logits not copied")
    bare_loop(name if with_samplers else "bare, no samplers (logits out)", 1, with_samplers, n_seq=1,
              keep_sampled_data=keep)
    sys.exit(0)
if VARIANT == "engine":  # the engine alone at DIAG_LEVELS (64 sequences), for a profiler
    run_engine("engine")
    sys.exit(0)
lib = libllama.load_library(bootstrap.find_binaries())
shipped = libllama._log_sink(bootstrap.find_binaries().lib_dir)  # the C filter where the binaries have it
# libllama's log lines to a C function that ignores them (getpid takes no arguments and has no effect)
noop = libllama.LOG_CALLBACK(ctypes.cast(ctypes.CDLL(None).getpid, ctypes.c_void_p).value)
SINKS = (("engine", shipped), ("engine, every log line through the Python callback", libllama._log_callback),
         ("engine, C no-op log callback", noop))
if VARIANT == "core":  # the engine with the shipped sink only, then the bare loops
    SINKS = SINKS[:1]
for rep in range(2 if VARIANT == "logs" else 1):
    for name, sink in SINKS:
        lib.llama_log_set(sink, None)
        run_engine(name + (f" (filter {'on' if libllama.log_filter_active() else 'absent'})" if sink is shipped else ""))
lib.llama_log_set(shipped, None)
if VARIANT == "logs":
    sys.exit(0)
SKIP = hasattr(lib, "llama_set_keep_sampled_data")  # patch 0006
for level in LEVELS:
    bare_loop("bare+gpu-samplers", level, True)
    if SKIP:
        bare_loop("bare+gpu-samplers, sampled logits not copied", level, True, keep_sampled_data=False)
    bare_loop("bare, no samplers (logits out)", level, False)
if VARIANT == "core" and 1 in LEVELS:  # single stream in a one-sequence context, as the single-stream rows
    run_engine("engine", n_parallel=1, levels=(1,))
    bare_loop("bare+gpu-samplers", 1, True, n_seq=1)
    if SKIP:
        bare_loop("bare+gpu-samplers, sampled logits not copied", 1, True, n_seq=1, keep_sampled_data=False)
    bare_loop("bare, no samplers (logits out)", 1, False, n_seq=1)
