"""One llama-server process: start, wait until ready, stop, read its log.

The child is started with an argument list (never a shell), its output goes to a log
file, readiness is probed on ``/health`` with a deadline, and stopping escalates from
SIGTERM to SIGKILL. On Linux the child gets a parent-death signal, so it cannot outlive
the Python process even when that process is killed with SIGKILL.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llcuda import config
from llcuda.errors import ConfigError, ServerStartError, ServerTimeoutError
from llcuda.system import binaries as bootstrap
from llcuda.system.binaries import Binaries

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
READY_POLL_S = 0.05
LOG_TAIL_LINES = 40
PORT_RETRIES = 3
_PR_SET_PDEATHSIG = 1
_BIND_FAILURE_MARKERS = ("couldn't bind", "address already in use", "failed to bind")



@dataclass(frozen=True)
class ServerSettings:
    """How to start one llama-server. See ``llama-server --help`` for each flag."""

    model_path: Path
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port is chosen
    ctx_size: int = 4096  # total context; each slot gets ctx_size / n_parallel
    gpu_layers: int = 99  # -ngl; 99 offloads every layer (ignored by a CPU build)
    n_parallel: int = 4  # server slots = concurrent requests decoded together
    flash_attn: str = "auto"  # on | off | auto
    batch_size: int | None = None
    ubatch_size: int | None = None
    threads: int | None = None
    embeddings: bool = False
    pooling: str | None = None
    api_key: str | None = None
    allow_unauthenticated: bool = False  # allow a non-loopback host without an api_key
    alias: str | None = None
    split_mode: str | None = None  # none | layer | row
    tensor_split: tuple[float, ...] = ()
    main_gpu: int | None = None
    rpc: tuple[str, ...] = ()
    backend_sampling: bool = False
    extra_args: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never show the API key
        shown = {k: v for k, v in self.__dict__.items() if k != "api_key"}
        shown["api_key"] = "***" if self.api_key else None
        return f"ServerSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


_live_servers: weakref.WeakSet[LlamaServer] = weakref.WeakSet()


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
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if ignore_sigpipe:
            set_signal(signal.SIGPIPE, ctypes.c_void_p(1))  # SIG_IGN

    return hook


class _Spawner:
    """Starts children from one long-lived thread.

    Linux delivers the parent-death signal when the *thread* that forked exits, so a
    server started from a short-lived worker thread would die with that thread. Forking
    from this daemon thread ties the child's life to the whole process instead.
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
    so it cannot outlive this process. Raises OSError if ``cmd[0]`` cannot be executed.
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


def build_command(server_bin: Path, settings: ServerSettings, port: int) -> list[str]:
    """The llama-server argument list for ``settings``."""
    s = settings
    cmd = [
        str(server_bin),
        "--model", str(s.model_path),
        "--host", s.host,
        "--port", str(port),
        "--ctx-size", str(s.ctx_size),
        "--n-gpu-layers", str(s.gpu_layers),
        "--parallel", str(s.n_parallel),
        "--flash-attn", s.flash_attn,
        "--metrics",
        "--no-webui",
        "--cors-origins", "localhost",  # llama-server's default lets any web page read the answers
    ]  # fmt: skip
    if s.threads is not None:
        cmd += ["--threads", str(s.threads)]
    if s.batch_size is not None:
        cmd += ["--batch-size", str(s.batch_size)]
    if s.ubatch_size is not None:
        cmd += ["--ubatch-size", str(s.ubatch_size)]
    if s.embeddings:
        cmd += ["--embeddings"]
    if s.pooling:
        cmd += ["--pooling", s.pooling]
    if s.alias:
        cmd += ["--alias", s.alias]
    if s.split_mode:
        cmd += ["--split-mode", s.split_mode]
    if s.tensor_split:
        cmd += ["--tensor-split", ",".join(f"{x:g}" for x in s.tensor_split)]
    if s.main_gpu is not None:
        cmd += ["--main-gpu", str(s.main_gpu)]
    if s.rpc:
        cmd += ["--rpc", ",".join(s.rpc)]
    if s.backend_sampling:
        cmd += ["--backend-sampling"]
    cmd += list(s.extra_args)
    return cmd


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate(settings: ServerSettings) -> None:
    if not is_loopback(settings.host) and not settings.api_key and not settings.allow_unauthenticated:
        raise ConfigError(
            f"refusing to listen on {settings.host or 'every address'!r} without an API key: anyone who can reach "
            "it could use the model. Pass api_key= (or set LLCUDA_API_KEY), keep the default host 127.0.0.1, "
            "or pass allow_unauthenticated=True if you really mean it."
        )
    if settings.n_parallel < 1 or settings.n_parallel > 512:
        raise ConfigError(f"n_parallel={settings.n_parallel} must be between 1 and 512.")
    if settings.ctx_size < 16 or settings.ctx_size > 1 << 22:
        raise ConfigError(f"ctx_size={settings.ctx_size} must be between 16 and {1 << 22}.")
    if settings.ctx_size // settings.n_parallel < 16:
        raise ConfigError(
            f"ctx_size={settings.ctx_size} split over n_parallel={settings.n_parallel} slots leaves "
            f"under 16 tokens per slot; raise ctx_size or lower n_parallel."
        )
    if settings.flash_attn not in ("on", "off", "auto"):
        raise ConfigError(f"flash_attn={settings.flash_attn!r} must be 'on', 'off' or 'auto'.")
    if settings.port is not None and not 0 < settings.port < 65536:
        raise ConfigError(f"port={settings.port} must be between 1 and 65535.")
    for name in ("threads", "batch_size", "ubatch_size"):
        value = getattr(settings, name)
        if value is not None and not 1 <= value <= 1 << 20:
            raise ConfigError(f"{name}={value} must be a positive number (or None for llama-server's default).")


class LlamaServer:
    """A llama-server child process. Use :meth:`start`, then :attr:`url`; :meth:`stop` when done."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        binaries: Binaries | None = None,
        log_path: Path | None = None,
    ) -> None:
        _validate(settings)
        self.settings = settings
        self.binaries = binaries or bootstrap.find_binaries()
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._lock = threading.Lock()

    # -- state -------------------------------------------------------------------------------
    @property
    def port(self) -> int | None:
        return self._port

    @property
    def url(self) -> str:
        if self._port is None:
            raise ServerStartError("the server has not been started; call start() first.")
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

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

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> str:
        """Start the process and wait until ``/health`` answers 200; return the base URL."""
        deadline_s = config.server_start_timeout(timeout)
        with self._lock:
            if self.is_running():
                return self.url
            attempts = 1 if self.settings.port is not None else PORT_RETRIES
            for attempt in range(1, attempts + 1):
                port = self.settings.port or free_port(self.settings.host)
                try:
                    self._spawn(port)
                    self._wait_ready(deadline_s)
                    return self.url
                except ServerStartError as exc:
                    self._kill()
                    bind_failed = any(m in exc.log_tail.lower() for m in _BIND_FAILURE_MARKERS)
                    if bind_failed and self.settings.port is not None:
                        raise ServerStartError(
                            f"port {port} on {self.settings.host} is already in use; choose another port "
                            "or leave port unset to pick a free one.",
                            log_tail=exc.log_tail,
                        ) from None
                    if not bind_failed or attempt == attempts:
                        raise
                    log.info("port %d was taken before llama-server bound it; retrying", port)
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, port: int) -> None:
        if self._log_path is None:
            self._log_path = new_log_path("llama-server")
        cmd = build_command(self.binaries.executable(bootstrap.SERVER), self.settings, port)
        env = bootstrap.subprocess_env(self.binaries)
        log.info("starting llama-server on %s:%d (log: %s)", self.settings.host, port, self._log_path)
        log.debug("command: %s", [a if a != self.settings.api_key else "***" for a in cmd])
        if self.settings.api_key:  # the environment (owner-only), never argv (/proc/PID/cmdline is world-readable)
            env["LLAMA_API_KEY"] = self.settings.api_key
        try:
            self._process = spawn_process(cmd, log_path=self._log_path, env=env)
        except OSError as exc:
            raise ServerStartError(f"could not execute {cmd[0]}: {exc}") from exc
        self._port = port
        _live_servers.add(self)

    def _wait_ready(self, deadline_s: float) -> None:
        import requests

        started = time.monotonic()
        url = f"{self.url}/health"
        with requests.Session() as session:
            session.trust_env = False  # loopback: never through a proxy
            while True:
                code = self.returncode()
                if code is not None:
                    raise ServerStartError(
                        f"llama-server exited with code {code} before it was ready "
                        f"(model: {self.settings.model_path}).",
                        log_tail=self.log_tail(),
                    )
                try:
                    response = session.get(url, timeout=2.0)
                    if response.status_code == 200:
                        log.info("llama-server ready in %.2f s", time.monotonic() - started)
                        return
                except requests.RequestException:
                    pass
                if time.monotonic() - started > deadline_s:
                    raise ServerTimeoutError(
                        f"llama-server was not ready after {deadline_s:.0f} s; raise the deadline with "
                        "LLCUDA_SERVER_START_TIMEOUT or check the log.",
                        log_tail=self.log_tail(),
                    )
                time.sleep(READY_POLL_S)

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``grace`` seconds."""
        with self._lock:
            process = self._process
            if process is None:
                return
            stop_process(process, grace, "llama-server")
            self._process = None
            _live_servers.discard(self)

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None
        _live_servers.discard(self)

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running pid={self.pid} url={self.url}" if self.is_running() else "stopped"
        return f"<LlamaServer {self.settings.model_path.name} {state}>"


@atexit.register
def _stop_all() -> None:
    for server in list(_live_servers):
        try:
            server.stop(grace=3.0)
        except Exception:  # noqa: BLE001 - interpreter is exiting
            pass
