"""A small, bounded GGUF header reader: is this file a model llama-server can load?

Pure Python (``struct``), no numpy and no ``gguf`` package. It reads the header, the
metadata and the tensor table, never the tensor data, and checks what llama.cpp's
``gguf_init_from_file`` checks (ggml/src/gguf.cpp), plus the file length, so a truncated
download is caught here and not as a server crash. Every count and length read from the
file is bounded, so any bytes give either a :class:`GGUFInfo` or an
:class:`~llcuda.errors.InvalidModelError`, quickly and in bounded memory.

The supported architectures and tensor types come from the pinned llama.cpp source, via
``scripts/gen_gguf_data.py`` → ``gguf_data.json``.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO, Union

from llcuda.errors import InvalidModelError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_KV = 1 << 16  # real models have a few dozen keys
MAX_TENSORS = 1 << 20  # the largest MoE models have tens of thousands
MAX_KEY_LEN = 1 << 16
MAX_STRING_LEN = 1 << 26  # 64 MiB: chat templates are kilobytes
MAX_STRING_ARRAY_LEN = 1 << 24  # vocabularies hold ~260k tokens
MAX_TENSOR_NAME_LEN = 63  # GGML_MAX_NAME - 1
MAX_DIMS = 4  # GGML_MAX_DIMS
INT64_MAX = (1 << 63) - 1

# GGUF value types: code -> (struct format or None, size in bytes)
_STRING, _ARRAY = 8, 9
_SCALARS = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_TYPE_NAMES = {
    0: "uint8",
    1: "int8",
    2: "uint16",
    3: "int16",
    4: "uint32",
    5: "int32",
    6: "float32",
    7: "bool",
    8: "string",
    9: "array",
    10: "uint64",
    11: "int64",
    12: "float64",
}
_U64 = struct.Struct("<Q")
_CHUNK = 1 << 20
_FIX = "Download it again, or convert it with a current llama.cpp (convert_hf_to_gguf.py)."

StrPath = Union[str, "os.PathLike[str]"]


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    return json.loads((Path(__file__).with_name("gguf_data.json")).read_text())


def supported_architectures() -> frozenset[str]:
    """Architectures the pinned llama.cpp build can load (from src/llama-arch.cpp)."""
    return frozenset(_data()["architectures"])


def file_type_name(file_type: int | None) -> str | None:
    """``general.file_type`` as a name like ``Q4_K_M`` (None when unknown)."""
    return None if file_type is None else _data()["file_types"].get(str(file_type))


@dataclass(frozen=True)
class ArrayValue:
    """A metadata array: only its element type and length are kept."""

    type: str
    length: int


@dataclass(frozen=True)
class GGUFInfo:
    """What the header of a GGUF file says. ``metadata`` holds scalars and strings; arrays
    appear as :class:`ArrayValue`."""

    path: Path | None
    file_size: int
    version: int
    tensor_count: int
    kv_count: int
    alignment: int
    data_offset: int
    data_size: int
    parameter_count: int
    architecture: str | None
    name: str | None
    general_type: str | None
    file_type: int | None
    file_type_name: str | None
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    vocab_size: int | None
    chat_template: str | None = field(default=None, repr=False)
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    tensor_types: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)
    """Elements (parameters) per ggml tensor type, e.g. ``{"Q4_K": 1.2e8, "F32": 3e4}``."""

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    @property
    def architecture_supported(self) -> bool:
        return self.architecture in supported_architectures()


class _Reader:
    """Sequential little-endian reads that never run past the end of the file."""

    def __init__(self, fh: BinaryIO, size: int, label: str) -> None:
        self.fh, self.size, self.label, self.pos = fh, size, label, 0

    def fail(self, problem: str) -> InvalidModelError:
        return InvalidModelError(f"{self.label}: {problem}. {_FIX}")

    def truncated(self, what: str) -> InvalidModelError:
        return InvalidModelError(
            f"{self.label} is truncated: it ends at byte {self.size} while reading {what}. "
            "It is an incomplete or damaged download; delete it and download it again."
        )

    def read(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise self.truncated(what)
        data = self.fh.read(n)
        if len(data) != n:  # the file shrank while we read it
            raise self.fail(f"short read at byte {self.pos} while reading {what}")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.truncated(what)
        self.fh.seek(n, io.SEEK_CUR)
        self.pos += n

    def skip_strings(self, n: int, what: str) -> None:
        """Skip ``n`` length-prefixed strings, parsing them a chunk at a time (vocabularies are big)."""
        done = 0
        while done < n:
            start = self.pos
            chunk = self.fh.read(min(_CHUNK, self.size - start))
            off = 0
            while done < n and off + 8 <= len(chunk):
                length = _U64.unpack_from(chunk, off)[0]
                if length > len(chunk) - off - 8:
                    break
                off += 8 + length
                done += 1
            self.fh.seek(start + off)
            self.pos = start + off
            if off == 0:  # a string longer than the chunk, or past the end of the file
                self.skip(self.u64(f"the length of string {done} of {what}"), f"string {done} of {what}")
                done += 1

    def unpack(self, fmt: str, size: int, what: str) -> Any:
        return struct.unpack(fmt, self.read(size, what))[0]

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", 8, what))

    def string(self, what: str, limit: int) -> str:
        n = self.u64(f"the length of {what}")
        if n > limit:
            raise self.fail(f"{what} claims {n} bytes (limit {limit})")
        return self.read(n, what).decode("utf-8", errors="replace")


def _read_value(r: _Reader, vtype: int, key: str) -> Any:
    if vtype in _SCALARS:
        fmt, size = _SCALARS[vtype]
        return r.unpack(fmt, size, f"the value of {key!r}")
    if vtype == _STRING:
        return r.string(f"the value of {key!r}", MAX_STRING_LEN)
    if vtype != _ARRAY:
        raise r.fail(f"key {key!r} has invalid value type {vtype}")
    etype = r.u32(f"the element type of {key!r}")
    n = r.u64(f"the length of {key!r}")
    if etype in _SCALARS:
        size = _SCALARS[etype][1]
        if n > (r.size - r.pos) // size:
            raise r.truncated(f"the {n} elements of {key!r}")
        r.skip(n * size, f"the elements of {key!r}")
    elif etype == _STRING:
        if n > MAX_STRING_ARRAY_LEN or n > (r.size - r.pos) // 8:
            raise r.fail(f"array {key!r} claims {n} strings, more than the file can hold")
        r.skip_strings(n, repr(key))
    else:
        raise r.fail(f"array {key!r} has invalid element type {etype}")
    return ArrayValue(_TYPE_NAMES[etype], n)


def _ggml_types() -> dict[str, Any]:
    return _data()["ggml_types"]


def _parse(fh: BinaryIO, size: int, label: str, path: Path | None) -> GGUFInfo:
    r = _Reader(fh, size, label)
    magic = fh.read(4)
    r.pos = len(magic)
    if magic != GGUF_MAGIC:
        raise InvalidModelError(
            f"{label} is not a GGUF file (it starts with {magic!r}, not b'GGUF'). "
            "llama.cpp only loads GGUF models: download a .gguf file, or convert this model with "
            "llama.cpp's convert_hf_to_gguf.py."
        )
    version = r.u32("the GGUF version")
    if version not in SUPPORTED_VERSIONS:
        if version and not version & 0xFFFF:
            raise r.fail(f"GGUF version {version:#x} looks byte-swapped (a big-endian file?)")
        hint = " (GGUFv1 is no longer supported)" if version == 1 else ""
        raise r.fail(f"unsupported GGUF version {version}{hint}; llama.cpp reads versions 2 and 3")
    n_tensors = r.u64("the tensor count")
    n_kv = r.u64("the metadata count")
    if n_tensors > MAX_TENSORS:
        raise r.fail(f"the header claims {n_tensors} tensors (limit {MAX_TENSORS})")
    if n_kv > MAX_KV:
        raise r.fail(f"the header claims {n_kv} metadata entries (limit {MAX_KV})")

    meta: dict[str, Any] = {}
    kv_types: dict[str, int] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key {i}", MAX_KEY_LEN)
        if not key:
            raise r.fail(f"metadata key {i} is empty")
        if key in meta:
            raise r.fail(f"metadata key {key!r} appears twice")
        kv_types[key] = r.u32(f"the type of {key!r}")
        meta[key] = _read_value(r, kv_types[key], key)

    alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in meta and kv_types["general.alignment"] != 4:
        raise r.fail("general.alignment must be a uint32")
    if alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"alignment {alignment} is not a power of 2")

    types = _ggml_types()
    names: set[str] = set()
    data_size = 0
    params = 0
    by_type: dict[str, int] = {}
    for i in range(n_tensors):
        name = r.string(f"the name of tensor {i}", MAX_KEY_LEN)
        if len(name.encode("utf-8", errors="replace")) > MAX_TENSOR_NAME_LEN:
            raise r.fail(f"tensor {i} has a name longer than {MAX_TENSOR_NAME_LEN} bytes")
        if name in names:
            raise r.fail(f"tensor name {name!r} appears twice")
        names.add(name)
        n_dims = r.u32(f"the dimensions of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        dims = [int(r.unpack("<q", 8, f"the shape of tensor {name!r}")) for _ in range(n_dims)]
        if any(d < 0 for d in dims):
            raise r.fail(f"tensor {name!r} has a negative dimension {dims}")
        nelements = 1
        for d in dims:
            nelements *= d
        if nelements > INT64_MAX:
            raise r.fail(f"tensor {name!r} shape {dims} overflows int64")
        ttype = r.u32(f"the type of tensor {name!r}")
        info = types.get(str(ttype))
        if info is None:
            raise r.fail(f"tensor {name!r} has unknown ggml type {ttype}")
        row = dims[0] if dims else 1
        if row % info["block_size"]:
            raise r.fail(f"tensor {name!r} rows of {row} are not a multiple of the {info['name']} block size")
        offset = r.u64(f"the offset of tensor {name!r}")
        if offset != data_size:
            raise r.fail(f"tensor {name!r} has offset {offset}, expected {data_size}")
        nbytes = nelements // info["block_size"] * info["type_size"]
        data_size += -(-nbytes // alignment) * alignment
        params += nelements
        by_type[info["name"]] = by_type.get(info["name"], 0) + nelements

    data_offset = -(-r.pos // alignment) * alignment if n_tensors else r.pos
    if data_offset + data_size > size:
        raise InvalidModelError(
            f"{label} is truncated: its tensors need {data_offset + data_size} bytes but the file has "
            f"{size}. It is an incomplete or damaged download; delete it and download it again."
        )

    def _int(key: str) -> int | None:
        value = meta.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _str(key: str) -> str | None:
        value = meta.get(key)
        return value if isinstance(value, str) else None

    arch = _str("general.architecture")
    tokens = meta.get("tokenizer.ggml.tokens")
    file_type = _int("general.file_type")
    return GGUFInfo(
        path=path,
        file_size=size,
        version=version,
        tensor_count=n_tensors,
        kv_count=n_kv,
        alignment=alignment,
        data_offset=data_offset,
        data_size=data_size,
        parameter_count=params,
        architecture=arch,
        name=_str("general.name"),
        general_type=_str("general.type"),
        file_type=file_type,
        file_type_name=file_type_name(file_type),
        context_length=_int(f"{arch}.context_length") if arch else None,
        embedding_length=_int(f"{arch}.embedding_length") if arch else None,
        block_count=_int(f"{arch}.block_count") if arch else None,
        vocab_size=tokens.length if isinstance(tokens, ArrayValue) else None,
        chat_template=_str("tokenizer.chat_template"),
        metadata=MappingProxyType(meta),
        tensor_types=MappingProxyType(by_type),
    )


def _guarded(fh: BinaryIO, size: int, label: str, path: Path | None) -> GGUFInfo:
    try:
        return _parse(fh, size, label, path)
    except InvalidModelError:
        raise
    except (struct.error, OverflowError, ValueError, KeyError, TypeError, MemoryError) as exc:
        # Every check above should have caught bad input first; this keeps the promise anyway.
        raise InvalidModelError(f"{label}: unreadable GGUF header ({type(exc).__name__}: {exc}). {_FIX}") from None


def read_gguf_info(path: StrPath) -> GGUFInfo:
    """Parse the header of a GGUF file (no model checks; vocab-only files pass).

    Raises :class:`ModelNotFoundError` when the file is missing and
    :class:`InvalidModelError` for anything else wrong with it.
    """
    p = Path(os.fspath(path)).expanduser()
    try:
        with p.open("rb", buffering=1 << 20) as fh:
            size = os.fstat(fh.fileno()).st_size
            return _guarded(fh, size, str(p), p)
    except FileNotFoundError:
        raise ModelNotFoundError(f"Model file {p} does not exist. Check the path.") from None
    except IsADirectoryError:
        raise InvalidModelError(f"{p} is a directory, not a GGUF file. Pass the path of the .gguf file.") from None
    except OSError as exc:
        raise InvalidModelError(f"{p} cannot be read ({exc.strerror or exc}). Check its permissions.") from None


TOKENS_KEY = "tokenizer.ggml.tokens"


def _token_texts(r: _Reader, n_kv: int, ids: set[int]) -> dict[int, str]:
    for i in range(n_kv):
        key = r.string(f"metadata key {i}", MAX_KEY_LEN)
        vtype = r.u32(f"the type of {key!r}")
        if key != TOKENS_KEY:
            _read_value(r, vtype, key)
            continue
        etype = r.u32(f"the element type of {key!r}") if vtype == _ARRAY else None
        if etype != _STRING:
            raise r.fail(f"{key!r} is not an array of strings")
        n = r.u64(f"the length of {key!r}")
        if n > MAX_STRING_ARRAY_LEN:
            raise r.fail(f"array {key!r} claims {n} strings (limit {MAX_STRING_ARRAY_LEN})")
        texts: dict[int, str] = {}
        last = min(max(ids), n - 1)
        for token in range(last + 1):
            if token in ids:
                texts[token] = r.string(f"token {token}", MAX_STRING_LEN)
            else:
                r.skip(r.u64(f"the length of token {token}"), f"token {token}")
        return texts
    return {}


def read_token_texts(path: StrPath, token_ids: Iterable[int]) -> dict[int, str]:
    """The text of some tokens of a GGUF file's vocabulary (``tokenizer.ggml.tokens``), by id.

    Ids outside the vocabulary are left out, as are all where the file has no vocabulary. Special
    tokens (BOS, EOS, ``<|im_start|>``) are stored as the text that stands for them in a prompt.
    Raises what :func:`read_gguf_info` raises.
    """
    ids = {int(i) for i in token_ids if int(i) >= 0}
    p = Path(os.fspath(path)).expanduser()
    info = read_gguf_info(p)  # checks the whole header first
    if not ids:
        return {}
    with p.open("rb", buffering=1 << 16) as fh:
        r = _Reader(fh, info.file_size, str(p))
        fh.seek(24)  # magic, version, tensor count, metadata count
        r.pos = 24
        try:
            return _token_texts(r, info.kv_count, ids)
        except (struct.error, OverflowError, ValueError) as exc:
            raise InvalidModelError(f"{p}: unreadable vocabulary ({type(exc).__name__}: {exc}). {_FIX}") from None


def _check_model(info: GGUFInfo, label: str) -> GGUFInfo:
    excluded = _data()["excluded_architectures"]
    if info.general_type == "adapter":
        raise InvalidModelError(
            f"{label} is a LoRA adapter, not a model. Load a base model and pass the adapter to "
            "llama-server with --lora."
        )
    if info.architecture in excluded:
        raise InvalidModelError(f"{label} is {excluded[info.architecture]}.")
    if info.tensor_count == 0:
        raise InvalidModelError(
            f"{label} holds no tensors (a vocabulary-only file?), so there are no weights to load. "
            "Use a complete model file."
        )
    if info.architecture is None:
        raise InvalidModelError(f"{label} has no general.architecture string, so llama.cpp cannot load it. {_FIX}")
    if not info.architecture_supported:
        build = _data().get("llama_cpp_build")
        raise InvalidModelError(
            f"{label} uses architecture {info.architecture!r}, which llama.cpp b{build} (the build llcuda "
            f"uses) does not support. Use a model of a supported architecture (e.g. llama, gemma3, qwen3), "
            "or a newer llcuda."
        )
    return info


_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf")


def split_paths(path: Path) -> list[Path] | None:
    """All parts of a split model named like llama.cpp's ``<name>-00001-of-00003.gguf`` (else None)."""
    m = _SPLIT_NAME.match(path.name)
    if not m or int(m["count"]) < 1:
        return None
    count = int(m["count"])
    return [path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def _check_splits(info: GGUFInfo, label: str) -> None:
    count = info.metadata.get("split.count")
    if not isinstance(count, int) or count <= 1 or info.path is None:
        return
    parts = split_paths(info.path)
    if parts is None or len(parts) != count:
        raise InvalidModelError(
            f"{label} is the first of {count} parts of a split model, but its name does not end in "
            f"-00001-of-{count:05d}.gguf, so llama.cpp cannot find the other parts. Keep the original file names."
        )
    for part in parts[1:]:
        if not part.is_file():
            raise InvalidModelError(
                f"{label} is part 1 of {count} of a split model, and {part} is missing. "
                "Put every part in the same folder."
            )
        read_gguf_info(part)  # truncated or damaged parts are reported by name


def validate_gguf(path: StrPath) -> GGUFInfo:
    """Check that ``path`` is a GGUF model llama-server can load; return its header info.

    Checks the magic, version, metadata and tensor table (bounded, as llama.cpp does), that the
    file is not truncated, that it holds tensors, that its architecture is supported by the
    pinned llama.cpp, and for the first part of a split model that the other parts are there
    and whole. Raises :class:`InvalidModelError` naming the file and the problem.
    """
    info = read_gguf_info(path)
    number, count = info.metadata.get("split.no", 0), info.metadata.get("split.count", 1)
    if isinstance(number, int) and isinstance(count, int) and number > 0:
        raise InvalidModelError(
            f"{info.path} is part {number + 1} of {count} of a split model; pass the first part "
            f"(the file ending in -00001-of-{count:05d}.gguf)."
        )
    _check_model(info, str(info.path))
    _check_splits(info, str(info.path))
    return info


def validate_gguf_bytes(data: bytes, *, label: str = "<bytes>", require_model: bool = True) -> GGUFInfo:
    """:func:`validate_gguf` for bytes in memory (handy for fuzzing); ``label`` names them in errors."""
    view = bytes(data)
    info = _guarded(io.BytesIO(view), len(view), label, None)
    return _check_model(info, label) if require_model else info
