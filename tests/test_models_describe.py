"""describe_model (``llcuda models show``): GGUF facts of real models, random-weight models from
llcuda.benchmark.random_model, split files and cached hub specs, checked against gguf-py's reader."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import FakeHub, make_gguf

from llcuda.errors import InvalidModelError, ModelNotFoundError
from llcuda.models import DEFAULT_MODEL, SMOLLM2_MODEL, describe_model, registry

gguf = pytest.importorskip("gguf")


def reference(path: Path) -> dict:
    """The same facts from gguf-py's GGUFReader (the reference implementation)."""
    reader = gguf.GGUFReader(path)

    def scalar(key: str):
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    arch = scalar("general.architecture")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return {
        "architecture": arch,
        "parameters": sum(int(t.n_elements) for t in reader.tensors),
        "tensor_count": len(reader.tensors),
        "context_length": scalar(f"{arch}.context_length"),
        "embedding_length": scalar(f"{arch}.embedding_length"),
        "layers": scalar(f"{arch}.block_count"),
        "heads": scalar(f"{arch}.attention.head_count"),
        "kv_heads": scalar(f"{arch}.attention.head_count_kv"),
        "vocab_size": len(tokens.data) if tokens is not None else None,
        "chat_template": scalar("tokenizer.chat_template"),
        "file_type": scalar("general.file_type"),
        "tensor_types": {t.tensor_type.name for t in reader.tensors},
    }


def check_against_reference(facts: dict, path: Path) -> None:
    ref = reference(path)
    for key in (
        "architecture",
        "parameters",
        "tensor_count",
        "context_length",
        "embedding_length",
        "layers",
        "heads",
        "kv_heads",
        "vocab_size",
        "file_type",
    ):
        assert facts[key] == ref[key], key
    assert set(facts["tensor_types"]) == ref["tensor_types"]
    assert sum(facts["tensor_types"].values()) == facts["parameters"]
    assert facts["has_chat_template"] == bool(ref["chat_template"])
    assert facts["file_size"] == path.stat().st_size and facts["path"] == str(path.resolve())


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_TOKEN", "LLCUDA_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("LLCUDA_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "models"


@pytest.fixture
def server(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


def test_random_llama_from_random_gguf(tiny_model: Path, home: Path) -> None:
    from llcuda.benchmark.random_model import CHAT_TEMPLATE, PRESETS

    facts = describe_model(tiny_model)
    check_against_reference(facts, tiny_model)
    shape = PRESETS["tiny"]
    assert (facts["layers"], facts["embedding_length"], facts["heads"], facts["kv_heads"]) == (
        shape.n_layer,
        shape.n_embd,
        shape.n_head,
        shape.n_head_kv,
    )
    assert facts["context_length"] == shape.context_length and facts["vocab_size"] == 32000
    assert facts["quantization"] == "F16" and facts["loadable"] and facts["problem"] is None
    assert facts["source"] == "local" and facts["files"] == 1 and facts["architecture_supported"]
    assert facts["chat_template"] == CHAT_TEMPLATE.splitlines()[0] != CHAT_TEMPLATE
    assert describe_model(str(tiny_model), full_template=True)["chat_template"] == CHAT_TEMPLATE
    assert facts["parameters_label"].endswith("M")


def test_same_shape_as_a_real_model_with_fewer_layers(tiny_model: Path, tmp_path: Path, home: Path) -> None:
    from llcuda.benchmark.random_model import make_skeleton, write_like

    skeleton = make_skeleton(tiny_model, tmp_path / "s.gguf.gz")
    out = write_like(tmp_path / "like.gguf", skeleton, layers=1, seed=3)
    facts = describe_model(out)
    check_against_reference(facts, out)
    assert facts["layers"] == 1 and facts["parameters"] < describe_model(tiny_model)["parameters"]


def test_split_model_counts_every_part(tmp_path: Path, home: Path) -> None:
    (tmp_path / "split").mkdir()
    first = make_gguf(tmp_path / "split" / "s.gguf", split=True, n_tensors=3, tensor_bytes=3 * 4 * 64 * 16)
    parts = sorted(first.parent.iterdir())
    facts = describe_model(first)
    assert facts["files"] == 3 and facts["file_size"] == sum(p.stat().st_size for p in parts)
    assert facts["parameters"] == sum(reference(p)["parameters"] for p in parts) == 3 * 16 * 64
    assert facts["tensor_count"] == 3 and facts["loadable"]
    parts[2].unlink()
    broken = describe_model(first)
    assert not broken["loadable"] and "is missing" in broken["problem"] and broken["files"] == 2


def test_facts_of_files_llama_cpp_would_refuse(tmp_path: Path, home: Path) -> None:
    adapter = make_gguf(tmp_path / "lora.gguf", tensor_bytes=4096, general_type="adapter")
    facts = describe_model(adapter)
    assert facts["architecture"] == "llama" and not facts["loadable"] and "LoRA adapter" in facts["problem"]
    other = make_gguf(
        tmp_path / "unknown.gguf",
        arch="no-such-arch",
        tensor_bytes=4096,
        chat_template="\n  \n" + "x" * 300 + "\nsecond line",
    )
    facts = describe_model(other)
    assert facts["architecture"] == "no-such-arch" and not facts["architecture_supported"]
    assert facts["chat_template"] == "x" * 119 + "…", "the first line that is not blank, cut"
    assert facts["context_length"] == 2048 and facts["heads"] is None
    assert describe_model(make_gguf(tmp_path / "plain.gguf", tensor_bytes=4096))["chat_template"] is None
    (tmp_path / "junk.gguf").write_bytes(b"not a model")
    with pytest.raises(InvalidModelError, match="not a GGUF file"):
        describe_model(tmp_path / "junk.gguf")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        describe_model(tmp_path / "missing.gguf")


def test_cached_hub_spec_without_network_and_download_on_request(server: FakeHub, home: Path, tmp_path: Path) -> None:
    data = make_gguf(tmp_path / "m.gguf", tensor_bytes=8192, chat_template="{{ messages }}").read_bytes()
    server.add_file("org/show", "show-Q4_K_M.gguf", data)
    with pytest.raises(ModelNotFoundError, match="org/show:Q4_K_M is not in the model cache.*models pull"):
        describe_model("org/show:Q4_K_M")
    assert server.log == [], "show never downloads unless asked"
    facts = describe_model("org/show:Q4_K_M", download=True)
    assert facts["path"] == str(home / "hf" / "org" / "show" / "show-Q4_K_M.gguf")
    assert facts["source"] == "hf" and facts["origin"] == "hf://org/show/show-Q4_K_M.gguf"
    assert facts["sha256"] and facts["chat_template"] == "{{ messages }}"
    seen = len(server.log)
    for spec in ("org/show:Q4_K_M", "hf.co/org/show:q4_k_m", "org/show", "hf://org/show/show-Q4_K_M.gguf"):
        assert describe_model(spec) == facts, spec
    assert len(server.log) == seen
    with pytest.raises(ModelNotFoundError, match="gemma-3-1b-Q4_K_M is not in the model cache"):
        describe_model("gemma-3-1b-Q4_K_M")
    with pytest.raises(ModelNotFoundError, match="Did you mean: gemma-3-1b-Q4_K_M"):
        describe_model("gemma-3-1b-Q4KM")


@pytest.mark.realmodel
@pytest.mark.slow  # gguf-py's reader takes a while over a 262k-token vocabulary
@pytest.mark.parametrize("name, arch, layers", [(DEFAULT_MODEL, "gemma3", 18), (SMOLLM2_MODEL, "llama", 30)])
def test_real_models_in_the_user_cache(name: str, arch: str, layers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import _USER_LLCUDA_HOME

    if _USER_LLCUDA_HOME is None:
        monkeypatch.delenv("LLCUDA_HOME", raising=False)
    else:
        monkeypatch.setenv("LLCUDA_HOME", _USER_LLCUDA_HOME)
    monkeypatch.setenv("LLCUDA_OFFLINE", "1")
    try:
        facts = describe_model(name)
    except ModelNotFoundError as exc:
        pytest.fail(f"run ./scripts/setup.sh and `llcuda models pull {name}` first: {exc}")
    path = Path(facts["path"])
    check_against_reference(facts, path)
    entry = registry()[name]
    assert facts["name"] == name and facts["architecture"] == arch and facts["layers"] == layers
    assert facts["quantization"] == entry.quant and facts["sha256"] == entry.sha256
    assert facts["file_size"] == entry.size and facts["loadable"] and facts["has_chat_template"] == entry.chat
    assert facts["parameters_label"].rstrip("M").replace(".", "").isdigit()
    assert os.path.samefile(path, describe_model(path)["path"])
