"""scripts/setup.sh picks the CUDA or CPU build by itself (`--dry-run` prints the build command).

This machine has no NVIDIA GPU, so the GPUs here are stand-in `nvidia-smi` scripts printing what the
real one prints; nvcc likewise (setup.sh only looks for it).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "scripts" / "setup.sh"


def _tool(folder: Path, name: str, script: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\n{script}\n")
    (folder / name).chmod(0o755)


def _nvidia_smi(folder: Path, *caps: str) -> None:
    """An nvidia-smi for GPUs of these compute capabilities (e.g. "9.0")."""
    listing = "\n".join(f"GPU {i}: NVIDIA Test GPU (UUID: GPU-{i:08d})" for i in range(len(caps)))
    _tool(
        folder,
        "nvidia-smi",
        f'case "$*" in\n  -L) printf "%s\\n" "{listing}" ;;\n'
        f'  *compute_cap*) printf "%s\\n" {" ".join(caps)} ;;\n  *) exit 9 ;;\nesac',
    )


def _dry_run(tmp_path: Path, path: list[Path], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LLCUDA_CUDA", "CUDA_HOME"))}
    clean.update(PATH=os.pathsep.join([*map(str, path), "/usr/bin", "/bin"]), **env)
    clean.setdefault("CUDA_HOME", str(tmp_path / "no-cuda"))
    return subprocess.run(
        ["bash", str(SETUP), "--dry-run"], capture_output=True, text=True, env=clean, timeout=60, check=False
    )


@pytest.fixture
def nvcc(tmp_path: Path) -> Path:
    _tool(tmp_path / "cuda" / "bin", "nvcc", "echo 'Cuda compilation tools, release 13.0, V13.0.88'")
    return tmp_path / "cuda" / "bin"


def test_gpu_and_nvcc_build_cuda_for_that_gpu(tmp_path: Path, nvcc: Path) -> None:
    _nvidia_smi(tmp_path / "gpu", "9.0")
    out = _dry_run(tmp_path, [tmp_path / "gpu", nvcc])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "scripts/build_binaries.py --prefix .venv --cuda --archs 90-real"


def test_each_gpu_model_gets_its_arch(tmp_path: Path, nvcc: Path) -> None:
    _nvidia_smi(tmp_path / "gpu", "8.6", "7.5", "8.6")
    out = _dry_run(tmp_path, [tmp_path / "gpu", nvcc])
    assert out.stdout.strip().endswith("--cuda --archs 75-real;86-real"), out.stderr


def test_nvcc_in_cuda_home(tmp_path: Path, nvcc: Path) -> None:
    _nvidia_smi(tmp_path / "gpu", "7.5")
    out = _dry_run(tmp_path, [tmp_path / "gpu"], CUDA_HOME=str(nvcc.parent))
    assert out.stdout.strip().endswith("--cuda --archs 75-real"), out.stderr
    assert str(nvcc / "nvcc") in out.stderr


@pytest.mark.parametrize("has_gpu, has_nvcc", [(False, True), (True, False), (False, False)])
def test_cpu_without_a_gpu_or_nvcc(tmp_path: Path, nvcc: Path, has_gpu: bool, has_nvcc: bool) -> None:
    path = []
    if has_gpu:
        _nvidia_smi(tmp_path / "gpu", "9.0")
        path.append(tmp_path / "gpu")
    if has_nvcc:
        path.append(nvcc)
    out = _dry_run(tmp_path, path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "scripts/build_binaries.py --prefix .venv"


def test_llcuda_cuda_forces_either_way(tmp_path: Path, nvcc: Path) -> None:
    _nvidia_smi(tmp_path / "gpu", "9.0")
    assert "--cuda" not in _dry_run(tmp_path, [tmp_path / "gpu", nvcc], LLCUDA_CUDA="0").stdout
    forced = _dry_run(tmp_path, [nvcc], LLCUDA_CUDA="1")  # no GPU here: the build script's arch list
    assert forced.stdout.strip() == "scripts/build_binaries.py --prefix .venv --cuda"
    chosen = _dry_run(tmp_path, [tmp_path / "gpu", nvcc], LLCUDA_CUDA_ARCHS="89-real;90-real")
    assert chosen.stdout.strip().endswith("--cuda --archs 89-real;90-real")


def test_forced_cuda_without_nvcc_fails(tmp_path: Path) -> None:
    out = _dry_run(tmp_path, [], LLCUDA_CUDA="1")
    assert out.returncode == 2 and "no nvcc" in out.stderr
    bad = _dry_run(tmp_path, [], LLCUDA_CUDA="yes")
    assert bad.returncode == 2 and "must be 1 (CUDA) or 0 (CPU)" in bad.stderr
