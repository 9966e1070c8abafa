"""scripts/build_binaries.py: copying a build into a prefix (setup.sh does it into .venv) can be repeated."""

from __future__ import annotations

import os
from pathlib import Path

from build_binaries import copy_prefix


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
