"""The in-process engine's decode loop: one worker thread, one llama context, continuous batching.

Requests from any thread join the next decode step; prompts are prefilled in chunks of
``n_batch`` tokens alongside the running sequences. Every sequence has its own sampler chain
attached to the context (llama.cpp's *backend sampling*): the chosen token comes back from the
device instead of the logits. A request whose sampling differs from its sequence's chain gets a
new chain (``llama_set_sampler``), after which llama.cpp re-reserves its graphs once (tens of ms
on a GPU); greedy requests never change a chain.

Host time per step counts like the device's (64 sequences: a few ms of GPU work per step). The
per-token libllama calls of a step take a microsecond or less, so they are made with the GIL held
(:func:`gil_holding`); callers (futures, stream readers) are woken only at the end of a step; the
batch arrays are filled by slice. A woken caller that gets the GIL while the worker is in a
GIL-releasing call can keep it until it blocks or for the switch interval (5 ms): with ctypes'
usual calls, ending 64 requests in one step cost milliseconds.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any, Callable

from llcuda.errors import ConfigError, InferenceError, LlcudaError
from llcuda.libllama.bindings import (
    LLAMA_DEFAULT_SEED,
    LLAMA_TOKEN_NULL,
    LogitBias,
    SamplerSeqConfig,
    c_int32,
    log_tail,
    new_batch,
)
from llcuda.libllama.request import GREEDY, Request, Sampling, TokenSink
from llcuda.system.threads import leave_signals_to_the_main_thread

log = logging.getLogger(__name__)

MIN_REUSED_TOKENS = 2  # a shared BOS alone is no reason to pick a sequence
STATS = ("steps", "tokens", "decode_call_s", "wait_s", "host_s", "sampler_changes", "bulk_reads", "reused_tokens")
# Called per token or per request, each a few µs at most (llama_get_sampled_token_ith: a stream
# synchronize each, ~3 µs on an H100 host, hence llama_get_sampled_tokens, one call per step, where the
# build has it); llama_decode, llama_synchronize and CPU sampling, which take milliseconds, still release the GIL.
GIL_HELD = ("llama_get_sampled_token_ith", "llama_vocab_is_eog", "llama_memory_seq_rm", "llama_sampler_reset")


def gil_holding(lib: Any, names: Iterable[str] = GIL_HELD) -> SimpleNamespace:
    """``lib``'s functions ``names`` called through ``ctypes.PyDLL``: the GIL stays held, so no other
    thread can take it in the middle of a step.

    They take pointers as ``c_void_p`` objects and int32s as Python ints, without per-call argument
    conversion (a third of a call's cost); only functions of such arguments qualify.
    """
    py = ctypes.PyDLL(lib._name, handle=lib._handle)  # the same loaded library, not a second dlopen
    funcs = {}
    for name in names:
        ours, theirs = getattr(py, name), getattr(lib, name)
        if not all(t in (ctypes.c_void_p, c_int32) for t in theirs.argtypes):
            raise LlcudaError(
                f"{name} takes {theirs.argtypes}, not only pointers and int32s: call it through the library itself."
            )
        ours.restype = theirs.restype
        funcs[name] = ours
    return SimpleNamespace(**funcs)


def _seq_of(req: Request) -> int:
    return req.seq


def new_chain(lib: Any, sampling: Sampling, vocab: Any = None, eog_tokens: Sequence[int] = ()) -> int:
    """A sampler chain like llama-server's default one: (EOG ban,) (grammar,) top-k, top-p, min-p,
    temperature, a random draw; greedy takes the most likely token instead of the last four."""
    params = lib.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = lib.llama_sampler_chain_init(params)
    if sampling.ban_eog and eog_tokens:
        biases = (LogitBias * len(eog_tokens))(*(LogitBias(t, float("-inf")) for t in eog_tokens))
        lib.llama_sampler_chain_add(
            chain, lib.llama_sampler_init_logit_bias(lib.llama_vocab_n_tokens(vocab), len(eog_tokens), biases)
        )
    if sampling.grammar is not None:
        grammar = lib.llama_sampler_init_grammar(vocab, sampling.grammar.encode("utf-8"), b"root")
        if not grammar:
            lib.llama_sampler_free(chain)
            raise ConfigError(f"llama.cpp could not parse the grammar (GBNF); its log says where: {log_tail(5)}")
        lib.llama_sampler_chain_add(chain, grammar)
    if sampling.greedy:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return int(chain)
    if sampling.top_k > 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(sampling.top_k))
    if sampling.top_p < 1.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(sampling.top_p, 1))
    if sampling.min_p > 0.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(sampling.min_p, 1))
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

    def __init__(self, lib: Any, ctx: Any, vocab: Any, chains: list[int], n_batch: int, piece: Any) -> None:
        self._lib, self._ctx, self._vocab, self._piece = lib, ctx, vocab, piece
        bulk = hasattr(lib, "llama_get_sampled_tokens")  # llcuda's patched builds, not stock llama.cpp
        fast = gil_holding(lib, GIL_HELD + (("llama_get_sampled_tokens",) if bulk else ()))
        self._sampled_token, self._vocab_is_eog, self._seq_rm, self._sampler_reset = (
            fast.llama_get_sampled_token_ith,
            fast.llama_vocab_is_eog,
            fast.llama_memory_seq_rm,
            fast.llama_sampler_reset,
        )
        # one call reads a step's sampled tokens (one backend synchronization instead of one per row)
        self._sampled_tokens = fast.llama_get_sampled_tokens if bulk else None
        self._mem = lib.llama_get_memory(ctx)
        # Only the sampled tokens are read, never a chain's logits: where the build has
        # llama_set_keep_sampled_data, rows sampled on the backend no longer copy theirs to the host
        # (n_vocab floats per sequence and step).
        self.sampled_data_kept = not hasattr(lib, "llama_set_keep_sampled_data")
        if not self.sampled_data_kept:
            lib.llama_set_keep_sampled_data(ctx, False)
        # the same pointers as c_void_p objects, for those GIL-holding functions
        self._ctx_p, self._vocab_p, self._mem_p = (ctypes.c_void_p(p) for p in (ctx, vocab, self._mem))
        self._is_eog: dict[int, bool] = {}  # llama_vocab_is_eog of each token seen so far
        self._pieces: dict[int, bytes] = {}  # piece(token) of each token seen by a request with stop strings
        self._chains = chains
        self._chain_sampling: list[Sampling] = [GREEDY] * len(chains)
        self.n_parallel, self.n_batch = len(chains), n_batch
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(ctx))
        self._alloc_batch(n_batch)
        self._cv = threading.Condition()
        self._queue: deque[Request] = deque()
        self._active: list[Request] = []
        self._free_seqs = list(range(self.n_parallel))  # sequence ids no request holds
        # Prefix reuse: the tokens a finished request left in the KV cache of its (now free) sequence, and when.
        # A new request takes the free sequence whose tokens share the longest prefix with its prompt and
        # prefills only the rest; otherwise the lowest empty id, else the least recently used one.
        self._cached: dict[int, list[int]] = {}
        self._last_used: dict[int, float] = {}
        self._eog_tokens: list[int] | None = None  # every end-of-generation token, listed on first need
        self._cancels = False  # a request was cancelled since the worker last looked
        self._closing = False
        self._listeners: tuple[Callable[[], None], ...] = ()  # add_step_listener
        self.backend_sampling: bool | None = None  # known after the first token
        self.stats: dict[str, float] = dict.fromkeys(STATS, 0)
        self._worker = threading.Thread(target=self._loop, name="llcuda-inprocess", daemon=True)
        self._worker.start()

    def _alloc_batch(self, n: int) -> None:
        arrays = new_batch(n)
        self._batch, self._tok, self._pos, self._seqv, self._out = (
            arrays.batch,
            arrays.token,
            arrays.pos,
            arrays.seq,
            arrays.logits,
        )
        self._out_bytes = memoryview(self._out).cast("B")  # output flags, set by slice from these bytes:
        self._ones, self._zeros = b"\x01" * n, bytes(n)
        # the batch rows whose sampled tokens a step reads, and those tokens (llama_get_sampled_tokens)
        self._rows, self._sampled = (c_int32 * n)(), (c_int32 * n)()
        self._rows_p, self._sampled_p = (
            ctypes.c_void_p(ctypes.addressof(self._rows)),
            ctypes.c_void_p(ctypes.addressof(self._sampled)),
        )

    def put(self, req: Request) -> None:
        with self._cv:
            if self._closing or not self._worker.is_alive():
                raise LlcudaError("no model is loaded; call load_model(...) first.")
            self._queue.append(req)
            self._cv.notify()

    def cancel(self, req: Request) -> None:
        """Stop decoding ``req`` at the next step (its caller gave up)."""
        with self._cv:
            req.cancelled = self._cancels = True
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

    def add_step_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` in the worker thread after every pass of the decode loop that may have
        put tokens (or the final None) into requests' streams: once per decode step, after the step's
        tokens went into the streams and its finished requests ended; also after requests were
        cancelled, failed, or ended by :meth:`close`. One call per step lets a reader in another
        thread wake all its streams at once instead of once per token. It must be quick and must not
        block; its exceptions are logged and ignored."""
        self._listeners = (*self._listeners, listener)

    def remove_step_listener(self, listener: Callable[[], None]) -> None:
        self._listeners = tuple(f for f in self._listeners if f is not listener)

    def _tell_listeners(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the decode loop
                log.exception("step listener %r failed", listener)

    # -- the worker --------------------------------------------------------------------------
    def _loop(self) -> None:
        leave_signals_to_the_main_thread()
        try:
            self._decode_until_closed()
        finally:
            self._tell_listeners()  # the requests close() ended

    def _decode_until_closed(self) -> None:
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
                cancels, self._cancels = self._cancels, False
                if cancels:
                    for req in [r for r in self._queue if r.cancelled]:
                        self._queue.remove(req)
                        req.end(InferenceError("cancelled"))
                new = []
                while self._queue and self._free_seqs:
                    req = self._queue.popleft()
                    req.seq = self._pick_seq(req.tokens)
                    new.append(req)
            try:
                if cancels:
                    self._finish([r for r in self._active if r.cancelled], InferenceError("cancelled"))
                if new:
                    for req in new:
                        self._active.append(req)
                        self._attach(req)
                    self._active.sort(key=_seq_of)  # only a new request can break the order
                if self._active:
                    self._step()
            except Exception as exc:  # noqa: BLE001 - fails this step's requests; the engine goes on
                log.warning("in-process decode step failed: %s", exc)
                error = (
                    exc
                    if isinstance(exc, InferenceError)
                    else InferenceError(f"in-process decoding failed: {exc!r}", log_tail=log_tail())
                )
                for req in self._active:
                    try:
                        self._release(req)
                    except Exception:  # noqa: BLE001 - free the sequence id even if libllama objects
                        with self._cv:
                            self._free_seqs.append(req.seq)
                    req.end(error)
                self._active.clear()
            if self._listeners:
                self._tell_listeners()

    def _step(self) -> None:
        # Tokens go in ascending sequence-id order and ids are handed out lowest-first: with one KV
        # stream per sequence (kv_unified=False) llama.cpp puts only *consecutive* ids s, s+1, ... in
        # one ubatch (llama_batch_allocr::split_equal), so scattered ids would mean one graph per sequence.
        # self._active is kept in that order (sorted when a request joins; removals keep it).
        lib, ctx, flags = self._lib, self._ctx, self._out_bytes
        tok, pos, seqv = self._tok, self._pos, self._seqv
        t0 = time.perf_counter()
        toks: list[int] = []
        poss: list[int] = []
        seqs: list[int] = []
        decoding: list[Request] = []
        prefilling: list[Request] = []
        for req in self._active:  # one token for every decoding sequence
            n_prompt, out = len(req.tokens), req.out
            if req.prefilled == n_prompt:
                toks.append(out[-1])
                poss.append(n_prompt + len(out) - 1)
                seqs.append(req.seq)
                decoding.append(req)
            else:
                prefilling.append(req)
        n = len(decoding)
        tok[:n], pos[:n], seqv[:n], flags[:n] = toks, poss, seqs, self._ones[:n]
        outputs = list(enumerate(decoding))  # (batch row, request) of every token sampled in this step
        first: list[Request] = []  # requests whose prompt ends in this batch
        for req in prefilling:  # prompt chunks fill the rest of the batch
            take = min(len(req.tokens) - req.prefilled, self.n_batch - n)
            if take <= 0:
                break
            p0, end = req.prefilled, n + take
            tok[n:end] = req.tokens[p0 : p0 + take]
            pos[n:end] = list(range(p0, p0 + take))
            seqv[n:end] = [req.seq] * take
            flags[n:end] = self._zeros[:take]
            req.prefilled += take
            if req.prefilled == len(req.tokens):
                flags[end - 1] = 1
                outputs.append((end - 1, req))
                first.append(req)
            n = end
        self._batch.n_tokens = n
        t1 = time.perf_counter()
        rc = lib.llama_decode(ctx, self._batch)
        if rc == 1 and self.drop_cached():  # no room in the KV cache: drop the reusable prefixes, try again
            rc = lib.llama_decode(ctx, self._batch)
        t2 = time.perf_counter()
        if rc != 0:
            raise InferenceError(
                f"llama_decode failed with code {rc} for a batch of {n} tokens (1: the KV cache "
                "is full; lower n_parallel or max_tokens, or raise ctx_size).",
                log_tail=log_tail(),
            )
        lib.llama_synchronize(ctx)
        t3 = time.perf_counter()
        for req in first:
            req.first_token = t3
        if n > len(decoding) and outputs:
            # With prompt chunks the outputs can come out of batch order; the first read puts them back,
            # swapping vocabulary-sized rows of the sampler buffers (tens of ms for 64 rows of a 262k
            # vocabulary): this one read lets the GIL go meanwhile.
            lib.llama_get_sampled_token_ith(ctx, outputs[0][0])
        tokens = self._read_sampled(outputs)
        vocab_is_eog, vocab_p, is_eog, pieces = self._vocab_is_eog, self._vocab_p, self._is_eog, self._pieces
        finished: list[Request] = []
        n_ctx_seq = self.n_ctx_seq
        streamed: list[tuple[TokenSink, int]] = []
        on_cpu = False
        for (row, req), token in zip(outputs, tokens):
            if token == LLAMA_TOKEN_NULL:  # the sampler chain could not run on the backend
                on_cpu = True
                token = lib.llama_sampler_sample(self._chains[req.seq], ctx, row)
            out = req.out
            out.append(token)
            if not req.ignore_eos:
                eog = is_eog.get(token)
                if eog is None:
                    eog = is_eog[token] = bool(vocab_is_eog(vocab_p, token))
                if eog:
                    req.finish = "stop"
                    finished.append(req)
                    continue
            if req.stop:
                piece = pieces.get(token)
                if piece is None:
                    piece = pieces[token] = self._piece(token)
                if req.find_stop(piece):
                    finished.append(req)  # not streamed: the text up to the stop string comes with the result
                    continue
            stream = req.stream
            if stream is not None:
                streamed.append((stream, token))
            if len(out) >= req.max_tokens or len(req.tokens) + len(out) >= n_ctx_seq:
                finished.append(req)  # finish "length": max_tokens, or the sequence's context is full
        if on_cpu:
            self.backend_sampling = False
        elif self.backend_sampling is None and outputs:
            self.backend_sampling = True
        for stream, token in streamed:  # callers wake only now (see the module's docstring)
            stream.put(token)
        if finished:
            for req in finished:
                req.done = t3
            self._finish(finished)
        t4 = time.perf_counter()
        stats = self.stats
        stats["steps"] += 1
        stats["tokens"] += len(outputs)
        stats["decode_call_s"] += t2 - t1
        stats["wait_s"] += t3 - t2
        stats["host_s"] += (t1 - t0) + (t4 - t3)

    def _read_sampled(self, outputs: list[tuple[int, Request]]) -> list[int]:
        """The sampled token of each (batch row, request) of ``outputs`` (LLAMA_TOKEN_NULL where the
        chain ran on the CPU instead): one libllama call where the build has llama_get_sampled_tokens."""
        n = len(outputs)
        if self._sampled_tokens is None or n < 2:
            sampled_token, ctx_p = self._sampled_token, self._ctx_p
            return [sampled_token(ctx_p, row) for row, _ in outputs]
        self._rows[:n] = [row for row, _ in outputs]
        if self._sampled_tokens(self._ctx_p, self._rows_p, n, self._sampled_p) != n:
            raise InferenceError(f"llama_get_sampled_tokens could not read {n} sampled tokens.", log_tail=log_tail())
        self.stats["bulk_reads"] += 1
        return self._sampled[:n]

    def _pick_seq(self, tokens: list[int]) -> int:
        """Take the free sequence for a prompt (see ``_cached``); called with the lock held."""
        best, best_len = -1, 0
        for seq in self._free_seqs:
            cached = self._cached.get(seq)
            if cached:
                n = common_prefix(cached, tokens)
                if n > best_len and n >= MIN_REUSED_TOKENS:
                    best, best_len = seq, n
        if best < 0:
            empty = [s for s in self._free_seqs if s not in self._cached]
            best = min(empty) if empty else min(self._free_seqs, key=lambda s: self._last_used.get(s, 0.0))
        self._free_seqs.remove(best)
        return best

    def _finish(self, reqs: list[Request], error: BaseException | None = None) -> None:
        """Take ``reqs`` out of the batch, free their sequences (keeping the KV of those that ended
        well, for prefix reuse), then wake their callers."""
        if not reqs:
            return
        seq_rm, mem_p = self._seq_rm, self._mem_p
        now = time.monotonic()
        for req in reqs:
            if error is None and not req.cancelled and req.prefilled == len(req.tokens):
                # the KV holds the prompt and every generated token but the last (never decoded)
                self._cached[req.seq] = req.tokens + req.out[:-1]
                self._last_used[req.seq] = now
            else:
                seq_rm(mem_p, req.seq, -1, -1)
                self._cached.pop(req.seq, None)
        gone = set(reqs)
        self._active[:] = [r for r in self._active if r not in gone]
        with self._cv:
            self._free_seqs.extend(req.seq for req in reqs)
        for req in reqs:
            req.end(error)

    def drop_cached(self) -> bool:
        """Drop the KV every free sequence keeps for prefix reuse; False if there was none. Call it from the
        decode thread, or while no request runs."""
        with self._cv:
            idle = [s for s in self._free_seqs if s in self._cached]
        for seq in idle:
            self._seq_rm(self._mem_p, seq, -1, -1)
            self._cached.pop(seq, None)
        return bool(idle)

    def drop_idle_cache(self) -> None:
        """:meth:`drop_cached` from another thread, while no request runs (the worker then waits on the lock)."""
        with self._cv:
            if self._queue or self._active:
                raise LlcudaError("requests are running; drop the cached prefixes once they have finished.")
            self.drop_cached()

    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token of the vocabulary (for ``ignore_eos``'s ban)."""
        if self._eog_tokens is None:
            is_eog, vocab_p = self._vocab_is_eog, self._vocab_p
            self._eog_tokens = [
                t for t in range(int(self._lib.llama_vocab_n_tokens(self._vocab))) if is_eog(vocab_p, t)
            ]
        return self._eog_tokens

    def _attach(self, req: Request) -> None:
        """Give ``req``'s sequence a sampler chain for its sampling (a new one only when it differs), and
        reuse what the sequence's KV cache already holds of its prompt."""
        lib, seq = self._lib, req.seq
        if self._chain_sampling[seq] != req.sampling:
            chain = new_chain(lib, req.sampling, self._vocab, self.eog_tokens() if req.sampling.ban_eog else ())
            if not lib.llama_set_sampler(self._ctx, seq, chain):
                log.info("sampler chain for sequence %d runs on the CPU (not offloadable)", seq)
            lib.llama_sampler_free(self._chains[seq])
            self._chains[seq], self._chain_sampling[seq] = chain, req.sampling
            self.stats["sampler_changes"] += 1
        # a seeded chain starts its random numbers afresh
        self._sampler_reset(ctypes.c_void_p(self._chains[seq]))
        cached = self._cached.pop(seq, None)
        if cached:
            keep = min(common_prefix(cached, req.tokens), len(req.tokens) - 1)  # the last prompt token is decoded
            self._seq_rm(self._mem_p, seq, keep, -1)
            req.prefilled = req.reused = keep
            self.stats["reused_tokens"] += keep

    def _release(self, req: Request) -> None:
        self._seq_rm(self._mem_p, req.seq, -1, -1)
        self._cached.pop(req.seq, None)
        with self._cv:
            self._free_seqs.append(req.seq)


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of ``a`` and ``b`` (slice comparisons, in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
