"""llama.cpp's ``llama-server`` as a child process: its settings, its command line, its readiness.

The lifecycle (log file, parent-death signal, port retry, stop) is :class:`ManagedProcess`'s;
this module adds what is llama-server's own: :class:`ServerSettings` and their checks, the
argument list, the ``/health`` probe and the API key passed through the environment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llcuda.errors import ConfigError, ServerStartError
from llcuda.options import LoadOptions
from llcuda.processes import rpc_worker
from llcuda.processes.process import ManagedProcess, connect_host, is_loopback
from llcuda.system import binaries as bootstrap
from llcuda.system.binaries import Binaries

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)
_LOAD = LoadOptions()
SERVER_LOAD_MODES = {"auto": "auto", "none": "none", "mmap": "mmap", "direct_io": "dio"}  # llama-server's words


@dataclass(frozen=True)
class ServerSettings:
    """How to start one llama-server: the load options (defaults: :class:`LoadOptions`'s) and the server's own.

    See ``llama-server --help`` for each flag. ``ctx_size`` None lets llama-server use the model's context.
    """

    model_path: Path
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port is chosen
    ctx_size: int | None = _LOAD.ctx_size
    gpu_layers: int = _LOAD.gpu_layers
    n_parallel: int = _LOAD.n_parallel
    kv_unified: bool = _LOAD.kv_unified
    flash_attn: str = _LOAD.flash_attn
    batch_size: int | None = _LOAD.batch_size
    ubatch_size: int | None = _LOAD.ubatch_size
    threads: int | None = _LOAD.threads
    embeddings: bool = _LOAD.embeddings
    pooling: str | None = _LOAD.pooling
    split_mode: str | None = _LOAD.split_mode
    tensor_split: tuple[float, ...] = _LOAD.tensor_split
    main_gpu: int | None = _LOAD.main_gpu
    load_mode: str | None = _LOAD.load_mode
    api_key: str | None = None
    allow_unauthenticated: bool = False  # allow a non-loopback host without an api_key
    alias: str | None = None
    rpc: tuple[str, ...] = ()
    backend_sampling: bool = False
    extra_args: tuple[str, ...] = ()

    @classmethod
    def from_options(
        cls, model_path: Path, options: LoadOptions, *, ctx_size: int | None = None, **server: Any
    ) -> ServerSettings:
        """Settings for ``options`` (``ctx_size``: the resolved cache size, else ``options.ctx_size``)."""
        load = {f.name: getattr(options, f.name) for f in fields(cls) if hasattr(options, f.name)}
        load["ctx_size"] = ctx_size if ctx_size is not None else options.ctx_size
        return cls(model_path=model_path, **load, **server)

    def load_options(self) -> LoadOptions:
        """The load options these settings carry (the inverse of :meth:`from_options`)."""
        return LoadOptions(**{f.name: getattr(self, f.name) for f in fields(LoadOptions) if hasattr(self, f.name)})

    def __repr__(self) -> str:  # never show the API key
        shown = {k: v for k, v in self.__dict__.items() if k != "api_key"}
        shown["api_key"] = "***" if self.api_key else None
        return f"ServerSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def build_command(server_bin: Path, settings: ServerSettings, port: int) -> list[str]:
    """The llama-server argument list for ``settings``."""
    s = settings
    cmd = [
        str(server_bin),
        "--model", str(s.model_path),
        "--host", s.host,
        "--port", str(port),
        "--n-gpu-layers", str(s.gpu_layers),
        "--parallel", str(s.n_parallel),
        "--kv-unified" if s.kv_unified else "--no-kv-unified",
        "--flash-attn", s.flash_attn,
        "--metrics",
        "--no-webui",
        "--cors-origins", "localhost",  # llama-server's default lets any web page read the answers
    ]  # fmt: skip
    if s.ctx_size is not None:
        cmd += ["--ctx-size", str(s.ctx_size)]
    if s.load_mode not in (None, "auto"):
        cmd += ["--load-mode", SERVER_LOAD_MODES[s.load_mode]]
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


def _validate(settings: ServerSettings) -> None:
    if not is_loopback(settings.host) and not settings.api_key and not settings.allow_unauthenticated:
        raise ConfigError(
            f"refusing to listen on {settings.host or 'every address'!r} without an API key: anyone who can reach "
            "it could use the model. Pass api_key= (or set LLCUDA_API_KEY), keep the default host 127.0.0.1, "
            "or pass allow_unauthenticated=True if you really mean it."
        )
    if settings.port is not None and not 0 < settings.port < 65536:
        raise ConfigError(f"port={settings.port} must be between 1 and 65535.")
    settings.load_options().checked()


class LlamaServer(ManagedProcess):
    """A llama-server child process. Use :meth:`start`, then :attr:`url`; :meth:`stop` when done."""

    name = "llama-server"
    bind_failure_markers: tuple[str, ...] = ("couldn't bind", "address already in use", "failed to bind")

    def __init__(
        self,
        settings: ServerSettings,
        *,
        binaries: Binaries | None = None,
        log_path: Path | None = None,
    ) -> None:
        _validate(settings)
        super().__init__(host=settings.host, port=settings.port, binaries=binaries, log_path=log_path)
        self.settings = settings
        self._session: requests.Session | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            raise ServerStartError("the server has not been started; call start() first.")
        host = connect_host(self.settings.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    def command(self, port: int) -> list[str]:
        return build_command(self.binaries.executable(bootstrap.SERVER), self.settings, port)

    def environment(self, port: int) -> dict[str, str]:
        env = super().environment(port)
        if self.settings.api_key:  # the environment (owner-only), never argv (/proc/PID/cmdline is world-readable)
            env["LLAMA_API_KEY"] = self.settings.api_key
        return env

    def probe(self) -> bool:
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = False  # loopback: never through a proxy
        try:
            return self._session.get(f"{self.url}/health", timeout=2.0).status_code == 200
        except requests.RequestException:
            return False

    def on_ready(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def run_record(self) -> dict[str, Any]:
        return {"url": self.url, "model": str(self.settings.model_path)}

    def explain_exit(self, code: int, tail: str) -> str:
        message = f"llama-server exited with code {code} before it was ready (model: {self.settings.model_path})."
        workers = rpc_worker.explain_worker_crash(self.settings.rpc, tail) if self.settings.rpc else ""
        return f"{message}\n{workers}" if workers else message

    def start(self, timeout: float | None = None) -> str:
        """Start the process and wait until ``/health`` answers 200; return the base URL."""
        try:
            self.start_process(timeout)
        finally:
            self.on_ready()
        return self.url

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __repr__(self) -> str:
        state = f"running pid={self.pid} url={self.url}" if self.is_running() else "stopped"
        return f"<LlamaServer {self.settings.model_path.name} {state}>"
