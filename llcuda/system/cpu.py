"""The CPU: how many threads llama.cpp's CPU work should use by default."""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    """Physical cores this process may run on: one per set of SMT siblings (as llama.cpp's own tools count
    them), within the process's CPU affinity; at least 1.

    libllama's own default is 4 threads whatever the machine; on a 2-core machine that oversubscribes the
    cores, and on a large one it leaves most of them idle.
    """
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores: set[str] = set()
    for cpu in allowed:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))
