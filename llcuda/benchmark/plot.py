"""The run's plot: aggregate tokens/s against concurrent requests, one line per system and sampling preset."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

from llcuda.benchmark.report import ceiling_at

log = logging.getLogger(__name__)


def write_plot(data: dict[str, Any], path: Path) -> Path | None:
    """Write the PNG; None where matplotlib is not installed (``pip install 'llcuda[bench]'``) or nothing
    was measured."""
    try:
        import matplotlib
    except ImportError:
        log.debug("matplotlib is not installed: no plot")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = data["summary"]
    ceil = summary["ceilings"]
    lines: dict[str, dict[int, float]] = {}
    for row in summary["throughput"]:
        lines.setdefault(f"{row['label']}, {row['sampling']}", {})[row["level"]] = row["tps"]
    ceiling: dict[int, float] = {}
    for n in data["settings"]["concurrency"]:
        value = ceiling_at(ceil, n)
        if value:
            ceiling[n] = value
    if not lines and not ceiling:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    if ceiling:
        xs = sorted(ceiling)
        ax.plot(
            xs,
            [ceiling[n] for n in xs],
            "k--",
            marker="s",
            label=f"ceiling: llama-bench {ceil['tg_key']} (N=1), llama-batched-bench S_TG",
        )
    for label, points in lines.items():
        xs = sorted(points)
        ax.plot(xs, [points[n] for n in xs], marker="o", label=label)
    levels = sorted({n for points in lines.values() for n in points} | set(ceiling))
    if len(levels) > 1:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    ax.set_xticks(levels, [str(n) for n in levels])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("aggregate tokens/s")
    env = data["environment"]
    title = f"llcuda benchmark: {env['model']['spec']} on {env['device']} ({env['date'][:10]})"
    ax.set_title("\n".join(textwrap.wrap(title, 100)), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
