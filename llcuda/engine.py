"""InferenceEngine: the Python API, composed of bootstrap, models, server and client.

    engine = InferenceEngine()                      # or InferenceEngine(backend="inprocess")
    engine.load_model("gemma-3-1b-Q4_K_M")
    print(engine.infer("Hello!", max_tokens=50).text)

Two backends run the model: "server" (llama-server in a child process, over loopback HTTP; the
default; :mod:`llcuda.backends.llama_server`) and "inprocess" (libllama in this process,
:mod:`llcuda.backends.inprocess`; the fastest decode). This module checks the arguments, picks
the backend and keeps the request metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, overload

from llcuda import config
from llcuda import options as validation
from llcuda.backends.base import Backend
from llcuda.backends.inprocess import InProcessBackend
from llcuda.backends.llama_server import ServerBackend
from llcuda.errors import ConfigError, LlcudaError
from llcuda.libllama.bindings import SERVER_LOAD_MODES
from llcuda.metrics import MetricsRecorder
from llcuda.options import GenerationArgs
from llcuda.processes.llama_server import LlamaServer
from llcuda.results import InferResult, MetricsSnapshot, TokenStream
from llcuda.system.binaries import Binaries

__all__ = ["InferenceEngine", "TokenStream"]

log = logging.getLogger(__name__)

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
        url = server_url or config.server_url()
        if self.backend == "inprocess":
            for name, value in (("server_url", url), ("api_key", api_key)):
                if value:
                    raise ConfigError(f"{name} is an option of the server backend; the in-process backend runs no "
                                      "server. Use InferenceEngine(backend='server') (or unset LLCUDA_SERVER_URL).")
        self._metrics = MetricsRecorder()
        self._load_mode: str | None = None
        common: dict[str, Any] = {"api_key": config.api_key(api_key), "request_timeout": config.request_timeout(request_timeout),
                  "start_timeout": config.server_start_timeout(start_timeout), "binaries": binaries,
                  "metrics": self._metrics}
        self._backend: Backend = (InProcessBackend(**common) if self.backend == "inprocess"
                                  else ServerBackend(server_url=url, **common))

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
        load_mode: str | None = None,
    ) -> InferenceEngine:
        """Resolve ``model`` (registry name, path, ``hf://repo/file.gguf``, URL; default
        ``LLCUDA_DEFAULT_MODEL`` or Gemma-3-270M), validate it, and start llama-server.

        Replaces a model loaded before. Returns the engine, so calls can be chained.

        ``host`` other than a loopback address needs an API key (``api_key`` / ``LLCUDA_API_KEY``) or
        ``allow_unauthenticated=True``: anyone who can reach the port could use the model.

        Several devices: ``split_mode`` ('layer', 'row', 'tensor', 'none'), ``tensor_split`` (one
        proportion per device; default: by free memory) and ``main_gpu`` spread the model over GPUs
        (see :mod:`llcuda.system.placement`); ``rpc=["host:port", ...]`` adds the devices of RPC workers
        (``llcuda rpc-worker``, see :mod:`llcuda.processes.rpc_worker`), which are checked for reachability first.

        With ``backend="inprocess"``: the model, context and shared options map to libllama's
        parameters, sampling always runs on the device, ``kv_unified=True`` shares one KV cache
        among the sequences, and the server-only options (``host``, ``port``,
        ``allow_unauthenticated``, ``rpc``, ``extra_args``, ``embeddings``) raise ConfigError.
        ``load_timings`` then holds the seconds of each loading phase.

        ``load_mode``: how llama.cpp reads the weights: "auto" (its default: mmap), "mmap", "none"
        (plain reads; with CUDA, asynchronous uploads through pinned buffers, often faster for a fully
        offloaded model) or "direct_io"; default ``LLCUDA_LOAD_MODE``, else "auto". The server
        backend passes it as ``--load-mode``.
        """
        mode = config.load_mode(load_mode)
        if self.backend == "inprocess":
            server_only = {"host": host != "127.0.0.1", "port": port is not None, "rpc": bool(rpc),
                           "allow_unauthenticated": allow_unauthenticated, "extra_args": bool(extra_args),
                           "embeddings": embeddings}
            for name, used in server_only.items():
                if used:
                    hint = " (embed() starts an embeddings server by itself)" if name == "embeddings" else ""
                    raise ConfigError(f"{name} is an option of the server backend; the in-process backend runs no "
                                      f"server{hint}. Use InferenceEngine(backend='server') for it.")
            options: dict[str, Any] = {"kv_unified": kv_unified, "load_mode": mode}
        else:
            if kv_unified:
                raise ConfigError("kv_unified is an option of the in-process backend; for llama-server pass "
                                  "extra_args=['--kv-unified'].")
            if isinstance(self._backend, ServerBackend) and self._backend.external_url:
                raise ConfigError(
                    f"this engine uses the running server at {self._backend.external_url}; create "
                    "InferenceEngine() without server_url to load a model of your own."
                )
            options = {"host": host, "port": port, "allow_unauthenticated": allow_unauthenticated,
                       "embeddings": embeddings, "rpc": rpc, "backend_sampling": backend_sampling,
                       "extra_args": tuple(extra_args) + (
                           ("--load-mode", SERVER_LOAD_MODES[mode]) if mode != config.DEFAULT_LOAD_MODE else ())}
        validation.integer(gpu_layers, "gpu_layers", -1, 100_000)
        self._backend.load(
            model if model is not None else config.default_model(), offline=offline, pooling=pooling,
            gpu_layers=gpu_layers, ctx_size=ctx_size, n_parallel=n_parallel, flash_attn=flash_attn, threads=threads,
            batch_size=batch_size, ubatch_size=ubatch_size, split_mode=split_mode, tensor_split=tensor_split,
            main_gpu=main_gpu, **options)
        self._load_mode = mode
        return self

    @property
    def is_loaded(self) -> bool:
        return self._backend.is_loaded

    @property
    def url(self) -> str:
        if not isinstance(self._backend, ServerBackend):
            raise LlcudaError("the in-process backend has no URL; use InferenceEngine(backend='server') for one.")
        return self._backend.url

    @property
    def inprocess_stats(self) -> dict[str, float]:
        """In-process backend: decode steps, tokens, sampler-chain changes, and seconds spent in the
        ``llama_decode`` call, waiting for the device and in Python since load or ``reset_metrics()``."""
        if not isinstance(self._backend, InProcessBackend):
            raise LlcudaError("this engine uses the server backend; in-process details need backend='inprocess'.")
        return self._backend.stats

    @property
    def server(self) -> LlamaServer | None:
        return self._backend.server if isinstance(self._backend, ServerBackend) else None

    # Set by load_model() and kept after unload().
    @property
    def model_name(self) -> str | None:
        return self._backend.model_name

    @property
    def model_path(self) -> Path | None:
        return self._backend.model_path

    @property
    def load_seconds(self) -> float | None:
        return self._backend.load_seconds

    @property
    def load_timings(self) -> dict[str, float]:
        return self._backend.load_timings

    @property
    def load_mode(self) -> str | None:
        """How llama.cpp read the weights of the last model loaded ("auto", "mmap", "none", "direct_io")."""
        return self._load_mode

    def unload(self) -> None:
        """Stop the servers this engine started (or free the in-process model, failing its queued
        requests). The engine can load another model afterwards."""
        self._backend.unload()

    close = unload

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unload()

    # -- generation --------------------------------------------------------------------------
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
        prompt = validation.prompt(prompt)
        return self._backend.infer(prompt, GenerationArgs.checked(max_tokens, temperature, top_p, top_k, seed, stop,
                                                                  ignore_eos))

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
        prompt = validation.prompt(prompt)
        return self._backend.infer_stream(prompt, GenerationArgs.checked(max_tokens, temperature, top_p, top_k, seed,
                                                                         stop, ignore_eos))

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
        args = GenerationArgs.checked(max_tokens, temperature, top_p, top_k, seed, stop)
        return self._backend.chat(validation.messages(messages), args, stream)

    # -- batches, embeddings, tokens, metrics ------------------------------------------------
    def batch_infer(self, prompts: Iterable[str], max_workers: int | None = None, **kwargs: Any) -> list[InferResult]:
        """Run ``infer`` on every prompt concurrently; the server decodes up to ``n_parallel`` together.

        Results come back in the order of ``prompts``. Requests beyond the slots queue in the server.
        In-process, every prompt is submitted at once (``max_workers`` is not needed).
        ``kwargs`` are :meth:`infer`'s options.
        """
        items = [validation.prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        if not items:
            return []
        unknown = set(kwargs) - {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos"}
        if unknown:
            message = f"batch_infer() got unexpected options: {', '.join(sorted(unknown))}."
            raise ConfigError(message) if self.backend == "inprocess" else TypeError(message)
        return self._backend.batch_infer(items, GenerationArgs.checked(**kwargs), max_workers)

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
        return self._backend.embed(batch)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as llama-server's /tokenize gives them (no BOS; special tokens parsed)."""
        return self._backend.tokenize(validation.prompt(text, "text"))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._backend.detokenize(list(tokens))

    def health(self) -> dict[str, Any]:
        return self._backend.health()

    def get_metrics(self) -> MetricsSnapshot:
        """Latency percentiles and throughput of this engine's requests, plus the server's own counters."""
        return self._metrics.snapshot(self._backend.server_metrics())

    def reset_metrics(self) -> None:
        self._metrics.reset()
        self._backend.reset_stats()

    def __repr__(self) -> str:
        return f"<InferenceEngine model={self.model_name!r} {self._backend.describe()}>"
