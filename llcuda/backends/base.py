"""What :class:`llcuda.engine.InferenceEngine` asks of a backend, whichever runs the model.

- :mod:`llcuda.backends.llama_server`: a server in a child process over loopback HTTP: ``llcuda serve``
  (llcuda's engine; the default) or llama.cpp's ``llama-server``; crash isolation and restarts.
- :mod:`llcuda.backends.inprocess`: llcuda's engine in this process (:mod:`llcuda.libllama.engine`), no HTTP.

The engine checks the arguments once (into :class:`~llcuda.options.SamplingOptions`), picks the
backend and owns the metrics recorder; a backend loads the model and runs the requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from llcuda.options import SamplingOptions
from llcuda.results import InferResult, TokenStream


class Backend(Protocol):
    """What the engine asks of a backend. Prompts, messages and texts arrive validated."""

    model_name: str | None
    model_path: Path | None
    load_seconds: float | None
    load_timings: dict[str, float]

    @property
    def load(self) -> Callable[..., None]:
        """``load(model, *, offline, gpu_layers, ...)``: the backend's own options, checked by the engine."""
        ...

    @property
    def is_loaded(self) -> bool: ...

    def unload(self) -> None: ...

    def infer(self, prompt: str, args: SamplingOptions) -> InferResult: ...

    def infer_stream(self, prompt: str, args: SamplingOptions) -> TokenStream: ...

    def chat(
        self, messages: list[dict[str, Any]], args: SamplingOptions, stream: bool
    ) -> InferResult | TokenStream: ...

    def batch_infer(self, prompts: list[str], args: SamplingOptions, max_workers: int | None) -> list[InferResult]: ...

    def embed(self, texts: list[str]) -> list[list[float]]: ...

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, tokens: list[int]) -> str: ...

    def health(self) -> dict[str, Any]: ...

    def server_metrics(self) -> dict[str, float]:
        """The server's own counters for ``get_metrics()`` (empty where there are none)."""
        ...

    def reset_stats(self) -> None: ...

    def describe(self) -> str:
        """Where the model runs, for ``repr(engine)``."""
        ...
