"""Spreading one model over several devices: split modes, tensor splits, the main GPU.

llama.cpp numbers the devices of a model like this, and ``tensor_split`` and ``main_gpu``
index that list: first every device of every RPC worker (in the order of ``rpc``), then this
host's GPUs in CUDA order (``CUDA_VISIBLE_DEVICES`` applied; llcuda starts llama.cpp with
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that order matches ``llcuda doctor`` and nvidia-smi).

Without ``tensor_split`` llama.cpp splits layers in proportion to each device's free memory,
measured when it loads the model; llcuda leaves that to llama.cpp (it also sees the RPC
workers' memory, which llcuda cannot) and only reports the split it expects, computed by
:func:`auto_tensor_split` from nvidia-smi.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from llcuda.errors import ConfigError
from llcuda.system.gpu import GPUInfo, GPUReport

log = logging.getLogger(__name__)

SPLIT_MODES = ("none", "layer", "row", "tensor")
MAX_TENSOR_SPLIT = 15  # llama.cpp refuses 16 or more entries (llama_max_devices() == 16)

_MODE_HELP = (
    "'layer' (llama.cpp's default: whole layers per device, pipelined), 'row' (each weight split by rows over "
    "this host's GPUs; CUDA only), 'tensor' (weights and KV split over devices, experimental in llama.cpp) or "
    "'none' (one GPU only: main_gpu)"
)


def auto_tensor_split(gpus: Sequence[GPUInfo]) -> tuple[float, ...]:
    """Proportions of free memory, one per GPU, summing to 1 (rounded to 3 decimals).

    This is llama.cpp's own default rule; pass the result as ``tensor_split`` to pin the split
    measured now instead of at load time. Equal shares when no GPU reports free memory.
    """
    if not gpus:
        return ()
    free = [max(0, g.memory_free_mib) for g in gpus]
    total = sum(free)
    if total == 0:
        return tuple(round(1.0 / len(gpus), 3) for _ in gpus)
    return tuple(round(f / total, 3) for f in free)


def describe(gpus: Sequence[GPUInfo], tensor_split: Sequence[float] = ()) -> str:
    """``"GPU0 NVIDIA H100 (80%), GPU1 NVIDIA H100 (20%)"`` for a log line."""
    shares = tuple(tensor_split) or auto_tensor_split(gpus)
    total = sum(shares) or 1.0
    return ", ".join(f"GPU{g.index} {g.name} ({100 * s / total:.0f}%)" for g, s in zip(gpus, shares))


def validate(
    split_mode: str | None,
    tensor_split: Sequence[float] | None,
    main_gpu: int | None,
    *,
    rpc: Sequence[str] = (),
    local_gpus: int | None = None,
) -> tuple[str | None, tuple[float, ...], int | None]:
    """Check the multi-device arguments; return them normalized, or raise ConfigError saying what to change.

    ``local_gpus`` is the number of GPUs llama.cpp will see on this host (0 for a CPU build,
    None when unknown: only the checks that need no device count are made). Each RPC worker
    exposes at least one device, possibly several, so with ``rpc`` only lower bounds are checked.
    """
    if split_mode is not None and split_mode not in SPLIT_MODES:
        raise ConfigError(f"split_mode={split_mode!r} must be one of {_MODE_HELP}.")
    if split_mode == "row" and rpc:
        raise ConfigError(
            "split_mode='row' cannot use RPC workers (llama.cpp: 'device RPC0 does not support split buffers'); "
            "use split_mode='layer' (the default) with rpc, or drop rpc."
        )
    shares = _check_tensor_split(tensor_split)
    if main_gpu is not None and (isinstance(main_gpu, bool) or not isinstance(main_gpu, int) or main_gpu < 0):
        raise ConfigError(f"main_gpu={main_gpu!r} must be a device index: 0, 1, ...")
    if local_gpus is None:
        return split_mode, shares, main_gpu
    order = "the RPC workers' devices first (in the order of rpc), then this host's GPUs"
    if rpc:
        least = len(rpc) + local_gpus
        if shares and len(shares) < least:
            raise ConfigError(
                f"tensor_split has {len(shares)} entries but there are at least {least} devices ({len(rpc)} RPC "
                f"worker(s), {local_gpus} local GPU(s)); give one proportion per device, {order}."
            )
    elif local_gpus == 0:
        pass  # a CPU build without workers: llama.cpp ignores these (and says so in its log)
    else:
        hint = f"{local_gpus} GPU(s) are visible (CUDA_VISIBLE_DEVICES applied; see `llcuda doctor`)"
        if shares and len(shares) != local_gpus:
            example = ", ".join(["1"] * local_gpus)
            raise ConfigError(
                f"tensor_split has {len(shares)} entries but {hint}; give one proportion per GPU, e.g. "
                f"[{example}], or choose GPUs with CUDA_VISIBLE_DEVICES."
            )
        if main_gpu is not None and main_gpu >= local_gpus:
            raise ConfigError(f"main_gpu={main_gpu} is out of range: {hint}, numbered from 0.")
    return split_mode, shares, main_gpu


def _check_tensor_split(tensor_split: Sequence[float] | None) -> tuple[float, ...]:
    if tensor_split is None:
        return ()
    if isinstance(tensor_split, str):
        raise ConfigError(f"tensor_split={tensor_split!r} must be a list of numbers such as [3, 1], not a string.")
    values: list[Any] = list(tensor_split)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"tensor_split={values!r}: every entry must be a finite number >= 0.")
    if not values:
        return ()
    if len(values) > MAX_TENSOR_SPLIT:
        raise ConfigError(f"tensor_split has {len(values)} entries; llama.cpp takes at most {MAX_TENSOR_SPLIT}.")
    if sum(values) <= 0:
        raise ConfigError("tensor_split is all zeros; leave it out for the automatic split by free memory.")
    return tuple(float(v) for v in values)


def prepare(
    build_info: dict[str, Any],
    split_mode: str | None,
    tensor_split: Sequence[float] | None,
    main_gpu: int | None,
    rpc: Sequence[str] = (),
    report: GPUReport | None = None,
) -> tuple[str | None, tuple[float, ...], int | None]:
    """:func:`validate` against the GPUs these binaries will see, and log the split llama.cpp will make.

    ``report``: a detection the caller already made (one detection serves every check of a load).
    """
    from llcuda.system.gpu import detect  # at call time: tests replace it

    backend = build_info.get("backend")
    gpus = (report or detect()).gpus if backend == "cuda" else ()
    local = len(gpus) if backend == "cuda" else 0 if backend == "cpu" else None
    split_mode, shares, main_gpu = validate(split_mode, tensor_split, main_gpu, rpc=rpc, local_gpus=local)
    if local == 0 and not rpc and (split_mode or shares or main_gpu is not None):
        log.warning("split_mode, tensor_split and main_gpu have no effect with a CPU build and no rpc workers")
    elif rpc:
        log.info(
            "llama.cpp splits layers over %d RPC worker(s) %s%s",
            len(rpc),
            ", ".join(rpc),
            f" and {local} local GPU(s)" if local else "",
        )
    elif len(gpus) > 1 and split_mode != "none":
        how = "as tensor_split says" if shares else "in proportion to free memory (llama.cpp's default)"
        log.info("llama.cpp splits the model over %d GPUs %s: %s", len(gpus), how, describe(gpus, shares))
    return split_mode, shares, main_gpu
