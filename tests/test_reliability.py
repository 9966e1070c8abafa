"""Reliability: processes that never outlive Python, crashes, ports, timeouts and bad input.

Everything runs against the real llama-server (CPU build) serving a tiny random-weight model on
127.0.0.1. The loopback fake in ``fault_server.py`` is used only for faults the real server cannot
be made to produce (invalid UTF-8, malformed answers, a 503, a stream cut mid-way by a live server).
Waits are liveness deadlines ("gone within 30 s"), never speed assertions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fault_server import FaultServer, Reply
from processes import alive, gone

from llcuda import (
    ConfigError,
    InferenceError,
    InvalidModelError,
    LlcudaError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerStartError,
)
from llcuda.engine import InferenceEngine
from llcuda.processes import process as process_module
from llcuda.processes.client import LlamaClient

DEADLINE_S = 30.0


# -- helpers -----------------------------------------------------------------------------------------
def _wait_until_asleep(pid: int, within: float = DEADLINE_S) -> None:
    """Wait until the main thread of ``pid`` is inside time.sleep(). CPython loses a signal that
    lands between its last check for signals and the sleep syscall (the handler then runs only
    when the sleep ends), so the Ctrl-C test signals a parent that is surely asleep."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if "nanosleep" in Path(f"/proc/{pid}/wchan").read_text():
                return
        except OSError:
            return
        time.sleep(0.02)


def _port_closed(port: int, within: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + within
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _children(parent: int, name: str = "llama-server") -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == parent and stat[stat.index("(") + 1 : stat.rindex(")")] == name and fields[0] != "Z":
            found.append(int(entry))
    return found


def _wait_for_log(server, text: str, within: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if text in server.log_path.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def long_model(tmp_path_factory, llama_src: Path) -> Path:
    """The tiny model with a 128k training context, so one generation can run for minutes."""
    from llcuda.benchmark.random_model import PRESETS, write_model

    shape = replace(PRESETS["tiny"], context_length=131072)
    return write_model(tmp_path_factory.mktemp("long") / "tiny-long.gguf", llama_src / "models", shape)


def _engine(binaries, model: Path, **kwargs) -> InferenceEngine:
    timeout = kwargs.pop("request_timeout", None)
    engine = InferenceEngine(binaries=binaries, request_timeout=timeout)
    engine.load_model(model, **{"ctx_size": 512, "n_parallel": 1, "threads": 1, **kwargs})
    return engine


# -- processes: no llama-server outlives its Python parent --------------------------------------------
PARENT = textwrap.dedent("""
    import sys, time
    from llcuda import InferenceEngine
    mode, model = sys.argv[1], sys.argv[2]
    engine = InferenceEngine()
    engine.load_model(model, ctx_size=256, n_parallel=1, threads=1)
    print(engine.server.pid, engine.server.port, flush=True)
    sys.stdin.readline()  # the test has seen the server alive; now end as asked
    if mode == "exit":
        sys.exit(0)
    if mode == "exception":
        raise RuntimeError("boom")
    time.sleep(600)  # the test signals us
""")


@pytest.mark.parametrize(
    "mode, expected_rc",
    [
        ("exit", 0),  # normal interpreter exit, engine never closed: atexit stops the server
        ("exception", 1),  # uncaught exception
        ("sigterm", -signal.SIGTERM),  # `kill PID` of the parent only: no Python cleanup runs, PDEATHSIG does
        ("ctrl-c", -signal.SIGINT),  # SIGINT to the whole process group, as a terminal sends it
    ],
)
def test_server_dies_with_its_parent(binaries, tiny_model, tmp_path, mode, expected_rc):
    env = dict(os.environ, LLCUDA_HOME=str(tmp_path), LLCUDA_BIN_DIR=str(binaries.bin_dir))
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, mode, str(tiny_model)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        server_pid, port = (int(x) for x in parent.stdout.readline().split())
        assert alive(server_pid) and not _port_closed(port, within=0)
        assert _children(parent.pid) == [server_pid]
        parent.stdin.write("go\n")
        parent.stdin.flush()
        if mode in ("sigterm", "ctrl-c"):
            _wait_until_asleep(parent.pid)
        if mode == "sigterm":
            os.kill(parent.pid, signal.SIGTERM)
        elif mode == "ctrl-c":
            os.killpg(parent.pid, signal.SIGINT)
        parent.wait(timeout=DEADLINE_S)
        assert parent.returncode == expected_rc, parent.stderr.read()
        assert gone(server_pid, within=DEADLINE_S), f"llama-server {server_pid} outlived its parent ({mode})"
        assert _port_closed(port)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
@pytest.mark.parametrize("engine", ["llcuda", "llama-server"])
def test_cli_serve_stops_its_server(binaries, tiny_model, tmp_path, how, engine):
    """``llcuda serve`` (its own engine in this process, or ``--llama-server`` as a child) stops on SIGTERM and
    Ctrl-C with exit code 0, and nothing keeps listening on its port."""
    port = process_module.free_port()
    env = dict(os.environ, LLCUDA_HOME=str(tmp_path), LLCUDA_BIN_DIR=str(binaries.bin_dir))
    cmd = [
        sys.executable,
        "-m",
        "llcuda",
        "serve",
        "-m",
        str(tiny_model),
        "--port",
        str(port),
        "--ctx-size",
        "512",
        "-np",
        "1",
        *(["--llama-server"] if engine == "llama-server" else []),
    ]
    cli = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        banner = cli.stdout.readline()
        assert f"127.0.0.1:{port}" in banner, cli.stderr.read()
        children = _children(cli.pid)
        if engine == "llama-server":
            assert len(children) == 1, f"llcuda serve --llama-server should run one llama-server: {children}"
        else:
            assert children == [], "llcuda serve runs its engine in its own process"
            assert _health_ok(port), "llcuda serve never answered /health with 200"
        if how == "sigterm":
            os.kill(cli.pid, signal.SIGTERM)
        else:
            os.killpg(cli.pid, signal.SIGINT)
        cli.wait(timeout=DEADLINE_S)
        assert cli.returncode == 0, cli.stderr.read()
        assert all(gone(pid, within=DEADLINE_S) for pid in children) and _port_closed(port)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()


def _health_ok(port: int, within: float = 60.0) -> bool:
    """Whether ``/health`` on the loopback ``port`` answers 200 within ``within`` seconds."""
    import requests

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return False


# -- a server that dies: InferenceError with its log, then a restart ---------------------------------
def _start_long_request(engine, stream: bool):
    """Run a long generation in a thread; return (thread, outcome) once a slot is busy with it."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            if stream:
                pieces = engine.infer_stream("a long story", max_tokens=100_000, temperature=0.0, ignore_eos=True)
                outcome["first"] = next(pieces)
                outcome["text"] = "".join(pieces)
            else:
                outcome["result"] = engine.infer("a long story", max_tokens=100_000, temperature=0.0, ignore_eos=True)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert _wait_for_log(engine.server, "processing task"), "the long request never reached a slot"
    return thread, outcome


@pytest.mark.parametrize("stream", [False, True], ids=["infer", "infer_stream"])
def test_server_killed_mid_request_is_an_inference_error_with_its_log(binaries, long_model, isolated_home, stream):
    engine = _engine(binaries, long_model, ctx_size=131072)
    try:
        first_pid = engine.server.pid
        thread, outcome = _start_long_request(engine, stream)
        os.kill(first_pid, signal.SIGKILL)
        thread.join(DEADLINE_S)
        assert not thread.is_alive()
        error = outcome.get("error")
        assert isinstance(error, InferenceError), outcome
        assert "died during the request" in str(error) and "the next call restarts it" in str(error)
        assert error.log_tail and "processing task" in error.log_tail, "the error must carry the server's log"
        assert engine.infer("again", max_tokens=3, temperature=0.0, ignore_eos=True).tokens_generated == 3
        assert engine.server.pid != first_pid and not alive(first_pid)
    finally:
        engine.unload()


def test_restart_that_cannot_work_says_why_and_recovers_later(binaries, tiny_model, tmp_path, isolated_home):
    model = tmp_path / "moving.gguf"
    model.write_bytes(tiny_model.read_bytes())
    engine = _engine(binaries, model)
    try:
        pid = engine.server.pid
        model.rename(tmp_path / "moved-away.gguf")
        os.kill(pid, signal.SIGKILL)
        assert gone(pid, within=DEADLINE_S)
        with pytest.raises(ServerStartError) as info:
            engine.infer("x", max_tokens=2)
        assert str(model) in str(info.value) and info.value.log_tail
        assert not engine.server.is_running()
        (tmp_path / "moved-away.gguf").rename(model)
        assert engine.infer("back", max_tokens=2, temperature=0.0, ignore_eos=True).tokens_generated == 2
    finally:
        engine.unload()


# -- ports ------------------------------------------------------------------------------------------
def test_auto_port_moves_on_when_the_chosen_port_is_taken(binaries, tiny_model, isolated_home, monkeypatch):
    """The race between picking a free port and llama-server binding it: the next port is tried."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_free_port = process_module.free_port
        monkeypatch.setattr(
            process_module, "free_port", lambda host="127.0.0.1": next(picks, None) or real_free_port(host)
        )
        engine = _engine(binaries, tiny_model)
        try:
            assert engine.server.port != taken
            assert engine.infer("moved", max_tokens=2, temperature=0.0, ignore_eos=True).tokens_generated == 2
        finally:
            engine.unload()


# -- timeouts and abandoned streams ------------------------------------------------------------------
def test_client_timeout_does_not_poison_the_engine(binaries, long_model, isolated_home):
    """A request that times out is cancelled by the server; the same engine then works normally."""
    engine = _engine(binaries, long_model, ctx_size=131072, request_timeout=1.0)
    try:
        with pytest.raises(RequestTimeoutError) as info:
            engine.infer("a very long story", max_tokens=120_000, temperature=0.0, ignore_eos=True)
        assert isinstance(info.value, TimeoutError) and "request_timeout" in str(info.value)
        # Nothing else may talk to the server until it notices the closed connection: llama-server
        # (b11434) only checks for it after a second in which no other request produced a result.
        assert _wait_for_log(engine.server, "cancel task"), "the server kept generating for a gone client"
        after = engine.infer("short", max_tokens=4, temperature=0.0, ignore_eos=True)
        assert after.tokens_generated == 4
        client = LlamaClient(engine.url)
        assert not any(s.get("is_processing") for s in client.slots())
        assert client.metrics()["tokens_predicted_total"] < 120_000, "the timed-out generation ran to the end"
        assert engine.get_metrics().failures == 1
    finally:
        engine.unload()


def test_an_abandoned_stream_frees_its_slot(binaries, long_model, isolated_home):
    engine = _engine(binaries, long_model, ctx_size=131072)
    try:
        stream = engine.infer_stream("a very long story", max_tokens=120_000, temperature=0.0, ignore_eos=True)
        assert next(stream)
        del stream  # the caller walks away mid-generation
        assert _wait_for_log(engine.server, "stop processing"), "the abandoned generation was never stopped"
        client = LlamaClient(engine.url)
        assert not any(s.get("is_processing") for s in client.slots())
        assert client.metrics()["tokens_predicted_total"] < 120_000
        assert engine.infer("next", max_tokens=3, temperature=0.0, ignore_eos=True).tokens_generated == 3
    finally:
        engine.unload()


# -- bad input: a named error, and nothing written or stopped ----------------------------------------
def _logs(home: Path) -> set[str]:
    folder = home / "logs"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture
def loaded(binaries, tiny_model, isolated_home):
    engine = _engine(binaries, tiny_model)
    yield engine
    engine.unload()


def _bad_models(tmp_path: Path, tiny_model: Path) -> dict[str, tuple[object, type[Exception], str]]:
    (tmp_path / "folder.gguf").mkdir()
    (tmp_path / "weights.safetensors").write_bytes(b'{"__metadata__": {}}' + b"\0" * 64)
    whole = tiny_model.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[: len(whole) // 2])
    return {
        "missing": (tmp_path / "nope.gguf", ModelNotFoundError, "does not exist"),
        "directory": (tmp_path / "folder.gguf", InvalidModelError, "is a directory"),
        "not gguf": (tmp_path / "weights.safetensors", InvalidModelError, "not a GGUF file"),
        "truncated": (tmp_path / "cut.gguf", InvalidModelError, "truncated"),
        "unknown name": ("gemma-3-1b-Q4_K", ModelNotFoundError, "Did you mean: gemma-3-1b"),
        "empty name": ("", ModelNotFoundError, "Empty model name"),
    }


def test_bad_model_is_a_named_error_and_the_loaded_model_keeps_serving(loaded, tmp_path, tiny_model, isolated_home):
    pid = loaded.server.pid
    servers = _children(os.getpid())
    for label, (model, error, message) in _bad_models(tmp_path, tiny_model).items():
        logs = _logs(isolated_home)
        with pytest.raises(error, match=message):
            loaded.load_model(model, offline=True)
        assert _logs(isolated_home) == logs, f"{label}: a log file was written for a model that was refused"
        assert loaded.server.pid == pid and loaded.server.is_running(), f"{label}: the loaded model was stopped"
        assert _children(os.getpid()) == servers, f"{label}: a server process was started or stopped"
    assert loaded.infer("still here", max_tokens=2, temperature=0.0, ignore_eos=True).tokens_generated == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ctx_size": -5},
        {"ctx_size": 1 << 40},
        {"ctx_size": 0},
        {"n_parallel": 0},
        {"n_parallel": 10_000},
        {"gpu_layers": -7},
        {"flash_attn": "sometimes"},
        {"port": 70_000},
        {"threads": 0},
        {"threads": -2},
        {"batch_size": 0},
        {"ubatch_size": -1},
    ],
)
def test_bad_load_arguments_are_refused_before_anything_stops(loaded, tiny_model, isolated_home, kwargs):
    pid = loaded.server.pid
    servers = _children(os.getpid())
    logs = _logs(isolated_home)
    with pytest.raises(ConfigError):
        loaded.load_model(tiny_model, **kwargs)
    assert loaded.server.pid == pid and loaded.server.is_running(), "a refused argument stopped the loaded model"
    assert _children(os.getpid()) == servers and _logs(isolated_home) == logs
    assert loaded.infer("fine", max_tokens=2, temperature=0.0, ignore_eos=True).tokens_generated == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt": b"bytes"},
        {"prompt": ["a", "list"]},
        {"prompt": 42},
        {"prompt": "x", "max_tokens": True},
        {"prompt": "x", "max_tokens": 2.5},
        {"prompt": "x", "max_tokens": -(2**31)},
        {"prompt": "x", "temperature": float("inf")},
        {"prompt": "x", "temperature": 1e9},
        {"prompt": "x", "temperature": "hot"},
        {"prompt": "x", "top_k": -1},
        {"prompt": "x", "seed": -2},
        {"prompt": "x", "seed": 2**64},
        {"prompt": "x", "stop": 5},
        {"prompt": "x", "stop": ["ok", None]},
    ],
)
def test_bad_sampling_arguments_never_reach_the_server(tiny_engine, kwargs):
    client = LlamaClient(tiny_engine.url)
    before = client.metrics()
    with pytest.raises(ConfigError):
        tiny_engine.infer(**kwargs)
    with pytest.raises(ConfigError):
        tiny_engine.infer_stream(**kwargs)
    after = client.metrics()
    assert after["prompt_tokens_total"] == before["prompt_tokens_total"]
    assert after["tokens_predicted_total"] == before["tokens_predicted_total"]


@pytest.mark.parametrize(
    "messages",
    [
        None,
        [{"role": "user", "content": None}],
        [{"role": "user", "content": 7}],
        [{"content": "no role"}],
        [("user", "a tuple")],
        ({"role": "user", "content": "x"} for _ in range(1)),  # a generator is not a list
    ],
)
def test_more_malformed_chat_messages(tiny_engine, messages):
    with pytest.raises(ConfigError):
        tiny_engine.chat(messages)
    with pytest.raises(ConfigError):
        tiny_engine.chat(messages, stream=True)


def test_prompt_longer_than_the_context_in_a_stream_is_a_clear_error(tiny_engine):
    with pytest.raises(InferenceError) as info:
        "".join(tiny_engine.infer_stream("word " * 3000, max_tokens=4))
    assert info.value.status_code == 400 and "context" in str(info.value).lower()
    assert tiny_engine.infer("fine", max_tokens=2, temperature=0.0, ignore_eos=True).tokens_generated == 2


def test_bad_texts_for_embeddings_and_batches(tiny_engine):
    for bad in ([""], ["ok", 3], [None]):
        with pytest.raises(ConfigError):
            tiny_engine.embed(bad)
        with pytest.raises(ConfigError):
            tiny_engine.batch_infer(bad, max_tokens=2)
    with pytest.raises(ConfigError):
        tiny_engine.tokenize("")


# -- faults only a fake server can produce -----------------------------------------------------------
@pytest.fixture
def fake():
    with FaultServer() as server:
        yield server


def _completion_bytes(text: bytes) -> bytes:
    return b'{"content": "' + text + b'", "tokens_predicted": 1, "stop": true, "stop_type": "limit"}'


def test_invalid_utf8_from_the_server(fake):
    engine = InferenceEngine(server_url=fake.url)
    fake.push("/completion", Reply(body=_completion_bytes(b"caf\xc3")))
    with pytest.raises(InferenceError, match="invalid UTF-8"):
        engine.infer("x")
    fake.push("/completion", Reply(events=[json.dumps({"content": "fine"}).encode(), b'{"content": "\xff\xfe"}']))
    stream = engine.infer_stream("x")
    assert next(stream) == "fine"
    with pytest.raises(InferenceError, match="invalid UTF-8"):
        next(stream)
    assert engine.infer("x").text == "ok", "the engine must work again after a bad answer"
    assert engine.get_metrics().failures == 2


@pytest.mark.parametrize(
    "path, body, call",
    [
        ("/completion", b"<html>502 Bad Gateway</html>", "infer"),
        ("/completion", b'{"content": "cut', "infer"),
        ("/completion", b'["a", "list"]', "infer"),
        ("/v1/chat/completions", b'{"choices": []}', "chat"),
        ("/v1/chat/completions", b'{"object": "chat.completion"}', "chat"),
        ("/v1/chat/completions", b'{"choices": [{"text": "no message"}]}', "chat"),
        ("/tokenize", b'{"ids": [1]}', "tokenize"),
        ("/v1/embeddings", b'{"data": [{"vector": []}]}', "embed"),
    ],
)
def test_malformed_answers_are_inference_errors(fake, path, body, call):
    engine = InferenceEngine(server_url=fake.url)
    calls = {
        "infer": lambda: engine.infer("x"),
        "chat": lambda: engine.chat([{"role": "user", "content": "x"}]),
        "tokenize": lambda: engine.tokenize("x"),
        "embed": lambda: engine.embed("x"),
    }
    fake.push(path, Reply(body=body))
    with pytest.raises(InferenceError):
        calls[call]()
    calls[call]()  # the default, well-formed answer works on the same engine


def test_stream_faults(fake):
    engine = InferenceEngine(server_url=fake.url)
    fake.push("/completion", Reply(events=[b'{"content": "a"}', b'{"error": {"message": "slot crashed"}}']))
    with pytest.raises(InferenceError, match="slot crashed") as info:
        "".join(engine.infer_stream("x"))
    assert info.value.server_message == "slot crashed"
    fake.push("/completion", Reply(events=[b'{"content": "a"}'], drop_after_events=True))
    with pytest.raises(InferenceError, match="broke off"):
        "".join(engine.infer_stream("x"))
    fake.push("/completion", Reply(events=[b"{not json"]))
    with pytest.raises(InferenceError, match="malformed event"):
        "".join(engine.infer_stream("x"))
    fake.push(
        "/v1/chat/completions",
        Reply(events=[b'{"choices": [{"delta": {"content": "hi"}}]}'], drop_after_events=True),
    )
    with pytest.raises(InferenceError, match="broke off"):
        engine.chat([{"role": "user", "content": "x"}], stream=True).text()


def test_only_safe_failures_are_retried(fake):
    engine = InferenceEngine(server_url=fake.url)
    fake.push("/completion", Reply(503, b'{"error": {"message": "loading model"}}'))
    assert engine.infer("x").text == "ok"
    assert fake.count("/completion") == 2, "a 503 (the server did not take the request) is retried once"
    fake.push("/completion", Reply(500, b'{"error": {"message": "boom"}}'))
    with pytest.raises(InferenceError) as info:
        engine.infer("x")
    assert info.value.status_code == 500 and info.value.server_message == "boom"
    assert fake.count("/completion") == 3, "a 500 may have done work: it is never retried"
    fake.push("/completion", Reply(close=True))
    with pytest.raises(InferenceError):
        engine.infer("x")
    assert fake.count("/completion") == 4, "a request the server dropped after reading is never retried"


def test_a_hanging_server_times_out_and_the_engine_recovers(fake):
    engine = InferenceEngine(server_url=fake.url, request_timeout=0.5)
    fake.push("/completion", Reply(hang_s=3.0))
    with pytest.raises(RequestTimeoutError):
        engine.infer("x")
    assert engine.infer("x").text == "ok"


def test_an_unreachable_server_is_a_clear_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = InferenceEngine(server_url=f"http://127.0.0.1:{port}")
    with pytest.raises(InferenceError, match="cannot reach llama-server") as info:
        engine.infer("x")
    assert info.value.status_code is None
    assert isinstance(info.value, LlcudaError)
