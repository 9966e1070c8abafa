"""Will the model fit in GPU memory? A lower-bound estimate, checked before llama-server starts.

With every layer offloaded (llcuda's default ``gpu_layers=99``), llama.cpp puts the weights
(all but the token embeddings, which stay in host memory) and the KV cache on the GPUs, plus
compute buffers. When even a lower bound of that exceeds what the GPUs have free, the load
would end in a CUDA out-of-memory error deep in the server log; :func:`check_memory` refuses it
up front with the sizes and the fixes. Every approximation errs low (compute buffers are not
counted, the token embeddings are subtracted at their widest likely type, unusual attention
counts no KV cache), so the check never refuses a model that would have fitted.
``gpu_layers=-1`` ("auto") lets llama.cpp fit what it can instead, and skips this check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llcuda.errors import InsufficientMemoryError
from llcuda.system import gpu

if TYPE_CHECKING:
    from llcuda.models.gguf import GGUFInfo
    from llcuda.processes.llama_server import ServerSettings

MIB = 1 << 20
GIB = 1 << 30
KV_F16_BYTES = 2.0
KV_QUANTIZED_MIN_BYTES = 0.5  # q4_0 (4.5 bits) is the smallest KV cache type
_KV_TYPE_FLAGS = {"-ctk", "--cache-type-k", "-ctv", "--cache-type-v"}
_KV_ON_CPU_FLAGS = {"-nkvo", "--no-kv-offload"}
# Flags that move weights off the GPUs in ways this estimate does not model: no check then.
_PLACEMENT_FLAGS = {
    "-ngl",
    "--gpu-layers",
    "--n-gpu-layers",
    "-ot",
    "--override-tensor",
    "-cmoe",
    "--cpu-moe",
    "-ncmoe",
    "--n-cpu-moe",
    "-dev",
    "--device",
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Lower bounds of what a fully offloaded model needs, and what the GPUs in use have free."""

    weights_bytes: int
    kv_cache_bytes: int
    free_bytes: int
    gpus: tuple[gpu.GPUInfo, ...]

    @property
    def need_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.free_bytes


def weights_on_gpu(info: GGUFInfo) -> int:
    """Lower bound of the weight bytes llama.cpp offloads: the tensor data minus the token embeddings
    (kept in host memory), counted at 4 bytes per value for F32 files and 2 (F16) otherwise."""
    embedding_values = (info.vocab_size or 0) * (info.embedding_length or 0)
    widest = 4 if info.file_type in (None, 0) else 2
    return max(0, info.data_size - embedding_values * widest)


def head_sizes(info: GGUFInfo) -> tuple[int, int] | None:
    """The attention (key, value) head sizes in ``info``'s metadata; None when they cannot be read."""
    arch, meta = info.architecture, info.metadata

    def positive(key: str) -> int | None:
        v = meta.get(f"{arch}.{key}")
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    heads = positive("attention.head_count") if arch else None
    if not heads:
        return None
    key_length = positive("attention.key_length") or (info.embedding_length or 0) // heads
    if not key_length:
        return None
    return key_length, positive("attention.value_length") or key_length


def kv_cache(info: GGUFInfo, ctx_size: int, n_parallel: int = 1, bytes_per_value: float = KV_F16_BYTES) -> int:
    """Lower bound of the KV cache bytes for ``ctx_size`` tokens; 0 where attention is not plain
    (recurrent or hybrid layers, compressed MLA caches, per-layer head counts)."""
    arch, meta = info.architecture, info.metadata
    if not arch or not info.block_count:
        return 0

    def value(key: str) -> Any:
        return meta.get(f"{arch}.{key}")

    def positive(key: str) -> int | None:
        v = value(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    unusual = (f"{arch}.ssm.", f"{arch}.wkv.", f"{arch}.shortconv.", f"{arch}.attention.kv_lora_rank")
    if any(key.startswith(unusual) for key in meta):
        return 0
    heads = positive("attention.head_count")
    kv_heads = positive("attention.head_count_kv") if value("attention.head_count_kv") is not None else heads
    sizes = head_sizes(info)
    if not heads or not kv_heads or sizes is None:
        return 0
    key_length, value_length = sizes
    tokens = ctx_size
    if info.context_length:
        tokens = min(tokens, n_parallel * info.context_length)  # llama-server caps each slot at n_ctx_train
    window = positive("attention.sliding_window")
    if window:
        tokens = min(tokens, window)  # as if every layer were a sliding-window layer
    return int(info.block_count * tokens * kv_heads * (key_length + value_length) * bytes_per_value)


def gpus_in_use(report: gpu.GPUReport, settings: ServerSettings) -> tuple[gpu.GPUInfo, ...]:
    """The visible GPUs llama-server will spread the model over."""
    gpus = report.gpus
    if settings.split_mode == "none":
        main = settings.main_gpu or 0
        return gpus[main : main + 1]
    if settings.tensor_split:
        return tuple(g for g, share in zip(gpus, settings.tensor_split) if share > 0)
    return gpus


def check_memory(
    info: GGUFInfo, settings: ServerSettings, build_info: dict[str, Any], report: gpu.GPUReport | None = None
) -> MemoryEstimate | None:
    """Raise :class:`InsufficientMemoryError` when a fully offloaded model clearly cannot fit in the
    free memory of the GPUs it would use. Returns the estimate, or None where nothing was checked
    (not a CUDA build, partial or automatic offload, RPC workers, or no GPU visible)."""
    extra = set(settings.extra_args)
    if build_info.get("backend") != "cuda" or settings.rpc or extra & _PLACEMENT_FLAGS:
        return None
    if not info.block_count or settings.gpu_layers <= info.block_count:  # -1 is "auto"; <= n_layer leaves some on CPU
        return None
    gpus = gpus_in_use(report or gpu.detect(), settings)
    if not gpus:
        return None  # gpu.check_compatibility reports a missing GPU
    ctx_size = settings.ctx_size or info.context_length or 4096  # None: llama-server uses the model's context
    kv_bytes = (
        0
        if extra & _KV_ON_CPU_FLAGS
        else kv_cache(
            info,
            ctx_size,
            settings.n_parallel,
            KV_QUANTIZED_MIN_BYTES if extra & _KV_TYPE_FLAGS else KV_F16_BYTES,
        )
    )
    estimate = MemoryEstimate(weights_on_gpu(info), kv_bytes, sum(g.memory_free_mib for g in gpus) * MIB, gpus)
    if estimate.fits:
        return estimate
    free = ", ".join(f"GPU {g.index} ({g.name}) {g.memory_free_mib * MIB / GIB:.1f}" for g in gpus)
    raise InsufficientMemoryError(
        f"{settings.model_path.name} does not fit in GPU memory: with all layers offloaded it needs at least "
        f"{estimate.need_bytes / GIB:.1f} GiB (weights {estimate.weights_bytes / GIB:.1f} GiB + KV cache for "
        f"ctx_size={ctx_size} {estimate.kv_cache_bytes / GIB:.1f} GiB, before compute buffers), "
        f"but only {estimate.free_bytes / GIB:.1f} GiB is free ({free} GiB). Offload fewer layers (gpu_layers=N, or "
        "gpu_layers=-1 to let llama.cpp fit what it can), use a smaller quantization (e.g. Q4_K_M instead of "
        "Q8_0), lower ctx_size, or free the GPU memory other processes hold (see nvidia-smi)."
    )
