"""Finding the binaries: search order, helpful failures, damaged installs."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from llcuda import BinaryNotFoundError
from llcuda.system import binaries as bootstrap


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("LLCUDA_BIN_DIR", raising=False)
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "no-prefix"))
    monkeypatch.setattr(bootstrap, "BUNDLED_PREFIX", tmp_path / "no-bundle")
    return monkeypatch


def _fake_prefix(root: Path, real_server: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "llama-server").symlink_to(real_server)
    return root


def test_missing_binaries_list_every_place_searched(clean_env, tmp_path):
    clean_env.setenv("CONDA_PREFIX", str(tmp_path / "conda"))
    with pytest.raises(BinaryNotFoundError) as info:
        bootstrap.find_binaries()
    message = str(info.value)
    for where in ("bundled", "CONDA_PREFIX", "sys.prefix", "PATH", "conda install", "LLCUDA_BIN_DIR"):
        assert where in message
    assert isinstance(info.value, FileNotFoundError)


def test_search_order(clean_env, tmp_path, binaries):
    real = binaries.executable("llama-server")
    conda = _fake_prefix(tmp_path / "conda", real)
    override = _fake_prefix(tmp_path / "override", real)
    venv = _fake_prefix(tmp_path / "venv", real)
    clean_env.setattr(sys, "prefix", str(venv))
    assert bootstrap.find_binaries().source == "sys.prefix"
    clean_env.setenv("CONDA_PREFIX", str(conda))
    found = bootstrap.find_binaries()
    assert (found.source, found.bin_dir) == ("CONDA_PREFIX", conda / "bin")
    clean_env.setenv("LLCUDA_BIN_DIR", str(override / "bin"))
    assert bootstrap.find_binaries().source == "LLCUDA_BIN_DIR"


def test_path_is_searched_last(clean_env, tmp_path, binaries):
    on_path = _fake_prefix(tmp_path / "p", binaries.executable("llama-server"))
    clean_env.setenv("PATH", f"{tmp_path / 'nothing'}{os.pathsep}{on_path / 'bin'}")
    found = bootstrap.find_binaries()
    assert (found.source, found.bin_dir) == ("PATH", on_path / "bin")


def test_non_executable_server_is_reported_as_damaged(clean_env, tmp_path):
    folder = tmp_path / "broken" / "bin"
    folder.mkdir(parents=True)
    (folder / "llama-server").write_text("not a program")
    (folder / "llama-server").chmod(stat.S_IRUSR | stat.S_IWUSR)
    clean_env.setenv("LLCUDA_BIN_DIR", str(folder))
    with pytest.raises(BinaryNotFoundError, match="not executable"):
        bootstrap.find_binaries()


def test_incomplete_bundle_asks_for_a_reinstall(clean_env, tmp_path, binaries):
    bundle = _fake_prefix(tmp_path / "bundle", binaries.executable("llama-server"))
    clean_env.setattr(bootstrap, "BUNDLED_PREFIX", bundle)
    with pytest.raises(BinaryNotFoundError, match="pip install --force-reinstall"):
        bootstrap.find_binaries()


def test_build_info_is_read_next_to_the_binaries(binaries):
    info = binaries.build_info
    assert info["llama_cpp_build"] == 11434
    assert info["backend"] in ("cpu", "cuda")
    assert "llama-server" in info["tools"]
    assert not any("CMAKE_INSTALL_PREFIX" in flag for flag in info["cmake_flags"]), "a moved prefix would make it lie"
    assert binaries.lib_dir is not None and any(binaries.lib_dir.glob("libllama.so*"))


def test_every_tool_is_installed(binaries):
    for name in bootstrap.KNOWN_TOOLS:
        assert bootstrap.tool(name, binaries).is_file(), name
