"""llama.cpp RPC workers: start ``rpc-server`` processes and check the endpoints a model uses.

A worker exposes its host's GPUs (or its CPU, when it has none) to a llama-server on
another host, which then places layers on them as if they were local devices:

    worker = RpcWorker(port=50052).start()            # on the host with the spare GPU
    engine.load_model("model.gguf", rpc=["10.0.0.2:50052"])  # on the main host

Security: rpc-server has no authentication and no encryption, and whoever can connect may
allocate memory, read and write tensors and run graphs on the worker (llama.cpp treats its
memory-safety bugs as known issues). :class:`RpcWorker` therefore binds 127.0.0.1 by default
and refuses any other address unless ``allow_remote=True``.

Limits of rpc-server itself: it binds IPv4 only; it serves one client at a time (a second
llama-server that connects waits until the first one disconnects); the worker's llama.cpp
must speak the same RPC protocol version as the main host's.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llcuda.errors import BinaryNotFoundError, ConfigError, ServerStartError
from llcuda.processes.process import READY_POLL_S, ManagedProcess, connect_host, is_loopback
from llcuda.system import binaries as bootstrap
from llcuda.system.binaries import Binaries

log = logging.getLogger(__name__)

DEFAULT_PORT = 50052  # rpc-server's own default
RPC_SERVER_NAMES = ("rpc-server", "ggml-rpc-server")  # llcuda's name, upstream's install name
CONNECT_TIMEOUT_S = 3.0
ACCEPT_WAIT_S = 2.0  # after a successful probe, how long to wait for this rpc-server's log to show the accept
STOP_GRACE_S = 5.0
MAX_DEVICES = 15  # llama.cpp refuses 16 or more --tensor-split entries (llama_max_devices() == 16)
_BIND_FAILURE = "Failed to create server socket"
_DEVICE_LINE = re.compile(r"^\s+(\S+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*$")
# What llama-server's RPC client aborts with when a worker closed the connection mid-command.
WORKER_CRASH_MARKER = "Remote RPC server crashed"
WORKER_LOG_LINES = 15
CRASH_GRACE_S = 1.0  # an aborting worker is reaped within this; one that lives on is not waited for
_FATTN_ABORT = re.compile(r"ggml-cuda/fattn[\w.-]*:\d+: fatal error")
# Workers started by this process, by endpoint, so that a llama-server error can quote their logs.
_LOCAL_WORKERS: weakref.WeakValueDictionary[str, RpcWorker] = weakref.WeakValueDictionary()
_BUFFER_LINE = re.compile(r"\s(\S+?) +(model|KV|compute|output) buffer size =\s+([0-9.]+) MiB")

SECURITY_WARNING = (
    "rpc-server has no authentication and no encryption: anyone who can reach {where} can use this "
    "machine's devices, read and write their memory, and may exploit known rpc-server bugs. Only expose it "
    "on a private network you trust, or reach it through an SSH tunnel or VPN."
)


@dataclass(frozen=True)
class WorkerDevice:
    """One device a worker exposes, as rpc-server reports it at start."""

    name: str  # e.g. "CUDA0" or "CPU"
    description: str
    memory_total_mib: int
    memory_free_mib: int


# -- endpoints ---------------------------------------------------------------------------------
def parse_endpoints(rpc: str | Iterable[str] | None) -> tuple[str, ...]:
    """Check ``rpc`` ("host:port" strings, or one comma-separated string) and return them normalized.

    llama.cpp's RPC client takes IPv4 addresses or host names, not IPv6. Listing a worker twice is
    refused: a worker serves one connection at a time, so the second one would wait forever.
    """
    if rpc is None:
        return ()
    items = rpc.split(",") if isinstance(rpc, str) else list(rpc)
    endpoints: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"rpc entries must be 'host:port' strings, got {item!r}.")
        text = item.strip()
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host or "[" in host or not port_text.isdigit():
            raise ConfigError(
                f"rpc worker {text!r} is not 'host:port' (an IPv4 address or host name, e.g. 192.168.1.20:50052; "
                "llama.cpp's RPC client does not support IPv6)."
            )
        port = int(port_text)
        if not 0 < port < 65536:
            raise ConfigError(f"rpc worker {text!r}: port must be between 1 and 65535.")
        endpoint = f"{host}:{port}"
        if endpoint in endpoints:
            raise ConfigError(
                f"rpc worker {endpoint} is listed twice; a worker serves one connection at a time, so list each "
                "once (to use several GPUs of one worker, start it without --device: it exposes them all)."
            )
        endpoints.append(endpoint)
    return tuple(endpoints)


def probe(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None if a TCP connection to ``endpoint`` succeeds, else why it failed.

    A worker that is busy with another client still accepts the connection (the kernel queues it),
    so this proves the worker is up, not that it is free.
    """
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def check_workers(endpoints: Sequence[str], timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ServerStartError naming every worker that does not accept a TCP connection."""
    failures = [(ep, why) for ep in endpoints if (why := probe(ep, timeout)) is not None]
    if failures:
        listed = "; ".join(f"{ep} ({why})" for ep, why in failures)
        raise ServerStartError(
            f"RPC worker(s) not reachable: {listed}. Start one on each of those hosts with "
            "`llcuda rpc-worker --host ADDRESS --port PORT` (add --allow-remote for a non-loopback address), "
            "check the firewall, or remove it from rpc=[...]."
        )


def buffer_placement(log_text: str) -> dict[str, dict[str, float]]:
    """Where llama-server put its buffers, from its log: ``{device: {"model"|"KV"|"compute"|"output": MiB}}``.

    Devices are named as llama.cpp logs them: ``CUDA0``, ``CPU_Mapped``, and ``RPC0[host:port]`` for a
    worker's devices. The lines are logged at verbosity 4: start llama-server with
    ``extra_args=["--log-verbosity", "4"]``.
    """
    placement: dict[str, dict[str, float]] = {}
    for line in log_text.splitlines():
        match = _BUFFER_LINE.search(line)
        if match:
            device, kind, mib = match.groups()
            entry = placement.setdefault(device, {})
            entry[kind] = entry.get(kind, 0.0) + float(mib)
    return placement


def find_rpc_server(binaries: Binaries | None = None) -> Path:
    """The rpc-server executable next to llama-server (either name), else on PATH."""
    binaries = binaries or bootstrap.find_binaries()
    for name in RPC_SERVER_NAMES:
        try:
            return bootstrap.tool(name, binaries)
        except BinaryNotFoundError:
            continue
    raise BinaryNotFoundError(
        f"rpc-server is not in {binaries.bin_dir} nor on PATH: these binaries were built without GGML_RPC=ON. "
        "Install llcuda's own binaries (the conda package and the wheel ship rpc-server) or rebuild llama.cpp "
        "with -DGGML_RPC=ON."
    )


# -- the worker process ------------------------------------------------------------------------
class RpcWorker(ManagedProcess):
    """An ``rpc-server`` child process that lends this host's devices to llama-servers elsewhere.

    Args:
        host: IPv4 address to bind (rpc-server binds IPv4 only). Default 127.0.0.1; any
            non-loopback address needs ``allow_remote=True`` and logs a security warning.
        port: TCP port; None picks a free one (the CLI uses rpc-server's default, 50052).
        devices: device names to expose (e.g. ``["CUDA0"]``); default: every GPU, else the CPU.
            ``CUDA_VISIBLE_DEVICES`` also applies.
        threads: CPU threads for a CPU device (default: rpc-server's, half the cores).
        cache: keep a local cache of large tensors so a model loads faster the next time;
            stored in ``cache_dir`` (sets LLAMA_CACHE) or ``~/.cache/llama.cpp/rpc``.
        allow_remote: permit a non-loopback ``host``. Read the module docstring first.
    """

    name = "rpc-server"
    bind_failure_markers = (_BIND_FAILURE.lower(),)
    stop_grace_s = STOP_GRACE_S
    # rpc-server writes to clients that may have gone away (a llama-server killed while it waited in the
    # accept queue); with SIGPIPE's default action that would kill the worker.
    ignore_sigpipe = True

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        devices: Sequence[str] = (),
        threads: int | None = None,
        cache: bool = False,
        cache_dir: Path | None = None,
        allow_remote: bool = False,
        binaries: Binaries | None = None,
        log_path: Path | None = None,
    ) -> None:
        host = _check_bind_host(host, allow_remote)
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise ConfigError(f"port={port!r} must be between 1 and 65535 (or None for a free port).")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads={threads!r} must be a positive int.")
        names = [d.strip() for item in devices for d in item.split(",") if d.strip()]
        if any(not re.fullmatch(r"[A-Za-z0-9_.\-]+", d) for d in names):
            raise ConfigError(f"devices={list(devices)!r}: give device names such as CUDA0 or CPU.")
        self.device_names = tuple(names)
        self.threads = threads
        self.cache = cache or cache_dir is not None
        self.cache_dir = cache_dir
        super().__init__(host=host, port=port, binaries=binaries, log_path=log_path)
        self._devices: tuple[WorkerDevice, ...] = ()

    @property
    def endpoint(self) -> str:
        """``host:port`` for ``load_model(rpc=[...])`` on this host (0.0.0.0 becomes 127.0.0.1)."""
        if self._port is None:
            raise ServerStartError("the worker has not been started; call start() first.")
        return f"{connect_host(self.host)}:{self._port}"

    @property
    def devices(self) -> tuple[WorkerDevice, ...]:
        """The devices rpc-server reported at start."""
        return self._devices

    def command(self, port: int) -> list[str]:
        cmd = [str(find_rpc_server(self.binaries)), "--host", self.host, "--port", str(port)]
        if self.device_names:
            cmd += ["--device", ",".join(self.device_names)]
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        if self.cache:
            cmd += ["--cache"]
        return cmd

    def environment(self, port: int) -> dict[str, str]:
        env = super().environment(port)
        if self.cache_dir is not None:
            env["LLAMA_CACHE"] = str(self.cache_dir)  # rpc-server keeps its cache in $LLAMA_CACHE/rpc
        if not is_loopback(self.host):
            log.warning("%s", SECURITY_WARNING.format(where=f"{_where(self.host)}, port {port}"))
        self._devices = ()
        return env

    def probe(self) -> bool:
        """Ready when a TCP connection succeeds *and* this process's log shows it accepted one.

        The second condition matters: another process already listening on the port would accept the
        probe while this rpc-server is about to exit with "Failed to create server socket".
        """
        return probe(f"{connect_host(self.host)}:{self._port}", timeout=1.0) is None and self._accepted_within(
            ACCEPT_WAIT_S
        )

    def on_ready(self) -> None:
        self._devices = parse_devices(self.new_output())
        _LOCAL_WORKERS[self.endpoint] = self
        log.info("rpc-server devices: %s", ", ".join(d.name for d in self._devices) or "?")

    def _accepted_within(self, seconds: float) -> bool:
        # rpc-server's stdout is block-buffered in a file; it is flushed right after each accept.
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if "Accepted client connection" in self.new_output():
                return True
            self.raise_if_exited()
            time.sleep(READY_POLL_S)
        return False

    def explain_exit(self, code: int, tail: str) -> str:
        return f"rpc-server exited with code {code} before it was ready: {_explain_exit(tail, self.host, self._port)}"

    def start(self, timeout: float | None = None) -> RpcWorker:
        """Start rpc-server and wait until it accepts TCP connections; returns self."""
        self.start_process(timeout)
        return self

    def __enter__(self) -> RpcWorker:
        return self.start()

    def __repr__(self) -> str:
        state = f"running pid={self.pid} at {self.host}:{self._port}" if self.is_running() else "stopped"
        return f"<RpcWorker {state}>"


def explain_worker_crash(endpoints: Sequence[str], server_log_tail: str) -> str:
    """Why llama-server lost its RPC worker(s), for its error message; "" when its log shows no such loss.

    Quotes the log of each worker this process started (where the real cause is: llama-server only
    sees a closed connection); for a worker started elsewhere, says where to look.
    """
    if WORKER_CRASH_MARKER not in server_log_tail:
        return ""
    parts = []
    for endpoint in endpoints:
        worker = _LOCAL_WORKERS.get(endpoint)
        if worker is None:
            parts.append(f"rpc-server at {endpoint} closed the connection; its own log, on that host, says why.")
            continue
        if worker.pid is None:
            state = "stopped"
        else:
            code = worker.wait_exit(CRASH_GRACE_S)
            state = f"exited with code {code}" if code is not None else "still running"
        tail = worker.log_tail(WORKER_LOG_LINES)
        hint = ""
        if _FATTN_ABORT.search(tail):
            hint = (
                " Its CUDA backend has no flash-attention kernel for what it was sent (llama.cpp's RPC client"
                " reports every operation as supported); load the model with flash_attn='off'."
            )
        parts.append(
            f"rpc-server at {endpoint} ({state}).{hint}\n--- last lines of the rpc-server log "
            f"({worker.log_path}) ---\n{tail}"
        )
    return "\n".join(parts)


# (K head size, V head size) pairs for which CUDA's flash attention has kernels whatever the GQA ratio
# (ggml-cuda's fattn.cu; 192/128, 320/256, 512 and 576/512 also depend on the ratio, so they count as not).
CUDA_FLASH_ATTN_HEAD_SIZES = frozenset((d, d) for d in (40, 64, 72, 80, 96, 112, 128, 256))


def flash_attn_over_rpc(requested: str, head_sizes: tuple[int, int] | None) -> str:
    """The ``--flash-attn`` value for a llama-server with RPC workers.

    llama.cpp resolves "auto" by asking each device whether it supports the flash-attention operation,
    and its RPC client answers yes for every operation: a worker whose CUDA backend has no kernel for the
    model's head size then aborts at the first graph. So "auto" becomes "on" only for head sizes that
    CUDA's kernels cover, else "off" (also when they are unknown). "on" and "off" are kept.
    """
    if requested != "auto":
        return requested
    if head_sizes in CUDA_FLASH_ATTN_HEAD_SIZES:
        return "on"
    log.info("flash attention off: RPC workers cannot report support for attention head sizes %s", head_sizes)
    return "off"


def parse_devices(log_text: str) -> tuple[WorkerDevice, ...]:
    """The ``Devices:`` block rpc-server prints at start."""
    devices: list[WorkerDevice] = []
    in_block = False
    for line in log_text.splitlines():
        if line.strip() == "Devices:":
            in_block, devices = True, []
            continue
        if in_block:
            match = _DEVICE_LINE.match(line)
            if not match:
                in_block = False
                continue
            name, description, total, free = match.groups()
            devices.append(WorkerDevice(name, description, int(total), int(free)))
    return tuple(devices)


def _check_bind_host(host: str, allow_remote: bool) -> str:
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ConfigError(
            f"host={host!r}: rpc-server binds IPv4 addresses only; give 127.0.0.1 (default), 0.0.0.0 or one of "
            "this host's IPv4 addresses."
        ) from None
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(
            f"refusing to bind rpc-server to {host}: "
            + SECURITY_WARNING.format(where=_where(host))
            + " If this network is private and trusted, pass allow_remote=True (CLI: --allow-remote)."
        )
    return host


def _where(host: str) -> str:
    return "any address of this host (0.0.0.0)" if host == "0.0.0.0" else host


def _explain_exit(tail: str, host: str, port: int | None) -> str:
    if _BIND_FAILURE in tail:
        return f"it could not listen on {host}:{port} (port in use, or not an address of this host)."
    if "unknown device" in tail:
        return "a requested device does not exist; the log lists the available ones."
    if "No devices found" in tail:
        return "it found no device to expose."
    return "see the log below."
