"""Shared fixtures: the real llama.cpp binaries, a tiny random-weight GGUF, a running engine."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
# LLCUDA_HOME as the run started, before `isolated_home` points it at a temporary folder: the
# build caches (source, CPU build) that scripts/setup.sh filled live there.
_USER_LLCUDA_HOME = os.environ.get("LLCUDA_HOME")
# The suites written against llama-server's behaviour pick it by default; tests of the default backend name it.
os.environ.setdefault("LLCUDA_BACKEND", "llama-server")


def _put_llcuda_home(value: str | None) -> None:
    if value is None:
        os.environ.pop("LLCUDA_HOME", None)
    else:
        os.environ["LLCUDA_HOME"] = value


@contextmanager
def _llcuda_home(value: str | None) -> Iterator[None]:
    """LLCUDA_HOME set to ``value`` (unset for None) in this process, restored afterwards."""
    saved = os.environ.get("LLCUDA_HOME")
    _put_llcuda_home(value)
    try:
        yield
    finally:
        _put_llcuda_home(saved)


def build_env(**extra: str) -> dict[str, str]:
    """Environment for the build scripts: this one with the user's LLCUDA_HOME (their build cache)."""
    env = {k: v for k, v in os.environ.items() if k != "LLCUDA_HOME"}
    if _USER_LLCUDA_HOME is not None:
        env["LLCUDA_HOME"] = _USER_LLCUDA_HOME
    env.update(extra)
    return env


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the programs the tests start, also where the suite itself was started with SIGINT
    ignored (with `&` from a script): a handler, unlike SIG_IGN, is not inherited across exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests where no NVIDIA GPU is visible (CI); they run where one is."""
    from llcuda.system import gpu

    if gpu.detect().gpus:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # keywords would also match a folder named gpu
            item.add_marker(skip)


@pytest.fixture(scope="session")
def binaries():
    """The llama.cpp binaries llcuda's bootstrap finds. Missing binaries fail the run, never skip it."""
    from llcuda.errors import BinaryNotFoundError
    from llcuda.system import binaries as bootstrap

    try:
        return bootstrap.find_binaries()
    except BinaryNotFoundError as exc:
        pytest.fail(f"run ./scripts/setup.sh first (or scripts/test.sh): {exc}")


@pytest.fixture(scope="session")
def llama_src() -> Path:
    """The pinned llama.cpp source tree (fetched into the user cache on first use)."""
    from llama_source import fetch_source

    with _llcuda_home(_USER_LLCUDA_HOME):  # the user's cache, even after isolated_home has begun
        return fetch_source()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, llama_src: Path) -> Path:
    """A 2-layer Llama with random weights and the llama-spm tokenizer (~9 MB)."""
    from llcuda.benchmark.random_model import PRESETS, write_model

    return write_model(tmp_path_factory.mktemp("models") / "tiny-llama.gguf", llama_src / "models", PRESETS["tiny"])


@pytest.fixture(scope="session")
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """LLCUDA_HOME in a temporary folder for the whole session (logs, cache)."""
    home = tmp_path_factory.mktemp("llcuda-home")
    with _llcuda_home(str(home)):
        yield home


@pytest.fixture(scope="session")
def tiny_engine(binaries, tiny_model: Path, isolated_home: Path):
    """One engine serving the tiny model with 4 slots, shared by the integration tests."""
    from llcuda.engine import InferenceEngine

    engine = InferenceEngine(binaries=binaries)
    engine.load_model(tiny_model, ctx_size=2048, n_parallel=4, threads=1)
    yield engine
    engine.unload()


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    """SmolLM2-135M-Instruct (Q4_1, ~100 MB, with a chat template) from the user's cache, pulled if missing."""
    from llcuda.models import SMOLLM2_MODEL
    from llcuda.models.resolve import resolve_model

    with _llcuda_home(_USER_LLCUDA_HOME):  # the user's cache, even after isolated_home has begun
        return resolve_model(SMOLLM2_MODEL, progress=False).path
