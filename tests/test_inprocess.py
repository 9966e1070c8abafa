"""InferenceEngine(backend="inprocess"): libllama in this process, against the real CPU build.

The tiny random model checks behaviour against llama-server (same greedy text, same stop handling);
the real Gemma-3-270M and SmolLM2-135M check chat templates and text (``realmodel``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llcuda import InferenceEngine, config
from llcuda.errors import ConfigError, InferenceError, LlcudaError
from llcuda.inprocess import InProcessEngine
from llcuda.models import DEFAULT_MODEL, SMOLLM2_MODEL

SLOTS = 8
PROMPT = "The weather today"
REAL_MODELS = config.models_dir()  # read at import, before a fixture points LLCUDA_HOME elsewhere


@pytest.fixture(scope="module")
def local(binaries, tiny_model: Path) -> Iterator[InferenceEngine]:
    engine = InferenceEngine(binaries=binaries, backend="inprocess")
    engine.load_model(tiny_model, ctx_size=SLOTS * 512, n_parallel=SLOTS, threads=1)
    yield engine
    engine.unload()


def greedy(engine: InferenceEngine, prompt: str = PROMPT, n: int = 24, **kw: Any) -> Any:
    return engine.infer(prompt, max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


# -- same behaviour as the server backend -------------------------------------------------------
def test_greedy_text_equals_the_server_backend(local, tiny_engine):
    for prompt in (PROMPT, "Once upon a time", "1, 2, 3,"):
        ours, theirs = greedy(local, prompt), greedy(tiny_engine, prompt)
        assert ours.text == theirs.text, prompt
        assert ours.tokens_generated == theirs.tokens_generated == 24
        assert ours.finish_reason == theirs.finish_reason == "length"


def test_stop_string_like_the_server(local, tiny_engine):
    full = greedy(local, n=32).text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip(), f"pick another prompt: {full!r}"
    ours, theirs = greedy(local, n=32, stop=[stop]), greedy(tiny_engine, n=32, stop=[stop])
    assert ours.text == full[:full.index(stop)] == theirs.text
    assert ours.finish_reason == "stop" and ours.stop_word == stop == theirs.stop_word
    assert ours.tokens_generated < 32


def test_tokenize_and_detokenize_like_the_server(local, tiny_engine):
    text = "Hello world, how are you?"
    assert local.tokenize(text) == tiny_engine.tokenize(text)
    assert local.detokenize(local.tokenize(text)) == tiny_engine.detokenize(tiny_engine.tokenize(text))


# -- streaming ----------------------------------------------------------------------------------
def test_stream_pieces_join_to_the_text(local):
    stream = local.infer_stream(PROMPT, max_tokens=24, temperature=0.0, ignore_eos=True)
    pieces = list(stream)
    assert len(pieces) > 1
    assert stream.result is not None and stream.result.tokens_generated == 24
    assert "".join(pieces) == stream.result.text == greedy(local).text
    assert stream.result.time_to_first_token_ms is not None
    assert stream.result.time_to_first_token_ms <= stream.result.latency_ms


def test_stream_never_shows_the_stop_string(local):
    full = greedy(local, n=32).text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    stream = local.infer_stream(PROMPT, max_tokens=32, temperature=0.0, ignore_eos=True, stop=stop)
    pieces = list(stream)
    assert "".join(pieces) == full[:full.index(stop)]
    assert stream.result is not None and stream.result.stop_word == stop


def test_a_stream_closed_early_frees_its_sequence(local):
    stream = local.infer_stream(PROMPT, max_tokens=400, temperature=0.0, ignore_eos=True)
    next(stream)
    stream.close()
    deadline = time.monotonic() + 10
    while local.health()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert local.health()["running"] == 0


# -- per-request sampling -----------------------------------------------------------------------
def test_seeded_sampling_is_reproducible_and_greedy_never_changes_a_chain(local):
    base = greedy(local).text
    local.reset_metrics()
    for _ in range(3):
        assert greedy(local).text == base
    assert local.inprocess_stats["sampler_changes"] == 0, "a greedy request attached a new sampler chain"
    a = local.infer(PROMPT, max_tokens=24, temperature=1.0, seed=42, ignore_eos=True).text
    b = local.infer(PROMPT, max_tokens=24, temperature=1.0, seed=42, ignore_eos=True).text
    c = local.infer(PROMPT, max_tokens=24, temperature=1.0, seed=43, ignore_eos=True).text
    assert a == b
    assert c != a
    assert local.inprocess_stats["sampler_changes"] >= 1
    assert greedy(local).text == base, "greedy output changed after sampled requests"


def test_sampling_options_are_validated(local):
    with pytest.raises(ConfigError, match="temperature"):
        local.infer(PROMPT, temperature=-1)
    with pytest.raises(ConfigError, match="top_p"):
        local.infer(PROMPT, top_p=2.0)
    with pytest.raises(ConfigError, match="stop"):
        local.infer(PROMPT, stop=[""])


# -- batches and concurrency --------------------------------------------------------------------
def test_batch_of_8_is_decoded_together(local):
    prompts = [f"Request number {i} says" for i in range(SLOTS)]
    alone = [greedy(local, p, 16).text for p in prompts]
    local.reset_metrics()
    greedy(local, prompts[0], 16)
    single_steps = local.inprocess_stats["steps"]
    local.reset_metrics()
    results = local.batch_infer(prompts, max_tokens=16, temperature=0.0, ignore_eos=True)
    assert [r.text for r in results] == alone
    steps = local.inprocess_stats["steps"]
    assert steps < 2 * single_steps, f"{steps} steps for 8 requests, {single_steps} for one: not batched"
    metrics = local.get_metrics()
    assert metrics.requests == SLOTS + 0 and metrics.tokens_generated == 16 * SLOTS


def test_threads_share_the_engine(local):
    prompts = [f"Thread {i}:" for i in range(12)]  # more than the sequences: some queue
    alone = {p: greedy(local, p, 8).text for p in prompts}
    got: dict[str, str] = {}
    threads = [threading.Thread(target=lambda p=p: got.__setitem__(p, greedy(local, p, 8).text)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == alone


# -- options and errors -------------------------------------------------------------------------
@pytest.mark.parametrize("option, value", [
    ("host", "0.0.0.0"), ("port", 8081), ("rpc", ["127.0.0.1:50052"]), ("extra_args", ["--verbose"]),
    ("allow_unauthenticated", True), ("embeddings", True),
])
def test_server_only_options_are_refused(binaries, tiny_model, option, value):
    engine = InferenceEngine(binaries=binaries, backend="inprocess")
    with pytest.raises(ConfigError, match=f"^{option} is an option of the server backend.*backend='server'"):
        engine.load_model(tiny_model, **{option: value})
    assert not engine.is_loaded


def test_server_only_constructor_options_and_bad_backends(binaries, monkeypatch):
    with pytest.raises(ConfigError, match="server_url"):
        InferenceEngine(server_url="http://127.0.0.1:1", backend="inprocess")
    with pytest.raises(ConfigError, match="api_key"):
        InferenceEngine(api_key="secret", backend="inprocess")
    with pytest.raises(ConfigError, match="backend='gpu'"):
        InferenceEngine(backend="gpu")
    monkeypatch.setenv("LLCUDA_BACKEND", "inprocess")
    assert InferenceEngine().backend == "inprocess"
    assert InferenceEngine(backend="server").backend == "server"  # the argument wins
    monkeypatch.setenv("LLCUDA_BACKEND", "fast")
    with pytest.raises(ConfigError, match="LLCUDA_BACKEND='fast'"):
        InferenceEngine()


def test_kv_unified_is_in_process_only(binaries, tiny_model):
    with pytest.raises(ConfigError, match="kv_unified.*--kv-unified"):
        InferenceEngine(binaries=binaries).load_model(tiny_model, kv_unified=True)


def test_context_overflow_says_how_to_fix_it(local):
    with pytest.raises(ConfigError, match="context per sequence.*ctx_size"):
        local.infer("x", max_tokens=600)


def test_no_model_loaded(binaries):
    engine = InferenceEngine(binaries=binaries, backend="inprocess")
    with pytest.raises(LlcudaError, match="load_model"):
        engine.infer("x")
    with pytest.raises(LlcudaError, match="no URL"):
        _ = engine.url


def test_chat_needs_a_template_llama_cpp_knows(local):
    # The tiny model's template is Jinja that llama.cpp's built-in templates do not recognise.
    with pytest.raises(ConfigError, match="do not recognise tiny-llama's template.*backend='server'"):
        local.chat([{"role": "user", "content": "Hi"}])


def test_health_timings_and_metrics(local):
    health = local.health()
    assert health["status"] == "ok" and health["backend"] == "inprocess" and health["slots"] == SLOTS
    assert set(local.load_timings) >= {"library_s", "model_s", "context_s", "warmup_s"}
    assert local.load_seconds and local.load_seconds >= sum(local.load_timings.values()) * 0.99
    local.reset_metrics()
    greedy(local, n=4)
    assert local.get_metrics().requests == 1 and local.get_metrics().tokens_generated == 4


def test_embeddings_through_a_server_with_the_inprocess_backend(local, isolated_home):
    vectors = local.embed(["first text", "a different second text"])
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0
    assert vectors[0] != vectors[1]


def test_a_failed_decode_fails_only_its_requests(binaries, tiny_model):
    """A real libllama failure (a token id outside the vocabulary) fails that request with the log
    tail; the requests around it finish and the engine keeps working."""
    with InProcessEngine(binaries=binaries).load_model(tiny_model, n_parallel=2, ctx_size=2 * 256) as engine:
        expected = engine.infer(PROMPT, max_tokens=8, ignore_eos=True).text
        bad = engine.submit([1, 10_000_000], max_tokens=4)
        with pytest.raises(InferenceError, match="llama_decode failed") as excinfo:
            engine.result(bad)
        assert excinfo.value.log_tail
        assert engine.infer(PROMPT, max_tokens=8, ignore_eos=True).text == expected
        assert engine.health()["running"] == 0


def test_unload_fails_queued_requests(binaries, tiny_model):
    engine = InferenceEngine(binaries=binaries, backend="inprocess")
    engine.load_model(tiny_model, n_parallel=1, ctx_size=1024, threads=1)
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            engine.infer(f"Queued request {i}", max_tokens=900, temperature=0.0, ignore_eos=True)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while engine.health()["queued"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.unload()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a caller hangs after unload()"
    assert len(errors) == 4 and all(isinstance(e, InferenceError) and "unloaded" in str(e) for e in errors)


# -- real models --------------------------------------------------------------------------------
def _real(name: str) -> Path | str:
    path = REAL_MODELS / f"{name}.gguf"
    return path if path.is_file() else name


@pytest.fixture(scope="module", params=[DEFAULT_MODEL, SMOLLM2_MODEL])
def real_pair(request, binaries) -> Iterator[tuple[InferenceEngine, InferenceEngine]]:
    model = _real(request.param)
    local = InferenceEngine(binaries=binaries, backend="inprocess").load_model(model, ctx_size=1024, n_parallel=1)
    server = InferenceEngine(binaries=binaries).load_model(model, ctx_size=1024, n_parallel=1)
    yield local, server
    local.unload()
    server.unload()


@pytest.mark.realmodel
def test_real_model_greedy_text_and_chat_equal_the_server(real_pair):
    local, server = real_pair
    prompt = "Q: What is the capital of France?\nA:"
    ours = local.infer(prompt, max_tokens=16, temperature=0.0)
    assert "Paris" in ours.text
    assert ours.text == server.infer(prompt, max_tokens=16, temperature=0.0).text
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    if local.model_name == DEFAULT_MODEL:  # the Gemma-3-270M base model has no chat template
        with pytest.raises(ConfigError, match="has no chat template"):
            local.chat(messages)
        return
    chat = local.chat(messages, max_tokens=24, temperature=0.0)
    assert chat.text.strip() and chat.finish_reason == "stop"
    assert chat.text == server.chat(messages, max_tokens=24, temperature=0.0).text
    stream = local.chat(messages, max_tokens=24, temperature=0.0, stream=True)
    assert "".join(stream) == chat.text


@pytest.mark.realmodel
def test_real_model_streams_whole_characters(real_pair):
    local, _ = real_pair
    stream = local.infer_stream("Translate to Japanese: good morning ->", max_tokens=24, temperature=0.0)
    pieces = list(stream)
    assert stream.result is not None and "".join(pieces) == stream.result.text
    if "\ufffd" not in stream.result.text:
        assert not any("\ufffd" in p for p in pieces)
