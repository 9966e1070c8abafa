"""The house rules that tools check: ruff (pinned in the lint group, rules in pyproject.toml) and mypy on llcuda/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.fail("ruff is not installed: ./scripts/setup.sh installs the dev group (pyproject.toml)")
    result = _run(ruff, "check", "llcuda", "scripts", "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    formatted = _run(ruff, "format", "--check", "llcuda", "scripts", "tests")
    assert formatted.returncode == 0, "run `ruff format llcuda scripts tests`:\n" + formatted.stdout


def test_mypy_finds_nothing_in_llcuda():
    result = _run(sys.executable, "-m", "mypy", "llcuda")
    assert result.returncode == 0, result.stdout + result.stderr
