"""What NVIDIA GPUs exist, and whether the installed binaries can run on them.

Reads ``nvidia-smi`` (never loads CUDA into this process). A CUDA build records its
architectures in build-info.json (``"90-real"`` = SASS for sm_90, ``"90-virtual"`` = PTX
that the driver JIT-compiles for sm_90 and newer); :func:`check_compatibility` compares
them with each visible GPU's compute capability and the driver's CUDA version.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from . import config
from .errors import GPUCompatibilityError

log = logging.getLogger(__name__)

NVIDIA_SMI_TIMEOUT_S = 15.0
_QUERY = "index,uuid,name,compute_cap,memory.total,memory.free,driver_version"


@dataclass(frozen=True)
class GPUInfo:
    index: int
    uuid: str
    name: str
    compute_capability: tuple[int, int]
    memory_total_mib: int
    memory_free_mib: int
    driver_version: str

    @property
    def sm(self) -> int:
        return self.compute_capability[0] * 10 + self.compute_capability[1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "compute_capability": f"{self.compute_capability[0]}.{self.compute_capability[1]}",
            "memory_total_mib": self.memory_total_mib,
            "memory_free_mib": self.memory_free_mib,
            "driver_version": self.driver_version,
        }


@dataclass(frozen=True)
class GPUReport:
    gpus: tuple[GPUInfo, ...]
    driver_cuda_version: str | None  # the newest CUDA the driver supports, e.g. "12.4"
    error: str | None = None  # why nothing could be read, if so


def _run(args: list[str]) -> str | None:
    exe = shutil.which(args[0])
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def parse_query(text: str) -> list[GPUInfo]:
    """Parse ``nvidia-smi --query-gpu=<_QUERY> --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 7:
            continue
        try:
            major, minor = (int(x) for x in fields[3].split("."))
            gpus.append(
                GPUInfo(
                    index=int(fields[0]),
                    uuid=fields[1],
                    name=fields[2],
                    compute_capability=(major, minor),
                    memory_total_mib=int(float(fields[4])),
                    memory_free_mib=int(float(fields[5])),
                    driver_version=fields[6],
                )
            )
        except ValueError:
            continue
    return gpus


def visible(gpus: list[GPUInfo], cuda_visible_devices: str | None) -> list[GPUInfo]:
    """Filter by CUDA_VISIBLE_DEVICES (indices or UUIDs), in the order it lists them."""
    if cuda_visible_devices is None:
        return gpus
    chosen = []
    for token in (t.strip() for t in cuda_visible_devices.split(",")):
        if not token:
            continue
        match = [g for g in gpus if str(g.index) == token or g.uuid.startswith(token)]
        if not match:
            break  # CUDA stops at the first invalid entry
        chosen.append(match[0])
    return chosen


def detect() -> GPUReport:
    """The GPUs this process may use (CUDA_VISIBLE_DEVICES applied)."""
    query = _run(["nvidia-smi", f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"])
    if query is None:
        return GPUReport((), None, error="nvidia-smi not found or failed: no NVIDIA driver visible")
    header = _run(["nvidia-smi"]) or ""
    match = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    gpus = visible(parse_query(query), config.cuda_visible_devices())
    return GPUReport(tuple(gpus), match.group(1) if match else None)


def arch_supports(archs: list[str], sm: int) -> bool:
    """Whether a build with CMake CUDA ``archs`` has kernels for a GPU of compute capability ``sm``."""
    for arch in archs:
        match = re.fullmatch(r"(\d+)(?:-(real|virtual))?", str(arch))
        if not match:
            continue
        value, kind = int(match.group(1)), match.group(2)
        if kind in (None, "real") and value // 10 == sm // 10 and value <= sm:
            return True  # SASS runs on the same major, equal or newer minor
        if kind in (None, "virtual") and value <= sm:
            return True  # PTX is JIT-compiled for newer GPUs
    return False


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def check_compatibility(build_info: dict[str, Any], report: GPUReport | None = None) -> list[str]:
    """Raise GPUCompatibilityError if a CUDA build cannot run here; return warnings otherwise."""
    if build_info.get("backend") != "cuda":
        return []
    report = report or detect()
    fix_build = "Install a build that includes it (conda install llcuda picks one) or rebuild with LLCUDA_CUDA_ARCHS."
    if not report.gpus:
        raise GPUCompatibilityError(
            f"This is a CUDA build of llama.cpp but no usable NVIDIA GPU was found ({report.error or 'none visible'}"
            f"; CUDA_VISIBLE_DEVICES={config.cuda_visible_devices()!r}). Install the NVIDIA driver, check "
            "CUDA_VISIBLE_DEVICES, or install the CPU build (conda install 'llcuda-binaries=*=cpu*')."
        )
    archs = [str(a) for a in build_info.get("cuda_archs", [])]
    for gpu in report.gpus:
        if archs and not arch_supports(archs, gpu.sm):
            raise GPUCompatibilityError(
                f"GPU {gpu.index} ({gpu.name}) has compute capability {gpu.compute_capability[0]}."
                f"{gpu.compute_capability[1]} but the binaries hold kernels for {', '.join(archs)} only; "
                f"it would fail with 'no kernel image'. {fix_build}"
            )
    warnings = []
    built = build_info.get("cuda_version") or ""
    if built and report.driver_cuda_version:
        need, have = _version_tuple(str(built)), _version_tuple(report.driver_cuda_version)
        if have and need and have[0] < need[0]:
            raise GPUCompatibilityError(
                f"The binaries were built with CUDA {built} but the driver supports CUDA "
                f"{report.driver_cuda_version} at most. Update the NVIDIA driver, or install binaries built "
                f"for CUDA {report.driver_cuda_version.split('.')[0]}."
            )
        if have < need:
            warnings.append(
                f"driver supports CUDA {report.driver_cuda_version}, binaries built with {built}: "
                "works through CUDA minor-version compatibility, except PTX JIT"
            )
    return warnings
