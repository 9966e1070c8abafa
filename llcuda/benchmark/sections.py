"""The benchmark's sections, each run in a fresh Python process of its own.

    python -m llcuda.benchmark.sections SECTION REQUEST_JSON RESULT_PATH

A fresh process per section keeps them apart: two libllama instances never share a process, the GPU's
memory is returned between sections, a crash ends one section only, and load times include the
device's initialisation as a user's first load does. Progress lines go to stdout (the parent shows
them), the rest of the log to stderr; the result is written as JSON to RESULT_PATH.

Sections: ``llama-bench``, ``batched-bench``, ``startup`` (``import llcuda`` and load -> ready of the
engine's backends, each in a new interpreter), ``chat-turns`` (time to first token of a chat's fifth
turn with prefix reuse and without) and ``system:<name>`` for every name in
:data:`llcuda.benchmark.systems.SYSTEMS`.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from llcuda.benchmark.systems import Job, get_system
from llcuda.benchmark.tools import run_batched_bench, run_llama_bench
from llcuda.benchmark.workload import (
    BATCHED_BENCH_PROMPT_TOKENS,
    SAMPLING,
    measure_first_token,
    measure_waves,
)
from llcuda.errors import LlcudaError

Progress = Callable[[str], None]
WAVE_PROMPT_ROOM = 64  # context a wave request's prompt may take (about 32 tokens)

IMPORT_CODE = "import time; t = time.perf_counter(); import llcuda; print(time.perf_counter() - t)"
LOAD_CODE = """
import json, sys, time
t = time.perf_counter()
from llcuda import InferenceEngine
imported = time.perf_counter() - t
t = time.perf_counter()
engine = InferenceEngine(backend=sys.argv[2] or None)
engine.load_model(sys.argv[1])
ready = time.perf_counter() - t
print(json.dumps({"backend": engine.backend, "import_s": imported, "load_s": ready,
                  "load_timings": dict(engine.load_timings or {})}))
engine.unload()
"""
# load -> ready with each backend's defaults: (row label, InferenceEngine's backend argument; "" = default)
LOAD_VARIANTS = (("InferenceEngine(backend='inprocess')", "inprocess"), ("InferenceEngine() default", ""))


def slots_and_context(request: dict[str, Any]) -> tuple[int, int]:
    """Every system's ``n_parallel`` (the largest wave) and total context (room per slot for the
    time-to-first-token prompt or a wave request, whichever is longer)."""
    n_parallel = max(request["concurrency"])
    per_slot = max(request["prompt_tokens"] + 256, WAVE_PROMPT_ROOM + request["max_tokens"] + 64)
    return n_parallel, n_parallel * per_slot


def _binaries() -> Any:
    from llcuda import find_binaries

    return find_binaries()


def llama_bench(request: dict[str, Any], progress: Progress) -> dict[str, Any]:
    out = run_llama_bench(
        _binaries(),
        Path(request["model"]),
        prompt_tokens=request["prompt_tokens"],
        max_tokens=request["max_tokens"],
        repeats=request["repeats"],
        gpu_layers=request["gpu_layers"],
        flash_attn=request["flash_attn"],
    )
    for key, row in out["tests"].items():
        progress(f"{key}: {row['tps']:.1f} ± {row['stddev']:.1f} tok/s")
    return out


def batched_bench(request: dict[str, Any], progress: Progress) -> dict[str, Any]:
    out = run_batched_bench(
        _binaries(),
        Path(request["model"]),
        levels=request["concurrency"],
        prompt_tokens=BATCHED_BENCH_PROMPT_TOKENS,
        max_tokens=request["max_tokens"],
        gpu_layers=request["gpu_layers"],
        flash_attn=request["flash_attn"],
    )
    for level, row in out["levels"].items():
        progress(f"B={level}: S_TG {row['S_TG']:.1f} tok/s")
    return out


def _python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LlcudaError(f"a fresh interpreter failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def startup(request: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """``import llcuda`` and load -> ready (each backend's defaults), each in a new interpreter."""
    imports = [float(_python(IMPORT_CODE)) for _ in range(request["repeats"])]
    progress(f"import llcuda: {statistics.median(imports) * 1000:.1f} ms")
    loads: list[dict[str, Any]] = []
    for repeat in range(request["repeats"]):
        for label, backend in LOAD_VARIANTS:
            row = json.loads(_python(LOAD_CODE, request["model"], backend))
            loads.append({"variant": label, "repeat": repeat, **row})
    for label, _backend in LOAD_VARIANTS:
        times = [r["load_s"] for r in loads if r["variant"] == label]
        progress(f"load -> ready, {label}: {statistics.median(times):.2f} s")
    return {"import_s": imports, "loads": loads}


def run_system(name: str, request: dict[str, Any], progress: Progress) -> dict[str, Any]:
    sut = get_system(name)
    n_parallel, ctx = slots_and_context(request)
    log_dir = Path(request["log_dir"])
    job = Job(Path(request["model"]), n_parallel, ctx, request["gpu_layers"], request["flash_attn"], log_dir)
    t0 = time.perf_counter()
    info = sut.start(job)
    load_s = time.perf_counter() - t0
    progress(f"{sut.label}: ready in {load_s:.2f} s ({n_parallel} slots, context {ctx})")
    try:
        waves = measure_waves(
            sut.request,
            request["concurrency"],
            [SAMPLING[s] for s in request["sampling"]],
            request["max_tokens"],
            request["repeats"],
            progress,
        )
        ttft = measure_first_token(sut.request, request["prompt_tokens"], request["repeats"])
        progress(f"time to first token: {statistics.median(r['ttft_s'] for r in ttft) * 1000:.1f} ms")
    finally:
        sut.stop()
    return {
        "label": sut.label,
        "load_s": load_s,
        "n_parallel": n_parallel,
        "ctx_size": ctx,
        **info,
        "waves": waves,
        "ttft": ttft,
    }


CHAT_TURNS = 5
CHAT_SYSTEM_WORDS = 300  # a system prompt of a few hundred tokens, as chat front ends send
CHAT_USER_WORDS = 60
CHAT_REPLY_TOKENS = 64


def _words(n: int, seed: int) -> str:
    vocab = (
        "lighthouse keeper map storm harbour ship lantern rope island signal tide captain night "
        "coast letter compass north wave beacon"
    ).split()
    return " ".join(vocab[(seed * 7 + i * 3) % len(vocab)] for i in range(n))


def chat_turns(request: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Time to first token of turn 5 of a chat, with the engine's prefix reuse and without it.

    Each turn's prompt is the whole conversation so far (as a chat client sends it); with prefix reuse
    the engine prefills only what the previous turn did not leave in the KV cache. The same turn-5
    prompt is then sent again after :meth:`~llcuda.libllama.engine.InProcessEngine.forget_prefixes`.
    """
    from llcuda.libllama.engine import InProcessEngine

    n_parallel, ctx = slots_and_context(request)
    engine = InProcessEngine().load_model(
        request["model"],
        n_parallel=n_parallel,
        ctx_size=ctx,
        gpu_layers=request["gpu_layers"],
        flash_attn=request["flash_attn"],
    )
    rows: list[dict[str, Any]] = []
    room = engine.n_ctx_seq  # a small model's context scales the chat down
    system_words, user_words = min(CHAT_SYSTEM_WORDS, room // 8), min(CHAT_USER_WORDS, room // 40)
    reply_tokens = min(CHAT_REPLY_TOKENS, room // 40)
    try:
        for repeat in range(request["repeats"]):
            engine.forget_prefixes()
            conversation = f"System: {_words(system_words, repeat)}\n"
            for turn in range(1, CHAT_TURNS + 1):
                conversation += f"User: {_words(user_words, turn + repeat)}\nAssistant:"
                if turn < CHAT_TURNS:
                    reply = engine.infer(conversation, max_tokens=reply_tokens, temperature=0.0, ignore_eos=True)
                    conversation += reply.text + "\n"
            with_reuse = engine.infer(conversation, max_tokens=1, temperature=0.0)
            engine.forget_prefixes()
            without = engine.infer(conversation, max_tokens=1, temperature=0.0)
            row = {
                "prompt_tokens": with_reuse.prompt_tokens,
                "reused_tokens": with_reuse.timings["prompt_cached"],
                "ttft_reuse_s": (with_reuse.time_to_first_token_ms or 0) / 1000,
                "ttft_fresh_s": (without.time_to_first_token_ms or 0) / 1000,
            }
            rows.append(row)
            progress(
                f"turn {CHAT_TURNS}: {row['prompt_tokens']} prompt tokens, {row['reused_tokens']} reused; TTFT "
                f"{row['ttft_reuse_s'] * 1000:.1f} ms with reuse, {row['ttft_fresh_s'] * 1000:.1f} ms without"
            )
    finally:
        engine.unload()
    return {"turn": CHAT_TURNS, "rows": rows}


SECTIONS: dict[str, Callable[[dict[str, Any], Progress], dict[str, Any]]] = {
    "llama-bench": llama_bench,
    "batched-bench": batched_bench,
    "startup": startup,
    "chat-turns": chat_turns,
}


def run_section(section: str, request: dict[str, Any], progress: Progress) -> dict[str, Any]:
    if section.startswith("system:"):
        return run_system(section.split(":", 1)[1], request, progress)
    return SECTIONS[section](request, progress)


def main(argv: list[str]) -> int:
    section, request_json, result_path = argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    progress_log = logging.getLogger("llcuda.benchmark.progress")
    progress_log.propagate = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    progress_log.addHandler(handler)
    result = run_section(section, json.loads(request_json), progress_log.info)
    Path(result_path).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
