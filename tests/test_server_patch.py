"""recipe/patches: llcuda's changes to llama.cpp apply, are compiled in, and do what they say."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import llama_source
import pytest
import requests

from llcuda.processes.llama_server import LlamaServer, ServerSettings

# Three prompts that share nothing but the BOS token, so prompt-similarity selection never applies.
PROMPTS = [
    "Quantum chromodynamics describes the strong interaction between quarks and gluons inside hadrons",
    "Seven hungry otters raced along the frozen riverbank looking for a warm place to sleep tonight",
    "The recipe calls for two cups of flour, a pinch of salt and three spoonfuls of honey in total",
]


def completion(url: str, prompt: str, n_predict: int = 4) -> dict:
    body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0.0, "ignore_eos": True, "cache_prompt": True}
    response = requests.post(f"{url}/completion", json=body, timeout=120)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def four_slot_server(binaries, tiny_model: Path, isolated_home: Path):
    server = LlamaServer(
        ServerSettings(model_path=tiny_model, ctx_size=2048, n_parallel=4, threads=1), binaries=binaries
    )
    url = server.start()
    yield url
    server.stop()


def test_sequential_requests_reuse_the_lowest_idle_slot(four_slot_server: str) -> None:
    # Stock llama-server (least recently used) hands out slots 3, 2, 1 here; patched: always 0.
    slots = [completion(four_slot_server, prompt)["id_slot"] for prompt in PROMPTS]
    assert slots == [0, 0, 0]


def test_overlapping_requests_take_consecutive_slots(four_slot_server: str) -> None:
    results: dict[str, dict] = {}

    def long_request() -> None:
        results["long"] = completion(four_slot_server, PROMPTS[0], n_predict=400)

    worker = threading.Thread(target=long_request)
    worker.start()
    try:
        # Wait until the long request occupies a slot, then send a short one beside it.
        for _ in range(200):
            slots = requests.get(f"{four_slot_server}/slots", timeout=10).json()
            if any(slot.get("is_processing") for slot in slots):
                break
            threading.Event().wait(0.01)
        short = completion(four_slot_server, PROMPTS[1])
    finally:
        worker.join()
    assert results["long"]["id_slot"] == 0
    assert short["id_slot"] == 1, "a request beside a busy slot 0 takes slot 1, keeping busy ids consecutive"
    assert completion(four_slot_server, PROMPTS[2])["id_slot"] == 0, "once both are idle, slot 0 again"


def touched_files(patch: Path) -> list[str]:
    """Paths a patch changes, inside the llama.cpp tree (its ``+++ b/llama.cpp/<path>`` lines)."""
    return [
        line.split("\t")[0][len("+++ b/llama.cpp/") :]
        for line in patch.read_text().splitlines()
        if line.startswith("+++ b/llama.cpp/")
    ]


@pytest.mark.parametrize("patch", llama_source.patch_files(), ids=lambda p: p.name[:4])
def test_every_patch_applies_to_the_pinned_tree_once(llama_src: Path, tmp_path: Path, patch: Path) -> None:
    assert patch.name[:4].isdigit(), "patches are numbered NNNN-name.patch"
    # The cached tree carries the whole set (its marker names it) ...
    assert (llama_src / ".llcuda-source").read_text().strip().endswith(f"patches:{llama_source.patch_set_id()}")
    files = touched_files(patch)
    assert files, f"{patch.name} changes no file under llama.cpp/"
    # ... and a pristine copy of the files it touches (the patch reversed) takes it cleanly, once only.
    tree = tmp_path / "tree"
    for name in files:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(llama_src / name, tree / name)
    reverse = subprocess.run(
        ["patch", "-R", "-p2", "--batch", "-d", str(tree), "-i", str(patch)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert reverse.returncode == 0, f"cannot reverse {patch.name} on the cached tree: {reverse.stdout}{reverse.stderr}"
    assert all((tree / n).read_text() != (llama_src / n).read_text() for n in files)
    llama_source.apply_patches(tree, [patch])
    assert all((tree / n).read_text() == (llama_src / n).read_text() for n in files)
    with pytest.raises(SystemExit, match="does not apply"):
        llama_source.apply_patches(tree, [patch])  # already applied: refused, named


def test_patch_set_changes_the_build_key(tmp_path: Path) -> None:
    one = tmp_path / "0001-a.patch"
    one.write_text("--- a/x\n+++ b/x\n")
    first = llama_source.patch_set_id([one])
    one.write_text("--- a/x\n+++ b/x\n@@\n")
    assert llama_source.patch_set_id([one]) != first
    assert llama_source.patch_set_id([]) == "none"


TOP_K = 8


def _decode_prompts(
    lib, model, group: list[list[int]], sampler, before_decode=None
) -> tuple[object, list[object], list[int]]:
    """A context with one backend chain per prompt (``sampler()`` makes each chain's sampler), the prompts
    decoded in one batch (output at each prompt's last token): (context, chains, batch rows of those outputs).
    ``before_decode(ctx)`` runs between making the context and the decode."""
    from llcuda.libllama import bindings as libllama

    n_seq = len(group)
    chains, configs = [], (libllama.SamplerSeqConfig * n_seq)()
    for seq in range(n_seq):
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        lib.llama_sampler_chain_add(chain, sampler())
        chains.append(chain)
        configs[seq].seq_id, configs[seq].sampler = seq, chain
    params = lib.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 256 * n_seq, 256, 256, n_seq
    params.n_threads = params.n_threads_batch = 1
    params.samplers, params.n_samplers = configs, n_seq
    ctx = lib.llama_init_from_model(model, params)
    arrays = libllama.new_batch(sum(len(p) for p in group))
    k, last = 0, []
    for seq, prompt in enumerate(group):
        for p, token in enumerate(prompt):
            arrays.token[k], arrays.pos[k], arrays.seq[k] = token, p, seq
            arrays.logits[k] = int(p == len(prompt) - 1)
            k += 1
        last.append(k - 1)
    arrays.batch.n_tokens = k
    if before_decode is not None:
        before_decode(ctx)
    assert lib.llama_decode(ctx, arrays.batch) == 0
    return ctx, chains, last


def _free(lib, ctx, chains) -> None:
    lib.llama_free(ctx)
    for chain in chains:
        lib.llama_sampler_free(chain)


def _declare_sampled_data(lib) -> None:
    """Types of libllama's readers of a row's backend-sampled candidates and logits (llcuda declares none)."""
    import ctypes

    for name, restype in (
        ("llama_get_sampled_candidates_ith", ctypes.POINTER(ctypes.c_int32)),
        ("llama_get_sampled_candidates_count_ith", ctypes.c_uint32),
        ("llama_get_sampled_logits_ith", ctypes.POINTER(ctypes.c_float)),
        ("llama_get_sampled_logits_count_ith", ctypes.c_uint32),
    ):
        func = getattr(lib, name)
        func.restype, func.argtypes = restype, [ctypes.c_void_p, ctypes.c_int32]


def _sampled_rows(lib, model, prompts: list[list[int]], together: bool) -> list[tuple[list[int], list[float]]]:
    """(candidate ids, their logits) that a top-k chain on the backend leaves for each prompt's last token:
    all prompts in one batch (outputs come back reordered), or each alone in a fresh context."""
    _declare_sampled_data(lib)
    groups = [prompts] if together else [[p] for p in prompts]
    rows: list[tuple[list[int], list[float]]] = []
    for group in groups:
        ctx, chains, last = _decode_prompts(lib, model, group, lambda: lib.llama_sampler_init_top_k(TOP_K))
        for row in last:
            count = lib.llama_get_sampled_candidates_count_ith(ctx, row)
            logits_count = lib.llama_get_sampled_logits_count_ith(ctx, row)
            assert count == TOP_K == logits_count, "top-k did not run on the backend"
            ids = lib.llama_get_sampled_candidates_ith(ctx, row)
            logits = lib.llama_get_sampled_logits_ith(ctx, row)
            rows.append(([ids[i] for i in range(count)], [logits[i] for i in range(count)]))
        _free(lib, ctx, chains)
    return rows


def test_reordered_outputs_keep_each_rows_sampled_entries(binaries, tiny_model: Path) -> None:
    # Patch 0004 swaps only the entries a row holds when llama.cpp puts a batch's outputs back in order.
    # Prompts of different lengths ending in one batch come out of the per-sequence ubatches in another
    # order (the shortest first), so their rows are swapped; each must still hold its own top-k.
    from llcuda.libllama import bindings as libllama

    lib = libllama.load_library(binaries)
    params = lib.llama_model_default_params()
    model = lib.llama_model_load_from_file(str(tiny_model).encode(), params)
    assert model
    try:
        prompts = [[1, *range(300 + 40 * s, 300 + 40 * s + length)] for s, length in enumerate((11, 2, 7, 4))]
        together = _sampled_rows(lib, model, prompts, together=True)
        alone = _sampled_rows(lib, model, prompts, together=False)
    finally:
        lib.llama_model_free(model)
    for (ids, logits), (want_ids, want_logits) in zip(together, alone):
        assert sorted(ids) == sorted(want_ids)
        assert sorted(logits) == pytest.approx(sorted(want_logits), rel=1e-3, abs=1e-3)
    assert len({tuple(sorted(ids)) for ids, _ in together}) > 1, "the prompts must sample different candidates"


def test_sampled_tokens_of_many_rows_come_in_one_call(binaries, tiny_model: Path) -> None:
    # llama_get_sampled_tokens(ctx, rows, n, out) gives what llama_get_sampled_token_ith gives
    # row by row, with one synchronization. Prompts of different lengths ending in one batch make llama.cpp
    # reorder the outputs, and the bulk read is the first read after the batch (the one that reorders).
    import ctypes

    from llcuda.libllama import bindings as libllama

    lib = libllama.load_library(binaries)
    assert hasattr(lib, "llama_get_sampled_tokens"), "not built with 0005-sampled-tokens-in-one-call.patch"
    model = lib.llama_model_load_from_file(str(tiny_model).encode(), lib.llama_model_default_params())
    assert model
    prompts = [[1, *range(300 + 40 * s, 300 + 40 * s + length)] for s, length in enumerate((11, 2, 7, 4, 9))]

    def decode(group: list[list[int]]) -> tuple[object, list[object], list[int]]:
        return _decode_prompts(lib, model, group, lib.llama_sampler_init_greedy)

    try:
        alone = []
        for prompt in prompts:
            ctx, chains, last = decode([prompt])
            alone.append(lib.llama_get_sampled_token_ith(ctx, last[0]))
            _free(lib, ctx, chains)
        ctx, chains, last = decode(prompts)
        try:
            rows = (ctypes.c_int32 * len(last))(*reversed(last))  # any order of rows
            out = (ctypes.c_int32 * len(last))()
            assert lib.llama_get_sampled_tokens(ctx, rows, len(last), out) == len(last)
            bulk = list(reversed(out))
            one_by_one = [lib.llama_get_sampled_token_ith(ctx, row) for row in last]
            assert lib.llama_get_sampled_tokens(ctx, rows, -1, out) == -1
            assert lib.llama_get_sampled_tokens(ctx, None, 2, out) == -1
            assert lib.llama_get_sampled_tokens(ctx, rows, 0, out) == 0
            no_output = (ctypes.c_int32 * 1)(0)  # the first prompt token: no output requested there
            assert lib.llama_get_sampled_tokens(ctx, no_output, 1, out) == 1 and out[0] == libllama.LLAMA_TOKEN_NULL
        finally:
            _free(lib, ctx, chains)
    finally:
        lib.llama_model_free(model)
    assert bulk == one_by_one == alone
    assert len(set(alone)) > 1, "the prompts must sample different tokens"


def test_rows_sampled_on_the_backend_skip_their_logits_copy_when_asked(binaries, tiny_model: Path) -> None:
    # llama_set_keep_sampled_data(ctx, false) stops the copy of a row's chain logits (for a
    # greedy chain, the whole vocabulary row) when the backend chose its token; rows whose chain chose
    # none (top-k alone: the CPU finishes the sampling) still get theirs. The sampled tokens are the same.
    from llcuda.libllama import bindings as libllama

    lib = libllama.load_library(binaries)
    assert hasattr(lib, "llama_set_keep_sampled_data"), "not built with 0006-keep-sampled-data-switch.patch"
    _declare_sampled_data(lib)
    model = lib.llama_model_load_from_file(str(tiny_model).encode(), lib.llama_model_default_params())
    assert model
    n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
    prompts = [[1, *range(300 + 40 * s, 300 + 40 * s + length)] for s, length in enumerate((11, 2, 7, 4))]

    def rows(keep: bool, sampler) -> list[tuple[int, int, bool]]:
        """(sampled token, count of the row's sampled logits, whether their pointer is set) per prompt."""
        ctx, chains, last = _decode_prompts(
            lib, model, prompts, sampler, before_decode=lambda c: lib.llama_set_keep_sampled_data(c, keep)
        )
        try:
            out = []
            for row in last:
                token = lib.llama_get_sampled_token_ith(ctx, row)
                count = lib.llama_get_sampled_logits_count_ith(ctx, row)
                logits = lib.llama_get_sampled_logits_ith(ctx, row)
                if count == n_vocab:  # the greedy row itself: its token is the argmax of what was copied
                    values = logits[:n_vocab]
                    assert values.index(max(values)) == token
                out.append((token, count, bool(logits)))
            return out
        finally:
            _free(lib, ctx, chains)

    try:
        greedy_kept = rows(True, lib.llama_sampler_init_greedy)
        greedy_skipped = rows(False, lib.llama_sampler_init_greedy)
        top_k_skipped = rows(False, lambda: lib.llama_sampler_init_top_k(TOP_K))
    finally:
        lib.llama_model_free(model)
    assert [count for _, count, _ in greedy_kept] == [n_vocab] * len(prompts), "default: the whole row is copied"
    assert all(present for _, _, present in greedy_kept)
    assert [(count, present) for _, count, present in greedy_skipped] == [(0, False)] * len(prompts)
    assert [token for token, _, _ in greedy_skipped] == [token for token, _, _ in greedy_kept]
    assert len({token for token, _, _ in greedy_kept}) > 1, "the prompts must sample different tokens"
    assert [(token, count) for token, count, _ in top_k_skipped] == [(libllama.LLAMA_TOKEN_NULL, TOP_K)] * len(prompts)
