"""gpu.detect() through NVML against nvidia-smi, on a machine with an NVIDIA GPU.

Marked ``gpu``: skipped where no GPU is visible (conftest.py). NVML is never imitated here; without
a driver the fallback to nvidia-smi is tested in test_units.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from llcuda.system import gpu

pytestmark = pytest.mark.gpu
FREE_TOLERANCE_MIB = 512  # other processes may allocate between the two reads


def test_detect_reads_nvml():
    report = gpu.detect()
    assert report.source == "nvml", report.error
    assert report.gpus and report.driver_cuda_version


def test_nvml_reports_what_nvidia_smi_reports():
    nvml, smi = gpu.from_nvml(), gpu.from_nvidia_smi()
    assert (nvml.source, smi.source) == ("nvml", "nvidia-smi"), smi.error
    assert nvml.driver_cuda_version == smi.driver_cuda_version
    assert [(g.index, g.uuid, g.name, g.compute_capability, g.driver_version) for g in nvml.gpus] == [
        (g.index, g.uuid, g.name, g.compute_capability, g.driver_version) for g in smi.gpus
    ]
    for ours, theirs in zip(nvml.gpus, smi.gpus):
        assert abs(ours.memory_total_mib - theirs.memory_total_mib) <= 1, (ours, theirs)
        assert abs(ours.memory_free_mib - theirs.memory_free_mib) <= FREE_TOLERANCE_MIB, (ours, theirs)


def test_detection_creates_no_cuda_context():
    # A CUDA context costs GPU memory and shows the process in nvidia-smi's compute apps; detection must not
    # make one. (Whether libnvidia-ml maps libcuda.so is the driver's business: on the H100 image it did.)
    code = (
        "import subprocess, os; from llcuda import gpu; r = gpu.detect(); "
        "apps = subprocess.run(['nvidia-smi', '--query-compute-apps=pid', '--format=csv,noheader'], "
        "capture_output=True, text=True, check=True).stdout.split(); "
        "print(r.source, str(os.getpid()) in apps, 'libnvidia-ml' in open('/proc/self/maps').read())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["nvml", "False", "True"]
