#!/usr/bin/env python3
"""Turn bench_matrix.py's JSON of one or more calls into one markdown report, a PNG plot and a merged JSON.

    python benchmarks/report.py out-bench/bench-1b.json out-peers/bench-1b-peers.json \\
        --out benchmarks/results/h100-llama1b-q4km [--diag diag.json --diag-note "..."]

Every row names the call (device run) it came from; ratios are only computed against the ceilings
(llama-bench, llama-batched-bench) measured in the *same* call, never across machines. Writes
``<out>.md``, ``<out>.png`` (tokens/s against concurrency) and ``<out>.json`` (the calls, merged).
The targets are issue #5's.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

TARGETS = {"single": 0.95, "16": 0.8, "64": 0.7, "load_s": 1.5, "import_s": 0.100}  # issue #5
LABELS = {
    "server-default": "llama-server, raw HTTP",
    "server-bs": "llama-server --backend-sampling, raw HTTP",
    "server-bs-kvu": "llama-server --backend-sampling --kv-unified, raw HTTP",
    "server-bs-np1": "llama-server --backend-sampling, 1 slot, raw HTTP",
    "engine-default": "llcuda InferenceEngine (server backend, defaults)",
    "engine-bs": "llcuda InferenceEngine (server backend, backend_sampling)",
    "inproc": "llcuda InferenceEngine(backend='inprocess')",
    "inproc-kvu": "llcuda InferenceEngine(backend='inprocess'), kv_unified",
    "inproc-np1": "llcuda InferenceEngine(backend='inprocess'), n_parallel=1",
    "inproc-np1-t1": "llcuda InferenceEngine(backend='inprocess'), n_parallel=1, threads=1",
    "inproc-np1-passive": "llcuda InferenceEngine(backend='inprocess'), n_parallel=1, OMP_WAIT_POLICY=PASSIVE",
    "fastpath": "llcuda fastpath.InProcessEngine (64 seqs)",
    "fastpath-kvu": "llcuda fastpath.InProcessEngine, kv_unified (64 seqs)",
    "fastpath-np1": "llcuda fastpath.InProcessEngine (1 seq)",
    "llama_cpp_python": "llama-cpp-python (in-process, its own llama.cpp)",
}
LLCUDA = ("engine", "inproc", "fastpath")
# settings tried beside the defaults (kv_unified, one CPU thread, passive OpenMP wait): shown, not judged
EXPERIMENTS = ("inproc-kvu", "inproc-np1-t1", "inproc-np1-passive")


def base(spec: str) -> str:
    return spec.split("#")[0].split("@")[0]


def label(spec: str) -> str:
    extra = spec[len(base(spec)) :]
    return LABELS.get(base(spec), base(spec)) + (f" [{extra}]" if extra else "")


def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def ratio(x: float | None, ref: float | None) -> str:
    return "–" if x is None or not ref else f"{x / ref:.2f}×"


def mark(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "missed")


def load_calls(paths: list[Path]) -> list[dict[str, Any]]:
    calls = []
    for path in paths:
        data = json.loads(path.read_text())
        for call in data.get("calls", [data]):  # a merged report JSON, or one bench_matrix.py file
            run = call.get("run") or {"id": path.stem}
            calls.append(
                {
                    "id": run["id"],
                    "file": call.get("file", path.name),
                    "run": run,
                    "sections": call["sections"],
                }
            )
    return calls


def ceilings(s: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """llama-bench (every llama_bench* section of the call pooled) and llama-batched-bench S_TG per B."""
    tg_key = f"tg{max_tokens}"
    runs = [v for k, v in s.items() if base(k) == "llama_bench" and isinstance(v, dict) and tg_key in v]
    tgs = [v[tg_key]["tps"] for v in runs]
    samples = [x for v in runs for x in (v[tg_key].get("samples_ts") or [v[tg_key]["tps"]])]
    bb: dict[str, list[float]] = {}
    for k, v in s.items():
        if base(k) == "batched_bench" and isinstance(v, dict):
            for lv, row in v.items():
                if isinstance(row, dict) and "S_TG" in row:
                    bb.setdefault(lv, []).append(row["S_TG"])
    return {
        "tg_key": tg_key,
        "tg": statistics.mean(tgs) if tgs else None,
        "tg_runs": tgs,
        "tg_min": min(samples) if samples else None,
        "tg_max": max(samples) if samples else None,
        "pp": statistics.mean([v["pp512"]["tps"] for v in runs if "pp512" in v]) if runs else None,
        "bb": {lv: statistics.median(xs) for lv, xs in sorted(bb.items(), key=lambda kv: int(kv[0]))},
    }


def systems_of(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if isinstance(v, dict) and ("single" in v or "concurrency" in v)}


def build(
    calls: list[dict[str, Any]], diag: list[dict[str, Any]] | None, diag_note: str
) -> tuple[str, list[Any]]:
    env0 = next((c["sections"]["env"] for c in calls if "env" in c["sections"]), {})
    lines = [
        f"# llcuda GPU benchmark: {env0.get('model_label') or Path(env0.get('model', '?')).name}",
        "",
        (
            "Greedy decoding, end-of-sequence ignored, the same prompt family (≈32 tokens; llama-batched-bench "
            "-npp 32), flash attention on, all layers on the GPU. Each call is one device run on one machine; "
            "ratios compare rows with the ceilings of **their own call** only."
        ),
        "",
        "## Calls",
        "",
        "| call | GPU (name, driver, cc, memory) | llama.cpp build | model | tokens | date |",
        "|---|---|---|---|---:|---|",
    ]
    parts = []
    for c in calls:
        env = c["sections"].get("env", {})
        info = env.get("build_info", {})
        patches = ", ".join(env.get("llama_cpp_patches", {})) or "none recorded"
        lines.append(
            f"| {c['id']} | {env.get('gpu', '?')}; CUDA (driver) {env.get('driver_cuda_version', '?')}; "
            f"{env.get('nproc', '?')} cores | b{info.get('llama_cpp_build', '?')} {info.get('backend', '?')} "
            f"CUDA {info.get('cuda_version', '?')} archs {','.join(info.get('cuda_archs', []))}; patches: "
            f"{patches} | {env.get('model_label', '')} ({env.get('model_bytes', 0) / 1e6:,.0f} MB) | "
            f"{env.get('max_tokens', '?')} | {env.get('date', '?')} |"
        )
        c["ceil"] = ceilings(c["sections"], env.get("max_tokens", 128))
        c["systems"] = systems_of(c["sections"])
        parts.append(c)

    lines += [
        "",
        "## Ceilings (llama.cpp's own tools, same build, same call)",
        "",
        (
            "| call | llama-bench pp512 | llama-bench tg (mean of runs; min–max of samples) | "
            "batched-bench S_TG per B |"
        ),
        "|---|---:|---|---|",
    ]
    for c in parts:
        ce = c["ceil"]
        tg_runs = ", ".join(fmt(x) for x in ce["tg_runs"])
        bb = ", ".join(f"B={lv}: {fmt(v)}" for lv, v in ce["bb"].items())
        lines.append(
            f"| {c['id']} | {fmt(ce['pp'])} | {ce['tg_key']} {fmt(ce['tg'])} (runs {tg_runs}; "
            f"{fmt(ce['tg_min'])}–{fmt(ce['tg_max'])}) | {bb or '–'} |"
        )

    lines += [
        "",
        "## Single stream",
        "",
        (
            "decode = tokens after the first / time after the first (the server's "
            "own clock for llama-server rows); e2e = tokens / request wall time seen by the client. Ratios: "
            "against the same call's llama-bench tg mean."
        ),
        "",
        "| call | system | decode tok/s | ratio | e2e tok/s | ratio | load s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in parts:
        for name, v in c["systems"].items():
            m = v.get("single", {}).get("median", {})
            tg = c["ceil"]["tg"]
            lines.append(
                f"| {c['id']} | {label(name)} | {fmt(m.get('decode_tps'))} | {ratio(m.get('decode_tps'), tg)} | "
                f"{fmt(m.get('e2e_tps'))} | {ratio(m.get('e2e_tps'), tg)} | {fmt(v.get('load_seconds'), 2)} |"
            )

    levels = sorted(
        {lv for c in parts for v in c["systems"].values() for lv in v.get("concurrency", {})}, key=int
    )
    lines += [
        "",
        "## Aggregate throughput at N concurrent requests",
        "",
        (
            "N requests released together; tokens / "
            "wall time of the whole wave (prefill included); median of the repetitions. Ratio: against the same "
            "call's llama-batched-bench S_TG at B=N."
        ),
        "",
        "| call | system | " + " | ".join(f"N={lv}" for lv in levels) + " |",
        "|---|---|" + "---:|" * len(levels),
    ]
    for c in parts:
        bb = c["ceil"]["bb"]
        if bb:
            lines.append(
                f"| {c['id']} | llama-batched-bench S_TG (ceiling) | "
                + " | ".join(fmt(bb.get(lv)) for lv in levels)
                + " |"
            )
        for name, v in c["systems"].items():
            cc = v.get("concurrency")
            if cc:
                cells = [
                    f"{fmt(cc[lv]['tps'])} ({ratio(cc[lv]['tps'], bb.get(lv))})" if lv in cc else "–"
                    for lv in levels
                ]
                lines.append(f"| {c['id']} | {label(name)} | " + " | ".join(cells) + " |")

    lines += ["", "## Where a step's time goes", ""]
    for c in parts:
        tg = c["ceil"]["tg"]
        lines.append(
            f"- **{c['id']}**: llama-bench {c['ceil']['tg_key']} {fmt(1000 / tg if tg else None, 3)} ms per token"
        )
        for name, v in c["systems"].items():
            rows = [("single", v.get("single", {}).get("breakdown_us_per_step"))]
            rows += [
                (f"N={lv}", r.get("breakdown_us_per_step")) for lv, r in v.get("concurrency", {}).items()
            ]
            cells = [
                f"{w}: {b.get('decode_call_s', 0):,.0f} + {b.get('wait_s', 0):,.0f} + {b.get('host_s', 0):,.0f} µs"
                for w, b in rows
                if b
            ]
            if cells:
                lines.append(
                    f"  - {label(name)} (llama_decode call + GPU wait + Python, per step): "
                    + "; ".join(cells)
                )
            m = v.get("single", {}).get("median", {})
            if "server_ms_per_token" in m:
                lines.append(
                    f"  - {label(name)}: {m['server_ms_per_token']:.3f} ms per token in the slot loop, prompt "
                    f"{m['server_prompt_ms']:.1f} ms, HTTP + JSON {m['http_overhead_ms']:.1f} ms per request"
                )

    if any("load" in c["sections"] for c in parts):
        lines += [
            "",
            "## load_model → ready (fresh interpreter each; each backend's defaults, and in-process load modes)",
            "",
            "| call | variant | median s | min–max s | phases (median s) |",
            "|---|---|---:|---|---|",
        ]
    for c in parts:
        ld = c["sections"].get("load", {})
        for backend in ld.get("variants", ("inprocess", "server")):  # calls before session 3: no variants
            if backend in ld:
                runs = [r for r in ld.get("runs", []) if r.get("variant", r["backend"]) == backend]
                keys = sorted({k for r in runs for k in r.get("load_timings", {})})
                phases = ", ".join(
                    f"{k} {statistics.median(r['load_timings'].get(k, 0) for r in runs):.3f}" for k in keys
                )
                lines.append(
                    f"| {c['id']} | {backend} | {ld[backend]['median_s']:.2f} | {ld[backend]['min_s']:.2f}–"
                    f"{ld[backend]['max_s']:.2f} | {phases or '–'} |"
                )

    lines += [
        "",
        "## Targets (issue #5)",
        "",
        ("Judged on the calls that ran the first call's build (same llama.cpp build, archs and patches): "
         "each row against its own call's ceilings; single stream from the `n_parallel=1` rows (the "
         "single-stream configuration) where there are any; **met means the median meets the target** "
         "(min–max and the number of rows shown)."),
        "",
        "| target | measured: median (min–max, rows) | result |",
        "|---|---|---|",
    ]
    primary = parts[0]

    def build_of(c: dict[str, Any]) -> str:
        env = c["sections"].get("env", {})
        return json.dumps([env.get("build_info", {}).get(k) for k in ("llama_cpp_build", "backend", "cuda_archs")]
                          + [env.get("llama_cpp_patches", {})], sort_keys=True)

    same = [c for c in parts if build_of(c) == build_of(primary)]

    def judged(key: str) -> tuple[float | None, str]:
        ratios: dict[bool, list[float]] = {True: [], False: []}  # n_parallel=1 row or not
        for c in same:
            for name, v in c["systems"].items():
                if not base(name).startswith(LLCUDA) or "inprocess" not in label(name) or base(name) in EXPERIMENTS:
                    continue
                if key == "single":
                    val, ref = v.get("single", {}).get("median", {}).get("decode_tps"), c["ceil"]["tg"]
                else:
                    val, ref = v.get("concurrency", {}).get(key, {}).get("tps"), c["ceil"]["bb"].get(key)
                if val and ref:
                    ratios["n_parallel=1" in label(name)].append(val / ref)
        chosen = sorted(ratios[True] if key == "single" and ratios[True] else ratios[True] + ratios[False])
        if not chosen:
            return None, "not measured"
        mid = statistics.median(chosen)
        return mid, f"{mid:.2f}× ({chosen[0]:.2f}–{chosen[-1]:.2f}, {len(chosen)} row(s))"

    r, text = judged("single")
    lines.append(f"| single-stream decode ≥ {TARGETS['single']}× llama-bench tg | {text} | "
                 f"{mark(None if r is None else r >= TARGETS['single'])} |")
    for lv in ("16", "64"):
        r, text = judged(lv)
        lines.append(f"| aggregate at {lv} ≥ {TARGETS[lv]}× S_TG(B={lv}) | {text} | "
                     f"{mark(None if r is None else r >= TARGETS[lv])} |")
    loads = sorted(run["load_model_s"] for c in same for run in c["sections"].get("load", {}).get("runs", [])
                   if run.get("variant", run.get("backend")) == "inprocess" and run.get("load_model_s"))
    load = statistics.median(loads) if loads else None
    lines.append(
        f"| load_model → ready ≤ {TARGETS['load_s']} s | "
        + (f"{load:.2f} s ({loads[0]:.2f}–{loads[-1]:.2f}, {len(loads)} fresh in-process loads)" if loads else "–")
        + f" | {mark(None if load is None else load <= TARGETS['load_s'])} |"
    )
    imp = primary["sections"].get("import_time", {}).get("seconds_median")
    lines.append(
        f"| import llcuda ≤ {TARGETS['import_s'] * 1000:.0f} ms | "
        + (f"{imp * 1000:.1f} ms" if imp is not None else "–")
        + f" | {mark(None if imp is None else imp <= TARGETS['import_s'])} |"
    )

    failed = [
        (c["id"], k, v.get("error") or v.get("skipped"))
        for c in parts
        for k, v in c["sections"].items()
        if isinstance(v, dict) and (v.get("error") or v.get("skipped"))
    ]
    if failed:
        lines += ["", "## Sections that failed or were skipped", ""]
        lines += [f"- {cid}: `{k}`: {why}" for cid, k, why in failed]
    if diag:  # diag_concurrency.py rows name a "config"; diag_step.py rows a "variant" (and lead with the machine)
        lines += [
            "",
            "## In-process engine and bare libllama loops (benchmarks/diag_step.py, diag_concurrency.py)",
            "",
            *([diag_note, ""] if diag_note else []),
            "| variant | sequences in the context | N | tok/s | llama_decode call µs/step | GPU wait µs/step "
            "| Python µs/step |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r.get('config') or r.get('variant')} | {r.get('n_parallel') or r.get('n_seq_max') or '–'} "
            f"| {r['level']} | {fmt(r['tps'])} | {r['us_decode_call']:,.0f} | {r['us_wait']:,.0f} | "
            f"{format(r['us_host'], ',.0f') if 'us_host' in r else '–'} |"
            for r in diag
            if "level" in r
        ]
    lines.append("")
    return "\n".join(lines), parts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "results", type=Path, nargs="+", help="bench_matrix.py JSON files (one per call), same model"
    )
    p.add_argument("--diag", type=Path)
    p.add_argument(
        "--diag-note", default="", help="a sentence printed above the diag table (where/when it ran)"
    )
    p.add_argument("--out", type=Path, help="output path without suffix (default: next to the first JSON)")
    a = p.parse_args(argv)
    calls = load_calls(a.results)
    diag = json.loads(a.diag.read_text()) if a.diag else None
    text, parts = build(calls, diag, a.diag_note)
    out = a.out or a.results[0].with_suffix("")
    out.with_suffix(".md").write_text(text)
    env0 = next((c["sections"]["env"] for c in parts if "env" in c["sections"]), {})
    from report_plot import plot  # matplotlib only where a plot is made

    plot(
        parts,
        f"{env0.get('model_label', '')} on {env0.get('gpu', '?').split(',')[0]}",
        out.with_suffix(".png"),
    )
    merged = {"calls": [{"file": c["file"], "run": c["run"], "sections": c["sections"]} for c in parts]}
    if out.with_suffix(".json").resolve() not in [r.resolve() for r in a.results]:
        out.with_suffix(".json").write_text(json.dumps(merged, indent=1, default=str))
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.png')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
