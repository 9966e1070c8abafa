"""Process checks shared by the tests that watch llama-server and rpc-server lifetimes."""

from __future__ import annotations

import os
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether any thread of ``pid`` still runs. A zombie holds no port, memory or GPU, but the leader
    of a multi-threaded process turns zombie before its other threads have exited."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for task in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X"):
            return True
    return False


def gone(pid: int, within: float = 10.0) -> bool:
    """Wait up to ``within`` seconds for ``pid`` to stop running; True if it did."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False
