"""A tiny loopback HTTP server that speaks llama-server's protocol and misbehaves on request.

Only for faults the real llama-server cannot be made to produce: invalid UTF-8, malformed JSON,
answers of the wrong shape, an error event in the middle of a stream, a connection closed in the
middle of a stream, a transient 503, an answer that never comes. Everything else is tested
against the real server.

    with FaultServer() as fake:
        fake.push("/completion", Reply(body=b'{"content": "\\xff"}'))
        InferenceEngine(server_url=fake.url).infer("x")   # -> InferenceError

Each path has a queue of scripted replies, used up one per request; an empty queue gives a
well-formed default answer. Every request is recorded in ``fake.requests``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_HANG_S = 30.0  # a "hang" never outlives a test run


@dataclass
class Reply:
    """One scripted answer. ``events`` makes it a server-sent-events stream."""

    status: int = 200
    body: bytes = b""
    events: list[bytes] = field(default_factory=list)  # raw SSE lines, each sent as b"data: ...\n\n"
    drop_after_events: bool = False  # close the socket after the events, without a final chunk
    hang_s: float = 0.0  # wait this long before answering
    close: bool = False  # close the connection without any answer
    headers: dict[str, str] = field(default_factory=dict)


def _completion(text: str = "ok") -> dict[str, Any]:
    return {
        "content": text,
        "tokens_predicted": 1,
        "tokens_evaluated": 2,
        "stop": True,
        "stop_type": "limit",
        "timings": {"predicted_n": 1, "predicted_per_second": 10.0, "prompt_n": 2},
    }


def _chat(text: str = "ok") -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
        "usage": {"completion_tokens": 1, "prompt_tokens": 2},
    }


DEFAULTS: dict[str, Any] = {
    "/health": {"status": "ok"},
    "/completion": _completion(),
    "/v1/chat/completions": _chat(),
    "/tokenize": {"tokens": [1, 2]},
    "/detokenize": {"content": "ok"},
    "/v1/embeddings": {"data": [{"index": 0, "embedding": [0.5, 0.5]}]},
}


class FaultServer:
    def __init__(self) -> None:
        self.replies: dict[str, deque[Reply]] = defaultdict(deque)
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def push(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self.replies[path].extend(replies)

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r[1] == path)

    def _next(self, path: str) -> Reply | None:
        with self._lock:
            queue = self.replies.get(path)
            return queue.popleft() if queue else None

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(fake: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._answer(b"")

        def do_HEAD(self) -> None:
            self._answer(b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._answer(self.rfile.read(length))

        def _answer(self, body: bytes) -> None:
            try:
                self._reply(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up first (a timeout test)
                self.close_connection = True

        def _reply(self, body: bytes) -> None:
            path = self.path.split("?", 1)[0]
            with fake._lock:
                fake.requests.append((self.command, path, dict(self.headers), body))
            reply = fake._next(path)
            if reply is None:
                default = DEFAULTS.get(path)
                reply = Reply(body=json.dumps(default).encode()) if default is not None else Reply(404, b"{}")
            if reply.hang_s:
                time.sleep(min(reply.hang_s, MAX_HANG_S))
            if reply.close:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if reply.events:
                self._stream(reply)
                return
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def _stream(self, reply: Reply) -> None:
            self.send_response(reply.status)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in reply.events:
                chunk = b"data: " + event + b"\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            if reply.drop_after_events:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"0\r\n\r\n")

    return Handler
