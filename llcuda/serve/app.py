"""The OpenAI-compatible HTTP API on llcuda's in-process engine, as a Starlette (ASGI) app.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both stream server-sent events
when asked), ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health`` (503 while the model
loads), ``GET /metrics`` (Prometheus), and llama-server's ``POST /tokenize``, ``POST /detokenize``,
``POST /apply-template`` and ``GET /props`` (which llama.cpp's chat page reads); the chat page itself
at ``/`` where its files were built.

The engine decodes in its own thread; this app only queues requests, turns tokens into text and
writes it to sockets (:mod:`llcuda.serve.streaming` wakes the event loop once per decode step).
Chat prompts are rendered with the model's Jinja template and tokenized in a worker thread.

Security: with an API key, every API path needs ``Authorization: Bearer <key>`` except ``/health``
(the chat page's static files stay public; the page asks for the key). Browsers may call the API only
from pages served by this machine (``localhost``, ``127.0.0.1``, ``[::1]`` origins, any port).
"""

from __future__ import annotations

import array
import asyncio
import base64
import hmac
import logging
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

import llcuda
from llcuda.errors import ConfigError, ContextLengthError, LlcudaError
from llcuda.libllama.chat_template import ChatTemplate
from llcuda.libllama.engine import InProcessEngine
from llcuda.libllama.request import PieceDecoder
from llcuda.libllama.request import Request as EngineRequest
from llcuda.serve import protocol
from llcuda.serve.prometheus import CONTENT_TYPE, ServeMetrics
from llcuda.serve.protocol import APIError, ChunkWriter, Generation, bad_request
from llcuda.serve.streaming import STREAM_INTERVAL_S, AsyncSink, PieceCache, StepHub
from llcuda.serve.webui import fallback_page

log = logging.getLogger(__name__)

# browsers may call the API from pages of this machine only
LOCAL_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"
PUBLIC_PATHS = frozenset({"/health", "/v1/health"})
# a model without a chat template in its GGUF is prompted in ChatML, as llama-server does
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
DEFAULT_NAMES = ("default", "")  # model values that mean "whatever this server serves"


def load_chat_template(engine: InProcessEngine) -> ChatTemplate:
    """The model's own chat template, else ChatML (with a warning)."""
    try:
        return engine.chat_template()
    except ConfigError as exc:
        log.warning("%s; chat requests use ChatML instead", exc)
        return ChatTemplate(CHATML_TEMPLATE, name=engine.model_name or "the model")


class ModelService:
    """The engine behind the app, once loaded, and what the handlers share: names, template, metrics."""

    def __init__(
        self, alias: str | None = None, max_tokens: int | None = None, stream_interval: float = STREAM_INTERVAL_S
    ) -> None:
        self.alias = alias
        self.stream_interval = stream_interval
        self.max_tokens = max_tokens  # the most tokens of one answer, whatever a request asks
        self.engine: InProcessEngine | None = None
        self.template: ChatTemplate | None = None
        self.hub: StepHub | None = None
        self.pieces: PieceCache | None = None
        self.names: frozenset[str] = frozenset()
        self.loaded_at = 0
        self.metrics = ServeMetrics(self._load)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: tuple[InProcessEngine, ChatTemplate] | None = None
        self._running: set[EngineRequest] = set()  # generations of open HTTP requests
        self.stopping = False  # the server is shutting down: no new generations

    # -- lifecycle -------------------------------------------------------------------------------
    def attach(self, engine: InProcessEngine, template: ChatTemplate | None = None) -> None:
        """Serve ``engine`` (loaded). Thread-safe: a loader thread calls it while the server answers 503."""
        pending = (engine, template or load_chat_template(engine))
        with self._lock:
            self._pending, loop = pending, self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._activate)

    def startup(self) -> None:
        """In the event loop, as the server starts."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            pending = self._pending
        if pending is not None:
            self._activate()

    def _activate(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None or self._loop is None:
            return
        engine, template = pending
        self.hub = StepHub(self._loop, self.stream_interval)
        engine.add_step_listener(self.hub.on_step)
        self.pieces = PieceCache(engine.piece)
        path = Path(str(engine.model_path))
        self.names = frozenset(n for n in (self.alias, engine.model_name, path.name, path.stem) if n)
        self.template, self.loaded_at, self.engine = template, int(time.time()), engine

    def stop_soon(self) -> None:
        """Thread- and signal-safe: from the event loop, refuse new generations and end the running ones,
        so that open responses finish (with an error) instead of holding up the server's shutdown."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._stop_generations)

    def _stop_generations(self) -> None:
        self.stopping = True
        engine = self.engine
        if engine is not None:
            for req in list(self._running):
                engine.cancel(req)

    def shutdown(self) -> None:
        engine, hub = self.engine, self.hub
        if engine is not None and hub is not None:
            engine.remove_step_listener(hub.on_step)

    @property
    def model_id(self) -> str:
        return self.alias or (self.engine.model_name if self.engine else None) or "llcuda"

    def _load(self) -> tuple[int, int] | None:
        engine = self.engine
        if engine is None:
            return None
        try:
            health = engine.health()
        except LlcudaError:
            return None
        return int(health["running"]), int(health["queued"])

    def require(self) -> InProcessEngine:
        if self.engine is None:
            raise protocol.not_loaded()
        return self.engine

    def check_model(self, body: Mapping[str, Any]) -> None:
        model = body.get("model")
        if model is None or model in DEFAULT_NAMES or model in self.names:
            return
        raise APIError(
            404,
            f"The model {model!r} does not exist; this server serves {self.model_id!r}.",
            param="model",
            code="model_not_found",
        )

    # -- prompts (in a worker thread) ------------------------------------------------------------
    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, template_kwargs: Mapping[str, Any]
    ) -> str:
        template = self.template
        if template is None:
            raise protocol.not_loaded()
        return template.render(messages, tools=tools, **template_kwargs)

    def chat_tokens(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        template_kwargs: Mapping[str, Any],
        grammar: str | None,
    ) -> list[int]:
        engine, template = self.require(), self.template
        text = self.render_chat(messages, tools, template_kwargs)
        if grammar is not None:
            engine.check_grammar(grammar)
        add_special = template.add_special(text) if template is not None else True
        return engine.tokenize(text, add_special=add_special, parse_special=True)

    def completion_tokens(self, prompt: str | list[int], grammar: str | None) -> list[int]:
        engine = self.require()
        if grammar is not None:
            engine.check_grammar(grammar)
        if isinstance(prompt, str):
            return engine.prompt_tokens(prompt)
        return engine.check_tokens(prompt)

    # -- generation ------------------------------------------------------------------------------
    def submit(self, tokens: list[int], gen: Generation, param: str, sink: AsyncSink | None) -> EngineRequest:
        engine = self.require()
        if self.stopping:
            raise APIError(
                503,
                "The server is stopping; send the request to another one.",
                type="unavailable_error",
                code="server_stopping",
            )
        n_ctx = engine.n_ctx_seq
        room = n_ctx - len(tokens)
        if room < 1:
            raise bad_request(
                f"This model's maximum context length is {n_ctx} tokens; the prompt has {len(tokens)} "
                "tokens. Shorten it.",
                param=param,
                code="context_length_exceeded",
            )
        max_tokens = min(room, gen.max_tokens or room, self.max_tokens or room)
        req = engine.submit(tokens, stream=sink, max_tokens=max_tokens, **gen.submit_kwargs())
        self._running.add(req)
        return req

    def _failure(self, error: BaseException) -> APIError:
        if self.stopping:
            return APIError(
                503,
                "The server stopped before this generation finished.",
                type="unavailable_error",
                code="server_stopping",
            )
        return APIError(500, f"Generation failed: {error}", type="server_error")

    async def generate(
        self, request: Request, endpoint: str, tokens: list[int], gen: Generation, *, chat: bool
    ) -> Response:
        rid = protocol.new_id("chatcmpl" if chat else "cmpl")
        model = self.model_id
        param = "messages" if chat else "prompt"
        if gen.stream:
            hub = self.hub
            if hub is None:
                raise protocol.not_loaded()
            sink = hub.sink()
            req = self.submit(tokens, gen, param, sink)
            writer = ChunkWriter(rid, model, chat=chat)
            outcome = _Outcome()
            return EventStream(
                self._events(req, sink, writer, gen.include_usage, outcome),
                on_close=lambda: self._stream_closed(endpoint, req, outcome),
            )
        req = self.submit(tokens, gen, param, None)
        try:
            await self._wait(request, req)
        finally:
            self._running.discard(req)
        error = req.future.exception()
        if error is not None:
            raise self._failure(error)
        result = self.require().result(req)  # done: builds the text
        self._record(req)
        build = protocol.chat_response if chat else protocol.completion_response
        return JSONResponse(
            build(
                rid,
                model,
                result.text,
                result.finish_reason,
                result.prompt_tokens,
                result.tokens_generated,
                _timings(req),
            )
        )

    async def _wait(self, request: Request, req: EngineRequest) -> None:
        """Until ``req`` ends; cancels it if the client goes away first."""
        done = asyncio.wrap_future(req.future)
        gone = asyncio.ensure_future(_disconnected(request.receive))
        finished = False
        try:
            await asyncio.wait((done, gone), return_when=asyncio.FIRST_COMPLETED)
            finished = done.done()
        finally:
            gone.cancel()
            if not finished:  # the client went away (or the server is stopping)
                done.cancel()
                self.require().cancel(req)
        if not finished:
            raise APIError(499, "The client closed the connection.", code="client_closed")

    async def _events(
        self, req: EngineRequest, sink: AsyncSink, writer: ChunkWriter, include_usage: bool, outcome: _Outcome
    ) -> AsyncGenerator[bytes, None]:
        pieces = self.pieces
        if pieces is None:
            raise protocol.not_loaded()
        decoder = PieceDecoder(req, pieces.__getitem__)
        feed = decoder.feed
        start = writer.start()
        if start is not None:
            yield start
        async for batch in sink.batches():
            text = "".join([feed(t) for t in batch if t is not None])
            if text:
                yield writer.text(text)
        error = req.future.exception()
        if error is not None:
            failure = self._failure(error)
            outcome.status = failure.status
            yield writer.error(failure)
        else:
            rest = decoder.finish()
            if rest:
                yield writer.text(rest)
            yield writer.finish(req.finish, _timings(req))
            if include_usage:
                yield writer.usage(len(req.tokens), len(req.out))
            self._record(req)
        yield protocol.DONE

    def _stream_closed(self, endpoint: str, req: EngineRequest, outcome: _Outcome) -> None:
        """However a stream's response ended: cancel its generation if it still runs (the client went
        away), and count the request."""
        if not req.future.done():
            outcome.status = 499
            engine = self.engine
            if engine is not None:
                engine.cancel(req)
        self._running.discard(req)
        self.metrics.request(endpoint, outcome.status)

    def _record(self, req: EngineRequest) -> None:
        ttft = req.first_token - req.submitted if req.first_token else None
        self.metrics.generation(len(req.tokens), len(req.out), ttft, req.done - req.submitted)


class _Outcome:
    """The HTTP status a stream's request is counted with (its headers went out with 200)."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 200


def _timings(req: EngineRequest) -> dict[str, float]:
    return protocol.timings(len(req.tokens), len(req.out), req.submitted, req.first_token, req.done)


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has gone (the request body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(StreamingResponse):
    """Server-sent events; ``on_close()`` runs however the response ends (finished, the client gone,
    the server stopping), even if the generator never started."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None], on_close: Callable[[], None]) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events, self._on_close = events, on_close

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            self._on_close()
            await self._events.aclose()


def error_response(error: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


Handler = Callable[[Request, ModelService], Awaitable[Response]]


def _endpoint(name: str, handler: Handler, service: ModelService) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` with llcuda's errors as OpenAI error bodies and the request counted in the metrics."""

    async def route(request: Request) -> Response:
        try:
            response = await handler(request, service)
        except APIError as exc:
            response = error_response(exc)
        except ContextLengthError as exc:
            response = error_response(bad_request(str(exc), code="context_length_exceeded"))
        except ConfigError as exc:
            response = error_response(bad_request(str(exc)))
        except LlcudaError as exc:
            log.warning("%s failed: %s", name, exc)
            status = 503 if service.engine is None or service.stopping else 500
            response = error_response(APIError(status, str(exc), type="server_error"))
        if not isinstance(response, EventStream):  # a stream counts itself when it ends
            service.metrics.request(name, response.status_code)
        return response

    return route


# -- handlers ------------------------------------------------------------------------------------
async def _body(request: Request) -> dict[str, Any]:
    return protocol.parse_body(await request.body())


async def chat_completions(request: Request, service: ModelService) -> Response:
    service.require()
    body = await _body(request)
    service.check_model(body)
    gen = protocol.generation(body)
    messages, tools = protocol.chat_messages(body), protocol.chat_tools(body)
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise bad_request("chat_template_kwargs must be an object.", param="chat_template_kwargs")
    tokens = await run_in_threadpool(service.chat_tokens, messages, tools, kwargs, gen.grammar)
    return await service.generate(request, "chat", tokens, gen, chat=True)


async def completions(request: Request, service: ModelService) -> Response:
    service.require()
    body = await _body(request)
    service.check_model(body)
    gen = protocol.generation(body)
    prompt = protocol.completion_prompt(body)
    tokens = await run_in_threadpool(service.completion_tokens, prompt, gen.grammar)
    return await service.generate(request, "completions", tokens, gen, chat=False)


def _float32_base64(vector: Sequence[float]) -> str:
    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


async def embeddings(request: Request, service: ModelService) -> Response:
    engine = service.require()
    body = await _body(request)
    service.check_model(body)
    inputs = protocol.embedding_inputs(body)
    if not engine.embeddings:
        raise APIError(
            501,
            "This server does not compute embeddings: start it with `llcuda serve --embeddings`.",
            type="not_supported_error",
        )
    vectors, n_tokens = await run_in_threadpool(engine.embed, inputs)
    as_base64 = body.get("encoding_format") == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": _float32_base64(v) if as_base64 else v}
        for i, v in enumerate(vectors)
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": service.model_id,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
    )


async def models(request: Request, service: ModelService) -> Response:
    engine = service.require()
    meta = {
        "n_ctx": engine.n_ctx_seq,
        "n_parallel": engine.n_parallel,
        "n_vocab": engine.n_vocab,
        "embeddings": engine.embeddings,
    }
    return JSONResponse({"object": "list", "data": [protocol.model_card(service.model_id, service.loaded_at, meta)]})


async def health(request: Request, service: ModelService) -> Response:
    engine = service.require()
    info = engine.health()  # LlcudaError (a 500) once the decode thread has stopped
    return JSONResponse(
        {
            "status": "ok",
            "model": service.model_id,
            "running": info["running"],
            "queued": info["queued"],
            "slots": info["slots"],
        }
    )


async def metrics(request: Request, service: ModelService) -> Response:
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false.", param=name)
    return value


def _piece_json(piece: bytes) -> str | list[int]:
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


async def tokenize(request: Request, service: ModelService) -> Response:
    engine = service.require()
    body = await _body(request)
    content = body.get("content")
    if not isinstance(content, str):
        raise bad_request("content must be a string.", param="content")
    add_special = _flag(body, "add_special", False)
    parse_special = _flag(body, "parse_special", True)
    tokens = await run_in_threadpool(engine.tokenize, content, add_special, parse_special)
    if _flag(body, "with_pieces", False):
        return JSONResponse({"tokens": [{"id": t, "piece": _piece_json(engine.piece(t, True))} for t in tokens]})
    return JSONResponse({"tokens": tokens})


async def detokenize(request: Request, service: ModelService) -> Response:
    engine = service.require()
    body = await _body(request)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise bad_request("tokens must be a list of token ids.", param="tokens")
    checked = engine.check_tokens(tokens, "tokens")
    return JSONResponse({"content": await run_in_threadpool(engine.detokenize, checked, True)})


async def apply_template(request: Request, service: ModelService) -> Response:
    service.require()
    body = await _body(request)
    messages, tools = protocol.chat_messages(body), protocol.chat_tools(body)
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise bad_request("chat_template_kwargs must be an object.", param="chat_template_kwargs")
    return JSONResponse({"prompt": await run_in_threadpool(service.render_chat, messages, tools, kwargs)})


async def props(request: Request, service: ModelService) -> Response:
    """llama-server's ``/props``: what llama.cpp's chat page reads at start."""
    engine = service.require()
    template = service.template
    limit = service.max_tokens or -1
    params = {
        "n_predict": limit,
        "max_tokens": limit,
        "seed": -1,
        "temperature": protocol.DEFAULT_TEMPERATURE,
        "top_k": protocol.DEFAULT_TOP_K,
        "top_p": protocol.DEFAULT_TOP_P,
        "min_p": protocol.DEFAULT_MIN_P,
        "stop": [],
        "ignore_eos": False,
        "stream": True,
        "samplers": ["top_k", "top_p", "min_p", "temperature"],
        "backend_sampling": True,
    }
    return JSONResponse(
        {
            "default_generation_settings": {
                "id": 0,
                "id_task": -1,
                "n_ctx": engine.n_ctx_seq,
                "speculative": False,
                "is_processing": False,
                "params": params,
            },
            "total_slots": engine.n_parallel,
            "model_alias": service.model_id,
            "model_path": str(engine.model_path),
            "modalities": {"vision": False, "audio": False, "video": False},
            "endpoint_slots": False,
            "endpoint_props": True,
            "endpoint_metrics": True,
            "ui": True,
            "chat_template": template.source if template else "",
            "bos_token": template.bos_token if template else "",
            "eos_token": template.eos_token if template else "",
            "build_info": f"llcuda {llcuda.__version__}",
            "is_sleeping": False,
        }
    )


async def stream_sessions(request: Request, service: ModelService) -> Response:
    """llama-server's resumable streams: the chat page asks which of its conversations still stream.
    This server keeps no stream sessions (a client that leaves cancels its generation): none."""
    await _body(request)
    return JSONResponse([])


async def tools(request: Request, service: ModelService) -> Response:
    """llama-server's built-in tools for the chat page, which this server does not run."""
    raise APIError(
        403, "This server runs no tools; the chat works without them.", type="permission_error", code="tools_disabled"
    )


# -- security ------------------------------------------------------------------------------------
class BearerAuth:
    """ASGI middleware: requests need ``Authorization: Bearer <key>``, except ``/health``, CORS
    preflights (which carry no credentials) and GETs of the chat page's static files (any GET outside
    the API's paths)."""

    def __init__(self, app: ASGIApp, api_key: str | None, api_paths: frozenset[str]) -> None:
        self.app = app
        self._key = api_key.encode("utf-8") if api_key else None
        self._api_paths = api_paths

    def _protected(self, method: str, path: str) -> bool:
        if path in PUBLIC_PATHS or method == "OPTIONS":
            return False
        return method not in ("GET", "HEAD") or path in self._api_paths or path.startswith("/v1/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._key is not None and scope["type"] == "http" and self._protected(scope["method"], scope["path"]):
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    given = value
                    break
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
                error = APIError(
                    401,
                    "Missing or wrong API key: send the header 'Authorization: Bearer <key>' with "
                    "the key the server was started with.",
                    code="invalid_api_key",
                )
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = {
        404: f"No such endpoint: {request.method} {request.url.path}.",
        405: f"{request.method} is not allowed on {request.url.path}.",
    }.get(status, str(exc))
    return error_response(
        APIError(
            status,
            message,
            type="invalid_request_error" if status < 500 else "server_error",
            code="not_found" if status == 404 else None,
        )
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        APIError(500, f"Internal server error ({type(exc).__name__}); see the server's log.", type="server_error")
    )


# -- the app -------------------------------------------------------------------------------------
API_ROUTES: tuple[tuple[str, str, Handler, str], ...] = (
    ("/v1/chat/completions", "POST", chat_completions, "chat"),
    ("/v1/completions", "POST", completions, "completions"),
    ("/v1/embeddings", "POST", embeddings, "embeddings"),
    ("/v1/models", "GET", models, "models"),
    ("/health", "GET", health, "health"),
    ("/v1/health", "GET", health, "health"),
    ("/metrics", "GET", metrics, "metrics"),
    ("/tokenize", "POST", tokenize, "tokenize"),
    ("/detokenize", "POST", detokenize, "detokenize"),
    ("/apply-template", "POST", apply_template, "apply-template"),
    ("/props", "GET", props, "props"),
    ("/v1/streams/lookup", "POST", stream_sessions, "streams"),
    ("/tools", "GET", tools, "tools"),
    ("/tools", "POST", tools, "tools"),
)


def create_app(
    engine: InProcessEngine | None = None,
    *,
    api_key: str | None = None,
    alias: str | None = None,
    max_tokens: int | None = None,
    stream_interval: float = STREAM_INTERVAL_S,
    ui_dir: Path | None = None,
    ui_searched: Path | None = None,
) -> Starlette:
    """The app serving ``engine`` (a loaded :class:`InProcessEngine`).

    Without an engine, the app answers 503 (``/health`` included) until
    ``app.state.service.attach(engine)`` is called, from any thread: a server can listen while its
    model loads. ``api_key``: required on every API path but ``/health`` (None: no key).
    ``alias``: the model's name in responses (default: the engine's model name); requests may name
    the model by it, by the model's name or file name, or send ``"default"``. ``max_tokens``: the most
    tokens of one answer, whatever a request asks (None: up to the end of the context).
    ``stream_interval``: the shortest time between two chunks of a stream, in seconds (0: a chunk per
    decode step; a stream's first token and its end are sent at once). ``ui_dir``: built chat
    page files served at ``/`` (None: a page saying it is not built; ``ui_searched`` names where it
    was looked for).
    """
    service = ModelService(alias, max_tokens, stream_interval)
    if engine is not None:
        service.attach(engine)
    routes: list[Route | Mount] = [
        Route(path, _endpoint(name, handler, service), methods=[method]) for path, method, handler, name in API_ROUTES
    ]
    if ui_dir is not None:
        routes.append(Mount("/", app=StaticFiles(directory=str(ui_dir), html=True), name="ui"))
    else:
        page = fallback_page(ui_searched)
        routes.append(Route("/", lambda request: HTMLResponse(page), methods=["GET"]))
    middleware = [
        Middleware(CORSMiddleware, allow_origin_regex=LOCAL_ORIGINS, allow_methods=["*"], allow_headers=["*"]),
        Middleware(BearerAuth, api_key=api_key, api_paths=frozenset(r[0] for r in API_ROUTES)),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.startup()
        try:
            yield
        finally:
            service.shutdown()

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.service = service
    return app
