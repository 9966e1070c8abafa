"""llama.cpp's own benchmarks, the ceilings every llcuda row is divided by: their commands and output.

* ``llama-bench -o json``: one row per test; ``pp<N>`` (prompt processing of N tokens) and ``tg<N>``
  (N tokens generated one at a time, a single stream), each the mean tokens/s of ``-r`` repetitions.
* ``llama-batched-bench --output-format jsonl``: one row per batch size B (``-npl``): B sequences
  decoded together; ``speed_tg`` (S_TG) is their aggregate generation speed.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llcuda.errors import LlcudaError

if TYPE_CHECKING:
    from llcuda.system.binaries import Binaries

log = logging.getLogger(__name__)

BATCHED_BENCH_ATTEMPTS = 3


def llama_bench_command(
    exe: Path,
    model: Path,
    *,
    prompt_tokens: int,
    max_tokens: int,
    repeats: int,
    gpu_layers: int,
    flash_attn: str,
) -> list[str]:
    return [
        str(exe),
        "-m",
        str(model),
        "-p",
        str(prompt_tokens),
        "-n",
        str(max_tokens),
        "-ngl",
        str(gpu_layers),
        "-fa",
        flash_attn,
        "-r",
        str(repeats),
        "-o",
        "json",
    ]


def parse_llama_bench(stdout: str) -> dict[str, dict[str, Any]]:
    """``{"pp2048": {...}, "tg128": {...}}`` from llama-bench's JSON array."""
    try:
        rows = json.loads(stdout)
    except ValueError as exc:
        raise LlcudaError(f"llama-bench printed no JSON ({exc}); its output began: {stdout[:300]!r}") from None
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"
        out[key] = {
            "tps": row["avg_ts"],
            "stddev": row["stddev_ts"],
            "samples_ts": row.get("samples_ts"),
            "backends": row.get("backends"),
            "gpu_info": row.get("gpu_info"),
            "cpu_info": row.get("cpu_info"),
            "model_type": row.get("model_type"),
            "build_commit": row.get("build_commit"),
            "build_number": row.get("build_number"),
        }
    return out


def batched_bench_command(
    exe: Path,
    model: Path,
    *,
    levels: Sequence[int],
    prompt_tokens: int,
    max_tokens: int,
    gpu_layers: int,
    flash_attn: str,
) -> list[str]:
    ctx = max(levels) * (prompt_tokens + max_tokens + 16)
    return [
        str(exe),
        "-m",
        str(model),
        "-c",
        str(ctx),
        "-b",
        "2048",
        "-ub",
        "512",
        "-npp",
        str(prompt_tokens),
        "-ntg",
        str(max_tokens),
        "-npl",
        ",".join(map(str, levels)),
        "-ngl",
        str(gpu_layers),
        "-fa",
        flash_attn,
        "--output-format",
        "jsonl",
    ]


def parse_batched_bench(stdout: str) -> dict[str, dict[str, float]]:
    """``{"<B>": {"S_TG": ..., "S_PP": ..., "S": ..., "t": ...}}`` from llama-batched-bench's JSON lines."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            out[str(row["pl"])] = {
                "S_TG": row["speed_tg"],
                "S_PP": row["speed_pp"],
                "S": row["speed"],
                "t": row["t"],
            }
    return out


def _run(cmd: list[str], binaries: Binaries) -> str:
    from llcuda.system.binaries import subprocess_env

    done = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(binaries), check=False)
    if done.returncode != 0:
        raise LlcudaError(
            f"{Path(cmd[0]).name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}\ncommand: {' '.join(cmd)}"
        )
    return done.stdout


def run_llama_bench(
    binaries: Binaries,
    model: Path,
    *,
    prompt_tokens: int,
    max_tokens: int,
    repeats: int,
    gpu_layers: int,
    flash_attn: str,
) -> dict[str, Any]:
    from llcuda.system.binaries import tool

    cmd = llama_bench_command(
        tool("llama-bench", binaries),
        model,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        repeats=repeats,
        gpu_layers=gpu_layers,
        flash_attn=flash_attn,
    )
    return {"command": cmd, "tests": parse_llama_bench(_run(cmd, binaries))}


def run_batched_bench(
    binaries: Binaries,
    model: Path,
    *,
    levels: Sequence[int],
    prompt_tokens: int,
    max_tokens: int,
    gpu_layers: int,
    flash_attn: str,
) -> dict[str, Any]:
    from llcuda.system.binaries import tool

    cmd = batched_bench_command(
        tool("llama-batched-bench", binaries),
        model,
        levels=levels,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        gpu_layers=gpu_layers,
        flash_attn=flash_attn,
    )
    rows: dict[str, dict[str, float]] = {}
    for attempt in range(1, BATCHED_BENCH_ATTEMPTS + 1):
        # its rows go through an asynchronous logger: a quick run can exit before all of them are printed
        rows = parse_batched_bench(_run(cmd, binaries))
        if len(rows) == len(set(levels)):
            break
        log.info("llama-batched-bench printed %d of %d rows (attempt %d)", len(rows), len(levels), attempt)
    return {"command": cmd, "levels": rows}
