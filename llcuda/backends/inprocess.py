"""The in-process backend: libllama in this process through :class:`llcuda.libllama.engine.InProcessEngine`.

Adapts that engine to the backend interface (InferenceEngine's defaults and token conventions,
which match llama-server's) and starts an embeddings-only llama-server for ``embed()``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llcuda.backends.embeddings import EmbeddingServer
from llcuda.errors import LlcudaError
from llcuda.metrics import MetricsRecorder
from llcuda.options import LoadOptions, SamplingOptions
from llcuda.processes.llama_server import ServerSettings
from llcuda.results import InferResult, TokenStream
from llcuda.system import binaries as bootstrap
from llcuda.system.binaries import Binaries

if TYPE_CHECKING:
    from llcuda.libllama.engine import InProcessEngine


class InProcessBackend:
    """One :class:`InProcessEngine` at a time; a new one for every load."""

    def __init__(
        self,
        *,
        api_key: str | None,
        request_timeout: float,
        start_timeout: float,
        binaries: Binaries | None,
        metrics: MetricsRecorder,
    ) -> None:
        self._api_key = api_key  # LLCUDA_API_KEY, for the embeddings server
        self._request_timeout = request_timeout
        self._binaries = binaries
        self._metrics = metrics
        self._lock = threading.RLock()
        self._engine: InProcessEngine | None = None
        self._embed_settings: ServerSettings | None = None  # for embed()'s llama-server
        self._embeddings = EmbeddingServer(
            api_key=api_key, request_timeout=request_timeout, start_timeout=start_timeout
        )
        self.model_name: str | None = None
        self.model_path: Path | None = None
        self.load_seconds: float | None = None
        self.load_timings: dict[str, float] = {}
        self.load_mode: str | None = None

    # -- loading -----------------------------------------------------------------------------
    def load(self, model: str | Path, options: LoadOptions, *, offline: bool | None) -> None:
        """Load ``model`` with libllama."""
        from llcuda.libllama.engine import InProcessEngine

        engine = InProcessEngine(binaries=self._binaries, request_timeout=self._request_timeout, metrics=self._metrics)
        with self._lock:
            self.unload()
            engine.load_model(model, options, offline=offline)
            if engine.model_path is None:
                raise LlcudaError("the in-process engine loaded no model; this is a bug in llcuda, please report it.")
            self._engine = engine
            self.model_name, self.model_path = engine.model_name, engine.model_path
            self.load_seconds, self.load_timings = engine.load_seconds, dict(engine.load_timings)
            self.load_mode = engine.load_mode
            self._embed_settings = ServerSettings.from_options(
                engine.model_path, options, ctx_size=engine.n_ctx_seq, alias=engine.model_name, api_key=self._api_key
            )

    @property
    def is_loaded(self) -> bool:
        return self._engine is not None

    def _local(self) -> InProcessEngine:
        """The loaded engine; raises when no model is loaded."""
        engine = self._engine
        if engine is None:
            raise LlcudaError("no model is loaded; call engine.load_model(...) first.")
        return engine

    @property
    def stats(self) -> dict[str, float]:
        return self._local().stats

    @property
    def backend_sampling(self) -> bool | None:
        return self._engine.backend_sampling if self._engine is not None else None

    def reset_stats(self) -> None:
        if self._engine is not None:
            self._engine.reset_stats()

    def unload(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.unload()
                self._engine = None
            self._embeddings.close()

    def describe(self) -> str:
        return f"in-process {'loaded' if self._engine else 'not loaded'}"

    # -- requests ----------------------------------------------------------------------------
    def infer(self, prompt: str, args: SamplingOptions) -> InferResult:
        return self._local().infer(prompt, args)

    def infer_stream(self, prompt: str, args: SamplingOptions) -> TokenStream:
        return self._local().infer_stream(prompt, args)

    def chat(self, messages: list[dict[str, Any]], args: SamplingOptions, stream: bool) -> InferResult | TokenStream:
        return self._local().chat(messages, args, stream=stream)

    def batch_infer(self, prompts: list[str], args: SamplingOptions, max_workers: int | None) -> list[InferResult]:
        """Every prompt submitted at once (``max_workers`` is not needed)."""
        return self._local().batch_infer(prompts, args)

    def embed(self, texts: list[str]) -> list[list[float]]:
        """In this process when the model was loaded with ``embeddings=True``; otherwise through an
        embeddings-only llama-server for the loaded model, started on first use."""
        engine = self._local()
        if engine.embeddings:
            return engine.embed(texts)[0]
        assert self._embed_settings is not None  # set with the engine
        client = self._embeddings.client(self._embed_settings, self._binaries or bootstrap.find_binaries())
        return list(client.embeddings(texts))

    def tokenize(self, text: str) -> list[int]:
        """As llama-server's /tokenize: no BOS, special tokens parsed."""
        return self._local().tokenize(text, add_special=False, parse_special=True)

    def detokenize(self, tokens: list[int]) -> str:
        return self._local().detokenize(tokens, special=True)

    def health(self) -> dict[str, Any]:
        return self._local().health()

    def server_metrics(self) -> dict[str, float]:
        return {}
