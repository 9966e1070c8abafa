"""The two ways :class:`llcuda.engine.InferenceEngine` runs a model, behind one interface.

- :mod:`llcuda.backends.server`: llama-server in a child process, over loopback HTTP (the default):
  crash isolation, restarts, the OpenAI API.
- :mod:`llcuda.backends.inprocess`: libllama in this process (:mod:`llcuda.inprocess`): the fastest decode.

The engine checks the arguments once (into :class:`GenerationArgs`), picks the backend and owns
the metrics recorder; a backend loads the model and runs the requests. Both start an
embeddings-only llama-server on demand (:mod:`llcuda.backends.embeddings`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from .. import validation
from ..stream import TokenStream
from ..types import InferResult


@dataclass(frozen=True)
class GenerationArgs:
    """The checked options of one generation (defaults: those of ``InferenceEngine.infer``)."""

    max_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    seed: int | None = None  # None: a random seed
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @classmethod
    def checked(cls, max_tokens: int = 128, temperature: float = 0.7, top_p: float = 0.95, top_k: int = 40,
                seed: int | None = None, stop: str | Sequence[str] | None = None,
                ignore_eos: bool = False) -> GenerationArgs:
        """Validated options; ConfigError names the first bad one."""
        max_tokens = validation.max_tokens(max_tokens)
        temperature, top_p, top_k, seed = validation.sampling(temperature, top_p, top_k, seed)
        return cls(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                   stop=tuple(validation.stop(stop)), ignore_eos=bool(ignore_eos))


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

    def infer(self, prompt: str, args: GenerationArgs) -> InferResult: ...

    def infer_stream(self, prompt: str, args: GenerationArgs) -> TokenStream: ...

    def chat(self, messages: list[dict[str, Any]], args: GenerationArgs,
             stream: bool) -> InferResult | TokenStream: ...

    def batch_infer(self, prompts: list[str], args: GenerationArgs,
                    max_workers: int | None) -> list[InferResult]: ...

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
