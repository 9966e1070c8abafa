"""``llcuda bench``: aggregate decode throughput of one backend at several concurrency levels.

The quick check a user runs on their machine, through :class:`~llcuda.engine.InferenceEngine` on
any backend. ``llcuda bench --compare`` (also ``python -m llcuda.benchmark``) runs the full
comparison against llama.cpp's own tools instead (:mod:`llcuda.benchmark`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the engine loads when a benchmark runs, not when the CLI parses its flags
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
    from llcuda.engine import InferenceEngine
    from llcuda.options import LoadOptions

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
            runs.append(
                {
                    "concurrency": level,
                    "requests": count,
                    "tokens": tokens,
                    "wall_seconds": round(wall, 4),
                    "throughput_tokens_per_sec": tokens / wall if wall > 0 else 0.0,
                    "per_request_decode_tokens_per_sec": statistics.fmean(r.tokens_per_sec for r in results),
                    "latency_ms_p50": _percentile(latencies, 0.50),
                    "latency_ms_p95": _percentile(latencies, 0.95),
                }
            )
        from llcuda.system.binaries import find_binaries

        build = find_binaries().build_info.get("backend", "?")
        return {
            "model": eng.model_name,
            "backend": build,
            "engine": eng.backend,
            "load_seconds": load_seconds,
            "max_tokens": max_tokens,
            "runs": runs,
        }
    finally:
        eng.unload()


# -- llcuda bench --compare ----------------------------------------------------------------------
def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_compare_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``llcuda bench --compare`` (defaults: :class:`llcuda.benchmark.BenchSettings`)."""
    from llcuda.benchmark.settings import (
        DEFAULT_MODEL,
        DEFAULT_PROMPT_TOKENS,
        DEFAULT_REPEATS,
        DEFAULT_SAMPLING,
        FALLBACK_OUT_DIR,
        RESULTS_DIR,
    )
    from llcuda.benchmark.systems import SYSTEMS

    group = parser.add_argument_group(
        "--compare: llcuda against llama-bench and llama-batched-bench, same binaries, same model",
        "Writes report.json, report.md and report.png to OUT/<device>-<date>/. The model defaults to "
        f"{DEFAULT_MODEL} (random weights, the Llama-3.2-1B shape as Q4_K_M, made once and cached).",
    )
    group.add_argument(
        "--compare", action="store_true", help="run the full comparison (also: python -m llcuda.benchmark)"
    )
    group.add_argument(
        "--sampling",
        type=_name_list,
        default=None,
        help=f"sampling presets, comma-separated (default {','.join(DEFAULT_SAMPLING)})",
    )
    group.add_argument(
        "--repeats", type=int, default=None, help=f"repetitions of everything (default {DEFAULT_REPEATS})"
    )
    group.add_argument(
        "--prompt-tokens",
        type=int,
        default=None,
        help=f"time-to-first-token prompt in tokens (default {DEFAULT_PROMPT_TOKENS})",
    )
    group.add_argument(
        "--systems",
        type=_name_list,
        default=None,
        help=f"systems to run, comma-separated (default all: {','.join(SYSTEMS)})",
    )
    group.add_argument(
        "--out", default=None, help=f"results folder (default {RESULTS_DIR} when it exists, else {FALLBACK_OUT_DIR})"
    )
    group.add_argument(
        "--vocab-dir",
        default=None,
        help="llama.cpp's models/ folder, for a random model's tokenizer (default: a cached "
        "llama.cpp tree, else downloaded)",
    )
    group.add_argument(
        "--section-timeout", type=float, default=None, help="seconds one section may take (default: no limit)"
    )


COMPARE_REFUSES = ("backend", "server_url", "rpc", "split_mode", "tensor_split", "main_gpu")


def run_compare(args: argparse.Namespace) -> int:
    """``llcuda bench --compare``: progress on stderr, the report's path and tables on stdout."""
    from pathlib import Path

    from llcuda.benchmark import BenchSettings, run_benchmark
    from llcuda.benchmark import settings as settings_module
    from llcuda.benchmark.systems import SYSTEMS
    from llcuda.errors import ConfigError

    given = [f"--{name.replace('_', '-')}" for name in COMPARE_REFUSES if getattr(args, name, None)]
    if given:
        raise ConfigError(
            f"{', '.join(given)} cannot be used with --compare: it runs every system itself. "
            "Drop them, or run `llcuda bench` without --compare."
        )

    def or_default(value: Any, default: Any) -> Any:
        return default if value is None else value

    settings = BenchSettings(
        model=or_default(args.model, settings_module.DEFAULT_MODEL),
        concurrency=tuple(or_default(args.concurrency, settings_module.DEFAULT_CONCURRENCY)),
        sampling=tuple(or_default(args.sampling, settings_module.DEFAULT_SAMPLING)),
        max_tokens=or_default(args.max_tokens, settings_module.DEFAULT_MAX_TOKENS),
        prompt_tokens=or_default(args.prompt_tokens, settings_module.DEFAULT_PROMPT_TOKENS),
        repeats=or_default(args.repeats, settings_module.DEFAULT_REPEATS),
        systems=tuple(or_default(args.systems, SYSTEMS)),
        out=Path(args.out) if args.out else None,
        vocab_dir=Path(args.vocab_dir) if args.vocab_dir else None,
        gpu_layers=args.gpu_layers,
        flash_attn=args.flash_attn,
        section_timeout=args.section_timeout,
        offline=args.offline,
    )
    out = run_benchmark(settings, progress=lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True))
    if args.json:
        print(out.json_path.read_text())
    else:
        print(out.markdown_path.read_text())
        files = [out.json_path, out.markdown_path] + ([out.plot_path] if out.plot_path else [])
        print(f"wrote {', '.join(str(f) for f in files)}")
    return 0
