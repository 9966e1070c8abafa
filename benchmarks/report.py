#!/usr/bin/env python3
"""Turn bench_matrix.py's JSON (and diag_concurrency.py's, if given) into a markdown report and a PNG plot.

    python benchmarks/report.py benchmarks/results/h100-llama1b-q4km.json \\
        [--diag benchmarks/results/h100-llama1b-q4km-diag.json] [--out benchmarks/results/h100-llama1b-q4km]

Writes ``<out>.md`` and ``<out>.png`` (tokens/s against concurrency, llama-batched-bench's S_TG as the
ceiling). Every number comes from the JSON; the targets are issue #5's ratios.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TARGETS = {  # issue #5
    "single": 0.95,  # llcuda single-stream decode / llama-bench tg128
    "16": 0.8,  # llcuda aggregate at 16 concurrent / llama-batched-bench S_TG at B=16
    "64": 0.7,  # ... at 64
    "load_s": 1.5,  # load_model -> ready, 1B model
    "import_s": 0.100,  # import llcuda
}
LABELS = {
    "server-default": "llama-server, raw HTTP",
    "server-bs": "llama-server --backend-sampling, raw HTTP",
    "server-bs-kvu": "llama-server --backend-sampling --kv-unified, raw HTTP",
    "server-bs-np1": "llama-server --backend-sampling, 1 slot, raw HTTP",
    "engine-default": "llcuda InferenceEngine (llama-server)",
    "engine-bs": "llcuda InferenceEngine, backend_sampling=True",
    "fastpath": "llcuda fastpath.InProcessEngine (64 seqs)",
    "fastpath-kvu": "llcuda fastpath.InProcessEngine, kv_unified (64 seqs)",
    "fastpath-np1": "llcuda fastpath.InProcessEngine (1 seq)",
    "llama_cpp_python": "llama-cpp-python (in-process, own llama.cpp)",
}


def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def ratio(x: float | None, ref: float | None) -> str:
    return "–" if x is None or not ref else f"{x / ref:.2f}×"


def mark(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "missed")


def build(data: dict[str, Any], diag: list[dict[str, Any]] | None,
          diag_note: str = "") -> tuple[str, dict[str, Any]]:
    s = data["sections"]
    env = s.get("env", {})
    info = env.get("build_info", {})
    tg_key = f"tg{env.get('max_tokens', 128)}"
    tg = s.get("llama_bench", {}).get(tg_key, {}).get("tps")
    pp = s.get("llama_bench", {}).get("pp512", {}).get("tps")
    bb = {k: v["S_TG"] for k, v in s.get("batched_bench", {}).items() if isinstance(v, dict) and "S_TG" in v}
    levels = [str(x) for x in env.get("levels", [1, 4, 16, 64])]
    systems = {k: v for k, v in s.items() if isinstance(v, dict) and ("single" in v or "concurrency" in v)}

    lines = [f"# llcuda GPU benchmark: {env.get('model_label') or Path(env.get('model', '?')).name}", ""]
    lines += [
        f"- GPU: {env.get('gpu', '?')} (driver's CUDA {env.get('driver_cuda_version', '?')}); "
        f"CPU: {env.get('nproc', '?')} cores",
        f"- llama.cpp build b{info.get('llama_cpp_build', '?')}, backend {info.get('backend', '?')}, "
        f"CUDA {info.get('cuda_version', '?')}, archs {', '.join(info.get('cuda_archs', []))}, "
        f"built in {info.get('build_seconds', '?')} s with recipe/build-binaries.sh",
        f"- model: {env.get('model_label', '')} ({env.get('model_bytes', 0) / 1e6:,.0f} MB); greedy, end-of-sequence "
        f"ignored, {env.get('max_tokens', '?')} tokens per request; prompt ≈ 32 tokens "
        f"(llama-batched-bench -npp 32); flash attention on, all layers on the GPU",
        f"- measured {env.get('date', '?')}, all rows in one run on one machine",
        "",
        "## Ceilings (llama.cpp's own tools, same build)",
        "",
        "| tool | metric | tok/s |",
        "|---|---|---:|",
        f"| llama-bench | pp512 | {fmt(pp)} |",
        f"| llama-bench | {tg_key} | {fmt(tg)} |",
    ]
    lines += [f"| llama-batched-bench | S_TG at B={k} | {fmt(v)} |" for k, v in bb.items()]

    lines += ["", "## Single stream", "",
              f"decode = tokens after the first / time after the first (the server's own clock for llama-server rows); "
              f"e2e = tokens / request wall time seen by the client. Ratios against llama-bench {tg_key}.", "",
              "| system | decode tok/s | ratio | e2e tok/s | ratio | load → ready s |", "|---|---:|---:|---:|---:|---:|"]
    for name, v in systems.items():
        m = v.get("single", {}).get("median", {})
        lines.append(f"| {LABELS.get(name, name)} | {fmt(m.get('decode_tps'))} | {ratio(m.get('decode_tps'), tg)} | "
                     f"{fmt(m.get('e2e_tps'))} | {ratio(m.get('e2e_tps'), tg)} | {fmt(v.get('load_seconds'), 2)} |")

    lines += ["", "## Aggregate throughput at N concurrent requests", "",
              "N requests released together; tokens / wall time of the whole wave (prefill included); "
              "median of the repetitions. Ratio against llama-batched-bench S_TG at B=N.", "",
              "| system | " + " | ".join(f"N={lv}" for lv in levels) + " |", "|---|" + "---:|" * len(levels)]
    lines.append("| llama-batched-bench S_TG (ceiling) | " + " | ".join(fmt(bb.get(lv)) for lv in levels) + " |")
    for name, v in systems.items():
        c = v.get("concurrency")
        if not c:
            continue
        cells = [f"{fmt(c[lv]['tps'])} ({ratio(c[lv]['tps'], bb.get(lv))})" if lv in c else "–" for lv in levels]
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")

    breakdown = [(n, v["single"]["breakdown_us_per_step"]) for n, v in systems.items()
                 if "breakdown_us_per_step" in v.get("single", {})]
    server_rows = [(n, v["single"]["median"]) for n, v in systems.items()
                   if "server_ms_per_token" in v.get("single", {}).get("median", {})]
    if breakdown or server_rows:
        lines += ["", "## Where a single-stream token's time goes", "",
                  f"llama-bench {tg_key}: {fmt(1000 / tg if tg else None, 3)} ms per token (decode + sync, no sampling).", ""]
        for name, b in breakdown:
            lines.append(f"- {LABELS.get(name, name)}: llama_decode call {b['decode_call_s']:.0f} µs + waiting for the GPU "
                         f"{b['wait_s']:.0f} µs + Python {b['host_s']:.0f} µs per step")
        for name, m in server_rows:
            lines.append(f"- {LABELS.get(name, name)}: {m['server_ms_per_token']:.3f} ms per token in the server's slot loop, "
                         f"prompt {m['server_prompt_ms']:.1f} ms, HTTP + JSON {m['http_overhead_ms']:.1f} ms per request")

    imp = s.get("import_time", {}).get("seconds_median")
    load_rows = {n: v.get("load_seconds") for n, v in systems.items() if v.get("load_seconds")}
    best_single = max((v.get("single", {}).get("median", {}).get("decode_tps", 0), n) for n, v in systems.items()
                      if n.startswith(("engine", "fastpath"))) if systems else (0, "")
    best = {}
    for lv in ("16", "64"):
        cands = [(v["concurrency"][lv]["tps"], n) for n, v in systems.items()
                 if n.startswith(("engine", "fastpath")) and lv in v.get("concurrency", {})]
        cands += [(r["tps"], f"fastpath {r['config']} (diag run)") for r in diag or [] if str(r["level"]) == lv]
        best[lv] = max(cands) if cands else (None, "")
    engine_load = load_rows.get("engine-bs") or load_rows.get("engine-default")
    lines += ["", "## Targets (issue #5)", "", "| target | measured | result |", "|---|---|---|",
              f"| single-stream decode ≥ {TARGETS['single']}× llama-bench {tg_key} | "
              f"{fmt(best_single[0])} tok/s = {ratio(best_single[0], tg)} ({LABELS.get(best_single[1], best_single[1])}) | "
              f"{mark(bool(tg) and best_single[0] / tg >= TARGETS['single'])} |"]
    for lv in ("16", "64"):
        val, who = best[lv]
        ok = None if val is None or not bb.get(lv) else val / bb[lv] >= TARGETS[lv]
        lines.append(f"| aggregate at {lv} ≥ {TARGETS[lv]}× S_TG(B={lv}) | {fmt(val)} tok/s = {ratio(val, bb.get(lv))} "
                     f"({LABELS.get(who, who)}) | {mark(ok)} |")
    lines.append(f"| load_model → ready ≤ {TARGETS['load_s']} s | InferenceEngine {fmt(engine_load, 2)} s | "
                 f"{mark(None if engine_load is None else engine_load <= TARGETS['load_s'])} |")
    lines.append(f"| import llcuda ≤ {TARGETS['import_s'] * 1000:.0f} ms | {fmt(imp * 1000 if imp else None)} ms | "
                 f"{mark(None if imp is None else imp <= TARGETS['import_s'])} |")

    if diag:
        lines += ["", "## In-process engine variants (benchmarks/diag_concurrency.py, 64-token requests)", "",
                  *([diag_note, ""] if diag_note else []),
                  "| config | N | tok/s | ratio to S_TG | llama_decode call µs/step | GPU wait µs/step | Python µs/step |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in diag:
            lines.append(f"| {r['config']} | {r['level']} | {fmt(r['tps'])} | {ratio(r['tps'], bb.get(str(r['level'])))} | "
                         f"{r['us_decode_call']:,.0f} | {r['us_wait']:,.0f} | {r['us_host']:,.0f} |")
    lines.append("")
    return "\n".join(lines), {"bb": bb, "systems": systems, "levels": levels, "diag": diag, "env": env}


def plot(parts: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    bb = parts["bb"]
    xs = [int(k) for k in bb]
    ax.plot(xs, list(bb.values()), "k--", marker="s", label="llama-batched-bench S_TG (ceiling)")
    for name, v in parts["systems"].items():
        c = v.get("concurrency")
        if c:
            ks = sorted(c, key=int)
            ax.plot([int(k) for k in ks], [c[k]["tps"] for k in ks], marker="o", label=LABELS.get(name, name))
    configs: dict[str, list[tuple[int, float]]] = {}
    for r in parts["diag"] or []:
        configs.setdefault(r["config"], []).append((r["level"], r["tps"]))
    for name, pts in configs.items():
        if name in ("np64-kvu",):
            ax.plot(*zip(*sorted(pts)), marker="^", linestyle=":", label=f"fastpath {name} (diag run)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("aggregate decode tokens/s")
    env = parts["env"]
    ax.set_title(f"{env.get('model_label', '')} on {env.get('gpu', '').split(',')[0]}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--diag", type=Path)
    p.add_argument("--diag-note", default="", help="a sentence printed above the diag table (where/when it ran)")
    p.add_argument("--out", type=Path, help="output path without suffix (default: next to the JSON)")
    a = p.parse_args(argv)
    data = json.loads(a.results.read_text())
    diag = json.loads(a.diag.read_text()) if a.diag else None
    text, parts = build(data, diag, a.diag_note)
    out = a.out or a.results.with_suffix("")
    out.with_suffix(".md").write_text(text)
    plot(parts, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
