"""llcuda.cli.doctor: the report `llcuda doctor` prints (the CLI side is in test_cli.py)."""

from __future__ import annotations

from pathlib import Path

from llcuda.cli import doctor
from llcuda.system.binaries import Binaries


def test_libllama_loads_in_process(binaries, monkeypatch):
    monkeypatch.setenv("LLCUDA_BIN_DIR", str(binaries.bin_dir))
    report = doctor.collect()
    assert report["inprocess"] == {"loads": True, "library": f"{binaries.lib_dir}/libllama.so"}
    assert not any("in-process" in w for w in report["warnings"])


def test_a_libllama_that_does_not_load_is_a_warning(tmp_path: Path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    server = bin_dir / "llama-server"
    server.write_text("#!/bin/sh\nexit 0\n")
    server.chmod(0o755)  # found, but no lib/ folder next to it
    monkeypatch.setenv("LLCUDA_BIN_DIR", str(bin_dir))
    report = doctor.collect()
    assert report["binaries"]["found"] is True
    assert report["inprocess"]["loads"] is False and "no lib/ folder" in report["inprocess"]["error"]
    assert any(w.startswith("libllama does not load in-process") for w in report["warnings"])
    assert not any("libllama" in p for p in report["problems"]), "the server backend can still work"


def test_a_damaged_libllama_is_reported_not_raised(tmp_path: Path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libllama.so").write_text("not a shared library")
    found = doctor.check_inprocess(Binaries(bin_dir=tmp_path / "bin", lib_dir=lib, source="test", build_info={}))
    assert found["loads"] is False and "could not load" in found["error"]


def test_no_binaries_no_in_process(tmp_path: Path, monkeypatch):
    (tmp_path / "llama-server").write_text("not a program")  # present but not executable: a damaged install
    monkeypatch.setenv("LLCUDA_BIN_DIR", str(tmp_path))
    report = doctor.collect()
    assert report["binaries"]["found"] is False
    assert report["inprocess"]["loads"] is False and "binaries" in report["inprocess"]["error"]


def test_the_gpu_report_says_where_it_came_from(binaries, monkeypatch):
    from llcuda.system import gpu

    monkeypatch.setenv("LLCUDA_BIN_DIR", str(binaries.bin_dir))
    report = doctor.collect()["gpu"]
    assert report["source"] == gpu.detect().source
    assert report["source"] in ("nvml", "nvidia-smi", None)
    if report["source"] is None:  # neither answered: say why
        assert not report["gpus"] and "nvidia-smi" in report["error"] and "NVML" in report["error"]


def test_another_llama_cpp_build_is_a_problem(binaries, tmp_path: Path, monkeypatch):
    """A llama-server of another build (build-info.json says b11500) is named as such, not as missing."""
    (tmp_path / "share" / "llcuda").mkdir(parents=True)
    (tmp_path / "share" / "llcuda" / "build-info.json").write_text('{"llama_cpp_build": 11500}')
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "llama-server").symlink_to(binaries.executable("llama-server"))
    monkeypatch.setenv("LLCUDA_BIN_DIR", str(tmp_path / "bin"))
    report = doctor.collect()
    assert report["binaries"]["found"] is False and "are b11500" in report["binaries"]["error"]
    assert (
        "llama-server is llama.cpp b11500, llcuda needs b11434 (see binaries.error for how to fix it)"
        in (report["problems"])
    )
