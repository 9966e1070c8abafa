"""InferenceEngine: the Python API, composed of bootstrap, models, server and client.

    engine = InferenceEngine()                      # or InferenceEngine(backend="inprocess")
    engine.load_model("gemma-3-1b-Q4_K_M")
    print(engine.infer("Hello!", max_tokens=50).text)

Two backends run the model: "server" (llama-server in a child process, over loopback HTTP; the
default) and "inprocess" (libllama in this process, :mod:`llcuda.inprocess`; the fastest decode).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, overload

from . import bootstrap, config, gpu, split, validation, vram
from . import rpc as rpc_workers
from .client import LlamaClient
from .errors import ConfigError, InferenceError, LlcudaError, RequestTimeoutError
from .metrics import MetricsRecorder
from .server import LlamaServer
from .stream import TokenStream
from .types import Binaries, InferResult, MetricsSnapshot, ServerSettings

if TYPE_CHECKING:
    from .inprocess import InProcessEngine

log = logging.getLogger(__name__)

_FINISH = {"eos": "stop", "word": "stop", "limit": "length", "none": "stop"}
DEATH_GRACE_S = 2.0  # a killed server closes its sockets a moment before it can be reaped


class InferenceEngine:
    """Runs a GGUF model in a llama-server child process (or in this process) and generates text.

    Args:
        server_url: use an already-running llama-server instead of starting one
            (default: ``LLCUDA_SERVER_URL``, else none).
        backend: ``"server"`` (llama-server in a child process: crash isolation, OpenAI API,
            restarts) or ``"inprocess"`` (libllama in this process: the fastest decode, no HTTP);
            default ``LLCUDA_BACKEND``, else ``"server"``. Both take the same calls; server-only
            options raise ConfigError with ``"inprocess"``.
        api_key: key for that server, or for servers this engine starts
            (default: ``LLCUDA_API_KEY``).
        request_timeout: seconds to wait for one request (default: ``LLCUDA_REQUEST_TIMEOUT`` or 600).
        start_timeout: seconds to wait for a started server to become ready
            (default: ``LLCUDA_SERVER_START_TIMEOUT`` or 120).
    """

    def __init__(
        self,
        server_url: str | None = None,
        *,
        api_key: str | None = None,
        request_timeout: float | None = None,
        start_timeout: float | None = None,
        binaries: Binaries | None = None,
        backend: str | None = None,
    ) -> None:
        self.backend = config.backend(backend)
        if self.backend == "inprocess":
            for name, value in (("server_url", server_url or config.server_url()), ("api_key", api_key)):
                if value:
                    raise ConfigError(f"{name} is an option of the server backend; the in-process backend runs no "
                                      "server. Use InferenceEngine(backend='server') (or unset LLCUDA_SERVER_URL).")
        self._inproc: InProcessEngine | None = None
        self._inproc_settings: ServerSettings | None = None
        self.load_timings: dict[str, float] = {}
        self._api_key = config.api_key(api_key)
        self._request_timeout = config.request_timeout(request_timeout)
        self._start_timeout = config.server_start_timeout(start_timeout)
        self._binaries = binaries
        self._lock = threading.RLock()
        self._server: LlamaServer | None = None
        self._embed_server: LlamaServer | None = None
        self._embed_client: LlamaClient | None = None
        self._client: LlamaClient | None = None
        self._external_url = server_url or config.server_url()
        self._metrics = MetricsRecorder()
        self.model_name: str | None = None
        self.model_path: Path | None = None
        self.load_seconds: float | None = None
        if self._external_url:
            self._client = LlamaClient(self._external_url, api_key=self._api_key, timeout=self._request_timeout)
            self.model_name = self._external_url

    # -- loading -----------------------------------------------------------------------------
    def load_model(
        self,
        model: str | Path | None = None,
        *,
        gpu_layers: int = 99,
        ctx_size: int = 4096,
        n_parallel: int = 4,
        flash_attn: str = "auto",
        embeddings: bool = False,
        pooling: str | None = None,
        threads: int | None = None,
        batch_size: int | None = None,
        ubatch_size: int | None = None,
        split_mode: str | None = None,
        tensor_split: Sequence[float] | None = None,
        main_gpu: int | None = None,
        rpc: Sequence[str] | None = None,
        backend_sampling: bool = False,
        host: str = "127.0.0.1",
        port: int | None = None,
        allow_unauthenticated: bool = False,
        extra_args: Sequence[str] = (),
        offline: bool | None = None,
        kv_unified: bool = False,
    ) -> InferenceEngine:
        """Resolve ``model`` (registry name, path, ``hf://repo/file.gguf``, URL; default
        ``LLCUDA_DEFAULT_MODEL`` or Gemma-3-270M), validate it, and start llama-server.

        Replaces a model loaded before. Returns the engine, so calls can be chained.

        ``host`` other than a loopback address needs an API key (``api_key`` / ``LLCUDA_API_KEY``) or
        ``allow_unauthenticated=True``: anyone who can reach the port could use the model.

        Several devices: ``split_mode`` ('layer', 'row', 'tensor', 'none'), ``tensor_split`` (one
        proportion per device; default: by free memory) and ``main_gpu`` spread the model over GPUs
        (see :mod:`llcuda.split`); ``rpc=["host:port", ...]`` adds the devices of RPC workers
        (``llcuda rpc-worker``, see :mod:`llcuda.rpc`), which are checked for reachability first.

        With ``backend="inprocess"``: the model, context and shared options map to libllama's
        parameters, sampling always runs on the device, ``kv_unified=True`` shares one KV cache
        among the sequences, and the server-only options (``host``, ``port``,
        ``allow_unauthenticated``, ``rpc``, ``extra_args``, ``embeddings``) raise ConfigError.
        ``load_timings`` then holds the seconds of each loading phase.
        """
        if self.backend == "inprocess":
            server_only = {"host": host != "127.0.0.1", "port": port is not None, "rpc": bool(rpc),
                           "allow_unauthenticated": allow_unauthenticated, "extra_args": bool(extra_args),
                           "embeddings": embeddings}
            return self._load_inprocess(
                model, server_only, offline=offline, pooling=pooling, gpu_layers=gpu_layers, ctx_size=ctx_size,
                n_parallel=n_parallel, flash_attn=flash_attn, threads=threads, batch_size=batch_size,
                ubatch_size=ubatch_size, split_mode=split_mode, tensor_split=tensor_split, main_gpu=main_gpu,
                kv_unified=kv_unified)
        if kv_unified:
            raise ConfigError("kv_unified is an option of the in-process backend; for llama-server pass "
                              "extra_args=['--kv-unified'].")
        if self._external_url:
            raise ConfigError(
                f"this engine uses the running server at {self._external_url}; create "
                "InferenceEngine() without server_url to load a model of your own."
            )
        from .models import resolve_model

        validation.integer(gpu_layers, "gpu_layers", -1, 100_000)
        resolved = resolve_model(model if model is not None else config.default_model(), offline=offline)
        binaries = self._binaries or bootstrap.find_binaries()
        for warning in gpu.check_compatibility(binaries.build_info):
            log.warning("%s", warning)
        endpoints = rpc_workers.parse_endpoints(rpc)
        split_mode, split_shares, main_gpu = split.prepare(binaries.build_info, split_mode, tensor_split, main_gpu,
                                                           endpoints)
        if binaries.build_info.get("backend") == "cpu" and gpu_layers and not endpoints:
            log.info("CPU build of llama.cpp: layers run on the CPU (gpu_layers ignored)")
        settings = ServerSettings(
            model_path=resolved.path,
            host=host,
            port=port,
            allow_unauthenticated=allow_unauthenticated,
            ctx_size=ctx_size,
            gpu_layers=gpu_layers,
            n_parallel=n_parallel,
            flash_attn=flash_attn,
            embeddings=embeddings,
            pooling=pooling,
            threads=threads,
            batch_size=batch_size,
            ubatch_size=ubatch_size,
            api_key=self._api_key,
            alias=resolved.name,
            split_mode=split_mode,
            tensor_split=split_shares,
            main_gpu=main_gpu,
            rpc=endpoints,
            backend_sampling=backend_sampling,
            extra_args=tuple(extra_args),
        )
        rpc_workers.check_workers(endpoints)  # before unloading: an unreachable worker keeps the old model
        vram.check_memory(resolved.info, settings, binaries.build_info)  # before a CUDA out-of-memory crash
        server = LlamaServer(settings, binaries=binaries)  # validates: a bad argument leaves the old model running
        with self._lock:
            self.unload()
            started = time.monotonic()
            server.start(self._start_timeout)
            self.load_seconds = time.monotonic() - started
            self._server = server
            self._client = LlamaClient(server.url, api_key=self._api_key, timeout=self._request_timeout)
            self.model_name = resolved.name
            self.model_path = resolved.path
            self._metrics.reset()
        log.info("loaded %s in %.2f s at %s", resolved.name, self.load_seconds, server.url)
        return self

    def _load_inprocess(self, model: str | Path | None, server_only: dict[str, bool], *, offline: bool | None,
                        pooling: str | None, **params: Any) -> InferenceEngine:
        from .inprocess import InProcessEngine

        for name, used in server_only.items():
            if used:
                hint = " (embed() starts an embeddings server by itself)" if name == "embeddings" else ""
                raise ConfigError(f"{name} is an option of the server backend; the in-process backend runs no "
                                  f"server{hint}. Use InferenceEngine(backend='server') for it.")
        engine = InProcessEngine(binaries=self._binaries, request_timeout=self._request_timeout,
                                 metrics=self._metrics)
        with self._lock:
            self.unload()
            engine.load_model(model, offline=offline, **params)
            assert engine.model_path is not None
            self._inproc = engine
            self.model_name, self.model_path = engine.model_name, engine.model_path
            self.load_seconds, self.load_timings = engine.load_seconds, dict(engine.load_timings)
            split_mode, shares = params["split_mode"], tuple(params["tensor_split"] or ())
            self._inproc_settings = ServerSettings(  # for embed()'s llama-server
                model_path=engine.model_path, ctx_size=params["ctx_size"], gpu_layers=params["gpu_layers"],
                flash_attn=params["flash_attn"], threads=params["threads"], pooling=pooling, alias=engine.model_name,
                split_mode=split_mode, tensor_split=shares, main_gpu=params["main_gpu"], api_key=self._api_key)
        return self

    @property
    def is_loaded(self) -> bool:
        return self._inproc is not None or self._client is not None

    @property
    def url(self) -> str:
        if self.backend == "inprocess":
            raise LlcudaError("the in-process backend has no URL; use InferenceEngine(backend='server') for one.")
        return self._require_client()[0].base_url

    @property
    def inprocess_stats(self) -> dict[str, float]:
        """In-process backend: decode steps, tokens, sampler-chain changes, and seconds spent in the
        ``llama_decode`` call, waiting for the device and in Python since load or ``reset_metrics()``."""
        return self._local().stats

    @property
    def server(self) -> LlamaServer | None:
        return self._server

    def unload(self) -> None:
        """Stop the servers this engine started (or free the in-process model, failing its queued
        requests). The engine can load another model afterwards."""
        with self._lock:
            if self._inproc is not None:
                self._inproc.unload()
                self._inproc = None
            for server in (self._server, self._embed_server):
                if server is not None:
                    server.stop()
            for client in (self._client, self._embed_client):
                if client is not None:
                    client.close()
            self._server = self._embed_server = None
            self._client = self._embed_client = None
            if self._external_url:
                self._client = LlamaClient(self._external_url, api_key=self._api_key, timeout=self._request_timeout)

    close = unload

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unload()

    # -- plumbing ----------------------------------------------------------------------------
    def _local(self) -> InProcessEngine:
        """The in-process engine (backend="inprocess"); raises when no model is loaded."""
        engine = self._inproc
        if engine is None:
            if self.backend != "inprocess":
                raise LlcudaError("this engine uses the server backend; in-process details need backend='inprocess'.")
            raise LlcudaError("no model is loaded; call engine.load_model(...) first.")
        return engine

    def _require_client(self) -> tuple[LlamaClient, LlamaServer | None]:
        with self._lock:
            if self._client is None:
                raise LlcudaError("no model is loaded; call engine.load_model(...) first.")
            server = self._server
            if server is not None and not server.is_running():
                log.warning(
                    "llama-server exited (code %s); restarting it. Log tail:\n%s",
                    server.returncode(), server.log_tail(10),
                )
                rpc_workers.check_workers(server.settings.rpc)
                server.start(self._start_timeout)
                self._client.close()
                self._client = LlamaClient(server.url, api_key=self._api_key, timeout=self._request_timeout)
            return self._client, server

    def _call(self, func: Callable[[LlamaClient], Any]) -> Any:
        client, server = self._require_client()
        try:
            return func(client)
        except InferenceError as exc:
            died = self._death(exc, server)
            if died is not None:
                raise died from exc
            raise

    def _stream(self, func: Callable[[LlamaClient], Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        """:meth:`_call` for server-sent events: a server that dies mid-stream is reported as such."""
        client, server = self._require_client()
        try:
            yield from func(client)
        except InferenceError as exc:
            died = self._death(exc, server)
            if died is not None:
                raise died from exc
            raise

    def _death(self, exc: InferenceError, server: LlamaServer | None) -> InferenceError | None:
        """The error to raise instead of ``exc`` when our llama-server process died; None if it runs."""
        if server is None or exc.status_code is not None or isinstance(exc, RequestTimeoutError):
            return None
        code = server.wait_exit(DEATH_GRACE_S if _connection_broke(exc) else 0.0)
        if code is None:
            return None
        lost = [f"{ep} ({why})" for ep in server.settings.rpc if (why := rpc_workers.probe(ep)) is not None]
        then = (f"RPC worker(s) unreachable: {', '.join(lost)}. Restart them; the next call restarts llama-server"
                if lost else "the next call restarts it")
        return InferenceError(
            f"llama-server died during the request (exit code {code}); {then}. Cause: {exc}",
            log_tail=server.log_tail(),
        )

    # -- generation --------------------------------------------------------------------------
    @staticmethod
    def _sampling(
        max_tokens: int, temperature: float, top_p: float, top_k: int, seed: int | None,
        stop: str | Sequence[str] | None, ignore_eos: bool,
    ) -> dict[str, Any]:
        return {
            "n_predict": validation.max_tokens(max_tokens),
            "temperature": validation.number(temperature, "temperature", 0.0, 100.0),
            "top_p": validation.number(top_p, "top_p", 0.0, 1.0),
            "top_k": validation.integer(top_k, "top_k", 0, 1_000_000),
            "seed": -1 if seed is None else validation.integer(seed, "seed", -1, 2**32 - 1),
            "stop": validation.stop(stop),
            "ignore_eos": bool(ignore_eos),
        }

    def _completion_body(
        self, prompt: str, max_tokens: int, temperature: float, top_p: float, top_k: int, seed: int | None,
        stop: str | Sequence[str] | None, ignore_eos: bool,
    ) -> dict[str, Any]:
        return {"prompt": validation.prompt(prompt), "cache_prompt": True,
                **self._sampling(max_tokens, temperature, top_p, top_k, seed, stop, ignore_eos)}

    def _completion_result(self, data: dict[str, Any], started: float, first_token: float | None,
                           text: str | None = None) -> InferResult:
        finished = time.monotonic()
        timings = dict(data.get("timings") or {})
        tokens = int(data.get("tokens_predicted", timings.get("predicted_n", 0)) or 0)
        tps = float(timings.get("predicted_per_second") or 0.0)
        result = InferResult(
            text=data.get("content", "") if text is None else text,
            tokens_generated=tokens,
            prompt_tokens=int(data.get("tokens_evaluated", timings.get("prompt_n", 0)) or 0),
            latency_ms=(finished - started) * 1000.0,
            tokens_per_sec=tps,
            finish_reason=_FINISH.get(str(data.get("stop_type", "")), str(data.get("stop_type") or "stop")),
            time_to_first_token_ms=None if first_token is None else (first_token - started) * 1000.0,
            stop_word=data.get("stopping_word") or None,
            model=self.model_name or "",
            timings=timings,
        )
        self._metrics.record(started, finished, tokens, tps)
        return result

    def infer(
        self,
        prompt: str,
        max_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 0.95,
        top_k: int = 40,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        ignore_eos: bool = False,
    ) -> InferResult:
        """Continue ``prompt`` (raw text, no chat template). ``temperature=0`` is greedy."""
        if self.backend == "inprocess":
            return self._local().infer(prompt, max_tokens, temperature, top_p, top_k, seed, stop,
                                       ignore_eos=ignore_eos)
        body = self._completion_body(prompt, max_tokens, temperature, top_p, top_k, seed, stop, ignore_eos)
        started = time.monotonic()
        try:
            data = self._call(lambda c: c.completion(body))
        except LlcudaError:
            self._metrics.record_failure()
            raise
        return self._completion_result(data, started, None)

    def infer_stream(
        self,
        prompt: str,
        max_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 0.95,
        top_k: int = 40,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        ignore_eos: bool = False,
    ) -> TokenStream:
        """Like :meth:`infer`, but yields text pieces as they are generated."""
        if self.backend == "inprocess":
            return self._local().infer_stream(prompt, max_tokens, temperature, top_p, top_k, seed, stop,
                                              ignore_eos=ignore_eos)
        body = self._completion_body(prompt, max_tokens, temperature, top_p, top_k, seed, stop, ignore_eos)
        started = time.monotonic()
        state: dict[str, Any] = {"final": {}, "first": None, "parts": []}

        def pieces() -> Iterator[str]:
            try:
                for event in self._stream(lambda c: c.completion_stream(body)):
                    piece = event.get("content", "")
                    if event.get("stop"):
                        state["final"] = event
                    if piece:
                        if state["first"] is None:
                            state["first"] = time.monotonic()
                        state["parts"].append(piece)
                        yield piece
            except LlcudaError:
                self._metrics.record_failure()
                raise

        return TokenStream(
            pieces(),
            lambda: self._completion_result(state["final"], started, state["first"], "".join(state["parts"])),
        )

    # -- chat --------------------------------------------------------------------------------
    @overload
    def chat(self, messages: Sequence[dict[str, Any]], max_tokens: int = ..., temperature: float = ...,
             top_p: float = ..., top_k: int = ..., seed: int | None = ..., stop: str | Sequence[str] | None = ...,
             *, stream: Literal[False] = ...) -> InferResult: ...

    @overload
    def chat(self, messages: Sequence[dict[str, Any]], max_tokens: int = ..., temperature: float = ...,
             top_p: float = ..., top_k: int = ..., seed: int | None = ..., stop: str | Sequence[str] | None = ...,
             *, stream: Literal[True]) -> TokenStream: ...

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        max_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 0.95,
        top_k: int = 40,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        stream: bool = False,
    ) -> InferResult | TokenStream:
        """One assistant turn for ``messages``, formatted with the model's own chat template.

        In-process, llama.cpp's built-in templates format the chat; a model without a chat
        template (or with one they do not recognise) raises ConfigError.
        """
        if self.backend == "inprocess":
            return self._local().chat(messages, max_tokens, temperature, top_p, top_k, seed, stop, stream=stream)
        sampling = self._sampling(max_tokens, temperature, top_p, top_k, seed, stop, False)
        body: dict[str, Any] = {
            "messages": validation.messages(messages),
            "max_tokens": sampling.pop("n_predict"),
            **{k: v for k, v in sampling.items() if k != "ignore_eos"},
        }
        started = time.monotonic()
        if not stream:
            try:
                data = self._call(lambda c: c.chat(body))
            except LlcudaError:
                self._metrics.record_failure()
                raise
            choice = data["choices"][0]
            return self._chat_result(data, choice["message"].get("content") or "", choice.get("finish_reason"),
                                     started, None)
        body["stream_options"] = {"include_usage": True}
        state: dict[str, Any] = {"last": {}, "finish": None, "first": None, "parts": []}

        def pieces() -> Iterator[str]:
            try:
                for event in self._stream(lambda c: c.chat_stream(body)):
                    state["last"] = {**state["last"], **{k: v for k, v in event.items() if k in ("usage", "timings")}}
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if choice.get("finish_reason"):
                            state["finish"] = choice["finish_reason"]
                        if piece:
                            if state["first"] is None:
                                state["first"] = time.monotonic()
                            state["parts"].append(piece)
                            yield piece
            except LlcudaError:
                self._metrics.record_failure()
                raise

        return TokenStream(
            pieces(),
            lambda: self._chat_result(state["last"], "".join(state["parts"]), state["finish"], started,
                                      state["first"]),
        )

    def _chat_result(self, data: dict[str, Any], text: str, finish: str | None, started: float,
                     first: float | None) -> InferResult:
        finished = time.monotonic()
        usage = data.get("usage") or {}
        timings = dict(data.get("timings") or {})
        tokens = int(usage.get("completion_tokens", timings.get("predicted_n", 0)) or 0)
        tps = float(timings.get("predicted_per_second") or 0.0)
        self._metrics.record(started, finished, tokens, tps)
        return InferResult(
            text=text,
            tokens_generated=tokens,
            prompt_tokens=int(usage.get("prompt_tokens", timings.get("prompt_n", 0)) or 0),
            latency_ms=(finished - started) * 1000.0,
            tokens_per_sec=tps,
            finish_reason=finish or "stop",
            time_to_first_token_ms=None if first is None else (first - started) * 1000.0,
            model=self.model_name or "",
            timings=timings,
        )

    # -- batches, embeddings, tokens, metrics ------------------------------------------------
    def batch_infer(self, prompts: Iterable[str], max_workers: int | None = None, **kwargs: Any) -> list[InferResult]:
        """Run ``infer`` on every prompt concurrently; the server decodes up to ``n_parallel`` together.

        Results come back in the order of ``prompts``. Requests beyond the slots queue in the server.
        In-process, every prompt is submitted at once (``max_workers`` is not needed).
        """
        items = [validation.prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        if not items:
            return []
        if self.backend == "inprocess":
            unknown = set(kwargs) - {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos"}
            if unknown:
                raise ConfigError(f"batch_infer() got unexpected options: {', '.join(sorted(unknown))}.")
            return self._local().batch_infer(items, **{"temperature": 0.7, **kwargs})
        slots = self._server.settings.n_parallel if self._server else 4
        workers = max_workers or min(len(items), max(slots, 1) * 2)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llcuda-batch") as pool:
            return list(pool.map(lambda p: self.infer(p, **kwargs), items))

    def embed(self, texts: str | Sequence[str]) -> list[list[float]]:
        """Embedding vectors for ``texts``.

        Uses the main server if it was loaded with ``embeddings=True``; otherwise starts a second,
        embeddings-only llama-server for the same model on first use.
        """
        batch = [texts] if isinstance(texts, str) else list(texts)
        for i, text in enumerate(batch):
            validation.prompt(text, f"texts[{i}]")
        if not batch:
            return []
        client = self._embedding_client()
        return list(client.embeddings(batch))

    def _embedding_client(self) -> LlamaClient:
        if self.backend == "inprocess":
            self._local()
            assert self._inproc_settings is not None
            return self._start_embedding_server(self._inproc_settings, self._binaries or bootstrap.find_binaries())
        client, server = self._require_client()
        if server is None or server.settings.embeddings:
            return client
        if server.settings.rpc:
            raise ConfigError(
                "embeddings with RPC workers need load_model(..., embeddings=True): each rpc-server serves one "
                "llama-server at a time, so a second, embeddings-only server cannot share the workers."
            )
        return self._start_embedding_server(server.settings, server.binaries)

    def _start_embedding_server(self, base: ServerSettings, binaries: Binaries) -> LlamaClient:
        with self._lock:
            if self._embed_server is None or not self._embed_server.is_running():
                # A generative model has no pooling of its own; mean pooling gives one vector per text.
                settings = replace(base, embeddings=True, port=None, n_parallel=1, pooling=base.pooling or "mean",
                                   ctx_size=min(base.ctx_size, 8192), backend_sampling=False)
                self._embed_server = LlamaServer(settings, binaries=binaries)
                self._embed_server.start(self._start_timeout)
                self._embed_client = LlamaClient(self._embed_server.url, api_key=self._api_key,
                                                 timeout=self._request_timeout)
            assert self._embed_client is not None
            return self._embed_client

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as llama-server's /tokenize gives them (no BOS; special tokens parsed)."""
        if self.backend == "inprocess":
            return self._local().tokenize(validation.prompt(text, "text"), add_special=False, parse_special=True)
        return list(self._call(lambda c: c.tokenize(validation.prompt(text, "text"))))

    def detokenize(self, tokens: Sequence[int]) -> str:
        if self.backend == "inprocess":
            return self._local().detokenize(list(tokens), special=True)
        return str(self._call(lambda c: c.detokenize(list(tokens))))

    def health(self) -> dict[str, Any]:
        if self.backend == "inprocess":
            return self._local().health()
        return dict(self._call(lambda c: c.health()))

    def get_metrics(self) -> MetricsSnapshot:
        """Latency percentiles and throughput of this engine's requests, plus the server's own counters."""
        server_metrics: dict[str, float] = {}
        if self.backend == "inprocess":
            return self._metrics.snapshot()
        if self._client is not None:
            try:
                server_metrics = self._call(lambda c: c.metrics())
            except LlcudaError as exc:
                log.debug("server metrics unavailable: %s", exc)
        return self._metrics.snapshot(server_metrics)

    def reset_metrics(self) -> None:
        self._metrics.reset()
        if self._inproc is not None:
            self._inproc.reset_stats()

    def __repr__(self) -> str:
        if self.backend == "inprocess":
            return f"<InferenceEngine model={self.model_name!r} in-process {'loaded' if self._inproc else 'not loaded'}>"
        where = self.url if self._client else "not loaded"
        return f"<InferenceEngine model={self.model_name!r} {where}>"


def _connection_broke(exc: InferenceError) -> bool:
    """Whether ``exc`` is a connection that failed or broke off (not an HTTP error or a timeout)."""
    import requests

    cause = exc.__cause__
    return isinstance(cause, requests.RequestException) and not isinstance(cause, requests.Timeout)
