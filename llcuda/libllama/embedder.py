"""Pooled embeddings from a model already loaded in this process: a second llama context beside the
batcher's, created with ``embeddings=true``.

The model's own pooling is used where it has one (embedding models); a generative model has none, so
its token vectors are averaged (mean pooling, as llcuda's embeddings server does). Vectors come back
L2-normalised, as OpenAI's and llama-server's do. One text at a time, under a lock: the context
holds one sequence.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

from llcuda.errors import ConfigError, InferenceError, LlcudaError
from llcuda.libllama.bindings import POOLING_MEAN, POOLING_NONE, log_tail, new_batch
from llcuda.system.cpu import physical_cores

log = logging.getLogger(__name__)

MAX_EMBED_CTX = 8192  # tokens of one input; an embeddings context needs no longer one


class Embedder:
    """Embeds token lists with ``model`` (a loaded ``llama_model``); :meth:`close` frees its context."""

    def __init__(self, lib: Any, model: Any, n_ctx: int, threads: int | None = None) -> None:
        self._lib, self._model = lib, model
        self.n_ctx = min(n_ctx, MAX_EMBED_CTX)
        self._lock = threading.Lock()
        self._encode = bool(lib.llama_model_has_encoder(model)) and not lib.llama_model_has_decoder(model)
        self.n_embd = int(lib.llama_model_n_embd(model))
        self._ctx = self._new_context(-1, threads)  # the model's own pooling, if it has one
        if lib.llama_pooling_type(self._ctx) == POOLING_NONE:
            lib.llama_free(self._ctx)
            self._ctx = self._new_context(POOLING_MEAN, threads)
        self._mem = lib.llama_get_memory(self._ctx)
        self._arrays = new_batch(self.n_ctx)

    def _new_context(self, pooling: int, threads: int | None) -> Any:
        lib = self._lib
        cparams = lib.llama_context_default_params()
        # The whole input in one micro-batch: pooling (and a non-causal model) sees every token at once.
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = self.n_ctx
        cparams.n_seq_max = 1
        cparams.embeddings = True
        cparams.pooling_type = pooling
        cparams.no_perf = True
        cparams.n_threads = cparams.n_threads_batch = threads or physical_cores()
        ctx = lib.llama_init_from_model(self._model, cparams)
        if not ctx:
            raise LlcudaError(
                "libllama could not create an embeddings context (out of memory? load with a "
                f"smaller ctx_size). Its log ends:\n{log_tail()}"
            )
        return ctx

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """One L2-normalised vector per token list. Thread-safe (one input at a time)."""
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise ConfigError(f"input {i} has no tokens; give it some text.")
            if len(tokens) > self.n_ctx:
                raise ConfigError(
                    f"input {i} has {len(tokens)} tokens, more than the {self.n_ctx} an embeddings "
                    "context takes; shorten it."
                )
        with self._lock:
            if self._ctx is None:
                raise LlcudaError("the embeddings context was closed; load the model again.")
            return [self._embed_one(list(tokens)) for tokens in inputs]

    def _embed_one(self, tokens: list[int]) -> list[float]:
        lib, arrays, n = self._lib, self._arrays, len(tokens)
        lib.llama_memory_clear(self._mem, True)
        arrays.token[:n] = tokens
        arrays.pos[:n] = list(range(n))
        arrays.seq[:n] = [0] * n
        arrays.logits[:n] = [1] * n  # pooling reads every token's output
        arrays.batch.n_tokens = n
        rc = (lib.llama_encode if self._encode else lib.llama_decode)(self._ctx, arrays.batch)
        if rc != 0:
            raise InferenceError(f"computing an embedding of {n} tokens failed with code {rc}.", log_tail=log_tail())
        vector = lib.llama_get_embeddings_seq(self._ctx, 0)
        if not vector:
            raise InferenceError("libllama returned no pooled embedding.", log_tail=log_tail())
        values = vector[: self.n_embd]
        norm = math.sqrt(sum(v * v for v in values))
        return [v / norm for v in values] if norm > 0 else values

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.llama_free(self._ctx)
            self._ctx = None
