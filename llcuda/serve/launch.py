"""``llcuda serve``: listen at once, load the model in the background, serve it with uvicorn.

:func:`run_server` binds the port first (so a taken port fails before minutes of loading, and port 0
picks a free one), answers 503 while the model loads, then serves the app of
:mod:`llcuda.serve.app` until SIGINT or SIGTERM, and unloads the model.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import uvicorn

from llcuda import config
from llcuda import options as validation
from llcuda.errors import ConfigError
from llcuda.libllama.engine import InProcessEngine
from llcuda.processes import registry
from llcuda.processes.process import connect_host, is_loopback
from llcuda.serve.app import create_app
from llcuda.serve.streaming import STREAM_INTERVAL_S
from llcuda.serve.webui import INDEX, UI_SUBDIR, find_ui_dir
from llcuda.system import binaries as bootstrap
from llcuda.system.binaries import Binaries
from llcuda.system.threads import leave_signals_to_the_main_thread

log = logging.getLogger(__name__)

BACKLOG = 2048  # uvicorn's default
GRACEFUL_SHUTDOWN_S = 3  # open streams get this long to finish once the server is asked to stop


def check_public_host(host: str, api_key: str | None, allow_unauthenticated: bool) -> None:
    """ConfigError for a non-loopback ``host`` without an API key, unless explicitly allowed."""
    if not is_loopback(host) and not api_key and not allow_unauthenticated:
        raise ConfigError(
            f"refusing to serve on {host or 'every address'!r} without an API key: anyone who can reach it could use "
            "the model. Pass --api-key KEY (or set LLCUDA_API_KEY), or --allow-unauthenticated if you really mean it."
        )


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port`` (0: a free port), for uvicorn to serve: connections
    made before the server runs wait in its backlog."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve --host {host!r} ({exc}); pass an address such as 127.0.0.1.") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port (0: any free "
            "one) or stop what uses it."
        ) from None
    sock.listen(BACKLOG)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = connect_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(
    model: str | Path | None,
    load_options: Mapping[str, Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    allow_unauthenticated: bool = False,
    alias: str | None = None,
    max_tokens: int | None = None,
    stream_interval: float = STREAM_INTERVAL_S,
    ui_dir: Path | None = None,
    binaries: Binaries | None = None,
    log_level: str = "warning",
    on_event: Callable[[str], None] | None = None,
) -> int:
    """Serve ``model`` over HTTP until SIGINT/SIGTERM; returns 0 (raises if the model cannot load).

    ``load_options``: keyword arguments of :meth:`InProcessEngine.load_model` (``n_parallel``,
    ``ctx_size``, ``gpu_layers``, ``embeddings``, ...). ``api_key``: the argument, else
    ``LLCUDA_API_KEY``; a non-loopback ``host`` needs one unless ``allow_unauthenticated``.
    ``max_tokens``: the most tokens of one answer (None: up to the end of the context).
    ``stream_interval``: the shortest time between two chunks of a stream (seconds). ``ui_dir``: the
    built chat page to serve at ``/`` (default: the one beside the binaries, if they have one).
    ``on_event(message)`` hears the address once listening and the model once loaded.
    """
    api_key = config.api_key(api_key)
    check_public_host(host, api_key, allow_unauthenticated)
    binaries = binaries or bootstrap.find_binaries()
    tell = on_event or (lambda message: log.info("%s", message))
    sock = bind(host, port)
    url = url_of(sock)
    if max_tokens is not None:
        validation.check_max_tokens(max_tokens)
    validation.number(stream_interval, "stream_interval", 0.0, 10.0)
    if ui_dir is not None and not (Path(ui_dir) / INDEX).is_file():
        raise ConfigError(f"{ui_dir} has no {INDEX}: point --ui-dir at a built chat page (share/llcuda/ui).")
    app = create_app(
        api_key=api_key,
        alias=alias,
        max_tokens=max_tokens,
        stream_interval=stream_interval,
        ui_dir=ui_dir or find_ui_dir(binaries),
        ui_searched=binaries.bin_dir.parent / UI_SUBDIR,
    )
    settings = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    server = _Server(settings, on_exit=app.state.service.stop_soon)
    loaded: list[InProcessEngine] = []
    failed: list[BaseException] = []
    records: list[registry.RunEntry] = []

    def load() -> None:
        leave_signals_to_the_main_thread()  # uvicorn's handlers in the main thread get SIGINT and SIGTERM
        try:
            engine = InProcessEngine(binaries=binaries).load_model(model, **load_options)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread once the server stopped
            failed.append(exc)
            server.should_exit = True
            return
        loaded.append(engine)
        app.state.service.attach(engine)
        try:  # `llcuda ps` lists it; the engine that started this process (if one did) recorded it already
            records.append(
                registry.register(
                    os.getpid(),
                    kind="llcuda-serve",
                    host=host,
                    port=sock.getsockname()[1],
                    url=url,
                    model=engine.model_path,
                    backend="inprocess",
                )
            )
        except OSError as exc:
            log.warning("could not record this server for `llcuda ps`: %s", exc)
        tell(
            f"serving {engine.model_name} at {url} (OpenAI-compatible: /v1/chat/completions, /v1/completions"
            f"{', /v1/embeddings' if engine.embeddings else ''}; chat page at {url}/); Ctrl-C stops."
        )

    stopped = _quiet_signals()
    loader = threading.Thread(target=load, name="llcuda-load", daemon=True)
    tell(f"listening at {url}; loading the model ({url}/health answers 503 until it is ready)")
    loader.start()
    try:
        server.run(sockets=[sock])
    finally:
        loader.join()
        for record in records:
            registry.unregister(record)
        for engine in loaded:
            engine.unload()
        sock.close()
        stopped()
    if failed:
        raise failed[0]
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, which also ends the running generations when asked to stop (SIGINT, SIGTERM), so
    that open streams finish at once instead of at the graceful-shutdown deadline."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._on_exit()


def _quiet_signals() -> Callable[[], None]:
    """Handlers for SIGINT/SIGTERM that do nothing: uvicorn catches both to shut down gracefully, then
    raises them again, which would otherwise end the process before the model is unloaded. Returns
    the function that puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
