"""InferenceEngine against a real llama-server (CPU build) serving a tiny random-weight model."""

from __future__ import annotations

import math
import threading
import time

import pytest

from llcuda import ConfigError, InferenceError, LlcudaError
from llcuda.engine import InferenceEngine
from llcuda.processes.client import LlamaClient


def test_infer_returns_text_and_counts(tiny_engine):
    result = tiny_engine.infer("Hello there", max_tokens=16, temperature=0.0, ignore_eos=True)
    assert result.text
    assert result.tokens_generated == 16
    assert result.finish_reason == "length"
    assert result.prompt_tokens >= 2
    assert result.latency_ms > 0 and result.tokens_per_sec > 0
    assert str(result) == result.text


def test_greedy_is_deterministic(tiny_engine):
    first = tiny_engine.infer("The weather today", max_tokens=24, temperature=0.0, ignore_eos=True)
    second = tiny_engine.infer("The weather today", max_tokens=24, temperature=0.0, ignore_eos=True)
    assert first.text == second.text


def test_seed_makes_sampling_reproducible(tiny_engine):
    kwargs = dict(max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, ignore_eos=True)
    a = tiny_engine.infer("Once upon a time", seed=42, **kwargs)
    b = tiny_engine.infer("Once upon a time", seed=42, **kwargs)
    others = {tiny_engine.infer("Once upon a time", seed=s, **kwargs).text for s in (1, 2, 3)}
    assert a.text == b.text
    assert others != {a.text}, "different seeds should sample different text from a near-uniform model"


def test_max_tokens_is_respected(tiny_engine):
    for n in (1, 5, 33):
        assert tiny_engine.infer("Count", max_tokens=n, temperature=0.0, ignore_eos=True).tokens_generated == n


def test_stop_sequence_ends_generation_before_it(tiny_engine):
    full = tiny_engine.infer("A story:", max_tokens=40, temperature=0.0, ignore_eos=True).text
    middle = len(full) // 2
    stop = full[middle : middle + 4]
    assert stop.strip(), f"need a visible stop string from {full!r}"
    cut = tiny_engine.infer("A story:", max_tokens=40, temperature=0.0, ignore_eos=True, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.stop_word == stop
    assert stop not in cut.text
    assert full.startswith(cut.text)
    assert len(cut.text) <= full.index(stop)


def test_stream_yields_pieces_while_the_server_is_still_generating(tiny_engine):
    client = LlamaClient(tiny_engine.url)
    stream = tiny_engine.infer_stream("Tell me everything", max_tokens=400, temperature=0.0, ignore_eos=True)
    first = next(stream)
    busy = [s for s in client.slots() if s.get("is_processing")]
    assert first
    assert busy, "a slot must still be generating when the first piece arrives"
    rest = "".join(stream)
    assert stream.result is not None
    assert stream.result.text == first + rest
    assert stream.result.tokens_generated == 400
    assert stream.result.time_to_first_token_ms is not None
    assert stream.result.time_to_first_token_ms < stream.result.latency_ms


def test_stream_matches_non_streamed_text(tiny_engine):
    plain = tiny_engine.infer("Same text", max_tokens=20, temperature=0.0, ignore_eos=True).text
    streamed = tiny_engine.infer_stream("Same text", max_tokens=20, temperature=0.0, ignore_eos=True)
    pieces = list(streamed)
    assert len(pieces) > 1
    assert "".join(pieces) == plain == streamed.text()


def test_batch_infer_runs_requests_concurrently(tiny_engine):
    client = LlamaClient(tiny_engine.url)
    seen_busy = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen_busy.append(sum(1 for s in client.slots() if s.get("is_processing")))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        prompts = [f"Prompt number {i}" for i in range(8)]
        results = tiny_engine.batch_infer(prompts, max_tokens=300, temperature=0.0, ignore_eos=True)
    finally:
        done.set()
        watcher.join()
    assert [r.tokens_generated for r in results] == [300] * 8
    assert max(seen_busy) >= 2, f"slots busy at once never exceeded 1: {sorted(set(seen_busy))}"


def test_chat_uses_the_models_template(tiny_engine):
    bare = len(tiny_engine.tokenize("hi"))
    result = tiny_engine.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0)
    assert isinstance(result.text, str)
    assert result.finish_reason in ("stop", "length")
    assert result.prompt_tokens > bare + 2, "the chat template should wrap the message in role markers"


def test_chat_stream(tiny_engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}]
    stream = tiny_engine.chat(messages, max_tokens=12, temperature=0.0, stream=True)
    text = "".join(stream)
    assert stream.result is not None and stream.result.text == text
    whole = tiny_engine.chat(messages, max_tokens=12, temperature=0.0)
    assert whole.text == text


def test_embeddings(tiny_engine):
    vectors = tiny_engine.embed(["first text", "a different second text"])
    assert len(vectors) == 2
    assert len(vectors[0]) == len(vectors[1]) == 64  # the tiny model's width
    assert all(math.isfinite(x) for v in vectors for x in v)
    assert vectors[0] != vectors[1]
    assert tiny_engine.embed("first text") == [vectors[0]]


def test_tokenize_roundtrip(tiny_engine):
    tokens = tiny_engine.tokenize("Hello world")
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert tiny_engine.detokenize(tokens).strip() == "Hello world"


def test_metrics_report_latency_and_throughput(tiny_engine):
    tiny_engine.reset_metrics()
    for _ in range(5):
        tiny_engine.infer("Metrics", max_tokens=8, temperature=0.0, ignore_eos=True)
    m = tiny_engine.get_metrics()
    assert m.requests == 5 and m.failures == 0 and m.tokens_generated == 40
    assert 0 < m.latency_ms_p50 <= m.latency_ms_p95 <= m.latency_ms_p99
    assert m.throughput_tokens_per_sec > 0
    assert m.server.get("tokens_predicted_total", 0) >= 40


def test_prompt_longer_than_the_context_is_a_clear_error(tiny_engine):
    with pytest.raises(InferenceError) as info:
        tiny_engine.infer("word " * 3000, max_tokens=4)
    assert info.value.status_code == 400
    assert "context" in str(info.value).lower()
    assert tiny_engine.infer("still works", max_tokens=2, temperature=0.0).text is not None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt": ""},
        {"prompt": None},
        {"prompt": "x", "max_tokens": 0},
        {"prompt": "x", "max_tokens": -5},
        {"prompt": "x", "max_tokens": 10**9},
        {"prompt": "x", "temperature": float("nan")},
        {"prompt": "x", "temperature": -1.0},
        {"prompt": "x", "top_p": 2.0},
        {"prompt": "x", "stop": [""]},
    ],
)
def test_bad_arguments_are_named_errors(tiny_engine, kwargs):
    with pytest.raises(ConfigError):
        tiny_engine.infer(**kwargs)


@pytest.mark.parametrize("messages", [[], "hi", [{"role": "wizard", "content": "x"}], [{"role": "user"}], ["hi"]])
def test_malformed_chat_messages(tiny_engine, messages):
    with pytest.raises(ConfigError):
        tiny_engine.chat(messages)


def test_engine_reuses_a_running_server(tiny_engine):
    other = InferenceEngine(server_url=tiny_engine.url)
    assert other.infer("Reuse", max_tokens=4, temperature=0.0, ignore_eos=True).tokens_generated == 4
    with pytest.raises(ConfigError):
        other.load_model("anything")
    other.unload()
    assert tiny_engine.infer("owner unaffected", max_tokens=2).text is not None


def test_unloaded_engine_says_what_to_do():
    with pytest.raises(LlcudaError, match="load_model"):
        InferenceEngine().infer("x")


def test_unload_stops_the_server_and_restart_after_a_crash(binaries, tiny_model, isolated_home):
    import os
    import signal

    engine = InferenceEngine(binaries=binaries)
    engine.load_model(tiny_model, ctx_size=512, n_parallel=1)
    first_pid = engine.server.pid
    os.kill(first_pid, signal.SIGKILL)
    engine.server._process.wait()  # reap it so is_running() sees the death
    result = engine.infer("after crash", max_tokens=3, temperature=0.0, ignore_eos=True)
    assert result.tokens_generated == 3
    assert engine.server.pid != first_pid
    second_pid = engine.server.pid
    engine.unload()
    with pytest.raises(ProcessLookupError):
        os.kill(second_pid, 0)
