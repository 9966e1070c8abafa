"""The in-process decode loop's host-side shortcuts keep its behaviour (llcuda/batcher.py).

Real libllama on the CPU build, the tiny random model: the end-of-generation cache, the piece cache
for stop strings, slice-filled batches (prompt chunks, positions), sequence order, cancelling, and
the GIL-holding libllama calls. Plus the one check of the sampling options.
"""

from __future__ import annotations

import ctypes
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from llcuda.engine import InferenceEngine
from llcuda.errors import ConfigError, InferenceError, LlcudaError
from llcuda.libllama.batcher import GIL_HELD, gil_holding
from llcuda.libllama.engine import InProcessEngine
from llcuda.libllama.request import Request, Sampling
from llcuda.options import SamplingOptions

PROMPT = "The weather today"
N = 24


@pytest.fixture(scope="module")
def engine(binaries, tiny_model: Path) -> Iterator[InProcessEngine]:
    with InProcessEngine(binaries=binaries).load_model(tiny_model, n_parallel=4, ctx_size=4 * 256, threads=1) as eng:
        yield eng


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def run(engine: InProcessEngine, prompt: str | list[int] = PROMPT, n: int = N, **kw: Any) -> Request:
    req = engine.submit(prompt, max_tokens=n, temperature=0, **kw)
    engine.result(req)
    return req


@pytest.fixture(scope="module")
def eos_model(
    engine: InProcessEngine, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[int], int]:
    """The tiny model with its end-of-sequence token changed to one it generates greedily from PROMPT:
    (that copy, the tokens the original generates, the index of that token's first occurrence)."""
    from gguf import GGUFReader

    free = run(engine)
    assert free.finish == "length" and len(free.out) == N, "the tiny model ended early; pick another PROMPT"
    at = next(i for i in range(4, N) if free.out[i] not in free.out[:i])
    path = tmp_path_factory.mktemp("eos") / "tiny-eos.gguf"
    shutil.copyfile(tiny_model, path)
    reader = GGUFReader(path, "r+")
    field = reader.fields["tokenizer.ggml.eos_token_id"]
    field.parts[field.data[0]][0] = free.out[at]
    reader.data.flush()
    del reader
    return path, free.out, at


# -- end of generation ----------------------------------------------------------------------------
def test_generation_stops_at_the_first_end_of_generation_token(binaries, engine, eos_model):
    path, free, at = eos_model
    with InProcessEngine(binaries=binaries).load_model(path, n_parallel=4, ctx_size=1024, threads=1) as eos:
        banned = run(eos, ignore_eos=True).out  # ignore_eos bans the end-of-generation token
        assert banned[:at] == free[:at], "same weights: the same greedy tokens up to the end token"
        assert len(banned) == N and free[at] not in banned
        for _ in range(2):  # the second time from the cache
            reqs = [eos.submit(PROMPT, max_tokens=N, temperature=0) for _ in range(3)]  # decoded together
            results = [eos.result(r) for r in reqs]
            for req, result in zip(reqs, results):
                assert req.out == free[: at + 1] and req.finish == "stop"
                assert result.finish_reason == "stop" and result.tokens_generated == at + 1
                assert result.text == eos.detokenize(free[:at])
        stream = eos.infer_stream(PROMPT, max_tokens=N, temperature=0)
        assert "".join(stream) == eos.detokenize(free[:at])
        assert stream.result is not None and stream.result.finish_reason == "stop"
        # the first engine's cache said "not an end" for that token: each engine asks its own vocabulary
        again = run(engine)
        assert again.out == free and again.finish == "length"


# -- stop strings -------------------------------------------------------------------------------
def test_stop_strings_of_requests_decoded_together(engine):
    full = engine.infer(PROMPT, max_tokens=32, temperature=0, ignore_eos=True).text
    stops = [full[k : k + 3] for k in (len(full) // 4, len(full) // 2, 3 * len(full) // 4)]
    assert all(s.strip() for s in stops), f"pick another prompt: {full!r}"
    for _ in range(2):  # the second round from the piece cache
        with ThreadPoolExecutor(len(stops)) as pool:
            results = list(
                pool.map(lambda s: engine.infer(PROMPT, max_tokens=32, temperature=0, ignore_eos=True, stop=[s]), stops)
            )
        for stop, result in zip(stops, results):
            assert result.text == full[: full.index(stop)] and result.stop_word == stop
            assert result.finish_reason == "stop" and result.tokens_generated < 32


# -- batches: prompt chunks, positions, sequence order ----------------------------------------------
def test_prompt_chunks_and_mixed_steps_give_the_same_tokens(binaries, tiny_model):
    long_prompt = " ".join(f"word{i}" for i in range(40))
    prompts = [PROMPT, long_prompt, "Once upon a time", long_prompt + " and more"]
    with InProcessEngine(binaries=binaries).load_model(
        tiny_model, n_parallel=4, ctx_size=4 * 256, threads=1, batch_size=16
    ) as small:  # prompts in chunks of 16
        assert len(small.tokenize(long_prompt)) > 3 * 16
        alone = [run(small, p, 12, ignore_eos=True).out for p in prompts]
        reqs = []
        for p in prompts:  # each joins while the earlier ones decode: steps of tokens and prompt chunks
            reqs.append(small.submit(p, max_tokens=12, temperature=0, ignore_eos=True))
            wait_until(lambda: bool(reqs[-1].out) or reqs[-1].future.done())
        for req in reqs:
            small.result(req)
        assert [r.out for r in reqs] == alone
        assert all(r.first_token is not None and r.first_token < r.done for r in reqs)


def test_decode_rows_stay_in_ascending_sequence_order(binaries, tiny_model):
    # a fresh engine of three sequences: which one a request takes depends on what finished requests left
    # in the KV cache (prefix reuse), so no earlier test may have left anything there
    with InProcessEngine(binaries=binaries).load_model(tiny_model, n_parallel=3, ctx_size=3 * 256, threads=1) as fresh:
        check_sequence_order(fresh)


def check_sequence_order(engine: InProcessEngine) -> None:
    batcher = engine._batcher
    assert batcher is not None
    seen: list[list[int]] = []
    step = batcher._step

    def recording_step() -> None:  # on the worker thread: the real step, then its batch's sequence ids
        step()
        seen.append(list(batcher._seqv[: batcher._batch.n_tokens]))

    batcher._step = recording_step  # type: ignore[method-assign]
    try:
        a = engine.submit("First", max_tokens=40, temperature=0, ignore_eos=True)
        b = engine.submit("Second", max_tokens=3, temperature=0, ignore_eos=True)  # ends early
        c = engine.submit("Third", max_tokens=40, temperature=0, ignore_eos=True)
        engine.result(b)
        d = engine.submit("Fourth", max_tokens=30, temperature=0, ignore_eos=True)  # takes b's while a and c decode
        for req in (a, c, d):
            engine.result(req)
    finally:
        del batcher._step
    assert len({a.seq, b.seq, c.seq}) == 3 and d.seq == b.seq, "d takes the only free sequence, b's"
    decode_only = [ids for ids in seen if len(set(ids)) == len(ids)]
    assert [0, 1, 2] in decode_only, "no step decoded the three together"
    assert all(ids == sorted(ids) for ids in decode_only), [ids for ids in decode_only if ids != sorted(ids)]


# -- cancel, metrics -------------------------------------------------------------------------------
def test_cancel_one_of_several_running_requests(engine):
    alone = run(engine, "Keep going", 16, ignore_eos=True).out
    keep = engine.submit("Keep going", max_tokens=16, temperature=0, ignore_eos=True)
    gone = engine.submit(PROMPT, max_tokens=200, temperature=0, ignore_eos=True)
    wait_until(lambda: len(gone.out) >= 2)
    engine.cancel(gone)
    with pytest.raises(InferenceError, match="cancelled"):
        engine.result(gone)
    assert len(gone.out) < 200
    engine.result(keep)
    assert keep.out == alone
    assert engine.health()["running"] == 0


def test_every_request_of_a_batch_gets_its_first_token_time(engine):
    results = engine.batch_infer([f"Request {i}" for i in range(6)], max_tokens=8, ignore_eos=True)
    for r in results:
        assert r.tokens_generated == 8
        assert 0 < r.time_to_first_token_ms < r.latency_ms
        assert r.tokens_per_sec > 0


# -- the GIL-holding calls ------------------------------------------------------------------------
def test_gil_holding_calls_answer_like_the_library(engine):
    lib, vocab = engine._lib, engine._vocab
    fast = gil_holding(lib)
    n_vocab = lib.llama_vocab_n_tokens(vocab)
    ours = [fast.llama_vocab_is_eog(ctypes.c_void_p(vocab), t) for t in range(n_vocab)]
    assert ours == [lib.llama_vocab_is_eog(vocab, t) for t in range(n_vocab)]
    assert any(ours) and all(isinstance(v, bool) for v in ours)
    with pytest.raises(LlcudaError, match="llama_tokenize takes .*call it through the library"):
        gil_holding(lib, ["llama_tokenize"])  # a char pointer and bools: not callable without conversion
    assert set(GIL_HELD) <= set(vars(fast))


# -- the sampling options: one check, the same messages on both paths ---------------------------------
@pytest.mark.parametrize(
    "kw, message",
    [
        ({"temperature": -1}, "temperature=-1 must be between 0.0 and 100.0."),
        ({"temperature": float("nan")}, "temperature must be a finite number, got nan."),
        ({"top_p": 2.0}, "top_p=2.0 must be between 0.0 and 1.0."),
        ({"top_p": True}, "top_p must be a finite number, got True."),
        ({"top_k": -1}, "top_k=-1 must be between 0 and 1000000."),
        ({"top_k": 2.5}, "top_k must be an int, got 2.5."),
        ({"seed": 2**32}, f"seed={2**32} must be between -1 and {2**32 - 1}."),
        ({"seed": "1"}, "seed must be an int, got '1'."),
    ],
)
def test_sampling_options_are_checked_once_with_the_same_messages(kw, message):
    args = {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "seed": None, **kw}
    for check in (lambda: SamplingOptions.checked(**args), lambda: Sampling.make(**args)):
        with pytest.raises(ConfigError) as excinfo:
            check()
        assert str(excinfo.value) == message


def test_greedy_sampling_ignores_the_other_options():
    assert Sampling.make(0.0, 0.5, 7, 123) == Sampling()
    assert Sampling.make(0.8, 0.9, 20, -1) == Sampling(0.8, 0.9, 20, 0.05, None)
    assert Sampling.make(0.8, 0.9, 20, 5) == Sampling(0.8, 0.9, 20, 0.05, 5)
    assert SamplingOptions.checked(temperature=1, top_k=3, seed=9) == SamplingOptions(temperature=1.0, top_k=3, seed=9)


def test_the_engine_checks_sampling_before_anything_runs(binaries):
    with pytest.raises(ConfigError, match="^top_p=2.0 must be between"):
        InferenceEngine(binaries=binaries, backend="inprocess").infer(PROMPT, top_p=2.0)
