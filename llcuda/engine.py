"""InferenceEngine: the Python API, one facade over three backends.

    engine = InferenceEngine()                      # llcuda's engine in a `llcuda serve` child process
    engine.load_model("gemma-3-1b-Q4_K_M")
    print(engine.infer("Hello!", max_tokens=50).text)

Backends (``backend=`` or ``LLCUDA_BACKEND``): ``"serve"`` (the default with a GPU: llcuda's engine in a
child process over loopback HTTP, with crash isolation and restarts), ``"inprocess"`` (the same engine in
this process, no HTTP; the default of a CPU-only build) and ``"llama-server"`` (llama.cpp's own server,
for its tool-call parsing, multimodal models and web UI). They take the same options
(:class:`llcuda.options.LoadOptions`, :class:`llcuda.options.SamplingOptions`) with the same defaults.
This module checks the arguments, picks the backend and keeps the request metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, overload

from llcuda import config
from llcuda import options as checks
from llcuda.backends.base import Backend
from llcuda.backends.inprocess import InProcessBackend
from llcuda.backends.llama_server import ServerBackend
from llcuda.errors import BinaryNotFoundError, ConfigError, LlcudaError
from llcuda.metrics import MetricsRecorder
from llcuda.options import CHAT_MAX_TOKENS, LoadOptions, SamplingOptions, load_option_names, sampling_option_names
from llcuda.processes.llama_server import LlamaServer
from llcuda.results import InferResult, MetricsSnapshot, TokenStream
from llcuda.system import gpu
from llcuda.system.binaries import Binaries, find_binaries

__all__ = ["InferenceEngine", "TokenStream"]

log = logging.getLogger(__name__)

_D = SamplingOptions()


def _llama_runs_on_gpu(binaries: Binaries | None) -> bool:
    """Whether the llama.cpp build this engine would load runs on a GPU here: not a CPU-only build, and an
    NVIDIA GPU visible. Binaries not found count as a GPU build: ``load_model`` says where it looked."""
    try:
        found = binaries or find_binaries()
    except BinaryNotFoundError:
        return True
    return found.build_info.get("backend") != "cpu" and bool(gpu.detect().gpus)


class InferenceEngine:
    """Runs a GGUF model and generates text.

    Args:
        server_url: use an already-running OpenAI-compatible llcuda or llama-server instead of starting
            one (default: ``LLCUDA_SERVER_URL``, else none).
        backend: ``"serve"`` (llcuda's engine in a child process: crash isolation, restarts, the
            OpenAI API), ``"inprocess"`` (the same engine in this process: no HTTP) or
            ``"llama-server"`` (llama.cpp's server); default ``LLCUDA_BACKEND``, else ``"serve"`` where
            llama.cpp runs on a GPU and ``"inprocess"`` on a CPU-only build (there the HTTP layer would compete
            with the compute threads for the cores).
        api_key: key for that server, or for servers this engine starts (default: ``LLCUDA_API_KEY``).
        request_timeout: seconds one request may take in all (default: ``LLCUDA_REQUEST_TIMEOUT`` or 600).
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
        url = server_url or config.server_url()
        # a server URL means a server backend; otherwise the default follows where llama.cpp will run
        self.backend = config.backend(backend, on_gpu=None if url else lambda: _llama_runs_on_gpu(binaries))
        if self.backend == "inprocess":
            for name, value in (("server_url", url), ("api_key", api_key)):
                if value:
                    raise ConfigError(
                        f"{name} is an option of the server backends; the in-process backend runs "
                        "no server. Use InferenceEngine() (or unset LLCUDA_SERVER_URL)."
                    )
        self._metrics = MetricsRecorder()
        common: dict[str, Any] = {
            "api_key": config.api_key(api_key),
            "request_timeout": config.request_timeout(request_timeout),
            "start_timeout": config.server_start_timeout(start_timeout),
            "binaries": binaries,
            "metrics": self._metrics,
        }
        self._backend: Backend = (
            InProcessBackend(**common)
            if self.backend == "inprocess"
            else ServerBackend(server_url=url, kind=self.backend, **common)
        )
        self._options: LoadOptions | None = None

    # -- loading -----------------------------------------------------------------------------
    def load_model(
        self,
        model: str | Path | None = None,
        options: LoadOptions | None = None,
        *,
        offline: bool | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        allow_unauthenticated: bool = False,
        rpc: Sequence[str] | None = None,
        backend_sampling: bool = False,
        extra_args: Sequence[str] = (),
        **load_options: Any,
    ) -> InferenceEngine:
        """Resolve ``model`` (registry name, path, ``owner/repo:QUANT``, ``hf://…``, URL; default
        ``LLCUDA_DEFAULT_MODEL`` or Gemma-3-270M), check it and the GPUs, and load it.

        ``options`` and the keyword arguments named like its fields (``gpu_layers``, ``ctx_size``,
        ``n_parallel``, ``kv_unified``, ``flash_attn``, ``threads``, ``batch_size``, ``ubatch_size``,
        ``split_mode``, ``tensor_split``, ``main_gpu``, ``load_mode``, ``embeddings``, ``pooling``) are
        :class:`~llcuda.options.LoadOptions`: the same defaults for every backend. Replaces a model
        loaded before, once the new one passed its checks. Returns the engine, so calls can be chained.

        Server backends only: ``host`` other than a loopback address needs an API key (``api_key`` /
        ``LLCUDA_API_KEY``) or ``allow_unauthenticated=True``; ``port`` (default: a free one).
        ``backend="llama-server"`` only: ``rpc=["host:port", ...]`` adds the devices of RPC workers
        (``llcuda rpc-worker``), ``backend_sampling`` samples on the GPU, ``extra_args`` go to
        llama-server as they are.
        """
        unknown = set(load_options) - set(load_option_names())
        if unknown:
            raise ConfigError(
                f"load_model() got unknown options: {', '.join(sorted(unknown))}. Load options are "
                f"{', '.join(load_option_names())}."
            )
        if "tensor_split" in load_options:  # any sequence (or None) in, the options' tuple out
            load_options["tensor_split"] = tuple(load_options["tensor_split"] or ())
        opts = (options or LoadOptions()).replace(**load_options)  # checked
        server_only = {
            "host": host != "127.0.0.1",
            "port": port is not None,
            "allow_unauthenticated": allow_unauthenticated,
        }
        llama_server_only = {"rpc": bool(rpc), "backend_sampling": backend_sampling, "extra_args": bool(extra_args)}
        if self.backend == "inprocess":
            for name, used in {**server_only, **llama_server_only}.items():
                if used:
                    raise ConfigError(
                        f"{name} is an option of the server backends; the in-process backend runs no "
                        "server. Use InferenceEngine() or InferenceEngine(backend='llama-server')."
                    )
            self._backend.load(model if model is not None else config.default_model(), opts, offline=offline)
        else:
            if self.backend == "serve":
                for name, used in llama_server_only.items():
                    if used and name != "extra_args":
                        raise ConfigError(
                            f"{name} is an option of llama-server; use InferenceEngine(backend='llama-server') for it."
                        )
            if isinstance(self._backend, ServerBackend) and self._backend.external_url:
                raise ConfigError(
                    f"this engine uses the running server at {self._backend.external_url}; create "
                    "InferenceEngine() without server_url to load a model of your own."
                )
            self._backend.load(
                model if model is not None else config.default_model(),
                opts,
                offline=offline,
                host=host,
                port=port,
                allow_unauthenticated=allow_unauthenticated,
                rpc=rpc,
                backend_sampling=backend_sampling,
                extra_args=tuple(extra_args),
            )
        self._options = opts
        return self

    @property
    def options(self) -> LoadOptions | None:
        """The load options of the last model loaded."""
        return self._options

    @property
    def is_loaded(self) -> bool:
        return self._backend.is_loaded

    @property
    def url(self) -> str:
        if not isinstance(self._backend, ServerBackend):
            raise LlcudaError("the in-process backend has no URL; use InferenceEngine() for one.")
        return self._backend.url

    @property
    def inprocess_stats(self) -> dict[str, float]:
        """In-process backend: decode steps, tokens, sampler-chain changes, and seconds spent in the
        ``llama_decode`` call, waiting for the device and in Python since load or ``reset_metrics()``."""
        if not isinstance(self._backend, InProcessBackend):
            raise LlcudaError(
                "this engine runs the model in another process; in-process details need backend='inprocess'."
            )
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
        return self._options.load_mode if self._options else None

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
        max_tokens: int = _D.max_tokens,
        temperature: float = _D.temperature,
        top_p: float = _D.top_p,
        top_k: int = _D.top_k,
        seed: int | None = _D.seed,
        stop: str | Sequence[str] | None = None,
        *,
        min_p: float = _D.min_p,
        ignore_eos: bool = _D.ignore_eos,
        grammar: str | None = None,
    ) -> InferResult:
        """Continue ``prompt`` (raw text, no chat template; special tokens in it are parsed, as
        llama-server does). ``temperature=0`` is greedy. A generation that reaches the end of the
        context stops there with ``finish_reason="length"``."""
        prompt = checks.prompt(prompt)
        return self._backend.infer(
            prompt,
            SamplingOptions.checked(max_tokens, temperature, top_p, top_k, seed, stop, ignore_eos, min_p, grammar),
        )

    def infer_stream(
        self,
        prompt: str,
        max_tokens: int = _D.max_tokens,
        temperature: float = _D.temperature,
        top_p: float = _D.top_p,
        top_k: int = _D.top_k,
        seed: int | None = _D.seed,
        stop: str | Sequence[str] | None = None,
        *,
        min_p: float = _D.min_p,
        ignore_eos: bool = _D.ignore_eos,
        grammar: str | None = None,
    ) -> TokenStream:
        """Like :meth:`infer`, but yields text pieces as they are generated."""
        prompt = checks.prompt(prompt)
        return self._backend.infer_stream(
            prompt,
            SamplingOptions.checked(max_tokens, temperature, top_p, top_k, seed, stop, ignore_eos, min_p, grammar),
        )

    # -- chat --------------------------------------------------------------------------------
    @overload
    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        max_tokens: int = ...,
        temperature: float = ...,
        top_p: float = ...,
        top_k: int = ...,
        seed: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        *,
        min_p: float = ...,
        grammar: str | None = ...,
        stream: Literal[False] = ...,
    ) -> InferResult: ...

    @overload
    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        max_tokens: int = ...,
        temperature: float = ...,
        top_p: float = ...,
        top_k: int = ...,
        seed: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        *,
        min_p: float = ...,
        grammar: str | None = ...,
        stream: Literal[True],
    ) -> TokenStream: ...

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        max_tokens: int = CHAT_MAX_TOKENS,
        temperature: float = _D.temperature,
        top_p: float = _D.top_p,
        top_k: int = _D.top_k,
        seed: int | None = _D.seed,
        stop: str | Sequence[str] | None = None,
        *,
        min_p: float = _D.min_p,
        grammar: str | None = None,
        stream: bool = False,
    ) -> InferResult | TokenStream:
        """One assistant turn for ``messages``, rendered with the model's own chat template (its
        Jinja ``tokenizer.chat_template``, as Hugging Face transformers renders it)."""
        args = SamplingOptions.checked(max_tokens, temperature, top_p, top_k, seed, stop, False, min_p, grammar)
        return self._backend.chat(checks.messages(messages), args, stream)

    # -- batches, embeddings, tokens, metrics ------------------------------------------------
    def batch_infer(self, prompts: Iterable[str], max_workers: int | None = None, **kwargs: Any) -> list[InferResult]:
        """Run ``infer`` on every prompt concurrently; the server decodes up to ``n_parallel`` together.

        Results come back in the order of ``prompts``. Requests beyond the slots queue in the server.
        In-process, every prompt is submitted at once (``max_workers`` is not needed).
        ``kwargs`` are :meth:`infer`'s options.
        """
        items = [checks.prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        if not items:
            return []
        unknown = set(kwargs) - set(sampling_option_names())
        if unknown:
            raise ConfigError(f"batch_infer() got unexpected options: {', '.join(sorted(unknown))}.")
        return self._backend.batch_infer(items, SamplingOptions.checked(**kwargs), max_workers)

    def embed(self, texts: str | Sequence[str]) -> list[list[float]]:
        """Embedding vectors for ``texts``.

        Uses the main server if it was loaded with ``embeddings=True``; otherwise starts a second,
        embeddings-only llama-server for the same model on first use.
        """
        batch = [texts] if isinstance(texts, str) else list(texts)
        for i, text in enumerate(batch):
            checks.prompt(text, f"texts[{i}]")
        if not batch:
            return []
        return self._backend.embed(batch)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as llama-server's /tokenize gives them (no BOS; special tokens parsed)."""
        return self._backend.tokenize(checks.prompt(text, "text"))

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
