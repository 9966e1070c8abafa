"""InferenceEngine(backend="inprocess"): libllama in this process, against the real CPU build.

The tiny random model checks behaviour against llama-server (same greedy text, same stop handling);
the real Gemma-3-270M and SmolLM2-135M check chat templates and text (``realmodel``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llcuda import config
from llcuda.engine import InferenceEngine
from llcuda.errors import (
    ConfigError,
    ContextLengthError,
    GPUCompatibilityError,
    InferenceError,
    LlcudaError,
    ModelNotFoundError,
)
from llcuda.libllama.bindings import recent_log
from llcuda.libllama.engine import InProcessEngine
from llcuda.libllama.request import Request
from llcuda.models import DEFAULT_MODEL, SMOLLM2_MODEL
from llcuda.system.binaries import Binaries

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
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), f"pick another prompt: {full!r}"
    ours, theirs = greedy(local, n=32, stop=[stop]), greedy(tiny_engine, n=32, stop=[stop])
    assert ours.text == full[: full.index(stop)] == theirs.text
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
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    stream = local.infer_stream(PROMPT, max_tokens=32, temperature=0.0, ignore_eos=True, stop=stop)
    pieces = list(stream)
    assert "".join(pieces) == full[: full.index(stop)]
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
    # llama_get_sampled_tokens: a step with several sampled rows reads them in one call (the texts above check them)
    assert local.inprocess_stats["bulk_reads"] >= 15, local.inprocess_stats
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
    assert sorted(got) == sorted(prompts), "some threads got no answer"
    # What else runs in a step sets the batch's shape and the cache cells in use, and with them which kernels
    # run and the order of their float sums; this random-weight model has near-tied logits, so a late token
    # can flip. Answers crossed between sequences, or a sequence reading another's cells, differ from the
    # first tokens on.
    differing = {p: (got[p], alone[p]) for p in prompts if got[p] != alone[p]}
    assert len(differing) <= 2, f"{len(differing)} of {len(prompts)} answers changed under threads: {differing}"
    for prompt, (threaded, single) in differing.items():
        shared = len(os.path.commonprefix([threaded, single]))
        assert shared >= len(single) // 2, f"{prompt!r}: {threaded!r} under threads, {single!r} alone"


# -- options and errors -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, value",
    [
        ("host", "0.0.0.0"),
        ("port", 8081),
        ("rpc", ["127.0.0.1:50052"]),
        ("extra_args", ["--verbose"]),
        ("allow_unauthenticated", True),
    ],
)
def test_server_only_options_are_refused(binaries, tiny_model, option, value):
    engine = InferenceEngine(binaries=binaries, backend="inprocess")
    with pytest.raises(ConfigError, match=f"^{option} is an option of the server backends.*InferenceEngine"):
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
    assert InferenceEngine(backend="llama-server").backend == "llama-server"  # the argument wins
    with pytest.raises(ConfigError, match="backend='server' must be one of 'serve', 'inprocess', 'llama-server'"):
        InferenceEngine(backend="server")
    monkeypatch.setenv("LLCUDA_BACKEND", "fast")
    with pytest.raises(ConfigError, match="LLCUDA_BACKEND='fast'"):
        InferenceEngine()


def test_default_backend_follows_where_llama_cpp_runs(binaries, monkeypatch):
    """A CPU-only build defaults to the in-process engine (the HTTP child would take cores from the compute
    threads); a build that runs on a GPU, and an engine given a server URL, default to "serve"."""
    from dataclasses import replace

    from llcuda.system import gpu

    monkeypatch.delenv("LLCUDA_BACKEND", raising=False)
    monkeypatch.delenv("LLCUDA_SERVER_URL", raising=False)
    cpu_build = replace(binaries, build_info={**binaries.build_info, "backend": "cpu"})
    cuda_build = replace(binaries, build_info={**binaries.build_info, "backend": "cuda"})
    assert InferenceEngine(binaries=cpu_build).backend == "inprocess"
    assert InferenceEngine(binaries=cpu_build, server_url="http://127.0.0.1:1").backend == "serve"
    h100 = gpu.GPUInfo(0, "GPU-0", "NVIDIA H100 80GB HBM3", (9, 0), 81559, 81000, "580.159.04")
    one_gpu = gpu.GPUReport(gpus=(h100,), driver_cuda_version="13.0")
    monkeypatch.setattr(gpu, "detect", lambda: one_gpu)
    assert InferenceEngine(binaries=cuda_build).backend == "serve"
    assert InferenceEngine(binaries=cpu_build).backend == "inprocess"  # a GPU it cannot use changes nothing
    monkeypatch.setattr(gpu, "detect", lambda: gpu.GPUReport(gpus=(), driver_cuda_version=None))
    assert InferenceEngine(binaries=cuda_build).backend == "inprocess"  # a CUDA build on a machine without one
    monkeypatch.setenv("LLCUDA_BACKEND", "serve")
    assert InferenceEngine(binaries=cpu_build).backend == "serve"  # asked for, it is what runs


def test_kv_unified_reaches_llama_server(binaries, tiny_model, isolated_home):
    with InferenceEngine(binaries=binaries, backend="llama-server").load_model(
        tiny_model, ctx_size=512, n_parallel=2, threads=1, kv_unified=False
    ) as engine:
        assert engine.server is not None and engine.server.settings.kv_unified is False
        assert "--no-kv-unified" in engine.server.command(1) and "--kv-unified" not in engine.server.command(1)
        assert engine.infer(PROMPT, max_tokens=4, temperature=0.0, ignore_eos=True).tokens_generated == 4
    assert engine.options is not None and engine.options.kv_unified is False


def test_a_prompt_that_does_not_fit_says_how_to_fix_it(local):
    n_ctx = local._backend._local().n_ctx_seq
    with pytest.raises(ContextLengthError, match="but a sequence holds at most .*shorten the prompt.*ctx_size"):
        local.infer("word " * n_ctx, max_tokens=4)


def test_generation_stops_at_the_end_of_the_context(binaries, tiny_model):
    """A prompt that fits but leaves less room than max_tokens is not refused: it ends with "length"
    when the context is full."""
    with InProcessEngine(binaries=binaries).load_model(tiny_model, n_parallel=1, ctx_size=64, threads=1) as small:
        result = small.infer(PROMPT, max_tokens=600, temperature=0.0, ignore_eos=True)
        assert result.finish_reason == "length"
        assert result.prompt_tokens + result.tokens_generated == small.n_ctx_seq < 600
        streamed = small.infer_stream(PROMPT, max_tokens=600, temperature=0.0, ignore_eos=True)
        assert "".join(streamed) == result.text
        assert streamed.result is not None and streamed.result.finish_reason == "length"
        assert small.infer(PROMPT, max_tokens=8, temperature=0.0, ignore_eos=True).tokens_generated == 8


def test_a_request_reuses_the_kv_a_finished_one_left(binaries, tiny_model):
    """A second request that extends the first one's prompt and answer prefills only the rest, and
    gives the same greedy text as an engine that has nothing cached."""
    with InProcessEngine(binaries=binaries).load_model(tiny_model, n_parallel=2, ctx_size=1024, threads=1) as eng:
        first = eng.infer(PROMPT, max_tokens=16, temperature=0.0, ignore_eos=True)
        assert first.timings["prompt_cached"] <= 1  # at most the BOS the load's warm-up request left
        follow_up = PROMPT + first.text + " and then"
        eng.reset_stats()
        again = eng.infer(follow_up, max_tokens=16, temperature=0.0, ignore_eos=True)
        n_first = len(eng.prompt_tokens(PROMPT)) + first.tokens_generated - 1  # the last token was never decoded
        assert len(eng.prompt_tokens(PROMPT)) < again.timings["prompt_cached"] <= n_first  # answer tokens too
        assert eng.stats["reused_tokens"] == again.timings["prompt_cached"]
    with InProcessEngine(binaries=binaries).load_model(tiny_model, n_parallel=2, ctx_size=1024, threads=1) as fresh:
        cold = fresh.infer(follow_up, max_tokens=16, temperature=0.0, ignore_eos=True)
        assert cold.timings["prompt_cached"] <= 1
    assert again.text == cold.text and again.prompt_tokens == cold.prompt_tokens


def test_no_model_loaded(binaries):
    engine = InferenceEngine(binaries=binaries, backend="inprocess")
    with pytest.raises(LlcudaError, match="load_model"):
        engine.infer("x")
    with pytest.raises(LlcudaError, match="no URL"):
        _ = engine.url


def test_chat_renders_the_models_jinja_template_as_the_server_does(local, tiny_engine):
    # The tiny model's template (scripts/random_gguf.py) is Jinja that llama.cpp's built-in templates do not
    # know; both backends render it and tokenize the result with one BOS, so greedy replies are equal.
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    reply = local.chat(messages, max_tokens=12, temperature=0.0)
    assert reply.text == tiny_engine.chat(messages, max_tokens=12, temperature=0.0).text
    parts = [messages[0], {"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]}]
    assert local.chat(parts, max_tokens=12, temperature=0.0).text == reply.text
    with pytest.raises(ConfigError, match="text only"):
        local.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


def test_health_timings_and_metrics(local):
    health = local.health()
    assert health["status"] == "ok" and health["backend"] == "inprocess" and health["slots"] == SLOTS
    assert health["sampled_logits_copied"] is False, "llcuda's builds skip the sampled logits' copy"
    timings = local.load_timings
    phases = ("checks_s", "model_s", "context_s", "warmup_s")  # one after another
    assert set(timings) == {*phases, "resolve_s", "detect_s", "library_s"}
    assert local.load_seconds and local.load_seconds >= sum(timings[k] for k in phases) * 0.99
    for part in ("resolve_s", "detect_s", "library_s"):  # at the same time, within checks_s
        assert 0 <= timings[part] <= timings["checks_s"]
    assert local.load_mode == "auto"
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
        expected = engine.infer(PROMPT, max_tokens=8, temperature=0.0, ignore_eos=True).text
        with pytest.raises(ConfigError, match="token id 10000000, outside the vocabulary"):
            engine.submit([1, 10_000_000], max_tokens=4)  # refused before it reaches the decode loop
        bad = Request([1, 10_000_000], 4)  # past that check, straight into the decode loop
        assert engine._batcher is not None
        engine._batcher.put(bad)
        with pytest.raises(InferenceError, match="llama_decode failed") as excinfo:
            engine.result(bad)
        assert excinfo.value.log_tail
        assert engine.infer(PROMPT, max_tokens=8, temperature=0.0, ignore_eos=True).text == expected
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


# -- loading: load_mode, checks that run at the same time -------------------------------------------
def _loader_mode() -> str:
    """The load_mode llama.cpp's loader logged last ("loading model tensors ... (load_mode = X)")."""
    lines = [line for line in recent_log().splitlines() if "(load_mode = " in line]
    assert lines, "libllama logged no load_mode"
    return lines[-1].rsplit("(load_mode = ", 1)[1].rstrip(")")


def test_load_modes_read_the_same_weights(binaries, tiny_model, monkeypatch):
    monkeypatch.delenv("LLCUDA_LOAD_MODE", raising=False)
    texts = {}
    for mode in ("none", "mmap"):
        with InProcessEngine(binaries=binaries).load_model(
            tiny_model, ctx_size=512, threads=1, load_mode=mode
        ) as engine:
            assert engine.load_mode == mode and _loader_mode() == mode
            texts[mode] = engine.infer(PROMPT, max_tokens=24, temperature=0.0, ignore_eos=True).text
    assert texts["none"] == texts["mmap"] and texts["none"]
    monkeypatch.setenv("LLCUDA_LOAD_MODE", "none")  # the default when the argument is left out
    with InProcessEngine(binaries=binaries).load_model(tiny_model, ctx_size=512, threads=1) as engine:
        assert engine.load_mode == "none" and _loader_mode() == "none"


def test_a_bad_load_mode_fails_before_anything_loads(binaries, monkeypatch):
    engine = InProcessEngine(binaries=binaries)
    with pytest.raises(ConfigError, match="^load_mode='mlock' must be one of 'auto', 'mmap', 'none', 'direct_io'"):
        engine.load_model("/no/such/model.gguf", load_mode="mlock")  # before the model is looked for
    monkeypatch.setenv("LLCUDA_LOAD_MODE", "fast")
    with pytest.raises(ConfigError, match="^LLCUDA_LOAD_MODE='fast'"):
        engine.load_model("/no/such/model.gguf")
    with pytest.raises(ConfigError, match="^LLCUDA_LOAD_MODE='fast'"):
        InferenceEngine(binaries=binaries).load_model("/no/such/model.gguf")  # the server backend too
    assert not engine.is_loaded


def test_load_mode_reaches_llama_server(binaries, tiny_model, isolated_home):
    with InferenceEngine(binaries=binaries).load_model(
        tiny_model, ctx_size=512, n_parallel=1, threads=1, load_mode="none", extra_args=["-lv", "4"]
    ) as engine:
        assert engine.load_mode == "none" and engine.server is not None  # -lv 4: the loader's lines too
        assert engine.server.settings.extra_args == ("-lv", "4") and engine.server.settings.load_mode == "none"
        command = engine.server.command(1)
        assert command[command.index("--load-mode") + 1] == "none"
        assert engine.infer(PROMPT, max_tokens=4, temperature=0.0).tokens_generated == 4
        assert engine.server.log_path is not None
        assert "(load_mode = none)" in engine.server.log_path.read_text(errors="replace")


def _no_load_threads() -> bool:
    return not any(t.name.startswith("llcuda-load") for t in threading.enumerate())


def test_check_errors_come_in_order_and_leave_no_threads(binaries, tiny_model):
    """The model, the GPUs and the library are checked at the same time; their errors come in that order."""
    no_lib = Binaries(bin_dir=binaries.bin_dir, lib_dir=None, source="test", build_info={"backend": "cpu"})
    with pytest.raises(ModelNotFoundError):
        InProcessEngine(binaries=no_lib).load_model("/no/such/model.gguf")
    assert _no_load_threads()
    with pytest.raises(LlcudaError, match="no lib/ folder"):
        InProcessEngine(binaries=no_lib).load_model(tiny_model)
    assert _no_load_threads()
    cuda = Binaries(
        bin_dir=binaries.bin_dir, lib_dir=None, source="test", build_info={"backend": "cuda", "cuda_archs": ["1-real"]}
    )  # kernels for no real GPU
    with pytest.raises(ModelNotFoundError):
        InProcessEngine(binaries=cuda).load_model("/no/such/model.gguf")
    with pytest.raises(GPUCompatibilityError):  # no GPU here, or one the build has no kernels for
        InProcessEngine(binaries=cuda).load_model(tiny_model)
    with pytest.raises(ConfigError, match="tensor_split"):  # the split is checked with the GPUs, before the library
        InProcessEngine(binaries=no_lib).load_model(tiny_model, tensor_split="3,1")
    assert _no_load_threads()


def test_a_failed_check_keeps_the_loaded_model(binaries, tiny_model):
    with InProcessEngine(binaries=binaries).load_model(tiny_model, ctx_size=512, threads=1) as engine:
        with pytest.raises(ModelNotFoundError):
            engine.load_model("/no/such/model.gguf")
        assert engine.is_loaded and engine.infer(PROMPT, max_tokens=2, ignore_eos=True).tokens_generated == 2
        engine.load_model(tiny_model, ctx_size=512, threads=1)  # the library is loaded once; the model again
        assert engine.is_loaded and engine.load_timings["library_s"] < 0.5


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


def test_libllama_errors_reach_stderr_at_once(binaries, tmp_path: Path) -> None:
    # ggml logs a CUDA error's cause and then aborts the process: the cause must already be on stderr,
    # not only in the in-memory log tail. Here a real libllama error (a missing file) in a child process.
    code = (
        "import sys\n"
        "from llcuda.system import binaries\n"
        "from llcuda.libllama.bindings import load_library, recent_log\n"
        "lib = load_library(binaries.find_binaries())\n"
        "assert not lib.llama_model_load_from_file(sys.argv[1].encode(), lib.llama_model_default_params())\n"
        "assert 'failed to load model' in recent_log()\n"
    )
    missing = str(tmp_path / "missing.gguf")
    done = subprocess.run(
        [sys.executable, "-c", code, missing],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, LLCUDA_BIN_DIR=str(binaries.bin_dir)),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"failed to open GGUF file '{missing}'" in done.stderr
    assert "llama_model_load_from_file_impl: failed to load model" in done.stderr


LOG_FILTER_CHECK = """
import json, sys
from llcuda.libllama.engine import InProcessEngine
from llcuda.libllama.bindings import log_filter_active, recent_log
with InProcessEngine().load_model(sys.argv[1], ctx_size=256, threads=1) as engine:
    engine.infer("Hello", max_tokens=4, ignore_eos=True)
    log = recent_log()
print(json.dumps({"active": log_filter_active(), "debug": "assigned to device" in log,
                  "info": "llama_model_loader: loaded meta data" in log}))
"""


def test_debug_log_lines_stop_in_the_c_filter(binaries, tiny_model: Path, tmp_path: Path) -> None:
    # recipe/llcuda_log.c, built by the build script into lib/: libllama's debug lines (here
    # "load_tensors: layer N assigned to device", LLAMA_LOG_DEBUG) never reach Python; info lines do.
    # The same binaries without the library (older builds) send every line through Python.
    assert binaries.lib_dir is not None and (binaries.lib_dir / "libllcuda-log.so").is_file(), (
        "the build script did not build lib/libllcuda-log.so"
    )
    without = tmp_path / "prefix"
    shutil.copytree(binaries.bin_dir.parent, without, symlinks=True)
    (without / "lib" / "libllcuda-log.so").unlink()
    seen = {}
    for name, bin_dir in (("filter", binaries.bin_dir), ("python", without / "bin")):
        done = subprocess.run(
            [sys.executable, "-c", LOG_FILTER_CHECK, str(tiny_model)],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, LLCUDA_BIN_DIR=str(bin_dir)),
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        seen[name] = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["filter"] == {"active": True, "debug": False, "info": True}
    assert seen["python"] == {"active": False, "debug": True, "info": True}


# -- parity with llama-server on a real chat model: special tokens, ignore_eos ----------------------
CHATML = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "What is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def smollm2(binaries) -> Iterator[tuple[InProcessEngine, InferenceEngine]]:
    model = _real(SMOLLM2_MODEL)
    with InProcessEngine(binaries=binaries).load_model(model, ctx_size=1024, n_parallel=1) as local:
        with InferenceEngine(binaries=binaries, backend="llama-server").load_model(
            model, ctx_size=1024, n_parallel=1
        ) as server:
            yield local, server


@pytest.mark.realmodel
def test_a_prompt_s_special_tokens_are_parsed_like_the_server(smollm2):
    local, server = smollm2
    assert len(local.tokenize("<|im_start|>", add_special=False, parse_special=True)) == 1
    bos = 1 if local._lib.llama_vocab_get_add_bos(local._vocab) else 0
    ours = local.infer(CHATML, max_tokens=1, temperature=0.0)
    assert ours.prompt_tokens == len(local.prompt_tokens(CHATML)) == len(server.tokenize(CHATML)) + bos
    assert ours.prompt_tokens == server.infer(CHATML, max_tokens=1, temperature=0.0).prompt_tokens


@pytest.mark.realmodel
def test_ignore_eos_never_writes_an_end_of_generation_token(smollm2):
    local, server = smollm2
    answer = local.infer(CHATML, max_tokens=200, temperature=0.0)
    assert answer.finish_reason == "stop" and answer.tokens_generated < 200, "the model should end its turn"
    req = local.submit(CHATML, max_tokens=200, temperature=0.0, ignore_eos=True)
    result = local.result(req)
    assert result.tokens_generated == len(req.out) == 200 and result.finish_reason == "length"
    assert not any(local._lib.llama_vocab_is_eog(local._vocab, t) for t in req.out)
    assert "<|im_end|>" not in local.detokenize(req.out, special=True)
    assert result.text.startswith(answer.text)
    assert result.text == server.infer(CHATML, max_tokens=200, temperature=0.0, ignore_eos=True).text
