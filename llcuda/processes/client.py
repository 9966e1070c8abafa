"""HTTP client for llama-server: completion, chat, SSE streaming, embeddings, tokenize, health, metrics.

One ``requests.Session`` per client. Every ``requests`` exception and HTTP error is
converted here, once, into llcuda's errors. Only connection failures (the request never
reached the server) and 429/503 answers are retried, with capped exponential backoff.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from typing import Any

from llcuda.errors import InferenceError, RequestTimeoutError

log = logging.getLogger(__name__)

MAX_RETRIES = 3
RETRY_BASE_DELAY_S = 0.25
RETRY_MAX_DELAY_S = 4.0
RETRY_STATUS = frozenset({429, 503})
CONNECT_TIMEOUT_S = 5.0
POOL_SIZE = 128


def _backoff(attempt: int) -> float:
    delay = min(RETRY_MAX_DELAY_S, RETRY_BASE_DELAY_S * (2 ** (attempt - 1)))
    return delay * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not security


def _server_message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message", error))
        if error:
            return str(error)
    return str(body)[:500]


class LlamaClient:
    """Talks to one llama-server at ``base_url``."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 600.0) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = base_url.startswith("https://")  # no proxy for loopback servers
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"

    def close(self) -> None:
        self._session.close()

    # -- the one place requests is called -----------------------------------------------------
    def _request(
        self, method: str, path: str, *, json_body: Any = None, stream: bool = False, timeout: float | None = None
    ) -> Any:
        import requests

        url = f"{self.base_url}{path}"
        read_timeout = timeout if timeout is not None else self.timeout
        for attempt in range(1, MAX_RETRIES + 2):
            try:
                response = self._session.request(
                    method,
                    url,
                    json=json_body,
                    stream=stream,
                    timeout=(CONNECT_TIMEOUT_S, read_timeout),
                    # llama-server closes the connection after a stream although it announces keep-alive;
                    # pooled, it would fail the next request with RemoteDisconnected. Never pool it.
                    headers={"Connection": "close"} if stream else None,
                )
            except requests.exceptions.ConnectionError as exc:
                if attempt <= MAX_RETRIES and _never_sent(exc):
                    time.sleep(_backoff(attempt))
                    continue
                raise InferenceError(
                    f"{method} {url} failed: cannot reach llama-server ({type(exc).__name__}). "
                    "Is it running? InferenceEngine restarts a server it owns on the next call."
                ) from exc
            except requests.exceptions.Timeout as exc:
                raise RequestTimeoutError(
                    f"{method} {url} got no answer within {read_timeout:.0f} s; raise request_timeout "
                    "(or LLCUDA_REQUEST_TIMEOUT), or ask for fewer tokens."
                ) from exc
            except requests.RequestException as exc:
                raise InferenceError(f"{method} {url} failed: {exc}") from exc
            if response.status_code in RETRY_STATUS and attempt <= MAX_RETRIES:
                response.close()
                time.sleep(_backoff(attempt))
                continue
            if response.status_code >= 400:
                message = _server_message(response)
                response.close()
                hint = " (check the API key)" if response.status_code == 401 else ""
                raise InferenceError(
                    f"llama-server answered {response.status_code} to {method} {path}: {message}{hint}",
                    status_code=response.status_code,
                    server_message=message,
                )
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        response = self._request(method, path, json_body=body, timeout=timeout)
        try:
            raw = response.content
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InferenceError(f"llama-server sent invalid UTF-8 in its answer to {path}: {exc}") from exc
        except ValueError as exc:
            raise InferenceError(f"llama-server sent a non-JSON answer to {path}: {raw[:200]!r}") from exc

    def _object(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> dict[str, Any]:
        data = self._json(method, path, body, timeout)
        if not isinstance(data, dict):
            raise _unexpected(path, data, "a JSON object")
        return data

    def _sse(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """POST and yield each server-sent event's JSON as it arrives."""
        response = self._request("POST", path, json_body=body, stream=True)
        try:
            for raw_line in response.iter_lines(chunk_size=None):
                if not raw_line:
                    continue
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InferenceError(f"llama-server streamed invalid UTF-8 on {path}: {exc}") from exc
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError as exc:
                    raise InferenceError(f"llama-server streamed a malformed event on {path}: {data[:200]!r}") from exc
                if not isinstance(event, dict):
                    raise _unexpected(path, event, "a JSON object per event")
                if isinstance(event, dict) and "error" in event:
                    message = _server_message_from(event)
                    raise InferenceError(f"llama-server failed mid-stream on {path}: {message}", server_message=message)
                yield event
        except InferenceError:
            raise
        except Exception as exc:  # requests' ChunkedEncodingError etc.: the server went away mid-stream
            import requests

            if isinstance(exc, requests.RequestException):
                raise InferenceError(f"the stream from {path} broke off: {type(exc).__name__}: {exc}") from exc
            raise
        finally:
            response.close()

    # -- endpoints ---------------------------------------------------------------------------
    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        return self._object("GET", "/health", timeout=timeout)

    def props(self) -> dict[str, Any]:
        return self._object("GET", "/props")

    def slots(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/slots"))

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._object("POST", "/completion", dict(body, stream=False))

    def completion_stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return self._sse("/completion", dict(body, stream=True))

    def text_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's ``/v1/completions`` (llcuda serve's raw-text endpoint)."""
        data = self._object("POST", "/v1/completions", dict(body, stream=False))
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _unexpected("/v1/completions", data, "choices[0].text")
        return data

    def text_completion_stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return self._sse("/v1/completions", dict(body, stream=True))

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        data = self._object("POST", "/v1/chat/completions", dict(body, stream=False))
        choices = data.get("choices")
        if not (
            isinstance(choices, list)
            and choices
            and isinstance(choices[0], dict)
            and isinstance(choices[0].get("message"), dict)
        ):
            raise _unexpected("/v1/chat/completions", data, "choices[0].message")
        return data

    def chat_stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return self._sse("/v1/chat/completions", dict(body, stream=True))

    def embeddings(self, texts: list[str]) -> list[list[float]]:
        body = self._object("POST", "/v1/embeddings", {"input": texts})
        try:
            data = sorted(body["data"], key=lambda item: item["index"])
            return [list(item["embedding"]) for item in data]
        except (KeyError, TypeError) as exc:
            raise _unexpected("/v1/embeddings", body, "data[] with index and embedding") from exc

    def tokenize(self, text: str) -> list[int]:
        body = self._object("POST", "/tokenize", {"content": text})
        if not isinstance(body.get("tokens"), list):
            raise _unexpected("/tokenize", body, "tokens")
        return list(body["tokens"])

    def detokenize(self, tokens: list[int]) -> str:
        body = self._object("POST", "/detokenize", {"tokens": tokens})
        if not isinstance(body.get("content"), str):
            raise _unexpected("/detokenize", body, "content")
        return str(body["content"])

    def metrics(self) -> dict[str, float]:
        """llama-server's Prometheus metrics as {name: value} (``llamacpp:`` prefix dropped)."""
        response = self._request("GET", "/metrics", timeout=10.0)
        return parse_prometheus(response.text)


def _unexpected(path: str, data: Any, expected: str) -> InferenceError:
    return InferenceError(
        f"llama-server sent an answer to {path} without {expected}: {str(data)[:200]!r}. Is the URL a "
        "llama-server of the build llcuda expects?"
    )


def _server_message_from(event: dict[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)


def _never_sent(exc: Exception) -> bool:
    """True when a ConnectionError happened before the request reached the server (safe to retry)."""
    text = repr(exc).lower()
    return "refused" in text or "newconnectionerror" in text or "name or service" in text


def parse_prometheus(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        name = parts[0].split("{", 1)[0].removeprefix("llamacpp:")
        try:
            values[name] = float(parts[1])
        except ValueError:
            continue
    return values
