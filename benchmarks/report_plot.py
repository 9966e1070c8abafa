"""report.py's plot: aggregate tokens/s against concurrent requests, one line per system and call."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from report import label


def plot(parts: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    xs_all: set[int] = set()
    for c in parts:
        tag = f" ({c['id']})" if len(parts) > 1 else ""
        bb = c["ceil"]["bb"]
        if bb:
            xs = [int(k) for k in bb]
            xs_all.update(xs)
            ax.plot(
                xs, list(bb.values()), "k--", marker="s", label=f"llama-batched-bench S_TG (ceiling){tag}"
            )
        for name, v in c["systems"].items():
            cc = v.get("concurrency")
            if cc:
                ks = sorted(cc, key=int)
                xs_all.update(int(k) for k in ks)
                ax.plot([int(k) for k in ks], [cc[k]["tps"] for k in ks], marker="o", label=label(name) + tag)
    if not xs_all:
        plt.close(fig)
        return
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(xs_all), [str(x) for x in sorted(xs_all)])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("aggregate decode tokens/s")
    ax.set_title("\n".join(textwrap.wrap(title, 110)), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
