"""llcuda.benchmark.random_model: presets, skeletons, same-shape models (write_like), the model cache."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")

from llcuda.benchmark.random_model import make_skeleton, write_like
from llcuda.errors import LlcudaError

REAL_GEMMA = Path.home() / ".cache/llcuda/models/gemma-3-270m-Q4_K_M.gguf"


def fields(path: Path) -> dict[str, tuple[tuple[int, ...], list[bytes]]]:
    reader = gguf.GGUFReader(path)
    return {
        k: (tuple(f.types), [bytes(f.parts[i]) for i in f.data])
        for k, f in reader.fields.items()
        if not k.startswith("GGUF.")
    }


def tensors(path: Path) -> list[tuple[str, list[int], str]]:
    return [(t.name, [int(d) for d in t.shape], t.tensor_type.name) for t in gguf.GGUFReader(path).tensors]


def test_skeleton_round_trip_keeps_metadata_and_shapes(tiny_model: Path, tmp_path: Path) -> None:
    skeleton = make_skeleton(tiny_model, tmp_path / "tiny.skeleton.gguf.gz")
    assert skeleton.stat().st_size < tiny_model.stat().st_size / 2
    out = write_like(tmp_path / "like.gguf", skeleton)
    want, got = fields(tiny_model), fields(out)
    assert list(got) == list(want)  # same keys, same order
    assert [k for k in want if want[k] != got[k]] == []  # tiny_model is f16 already: file_type 1 in both
    assert [(n, s) for n, s, _ in tensors(out)] == [(n, s) for n, s, _ in tensors(tiny_model)]
    assert {t for _, s, t in tensors(out) if len(s) == 1} == {"F32"}
    assert {t for _, s, t in tensors(out) if len(s) > 1} == {"F16"}


def test_like_a_real_gguf_directly_and_fewer_layers(tiny_model: Path, tmp_path: Path) -> None:
    out = write_like(tmp_path / "one-layer.gguf", tiny_model, layers=1)
    names = [n for n, _, _ in tensors(out)]
    assert not any(n.startswith("blk.1.") for n in names) and any(n.startswith("blk.0.") for n in names)
    reader = gguf.GGUFReader(out)
    assert int(reader.fields["llama.block_count"].parts[-1][0]) == 1
    with pytest.raises(LlcudaError, match="has 2 blocks"):
        write_like(tmp_path / "bad.gguf", tiny_model, layers=3)


def test_like_model_loads_and_generates(tiny_model: Path, tmp_path: Path, binaries) -> None:
    out = write_like(tmp_path / "like.gguf", make_skeleton(tiny_model, tmp_path / "s.gguf.gz"), seed=1)
    done = subprocess.run(
        [
            str(binaries.executable("llama-bench")),
            "-m",
            str(out),
            "-p",
            "0",
            "-n",
            "4",
            "-r",
            "1",
            "-o",
            "json",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(done.stdout)
    assert row["n_gen"] == 4 and row["avg_ts"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not REAL_GEMMA.is_file(), reason="the real Gemma-3-270M file is not in the model cache")
def test_gemma_skeleton_quantizes_to_the_real_files_layout(tmp_path: Path, binaries) -> None:
    """Random weights, then llama-quantize Q4_K_M: same metadata, tensors, types and size as the real file."""
    f16 = write_like(tmp_path / "g-f16.gguf", make_skeleton(REAL_GEMMA, tmp_path / "g.gguf.gz"))
    q = tmp_path / "g-q4km.gguf"
    subprocess.run(
        [str(binaries.executable("llama-quantize")), str(f16), str(q), "Q4_K_M"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert fields(q) == fields(REAL_GEMMA)
    assert tensors(q) == tensors(REAL_GEMMA)
    assert q.stat().st_size == REAL_GEMMA.stat().st_size


def test_random_model_is_made_once_and_cached(isolated_home: Path, llama_src: Path, monkeypatch, binaries):
    from llcuda.benchmark import random_model as rm
    from llcuda.models import read_gguf_info
    from llcuda.models.cache import cached_models

    monkeypatch.setitem(rm.RANDOM_MODELS, "random-tiny-q8", rm.RandomModel("tiny", "Q8_0"))
    path = rm.random_model("random-tiny-q8", binaries=binaries, vocab_dir=llama_src / "models")
    assert path == isolated_home / "models" / "random" / "random-tiny-q8.gguf"
    assert read_gguf_info(path).file_type_name == "Q8_0"
    assert not list(path.parent.glob("*.tmp.gguf")) and not list(path.parent.glob("*.incomplete"))
    made = path.stat().st_mtime_ns
    assert rm.random_model("random-tiny-q8", binaries=binaries, offline=True) == path  # no vocab needed now
    assert path.stat().st_mtime_ns == made
    assert "random-tiny-q8" in {m.name for m in cached_models()}


def test_random_model_errors(isolated_home: Path, tmp_path: Path) -> None:
    from llcuda.benchmark import random_model as rm
    from llcuda.errors import ModelNotFoundError, OfflineModeError

    with pytest.raises(ModelNotFoundError, match="random-1b"):
        rm.random_model("random-2b")
    with pytest.raises(ModelNotFoundError, match="ggml-vocab-llama-bpe.gguf does not exist"):
        rm.vocab_file("llama-bpe", tmp_path)
    with pytest.raises(OfflineModeError, match="offline mode is on"):
        rm.vocab_file("llama-bpe", offline=True)  # isolated_home holds no llama.cpp tree
