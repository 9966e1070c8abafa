"""What NVIDIA GPUs exist, and whether the installed binaries can run on them.

Reads the driver's management library NVML (``libnvidia-ml.so.1``, through ctypes: no child
process), or ``nvidia-smi`` where NVML cannot be loaded or fails. NVML is not CUDA: no CUDA context
is created (tests/test_gpu_nvml.py checks it on a GPU machine). A CUDA build records its
architectures in build-info.json
(``"90-real"`` = SASS for sm_90, ``"90-virtual"`` = PTX that the driver JIT-compiles for sm_90
and newer); :func:`check_compatibility` compares them with each visible GPU's compute capability
and the driver's CUDA version.
"""

from __future__ import annotations

import ctypes
import logging
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, replace
from typing import Any

from llcuda import config
from llcuda.errors import GPUCompatibilityError

log = logging.getLogger(__name__)

NVIDIA_SMI_TIMEOUT_S = 15.0
NVML_LIBRARY = "libnvidia-ml.so.1"
_NVML_BUFFER = 96  # NVML_DEVICE_NAME_V2_BUFFER_SIZE and NVML_DEVICE_UUID_V2_BUFFER_SIZE; the driver version needs 80
_MIB = 1 << 20
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
    source: str | None = None  # what answered: "nvml" or "nvidia-smi"; None if neither did


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


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


_c_uint_p, _c_int_p, _handle_p = (
    ctypes.POINTER(ctypes.c_uint),
    ctypes.POINTER(ctypes.c_int),
    ctypes.POINTER(ctypes.c_void_p),
)
# name: argtypes (every NVML function returns an nvmlReturn_t, 0 = NVML_SUCCESS)
_NVML_FUNCTIONS: dict[str, list[Any]] = {
    "nvmlInit_v2": [],
    "nvmlShutdown": [],
    "nvmlDeviceGetCount_v2": [_c_uint_p],
    "nvmlDeviceGetHandleByIndex_v2": [ctypes.c_uint, _handle_p],
    "nvmlDeviceGetName": [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint],
    "nvmlDeviceGetUUID": [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint],
    "nvmlDeviceGetCudaComputeCapability": [ctypes.c_void_p, _c_int_p, _c_int_p],
    "nvmlDeviceGetMemoryInfo": [ctypes.c_void_p, ctypes.POINTER(_NvmlMemory)],
    "nvmlSystemGetDriverVersion": [ctypes.c_char_p, ctypes.c_uint],
    "nvmlSystemGetCudaDriverVersion_v2": [_c_int_p],
}
_nvml_lock = threading.Lock()
_nvml_lib: Any = None


class NvmlError(RuntimeError):
    """An NVML call that did not return NVML_SUCCESS."""


def _nvml() -> Any:
    """libnvidia-ml with the signatures above declared (opened once; raises OSError without a driver)."""
    global _nvml_lib
    with _nvml_lock:
        if _nvml_lib is None:
            lib = ctypes.CDLL(NVML_LIBRARY)
            for name, argtypes in _NVML_FUNCTIONS.items():
                func = getattr(lib, name)
                func.restype, func.argtypes = ctypes.c_int, argtypes
            lib.nvmlErrorString.restype, lib.nvmlErrorString.argtypes = ctypes.c_char_p, [ctypes.c_int]
            _nvml_lib = lib
        return _nvml_lib


def _call(lib: Any, name: str, *args: Any) -> None:
    code = getattr(lib, name)(*args)
    if code != 0:
        raise NvmlError(f"{name} failed: {(lib.nvmlErrorString(code) or b'error').decode()} ({code})")


def _text(lib: Any, name: str, *args: Any, size: int = _NVML_BUFFER) -> str:
    buf = ctypes.create_string_buffer(size)
    _call(lib, name, *args, buf, size)
    return buf.value.decode("utf-8", "replace")


def cuda_version_text(version: int) -> str:
    """NVML's CUDA driver version as nvidia-smi prints it: 12040 -> "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def from_nvml() -> GPUReport:
    """Every GPU the driver knows (CUDA_VISIBLE_DEVICES not applied), read through NVML.

    Raises OSError when libnvidia-ml cannot be loaded, AttributeError when it lacks a function
    (an old driver), NvmlError when a call fails.
    """
    lib = _nvml()
    _call(lib, "nvmlInit_v2")
    try:
        driver = _text(lib, "nvmlSystemGetDriverVersion", size=80)
        cuda = ctypes.c_int()
        _call(lib, "nvmlSystemGetCudaDriverVersion_v2", ctypes.byref(cuda))
        count = ctypes.c_uint()
        _call(lib, "nvmlDeviceGetCount_v2", ctypes.byref(count))
        gpus = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            _call(lib, "nvmlDeviceGetHandleByIndex_v2", index, ctypes.byref(handle))
            major, minor, memory = ctypes.c_int(), ctypes.c_int(), _NvmlMemory()
            _call(lib, "nvmlDeviceGetCudaComputeCapability", handle, ctypes.byref(major), ctypes.byref(minor))
            _call(lib, "nvmlDeviceGetMemoryInfo", handle, ctypes.byref(memory))
            gpus.append(
                GPUInfo(
                    index=index,
                    uuid=_text(lib, "nvmlDeviceGetUUID", handle),
                    name=_text(lib, "nvmlDeviceGetName", handle),
                    compute_capability=(major.value, minor.value),
                    memory_total_mib=memory.total // _MIB,
                    memory_free_mib=memory.free // _MIB,
                    driver_version=driver,
                )
            )
    finally:
        lib.nvmlShutdown()
    return GPUReport(tuple(gpus), cuda_version_text(cuda.value), source="nvml")


class _NvmlProcessInfo(ctypes.Structure):
    # nvmlProcessInfo_t, as nvmlDeviceGetComputeRunningProcesses_v3 fills it
    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


_NVML_ERROR_INSUFFICIENT_SIZE = 7
_NVML_VALUE_NOT_AVAILABLE = (1 << 64) - 1  # usedGpuMemory the driver does not report (containers, some MIG)


def process_memory_mib() -> dict[int, int]:
    """GPU memory each compute process uses, in MiB summed over all GPUs, as NVML reports it.

    Empty without NVML (or with a driver older than ``nvmlDeviceGetComputeRunningProcesses_v3``);
    a process whose usage the driver does not report is left out. The pids are those of the
    driver's pid namespace: inside a container they may not match the container's own pids.
    """
    try:
        lib = _nvml()
        func = lib.nvmlDeviceGetComputeRunningProcesses_v3
    except (OSError, AttributeError) as exc:
        log.debug("no per-process GPU memory from NVML: %s", exc)
        return {}
    # nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
    #                                                       nvmlProcessInfo_t *infos);
    func.restype, func.argtypes = ctypes.c_int, [ctypes.c_void_p, _c_uint_p, ctypes.POINTER(_NvmlProcessInfo)]
    used: dict[int, int] = {}
    try:
        _call(lib, "nvmlInit_v2")
    except NvmlError as exc:
        log.debug("no per-process GPU memory from NVML: %s", exc)
        return {}
    try:
        count = ctypes.c_uint()
        _call(lib, "nvmlDeviceGetCount_v2", ctypes.byref(count))
        for index in range(count.value):
            handle = ctypes.c_void_p()
            _call(lib, "nvmlDeviceGetHandleByIndex_v2", index, ctypes.byref(handle))
            for info in _compute_processes(lib, func, handle):
                if info.usedGpuMemory != _NVML_VALUE_NOT_AVAILABLE:
                    used[info.pid] = used.get(info.pid, 0) + info.usedGpuMemory
    except NvmlError as exc:
        log.debug("no per-process GPU memory from NVML: %s", exc)
        return {}
    finally:
        lib.nvmlShutdown()
    return {pid: size // _MIB for pid, size in used.items()}


def _compute_processes(lib: Any, func: Any, handle: ctypes.c_void_p) -> list[_NvmlProcessInfo]:
    size = 16
    for _ in range(4):  # the list may grow between the calls
        infos = (_NvmlProcessInfo * size)()
        count = ctypes.c_uint(size)
        code = func(handle, ctypes.byref(count), infos)
        if code == 0:
            return list(infos[: count.value])
        if code != _NVML_ERROR_INSUFFICIENT_SIZE:
            raise NvmlError(
                f"nvmlDeviceGetComputeRunningProcesses_v3 failed: "
                f"{(lib.nvmlErrorString(code) or b'error').decode()} ({code})"
            )
        size = count.value * 2 + 8
    return []


def from_nvidia_smi() -> GPUReport:
    """Every GPU ``nvidia-smi`` lists (CUDA_VISIBLE_DEVICES not applied): one query, one header for CUDA."""
    query = _run(["nvidia-smi", f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"])
    if query is None:
        return GPUReport((), None, error="nvidia-smi not found or failed: no NVIDIA driver visible")
    header = _run(["nvidia-smi"]) or ""
    match = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    return GPUReport(tuple(parse_query(query)), match.group(1) if match else None, source="nvidia-smi")


def detect() -> GPUReport:
    """The GPUs this process may use (CUDA_VISIBLE_DEVICES applied): NVML, else nvidia-smi.

    ``source`` says which answered ("nvml" or "nvidia-smi"; None when neither did, with ``error``).
    """
    try:
        report = from_nvml()
    except (OSError, AttributeError, NvmlError) as exc:  # no driver library, an old one, or a call failed
        log.debug("NVML unavailable (%s); reading nvidia-smi", exc)
        report = from_nvidia_smi()
        if report.source is None:
            report = replace(report, error=f"{report.error} (NVML: {exc})")
    return replace(report, gpus=tuple(visible(list(report.gpus), config.cuda_visible_devices())))


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
