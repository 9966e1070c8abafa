"""The llama-server backend: a child process (or a running server) over loopback HTTP.

Starts llama-server for a model, restarts it on the next call after it crashed, reports a
server that died during a request as such, and builds results from its JSON.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llcuda.backends.embeddings import EmbeddingServer
from llcuda.errors import ConfigError, InferenceError, LlcudaError, RequestTimeoutError
from llcuda.metrics import MetricsRecorder
from llcuda.options import LoadOptions, SamplingOptions
from llcuda.processes import rpc_worker as rpc_workers
from llcuda.processes.client import LlamaClient
from llcuda.processes.llama_server import LlamaServer, ServerSettings
from llcuda.processes.llcuda_server import LlcudaServer
from llcuda.results import InferResult, TokenStream
from llcuda.system import binaries as bootstrap
from llcuda.system import gpu
from llcuda.system import memory as vram
from llcuda.system import placement as split
from llcuda.system.binaries import Binaries

log = logging.getLogger(__name__)

_FINISH = {"eos": "stop", "word": "stop", "limit": "length", "none": "stop"}
DEATH_GRACE_S = 2.0  # a killed server closes its sockets a moment before it can be reaped
DEFAULT_SLOTS = 4  # batch_infer's guess of a running server's slots when this engine did not start it


class ServerBackend:
    """llama-server started by this engine, or the one at ``server_url``."""

    def __init__(
        self,
        *,
        server_url: str | None,
        api_key: str | None,
        request_timeout: float,
        start_timeout: float,
        binaries: Binaries | None,
        metrics: MetricsRecorder,
        kind: str = "llama-server",
    ) -> None:
        self.kind = kind  # "serve": llcuda's engine (llcuda serve); "llama-server": llama.cpp's server
        self._api_key = api_key
        self._request_timeout = request_timeout
        self._start_timeout = start_timeout
        self._binaries = binaries
        self._metrics = metrics
        self._lock = threading.RLock()
        self._server: LlamaServer | None = None
        self._client: LlamaClient | None = None
        self._embeddings = EmbeddingServer(
            api_key=api_key, request_timeout=request_timeout, start_timeout=start_timeout
        )
        self.external_url = server_url
        self.model_name: str | None = server_url
        self.model_path: Path | None = None
        self.load_seconds: float | None = None
        self.load_timings: dict[str, float] = {}
        if server_url:
            self._client = self._new_client(server_url)

    def _new_client(self, url: str) -> LlamaClient:
        return LlamaClient(url, api_key=self._api_key, timeout=self._request_timeout)

    # -- loading -----------------------------------------------------------------------------
    def load(
        self,
        model: str | Path,
        options: LoadOptions,
        *,
        offline: bool | None,
        host: str,
        port: int | None,
        allow_unauthenticated: bool,
        rpc: Sequence[str] | None,
        backend_sampling: bool,
        extra_args: Sequence[str],
    ) -> None:
        """Resolve ``model``, check it fits, and start the server process."""
        from llcuda.models import resolve_model

        resolved = resolve_model(model, offline=offline)
        binaries = self._binaries or bootstrap.find_binaries()
        report = gpu.detect() if binaries.build_info.get("backend") == "cuda" else None  # one detection for all
        for warning in gpu.check_compatibility(binaries.build_info, report):
            log.warning("%s", warning)
        endpoints = rpc_workers.parse_endpoints(rpc)
        split_mode, split_shares, main_gpu = split.prepare(
            binaries.build_info, options.split_mode, options.tensor_split, options.main_gpu, endpoints, report=report
        )
        if binaries.build_info.get("backend") == "cpu" and options.gpu_layers and not endpoints:
            log.info("CPU build of llama.cpp: layers run on the CPU (gpu_layers ignored)")
        if endpoints:  # llama.cpp cannot resolve "auto" through RPC workers
            options = dataclasses.replace(
                options, flash_attn=rpc_workers.flash_attn_over_rpc(options.flash_attn, vram.head_sizes(resolved.info))
            )
        options = dataclasses.replace(options, split_mode=split_mode, tensor_split=split_shares, main_gpu=main_gpu)
        settings = ServerSettings.from_options(
            resolved.path,
            options,
            ctx_size=options.context_tokens(resolved.info.context_length),
            host=host,
            port=port,
            api_key=self._api_key,
            allow_unauthenticated=allow_unauthenticated,
            alias=resolved.name,
            rpc=endpoints,
            backend_sampling=backend_sampling,
            extra_args=tuple(extra_args),
        )
        rpc_workers.check_workers(endpoints)  # before unloading: an unreachable worker keeps the old model
        vram.check_memory(resolved.info, settings, binaries.build_info, report)  # before a CUDA out-of-memory crash
        process = LlcudaServer if self.kind == "serve" else LlamaServer
        server = process(settings, binaries=binaries)  # validates: a bad argument leaves the old model running
        with self._lock:
            self.unload()
            started = time.monotonic()
            server.start(self._start_timeout)
            self.load_seconds = time.monotonic() - started
            self._server = server
            self._client = self._new_client(server.url)
            self.model_name = resolved.name
            self.model_path = resolved.path
            self._metrics.reset()
        log.info("loaded %s in %.2f s at %s", resolved.name, self.load_seconds, server.url)

    @property
    def is_loaded(self) -> bool:
        return self._client is not None

    @property
    def server(self) -> LlamaServer | None:
        return self._server

    @property
    def url(self) -> str:
        return self._require_client()[0].base_url

    def unload(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.stop()
            self._embeddings.close()
            if self._client is not None:
                self._client.close()
            self._server = self._client = None
            if self.external_url:
                self._client = self._new_client(self.external_url)

    def describe(self) -> str:
        return self.url if self._client else "not loaded"

    # -- requests, restarts and deaths -------------------------------------------------------
    def _require_client(self) -> tuple[LlamaClient, LlamaServer | None]:
        with self._lock:
            if self._client is None:
                raise LlcudaError("no model is loaded; call engine.load_model(...) first.")
            server = self._server
            if server is not None and not server.is_running():
                log.warning(
                    "llama-server exited (code %s); restarting it. Log tail:\n%s",
                    server.returncode(),
                    server.log_tail(10),
                )
                rpc_workers.check_workers(server.settings.rpc)
                server.start(self._start_timeout)
                self._client.close()
                self._client = self._new_client(server.url)
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

    def _stream(self, func: Callable[[LlamaClient], Iterator[dict[str, Any]]]) -> Generator[dict[str, Any], None, None]:
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
        then = (
            f"RPC worker(s) unreachable: {', '.join(lost)}. Restart them; the next call restarts llama-server"
            if lost
            else "the next call restarts it"
        )
        tail = server.log_tail()
        workers = rpc_workers.explain_worker_crash(server.settings.rpc, tail)
        return InferenceError(
            f"llama-server died during the request (exit code {code}); {then}. Cause: {exc}"
            + (f"\n{workers}" if workers else ""),
            log_tail=tail,
        )

    def _recorded(self, func: Callable[[LlamaClient], Any]) -> Any:
        """:meth:`_call`, counting a failure in the metrics."""
        try:
            return self._call(func)
        except LlcudaError:
            self._metrics.record_failure()
            raise

    def _recorded_stream(self, func: Callable[[LlamaClient], Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        """:meth:`_stream` within one deadline for the whole request (``request_timeout`` from now), counting
        a failure in the metrics; leaving the stream closes the connection, which cancels the generation."""
        deadline = time.monotonic() + self._request_timeout
        events = self._stream(func)
        try:
            for event in events:
                yield event
                if time.monotonic() > deadline:
                    raise RequestTimeoutError(
                        f"the request did not finish within {self._request_timeout:g} s (request_timeout) and was "
                        "cancelled. Raise request_timeout or LLCUDA_REQUEST_TIMEOUT, or lower max_tokens."
                    )
        except LlcudaError:
            self._metrics.record_failure()
            raise
        finally:
            events.close()

    # -- generation --------------------------------------------------------------------------
    def infer(self, prompt: str, args: SamplingOptions) -> InferResult:
        if self.kind == "serve":
            return self._openai_infer(prompt, args, stream=False)  # type: ignore[return-value]
        body = _completion_body(prompt, args)
        started = time.monotonic()
        data = self._recorded(lambda c: c.completion(body))
        return self._completion_result(data, started, None)

    def infer_stream(self, prompt: str, args: SamplingOptions) -> TokenStream:
        if self.kind == "serve":
            return self._openai_infer(prompt, args, stream=True)  # type: ignore[return-value]
        body = _completion_body(prompt, args)
        started = time.monotonic()
        got = _Streamed()

        def pieces() -> Iterator[str]:
            for event in self._recorded_stream(lambda c: c.completion_stream(body)):
                if event.get("stop"):
                    got.data = event
                if piece := event.get("content", ""):
                    yield got.add(piece)

        return TokenStream(pieces(), lambda: self._completion_result(got.data, started, got.first, got.text))

    def _openai_infer(self, prompt: str, args: SamplingOptions, stream: bool) -> InferResult | TokenStream:
        """A raw-text completion through OpenAI's ``/v1/completions`` (llcuda serve)."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": args.max_tokens,
            "ignore_eos": args.ignore_eos,
            **_sampling(args),
        }
        if args.seed is None:
            body.pop("seed")
        return self._openai(
            body,
            stream,
            LlamaClient.text_completion,
            LlamaClient.text_completion_stream,
            lambda choice: choice.get("text"),
            lambda choice: choice.get("text"),
        )

    def chat(self, messages: list[dict[str, Any]], args: SamplingOptions, stream: bool) -> InferResult | TokenStream:
        body: dict[str, Any] = {"messages": messages, "max_tokens": args.max_tokens, **_sampling(args)}
        return self._openai(
            body,
            stream,
            LlamaClient.chat,
            LlamaClient.chat_stream,
            lambda choice: choice["message"].get("content"),
            lambda choice: (choice.get("delta") or {}).get("content"),
        )

    def _openai(
        self,
        body: dict[str, Any],
        stream: bool,
        call: Callable[[LlamaClient, dict[str, Any]], Any],
        call_stream: Callable[[LlamaClient, dict[str, Any]], Iterator[dict[str, Any]]],
        text: Callable[[dict[str, Any]], Any],
        piece: Callable[[dict[str, Any]], Any],
    ) -> InferResult | TokenStream:
        """One OpenAI-shaped request: the whole answer (``text`` of its choice) or a stream of ``piece``s."""
        started = time.monotonic()
        if not stream:
            data = self._recorded(lambda c: call(c, body))
            choice = data["choices"][0]
            return self._chat_result(data, text(choice) or "", choice.get("finish_reason"), started, None)
        body["stream_options"] = {"include_usage": True}
        got = _Streamed()

        def pieces() -> Iterator[str]:
            for event in self._recorded_stream(lambda c: call_stream(c, body)):
                got.data.update({k: v for k, v in event.items() if k in ("usage", "timings")})
                for choice in event.get("choices") or []:
                    got.finish = choice.get("finish_reason") or got.finish
                    if part := piece(choice) or "":
                        yield got.add(part)

        return TokenStream(pieces(), lambda: self._chat_result(got.data, got.text, got.finish, started, got.first))

    def batch_infer(self, prompts: list[str], args: SamplingOptions, max_workers: int | None) -> list[InferResult]:
        """Every prompt concurrently; the server decodes up to ``n_parallel`` together, queues the rest."""
        slots = self._server.settings.n_parallel if self._server else DEFAULT_SLOTS
        workers = max_workers or min(len(prompts), max(slots, 1) * 2)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llcuda-batch") as pool:
            return list(pool.map(lambda p: self.infer(p, args), prompts))

    # -- results -----------------------------------------------------------------------------
    def _completion_result(
        self, data: dict[str, Any], started: float, first: float | None, text: str | None = None
    ) -> InferResult:
        timings = dict(data.get("timings") or {})
        stop_type = str(data.get("stop_type", ""))
        return self._result(
            data.get("content", "") if text is None else text,
            timings,
            started,
            first,
            tokens=data.get("tokens_predicted", timings.get("predicted_n", 0)),
            prompt_tokens=data.get("tokens_evaluated", timings.get("prompt_n", 0)),
            finish=_FINISH.get(stop_type, str(data.get("stop_type") or "stop")),
            stop_word=data.get("stopping_word") or None,
        )

    def _chat_result(
        self, data: dict[str, Any], text: str, finish: str | None, started: float, first: float | None
    ) -> InferResult:
        usage = data.get("usage") or {}
        timings = dict(data.get("timings") or {})
        return self._result(
            text,
            timings,
            started,
            first,
            tokens=usage.get("completion_tokens", timings.get("predicted_n", 0)),
            prompt_tokens=usage.get("prompt_tokens", timings.get("prompt_n", 0)),
            finish=finish or "stop",
            stop_word=None,
        )

    def _result(
        self,
        text: str,
        timings: dict[str, Any],
        started: float,
        first: float | None,
        *,
        tokens: Any,
        prompt_tokens: Any,
        finish: str,
        stop_word: str | None,
    ) -> InferResult:
        """The InferResult of one finished request (recorded in the metrics)."""
        finished = time.monotonic()
        generated = int(tokens or 0)
        tps = float(timings.get("predicted_per_second") or 0.0)
        if not tps and first is not None and int(tokens or 0) > 1 and finished > first:
            tps = (int(tokens) - 1) / (finished - first)
        self._metrics.record(started, finished, generated, tps)
        return InferResult(
            text=text,
            tokens_generated=generated,
            prompt_tokens=int(prompt_tokens or 0),
            latency_ms=(finished - started) * 1000.0,
            tokens_per_sec=tps,
            finish_reason=finish,
            time_to_first_token_ms=None if first is None else (first - started) * 1000.0,
            stop_word=stop_word,
            model=self.model_name or "",
            timings=timings,
        )

    # -- embeddings, tokens, health ----------------------------------------------------------
    def embed(self, texts: list[str]) -> list[list[float]]:
        """Through this server if it was loaded with ``embeddings=True``, else a second, embeddings-only one."""
        client, server = self._require_client()
        if server is not None and not server.settings.embeddings:
            if server.settings.rpc:
                raise ConfigError(
                    "embeddings with RPC workers need load_model(..., embeddings=True): each rpc-server serves one "
                    "llama-server at a time, so a second, embeddings-only server cannot share the workers."
                )
            client = self._embeddings.client(server.settings, server.binaries)
        return list(client.embeddings(texts))

    def tokenize(self, text: str) -> list[int]:
        return list(self._call(lambda c: c.tokenize(text)))

    def detokenize(self, tokens: list[int]) -> str:
        return str(self._call(lambda c: c.detokenize(tokens)))

    def health(self) -> dict[str, Any]:
        return dict(self._call(lambda c: c.health()))

    def server_metrics(self) -> dict[str, float]:
        if self._client is None:
            return {}
        try:
            return dict(self._call(lambda c: c.metrics()))
        except LlcudaError as exc:
            log.debug("server metrics unavailable: %s", exc)
            return {}

    def reset_stats(self) -> None:
        """Nothing to reset: llama-server keeps its own counters."""


@dataclass
class _Streamed:
    """What a stream brought so far: text pieces, when the first came, the usage/timings data, the finish."""

    data: dict[str, Any] = field(default_factory=dict)
    finish: str | None = None
    first: float | None = None
    parts: list[str] = field(default_factory=list)

    def add(self, piece: str) -> str:
        if self.first is None:
            self.first = time.monotonic()
        self.parts.append(piece)
        return piece

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _sampling(args: SamplingOptions) -> dict[str, Any]:
    """The sampling fields llama-server's /completion and /v1/chat/completions share."""
    body: dict[str, Any] = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "seed": -1 if args.seed is None else args.seed,
        "stop": list(args.stop),
    }
    if args.grammar is not None:
        body["grammar"] = args.grammar
    return body


def _completion_body(prompt: str, args: SamplingOptions) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "cache_prompt": True,
        "n_predict": args.max_tokens,
        **_sampling(args),
        "ignore_eos": args.ignore_eos,
    }


def _connection_broke(exc: InferenceError) -> bool:
    """Whether ``exc`` is a connection that failed or broke off (not an HTTP error or a timeout)."""
    import requests

    cause = exc.__cause__
    return isinstance(cause, requests.RequestException) and not isinstance(cause, requests.Timeout)
