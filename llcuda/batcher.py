"""The in-process engine's decode loop: one worker thread, one llama context, continuous batching.

Requests from any thread join the next decode step; prompts are prefilled in chunks of
``n_batch`` tokens alongside the running sequences. Every sequence has its own sampler chain
attached to the context (llama.cpp's *backend sampling*): the chosen token comes back from the
device instead of the logits. A request whose sampling differs from its sequence's chain gets a
new chain (``llama_set_sampler``), after which llama.cpp re-reserves its graphs once (tens of ms
on a GPU); greedy requests never change a chain.
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import threading
import time
from collections import deque
from typing import Any

from .errors import InferenceError, LlcudaError
from .generation import GREEDY, Request, Sampling
from .libllama import LLAMA_DEFAULT_SEED, LLAMA_TOKEN_NULL, Batch, SamplerSeqConfig, c_int32, log_tail

log = logging.getLogger(__name__)

STATS = ("steps", "tokens", "decode_call_s", "wait_s", "host_s", "sampler_changes")


def new_chain(lib: Any, sampling: Sampling) -> int:
    """A sampler chain like llama-server's default one (top-k, top-p, min-p 0.05, temperature, dist)."""
    params = lib.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = lib.llama_sampler_chain_init(params)
    if sampling.greedy:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return int(chain)
    if sampling.top_k > 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(sampling.top_k))
    if sampling.top_p < 1.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(sampling.top_p, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(0.05, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(sampling.temperature))
    seed = LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
    return int(chain)


def greedy_configs(lib: Any, n_parallel: int) -> tuple[Any, list[int]]:
    """``llama_context_params.samplers`` with a greedy chain per sequence, and those chains."""
    chains = [new_chain(lib, GREEDY) for _ in range(n_parallel)]
    configs = (SamplerSeqConfig * n_parallel)()
    for seq, chain in enumerate(chains):
        configs[seq].seq_id, configs[seq].sampler = seq, chain
    return configs, chains


class Batcher:
    """Owns a llama context and its sampler chains (freed by :meth:`close`), and decodes requests."""

    def __init__(self, lib: Any, ctx: Any, vocab: Any, chains: list[int], n_batch: int,
                 piece: Any) -> None:
        self._lib, self._ctx, self._vocab, self._piece = lib, ctx, vocab, piece
        self._mem = lib.llama_get_memory(ctx)
        self._chains = chains
        self._chain_sampling: list[Sampling] = [GREEDY] * len(chains)
        self.n_parallel, self.n_batch = len(chains), n_batch
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(ctx))
        self._alloc_batch(n_batch)
        self._cv = threading.Condition()
        self._queue: deque[Request] = deque()
        self._active: list[Request] = []
        self._free_seqs = list(range(self.n_parallel))  # a heap: the lowest free sequence id first
        self._closing = False
        self.backend_sampling: bool | None = None  # known after the first token
        self.stats: dict[str, float] = dict.fromkeys(STATS, 0)
        self._worker = threading.Thread(target=self._loop, name="llcuda-inprocess", daemon=True)
        self._worker.start()

    def _alloc_batch(self, n: int) -> None:
        self._tok = (c_int32 * n)()
        self._pos = (c_int32 * n)()
        self._nseq = (c_int32 * n)(*([1] * n))
        self._seqv = (c_int32 * n)()
        self._seqp = (ctypes.POINTER(c_int32) * n)(
            *(ctypes.cast(ctypes.byref(self._seqv, 4 * i), ctypes.POINTER(c_int32)) for i in range(n)))
        self._out = (ctypes.c_int8 * n)()
        self._batch = Batch(0, self._tok, None, self._pos, self._nseq, self._seqp, self._out)

    def put(self, req: Request) -> None:
        with self._cv:
            if self._closing or not self._worker.is_alive():
                raise LlcudaError("no model is loaded; call load_model(...) first.")
            self._queue.append(req)
            self._cv.notify()

    def cancel(self, req: Request) -> None:
        """Stop decoding ``req`` at the next step (its caller gave up)."""
        with self._cv:
            req.cancelled = True
            self._cv.notify()

    def load(self) -> tuple[int, int, bool]:
        """(running, queued, worker alive)."""
        with self._cv:
            return len(self._active), len(self._queue), self._worker.is_alive() and not self._closing

    def close(self) -> None:
        """Stop the worker, failing queued and running requests, and free the context and chains."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._worker.join()
        self._lib.llama_free(self._ctx)
        for chain in self._chains:
            self._lib.llama_sampler_free(chain)
        self._chains = []

    # -- the worker --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._active and not self._closing:
                    self._cv.wait()
                if self._closing:
                    gone = InferenceError("the engine was unloaded before this request finished.")
                    for req in list(self._queue) + self._active:
                        req.end(gone)
                    self._queue.clear()
                    self._active.clear()
                    return
                for req in [r for r in self._queue if r.cancelled]:
                    self._queue.remove(req)
                    req.end(InferenceError("cancelled"))
                new = []
                while self._queue and self._free_seqs:
                    req = self._queue.popleft()
                    req.seq = heapq.heappop(self._free_seqs)
                    new.append(req)
            try:
                for req in [r for r in self._active if r.cancelled]:
                    self._active.remove(req)
                    self._release(req)
                    req.end(InferenceError("cancelled"))
                for req in new:
                    self._active.append(req)
                    self._attach(req)
                if self._active:
                    self._active.sort(key=lambda r: r.seq)
                    self._step()
            except Exception as exc:  # noqa: BLE001 - fails this step's requests; the engine goes on
                log.warning("in-process decode step failed: %s", exc)
                error = exc if isinstance(exc, InferenceError) else InferenceError(
                    f"in-process decoding failed: {exc!r}", log_tail=log_tail())
                for req in self._active:
                    try:
                        self._release(req)
                    except Exception:  # noqa: BLE001 - free the sequence id even if libllama objects
                        with self._cv:
                            heapq.heappush(self._free_seqs, req.seq)
                    req.end(error)
                self._active.clear()

    def _step(self) -> None:
        # Tokens go in ascending sequence-id order and ids are handed out lowest-first: with one KV
        # stream per sequence (kv_unified=False) llama.cpp puts only *consecutive* ids s, s+1, ... in
        # one ubatch (llama_batch_allocr::split_equal), so scattered ids would mean one graph per sequence.
        lib, tok, pos, seqv, out = self._lib, self._tok, self._pos, self._seqv, self._out
        t0 = time.perf_counter()
        n = 0
        outputs: list[tuple[int, Request]] = []
        for req in self._active:  # one token for every decoding sequence
            if req.prefilled == len(req.tokens):
                tok[n], pos[n], seqv[n], out[n] = req.out[-1], len(req.tokens) + len(req.out) - 1, req.seq, 1
                outputs.append((n, req))
                n += 1
        for req in self._active:  # prompt chunks fill the rest of the batch
            left = len(req.tokens) - req.prefilled
            if left == 0:
                continue
            take = min(left, self.n_batch - n)
            if take <= 0:
                break
            p0 = req.prefilled
            for j in range(take):
                tok[n], pos[n], seqv[n], out[n] = req.tokens[p0 + j], p0 + j, req.seq, 0
                n += 1
            req.prefilled += take
            if req.prefilled == len(req.tokens):
                out[n - 1] = 1
                outputs.append((n - 1, req))
        self._batch.n_tokens = n
        t1 = time.perf_counter()
        rc = lib.llama_decode(self._ctx, self._batch)
        t2 = time.perf_counter()
        if rc != 0:
            raise InferenceError(f"llama_decode failed with code {rc} for a batch of {n} tokens (1: the KV cache "
                                 "is full; lower n_parallel or max_tokens, or raise ctx_size).", log_tail=log_tail())
        lib.llama_synchronize(self._ctx)
        t3 = time.perf_counter()
        finished = []
        for idx, req in outputs:
            token = lib.llama_get_sampled_token_ith(self._ctx, idx)
            if token == LLAMA_TOKEN_NULL:  # the sampler chain could not run on the backend
                self.backend_sampling = False
                token = lib.llama_sampler_sample(self._chains[req.seq], self._ctx, idx)
            elif self.backend_sampling is None:
                self.backend_sampling = True
            if req.first_token is None:
                req.first_token = t3
            req.out.append(token)
            if not req.ignore_eos and lib.llama_vocab_is_eog(self._vocab, token):
                req.finish = "stop"
                finished.append(req)
            elif req.stop and req.find_stop(self._piece(token)):
                finished.append(req)  # not streamed: the text up to the stop string comes with the result
            else:
                if req.stream is not None:
                    req.stream.put(token)
                if len(req.out) >= req.max_tokens:
                    finished.append(req)
        for req in finished:
            self._active.remove(req)
            self._release(req)
            req.done = t3
            req.end()
        t4 = time.perf_counter()
        stats = self.stats
        stats["steps"] += 1
        stats["tokens"] += len(outputs)
        stats["decode_call_s"] += t2 - t1
        stats["wait_s"] += t3 - t2
        stats["host_s"] += (t1 - t0) + (t4 - t3)

    def _attach(self, req: Request) -> None:
        """Give ``req``'s sequence a sampler chain for its sampling (a new one only when it differs)."""
        lib, seq = self._lib, req.seq
        if self._chain_sampling[seq] != req.sampling:
            chain = new_chain(lib, req.sampling)
            if not lib.llama_set_sampler(self._ctx, seq, chain):
                log.info("sampler chain for sequence %d runs on the CPU (not offloadable)", seq)
            lib.llama_sampler_free(self._chains[seq])
            self._chains[seq], self._chain_sampling[seq] = chain, req.sampling
            self.stats["sampler_changes"] += 1
        lib.llama_sampler_reset(self._chains[seq])  # a seeded chain starts its random numbers afresh

    def _release(self, req: Request) -> None:
        self._lib.llama_memory_seq_rm(self._mem, req.seq, -1, -1)
        with self._cv:
            heapq.heappush(self._free_seqs, req.seq)
