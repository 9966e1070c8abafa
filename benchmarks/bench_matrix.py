#!/usr/bin/env python3
"""The benchmark matrix: llama.cpp's own ceilings, llama-server, llcuda (server and in-process), llama-cpp-python.

Same machine, same run, same llama.cpp build, same model, greedy decoding, end-of-sequence ignored so
every request decodes exactly ``--max-tokens`` tokens. Each section runs in its own Python process
(two libllama builds must never share one process; GPU memory is returned between sections) and
the merged results are rewritten to ``--out`` after every section, so a run cut short keeps what it
measured. ``benchmarks/report.py`` turns the JSON of one or more calls into a table and a plot.

    python benchmarks/bench_matrix.py --prefix PREFIX --model model.gguf --out results.json \\
        [--sections env,llama_bench,batched_bench,inproc,server-bs@1+16,llama_bench#2,...] [--levels 1,4,16,64]

A section is ``NAME[@LEVELS][#TAG]``: ``@1+16`` overrides the concurrency levels (and so n_parallel),
``#2`` runs a section again under another key (interleaved ceilings). Names: env, llama_bench,
batched_bench, import_time, load, llama_cpp_python, and every name in ``bench_systems.SYSTEMS``.
``--quick`` (CPU check of the script: 16 tokens, levels 1,4, one repetition) changes only the defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_systems import REPO, SYSTEMS, log, prompt, run_llama_cpp_python, run_load, run_system

NPP = 32  # llama-batched-bench prompt tokens per sequence, about the length of the prompt


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def section_env(a: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    info = json.loads((Path(a.prefix) / "share/llcuda/build-info.json").read_text())
    smi = sh(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm",
            "--format=csv,noheader",
        ]
    )
    cuda = next(
        (
            ln.split("CUDA Version:")[1].split()[0]
            for ln in sh(["nvidia-smi"]).splitlines()
            if "CUDA Version" in ln
        ),
        "",
    )
    patches = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted((REPO / "recipe/patches").glob("*.patch"))
    }
    return {
        "gpu": smi or "none (CPU)",
        "driver_cuda_version": cuda,
        "nvcc": sh(["nvcc", "--version"]).splitlines()[-1:],
        "cpu": sh(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo"]) or platform.processor(),
        "nproc": os.cpu_count(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "build_info": info,
        "llama_cpp_patches": patches,
        "git_head": sh(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "model": str(a.model),
        "model_label": a.model_label,
        "model_bytes": Path(a.model).stat().st_size,
        "max_tokens": a.max_tokens,
        "levels": levels,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "prompt": prompt(0),
        "flags": {"flash_attn": "on", "gpu_layers": 99, "greedy": True, "ignore_eos": True},
    }


def section_llama_bench(a: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    cmd = [
        f"{a.prefix}/bin/llama-bench",
        "-m",
        a.model,
        "-p",
        "512",
        "-n",
        str(a.max_tokens),
        "-ngl",
        "99",
        "-fa",
        "on",
        "-r",
        str(a.lb_reps),
        "-o",
        "json",
    ]
    rows = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout)
    out: dict[str, Any] = {"cmd": cmd}
    for row in rows:
        key = f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"
        out[key] = {
            "tps": row["avg_ts"],
            "stddev": row["stddev_ts"],
            "samples_ts": row.get("samples_ts"),
            "backends": row.get("backends"),
            "gpu_info": row.get("gpu_info"),
            "model_type": row.get("model_type"),
            "build_commit": row.get("build_commit"),
        }
        log(f"  llama-bench {key}: {row['avg_ts']:.1f} ± {row['stddev_ts']:.1f} tok/s")
    return out


def section_batched_bench(a: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    cmd = [
        f"{a.prefix}/bin/llama-batched-bench",
        "-m",
        a.model,
        "-c",
        str(max(levels) * (NPP + a.max_tokens + 16)),
        "-b",
        "2048",
        "-ub",
        "512",
        "-npp",
        str(NPP),
        "-ntg",
        str(a.max_tokens),
        "-npl",
        ",".join(map(str, levels)),
        "-ngl",
        "99",
        "-fa",
        "on",
        "--output-format",
        "jsonl",
    ]
    out: dict[str, Any] = {"cmd": cmd}
    for attempt in range(
        3
    ):  # its rows go through an asynchronous logger: a quick run can exit before they print
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        if len(rows) == len(levels):
            break
        log(f"  batched-bench printed {len(rows)} of {len(levels)} rows (attempt {attempt + 1}); again")
    for row in rows:
        out[str(row["pl"])] = {
            "S_TG": row["speed_tg"],
            "S_PP": row["speed_pp"],
            "t": row["t"],
            "S": row["speed"],
        }
        log(f"  batched-bench B={row['pl']:3d}: S_TG {row['speed_tg']:9.1f} tok/s")
    return out


def section_import_time(a: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    code = "import time; t = time.perf_counter(); import llcuda; print(time.perf_counter() - t)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    times = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
            ).stdout
        )
        for _ in range(7)
    ]
    log(f"  import llcuda: median {statistics.median(times) * 1000:.1f} ms")
    return {"seconds_median": statistics.median(times), "seconds": times}


SECTIONS: dict[str, Callable[[argparse.Namespace, list[int]], dict[str, Any]]] = {
    "env": section_env,
    "llama_bench": section_llama_bench,
    "batched_bench": section_batched_bench,
    "import_time": section_import_time,
    "load": lambda a, _levels: run_load(a),
    "llama_cpp_python": lambda a, _levels: run_llama_cpp_python(a),
}


def parse_spec(spec: str, default_levels: list[int]) -> tuple[str, list[int]]:
    """``NAME[@L1+L2][#TAG]`` -> (NAME, levels)."""
    body = spec.split("#")[0]
    name, _, lv = body.partition("@")
    if name not in SECTIONS and name not in SYSTEMS:
        raise SystemExit(f"unknown section {name!r} in {spec!r}")
    return name, ([int(x) for x in lv.split("+")] if lv else default_levels)


def run_one(a: argparse.Namespace, spec: str) -> dict[str, Any]:
    name, levels = parse_spec(spec, a.levels)
    return run_system(a, name, levels) if name in SYSTEMS else SECTIONS[name](a, levels)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--prefix", required=True, help="install prefix of the llama.cpp build (bin/, lib/, share/)"
    )
    p.add_argument("--model", required=True)
    p.add_argument("--model-label", default="")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--sections", default="env,llama_bench,batched_bench," + ",".join(SYSTEMS) + ",import_time"
    )
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--reps", type=int)
    p.add_argument("--lb-reps", type=int, help="llama-bench repetitions (default 10)")
    p.add_argument(
        "--load-reps", type=int, help="fresh-process loads per backend in section 'load' (default 3)"
    )
    p.add_argument("--quick", action="store_true", help="CPU check of the script: small defaults")
    p.add_argument("--run-id", default="", help="names this call in the JSON (report.py keeps calls apart)")
    p.add_argument("--section-timeout", type=float, default=240)
    p.add_argument("--deadline", type=float, default=0, help="epoch seconds after which no section starts")
    p.add_argument(
        "--one", help=argparse.SUPPRESS
    )  # run one section in this process, JSON to stdout's last line
    a = p.parse_args(argv)
    for key, full, quick in [
        ("levels", [1, 4, 16, 64], [1, 4]),
        ("max_tokens", 128, 16),
        ("reps", 3, 1),
        ("lb_reps", 10, 2),
        ("load_reps", 3, 1),
    ]:
        if getattr(a, key) is None:
            setattr(a, key, quick if a.quick else full)
    os.environ.setdefault("LLCUDA_BIN_DIR", f"{a.prefix}/bin")
    if a.one:
        print("@@RESULT@@" + json.dumps(run_one(a, a.one), default=str), flush=True)
        return 0

    specs = [s for s in a.sections.split(",") if s]
    for spec in specs:
        parse_spec(spec, a.levels)  # fail before measuring anything
    results: dict[str, Any] = json.loads(a.out.read_text()) if a.out.is_file() else {}
    results.setdefault(
        "run",
        {
            "id": a.run_id or f"{socket.gethostname()}-{time.strftime('%Y%m%dT%H%M%S')}",
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    results.setdefault("sections", {})
    passthrough = [
        "--prefix",
        a.prefix,
        "--model",
        a.model,
        "--out",
        str(a.out),
        "--model-label",
        a.model_label,
        "--levels",
        ",".join(map(str, a.levels)),
        "--max-tokens",
        str(a.max_tokens),
        "--reps",
        str(a.reps),
        "--lb-reps",
        str(a.lb_reps),
        "--load-reps",
        str(a.load_reps),
    ]
    for spec in specs:
        timeout = a.section_timeout
        if a.deadline:
            timeout = min(timeout, a.deadline - time.time())
            if timeout < 20:
                log(f"{spec}: skipped, the stage's time is up")
                results["sections"].setdefault(spec, {"skipped": "deadline"})
                continue
        log(f"{spec} ...")
        t0 = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--one", spec, *passthrough],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                check=False,
            )
            lines = done.stdout.splitlines()
            for line in lines:
                if not line.startswith("@@RESULT@@"):
                    print("   ", line, flush=True)
            found = [line for line in lines if line.startswith("@@RESULT@@")]
            if done.returncode != 0 or not found:
                results["sections"][spec] = {
                    "error": f"exit {done.returncode}",
                    "stderr": done.stderr[-3000:],
                }
                log(f"{spec}: FAILED (exit {done.returncode})\n{done.stderr[-1500:]}")
            else:
                results["sections"][spec] = json.loads(found[-1][len("@@RESULT@@") :])
        except subprocess.TimeoutExpired as exc:
            tail = (
                exc.stdout[-2000:]
                if isinstance(exc.stdout, str)
                else (exc.stdout or b"")[-2000:].decode(errors="replace")
            )
            results["sections"][spec] = {"error": f"timeout after {timeout:.0f} s", "stdout": tail}
            log(f"{spec}: TIMEOUT")
        results["sections"][spec]["section_seconds"] = round(time.perf_counter() - t0, 1)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
