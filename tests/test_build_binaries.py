"""scripts/build_binaries.py and recipe/build-binaries.sh: a prefix copy repeats; bad settings stop the build."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from build_binaries import copy_prefix

BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "recipe" / "build-binaries.sh"


def make_prefix(root: Path, version: str) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "share" / "llcuda").mkdir(parents=True)
    (root / "bin" / "rpc-server").write_text(f"rpc-server {version}")
    os.symlink("rpc-server", root / "bin" / "ggml-rpc-server")
    (root / "lib" / "libllama.so.0").write_text(f"libllama {version}")
    os.symlink("libllama.so.0", root / "lib" / "libllama.so")
    (root / "share" / "llcuda" / "build-info.json").write_text(f'{{"version": "{version}"}}')
    return root


def test_a_second_build_replaces_the_first_in_the_same_prefix(tmp_path: Path) -> None:
    dest = tmp_path / "venv"
    copy_prefix(make_prefix(tmp_path / "old", "1"), dest)
    copy_prefix(make_prefix(tmp_path / "new", "2"), dest)  # the symlinks exist now: this used to raise
    assert (dest / "bin" / "ggml-rpc-server").is_symlink()
    assert (dest / "bin" / "ggml-rpc-server").read_text() == "rpc-server 2"
    assert os.readlink(dest / "lib" / "libllama.so") == "libllama.so.0"
    assert (dest / "lib" / "libllama.so").read_text() == "libllama 2"
    assert (dest / "share" / "llcuda" / "build-info.json").read_text() == '{"version": "2"}'


def test_a_web_ui_only_prefix_copies_its_page_alone(tmp_path: Path) -> None:
    """`build_binaries.py --ui-only --prefix DIR`: the page's prefix has share/ and nothing else."""
    page = tmp_path / "ui-prefix" / "share" / "llcuda" / "ui"
    (page / "_app").mkdir(parents=True)
    (page / "index.html").write_text("<!doctype html>")
    (page / "_app" / "bundle.js").write_text("//")
    dest = make_prefix(tmp_path / "venv", "1")
    copy_prefix(tmp_path / "ui-prefix", dest)
    assert (dest / "share" / "llcuda" / "ui" / "_app" / "bundle.js").read_text() == "//"
    assert (dest / "share" / "llcuda" / "build-info.json").read_text() == '{"version": "1"}'
    assert (dest / "bin" / "rpc-server").read_text() == "rpc-server 1"


@pytest.mark.parametrize("variable, value", [("LLCUDA_UI", "yes"), ("LLCUDA_CPU_ISA", "avx512")])
def test_the_build_script_refuses_an_unknown_setting_before_building(tmp_path: Path, variable: str, value: str) -> None:
    (tmp_path / "CMakeLists.txt").write_text("")  # a tree it accepts; nothing may get to cmake
    env = dict(os.environ, PREFIX=str(tmp_path / "prefix"), SRC_DIR=str(tmp_path), LLAMA_BUILD_NUMBER="1")
    env[variable] = value
    run = subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert f"{variable} must be" in run.stderr and f"not '{value}'" in run.stderr
    assert not (tmp_path / "build-llcuda").exists() and not (tmp_path / "prefix").exists()
