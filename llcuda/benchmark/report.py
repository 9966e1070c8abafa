"""A run's summary (medians, ceilings, ratios) and its markdown report, both computed from the raw JSON.

Every ratio compares a row with the ceiling measured in the same run with the same binaries and model, so
that 1.0 means as fast as llama.cpp's own tool: one stream (N=1) is divided by llama-bench
``tg<max_tokens>``, N concurrent requests by llama-batched-bench S_TG at B=N; for time to first token the
time llama-bench ``pp<prompt_tokens>`` takes for as many tokens is divided by it (ceiling ÷ TTFT: 0.91 is a
TTFT 1.1 times the ceiling's).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ceilings(data: dict[str, Any]) -> dict[str, Any]:
    settings, sections = data["settings"], data["sections"]
    tests = sections.get("llama-bench", {}).get("tests", {})
    tg_key, pp_key = f"tg{settings['max_tokens']}", f"pp{settings['prompt_tokens']}"
    batched = sections.get("batched-bench", {}).get("levels", {})
    return {
        "tg_key": tg_key,
        "tg": tests.get(tg_key, {}).get("tps"),
        "tg_stddev": tests.get(tg_key, {}).get("stddev"),
        "pp_key": pp_key,
        "pp": tests.get(pp_key, {}).get("tps"),
        "pp_stddev": tests.get(pp_key, {}).get("stddev"),
        "batched": {str(level): row["S_TG"] for level, row in batched.items()},  # JSON keys: strings
    }


def ceiling_at(ceil: dict[str, Any], level: int) -> float | None:
    """The ceiling of N=``level`` requests: llama-bench tg for one stream, else batched-bench S_TG at B=N."""
    value = ceil["tg"] if level == 1 else ceil["batched"].get(str(level))
    return float(value) if value else None


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Medians over the repeats and the ratio of each row to its ceiling."""
    ceil = ceilings(data)
    settings = data["settings"]
    throughput: list[dict[str, Any]] = []
    first_token: list[dict[str, Any]] = []
    for key, section in data["sections"].items():
        if not key.startswith("system:") or "waves" not in section:
            continue
        name = key.split(":", 1)[1]
        groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for row in section["waves"]:
            groups.setdefault((row["sampling"], row["level"]), []).append(row)
        for (sampling, level), rows in groups.items():
            tps = _spread([r["tps"] for r in rows])
            ceiling = ceiling_at(ceil, level)
            throughput.append(
                {
                    "system": name,
                    "label": section["label"],
                    "sampling": sampling,
                    "level": level,
                    "tps": tps["median"],
                    "tps_min": tps["min"],
                    "tps_max": tps["max"],
                    "repeats": tps["n"],
                    "ceiling": ceiling,
                    "ceiling_source": f"llama-bench {ceil['tg_key']}"
                    if level == 1
                    else f"llama-batched-bench S_TG B={level}",
                    "ratio": tps["median"] / ceiling if ceiling else None,
                    "short_requests": sum(r["short_requests"] for r in rows),
                }
            )
        ttft = _spread([r["ttft_s"] for r in section["ttft"]])
        counted = [r["prompt_tokens"] for r in section["ttft"] if r.get("prompt_tokens")]
        prompt_tokens = statistics.median(counted) if counted else settings["prompt_tokens"]
        ceiling_s = prompt_tokens / ceil["pp"] if ceil["pp"] else None
        first_token.append(
            {
                "system": name,
                "label": section["label"],
                "ttft_s": ttft["median"],
                "ttft_min_s": ttft["min"],
                "ttft_max_s": ttft["max"],
                "prompt_tokens": prompt_tokens,
                "prompt_tokens_counted": bool(counted),
                "ceiling_s": ceiling_s,
                "ratio": ceiling_s / ttft["median"] if ceiling_s and ttft["median"] else None,
                "streamed": all(r["streamed"] for r in section["ttft"]),
                "load_s": section["load_s"],
            }
        )
    startup = data["sections"].get("startup", {})
    loads: dict[str, dict[str, Any]] = {}
    for row in startup.get("loads", []):
        loads.setdefault(row["variant"], {"backend": row["backend"], "values": []})["values"].append(row["load_s"])
    return {
        "ceilings": ceil,
        "throughput": throughput,
        "first_token": first_token,
        "import_s": _spread(startup["import_s"]) if startup.get("import_s") else None,
        "load_s": {variant: {"backend": v["backend"], **_spread(v["values"])} for variant, v in loads.items()},
        "not_run": {k: v["skipped"] for k, v in data["sections"].items() if "skipped" in v},
        "failed": {k: {"error": v["error"], "log": v.get("log")} for k, v in data["sections"].items() if "error" in v},
    }


def _count(n: float) -> str:
    """``1_235_814_400`` -> ``"1.24 B"``, ``4_587_520`` -> ``"4.59 M"``."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def times(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def _build_line(env: dict[str, Any]) -> str:
    info = env.get("build_info", {})
    parts = [f"llama.cpp b{info.get('llama_cpp_build', '?')} ({info.get('backend', 'backend unknown')}"]
    if info.get("cuda_version"):
        parts.append(f", CUDA {info['cuda_version']}")
    if info.get("cuda_archs"):
        parts.append(f", archs {','.join(map(str, info['cuda_archs']))}")
    parts.append(f") from {env['binaries']['bin_dir']}")
    return "".join(parts)


def markdown(data: dict[str, Any]) -> str:
    env, settings, summary = data["environment"], data["settings"], data["summary"]
    model = env["model"]
    ceil = summary["ceilings"]
    levels = sorted(
        {row["level"] for row in summary["throughput"]}
        | {int(b) for b in ceil["batched"]}
        | set(settings["concurrency"])
    )
    driver = (
        f"driver {env['driver_version']} (CUDA {env.get('driver_cuda_version') or '?'})"
        if env.get("driver_version")
        else "no NVIDIA driver"
    )
    size = f"{model['bytes'] / 1e6:,.0f} MB"
    params = f"{_count(model['parameters'])} parameters" if model.get("parameters") else "parameters unknown"
    title = model["file"] if Path(model["spec"]).name == model["file"] else model["spec"]  # a path: its file
    lines = [
        f"# llcuda benchmark: {title} on {env['device']}",
        "",
        f"- Date: {env['date']}; llcuda {env['llcuda_version']}; Python {env['python']}; {driver}",
        f"- Binaries: {_build_line(env)}",
        f"- CPU: {env['cpu']} ({env['cpu_count']} logical cores)",
        f"- Model: {model['name']} ({model['architecture']}, {params}, {model['file_type']}, {size}, "
        f"{model['layers']} layers, vocabulary {model['vocab_size']})",
        f"- Workload: {settings['max_tokens']} tokens per request, end-of-sequence ignored; N requests "
        "released "
        f"together (~32-token prompts); sampling {', '.join(settings['sampling'])} (greedy: temperature 0; "
        "default: temperature 0.7, top_p 0.95, top_k 40); every system loaded with "
        f"{max(settings['concurrency'])} slots; medians of {settings['repeats']} repeat(s)",
        f"- Reproduce: `{data['reproduce']}`",
        "",
        "## Ceilings: llama.cpp's own tools, same binaries, same run",
        "",
        "| tool | test | tok/s |",
        "|---|---|---:|",
        f"| llama-bench | {ceil['tg_key']} (one stream) | {fmt(ceil['tg'])} ± {fmt(ceil['tg_stddev'])} |",
        f"| llama-bench | {ceil['pp_key']} (prompt processing) | {fmt(ceil['pp'])} ± {fmt(ceil['pp_stddev'])} |",
    ]
    lines += [
        f"| llama-batched-bench | S_TG at B={b} | {fmt(v)} |"
        for b, v in sorted(ceil["batched"].items(), key=lambda kv: int(kv[0]))
    ]
    lines += [
        "",
        "## Throughput: tok/s (ratio to the ceiling)",
        "",
        "Aggregate tokens/s of N concurrent requests (prefill included) against llama-bench "
        f"{ceil['tg_key']} for "
        "N=1 and llama-batched-bench S_TG at B=N otherwise.",
        "",
        "| system | sampling | " + " | ".join(f"N={n}" for n in levels) + " |",
        "|---|---|" + "---:|" * len(levels),
        "| ceiling | – | " + " | ".join(fmt(ceiling_at(ceil, n)) for n in levels) + " |",
    ]
    rows: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for row in summary["throughput"]:
        rows.setdefault((row["label"], row["sampling"]), {})[row["level"]] = row
    for (label, sampling), by_level in rows.items():
        cells = []
        for n in levels:
            row = by_level.get(n)
            short = " ⚠" if row and row["short_requests"] else ""
            cells.append("–" if row is None else f"{fmt(row['tps'])} ({times(row['ratio'])}){short}")
        lines.append(f"| {label} | {sampling} | " + " | ".join(cells) + " |")
    if any(row["short_requests"] for row in summary["throughput"]):
        lines += ["", "⚠: some requests ended before max_tokens (the system did not ignore end-of-sequence)."]

    lines += [
        "",
        f"## Time to first token: a ~{settings['prompt_tokens']}-token prompt",
        "",
        "One request at a time, greedy; ceiling = the prompt's tokens at llama-bench "
        f"{ceil['pp_key']} speed. Streaming systems: to the first streamed piece; the others: a one-token "
        "request. Load: start -> ready "
        "in the system's own process, with the benchmark's slots and context.",
        "",
        "| system | prompt tokens | TTFT ms | ceiling ms | ceiling ÷ TTFT | load s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in summary["first_token"]:
        counted = "" if row["prompt_tokens_counted"] else " (asked)"
        ceiling_ms = None if row["ceiling_s"] is None else row["ceiling_s"] * 1000
        lines.append(
            f"| {row['label']} | {row['prompt_tokens']:.0f}{counted} | {fmt(row['ttft_s'] * 1000)} | "
            f"{fmt(ceiling_ms)} | {times(row['ratio'])} | {fmt(row['load_s'], 2)} |"
        )

    lines += [
        "",
        "## Startup",
        "",
        "Each in a new Python process; load -> ready with the backend's defaults.",
        "",
        "| what | median | min–max |",
        "|---|---:|---:|",
    ]
    if summary["import_s"]:
        imp = summary["import_s"]
        lines.append(
            f"| import llcuda | {fmt(imp['median'] * 1000)} ms | {fmt(imp['min'] * 1000)}–{fmt(imp['max'] * 1000)} ms |"
        )
    for variant, load in summary["load_s"].items():
        lines.append(
            f"| load -> ready, {variant} (backend {load['backend']}) | {fmt(load['median'], 2)} s | "
            f"{fmt(load['min'], 2)}–{fmt(load['max'], 2)} s |"
        )

    turns = data["sections"].get("chat-turns") or {}
    if turns.get("rows"):
        reuse = _spread([r["ttft_reuse_s"] for r in turns["rows"]])
        fresh = _spread([r["ttft_fresh_s"] for r in turns["rows"]])
        first = turns["rows"][0]
        ratio = reuse["median"] / fresh["median"] if fresh["median"] else None
        lines += [
            "",
            f"## Prefix reuse: time to first token of a chat's turn {turns['turn']}",
            "",
            "The whole conversation is the prompt of each turn (in-process engine, greedy); with reuse the "
            "engine prefills only what the previous turn did not leave in the KV cache.",
            "",
            "| prompt tokens | reused | TTFT with reuse ms | TTFT without ms | ratio |",
            "|---:|---:|---:|---:|---:|",
            f"| {first['prompt_tokens']} | {first['reused_tokens']} | {fmt(reuse['median'] * 1000)} | "
            f"{fmt(fresh['median'] * 1000)} | {times(ratio)} |",
        ]

    if summary["not_run"] or summary["failed"]:
        lines += ["", "## Not measured", ""]
        lines += [f"- `{k}`: not run: {why}" for k, why in summary["not_run"].items()]
        lines += [f"- `{k}`: failed ({v['error']}); log: `{v['log']}`" for k, v in summary["failed"].items()]
    lines.append("")
    return "\n".join(lines)
