"""``llcuda serve``: the OpenAI-compatible server on llcuda's in-process engine, as a real child process
on a free loopback port, driven by OpenAI's own Python client (and plain HTTP where the client has no
call for it).

Two servers: SmolLM2-135M-Instruct (a chat model with a template) for what the text must be, and the
tiny random model with an API key and embeddings for security, embeddings, and many clients at once.
No timing asserts: "while generating" is checked with the server's own count of running requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
import requests
from serving import Served, start_serve, stop_serve

from llcuda import config
from llcuda.models import SMOLLM2_MODEL
from llcuda.processes.process import free_port

REAL_MODELS = config.models_dir()  # read at import, before a fixture points LLCUDA_HOME elsewhere
KEY = "llcuda-serve-test-key-31c9"


def _smollm2() -> Path | str:
    path = REAL_MODELS / f"{SMOLLM2_MODEL}.gguf"
    return path if path.is_file() else SMOLLM2_MODEL


@pytest.fixture(scope="module")
def smol(binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """SmolLM2-135M-Instruct: 4 sequences of 1024 tokens."""
    served = start_serve(_smollm2(), "-np", "4", "-c", "4096", log=tmp_path_factory.mktemp("smol") / "serve.log")
    yield served
    stop_serve(served)


@pytest.fixture(scope="module")
def tiny(binaries, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The tiny random model with an API key and embeddings: 16 sequences of 512 tokens."""
    served = start_serve(
        tiny_model,
        "-np",
        "16",
        "-c",
        "8192",
        "--embeddings",
        "--alias",
        "tiny",
        log=tmp_path_factory.mktemp("tiny") / "serve.log",
        api_key=KEY,
    )
    yield served
    stop_serve(served)


QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]


# -- chat and completions --------------------------------------------------------------------------
@pytest.mark.realmodel
def test_chat_completion(smol: Served) -> None:
    reply = smol.client().chat.completions.create(model=SMOLLM2_MODEL, messages=QUESTION, max_tokens=48, temperature=0)
    choice = reply.choices[0]
    assert "Paris" in choice.message.content and choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert reply.model == SMOLLM2_MODEL and reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    prompt = smol.post("/apply-template", {"messages": QUESTION}).json()["prompt"]
    assert prompt.endswith("<|im_start|>assistant\n") and QUESTION[0]["content"] in prompt
    assert reply.usage.prompt_tokens == len(smol.post("/tokenize", {"content": prompt}).json()["tokens"])
    assert 0 < reply.usage.completion_tokens <= 48
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    timings = reply.model_extra["timings"]  # llama-server's, which llama.cpp's chat page shows
    assert timings["predicted_n"] == reply.usage.completion_tokens and timings["predicted_ms"] >= 0


@pytest.mark.realmodel
def test_streamed_chat_arrives_while_generating_and_joins_to_the_whole_text(smol: Served) -> None:
    client = smol.client()
    whole = client.chat.completions.create(model="default", messages=QUESTION, max_tokens=48, temperature=0)
    pieces: list[str] = []
    running_at_first_piece = None
    finish = None
    for chunk in client.chat.completions.create(
        model="default", messages=QUESTION, max_tokens=48, temperature=0, stream=True
    ):
        assert chunk.object == "chat.completion.chunk"
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            if running_at_first_piece is None:
                running_at_first_piece = smol.running()
            pieces.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
    assert running_at_first_piece == 1, "the first piece came only after the generation had ended"
    assert len(pieces) > 1
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason


@pytest.mark.realmodel
def test_stream_sends_usage_last_when_asked(smol: Served) -> None:
    chunks = list(
        smol.client().chat.completions.create(
            model="default",
            messages=QUESTION,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])
    raw = requests.post(
        f"{smol.url}/v1/completions", json={"prompt": "Hello", "max_tokens": 3, "stream": True}, stream=True, timeout=60
    )
    events = [line for line in raw.iter_lines() if line]
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == b"data: [DONE]" and all(e.startswith(b"data: ") for e in events)


@pytest.mark.realmodel
def test_text_completion_length_and_max_completion_tokens(smol: Served) -> None:
    client = smol.client()
    reply = client.completions.create(
        model=SMOLLM2_MODEL,
        prompt="The capital of France is",
        max_tokens=5,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert reply.object == "text_completion" and reply.choices[0].text.strip()
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    chat = client.chat.completions.create(model="default", messages=QUESTION, max_completion_tokens=3, temperature=0)
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 3
    tokens = smol.post("/tokenize", {"content": "The capital of France is"}).json()["tokens"]
    by_ids = client.completions.create(
        model="default", prompt=tokens, max_tokens=5, temperature=0, extra_body={"ignore_eos": True}
    )
    assert by_ids.choices[0].text == reply.choices[0].text


@pytest.mark.realmodel
def test_stop_strings_end_the_text_before_them(smol: Served) -> None:
    client = smol.client()
    prompt = "Count: 1, 2, 3, 4,"
    free = client.completions.create(model="default", prompt=prompt, max_tokens=16, temperature=0).choices[0]
    assert " 6," in free.text, free.text  # the model counts on
    stopped = client.completions.create(
        model="default", prompt=prompt, max_tokens=16, temperature=0, stop=[" 6"]
    ).choices[0]
    assert stopped.finish_reason == "stop" and stopped.text == free.text[: free.text.index(" 6")]
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="default", prompt=prompt, max_tokens=16, temperature=0, stop=[" 6"], stream=True
        )
        if c.choices
    )
    assert streamed == stopped.text


@pytest.mark.realmodel
def test_a_seed_repeats_a_sampled_answer(smol: Served) -> None:
    client = smol.client()

    def sample(seed: int) -> str:
        return (
            client.chat.completions.create(
                model="default", messages=QUESTION, max_tokens=24, temperature=1.0, seed=seed
            )
            .choices[0]
            .message.content
        )

    first = sample(1234)
    assert sample(1234) == first
    assert len({first, *(sample(s) for s in (1, 2, 3))}) > 1, "different seeds gave one answer"


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "enum": ["Paris", "London", "Rome"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


@pytest.mark.realmodel
def test_json_schema_output_parses_and_validates(smol: Served) -> None:
    client = smol.client()
    messages = [{"role": "user", "content": "Describe a person who lives in Paris as JSON."}]
    for stream in (False, True):
        kwargs: dict[str, Any] = {
            "model": "default",
            "messages": messages,
            "max_tokens": 96,
            "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        }
        if stream:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(stream=True, **kwargs)
                if c.choices
            )
        else:
            reply = client.chat.completions.create(**kwargs)
            assert reply.choices[0].finish_reason == "stop"
            text = reply.choices[0].message.content
        jsonschema.validate(json.loads(text), PERSON)
    city = [{"role": "user", "content": "Give a JSON object with one key, city, whose value is the capital of France."}]
    anything = client.chat.completions.create(
        model="default", messages=city, max_tokens=96, temperature=0, response_format={"type": "json_object"}
    )
    assert anything.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(anything.choices[0].message.content), dict)


@pytest.mark.realmodel
def test_models_tokenize_detokenize(smol: Served) -> None:
    models = smol.client().models.list().data
    assert [m.id for m in models] == [SMOLLM2_MODEL] and models[0].owned_by == "llcuda"
    tokens = smol.post("/tokenize", {"content": "Hello world"}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert smol.post("/detokenize", {"tokens": tokens}).json() == {"content": "Hello world"}
    pieces = smol.post("/tokenize", {"content": "Hello world", "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == tokens and "".join(p["piece"] for p in pieces) == "Hello world"
    assert smol.post("/detokenize", {"tokens": [10**9]}).status_code == 400
    # what llama.cpp's chat page reads besides the OpenAI API
    props = smol.get("/props").json()
    assert props["total_slots"] == 4 and props["model_alias"] == SMOLLM2_MODEL
    assert props["default_generation_settings"]["n_ctx"] == models[0].model_extra["meta"]["n_ctx"]
    assert "<|im_start|>" in props["chat_template"]
    assert smol.post("/v1/streams/lookup", {"conversation_ids": ["a"]}).json() == []
    assert _error(smol.get("/tools"), 403)["code"] == "tools_disabled"


# -- errors ----------------------------------------------------------------------------------------
def _error(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.realmodel
def test_bad_requests_get_openai_errors(smol: Served) -> None:
    client = smol.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="default", messages=QUESTION, temperature=-1)
    assert info.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="n=2"):
        client.chat.completions.create(model="default", messages=QUESTION, n=2)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert missing.value.body["code"] == "model_not_found"
    n_ctx = client.models.list().data[0].model_extra["meta"]["n_ctx"]
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model="default", prompt="hello " * (n_ctx + 8), max_tokens=4)
    assert long.value.body["code"] == "context_length_exceeded"
    assert _error(smol.post("/v1/chat/completions", data=b"{not json"), 400)["type"] == "invalid_request_error"
    assert _error(smol.post("/v1/chat/completions", {"messages": []}), 400)["param"] == "messages"
    assert _error(smol.post("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}), 400)
    assert (
        _error(
            smol.post(
                "/v1/chat/completions",
                {
                    "messages": QUESTION,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}},
                },
            ),
            400,
        )["param"]
        == "response_format"
    )
    assert _error(smol.post("/v1/completions", {"prompt": "x", "grammar": "root ::= (("}), 400)
    assert _error(smol.get("/v1/nothing-here"), 404)["code"] == "not_found"
    with pytest.raises(openai.APIStatusError) as off:
        client.embeddings.create(model="default", input="x")
    assert off.value.status_code == 501 and "--embeddings" in off.value.message
    assert smol.running() == 0


# -- a client that goes away ---------------------------------------------------------------------
@pytest.mark.realmodel
def test_a_client_that_disconnects_frees_its_sequence(smol: Served) -> None:
    cancelled = smol.metric('llcuda_requests_total{endpoint="completions",status="499"}')
    body = {"prompt": "Once upon a time", "max_tokens": 900, "ignore_eos": True, "temperature": 0}
    with requests.post(
        f"{smol.url}/v1/completions", json={**body, "stream": True}, stream=True, timeout=60
    ) as response:
        for line in response.iter_lines():
            if line.startswith(b"data: ") and b'"text"' in line:
                break
        assert smol.running() == 1
    # the response is closed: the server notices, cancels the request and frees its sequence
    with pytest.raises(requests.ReadTimeout):  # a non-streaming client that gives up
        requests.post(f"{smol.url}/v1/completions", json=body, timeout=(10, 2))
    deadline = time.monotonic() + 60
    while smol.running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert smol.running() == 0
    assert smol.metric('llcuda_requests_total{endpoint="completions",status="499"}') == cancelled + 2
    assert smol.client().completions.create(model="default", prompt="Hi", max_tokens=2).choices[0].text is not None


# -- API key, CORS, embeddings, many clients (tiny model) -------------------------------------------
def test_api_key_is_required_except_for_health(tiny: Served) -> None:
    assert tiny.get("/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        error = _error(tiny.get("/v1/models", headers=headers), 401)
        assert error["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        tiny.client("wrong").completions.create(model="tiny", prompt="x", max_tokens=1)
    reply = tiny.client(KEY).completions.create(model="tiny", prompt="x", max_tokens=2)
    assert reply.model == "tiny"
    assert tiny.post("/tokenize", {"content": "x"}).status_code == 401
    assert tiny.post("/completion", {"prompt": "x"}).status_code == 401  # any POST, even to no endpoint
    assert tiny.get("/").status_code == 200  # the chat page (here: the page saying it is not built)
    assert tiny.get("/metrics").status_code == 401 and tiny.get("/metrics", headers=tiny.auth).status_code == 200


def test_cors_allows_pages_of_this_machine_only(tiny: Served) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    for origin in ("http://localhost:5173", "http://127.0.0.1:8080", "http://[::1]:3000"):
        answer = requests.options(
            f"{tiny.url}/v1/chat/completions", headers={"Origin": origin, **preflight}, timeout=30
        )
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == origin
    for origin in ("https://evil.example", "http://localhost.evil.example"):
        answer = requests.options(
            f"{tiny.url}/v1/chat/completions", headers={"Origin": origin, **preflight}, timeout=30
        )
        assert "access-control-allow-origin" not in answer.headers
        got = tiny.get("/v1/models", headers={"Origin": origin, **tiny.auth})
        assert got.status_code == 200 and "access-control-allow-origin" not in got.headers


def test_embeddings(tiny: Served) -> None:
    client = tiny.client(KEY)
    reply = client.embeddings.create(model="tiny", input=["a cat", "a dog", "a cat"])  # base64 on the wire
    vectors = [d.embedding for d in reply.data]
    assert [d.index for d in reply.data] == [0, 1, 2] and len({len(v) for v in vectors}) == 1
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-3 for v in vectors)
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-6) and vectors[0] != pytest.approx(vectors[1], abs=1e-3)
    assert reply.usage.prompt_tokens > 0
    floats = tiny.post("/v1/embeddings", {"input": "a cat", "encoding_format": "float"}, headers=tiny.auth).json()
    assert floats["data"][0]["embedding"] == pytest.approx(vectors[0], abs=1e-6)
    packed = tiny.post("/v1/embeddings", {"input": "a cat", "encoding_format": "base64"}, headers=tiny.auth).json()
    assert len(base64.b64decode(packed["data"][0]["embedding"])) == 4 * len(vectors[0])
    assert _error(tiny.post("/v1/embeddings", {"input": []}, headers=tiny.auth), 400)["param"] == "input"
    assert _error(tiny.post("/v1/embeddings", {"input": "x" * 40000}, headers=tiny.auth), 400)


CLIENTS = 64
REQUESTS_PER_CLIENT = 3


def test_many_clients_at_once_all_succeed(tiny: Served) -> None:
    def client_session(i: int) -> list[str]:
        client = tiny.client(KEY)
        finishes = []
        for j in range(REQUESTS_PER_CLIENT):
            kind = (i + j) % 4
            if kind == 0:
                reply = client.chat.completions.create(
                    model="tiny",
                    messages=[{"role": "user", "content": f"hi {i}"}],
                    max_tokens=12,
                    temperature=0.7,
                    seed=i,
                )
                finishes.append(reply.choices[0].finish_reason)
            elif kind == 1:
                chunks = list(
                    client.chat.completions.create(
                        model="tiny",
                        messages=[{"role": "user", "content": f"hello {j}"}],
                        max_tokens=12,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 12
                finishes.append(
                    next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
                )
            elif kind == 2:
                reply = client.completions.create(model="tiny", prompt=f"number {i} {j}", max_tokens=12)
                finishes.append(reply.choices[0].finish_reason)
            else:
                chunks = list(client.completions.create(model="tiny", prompt=f"text {i}", max_tokens=12, stream=True))
                finishes.append(next(c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason))
        return finishes

    before = tiny.metric('llcuda_requests_total{endpoint="chat",status="200"}') + tiny.metric(
        'llcuda_requests_total{endpoint="completions",status="200"}'
    )
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client_session, range(CLIENTS), timeout=600))
    assert all(f in ("stop", "length") for finishes in results for f in finishes)
    after = tiny.metric('llcuda_requests_total{endpoint="chat",status="200"}') + tiny.metric(
        'llcuda_requests_total{endpoint="completions",status="200"}'
    )
    assert after - before == CLIENTS * REQUESTS_PER_CLIENT
    health = tiny.get("/health").json()
    assert health["running"] == 0 and health["queued"] == 0


# -- the server's life -----------------------------------------------------------------------------
def test_health_is_503_until_the_model_is_attached(binaries, tiny_model: Path) -> None:
    import uvicorn

    from llcuda.libllama.engine import InProcessEngine
    from llcuda.serve.app import create_app
    from llcuda.serve.launch import bind, url_of

    app = create_app()
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = url_of(sock)
    engine = None
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _error(requests.get(f"{url}/health", timeout=30), 503)["code"] == "model_loading"
        assert _error(requests.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=30), 503)
        engine = InProcessEngine(binaries=binaries).load_model(tiny_model, ctx_size=512, n_parallel=2, threads=1)
        app.state.service.attach(engine)
        while requests.get(f"{url}/health", timeout=30).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        done = requests.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=60).json()
        assert done["model"] == "tiny-llama" and done["usage"]["completion_tokens"] <= 2
        page = requests.get(f"{url}/", timeout=30)
        assert page.status_code == 200 and "not installed" in page.text  # no chat page in this app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if engine is not None:
            engine.unload()
        sock.close()


def test_sigterm_ends_open_generations_and_exits_0(tiny_model: Path, tmp_path: Path) -> None:
    served = start_serve(tiny_model, "-np", "2", "-c", "32768", log=tmp_path / "serve.log")  # long answers
    body = {"prompt": "x", "max_tokens": 100000, "ignore_eos": True}
    with requests.post(
        f"{served.url}/v1/completions", json={**body, "stream": True}, stream=True, timeout=60
    ) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith(b"data: "))  # generating
        served.process.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    # the stream ends with an error event saying why, then [DONE]
    assert rest[-1] == b"data: [DONE]"
    assert json.loads(rest[-2][6:])["error"]["code"] == "server_stopping"
    assert served.process.wait(timeout=60) == 0


def test_serve_refuses_a_taken_port_and_a_public_host_without_a_key(tiny_model: Path, isolated_home: Path) -> None:
    env = dict(os.environ, LLCUDA_HOME=str(isolated_home))
    env.pop("LLCUDA_API_KEY", None)

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "llcuda", "serve", "-m", str(tiny_model), *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        taken = serve("--port", str(holder.getsockname()[1]))
    finally:
        holder.close()
    assert taken.returncode == 1 and "pick another --port" in taken.stderr
    public = serve("--host", "0.0.0.0")
    assert public.returncode == 1 and "--api-key" in public.stderr and "--allow-unauthenticated" in public.stderr
    stray = serve("--", "--slots")
    assert stray.returncode == 1 and "--llama-server" in stray.stderr


def test_llama_server_flag_serves_with_llama_server_and_passes_arguments(
    tiny_model: Path, isolated_home: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = dict(os.environ, LLCUDA_HOME=str(isolated_home))
    env.pop("LLCUDA_API_KEY", None)
    command = [
        sys.executable,
        "-m",
        "llcuda",
        "serve",
        "--llama-server",
        "-m",
        str(tiny_model),
        "--port",
        str(port),
        "-np",
        "1",
        "-c",
        "512",
        "--threads",
        "1",
        "--alias",
        "renamed",
        "--",
        "--no-slots",
    ]
    with (tmp_path / "serve.log").open("w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"127.0.0.1:{port}" in line, (line, (tmp_path / "serve.log").read_text())
        url = f"http://127.0.0.1:{port}"
        assert requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"] == "renamed"
        assert requests.get(f"{url}/slots", timeout=30).status_code == 501  # --no-slots reached llama-server
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


# -- the decode thread's hand-over to the event loop ------------------------------------------------
def _in_thread(*calls: Any) -> Any:
    """Run ``calls`` one after the other in another thread, as the decode thread would."""

    def run() -> None:
        for call in calls:
            call()

    return asyncio.to_thread(run)


def test_step_hub_wakes_streams_once_per_interval_but_at_once_for_first_and_last_tokens() -> None:
    from llcuda.serve.streaming import StepHub

    async def scenario() -> None:
        hub = StepHub(asyncio.get_running_loop(), interval=3600.0)  # later tokens wait for the interval
        sink = hub.sink()
        batches = sink.batches()
        await _in_thread(lambda: sink.put(7), hub.on_step)
        assert await batches.__anext__() == [7]  # the first token: at once
        await asyncio.sleep(0)
        sink.event.clear()  # the first wake-up, seen
        await _in_thread(lambda: sink.put(8), hub.on_step, lambda: sink.put(9), hub.on_step)
        await asyncio.sleep(0)  # a wake-up scheduled from the thread would have run by now
        assert not sink.event.is_set()
        await _in_thread(lambda: sink.put(None), hub.on_step)
        assert await batches.__anext__() == [8, 9, None]  # the end: at once, with what waited

        every = StepHub(asyncio.get_running_loop(), interval=0.0)
        one, two = every.sink(), every.sink()
        await _in_thread(lambda: one.put(1), lambda: two.put(2), every.on_step)
        assert await one.batches().__anext__() == [1] and await two.batches().__anext__() == [2]
        await asyncio.sleep(0)
        one.event.clear()
        two.event.clear()
        await _in_thread(lambda: one.put(3), every.on_step)
        await asyncio.sleep(0)
        assert one.event.is_set() and not two.event.is_set()

    asyncio.run(scenario())
