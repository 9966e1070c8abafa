"""The servers llcuda started, listed in the cache folder so that ``llcuda ps`` and ``llcuda stop`` find them.

Each running process has one JSON file, written atomically once it is ready and removed when it stops::

    <home>/run/                     # home: LLCUDA_HOME, else $XDG_CACHE_HOME/llcuda, else ~/.cache/llcuda
    ├── 48213.json                  # {"pid": 48213, "kind": "llama-server", "port": 41877, "model": ..., ...}
    └── 48377.json                  # {"pid": 48377, "kind": "rpc-server", ...}

:class:`~llcuda.processes.process.ManagedProcess` registers every llama-server and rpc-server it
starts; ``llcuda serve`` registers its own process. A process that dies without unregistering
(SIGKILL, a crash, its parent killed) leaves its file behind: :func:`list_running` ignores and
deletes every entry whose pid no longer runs, or now belongs to another program (Linux: the
start time in ``/proc/<pid>/stat`` differs from the one recorded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from llcuda import config
from llcuda.errors import ConfigError, LlcudaError

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this many seconds
KILL_WAIT_S = 5.0  # how long to wait for a SIGKILLed process to disappear
POLL_S = 0.05
ID_LENGTH = 6


@dataclass(frozen=True)
class RunEntry:
    """One process llcuda started, as recorded in ``<home>/run/<pid>.json``."""

    pid: int
    kind: str  # "llama-server", "rpc-server", "serve"
    host: str
    port: int | None
    url: str | None = None  # where to reach it (an HTTP base URL, or host:port for rpc-server)
    model: str | None = None  # model path or name
    backend: str | None = None  # for `llcuda serve`: the engine backend ("server", "inprocess")
    started: float = 0.0  # Unix time the process started
    start_ticks: int | None = None  # /proc/<pid>/stat start time, in clock ticks after boot: tells pid reuse
    log_path: str | None = None
    parent_pid: int | None = None  # the process that started it (for `llcuda serve`: its own parent)

    @property
    def id(self) -> str:
        """A short id, stable for the life of the process, different for a later process with the same pid."""
        key = f"{self.pid}:{self.start_ticks if self.start_ticks is not None else round(self.started)}"
        return hashlib.sha1(key.encode()).hexdigest()[:ID_LENGTH]

    def uptime_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.started)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunEntry:
        known = {f.name for f in fields(cls)}
        entry = cls(**{k: v for k, v in data.items() if k in known})
        if not isinstance(entry.pid, int) or entry.pid <= 0 or not isinstance(entry.kind, str):
            raise ValueError(f"not a run entry: {data!r}")
        return entry


def run_dir() -> Path:
    """``<home>/run``: one file per running process llcuda started."""
    return config.home_dir() / "run"


# -- /proc -------------------------------------------------------------------------------------
def _stat_fields(pid: int, task: int | None = None) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3, the state, first); None if gone."""
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (``/proc/<pid>/stat`` field 22); None if unknown."""
    stat = _stat_fields(pid)
    return int(stat[19]) if stat is not None and len(stat) > 19 else None


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _start_time(ticks: int | None) -> float:
    """Unix time of a process start given in clock ticks after boot; now if unknown."""
    boot = _boot_time()
    if ticks is None or boot is None:
        return time.time()
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def is_running(entry: RunEntry) -> bool:
    """Whether the process ``entry`` describes still runs (not a zombie, not another program with its pid)."""
    stat = _stat_fields(entry.pid)
    if stat is None:
        if os.path.isdir("/proc/self"):
            return False
        try:  # no /proc: the pid exists, which is all that can be told
            os.kill(entry.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if entry.start_ticks is not None and len(stat) > 19 and int(stat[19]) != entry.start_ticks:
        return False  # the pid was reused
    if stat[0] not in ("Z", "X"):
        return True
    # The leader of a multi-threaded process turns zombie before its other threads have exited.
    try:
        tasks = os.listdir(f"/proc/{entry.pid}/task")
    except OSError:
        return False
    states = (_stat_fields(entry.pid, int(task)) for task in tasks)
    return any(stat is not None and stat[0] not in ("Z", "X") for stat in states)


# -- the registry ------------------------------------------------------------------------------
def register(
    pid: int,
    *,
    kind: str,
    host: str,
    port: int | None,
    url: str | None = None,
    model: str | Path | None = None,
    backend: str | None = None,
    log_path: str | Path | None = None,
    parent_pid: int | None = None,
) -> RunEntry:
    """Record the running process ``pid`` in ``<home>/run/<pid>.json`` (atomically) and return its entry.

    ``parent_pid`` defaults to this process for a child (``pid`` not ours) and to this process's
    parent when a process registers itself (``llcuda serve``). When the process was recorded already
    (``llcuda serve`` started by an engine is recorded by both), the fields given here replace those
    recorded and the others (None here) stay. Raises OSError if the file cannot be written; callers
    that must not fail on it catch that.
    """
    ticks = start_ticks(pid)
    if parent_pid is None:
        parent_pid = os.getppid() if pid == os.getpid() else os.getpid()
    entry = RunEntry(
        pid=pid, kind=kind, host=host, port=port, url=url, model=None if model is None else str(model),
        backend=backend, started=_start_time(ticks), start_ticks=ticks,
        log_path=None if log_path is None else str(log_path), parent_pid=parent_pid,
    )  # fmt: skip
    directory = run_dir()
    recorded = _read(directory / f"{pid}.json")
    if recorded is not None and recorded.start_ticks == ticks and ticks is not None:
        given = {k: v for k, v in asdict(entry).items() if v is not None}
        entry = RunEntry(**dict(asdict(recorded), **given))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{pid}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(entry), fh)
        os.replace(tmp, directory / f"{pid}.json")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.debug("registered %s %d in %s", kind, pid, directory)
    return entry


def unregister(entry: RunEntry | int) -> None:
    """Remove the record of a process that stopped. Given a :class:`RunEntry`, a newer record for a
    later process with the same pid is left alone. Never raises for a missing file."""
    pid = entry if isinstance(entry, int) else entry.pid
    path = run_dir() / f"{pid}.json"
    if isinstance(entry, RunEntry):
        current = _read(path)
        if current is not None and current.start_ticks != entry.start_ticks:
            return
    try:
        path.unlink()
    except OSError:
        pass


def _read(path: Path) -> RunEntry | None:
    try:
        return RunEntry.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def list_running() -> list[RunEntry]:
    """Every recorded process that still runs, oldest first. Records of processes that are gone
    (or whose pid now belongs to another program), and unreadable records, are deleted."""
    directory = run_dir()
    try:
        paths = sorted(p for p in directory.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        return []
    running = []
    for path in paths:
        entry = _read(path)
        if entry is not None and path.stem == str(entry.pid) and is_running(entry):
            running.append(entry)
            continue
        if entry is None and not path.exists():
            continue  # removed by its owner meanwhile
        log.debug("removing the stale record %s", path)
        try:
            path.unlink()
        except OSError:
            pass
    return sorted(running, key=lambda e: (e.started, e.pid))


def find(key: str) -> RunEntry:
    """The running entry whose id, or pid, is ``key``. Raises ConfigError if there is none."""
    entries = list_running()
    for entry in entries:
        if key in (entry.id, str(entry.pid)):
            return entry
    listed = ", ".join(f"{e.id} ({e.kind}, pid {e.pid})" for e in entries) or "none"
    raise ConfigError(f"no running llcuda server has the id or pid {key!r}; `llcuda ps` lists them (now: {listed}).")


def stop(key: str | RunEntry, grace: float = STOP_GRACE_S) -> RunEntry:
    """Stop one recorded process (by id, pid or entry): SIGTERM, then SIGKILL after ``grace`` seconds."""
    entry = key if isinstance(key, RunEntry) else find(key)
    stop_entries([entry], grace)
    return entry


def stop_all(grace: float = STOP_GRACE_S) -> list[RunEntry]:
    """Stop every recorded process that runs; returns those it stopped."""
    entries = list_running()
    stop_entries(entries, grace)
    return entries


def stop_entries(entries: Iterable[RunEntry], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to each, then SIGKILL to those still running after ``grace`` seconds; removes their records.

    Raises LlcudaError if a process belongs to another user (its record stays).
    """
    pending = [e for e in entries if is_running(e)]
    denied: list[RunEntry] = []
    for entry in pending:
        if not _signal(entry, signal.SIGTERM):
            denied.append(entry)
    pending = [e for e in pending if e not in denied]
    pending = _wait_gone(pending, grace)
    for entry in pending:
        log.warning("%s %d ignored SIGTERM for %.0f s; killing it", entry.kind, entry.pid, grace)
        _signal(entry, signal.SIGKILL)
    left = _wait_gone(pending, KILL_WAIT_S)
    for entry in (e for e in entries if e not in denied and e not in left):
        unregister(entry)
    if denied:
        raise LlcudaError(
            "not allowed to stop "
            + ", ".join(f"{e.kind} pid {e.pid}" for e in denied)
            + ": it belongs to another user; run `llcuda stop` as that user."
        )
    if left:
        raise LlcudaError(
            "still running after SIGKILL: "
            + ", ".join(f"{e.kind} pid {e.pid}" for e in left)
            + " (a process stuck in the kernel, e.g. in a GPU driver call); check `ps` and the driver."
        )


def _signal(entry: RunEntry, signum: int) -> bool:
    """Send ``signum``; False only when not permitted (a process that is gone already counts as done)."""
    if not is_running(entry):  # checked right before: never signal a pid that another program now has
        return True
    try:
        os.kill(entry.pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        return False
    return True


def _wait_gone(entries: list[RunEntry], within: float) -> list[RunEntry]:
    """Wait up to ``within`` seconds for ``entries`` to stop; returns those still running."""
    deadline = time.monotonic() + within
    while True:
        entries = [e for e in entries if is_running(e)]
        if not entries or time.monotonic() >= deadline:
            return entries
        time.sleep(POLL_S)
