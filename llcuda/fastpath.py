"""In-process inference through libllama (ctypes): no server, no HTTP, sampling on the GPU.

``InferenceEngine`` runs llama-server and pays, per token, the server's slot loop and, per
request, an HTTP round trip. For one Python process that wants the highest decode rate, this
module drives the same llama.cpp build in-process instead::

    from llcuda.fastpath import InProcessEngine
    with InProcessEngine().load_model("model.gguf", n_parallel=16) as engine:
        print(engine.infer("Hello", max_tokens=64).text)
        results = engine.batch_infer(["a", "b", "c"], max_tokens=64)   # decoded together

One worker thread owns the llama context and runs continuous batching: requests from any
thread join the next decode step, prompts are prefilled in chunks of ``batch_size`` tokens
alongside the running sequences, and every sequence has its own sampler chain attached to the
context (llama.cpp's *backend sampling*), so the chosen token comes back from the GPU instead of
128k logits per token. Sampling is fixed at load time (``temperature=0`` is greedy); the
structure layouts below follow ``include/llama.h`` of the pinned llama.cpp build, and
``tests/test_fastpath.py`` checks them against the header with a C compiler.
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import bootstrap, gpu, validation
from .errors import ConfigError, InferenceError, LlcudaError
from .types import Binaries, InferResult

log = logging.getLogger(__name__)

c_bool, c_int32, c_uint32, c_float, c_void_p, c_char_p = (
    ctypes.c_bool, ctypes.c_int32, ctypes.c_uint32, ctypes.c_float, ctypes.c_void_p, ctypes.c_char_p)
c_int = ctypes.c_int  # C enums
LLAMA_TOKEN_NULL = -1
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


class ModelParams(ctypes.Structure):
    _fields_ = [
        ("devices", c_void_p), ("tensor_buft_overrides", c_void_p),
        ("n_gpu_layers", c_int32), ("split_mode", c_int), ("load_mode", c_int), ("lazy_mode", c_int),
        ("main_gpu", c_int32), ("tensor_split", c_void_p),
        ("progress_callback", c_void_p), ("progress_callback_user_data", c_void_p), ("kv_overrides", c_void_p),
        ("vocab_only", c_bool), ("check_tensors", c_bool), ("use_extra_bufts", c_bool), ("no_host", c_bool),
        ("no_alloc", c_bool), ("load_mtp", c_bool),
    ]


class SamplerSeqConfig(ctypes.Structure):
    _fields_ = [("seq_id", c_int32), ("sampler", c_void_p)]


class ContextParams(ctypes.Structure):
    _fields_ = [
        ("n_ctx", c_uint32), ("n_batch", c_uint32), ("n_ubatch", c_uint32), ("n_seq_max", c_uint32),
        ("n_rs_seq", c_uint32), ("n_outputs_max", c_uint32), ("n_outputs_max_per_seq", c_uint32),
        ("n_threads", c_int32), ("n_threads_batch", c_int32),
        ("ctx_type", c_int), ("rope_scaling_type", c_int), ("pooling_type", c_int), ("attention_type", c_int),
        ("flash_attn_type", c_int),
        ("rope_freq_base", c_float), ("rope_freq_scale", c_float), ("yarn_ext_factor", c_float),
        ("yarn_attn_factor", c_float), ("yarn_beta_fast", c_float), ("yarn_beta_slow", c_float),
        ("yarn_orig_ctx", c_uint32), ("defrag_thold", c_float),
        ("cb_eval", c_void_p), ("cb_eval_user_data", c_void_p),
        ("type_k", c_int), ("type_v", c_int),
        ("abort_callback", c_void_p), ("abort_callback_data", c_void_p),
        ("embeddings", c_bool), ("offload_kqv", c_bool), ("no_perf", c_bool), ("op_offload", c_bool),
        ("swa_full", c_bool), ("kv_unified", c_bool),
        ("samplers", ctypes.POINTER(SamplerSeqConfig)), ("n_samplers", ctypes.c_size_t),
        ("ctx_other", c_void_p),
    ]


class Batch(ctypes.Structure):
    _fields_ = [
        ("n_tokens", c_int32), ("token", ctypes.POINTER(c_int32)), ("embd", ctypes.POINTER(c_float)),
        ("pos", ctypes.POINTER(c_int32)), ("n_seq_id", ctypes.POINTER(c_int32)),
        ("seq_id", ctypes.POINTER(ctypes.POINTER(c_int32))), ("logits", ctypes.POINTER(ctypes.c_int8)),
    ]


class ChainParams(ctypes.Structure):
    _fields_ = [("no_perf", c_bool)]


LOG_CALLBACK = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)

# name: (restype, argtypes)
_FUNCTIONS: dict[str, tuple[Any, list[Any]]] = {
    "llama_backend_init": (None, []),
    "llama_log_set": (None, [LOG_CALLBACK, c_void_p]),
    "llama_supports_gpu_offload": (c_bool, []),
    "llama_model_default_params": (ModelParams, []),
    "llama_context_default_params": (ContextParams, []),
    "llama_sampler_chain_default_params": (ChainParams, []),
    "llama_model_load_from_file": (c_void_p, [c_char_p, ModelParams]),
    "llama_model_free": (None, [c_void_p]),
    "llama_init_from_model": (c_void_p, [c_void_p, ContextParams]),
    "llama_free": (None, [c_void_p]),
    "llama_model_get_vocab": (c_void_p, [c_void_p]),
    "llama_model_n_layer": (c_int32, [c_void_p]),
    "llama_model_desc": (c_int32, [c_void_p, c_char_p, ctypes.c_size_t]),
    "llama_n_ctx_seq": (c_uint32, [c_void_p]),
    "llama_vocab_n_tokens": (c_int32, [c_void_p]),
    "llama_vocab_is_eog": (c_bool, [c_void_p, c_int32]),
    "llama_tokenize": (c_int32, [c_void_p, c_char_p, c_int32, ctypes.POINTER(c_int32), c_int32, c_bool, c_bool]),
    "llama_token_to_piece": (c_int32, [c_void_p, c_int32, c_char_p, c_int32, c_int32, c_bool]),
    "llama_decode": (c_int32, [c_void_p, Batch]),
    "llama_synchronize": (None, [c_void_p]),
    "llama_get_sampled_token_ith": (c_int32, [c_void_p, c_int32]),
    "llama_get_memory": (c_void_p, [c_void_p]),
    "llama_memory_seq_rm": (c_bool, [c_void_p, c_int32, c_int32, c_int32]),
    "llama_memory_clear": (None, [c_void_p, c_bool]),
    "llama_sampler_chain_init": (c_void_p, [ChainParams]),
    "llama_sampler_chain_add": (None, [c_void_p, c_void_p]),
    "llama_sampler_init_greedy": (c_void_p, []),
    "llama_sampler_init_dist": (c_void_p, [c_uint32]),
    "llama_sampler_init_top_k": (c_void_p, [c_int32]),
    "llama_sampler_init_top_p": (c_void_p, [c_float, ctypes.c_size_t]),
    "llama_sampler_init_temp": (c_void_p, [c_float]),
    "llama_sampler_sample": (c_int32, [c_void_p, c_void_p, c_int32]),
    "llama_sampler_reset": (None, [c_void_p]),
    "llama_sampler_free": (None, [c_void_p]),
}

_lib_lock = threading.Lock()
_libs: dict[Path, Any] = {}


LOG_LINES: deque[str] = deque(maxlen=2000)  # libllama's recent log lines (read with recent_log())


@LOG_CALLBACK
def _log_callback(level: int, text: bytes | None, _user: Any) -> None:
    # Called from libllama's threads too: only append here, no logging machinery.
    if text:
        LOG_LINES.append(text.decode("utf-8", "replace"))


def recent_log() -> str:
    """libllama's and ggml's recent log output (model loading, offload, buffers)."""
    return "".join(list(LOG_LINES))


def load_library(binaries: Binaries) -> Any:
    """libllama from the binaries' lib folder, with the signatures above declared (cached per path)."""
    if binaries.lib_dir is None:
        raise LlcudaError(f"no lib/ folder with libllama next to {binaries.bin_dir}; the in-process engine needs "
                          "the shared libraries of the llama.cpp build (conda/pixi and the wheel ship them).")
    path = binaries.lib_dir / "libllama.so"
    with _lib_lock:
        if path in _libs:
            return _libs[path]
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise LlcudaError(f"could not load {path}: {exc}. Check that the CUDA driver (libcuda.so.1) is "
                              "installed for a CUDA build, or reinstall llcuda's binaries.") from exc
        for name, (restype, argtypes) in _FUNCTIONS.items():
            func = getattr(lib, name)
            func.restype, func.argtypes = restype, argtypes
        lib.llama_log_set(_log_callback, None)
        lib.llama_backend_init()
        _libs[path] = lib
        return lib


@dataclass(eq=False)
class _Request:
    tokens: list[int]  # the prompt
    max_tokens: int
    ignore_eos: bool
    future: Future = field(default_factory=Future)
    seq: int = -1
    prefilled: int = 0  # prompt tokens already in the KV cache
    out: list[int] = field(default_factory=list)
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    done: float = 0.0
    finish: str = "length"


class InProcessEngine:
    """A model in this process, decoded by one worker thread with continuous batching."""

    def __init__(self, *, binaries: Binaries | None = None) -> None:
        self._binaries = binaries
        self._lib: Any = None
        self._model = self._ctx = self._vocab = self._mem = None
        self._chains: list[int] = []
        self._cv = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._worker: threading.Thread | None = None
        self._closing = False
        self.model_name: str | None = None
        self.model_path: Path | None = None
        self.load_seconds: float | None = None
        self.backend_sampling: bool | None = None  # known after the first token
        self.stats = {"steps": 0, "decode_call_s": 0.0, "wait_s": 0.0, "host_s": 0.0, "tokens": 0}

    # -- loading -----------------------------------------------------------------------------
    def load_model(
        self,
        model: str | Path | None = None,
        *,
        gpu_layers: int = 99,
        ctx_size: int | None = None,
        n_parallel: int = 1,
        flash_attn: str = "on",
        threads: int | None = None,
        batch_size: int = 2048,
        ubatch_size: int = 512,
        temperature: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: int = 0,
        kv_unified: bool = False,
        offline: bool | None = None,
    ) -> InProcessEngine:
        """Load ``model`` (anything ``InferenceEngine.load_model`` takes) and start the worker.

        ``ctx_size`` is the total KV cache (default 4096 per sequence); each of the ``n_parallel``
        sequences gets ``ctx_size / n_parallel`` tokens unless ``kv_unified``.
        """
        from .config import default_model
        from .models import resolve_model

        validation.integer(gpu_layers, "gpu_layers", -1, 100_000)
        validation.integer(n_parallel, "n_parallel", 1, 256)
        if flash_attn not in FLASH_ATTN:
            raise ConfigError(f"flash_attn={flash_attn!r} must be 'on', 'off' or 'auto'.")
        self.unload()
        started = time.perf_counter()
        resolved = resolve_model(model if model is not None else default_model(), offline=offline)
        binaries = self._binaries or bootstrap.find_binaries()
        for warning in gpu.check_compatibility(binaries.build_info):
            log.warning("%s", warning)
        lib = self._lib = load_library(binaries)

        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = gpu_layers
        self._model = lib.llama_model_load_from_file(str(resolved.path).encode(), mparams)
        if not self._model:
            raise LlcudaError(f"libllama could not load {resolved.path} (see the log at DEBUG level).")
        self._vocab = lib.llama_model_get_vocab(self._model)

        chain_params = lib.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        configs = (SamplerSeqConfig * n_parallel)()
        for seq in range(n_parallel):
            chain = lib.llama_sampler_chain_init(chain_params)
            if temperature <= 0.0:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            else:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(top_k))
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed + seq))
            self._chains.append(chain)
            configs[seq].seq_id, configs[seq].sampler = seq, chain

        cparams = lib.llama_context_default_params()
        cparams.n_ctx = ctx_size or 4096 * n_parallel
        cparams.n_batch = batch_size
        cparams.n_ubatch = min(ubatch_size, batch_size)
        cparams.n_seq_max = n_parallel
        cparams.flash_attn_type = FLASH_ATTN[flash_attn]
        cparams.kv_unified = kv_unified
        if threads:
            cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        cparams.samplers, cparams.n_samplers = configs, n_parallel
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.unload()
            raise LlcudaError("libllama could not create a context (out of GPU memory? lower ctx_size or n_parallel).")
        self._mem = lib.llama_get_memory(self._ctx)
        self._n_parallel, self._n_batch = n_parallel, batch_size
        self._n_ctx_seq = int(lib.llama_n_ctx_seq(self._ctx))
        self._alloc_batch(batch_size)
        self._free_seqs = list(range(n_parallel))  # a heap: the lowest free sequence id first
        self._active: list[_Request] = []
        self._closing = False
        self._worker = threading.Thread(target=self._loop, name="llcuda-inprocess", daemon=True)
        self._worker.start()
        self.model_name, self.model_path = resolved.name, resolved.path
        self.infer(" ", max_tokens=2, ignore_eos=True)  # warm-up: kernels, CUDA graphs, sampler graph
        self.load_seconds = time.perf_counter() - started
        self.reset_stats()
        log.info("loaded %s in-process in %.2f s", resolved.name, self.load_seconds)
        return self

    def _alloc_batch(self, n: int) -> None:
        self._tok = (c_int32 * n)()
        self._pos = (c_int32 * n)()
        self._nseq = (c_int32 * n)(*([1] * n))
        self._seqv = (c_int32 * n)()
        self._seqp = (ctypes.POINTER(c_int32) * n)(
            *(ctypes.cast(ctypes.byref(self._seqv, 4 * i), ctypes.POINTER(c_int32)) for i in range(n)))
        self._out = (ctypes.c_int8 * n)()
        self._batch = Batch(0, self._tok, None, self._pos, self._nseq, self._seqp, self._out)

    @property
    def is_loaded(self) -> bool:
        return self._ctx is not None

    def unload(self) -> None:
        """Stop the worker (failing queued requests) and free the context and model."""
        worker = self._worker
        if worker is not None:
            with self._cv:
                self._closing = True
                self._cv.notify_all()
            worker.join()
            self._worker = None
        lib = self._lib
        if lib is not None:
            if self._ctx:
                lib.llama_free(self._ctx)
            for chain in self._chains:
                lib.llama_sampler_free(chain)
            if self._model:
                lib.llama_model_free(self._model)
        self._ctx = self._model = self._vocab = self._mem = None
        self._chains = []

    close = unload

    def __enter__(self) -> InProcessEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unload()

    # -- requests ----------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        if self._vocab is None:
            raise LlcudaError("no model is loaded; call load_model(...) first.")
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        buf = (c_int32 * cap)()
        n = self._lib.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, False)
        if n < 0:
            buf = (c_int32 * -n)()
            n = self._lib.llama_tokenize(self._vocab, raw, len(raw), buf, -n, add_special, False)
        return list(buf[:n])

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``, piece by piece as llama-server renders them (special tokens hidden)."""
        if self._vocab is None:
            raise LlcudaError("no model is loaded; call load_model(...) first.")
        piece = self._lib.llama_token_to_piece
        buf = ctypes.create_string_buffer(256)
        parts = []
        for token in tokens:
            n = piece(self._vocab, token, buf, 256, 0, False)
            if n < 0:
                big = ctypes.create_string_buffer(-n)
                n = piece(self._vocab, token, big, -n, 0, False)
                parts.append(big.raw[:n])
            else:
                parts.append(buf.raw[:n])
        return b"".join(parts).decode("utf-8", errors="replace")

    def _submit(self, prompt: str, max_tokens: int, ignore_eos: bool) -> _Request:
        """Queue one request; its future resolves to the request itself once decoded. Thread-safe."""
        tokens = self.tokenize(validation.prompt(prompt))
        max_tokens = validation.max_tokens(max_tokens)
        if max_tokens < 1:
            raise ConfigError("the in-process engine needs max_tokens >= 1.")
        if len(tokens) + max_tokens > self._n_ctx_seq:
            raise ConfigError(f"prompt ({len(tokens)} tokens) + max_tokens ({max_tokens}) exceed the "
                              f"{self._n_ctx_seq} tokens of context per sequence; load with a larger ctx_size.")
        request = _Request(tokens, max_tokens, ignore_eos)
        with self._cv:
            if self._worker is None or self._closing:
                raise LlcudaError("no model is loaded; call load_model(...) first.")
            self._queue.append(request)
            self._cv.notify()
        return request

    def infer(self, prompt: str, max_tokens: int = 128, *, ignore_eos: bool = False) -> InferResult:
        """Continue ``prompt`` with the sampling chosen at load time (greedy by default)."""
        return self._result(self._submit(prompt, max_tokens, ignore_eos))

    def batch_infer(self, prompts: Sequence[str], max_tokens: int = 128, *,
                    ignore_eos: bool = False) -> list[InferResult]:
        """All ``prompts`` decoded together (up to ``n_parallel`` at a time); results in order."""
        requests = [self._submit(p, max_tokens, ignore_eos) for p in prompts]
        return [self._result(r) for r in requests]

    def reset_stats(self) -> None:
        self.stats = {"steps": 0, "decode_call_s": 0.0, "wait_s": 0.0, "host_s": 0.0, "tokens": 0}

    # -- the worker --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._active and not self._closing:
                    self._cv.wait()
                if self._closing:
                    for req in list(self._queue) + self._active:
                        req.future.set_exception(LlcudaError("the engine was unloaded before this request finished."))
                    self._queue.clear()
                    self._active.clear()
                    return
                while self._queue and self._free_seqs:
                    req = self._queue.popleft()
                    req.seq = heapq.heappop(self._free_seqs)
                    self._active.append(req)
                self._active.sort(key=lambda r: r.seq)
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                for req in self._active:
                    self._release(req)
                    req.future.set_exception(exc if isinstance(exc, LlcudaError) else InferenceError(str(exc)))
                self._active.clear()

    def _step(self) -> None:
        # Tokens go in ascending sequence-id order and ids are handed out lowest-first: with one KV
        # stream per sequence (kv_unified=False) llama.cpp puts only *consecutive* ids s, s+1, ... in
        # one ubatch (llama_batch_allocr::split_equal), so scattered ids would mean one graph per sequence.
        lib, tok, pos, seqv, out = self._lib, self._tok, self._pos, self._seqv, self._out
        t0 = time.perf_counter()
        n = 0
        outputs: list[tuple[int, _Request]] = []
        for req in self._active:  # one token for every decoding sequence
            if req.prefilled == len(req.tokens):
                tok[n], pos[n], seqv[n], out[n] = req.out[-1], len(req.tokens) + len(req.out) - 1, req.seq, 1
                outputs.append((n, req))
                n += 1
        for req in self._active:  # prompt chunks fill the rest of the batch
            left = len(req.tokens) - req.prefilled
            if left == 0:
                continue
            take = min(left, self._n_batch - n)
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
            raise InferenceError(f"llama_decode failed with code {rc} for a batch of {n} tokens "
                                 "(1: no KV cache slot; lower n_parallel or raise ctx_size).")
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
            elif len(req.out) >= req.max_tokens:
                finished.append(req)
        for req in finished:
            self._active.remove(req)
            self._release(req)
            self._finish(req, t3)
        t4 = time.perf_counter()
        stats = self.stats
        stats["steps"] += 1
        stats["tokens"] += len(outputs)
        stats["decode_call_s"] += t2 - t1
        stats["wait_s"] += t3 - t2
        stats["host_s"] += (t1 - t0) + (t4 - t3)

    def _release(self, req: _Request) -> None:
        self._lib.llama_memory_seq_rm(self._mem, req.seq, -1, -1)
        self._lib.llama_sampler_reset(self._chains[req.seq])
        with self._cv:
            heapq.heappush(self._free_seqs, req.seq)

    def _finish(self, req: _Request, now: float) -> None:
        req.done = now
        req.future.set_result(req)

    def _result(self, req: _Request) -> InferResult:
        """Wait for ``req`` and build its result in the caller's thread (text off the decode loop)."""
        req.future.result()
        tokens = req.out[:-1] if req.finish == "stop" else req.out
        first = req.first_token or req.done
        decode_s = req.done - first
        tps = (len(req.out) - 1) / decode_s if decode_s > 0 and len(req.out) > 1 else 0.0
        return InferResult(
            text=self.detokenize(tokens),
            tokens_generated=len(req.out),
            prompt_tokens=len(req.tokens),
            latency_ms=(req.done - req.submitted) * 1000.0,
            tokens_per_sec=tps,
            finish_reason=req.finish,
            time_to_first_token_ms=(first - req.submitted) * 1000.0,
            model=self.model_name or "",
            timings={"prompt_n": len(req.tokens), "predicted_n": len(req.out),
                     "predicted_per_second": tps, "backend_sampling": bool(self.backend_sampling)},
        )

    def __repr__(self) -> str:
        return f"<InProcessEngine model={self.model_name!r} {'loaded' if self.is_loaded else 'not loaded'}>"
