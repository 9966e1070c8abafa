"""scripts/prepare_binaries.py with a CUDA prefix: which NVIDIA wheels the wheel depends on, per CUDA major.

The prefix is the real CPU build plus a real shared library that links stand-ins for the CUDA
runtime and cuBLAS (compiled here with the SONAMEs of CUDA 12 or 13), so the staging code reads
genuine ELF files; no GPU or CUDA toolkit is needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import prepare_binaries
import pytest


def cuda_prefix(tmp_path: Path, binaries, cuda_version: str) -> Path:
    prefix = tmp_path / f"prefix-cuda{cuda_version}"
    shutil.copytree(binaries.bin_dir.parent, prefix, symlinks=True)
    major = cuda_version.split(".")[0]
    stubs = tmp_path / f"stubs{major}"
    stubs.mkdir()
    (stubs / "stub.c").write_text("int stub_symbol(void) { return 0; }\n")
    for soname in (f"libcudart.so.{major}", f"libcublas.so.{major}"):
        subprocess.run(
            ["cc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(stubs / soname), str(stubs / "stub.c")],
            check=True,
        )
    (stubs / "cuda.c").write_text("int stub_symbol(void);\nint ggml_cuda_stand_in(void) { return stub_symbol(); }\n")
    subprocess.run(
        [
            "cc",
            "-shared",
            "-fPIC",
            "-Wl,-soname,libggml-cuda.so.0",
            "-Wl,--no-as-needed",
            "-o",
            str(prefix / "lib" / "libggml-cuda.so.0"),
            str(stubs / "cuda.c"),
            str(stubs / f"libcudart.so.{major}"),
            str(stubs / f"libcublas.so.{major}"),
        ],
        check=True,
    )
    info_file = prefix / "share" / "llcuda" / "build-info.json"
    info = json.loads(info_file.read_text())
    info.update(backend="cuda", cuda_version=cuda_version, cuda_archs=["90-real"])
    info_file.write_text(json.dumps(info))
    return prefix


@pytest.mark.parametrize(
    "cuda_version,requirements,folder",
    [
        ("12.4", ["nvidia-cuda-runtime-cu12>=12.4", "nvidia-cublas-cu12>=12.4"], "nvidia/cuda_runtime/lib"),
        ("13.0", ["nvidia-cuda-runtime>=13.0", "nvidia-cublas>=13.0"], "nvidia/cu13/lib"),
    ],
)
def test_cuda_libraries_become_nvidia_wheel_dependencies(tmp_path, binaries, cuda_version, requirements, folder):
    if binaries.lib_dir is None:
        pytest.fail("the CPU build has no lib/ folder")
    prefix = cuda_prefix(tmp_path, binaries, cuda_version)
    bundle = prepare_binaries.stage_binaries(prefix, tmp_path / "stage", "pypi")
    assert sorted(bundle.requirements) == sorted(requirements)
    major = cuda_version.split(".")[0]
    assert set(bundle.external["cuda-pypi"]) == {f"libcudart.so.{major}", f"libcublas.so.{major}"}
    staged = prepare_binaries.read_elf(tmp_path / "stage" / "lib" / "libggml-cuda.so.0")
    assert f"$ORIGIN/../../../{folder}" in staged.runpath, staged.runpath
    assert not (tmp_path / "stage" / "lib" / f"libcublas.so.{major}").exists(), "pypi mode never copies cuBLAS"


def test_a_cuda_major_without_nvidia_wheels_mapping_names_the_bundle_option(tmp_path, binaries):
    prefix = cuda_prefix(tmp_path, binaries, "11.8")
    with pytest.raises(SystemExit, match="--cuda-libs bundle"):
        prepare_binaries.stage_binaries(prefix, tmp_path / "stage", "pypi")
