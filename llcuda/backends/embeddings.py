"""An embeddings-only llama-server for a model, started on first use by either backend."""

from __future__ import annotations

import threading
from dataclasses import replace

from llcuda.processes.client import LlamaClient
from llcuda.processes.llama_server import LlamaServer, ServerSettings
from llcuda.system.binaries import Binaries

EMBED_MAX_CTX = 8192  # an embeddings server needs no long context


class EmbeddingServer:
    """A second llama-server (``--embeddings``, one slot) for the model of ``base`` settings."""

    def __init__(self, *, api_key: str | None, request_timeout: float, start_timeout: float) -> None:
        self._api_key = api_key
        self._request_timeout = request_timeout
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._server: LlamaServer | None = None
        self._client: LlamaClient | None = None

    def client(self, base: ServerSettings, binaries: Binaries) -> LlamaClient:
        """The client of the running embeddings server; starts (or restarts) it when needed."""
        with self._lock:
            if self._server is None or self._client is None or not self._server.is_running():
                # A generative model has no pooling of its own; mean pooling gives one vector per text.
                settings = replace(
                    base,
                    embeddings=True,
                    port=None,
                    n_parallel=1,
                    pooling=base.pooling or "mean",
                    ctx_size=min(base.ctx_size or EMBED_MAX_CTX, EMBED_MAX_CTX),
                    backend_sampling=False,
                )
                server = LlamaServer(settings, binaries=binaries)
                server.start(self._start_timeout)
                if self._client is not None:
                    self._client.close()
                self._server = server
                self._client = LlamaClient(server.url, api_key=self._api_key, timeout=self._request_timeout)
            return self._client

    def close(self) -> None:
        """Stop the server (if one was started) and close its client."""
        with self._lock:
            if self._server is not None:
                self._server.stop()
            if self._client is not None:
                self._client.close()
            self._server = self._client = None
