"""The GGUF reader: real files (written by llama.cpp's own gguf-py, and the vocab files in the
llama.cpp tree), every rejection path, hostile headers, and a fuzz run."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from hub_server import make_gguf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llcuda.errors import InvalidModelError, ModelNotFoundError
from llcuda.models import read_gguf_info, supported_architectures, validate_gguf, validate_gguf_bytes
from llcuda.models.gguf import MAX_KV, MAX_TENSORS

REPO = Path(__file__).resolve().parent.parent


# -- raw GGUF bytes, for the cases no honest writer produces ----------------------------------------
def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv_str(key: str, value: str) -> bytes:
    return _s(key) + struct.pack("<I", 8) + _s(value)


def _kv_u32(key: str, value: int) -> bytes:
    return _s(key) + struct.pack("<I", 4) + struct.pack("<I", value)


def _tensor(name: str, dims: list[int], ttype: int = 0, offset: int = 0) -> bytes:
    return (
        _s(name)
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<q", d) for d in dims)
        + struct.pack("<IQ", ttype, offset)
    )


def raw_gguf(
    kvs: list[bytes],
    tensors: list[bytes] = (),
    data: bytes = b"",
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    align: int = 32,
) -> bytes:
    head = b"GGUF" + struct.pack(
        "<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    if tensors:
        body += b"\0" * (-len(body) % align)
    return body + data


def minimal(arch: str = "llama", rows: int = 4) -> bytes:
    """A complete one-tensor F32 model in raw bytes."""
    return raw_gguf([_kv_str("general.architecture", arch)], [_tensor("w", [8, rows])], b"\1" * (32 * rows))


# -- real files -------------------------------------------------------------------------------------
def test_reads_a_model_written_by_gguf_py(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "m.gguf", chat_template="{{ messages }}", n_tensors=3)
    info = validate_gguf(path)
    ref = gguf.GGUFReader(str(path))
    assert info.path == path
    assert info.architecture == "llama" and info.architecture_supported
    assert info.name == "test-llama"
    assert info.context_length == 2048 and info.embedding_length == 64 and info.block_count == 1
    assert info.file_type == 0 and info.file_type_name == "F32"
    assert info.tensor_count == len(ref.tensors) == 3
    assert info.kv_count == len([f for f in ref.fields if not f.startswith("GGUF.")])
    assert info.data_offset == ref.data_offset
    assert info.parameter_count == sum(int(t.n_elements) for t in ref.tensors)
    assert info.vocab_size == 4
    assert info.has_chat_template and info.chat_template == "{{ messages }}"
    assert info.file_size == path.stat().st_size
    assert info.metadata["general.architecture"] == "llama"


def test_vocab_files_from_the_llama_cpp_tree_parse_but_are_not_models(llama_src: Path) -> None:
    files = sorted((llama_src / "models").glob("ggml-vocab-*.gguf"))
    assert len(files) > 10
    small = sorted(files, key=lambda p: p.stat().st_size)[:2]  # gguf-py's reader is slow on big vocabularies
    for path in files:
        info = read_gguf_info(path)
        assert info.tensor_count == 0 and info.vocab_size and info.architecture, path
        with pytest.raises(InvalidModelError, match="no tensors"):
            validate_gguf(path)
        if path in small:
            ref = gguf.GGUFReader(str(path))
            assert info.kv_count == len([f for f in ref.fields if not f.startswith("GGUF.")]), path
            assert info.vocab_size == len(ref.fields["tokenizer.ggml.tokens"].data), path


def test_architecture_table_is_generated_from_the_pinned_source(tmp_path: Path, llama_src: Path) -> None:
    archs = supported_architectures()
    assert {"llama", "gemma3", "qwen2", "qwen3", "phi3", "mistral3"} <= archs
    assert "clip" not in archs and "(unknown)" not in archs
    out = tmp_path / "gguf_data.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "gen_gguf_data.py"),
            "--llama-cpp",
            str(llama_src),
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    committed = json.loads((REPO / "llcuda" / "models" / "gguf_data.json").read_text())
    assert json.loads(out.read_text()) == committed, "gguf_data.json is stale: run scripts/gen_gguf_data.py"


# -- rejections with clear messages -----------------------------------------------------------------
def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        validate_gguf(tmp_path / "nope.gguf")
    with pytest.raises(InvalidModelError, match="is a directory"):
        validate_gguf(tmp_path)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not a GGUF file"),
        (b"GGU", "not a GGUF file"),
        (b"PK\x03\x04" + b"\0" * 100, r"not a GGUF file \(it starts with b'PK"),
        (b"GGUF" + struct.pack("<I", 1) + b"\0" * 16, "GGUFv1 is no longer supported"),
        (b"GGUF" + struct.pack("<I", 4) + b"\0" * 16, "unsupported GGUF version 4"),
        (b"GGUF" + struct.pack(">I", 3) + b"\0" * 16, "byte-swapped"),
        (b"GGUF" + struct.pack("<I", 3) + b"\0" * 5, "truncated"),
    ],
)
def test_bad_headers(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(InvalidModelError, match=message) as exc:
        validate_gguf(path)
    assert str(path) in str(exc.value)


def test_truncated_anywhere_is_reported_as_truncated(tmp_path: Path) -> None:
    whole = make_gguf(tmp_path / "whole.gguf", tensor_bytes=64 << 10).read_bytes()
    info = validate_gguf_bytes(whole)
    cuts = [10, 30, 200, info.data_offset - 3, info.data_offset + 1, len(whole) - 1]
    for cut in cuts:
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(whole[:cut])
        with pytest.raises(InvalidModelError, match="truncated") as exc:
            validate_gguf(path)
        assert str(path) in str(exc.value) and "download it again" in str(exc.value)


@pytest.mark.parametrize(
    "arch, general_type, message",
    [
        ("notanarch", None, "architecture 'notanarch'.*does not support"),
        ("clip", None, "multimodal projector"),
        ("llama", "adapter", "LoRA adapter"),
    ],
)
def test_files_that_are_not_loadable_models(tmp_path: Path, arch: str, general_type: str | None, message: str) -> None:
    path = make_gguf(tmp_path / "x.gguf", arch=arch, general_type=general_type, tensor_bytes=4096)
    assert read_gguf_info(path).architecture == arch  # the header itself is fine
    with pytest.raises(InvalidModelError, match=message):
        validate_gguf(path)


def test_structural_errors() -> None:
    w = _tensor("w", [8, 4])
    data = b"\0" * 128
    cases = {
        "no general.architecture": raw_gguf([_kv_u32("x.y", 1)], [w], data),
        "appears twice": raw_gguf([_kv_str("a", "1"), _kv_str("a", "2")]),
        "is empty": raw_gguf([_kv_str("", "1")]),
        "invalid value type 13": raw_gguf([_s("k") + struct.pack("<I", 13)]),
        "invalid element type 9": raw_gguf([_s("k") + struct.pack("<IIQ", 9, 9, 1)]),
        "alignment must be a uint32": raw_gguf([_s("general.alignment") + struct.pack("<IQ", 10, 32)]),
        "not a power of 2": raw_gguf([_kv_u32("general.alignment", 24)]),
        "5 dimensions": raw_gguf([_kv_str("general.architecture", "llama")], [_tensor("w", [1, 1, 1, 1, 1])]),
        "negative dimension": raw_gguf([_kv_str("general.architecture", "llama")], [_tensor("w", [-8])]),
        "unknown ggml type 4": raw_gguf([_kv_str("general.architecture", "llama")], [_tensor("w", [8], 4)]),
        "not a multiple": raw_gguf([_kv_str("general.architecture", "llama")], [_tensor("w", [33], 2)], data),
        "has offset 64, expected 0": raw_gguf([_kv_str("general.architecture", "llama")], [_tensor("w", [8], 0, 64)]),
        "name 'w' appears twice": raw_gguf(
            [_kv_str("general.architecture", "llama")], [_tensor("w", [8]), _tensor("w", [8], 0, 32)], data
        ),
        "longer than 63": raw_gguf([_kv_str("general.architecture", "llama")], [_tensor("x" * 64, [8])], data),
        "overflows int64": raw_gguf([_kv_str("general.architecture", "llama")], [_tensor("w", [2**62, 4])]),
    }
    for message, blob in cases.items():
        with pytest.raises(InvalidModelError, match=message):
            validate_gguf_bytes(blob, label="case")
    assert validate_gguf_bytes(minimal()).tensor_count == 1


def test_hostile_counts_are_bounded() -> None:
    """Lengths and counts from the file cannot make the reader allocate or loop without bound."""
    huge = 2**63
    cases = [
        raw_gguf([], n_kv=huge),
        raw_gguf([], n_kv=MAX_KV + 1),
        raw_gguf([], n_tensors=MAX_TENSORS + 1),
        raw_gguf([struct.pack("<Q", huge) + b"k"]),  # key length
        raw_gguf([_s("k") + struct.pack("<IQ", 8, 2**40)]),  # string value length
        raw_gguf([_s("k") + struct.pack("<IIQ", 9, 8, 2**40)]),  # string array length
        raw_gguf([_s("k") + struct.pack("<IIQ", 9, 10, 2**61)]),  # uint64 array length
        raw_gguf([_s("k") + struct.pack("<IIQ", 9, 8, 3) + struct.pack("<Q", 2**62)]),  # one string in an array
    ]
    for blob in cases:
        with pytest.raises(InvalidModelError):
            validate_gguf_bytes(blob)


# -- fuzz: any bytes give GGUFInfo or InvalidModelError -----------------------------------------------
_SEED = minimal()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    for blob in (data, b"GGUF" + data, _SEED[:24] + data):
        try:
            validate_gguf_bytes(blob)
        except InvalidModelError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(_SEED) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, len(_SEED)),
)
def test_fuzz_mutated_valid_file(flips: list[tuple[int, int]], cut: int) -> None:
    blob = bytearray(_SEED)
    for pos, value in flips:
        blob[pos] = value
    for candidate in (bytes(blob), bytes(blob[:cut])):
        try:
            info = validate_gguf_bytes(candidate)
        except InvalidModelError:
            continue
        assert info.tensor_count >= 1 and info.data_offset + info.data_size <= len(candidate)


def test_split_models(tmp_path: Path) -> None:
    first = make_gguf(tmp_path / "big.gguf", split=True, n_tensors=3, tensor_bytes=64 << 10)
    assert first.name == "big-00001-of-00003.gguf"
    assert validate_gguf(first).metadata["split.count"] == 3
    with pytest.raises(InvalidModelError, match="part 2 of 3 of a split model; pass the first part"):
        validate_gguf(tmp_path / "big-00002-of-00003.gguf")
    last = tmp_path / "big-00003-of-00003.gguf"
    last.write_bytes(last.read_bytes()[:-10])
    with pytest.raises(InvalidModelError, match="big-00003-of-00003.gguf is truncated"):
        validate_gguf(first)
    last.unlink()
    with pytest.raises(InvalidModelError, match="big-00003-of-00003.gguf is missing"):
        validate_gguf(first)
    renamed = first.rename(tmp_path / "renamed.gguf")
    with pytest.raises(InvalidModelError, match="cannot find the other parts"):
        validate_gguf(renamed)
