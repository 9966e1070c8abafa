"""The GPU-memory check before llama-server starts (llcuda/vram.py), on data: GGUF headers of real
model shapes and nvidia-smi reports of real GPUs. No GPU is needed; the decision is pure logic."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gguf
import pytest

from llcuda import GPUCompatibilityError, InsufficientMemoryError
from llcuda.models import read_gguf_info
from llcuda.models.gguf import GGUFInfo
from llcuda.processes.llama_server import ServerSettings
from llcuda.system.gpu import GPUInfo, GPUReport
from llcuda.system.memory import GIB, check_memory, kv_cache, weights_on_gpu

CUDA = {"backend": "cuda", "cuda_archs": ["90-real"], "cuda_version": "12.4"}


def _info(
    arch: str,
    *,
    data_size: int,
    vocab: int,
    n_embd: int,
    n_layer: int,
    heads: int,
    kv_heads: int,
    context: int,
    file_type: int = 15,
    **extra: object,
) -> GGUFInfo:
    meta = {
        "general.architecture": arch,
        f"{arch}.attention.head_count": heads,
        f"{arch}.attention.head_count_kv": kv_heads,
        **extra,
    }
    return GGUFInfo(
        path=None,
        file_size=data_size + 10_000_000,
        version=3,
        tensor_count=10 * n_layer,
        kv_count=len(meta),
        alignment=32,
        data_offset=10_000_000,
        data_size=data_size,
        parameter_count=0,
        architecture=arch,
        name=arch,
        general_type="model",
        file_type=file_type,
        file_type_name=None,
        context_length=context,
        embedding_length=n_embd,
        block_count=n_layer,
        vocab_size=vocab,
        metadata=meta,
    )


# Shapes of real GGUF files (sizes rounded): Llama-3.1-70B and Llama-3.2-1B in Q4_K_M, Gemma-3-4B.
LLAMA_70B = _info(
    "llama",
    data_size=42_500_000_000,
    vocab=128_256,
    n_embd=8192,
    n_layer=80,
    heads=64,
    kv_heads=8,
    context=131_072,
)
LLAMA_1B = _info(
    "llama",
    data_size=800_000_000,
    vocab=128_256,
    n_embd=2048,
    n_layer=16,
    heads=32,
    kv_heads=8,
    context=131_072,
)
GEMMA3_4B = _info(
    "gemma3",
    data_size=2_500_000_000,
    vocab=262_208,
    n_embd=2560,
    n_layer=34,
    heads=8,
    kv_heads=4,
    context=131_072,
    **{
        "gemma3.attention.key_length": 256,
        "gemma3.attention.value_length": 256,
        "gemma3.attention.sliding_window": 1024,
    },
)


def _gpu(index: int, name: str, free_gib: float, total_gib: float = 80.0) -> GPUInfo:
    return GPUInfo(index, f"GPU-{index}", name, (9, 0), int(total_gib * 1024), int(free_gib * 1024), "550.54")


L4 = _gpu(0, "NVIDIA L4", 22.0, 24.0)
T4_BUSY = _gpu(0, "Tesla T4", 3.5, 16.0)
H100S = GPUReport((_gpu(0, "NVIDIA H100", 79.0), _gpu(1, "NVIDIA H100", 79.0)), "12.4")
TWO_L4 = GPUReport((L4, replace(L4, index=1, uuid="GPU-1")), "12.4")


def _settings(**kwargs: object) -> ServerSettings:
    return ServerSettings(model_path=Path("/models/model.gguf"), **{"ctx_size": 4096, **kwargs})


def test_estimates_of_real_shapes():
    assert weights_on_gpu(LLAMA_70B) == 42_500_000_000 - 128_256 * 8192 * 2
    assert kv_cache(LLAMA_70B, 4096) == 80 * 4096 * 8 * (128 + 128) * 2  # layers x tokens x kv heads x (K+V) x f16
    assert kv_cache(LLAMA_70B, 1 << 20, n_parallel=1) == kv_cache(LLAMA_70B, 131_072), "slots cap at n_ctx_train"
    assert kv_cache(GEMMA3_4B, 32768) == 34 * 1024 * 4 * 512 * 2, "sliding-window layers hold only the window"
    mla = _info(
        "deepseek2",
        data_size=10**9,
        vocab=1000,
        n_embd=1024,
        n_layer=4,
        heads=8,
        kv_heads=8,
        context=4096,
        **{"deepseek2.attention.kv_lora_rank": 512},
    )
    hybrid = _info(
        "jamba",
        data_size=10**9,
        vocab=1000,
        n_embd=1024,
        n_layer=4,
        heads=8,
        kv_heads=8,
        context=4096,
        **{"jamba.ssm.conv_kernel": 4},
    )
    assert kv_cache(mla, 4096) == kv_cache(hybrid, 4096) == 0, "unusual attention: no bound rather than a wrong one"


def test_estimate_is_a_lower_bound_for_a_real_file(tiny_model):
    info = read_gguf_info(tiny_model)
    reader = gguf.GGUFReader(str(tiny_model))
    off_cpu = sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")
    padding = info.alignment * len(reader.tensors)
    assert 0 < weights_on_gpu(info) <= off_cpu + padding
    head_dim = info.embedding_length // info.metadata["llama.attention.head_count"]
    kv_heads = info.metadata["llama.attention.head_count_kv"]
    assert kv_cache(info, 2048) == info.block_count * 2048 * kv_heads * 2 * head_dim * 2


def test_a_model_too_large_for_the_gpu_is_refused_with_sizes_and_fixes():
    with pytest.raises(InsufficientMemoryError) as info:
        check_memory(LLAMA_70B, _settings(), CUDA, GPUReport((L4,), "12.4"))
    message = str(info.value)
    need = (weights_on_gpu(LLAMA_70B) + kv_cache(LLAMA_70B, 4096)) / GIB
    assert f"at least {need:.1f} GiB" in message and "only 22.0 GiB is free" in message
    assert "GPU 0 (NVIDIA L4)" in message and "ctx_size=4096" in message
    assert "gpu_layers=-1" in message and "smaller quantization" in message and "lower ctx_size" in message
    assert isinstance(info.value, MemoryError) and isinstance(info.value, GPUCompatibilityError)


def test_the_kv_cache_alone_can_be_too_much():
    with pytest.raises(InsufficientMemoryError, match="ctx_size=131072"):
        check_memory(LLAMA_1B, _settings(ctx_size=131_072, n_parallel=1), CUDA, GPUReport((T4_BUSY,), "12.4"))
    assert check_memory(LLAMA_1B, _settings(ctx_size=8192, n_parallel=1), CUDA, GPUReport((T4_BUSY,), "12.4"))
    quantized_kv = _settings(ctx_size=131_072, n_parallel=1, extra_args=("-ctk", "q4_0", "-ctv", "q4_0"))
    assert check_memory(LLAMA_1B, quantized_kv, CUDA, GPUReport((T4_BUSY,), "12.4")).fits
    # no ctx_size: llama-server makes the cache as long as the model's trained context
    with pytest.raises(InsufficientMemoryError, match="ctx_size=131072"):
        check_memory(LLAMA_1B, _settings(ctx_size=None, n_parallel=1), CUDA, GPUReport((T4_BUSY,), "12.4"))
    kv_on_cpu = _settings(ctx_size=131_072, n_parallel=1, extra_args=("--no-kv-offload",))
    assert check_memory(LLAMA_1B, kv_on_cpu, CUDA, GPUReport((T4_BUSY,), "12.4")).kv_cache_bytes == 0


def test_the_gpus_in_use_count():
    assert check_memory(LLAMA_70B, _settings(), CUDA, H100S).gpus == H100S.gpus
    assert check_memory(LLAMA_70B, _settings(), CUDA, TWO_L4).fits, "two 24 GB cards hold what one cannot"
    with pytest.raises(InsufficientMemoryError, match="GPU 1"):
        check_memory(LLAMA_70B, _settings(split_mode="none", main_gpu=1), CUDA, TWO_L4)
    with pytest.raises(InsufficientMemoryError):
        check_memory(LLAMA_70B, _settings(tensor_split=(1.0, 0.0)), CUDA, TWO_L4)


@pytest.mark.parametrize(
    "settings, build",
    [
        (_settings(gpu_layers=-1), CUDA),  # "auto": llama.cpp fits the layers to free memory itself
        (_settings(gpu_layers=40), CUDA),  # partial offload: the user chose
        (_settings(), {"backend": "cpu"}),  # a CPU build offloads nothing
        (_settings(rpc=("10.0.0.2:50052",)), CUDA),  # RPC workers add memory this host cannot see
        (_settings(extra_args=("-ot", "exps=CPU")), CUDA),  # tensors overridden to the CPU
    ],
)
def test_no_check_where_the_estimate_does_not_apply(settings, build):
    assert check_memory(LLAMA_70B, settings, build, GPUReport((T4_BUSY,), "12.4")) is None


def test_no_gpu_is_left_to_the_compatibility_check():
    assert check_memory(LLAMA_70B, _settings(), CUDA, GPUReport((), None, error="no driver")) is None
