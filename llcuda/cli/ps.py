"""``llcuda ps`` and ``llcuda stop``: the servers llcuda started, from :mod:`llcuda.processes.registry`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from llcuda.processes import registry
from llcuda.processes.registry import RunEntry

COLUMNS = ("ID", "PID", "KIND", "MODEL", "URL", "UPTIME", "GPU MEM")


def add_parsers(sub: Any) -> None:
    """Add the ``ps`` and ``stop`` commands to ``sub`` (argparse subparsers)."""
    p = sub.add_parser(
        "ps",
        help="list the servers llcuda started (llama-server, rpc-server, llcuda serve)",
        description="List the running processes llcuda started, from any Python process or "
        "shell of this user (recorded under the cache folder's run/).",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser(
        "stop",
        help="stop servers llcuda started (SIGTERM, then SIGKILL)",
        description="Stop processes `llcuda ps` lists: SIGTERM, then SIGKILL after the grace "
        "period. An engine whose server was stopped this way starts a new one on its "
        "next request; stop the program that owns it (parent_pid in --json) to end both.",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="an ID or PID from `llcuda ps` (several allowed)")
    p.add_argument("--all", action="store_true", help="stop every process `llcuda ps` lists")
    p.add_argument(
        "--grace",
        type=float,
        default=registry.STOP_GRACE_S,
        help=f"seconds to wait after SIGTERM before SIGKILL (default {registry.STOP_GRACE_S:g})",
    )
    p.set_defaults(func=cmd_stop)


def _gpu_memory() -> dict[int, int]:
    from llcuda.system import gpu

    return gpu.process_memory_mib()


def rows(entries: list[RunEntry], gpu_mib: dict[int, int], now: float) -> list[dict[str, Any]]:
    """One JSON-ready dict per entry: the record, ``uptime_s`` and ``gpu_memory_mib`` (None if unknown)."""
    return [dict(e.as_dict(), uptime_s=round(e.uptime_s(now), 1), gpu_memory_mib=gpu_mib.get(e.pid)) for e in entries]


def format_uptime(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h07m``, ``2d04h``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(data: list[dict[str, Any]]) -> list[str]:
    """The lines of the ``llcuda ps`` table."""
    cells = [COLUMNS]
    for row in data:
        model = row.get("model")
        cells.append(
            (
                row["id"],
                str(row["pid"]),
                row["kind"],
                Path(model).name if model else "-",
                row.get("url") or "-",
                format_uptime(row["uptime_s"]),
                f"{row['gpu_memory_mib']} MiB" if row.get("gpu_memory_mib") is not None else "-",
            )
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]


def cmd_ps(args: argparse.Namespace) -> int:
    entries = registry.list_running()
    data = rows(entries, _gpu_memory() if entries else {}, time.time())
    if args.json:
        print(json.dumps(data, indent=2))
    elif not data:
        print("no servers started by llcuda are running")
    else:
        for line in table(data):
            print(line)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from llcuda.errors import ConfigError

    if args.all == bool(args.ids):
        raise ConfigError("give the IDs to stop (`llcuda ps` lists them), or --all to stop every one.")
    entries = registry.list_running() if args.all else [registry.find(key) for key in args.ids]
    registry.stop_entries(entries, args.grace)
    for entry in entries:
        print(f"stopped {entry.kind} {entry.id} (pid {entry.pid})")
    if args.all and not entries:
        print("no servers started by llcuda are running")
    return 0
