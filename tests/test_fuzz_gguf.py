"""Structure-aware fuzzing of the GGUF header check (llcuda.models.gguf), with hypothesis.

tests/test_models_gguf.py fuzzes random bytes and bit flips of one small file. Here hypothesis
builds *well-formed* GGUF files of every shape (all value types, arrays of scalars and strings,
several tensors of several types, custom alignment), checks them against the reference reader
(gguf-py), then makes them lie: counts and lengths replaced by hostile 64-bit values, cuts at any
byte, overwritten bytes. Whatever the bytes, the check returns a GGUFInfo that is consistent with
the file or raises InvalidModelError: nothing else escapes, in memory or through a file.
Examples are bounded (settings below) so the suite stays fast.
"""

from __future__ import annotations

import random
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llcuda.errors import InvalidModelError
from llcuda.models import read_gguf_info, validate_gguf, validate_gguf_bytes

SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
STRING, ARRAY = 8, 9
TENSOR_TYPES = [
    gguf.GGMLQuantizationType.F32,
    gguf.GGMLQuantizationType.F16,
    gguf.GGMLQuantizationType.Q8_0,
    gguf.GGMLQuantizationType.Q4_0,
]


def _s(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def _scalar(vtype: int) -> st.SearchStrategy[bytes]:
    fmt = SCALARS[vtype]
    if fmt in ("<f", "<d"):
        values = st.floats(allow_nan=False, width=32 if fmt == "<f" else 64)
    elif fmt == "<?":
        values = st.booleans()
    else:
        bits = struct.calcsize(fmt) * 8
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if fmt.islower() else (0, (1 << bits) - 1)
        values = st.integers(low, high)
    return values.map(lambda v: struct.pack(fmt, v))


TEXT = st.text(max_size=24).map(lambda t: t.encode())


@st.composite
def kv_value(draw) -> tuple[int, bytes]:
    vtype = draw(st.sampled_from([*SCALARS, STRING, ARRAY]))
    if vtype in SCALARS:
        return vtype, draw(_scalar(vtype))
    if vtype == STRING:
        return vtype, _s(draw(TEXT))
    etype = draw(st.sampled_from([*SCALARS, STRING]))
    items = draw(st.lists(TEXT.map(_s) if etype == STRING else _scalar(etype), max_size=40))
    return vtype, struct.pack("<IQ", etype, len(items)) + b"".join(items)


@st.composite
def gguf_file(draw) -> bytes:
    """A well-formed GGUF file: metadata of every type, tensors with correct offsets and padding."""
    keys = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True), max_size=8, unique=True))
    keys = [k for k in keys if k != "general.alignment"]
    alignment = draw(st.sampled_from([None, 8, 64, 256]))
    kvs = [_s(k.encode()) + struct.pack("<I", t) + v for k in keys for t, v in [draw(kv_value())]]
    if draw(st.booleans()):
        kvs.append(_s(b"general.architecture") + struct.pack("<I", STRING) + _s(b"llama"))
    if alignment:
        kvs.append(_s(b"general.alignment") + struct.pack("<II", 4, alignment))
    align = alignment or 32
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_.]{0,30}", fullmatch=True), max_size=5, unique=True))
    infos, offset = [], 0
    for name in names:
        ttype = draw(st.sampled_from(TENSOR_TYPES))
        block, type_size = gguf.GGML_QUANT_SIZES[ttype]
        dims = [block * draw(st.integers(1, 4))] + draw(st.lists(st.integers(1, 3), max_size=3))
        count = 1
        for d in dims:
            count *= d
        infos.append(
            _s(name.encode())
            + struct.pack("<I", len(dims))
            + b"".join(struct.pack("<Q", d) for d in dims)
            + struct.pack("<IQ", int(ttype), offset)
        )
        offset += -(-(count // block * type_size) // align) * align
    head = b"GGUF" + struct.pack("<IQQ", draw(st.sampled_from([2, 3])), len(infos), len(kvs))
    body = head + b"".join(kvs) + b"".join(infos)
    if infos:
        body += b"\0" * (-len(body) % align) + b"\x01" * offset
    return body


@st.composite
def lying_file(draw) -> bytes:
    """A well-formed file, then lies: hostile u64s where counts and lengths live, cuts, overwrites."""
    blob = bytearray(draw(gguf_file()))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["u64", "u32", "cut", "bytes"]))
        pos = draw(st.integers(0, max(len(blob) - 1, 0)))
        if kind == "u64":
            value = draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]))
            blob[pos : pos + 8] = struct.pack("<Q", value)
        elif kind == "u32":
            blob[pos : pos + 4] = struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
        elif kind == "cut":
            del blob[pos:]
        else:
            blob[pos : pos + 4] = draw(st.binary(min_size=1, max_size=4))
    return bytes(blob)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="llcuda-fuzz-") as folder:
        yield Path(folder) / "fuzz.gguf"


def _consistent(info, blob: bytes) -> None:
    assert info.file_size == len(blob)
    assert info.data_offset + info.data_size <= len(blob)
    assert info.data_offset % info.alignment == 0 or info.tensor_count == 0
    assert info.kv_count == len(info.metadata)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=gguf_file())
def test_well_formed_files_agree_with_the_reference_reader(blob, scratch):
    scratch.write_bytes(blob)
    info = read_gguf_info(scratch)
    ref = gguf.GGUFReader(str(scratch))
    _consistent(info, blob)
    assert info.kv_count == len([f for f in ref.fields if not f.startswith("GGUF.")])
    assert info.tensor_count == len(ref.tensors)
    if ref.tensors:
        assert info.data_offset == ref.data_offset
        assert info.data_size + info.data_offset <= len(blob)
    for key, field in ref.fields.items():
        if not key.startswith("GGUF.") and field.types == [gguf.GGUFValueType.STRING]:
            assert info.metadata[key] == field.contents()
    assert validate_gguf_bytes(blob, require_model=False) == info.__class__(**{**info.__dict__, "path": None})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=lying_file())
def test_lying_files_give_info_or_invalid_model_error(blob, scratch):
    try:
        info = validate_gguf_bytes(blob, require_model=False)
    except InvalidModelError:
        info = None
    if info is not None:
        _consistent(info, blob)
    scratch.write_bytes(blob)  # the same bytes through the file reader (buffered, chunked string arrays)
    try:
        from_file = read_gguf_info(scratch)
    except InvalidModelError:
        from_file = None
    assert (from_file is None) == (info is None)
    if from_file is not None:
        assert from_file.tensor_count == info.tensor_count and from_file.data_offset == info.data_offset
    try:
        validate_gguf(scratch)
    except InvalidModelError:
        pass


def test_cut_anywhere_inside_a_large_vocabulary_is_reported(tmp_path):
    """String arrays are skipped a 1 MiB chunk at a time; a cut inside one, across chunk edges, is caught."""
    rng = random.Random(6)
    tokens = [bytes(rng.randrange(32, 127) for _ in range(rng.randrange(0, 40))) for _ in range(90_000)]
    array = struct.pack("<IQ", STRING, len(tokens)) + b"".join(_s(t) for t in tokens)
    kvs = [
        _s(b"general.architecture") + struct.pack("<I", STRING) + _s(b"llama"),
        _s(b"tokenizer.ggml.tokens") + struct.pack("<I", ARRAY) + array,
    ]
    blob = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)
    assert len(array) > 2 << 20
    whole = tmp_path / "vocab.gguf"
    whole.write_bytes(blob)
    assert read_gguf_info(whole).vocab_size == len(tokens)
    cut = tmp_path / "cut.gguf"
    for end in sorted(rng.sample(range(60, len(blob) - 1), 12)) + [(1 << 20) + 7, (2 << 20) - 3]:
        cut.write_bytes(blob[:end])
        with pytest.raises(InvalidModelError, match="truncated|more than the file can hold"):
            read_gguf_info(cut)
