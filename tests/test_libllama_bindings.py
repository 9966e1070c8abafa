"""llcuda.libllama.bindings's ctypes layouts against llama.h, and the InProcessEngine used directly
(real CPU build, tiny random model)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llcuda.libllama import bindings as libllama
from llcuda.libllama.engine import InProcessEngine

STRUCTS = {
    "llama_model_params": libllama.ModelParams,
    "llama_context_params": libllama.ContextParams,
    "llama_batch": libllama.Batch,
    "llama_sampler_seq_config": libllama.SamplerSeqConfig,
    "llama_sampler_chain_params": libllama.ChainParams,
    "llama_chat_message": libllama.ChatMessage,
}


def test_struct_layouts_match_llama_h(llama_src: Path, tmp_path: Path):
    """Every field's offset and every struct's size equal what the C compiler says for include/llama.h."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to read llama.h's layouts")
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "llama.h"', "int main(void) {"]
    for cname, struct in STRUCTS.items():
        ctype = f"struct {cname}"
        lines.append(f'printf("{cname} size %zu\\n", sizeof({ctype}));')
        for fname, _ in struct._fields_:
            lines.append(f'printf("{cname} {fname} %zu\\n", offsetof({ctype}, {fname}));')
    lines += ["return 0;", "}"]
    source = tmp_path / "layout.c"
    source.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(
        [cc, "-I", str(llama_src / "include"), "-I", str(llama_src / "ggml" / "include"), str(source), "-o", str(exe)],
        check=True,
        capture_output=True,
    )
    c_says = dict(
        line.rsplit(" ", 1)
        for line in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    )
    for cname, struct in STRUCTS.items():
        assert int(c_says[f"{cname} size"]) == ctypes.sizeof(struct), cname
        for fname, _ in struct._fields_:
            assert int(c_says[f"{cname} {fname}"]) == getattr(struct, fname).offset, f"{cname}.{fname}"


@pytest.fixture(scope="module")
def engine(binaries, tiny_model):
    with InProcessEngine(binaries=binaries) as eng:
        eng.load_model(tiny_model, n_parallel=4, ctx_size=4 * 512)
        yield eng


def test_infer_counts_and_reports(engine):
    result = engine.infer("Hello there", max_tokens=16, temperature=0.0, ignore_eos=True)
    assert result.tokens_generated == 16
    assert result.finish_reason == "length"
    assert result.prompt_tokens >= 2
    assert result.text
    assert engine.load_seconds and engine.load_seconds > 0
    assert engine.backend_sampling is True, "the greedy chain should run on the backend (no logits copied)"


def test_step_counters_and_log_access(engine):
    """stats and reset_stats() (what InferenceEngine.inprocess_stats reports), recent_log, load_library."""
    assert callable(libllama.load_library) and "llama" in libllama.recent_log()
    engine.reset_stats()
    engine.infer("Hello", max_tokens=4, temperature=0.0, ignore_eos=True)
    stats = engine.stats
    assert stats["steps"] == 4 and stats["tokens"] == 4
    assert all(stats[k] > 0 for k in ("decode_call_s", "wait_s", "host_s"))


def test_greedy_matches_llama_server(engine, tiny_engine):
    """The same greedy tokens as llama-server for the same model and prompt."""
    prompt = "The weather today"
    ours = engine.infer(prompt, max_tokens=24, temperature=0.0, ignore_eos=True)
    theirs = tiny_engine.infer(prompt, max_tokens=24, temperature=0.0, ignore_eos=True)
    assert ours.text == theirs.text


def test_concurrent_requests_decode_together_and_agree(engine):
    prompts = [f"Request number {i} says" for i in range(10)]
    alone = [engine.infer(p, max_tokens=12, temperature=0.0, ignore_eos=True).text for p in prompts]
    with ThreadPoolExecutor(max_workers=10) as pool:
        together = list(
            pool.map(lambda p: engine.infer(p, max_tokens=12, temperature=0.0, ignore_eos=True).text, prompts)
        )
    assert together == alone
    assert engine.batch_infer(prompts, max_tokens=12, temperature=0.0, ignore_eos=True)[3].text == alone[3]


def test_long_prompt_is_prefilled_in_chunks(binaries, tiny_model):
    with InProcessEngine(binaries=binaries) as eng:
        eng.load_model(tiny_model, n_parallel=2, ctx_size=2 * 1024, batch_size=64, ubatch_size=64)
        long_prompt = " ".join(["word"] * 300)
        result = eng.infer(long_prompt, max_tokens=8, temperature=0.0, ignore_eos=True)
        assert result.prompt_tokens > 64 and result.tokens_generated == 8


def test_too_long_prompt_is_refused(engine):
    from llcuda.errors import ConfigError, ContextLengthError

    with pytest.raises(ContextLengthError, match="but a sequence holds at most") as excinfo:
        engine.infer("word " * engine.n_ctx_seq, max_tokens=4)
    assert isinstance(excinfo.value, ConfigError)
