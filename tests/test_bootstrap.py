"""Finding the binaries: search order, helpful failures, damaged installs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llcuda import BinaryNotFoundError, BuildMismatchError
from llcuda.system import binaries as bootstrap
from llcuda.system.binaries import Binaries

REPO = Path(__file__).resolve().parent.parent


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


# ---- only the pinned llama.cpp build is loaded -------------------------------------------------


def test_the_pin_is_the_recipes() -> None:
    """The build llcuda's bindings follow is the build every package and local build compiles."""
    yaml = pytest.importorskip("yaml")
    context = yaml.safe_load((REPO / "recipe" / "recipe.yaml").read_text(encoding="utf-8"))["context"]
    assert bootstrap.LLAMA_CPP_BUILD == context["llama_cpp_build"] == 11434


def _mirror_prefix(root: Path, binaries, build: int | None) -> Path:
    """A prefix of symlinks to the real binaries and libraries, with build-info.json saying ``build``
    (no build-info.json for None)."""
    for sub, source in (("bin", binaries.bin_dir), ("lib", binaries.lib_dir)):
        (root / sub).mkdir(parents=True)
        for item in source.iterdir():
            if item.is_file():
                (root / sub / item.name).symlink_to(item.resolve())
    if build is not None:
        info = dict(binaries.build_info, llama_cpp_build=build)
        (root / "share" / "llcuda").mkdir(parents=True)
        (root / "share" / "llcuda" / "build-info.json").write_text(json.dumps(info))
    return root


def test_the_real_binaries_pass(binaries):
    bootstrap.check_build(binaries)
    assert bootstrap.library_build(binaries.lib_dir) == 11434
    bootstrap.check_library_build(binaries.lib_dir)


def test_libraries_are_found_by_their_soname_file_where_no_link_exists(tmp_path, binaries):
    """A wheel holds no symlinks: only libllama.so.0 (what NEEDED entries name) and no libllama.so."""
    for name in ("libllama.so.0", "libllama.so.0.6.0", "libllama-common.so.0"):
        (tmp_path / name).write_bytes(b"")
    assert bootstrap.shared_library(tmp_path, "libllama") == tmp_path / "libllama.so.0"
    (tmp_path / "libllama.so").write_bytes(b"")
    assert bootstrap.shared_library(tmp_path, "libllama") == tmp_path / "libllama.so"
    assert bootstrap.shared_library(tmp_path, "libmtmd") == tmp_path / "libmtmd.so"  # missing: the plain name
    # the real libraries, copied without their links, still report their build
    copy = tmp_path / "copy"
    copy.mkdir()
    for lib in binaries.lib_dir.glob("lib*.so.[0-9]"):
        shutil.copy(lib, copy / lib.name)
    assert not (copy / "libllama-common.so").exists()
    assert bootstrap.library_build(copy) == 11434


def test_a_newer_build_is_refused(clean_env, tmp_path, binaries):
    prefix = _mirror_prefix(tmp_path / "newer", binaries, 11500)
    clean_env.setenv("LLCUDA_BIN_DIR", str(prefix / "bin"))
    with pytest.raises(BuildMismatchError) as info:
        bootstrap.find_binaries()
    message = str(info.value)
    assert "b11434" in message and "b11500" in message and str(prefix / "bin") in message
    assert "LLCUDA_BIN_DIR" in message and "pip install --force-reinstall llcuda" in message
    assert (info.value.found, info.value.expected) == (11500, 11434)
    assert isinstance(info.value, BinaryNotFoundError)


def test_a_mirror_of_the_pinned_build_is_used(clean_env, tmp_path, binaries):
    prefix = _mirror_prefix(tmp_path / "same", binaries, 11434)
    clean_env.setenv("LLCUDA_BIN_DIR", str(prefix / "bin"))
    found = bootstrap.find_binaries()
    assert (found.bin_dir, found.build_info["llama_cpp_build"]) == (prefix / "bin", 11434)


def test_without_build_info_the_server_version_decides(clean_env, tmp_path, binaries):
    """A llama-server on PATH with no build-info.json: `llama-server --version` names its build."""
    prefix = _mirror_prefix(tmp_path / "plain", binaries, None)
    clean_env.setenv("PATH", str(prefix / "bin"))
    found = bootstrap.find_binaries()
    assert (found.source, found.build_info) == ("PATH", {})
    assert bootstrap.server_build(found.executable("llama-server")) == 11434


def _script_server(folder: Path, output: str) -> Path:
    """A stand-in llama-server printing what another llama.cpp build prints for --version."""
    folder.mkdir(parents=True)
    server = folder / "llama-server"
    server.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}' >&2\n")  # printf: a builtin, PATH is bare
    server.chmod(0o755)
    return server


@pytest.mark.parametrize(
    "output",
    [
        "version: 6800 (aa1e3f9e)\nbuilt with cc (GCC) 14.2.0 for x86_64-linux-gnu",
        "version: 11500 (build 11500, commit 0123abcd)\nbuilt with GNU 14.2.0 for Linux x86_64",
    ],
)
def test_another_build_on_path_is_refused(clean_env, tmp_path, output):
    _script_server(tmp_path / "other" / "bin", output)
    clean_env.setenv("PATH", str(tmp_path / "other" / "bin"))
    with pytest.raises(BuildMismatchError, match=r"b11434, but the binaries in .* are b(6800|11500)"):
        bootstrap.find_binaries()


def test_an_unknown_build_is_used_with_a_warning(clean_env, tmp_path, caplog):
    _script_server(tmp_path / "mute" / "bin", "usage: llama-server [options]")
    clean_env.setenv("PATH", str(tmp_path / "mute" / "bin"))
    with caplog.at_level(logging.WARNING, logger="llcuda.system.binaries"):
        found = bootstrap.find_binaries()
    assert found.bin_dir == tmp_path / "mute" / "bin"
    assert "cannot tell which llama.cpp build" in caplog.text and "b11434" in caplog.text


@pytest.fixture
def newer_library(tmp_path, binaries) -> Path:
    """A lib folder whose libllama-common reports build 11500 (a real shared library, compiled here),
    beside symlinks to the real libllama and ggml."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("needs a C compiler")
    lib = tmp_path / "lib"
    lib.mkdir()
    for item in binaries.lib_dir.iterdir():
        if item.is_file() and not item.name.startswith("libllama-common"):
            (lib / item.name).symlink_to(item.resolve())
    source = tmp_path / "common.c"
    source.write_text("int LLAMA_BUILD_NUMBER = 11500;\n")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib / "libllama-common.so"), str(source)], check=True)
    return lib


def test_the_in_process_engine_refuses_a_library_of_another_build(newer_library, tmp_path):
    from llcuda.libllama.bindings import load_library

    assert bootstrap.library_build(newer_library) == 11500
    with pytest.raises(BuildMismatchError, match=r"libllama-common's LLAMA_BUILD_NUMBER\) are b11500"):
        load_library(Binaries(bin_dir=tmp_path / "bin", lib_dir=newer_library, source="test"))


def test_a_library_folder_without_libllama_common_relies_on_build_info(tmp_path):
    assert bootstrap.library_build(tmp_path) is None
    bootstrap.check_library_build(tmp_path)  # nothing to compare: build-info.json was checked
