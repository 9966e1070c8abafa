"""``llcuda models list | pull | rm | path | import`` through argparse, and the doctor summary."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import FakeHub, make_gguf

from llcuda.cli.models import add_models_parser, cache_summary, run_models_command
from llcuda.models import registry


def run(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="llcuda")
    add_models_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out, err)
    assert args.func is run_models_command
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for var in (
        "HF_TOKEN",
        "LLCUDA_OFFLINE",
        "HF_HUB_OFFLINE",
        "LLCUDA_PYPI_INDEX",
        "PIP_INDEX_URL",
        "LLCUDA_DEFAULT_MODEL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("LLCUDA_HOME", str(tmp_path / "home"))
    yield tmp_path / "home" / "models"


def test_empty_cache_and_registry_listing(home: Path) -> None:
    code, out, _ = run("models", "list")
    assert code == 0 and "No models in" in out and "llcuda models pull gemma-3-270m-Q4_K_M" in out
    code, out, _ = run("models", "list", "--all", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == len(registry()) >= 15 and not any(r["cached"] for r in rows)
    code, out, _ = run("models", "list", "--all")
    assert "gemma-3-1b-Q4_K_M" in out and "(* = in the cache)" in out


def test_import_list_path_rm(home: Path, tmp_path: Path) -> None:
    src = make_gguf(tmp_path / "My-Model.gguf", tensor_bytes=8192)
    code, out, err = run("models", "import", str(src))
    assert code == 0, err
    dest = home / "imported" / "My-Model.gguf"
    assert f"as My-Model: {dest}" in out and dest.read_bytes() == src.read_bytes()
    code, out, _ = run("models", "list", "--json")
    [row] = json.loads(out)
    assert row["name"] == "My-Model" and row["source"] == "import" and row["size"] == src.stat().st_size
    code, out, _ = run("models", "path", "My-Model")
    assert code == 0 and out.strip() == str(dest)
    code, out, err = run(
        "models", "import", str(make_gguf(tmp_path / "other.gguf", tensor_bytes=8192, seed=3)), "--name", "My-Model"
    )
    assert code == 1 and "already holds another model" in err and "--force" in err
    code, out, _ = run("models", "rm", "My-Model")
    assert code == 0 and not dest.exists() and not (home / "imported").exists()
    code, out, err = run("models", "path", "My-Model")
    assert code == 1 and "Unknown model 'My-Model'" in err
    code, _, err = run("models", "path", "gemma-3-1b-Q4_K_M")
    assert code == 1 and "run `llcuda models pull gemma-3-1b-Q4_K_M`" in err
    code, _, err = run("models", "rm", "gemma-3-1b-Q4_K_M")
    assert code == 1 and "not in the model cache" in err
    code, _, err = run("models", "rm", "gemma-3-1b-Q4KM")
    assert code == 1 and "Did you mean: gemma-3-1b-Q4_K_M" in err


def test_import_recognises_registry_models_and_checks_them(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_gguf(tmp_path / "g.gguf", tensor_bytes=8192)
    code, _, err = run("models", "import", str(src), "--name", "gemma-3-1b-Q4_K_M")
    assert code == 1 and "is not gemma-3-1b-Q4_K_M: its sha256 is" in err
    assert not (home / "gemma-3-1b-Q4_K_M.gguf").exists()
    code, _, err = run("models", "import", str(tmp_path / "missing.gguf"))
    assert code == 1 and "does not exist" in err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    code, _, err = run("models", "import", str(bad))
    assert code == 1 and "truncated" in err and str(bad) in err


def test_pull_from_a_hub_and_doctor_summary(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_gguf(tmp_path / "m.gguf", tensor_bytes=1 << 20).read_bytes()
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        hub.add_file("org/repo", "m.gguf", data)
        code, out, err = run("models", "pull", "-q", "org/repo:m.gguf")
        assert code == 0, err
        assert "m: downloaded" in out and "from hf" in out
        code, out, _ = run("models", "pull", "-q", "hf://org/repo/m.gguf")
        assert "already cached" in out
        code, _, err = run("models", "pull", "-q", "org/repo:nope.gguf")
        assert code == 1 and "File 'nope.gguf' is not in org/repo" in err
        code, out, _ = run("models", "path", "hf://org/repo/m.gguf")
        assert out.strip() == str(home / "hf" / "org" / "repo" / "m.gguf")
        summary = cache_summary()
        assert summary["count"] == 1 and summary["total_bytes"] == len(data) and summary["path"] == str(home)
        assert summary["models"] == ["hf://org/repo/m.gguf"]
        assert summary["default_model"] == "gemma-3-270m-Q4_K_M" and summary["default_model_cached"] is False
        assert summary["hf_endpoint"] == hub.endpoint and "token" not in json.dumps(summary).replace("token_set", "")
        part = home / "hf" / "org" / "repo" / "x.gguf.0123456789abcdef.incomplete"
        part.write_bytes(b"partial")
        assert cache_summary()["incomplete"] == 1
        code, out, _ = run("models", "rm", "--incomplete")
        assert code == 0 and "removed 1 unfinished" in out and not part.exists()
        assert (home / "hf" / "org" / "repo" / "m.gguf").exists()


def test_unknown_name_exits_1_with_suggestion(home: Path) -> None:
    code, _, err = run("models", "pull", "-q", "gemma-3-1b-Q4KM")
    assert code == 1 and "Did you mean: gemma-3-1b-Q4_K_M" in err


def test_show(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    template = "{% for m in messages %}\n{{ m['content'] }}\n{% endfor %}"
    src = make_gguf(tmp_path / "Shown.gguf", tensor_bytes=64 << 10, chat_template=template)
    code, out, err = run("models", "show", str(src))
    assert code == 0, err
    expected = [
        ("path", str(src)),
        ("architecture", "llama"),
        ("parameters", "16.4K (16,384)"),
        ("quantization", "F32 (tensors: F32 100%)"),
        ("context length", "2048"),
        ("embedding length", "64"),
        ("layers", "1"),
        ("attention heads", "?"),
        ("vocabulary", "4"),
        ("chat template", "yes: {% for m in messages %}"),
    ]
    assert out.startswith("Shown (test-llama)\n")
    for label, value in expected:
        assert f"\n  {label:17} {value}\n" in out, (label, out)
    assert "source" not in out and "cannot load" not in out
    code, out, _ = run("models", "show", str(src), "--template")
    assert out.endswith("  chat template     yes, below\n" + template + "\n")
    code, out, _ = run("models", "show", str(src), "--json")
    facts = json.loads(out)
    assert facts["parameters"] == 16384 and facts["chat_template"] == "{% for m in messages %}"
    code, _, err = run("models", "show", "gemma-3-1b-Q4_K_M")
    assert code == 1 and "not in the model cache" in err and "llcuda models pull gemma-3-1b-Q4_K_M" in err
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        hub.add_file("org/repo", "m-Q8_0.gguf", src.read_bytes())
        code, out, err = run("models", "show", "--pull", "--json", "org/repo:Q8_0")
        assert code == 0, err
        assert json.loads(out)["origin"] == "hf://org/repo/m-Q8_0.gguf"
        code, out, _ = run("models", "show", "hf.co/org/repo:q8_0")
        assert "  source            hf hf://org/repo/m-Q8_0.gguf\n" in out and "  sha256   " in out
