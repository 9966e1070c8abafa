"""Pure logic: metrics, GPU/arch matching, nvidia-smi parsing, config, the import contract."""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from llcuda import ConfigError, GPUCompatibilityError, config
from llcuda.metrics import MetricsRecorder, busy_seconds, percentile
from llcuda.system import gpu


def test_percentile_nearest_rank():
    values = sorted(float(x) for x in range(1, 101))
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) == 0.0
    assert percentile([7.0], 99) == 7.0


def test_busy_seconds_counts_overlap_once():
    assert busy_seconds([(0, 2), (1, 3), (5, 6)]) == 4
    assert busy_seconds([]) == 0


def test_recorder_throughput_uses_wall_time():
    rec = MetricsRecorder()
    rec.record(0.0, 1.0, 100, 100.0)
    rec.record(0.0, 1.0, 100, 100.0)
    rec.record_failure()
    snap = rec.snapshot()
    assert snap.requests == 3 and snap.failures == 1
    assert snap.throughput_tokens_per_sec == 200.0
    assert snap.tokens_per_sec_mean == 100.0


SMI = """0, GPU-aaaa, NVIDIA H100 80GB HBM3, 9.0, 81559, 80000, 550.54.15
1, GPU-bbbb, Tesla T4, 7.5, 15360, 15000, 550.54.15
"""


def test_parse_nvidia_smi_and_visible_devices():
    gpus = gpu.parse_query(SMI)
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3", "Tesla T4"]
    assert gpus[0].compute_capability == (9, 0) and gpus[1].sm == 75
    assert [g.index for g in gpu.visible(gpus, "1")] == [1]
    assert [g.index for g in gpu.visible(gpus, "GPU-bbbb,0")] == [1, 0]
    assert gpu.visible(gpus, "") == []
    assert gpu.visible(gpus, None) == gpus


def _nvml_loads() -> bool:
    try:
        ctypes.CDLL(gpu.NVML_LIBRARY)
    except OSError:
        return False
    return True


def _fake_nvidia_smi(folder: Path) -> Path:
    """An ``nvidia-smi`` that answers the query with SMI and prints a header (the fallback's two calls)."""
    folder.mkdir()
    smi = folder / "nvidia-smi"
    smi.write_text(
        '#!/bin/sh\nif [ -n "$1" ]; then printf \'%s\' "$SMI_QUERY"; else '
        'echo "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |"; fi\n'
    )
    smi.chmod(0o755)
    return folder


@pytest.mark.skipif(_nvml_loads(), reason="libnvidia-ml loads here: NVML answers, nothing falls back")
def test_detect_falls_back_to_nvidia_smi_without_nvml(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(_fake_nvidia_smi(tmp_path / "bin")))
    monkeypatch.setenv("SMI_QUERY", SMI)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with caplog.at_level(logging.DEBUG, logger="llcuda.system.gpu"):
        report = gpu.detect()
    assert report.source == "nvidia-smi" and report.error is None
    assert [g.name for g in report.gpus] == ["NVIDIA H100 80GB HBM3", "Tesla T4"]
    assert report.driver_cuda_version == "12.4" and report.gpus[0].driver_version == "550.54.15"
    assert any("NVML unavailable" in r.getMessage() and "reading nvidia-smi" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")  # applied to whichever source answered
    assert [g.uuid for g in gpu.detect().gpus] == ["GPU-bbbb"]


@pytest.mark.skipif(_nvml_loads(), reason="libnvidia-ml loads here")
def test_detect_without_nvml_or_nvidia_smi_says_why(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    report = gpu.detect()
    assert report.gpus == () and report.source is None and report.driver_cuda_version is None
    assert report.error and "nvidia-smi not found" in report.error and f"NVML: {gpu.NVML_LIBRARY}" in report.error


def test_nvml_cuda_version_reads_like_nvidia_smi():
    assert gpu.cuda_version_text(12040) == "12.4"
    assert gpu.cuda_version_text(12080) == "12.8"
    assert gpu.cuda_version_text(13000) == "13.0"
    assert gpu.cuda_version_text(11020) == "11.2"


@pytest.mark.parametrize(
    "archs,sm,ok",
    [
        (["90-real"], 90, True),
        (["80-real"], 86, True),  # same major, newer minor runs the SASS
        (["86-real"], 80, False),
        (["80-real"], 90, False),  # SASS does not cross majors
        (["80-virtual"], 90, True),  # PTX is JIT-compiled
        (["90-virtual"], 89, False),
        (["75-real", "80-real", "86-real", "89-real", "90-real", "90-virtual"], 120, True),
        (["90"], 90, True),
    ],
)
def test_arch_supports(archs, sm, ok):
    assert gpu.arch_supports(archs, sm) is ok


def _report(cc=(9, 0), cuda="12.4"):
    g = gpu.GPUInfo(0, "GPU-x", "Test GPU", cc, 1000, 900, "550")
    return gpu.GPUReport((g,), cuda)


def test_compatibility_checks():
    cuda_build = {"backend": "cuda", "cuda_archs": ["90-real"], "cuda_version": "12.4"}
    assert gpu.check_compatibility({"backend": "cpu"}, gpu.GPUReport((), None)) == []
    assert gpu.check_compatibility(cuda_build, _report()) == []
    with pytest.raises(GPUCompatibilityError, match="compute capability 7.5"):
        gpu.check_compatibility(cuda_build, _report(cc=(7, 5)))
    with pytest.raises(GPUCompatibilityError, match="no usable NVIDIA GPU"):
        gpu.check_compatibility(cuda_build, gpu.GPUReport((), None, error="nvidia-smi not found"))
    with pytest.raises(GPUCompatibilityError, match="Update the NVIDIA driver"):
        gpu.check_compatibility(dict(cuda_build, cuda_version="13.0"), _report(cuda="12.8"))
    assert gpu.check_compatibility(dict(cuda_build, cuda_version="12.8"), _report(cuda="12.4"))


def test_config_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("LLCUDA_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config.home_dir() == tmp_path / "xdg" / "llcuda"
    monkeypatch.setenv("LLCUDA_HOME", str(tmp_path / "home"))
    assert config.models_dir() == tmp_path / "home" / "models"
    monkeypatch.setenv("LLCUDA_REQUEST_TIMEOUT", "5")
    assert config.request_timeout() == 5.0
    assert config.request_timeout(7.0) == 7.0
    monkeypatch.setenv("LLCUDA_REQUEST_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="LLCUDA_REQUEST_TIMEOUT"):
        config.request_timeout()
    monkeypatch.setenv("LLCUDA_OFFLINE", "maybe")
    with pytest.raises(ConfigError):
        config.offline()
    monkeypatch.setenv("LLCUDA_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert config.offline() is True
    assert config.offline(False) is False


def test_load_mode_precedence_and_values(monkeypatch):
    monkeypatch.delenv("LLCUDA_LOAD_MODE", raising=False)
    assert config.load_mode() == "auto"
    assert [config.load_mode(m) for m in ("auto", "mmap", "none", "direct_io", "Direct-IO")] == [
        "auto",
        "mmap",
        "none",
        "direct_io",
        "direct_io",
    ]
    monkeypatch.setenv("LLCUDA_LOAD_MODE", "none")
    assert config.load_mode() == "none"
    assert config.load_mode("mmap") == "mmap"  # the argument wins
    with pytest.raises(ConfigError, match="^load_mode='mlock' must be one of 'auto', 'mmap', 'none', 'direct_io'"):
        config.load_mode("mlock")
    monkeypatch.setenv("LLCUDA_LOAD_MODE", "fast")
    with pytest.raises(ConfigError, match="^LLCUDA_LOAD_MODE='fast' must be one of"):
        config.load_mode()
    from llcuda.libllama.bindings import LOAD_MODES
    from llcuda.processes.llama_server import SERVER_LOAD_MODES

    assert set(config.LOAD_MODES) == set(LOAD_MODES) == set(SERVER_LOAD_MODES)


def test_import_is_lazy_and_side_effect_free(tmp_path):
    code = (
        "import sys, llcuda; "
        "heavy = [m for m in ('requests', 'llcuda.engine', 'llcuda.processes.llama_server', 'llcuda.models', "
        "'starlette', 'uvicorn') if m in sys.modules]; "
        "print(heavy)"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LLCUDA_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert not (tmp_path / "home").exists(), "import must not create the cache folder"


def test_every_public_name_resolves():
    import llcuda
    import llcuda.errors

    for name in llcuda.__all__:
        assert getattr(llcuda, name) is not None, name
    errors = set(llcuda.errors.__all__)
    assert errors <= set(llcuda.__all__)
    assert errors == {
        name
        for name, value in vars(llcuda.errors).items()
        if isinstance(value, type) and issubclass(value, llcuda.errors.LlcudaError)
    }


def test_physical_cores_count_each_core_once_within_the_affinity():
    import os

    from llcuda.system.cpu import physical_cores

    allowed = os.sched_getaffinity(0)
    siblings = {open(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read().strip() for c in allowed}
    assert physical_cores() == len(siblings)
    assert 1 <= physical_cores() <= len(allowed)
