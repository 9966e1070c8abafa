#!/usr/bin/env python3
"""In-process engine variants at 1-64 concurrent requests: tok/s and where each decode step's time goes.

    python benchmarks/diag_concurrency.py model.gguf out.json   (LLCUDA_BIN_DIR: the build's bin/)

One JSON line per (config, level); report.py --diag turns the file into a table.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from llcuda.fastpath import InProcessEngine

MODEL, OUT = sys.argv[1], sys.argv[2]
BASE = "Write a long and detailed story about a lighthouse keeper who finds an old map in the attic."
rows = []


def wave(eng, level, same_prompt, n=64):
    prompts = [BASE if same_prompt else f"Story {i}. {BASE}" for i in range(level)]
    eng.reset_stats()
    t = time.perf_counter()
    rs = eng.batch_infer(prompts, max_tokens=n, ignore_eos=True)
    wall = time.perf_counter() - t
    s = eng.stats
    return {
        "level": level,
        "tps": sum(r.tokens_generated for r in rs) / wall,
        "steps": s["steps"],
        "us_decode_call": s["decode_call_s"] / s["steps"] * 1e6,
        "us_wait": s["wait_s"] / s["steps"] * 1e6,
        "us_host": s["host_s"] / s["steps"] * 1e6,
    }


for name, kw, same, env in [
    ("np64", {"n_parallel": 64}, False, {}),
    ("np64-same-prompt", {"n_parallel": 64}, True, {}),
    ("np64-kvu", {"n_parallel": 64, "kv_unified": True}, False, {}),
    ("np16", {"n_parallel": 16}, False, {}),
    ("np64-threads1", {"n_parallel": 64, "threads": 1}, False, {}),
    ("np64-ub2048", {"n_parallel": 64, "ubatch_size": 2048}, False, {}),
]:
    t0 = time.perf_counter()
    eng = InProcessEngine().load_model(MODEL, ctx_size=kw["n_parallel"] * 256, flash_attn="on", **kw)
    load = time.perf_counter() - t0
    for level in (1, 4, 16, 64):
        if level > kw["n_parallel"]:
            continue
        wave(eng, level, same, 16)  # warm-up
        r = wave(eng, level, same)
        r.update(config=name, load_s=load)
        rows.append(r)
        print(json.dumps(r), flush=True)
    eng.unload()
    with open(OUT, "w") as fh:
        json.dump(rows, fh, indent=1)
