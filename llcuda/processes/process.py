"""One child process, started and stopped the same way for every program llcuda runs.

:class:`ManagedProcess` starts a program from an argument list (never a shell) with its output
appended to a log file, waits for it with a readiness probe and a deadline, moves to another port
when an automatically chosen one was taken in the meantime, and stops it by escalating from
SIGTERM to SIGKILL. On Linux the child gets a parent-death signal, so it cannot outlive the Python
process even when that process is killed with SIGKILL. Subclasses say what to run
(:meth:`ManagedProcess.command`) and when it is ready (:meth:`ManagedProcess.probe`).
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from llcuda import config
from llcuda.errors import ServerStartError, ServerTimeoutError
from llcuda.processes import registry
from llcuda.system import binaries as bootstrap
from llcuda.system.binaries import Binaries
from llcuda.system.threads import leave_signals_to_the_main_thread, unblock_signals

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
READY_POLL_S = 0.05
LOG_TAIL_LINES = 40
PORT_RETRIES = 3
_PR_SET_PDEATHSIG = 1

_live: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


def _parent_death_hook(ignore_sigpipe: bool = False) -> Callable[[], None] | None:
    """A preexec function that asks Linux to SIGKILL the child when its parent dies.

    prctl is looked up here, in the parent: the child, between fork and exec, only calls it.
    With ``ignore_sigpipe`` the child also starts with SIGPIPE ignored (inherited across exec),
    so a write to a socket whose peer vanished fails with EPIPE instead of killing it.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl, set_signal = libc.prctl, libc.signal
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        unblock_signals()  # the spawner thread blocks them; the program must get its SIGTERM
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if ignore_sigpipe:
            set_signal(signal.SIGPIPE, ctypes.c_void_p(1))  # SIG_IGN

    return hook


class _Spawner:
    """Starts children from one long-lived thread.

    Linux delivers the parent-death signal when the *thread* that forked exits, so a child
    started from a short-lived worker thread would die with that thread. Forking from this
    daemon thread ties the child's life to the whole process instead.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, func: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="llcuda-spawner", daemon=True)
                self._thread.start()
        reply: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._jobs.put((func, reply))
        ok, value = reply.get()
        if ok:
            return value
        raise value

    def _loop(self) -> None:
        leave_signals_to_the_main_thread()
        while True:
            func, reply = self._jobs.get()
            try:
                reply.put((True, func()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                reply.put((False, exc))


_spawner = _Spawner()


def spawn_process(
    cmd: list[str], *, log_path: Path, env: dict[str, str], ignore_sigpipe: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (an argument list) with its output appended to ``log_path``.

    The child is forked from the long-lived spawner thread and gets the parent-death signal,
    so it cannot outlive this process. It runs in a session of its own: Ctrl-C in a terminal
    interrupts this process (which stops its children itself) without also stopping the child,
    so an interactive program can cancel one request and keep its server. Raises OSError if
    ``cmd[0]`` cannot be executed.
    """
    preexec = _parent_death_hook(ignore_sigpipe)
    log_file = log_path.open("ab")

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=preexec,  # noqa: PLW1509 - only prctl/signal, async-signal-safe
            close_fds=True,
            start_new_session=True,
        )

    try:
        return _spawner.run(spawn)
    finally:
        log_file.close()


def stop_process(process: subprocess.Popen[bytes], grace: float, name: str) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the process is gone."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("%s %d ignored SIGTERM for %.0f s; killing it", name, process.pid, grace)
        process.kill()
        process.wait()


def read_log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (reads at most its last 64 KiB); "" if unreadable."""
    if path is None:
        return ""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def new_log_path(prefix: str) -> Path:
    """A fresh, empty log file ``<home>/logs/<prefix>-<pid>-XXXX.log``."""
    logs = config.home_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{prefix}-{os.getpid()}-", suffix=".log", dir=logs)
    os.close(fd)
    return Path(name)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect_host(host: str) -> str:
    """The address to connect to for a server bound to ``host`` (a wildcard becomes loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


class ManagedProcess:
    """A child process with a log file, a port, a readiness probe and a stop that escalates.

    Subclasses set :attr:`name` and :attr:`bind_failure_markers` and implement :meth:`command`
    and :meth:`probe`; they may extend :meth:`environment`, :meth:`on_ready` and
    :meth:`explain_exit`. ``port=None`` picks a free port, and moves to another one (up to
    ``PORT_RETRIES`` times) when the child's log says the port was taken before it could bind.
    """

    name = "process"
    bind_failure_markers: tuple[str, ...] = ()
    stop_grace_s = STOP_GRACE_S
    ignore_sigpipe = False

    def __init__(
        self, *, host: str, port: int | None, binaries: Binaries | None = None, log_path: Path | None = None
    ) -> None:
        self.host = host
        self.requested_port = port
        self.binaries = binaries or bootstrap.find_binaries()
        self._log_path = log_path
        self._log_offset = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._lock = threading.Lock()
        self._record: registry.RunEntry | None = None

    # -- what subclasses define --------------------------------------------------------------
    def command(self, port: int) -> list[str]:
        """The argument list that starts the program on ``port``."""
        raise NotImplementedError

    def environment(self, port: int) -> dict[str, str]:
        """The child's environment (the binaries' library path set)."""
        return bootstrap.subprocess_env(self.binaries)

    def probe(self) -> bool:
        """Whether the started program is ready; called every ``READY_POLL_S`` until the deadline."""
        raise NotImplementedError

    def on_ready(self) -> None:
        """Called once the probe succeeded."""

    def explain_exit(self, code: int, tail: str) -> str:
        """The message for a child that exited before it was ready."""
        return f"{self.name} exited with code {code} before it was ready."

    def run_record(self) -> dict[str, Any]:
        """What :mod:`llcuda.processes.registry` records of the ready process besides pid, kind,
        host, port and log (e.g. ``url``, ``model``)."""
        return {"url": f"{connect_host(self.host)}:{self._port}"}

    # -- state -------------------------------------------------------------------------------
    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the process has ended, waiting up to ``timeout`` s; None if it still runs."""
        process = self._process
        if process is None:
            return None
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return read_log_tail(self._log_path, lines)

    def new_output(self, limit: int = 256 * 1024) -> str:
        """What this run of the program has written to its log (the file may hold earlier runs)."""
        if self._log_path is None:
            return ""
        try:
            with self._log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return fh.read(limit).decode("utf-8", errors="replace")
        except OSError:
            return ""

    # -- lifecycle ---------------------------------------------------------------------------
    def start_process(self, timeout: float | None = None) -> None:
        """Start the program and wait until :meth:`probe` says it is ready (or raise)."""
        deadline_s = config.server_start_timeout(timeout)
        with self._lock:
            if self.is_running():
                return
            attempts = 1 if self.requested_port is not None else PORT_RETRIES
            for attempt in range(1, attempts + 1):
                port = self.requested_port or free_port(self.host)
                try:
                    self._spawn(port)
                    self._wait_ready(deadline_s)
                    return
                except ServerStartError as exc:
                    self._kill()
                    bind_failed = any(m in exc.log_tail.lower() for m in self.bind_failure_markers)
                    if bind_failed and self.requested_port is not None:
                        raise ServerStartError(
                            f"port {port} on {self.host} is already in use; choose another port "
                            "or leave port unset to pick a free one.",
                            log_tail=exc.log_tail,
                        ) from None
                    if not bind_failed or attempt == attempts:
                        raise
                    log.info("port %d was taken before %s bound it; retrying", port, self.name)

    def _spawn(self, port: int) -> None:
        self._unregister()  # a record of an earlier run that ended by itself
        if self._log_path is None:
            self._log_path = new_log_path(self.name)
        cmd = self.command(port)
        env = self.environment(port)
        log.info("starting %s on %s:%d (log: %s)", self.name, self.host, port, self._log_path)
        log.debug("command: %s", cmd)
        self._log_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        try:
            self._process = spawn_process(cmd, log_path=self._log_path, env=env, ignore_sigpipe=self.ignore_sigpipe)
        except OSError as exc:
            raise ServerStartError(f"could not execute {cmd[0]}: {exc}") from exc
        self._port = port
        _live.add(self)

    def raise_if_exited(self) -> None:
        code = self.returncode()
        if code is not None:
            tail = self.log_tail()
            raise ServerStartError(self.explain_exit(code, tail), log_tail=tail)

    def _wait_ready(self, deadline_s: float) -> None:
        started = time.monotonic()
        while True:
            self.raise_if_exited()
            if self.probe():
                break
            if time.monotonic() - started > deadline_s:
                raise ServerTimeoutError(
                    f"{self.name} was not ready on {self.host}:{self._port} after {deadline_s:.0f} s; raise the "
                    "deadline with LLCUDA_SERVER_START_TIMEOUT or check the log.",
                    log_tail=self.log_tail(),
                )
            time.sleep(READY_POLL_S)
        log.info("%s ready on %s:%d in %.2f s", self.name, self.host, self._port, time.monotonic() - started)
        self.on_ready()
        self._register()

    def _register(self) -> None:
        """List the ready process for `llcuda ps`; a registry that cannot be written only logs."""
        process = self._process
        if process is None:
            return
        try:
            self._record = registry.register(
                process.pid,
                kind=self.name,
                host=self.host,
                port=self._port,
                log_path=self._log_path,
                **self.run_record(),
            )
        except OSError as exc:
            log.warning(
                "could not record %s %d in %s (`llcuda ps` will not list it): %s",
                self.name,
                process.pid,
                registry.run_dir(),
                exc,
            )

    def _unregister(self) -> None:
        if self._record is not None:
            registry.unregister(self._record)
            self._record = None

    def stop(self, grace: float | None = None) -> None:
        """Stop the process: SIGTERM, then SIGKILL after ``grace`` seconds."""
        with self._lock:
            if self._process is not None:
                stop_process(self._process, self.stop_grace_s if grace is None else grace, self.name)
            self._process = None
            self._unregister()
            _live.discard(self)

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None
        self._unregister()
        _live.discard(self)

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for process in list(_live):
        try:
            process.stop(grace=3.0)
        except Exception:  # noqa: BLE001 - interpreter is exiting
            pass
