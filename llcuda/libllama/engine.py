"""In-process inference through libllama (ctypes): no server, no HTTP, sampling on the GPU.

``InferenceEngine(backend="inprocess")`` uses this engine; it can also be used on its own::

    from llcuda.libllama.engine import InProcessEngine
    with InProcessEngine().load_model("model.gguf", n_parallel=16) as engine:
        print(engine.infer("Hello", max_tokens=64).text)                 # greedy by default here
        results = engine.batch_infer(["a", "b", "c"], max_tokens=64)   # decoded together

Loading happens here; decoding in :class:`llcuda.libllama.batcher.Batcher` (one worker thread, continuous
batching, a sampler chain per sequence on the device); request text, stop strings and streaming
in :mod:`llcuda.libllama.request`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import queue
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from llcuda import config
from llcuda import options as validation
from llcuda.errors import ConfigError, ContextLengthError, LlcudaError, RequestTimeoutError
from llcuda.libllama.batcher import STATS, Batcher, greedy_configs
from llcuda.libllama.bindings import (
    FLASH_ATTN,
    LOAD_MODES,
    SPLIT_MODES,
    c_int32,
    load_library,
    log_tail,
    set_device_order,
)
from llcuda.libllama.chat_template import ChatTemplate
from llcuda.libllama.embedder import Embedder
from llcuda.libllama.request import Request, Sampling, TokenSink, stop_words, stream_pieces
from llcuda.metrics import MetricsRecorder
from llcuda.options import CHAT_MAX_TOKENS, LoadOptions, SamplingOptions
from llcuda.processes.llama_server import ServerSettings
from llcuda.results import InferResult, TokenStream
from llcuda.system import binaries as bootstrap
from llcuda.system import gpu
from llcuda.system import memory as vram
from llcuda.system import placement as split
from llcuda.system.binaries import Binaries
from llcuda.system.cpu import physical_cores

if TYPE_CHECKING:
    from llcuda.models import ResolvedModel

log = logging.getLogger(__name__)

PER_SEQUENCE_CTX = 4096  # InProcessEngine's default context per sequence
T = TypeVar("T")


def _sampling(options: SamplingOptions | None, overrides: dict[str, Any]) -> SamplingOptions:
    """``options`` (default: SamplingOptions()) with ``overrides`` applied, checked."""
    if not overrides:
        return options or SamplingOptions()
    base = dataclasses.asdict(options) if options is not None else {}
    return SamplingOptions.checked(**{**base, **overrides})


def _timed(func: Callable[..., T], *args: Any) -> tuple[T, float]:
    """``func(*args)`` and the seconds it took."""
    t = time.perf_counter()
    return func(*args), time.perf_counter() - t


def _resolve(model: str | Path, offline: bool | None) -> ResolvedModel:
    from llcuda.models import resolve_model  # ~0.05 s to import: inside the timed, overlapped part

    return resolve_model(model, offline=offline)


def _check_gpus(
    build_info: dict[str, Any], split_mode: str | None, tensor_split: Sequence[float] | None, main_gpu: int | None
) -> tuple[gpu.GPUReport | None, tuple[str | None, tuple[float, ...], int | None]]:
    """The GPUs (one detection for both checks), their compatibility with the build, and the split."""
    report = gpu.detect() if build_info.get("backend") == "cuda" else None
    for warning in gpu.check_compatibility(build_info, report):
        log.warning("%s", warning)
    return report, split.prepare(build_info, split_mode, tensor_split, main_gpu, report=report)


def _text_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checked messages, each content a string (lists of text parts joined): this engine reads text only."""
    checked = validation.messages(messages)
    for i, message in enumerate(checked):
        content = message["content"]
        if isinstance(content, list):
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise ConfigError(
                    f"messages[{i}]['content'] has a part that is not text; the in-process backend "
                    "takes text only (use backend='llama-server' for other content)."
                )
            message["content"] = "".join(p["text"] for p in content)
    return checked


class InProcessEngine:
    """A model in this process, decoded by one worker thread with continuous batching.

    After loading: ``load_seconds``, ``load_mode`` (how the weights were read), ``load_timings``
    (seconds per phase, which add up to ``load_seconds``: ``checks_s``, ``model_s``, ``context_s``,
    ``warmup_s``; and the three parts of ``checks_s``, which run at the same time: ``resolve_s``
    (finding the model, reading its metadata), ``detect_s`` (GPUs and their checks) and
    ``library_s`` (opening libllama, initialising CUDA)), ``backend_sampling`` (True once a token
    came back from the device's sampler) and ``stats`` (decode steps, tokens, sampler-chain changes,
    and the seconds spent in the ``llama_decode`` call, waiting for the device and in Python;
    ``reset_stats()`` clears them). ``request_timeout``: seconds to wait for a token (default
    ``LLCUDA_REQUEST_TIMEOUT`` or 600).
    """

    def __init__(
        self,
        *,
        binaries: Binaries | None = None,
        request_timeout: float | None = None,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        self._binaries = binaries
        self._timeout = config.request_timeout(request_timeout)
        self.metrics = metrics or MetricsRecorder()
        self._lib: Any = None
        self._model: Any = None
        self._vocab: Any = None
        self._batcher: Batcher | None = None
        self._embedder: Embedder | None = None
        self._grammars: dict[str, bool] = {}  # grammars that parsed (check_grammar)
        self._template: ChatTemplate | None = None
        self.model_name: str | None = None
        self.model_path: Path | None = None
        self.load_mode: str | None = None
        self.load_seconds: float | None = None
        self.load_timings: dict[str, float] = {}
        self._stats_before: dict[str, float] = dict.fromkeys(STATS, 0)

    # -- loading -----------------------------------------------------------------------------
    def load_model(
        self,
        model: str | Path | None = None,
        options: LoadOptions | None = None,
        *,
        offline: bool | None = None,
        **overrides: Any,
    ) -> InProcessEngine:
        """Load ``model`` (anything ``InferenceEngine.load_model`` takes) and start the worker.

        ``options`` and ``overrides`` (LoadOptions' field names) say how; the defaults are
        :class:`~llcuda.options.LoadOptions`'. Replaces a model loaded before, once the new one
        passed the checks (model found, GPUs compatible, memory enough, libllama loaded).

        ``embeddings=True`` also creates an embeddings context beside the generating one, for :meth:`embed`.
        """
        opts = (options or LoadOptions()).replace(**overrides)  # checked
        gpu_layers, n_parallel, flash_attn, threads = opts.gpu_layers, opts.n_parallel, opts.flash_attn, opts.threads
        split_mode, tensor_split, main_gpu = opts.split_mode, opts.tensor_split, opts.main_gpu
        kv_unified = opts.kv_unified
        n_batch = opts.batch_size or 2048
        n_ubatch = min(opts.ubatch_size or 512, n_batch)
        mode = opts.load_mode or config.DEFAULT_LOAD_MODE
        model = model if model is not None else config.default_model()
        t0 = time.perf_counter()
        try:
            binaries = self._binaries or bootstrap.find_binaries()
        except LlcudaError:
            _resolve(model, offline)  # a model that cannot be found is reported first, as before
            raise
        build_info = binaries.build_info
        timings: dict[str, float] = {}
        set_device_order()  # before the threads: the library thread would set it otherwise
        # Three parts at once: the GPU check and the library load (C code, without the GIL) run while
        # this thread resolves the model (Python: GGUF metadata). Errors in the order of the parts:
        # the model's, then the GPUs', then the library's. Leaving the block waits for both threads.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="llcuda-load") as pool:
            gpus = pool.submit(_timed, _check_gpus, build_info, split_mode, tensor_split, main_gpu)
            library = pool.submit(_timed, load_library, binaries)
            resolved, timings["resolve_s"] = _timed(_resolve, model, offline)
            (report, (split_mode, shares, main_gpu)), timings["detect_s"] = gpus.result()
            n_ctx = opts.context_tokens(resolved.info.context_length)
            settings = ServerSettings(
                model_path=resolved.path,
                ctx_size=n_ctx,
                gpu_layers=gpu_layers,
                n_parallel=n_parallel,
                split_mode=split_mode,
                tensor_split=shares,
                main_gpu=main_gpu,
            )
            vram.check_memory(resolved.info, settings, build_info, report)  # before a CUDA out-of-memory crash
            lib, timings["library_s"] = library.result()
        self.unload()  # the previous model, once the new one passed every check
        self._lib = lib
        timings = {"checks_s": time.perf_counter() - t0, **timings}

        t = time.perf_counter()
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = gpu_layers
        mparams.load_mode = LOAD_MODES[mode]
        if split_mode is not None:
            mparams.split_mode = SPLIT_MODES[split_mode]
        if main_gpu is not None:
            mparams.main_gpu = main_gpu
        split_array = (ctypes.c_float * int(lib.llama_max_devices()))(*shares)
        if shares:
            mparams.tensor_split = ctypes.cast(split_array, ctypes.c_void_p)
        self._model = lib.llama_model_load_from_file(str(resolved.path).encode(), mparams)
        if not self._model:
            raise LlcudaError(f"libllama could not load {resolved.path}. Its log ends:\n{log_tail()}")
        self._vocab = lib.llama_model_get_vocab(self._model)
        timings["model_s"] = time.perf_counter() - t

        t = time.perf_counter()
        configs, chains = greedy_configs(lib, n_parallel)  # greedy until a request asks otherwise
        cparams = lib.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch, cparams.n_seq_max = n_ctx, n_batch, n_ubatch, n_parallel
        cparams.flash_attn_type = FLASH_ATTN[flash_attn]
        cparams.kv_unified = kv_unified
        cparams.n_threads = cparams.n_threads_batch = threads or physical_cores()
        cparams.no_perf = True
        cparams.samplers, cparams.n_samplers = configs, n_parallel
        ctx = lib.llama_init_from_model(self._model, cparams)
        if not ctx:
            tail = log_tail()
            for chain in chains:
                lib.llama_sampler_free(chain)
            self.unload()
            raise LlcudaError(
                "libllama could not create a context (out of GPU memory? lower ctx_size or "
                f"n_parallel). Its log ends:\n{tail}"
            )
        self._batcher = Batcher(lib, ctx, self._vocab, chains, n_batch, self.piece)
        if opts.embeddings:
            try:
                self._embedder = Embedder(lib, self._model, self._batcher.n_ctx_seq, threads)
            except LlcudaError:
                self.unload()
                raise
        self.model_name, self.model_path, self.load_mode = resolved.name, resolved.path, mode
        timings["context_s"] = time.perf_counter() - t

        t = time.perf_counter()
        self.result(self.submit(" ", SamplingOptions(max_tokens=2, temperature=0.0)))  # warm-up: kernels, graphs
        self._batcher.drop_cached()  # nothing of the warm-up is worth reusing
        timings["warmup_s"] = time.perf_counter() - t
        self.load_timings, self.load_seconds = timings, time.perf_counter() - t0
        self.reset_stats()
        self.metrics.reset()
        log.info(
            "loaded %s in-process in %.2f s, load_mode %s (%s)",
            resolved.name,
            self.load_seconds,
            mode,
            ", ".join(f"{k} {v:.3f}" for k, v in timings.items()),
        )
        return self

    @property
    def is_loaded(self) -> bool:
        return self._batcher is not None

    @property
    def n_parallel(self) -> int:
        return self._batcher.n_parallel if self._batcher else 0

    @property
    def n_ctx_seq(self) -> int:
        """Tokens of context one sequence (prompt + generated) can use."""
        return self._batcher.n_ctx_seq if self._batcher else 0

    @property
    def n_vocab(self) -> int:
        """Tokens in the model's vocabulary (valid token ids are 0 to n_vocab - 1)."""
        return int(self._lib.llama_vocab_n_tokens(self._vocab)) if self._vocab is not None else 0

    def check_tokens(self, tokens: Sequence[int], name: str = "prompt") -> list[int]:
        """``tokens`` as a list of ints, ConfigError unless each is a token id of the vocabulary."""
        self._need_model()
        checked = [int(t) for t in tokens]
        n_vocab = self.n_vocab
        bad = next((t for t in checked if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise ConfigError(
                f"{name} has token id {bad}, outside the vocabulary (0 to {n_vocab - 1}); send ids "
                "from this model's tokenizer."
            )
        return checked

    @property
    def backend_sampling(self) -> bool | None:
        """True once a token came back from the device's sampler; False if one was sampled on the CPU."""
        return self._batcher.backend_sampling if self._batcher else None

    @property
    def stats(self) -> dict[str, float]:
        """Decode-loop counters since load or :meth:`reset_stats`."""
        now = self._batcher.stats if self._batcher else dict.fromkeys(STATS, 0)
        return {k: now[k] - self._stats_before.get(k, 0) for k in STATS}

    def reset_stats(self) -> None:
        self._stats_before = dict(self._batcher.stats) if self._batcher else dict.fromkeys(STATS, 0)

    def unload(self) -> None:
        """Stop the worker (failing queued and running requests) and free the context and model."""
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()
        embedder, self._embedder = self._embedder, None
        if embedder is not None:
            embedder.close()
        self._grammars.clear()
        if self._model:
            self._lib.llama_model_free(self._model)
        self._model = self._vocab = self._template = None

    close = unload

    def __enter__(self) -> InProcessEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unload()

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", ...}`` while the worker runs; raises when no model is loaded."""
        batcher = self._batcher
        if batcher is None:
            raise LlcudaError("no model is loaded in-process; call load_model(...) first.")
        running, queued, alive = batcher.load()
        if not alive:
            raise LlcudaError("the in-process worker thread has stopped; load the model again.")
        return {
            "status": "ok",
            "backend": "inprocess",
            "model": self.model_name,
            "running": running,
            "queued": queued,
            "slots": batcher.n_parallel,
            "backend_sampling": batcher.backend_sampling,
            "sampled_logits_copied": batcher.sampled_data_kept,
        }

    # -- tokens and templates ----------------------------------------------------------------
    def _need_model(self) -> None:
        if self._vocab is None:
            raise LlcudaError("no model is loaded; call load_model(...) first.")

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        self._need_model()
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        buf = (c_int32 * cap)()
        n = self._lib.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, parse_special)
        if n < 0:
            buf = (c_int32 * -n)()
            n = self._lib.llama_tokenize(self._vocab, raw, len(raw), buf, -n, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token; special tokens (BOS, end of turn) are hidden unless ``special``."""
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        """Text of ``tokens``, piece by piece as llama-server renders generated text."""
        self._need_model()
        return b"".join(self.piece(t, special) for t in tokens).decode("utf-8", errors="replace")

    def chat_template(self) -> ChatTemplate:
        """The model's Jinja chat template (read from its GGUF once); ConfigError if it has none."""
        self._need_model()
        if self._template is None and self.model_path is not None:
            self._template = ChatTemplate.from_gguf(self.model_path, name=self.model_name)
        if self._template is None:
            raise LlcudaError("no model is loaded; call load_model(...) first.")
        return self._template

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], **variables: Any) -> str:
        """``messages`` as one prompt ending where the assistant's turn begins, in the model's chat
        template; ``variables`` reach the template (e.g. ``enable_thinking=False``)."""
        return self.chat_template().render(_text_messages(messages), **variables)

    def prompt_tokens(self, text: str) -> list[int]:
        """``text`` as llama-server tokenizes a prompt: special tokens parsed, BOS added where the model
        wants one and the text does not already begin with it."""
        self._need_model()
        tokens = self.tokenize(text, add_special=False, parse_special=True)
        if self._lib.llama_vocab_get_add_bos(self._vocab):
            bos = int(self._lib.llama_vocab_bos(self._vocab))
            if not tokens or tokens[0] != bos:
                tokens.insert(0, bos)
        return tokens

    # -- requests ----------------------------------------------------------------------------
    def submit(
        self,
        prompt: str | Sequence[int],
        options: SamplingOptions | None = None,
        *,
        stream: TokenSink | None = None,
        **overrides: Any,
    ) -> Request:
        """Queue one request (text, or token ids); ``request.future`` resolves when it ends. Thread-safe.

        ``options`` and ``overrides`` (SamplingOptions' field names) say how it samples. ``stream``: a
        :class:`~llcuda.libllama.request.TokenSink` (e.g. a ``queue.SimpleQueue``) that gets each generated
        token and then None. A ``grammar`` that llama.cpp cannot parse is a ConfigError; such requests are
        sampled on the CPU.
        """
        opts = _sampling(options, overrides)
        tokens = self.prompt_tokens(validation.prompt(prompt)) if isinstance(prompt, str) else self.check_tokens(prompt)
        if opts.grammar is not None:
            self.check_grammar(opts.grammar)
        batcher = self._batcher
        if batcher is None:
            raise LlcudaError("no model is loaded; call load_model(...) first.")
        if not tokens:
            raise ConfigError("the prompt has no tokens; give the model some text to continue.")
        if len(tokens) >= batcher.n_ctx_seq:
            raise ContextLengthError(
                f"the prompt has {len(tokens)} tokens, but a sequence holds at most {batcher.n_ctx_seq} (prompt and "
                "answer together); shorten the prompt, or load with a larger ctx_size.",
                prompt_tokens=len(tokens),
                n_ctx=batcher.n_ctx_seq,
            )
        req = Request(tokens, opts.max_tokens, Sampling.of(opts), stop_words(opts.stop), opts.ignore_eos, stream)
        batcher.put(req)
        return req

    def forget_prefixes(self) -> None:
        """Drop what finished requests left in the KV cache for prefix reuse (to measure without it).
        Call it while no request runs."""
        if self._batcher is not None:
            self._batcher.drop_idle_cache()

    def cancel(self, req: Request) -> None:
        """Stop decoding ``req`` at the next step (its caller gave up)."""
        if self._batcher is not None:
            self._batcher.cancel(req)

    def check_grammar(self, grammar: str) -> None:
        """ConfigError unless llama.cpp parses the GBNF ``grammar`` (results are remembered)."""
        self._need_model()
        if grammar in self._grammars:
            return
        sampler = self._lib.llama_sampler_init_grammar(self._vocab, grammar.encode("utf-8"), b"root")
        if not sampler:
            raise ConfigError(
                f"llama.cpp could not parse the grammar (GBNF with a root rule). Its log ends:\n{log_tail(8)}"
            )
        self._lib.llama_sampler_free(sampler)
        if len(self._grammars) > 256:
            self._grammars.clear()
        self._grammars[grammar] = True

    def add_step_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs in the decode thread after each decode step (see
        :meth:`llcuda.libllama.batcher.Batcher.add_step_listener`)."""
        if self._batcher is None:
            raise LlcudaError("no model is loaded; call load_model(...) first.")
        self._batcher.add_step_listener(listener)

    def remove_step_listener(self, listener: Callable[[], None]) -> None:
        if self._batcher is not None:
            self._batcher.remove_step_listener(listener)

    @property
    def embeddings(self) -> bool:
        """Whether :meth:`embed` works (the model was loaded with ``embeddings=True``)."""
        return self._embedder is not None

    def embed(self, inputs: Sequence[str | Sequence[int]]) -> tuple[list[list[float]], int]:
        """L2-normalised pooled embeddings of ``inputs`` (texts, or token lists), and the tokens they took.

        Needs a model loaded with ``embeddings=True``. Thread-safe; inputs are embedded one at a time.
        """
        embedder = self._embedder
        if embedder is None:
            raise ConfigError(
                "embeddings are off for this model; load it with embeddings=True (llcuda serve --embeddings)."
            )
        token_lists = [
            self.tokenize(validation.prompt(x, f"input[{i}]"))
            if isinstance(x, str)
            else self.check_tokens(x, f"input[{i}]")
            for i, x in enumerate(inputs)
        ]
        return embedder.embed(token_lists), sum(len(t) for t in token_lists)

    def infer(
        self, prompt: str | Sequence[int], options: SamplingOptions | None = None, **overrides: Any
    ) -> InferResult:
        """Continue ``prompt`` (raw text or token ids) with ``options`` (default: SamplingOptions()) and
        ``overrides`` (SamplingOptions' field names)."""
        return self.result(self.submit(prompt, options, **overrides))

    def infer_stream(
        self, prompt: str | Sequence[int], options: SamplingOptions | None = None, **overrides: Any
    ) -> TokenStream:
        """Like :meth:`infer`, but yields text pieces as tokens are decoded."""
        req = self.submit(prompt, options, stream=queue.SimpleQueue(), **overrides)
        deadline = time.monotonic() + self._timeout
        box: dict[str, InferResult] = {}

        def final_text() -> str:
            box["result"] = self.result(req, deadline)
            return box["result"].text

        def pieces() -> Any:
            try:
                yield from stream_pieces(req, self.piece, final_text, deadline, lambda: self._timed_out(req))
            finally:
                if not req.future.done():
                    self.cancel(req)  # the reader stopped early

        return TokenStream(pieces(), lambda: box["result"])

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        options: SamplingOptions | None = None,
        *,
        stream: bool = False,
        **overrides: Any,
    ) -> InferResult | TokenStream:
        """One assistant turn for ``messages`` in the model's chat template (ConfigError if it has none)."""
        text = self.apply_chat_template(messages)
        tokens = self.tokenize(text, add_special=self.chat_template().add_special(text), parse_special=True)
        opts = _sampling(options, {"max_tokens": CHAT_MAX_TOKENS, **overrides} if options is None else overrides)
        return self.infer_stream(tokens, opts) if stream else self.infer(tokens, opts)

    def batch_infer(
        self, prompts: Sequence[str], options: SamplingOptions | None = None, **overrides: Any
    ) -> list[InferResult]:
        """All ``prompts`` decoded together (up to ``n_parallel`` at a time); results in order."""
        items = [validation.prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        requests: list[Request] = []
        try:
            opts = _sampling(options, overrides)
            for p in items:
                requests.append(self.submit(p, opts))
        except LlcudaError:
            for req in requests:
                self.cancel(req)
            raise
        deadline = time.monotonic() + self._timeout
        return [self.result(r, deadline) for r in requests]

    def _timed_out(self, req: Request) -> RequestTimeoutError:
        self.cancel(req)
        self.metrics.record_failure()
        return RequestTimeoutError(
            f"the request did not finish within {self._timeout:g} s (request_timeout; it had generated "
            f"{len(req.out)} tokens) and was cancelled. Raise request_timeout or LLCUDA_REQUEST_TIMEOUT, or lower "
            "max_tokens."
        )

    def result(self, req: Request, deadline: float | None = None) -> InferResult:
        """Wait for ``req`` (until ``deadline``, a ``time.monotonic()`` value; default: request_timeout from
        now) and build its result in the caller's thread (text off the decode loop)."""
        wait = self._timeout if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            req.future.result(timeout=wait)
        except FutureTimeout:  # not the built-in TimeoutError before Python 3.11
            raise self._timed_out(req) from None
        except LlcudaError:
            self.metrics.record_failure()
            raise
        return self.build_result(req)

    def build_result(self, req: Request) -> InferResult:
        """The InferResult of a finished request (recorded in the metrics)."""
        tokens = req.out[:-1] if req.finish == "stop" and req.stop_at is None else req.out
        if req.stop_at is not None:
            text = bytes(req.text[: req.stop_at]).decode("utf-8", errors="replace")
        else:
            text = self.detokenize(tokens)
        first = req.first_token or req.done
        decode_s = req.done - first
        tps = (len(req.out) - 1) / decode_s if decode_s > 0 and len(req.out) > 1 else 0.0
        self.metrics.record(req.submitted, req.done, len(req.out), tps)
        return InferResult(
            text=text,
            tokens_generated=len(req.out),
            prompt_tokens=len(req.tokens),
            latency_ms=(req.done - req.submitted) * 1000.0,
            tokens_per_sec=tps,
            finish_reason=req.finish,
            time_to_first_token_ms=(first - req.submitted) * 1000.0,
            stop_word=req.stop_word,
            model=self.model_name or "",
            timings={
                "prompt_n": len(req.tokens),
                "predicted_n": len(req.out),
                "predicted_per_second": tps,
                "prompt_cached": req.reused,
                "backend_sampling": bool(self.backend_sampling),
            },
        )

    def __repr__(self) -> str:
        return f"<InProcessEngine model={self.model_name!r} {'loaded' if self.is_loaded else 'not loaded'}>"
