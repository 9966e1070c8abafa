"""``llcuda doctor``: what is installed, what GPUs exist, and whether they fit together."""

from __future__ import annotations

import platform
from typing import Any

from llcuda.errors import BinaryNotFoundError, BuildMismatchError, GPUCompatibilityError, LlcudaError
from llcuda.system import binaries as bootstrap
from llcuda.system import gpu
from llcuda.system.binaries import Binaries


def check_inprocess(binaries: Binaries) -> dict[str, Any]:
    """Whether libllama loads in this process (``backend="inprocess"``): ``loads``, and ``library`` or ``error``."""
    from llcuda.libllama.bindings import load_library

    try:
        load_library(binaries)
    except (LlcudaError, OSError, AttributeError) as exc:  # AttributeError: a libllama without a function llcuda uses
        return {"loads": False, "error": str(exc)}
    return {"loads": True, "library": f"{binaries.lib_dir}/libllama.so"}


def collect() -> dict[str, Any]:
    """A JSON-ready report. ``ok`` is False when inference cannot work as installed."""
    import llcuda

    problems: list[str] = []
    warnings: list[str] = []
    binaries_report: dict[str, Any]
    build_info: dict[str, Any] = {}
    inprocess: dict[str, Any] = {"loads": False, "error": "no llama.cpp binaries (see binaries.error)"}
    try:
        binaries = bootstrap.find_binaries()
        build_info = dict(binaries.build_info)
        tools = {}
        for name in bootstrap.KNOWN_TOOLS:
            path = binaries.executable(name)
            tools[name] = str(path) if path.is_file() else None
        binaries_report = {
            "found": True,
            "bin_dir": str(binaries.bin_dir),
            "lib_dir": str(binaries.lib_dir) if binaries.lib_dir else None,
            "source": binaries.source,
            "build_info": build_info,
            "tools": tools,
        }
        if not build_info:
            warnings.append(f"no build-info.json next to {binaries.bin_dir}: backend and CUDA archs unknown")
        inprocess = check_inprocess(binaries)
        if not inprocess["loads"]:
            warnings.append(
                f"libllama does not load in-process, so backend='inprocess' cannot work (the server "
                f"backend can): {inprocess['error']}"
            )
    except BinaryNotFoundError as exc:
        binaries_report = {
            "found": False,
            "error": str(exc),
            "searched": [f"{label}: {path}" for label, path in bootstrap.candidate_dirs()],
        }
        if isinstance(exc, BuildMismatchError):
            problems.append(
                f"llama-server is llama.cpp b{exc.found}, llcuda needs b{exc.expected} "
                "(see binaries.error for how to fix it)"
            )
        else:
            problems.append("llama-server not found (see binaries.error for where llcuda looked and how to fix it)")

    report = gpu.detect()
    try:
        warnings.extend(gpu.check_compatibility(build_info, report))
    except GPUCompatibilityError as exc:
        problems.append(str(exc))
    if build_info.get("backend") == "cpu" and report.gpus:
        warnings.append("a GPU is present but these binaries are a CPU build; install the CUDA build for speed")

    try:
        from llcuda.cli.models import cache_summary

        cache: dict[str, Any] = dict(cache_summary())
    except Exception as exc:  # noqa: BLE001 - the cache is informative only
        cache = {"error": str(exc)}

    return {
        "ok": not problems,
        "version": str(llcuda.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "binaries": binaries_report,
        "inprocess": inprocess,
        "gpu": {
            "gpus": [g.as_dict() for g in report.gpus],
            "driver_cuda_version": report.driver_cuda_version,
            "source": report.source,  # "nvml", "nvidia-smi", or None when neither answered
            "error": report.error,
        },
        "cache": cache,
        "problems": problems,
        "warnings": warnings,
    }
