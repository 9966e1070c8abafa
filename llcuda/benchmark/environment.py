"""Where a run happened: device, driver, CUDA, the llama.cpp build, llcuda, the model; and the folder name."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llcuda.system.binaries import Binaries


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def slug(text: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``: lower case, other characters as ``-``."""
    text = re.sub(r"\((r|tm|c)\)", " ", text, flags=re.IGNORECASE)
    text = re.sub(r"\bcpu\b.*@.*$", "", text, flags=re.IGNORECASE)  # "... CPU @ 2.10GHz"
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def model_facts(path: Path, spec: str) -> dict[str, Any]:
    from llcuda.models import read_gguf_info

    info = read_gguf_info(path)
    return {
        "spec": spec,
        "path": str(path),
        "name": info.name or path.stem,
        "file": path.name,
        "bytes": info.file_size,
        "architecture": info.architecture,
        "parameters": info.parameter_count,
        "file_type": info.file_type_name,
        "context_length": info.context_length,
        "embedding_length": info.embedding_length,
        "layers": info.block_count,
        "vocab_size": info.vocab_size,
    }


def collect(binaries: Binaries, model: dict[str, Any]) -> dict[str, Any]:
    """The environment record of a run; ``device`` is what the run's folder is named after."""
    import llcuda
    from llcuda.system.gpu import detect

    report = detect()
    gpus = [g.as_dict() for g in report.gpus]
    build = dict(binaries.build_info)
    on_gpu = bool(gpus) and build.get("backend", "cuda") != "cpu"
    cpu = cpu_model()
    if on_gpu:
        names = {g["name"] for g in gpus}
        device = " + ".join(sorted(names)) + (f" x{len(gpus)}" if len(gpus) > 1 else "")
        device_slug = slug(gpus[0]["name"]) + (f"-x{len(gpus)}" if len(gpus) > 1 else "")
    else:
        device, device_slug = f"CPU: {cpu}", f"cpu-{slug(cpu)}"
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device,
        "device_slug": device_slug,
        "on_gpu": on_gpu,
        "gpus": gpus,
        "gpu_source": report.source,
        "gpu_error": report.error,
        "driver_version": gpus[0]["driver_version"] if gpus else None,
        "driver_cuda_version": report.driver_cuda_version,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "build_info": build,
        "binaries": {"bin_dir": str(binaries.bin_dir), "source": binaries.source},
        "llcuda_version": str(llcuda.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "model": model,
    }
