"""GGUF models with random weights and a real tokenizer, for benchmarks and tests.

Two ways to shape one:

* a preset Llama shape (:data:`PRESETS`), the tokenizer and its metadata copied from one of llama.cpp's
  vocab-only GGUFs (``models/ggml-vocab-*.gguf`` in its source tree):

  * ``tiny``     — 2 layers, 64 wide, llama-spm vocabulary: ~4.5 MB, loads in a fraction of a second
  * ``llama-1b`` — the Llama-3.2-1B shape (16 layers, 2048 wide, GQA 32/8, llama-bpe vocabulary)

* the shape of another GGUF (:func:`write_like`): every metadata key and value (tokenizer included) and
  every tensor's name and shape of a real file or of a *skeleton* of one (:func:`make_skeleton`: the
  header, metadata and tensor list without tensor data, gzip-compressed: Gemma-3-270M's is ~3 MB
  instead of 253 MB).

Weights are seeded random numbers written as f16 (f32 for 1-D tensors, norms = 1); ``llama-quantize``
then gives the type mix of a real file quantized the same way. :func:`random_model` does all of it for
the names the benchmark accepts (``random-1b``: the 1B shape as Q4_K_M) and keeps the result in the
model cache::

    <LLCUDA_HOME>/models/random/random-1b.gguf        (listed by `llcuda models list` as random-1b)

Needs the ``gguf`` and ``numpy`` packages: ``pip install 'llcuda[bench]'``.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llcuda import config
from llcuda.errors import LlcudaError, ModelNotFoundError, OfflineModeError

if TYPE_CHECKING:
    from llcuda.system.binaries import Binaries

log = logging.getLogger(__name__)

# A plain template that any chat test can rely on (the vocab files carry none).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SKELETON_KEY = "llcuda.skeleton.tensors"  # JSON [[name, [ne0, ne1, ...], ggml type name], ...]
NEEDS_GGUF = "Random-weight models need the gguf and numpy packages: pip install 'llcuda[bench]'."


@dataclass(frozen=True)
class Shape:
    vocab: str  # ggml-vocab-<vocab>.gguf
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    context_length: int
    rope_theta: float = 10000.0


PRESETS = {
    "tiny": Shape("llama-spm", n_layer=2, n_embd=64, n_ff=128, n_head=4, n_head_kv=2, context_length=4096),
    "llama-1b": Shape(
        "llama-bpe",
        n_layer=16,
        n_embd=2048,
        n_ff=8192,
        n_head=32,
        n_head_kv=8,
        context_length=131072,
        rope_theta=500000.0,
    ),
}


@dataclass(frozen=True)
class RandomModel:
    """A model name the benchmark accepts: a preset, quantized with llama-quantize (None: left f16)."""

    preset: str
    quant: str | None


RANDOM_MODELS = {
    "random-1b": RandomModel("llama-1b", "Q4_K_M"),
    "random-tiny": RandomModel("tiny", None),
}


@dataclass(frozen=True)
class VocabFile:
    """One vocab-only GGUF of llama.cpp's source tree, pinned by size and sha256."""

    size: int
    sha256: str


# The copies in llama.cpp's tree at the build llcuda pins; downloaded from there when no local tree has them.
VOCAB_TAG = "b11434"
VOCAB_URL = "https://raw.githubusercontent.com/ggml-org/llama.cpp/{tag}/models/ggml-vocab-{name}.gguf"
VOCABS = {
    "llama-bpe": VocabFile(7818140, "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e"),
    "llama-spm": VocabFile(723869, "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69"),
}


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
        import numpy  # noqa: F401
    except ImportError:
        raise LlcudaError(NEEDS_GGUF) from None


# -- vocab files -----------------------------------------------------------------------------------
def vocab_file(name: str, vocab_dir: Path | None = None, *, offline: bool | None = None) -> Path:
    """``ggml-vocab-<name>.gguf``: from ``vocab_dir``, else a llama.cpp source tree in llcuda's cache
    (``<LLCUDA_HOME>/src/llama.cpp-*/models``, where a source build puts it), else downloaded once from
    llama.cpp's repository into ``<LLCUDA_HOME>/vocab`` (verified by its pinned sha256).

    Raises :class:`ModelNotFoundError` when ``vocab_dir`` lacks it or the name is unknown,
    :class:`OfflineModeError` when a download is needed in offline mode, and the download errors.
    """
    filename = f"ggml-vocab-{name}.gguf"
    if vocab_dir is not None:
        path = Path(vocab_dir).expanduser() / filename
        if not path.is_file():
            raise ModelNotFoundError(f"{path} does not exist. Pass llama.cpp's models/ folder as the vocab folder.")
        return path
    for tree in sorted((config.home_dir() / "src").glob("llama.cpp-*/models"), reverse=True):
        if (tree / filename).is_file():
            return tree / filename
    pinned = VOCABS.get(name)
    if pinned is None:
        raise ModelNotFoundError(f"No pinned copy of {filename}; pass llama.cpp's models/ folder as the vocab folder.")
    dest = config.home_dir() / "vocab" / filename
    if dest.is_file() and dest.stat().st_size == pinned.size:
        return dest
    url = VOCAB_URL.format(tag=VOCAB_TAG, name=name)
    if config.offline(offline):
        raise OfflineModeError(
            f"{filename} is needed to make a random model and offline mode is on. Download {url} "
            "and pass its folder as the vocab folder, or turn offline mode off."
        )
    from llcuda.models.download import fetch

    log.info("downloading %s", url)
    fetch(url, dest, sha256=pinned.sha256, size=pinned.size, what=filename)
    return dest


# -- writers ---------------------------------------------------------------------------------------
def copy_field(writer: Any, key: str, field: Any, values: Any = None) -> None:
    """Copy one metadata field with its exact GGUF value type (and element type for arrays)."""
    from gguf import GGUFValueType

    vtype = GGUFValueType(field.types[0])
    if vtype == GGUFValueType.ARRAY:
        sub = GGUFValueType(field.types[1])
        if sub == GGUFValueType.ARRAY:
            raise LlcudaError(f"{key}: nested metadata arrays are not supported; use another file as the model.")
        if values is None:
            values = (
                [bytes(field.parts[i]) for i in field.data]
                if sub == GGUFValueType.STRING
                else [field.parts[i].tolist()[0] for i in field.data]
            )
        writer.add_key_value(key, values, vtype, sub_type=sub)
    elif vtype == GGUFValueType.STRING:
        writer.add_key_value(key, bytes(field.parts[field.data[0]]), vtype)
    else:
        writer.add_key_value(key, field.parts[field.data[0]].tolist()[0] if values is None else values, vtype)


def _write_tensors(writer: Any, plan: list[tuple[str, tuple[int, ...]]], seed: int, dtype: str = "f16") -> None:
    """Declare every tensor, write the header, then the data one tensor at a time (low peak memory).

    1-D tensors (norms) are f32 ones; the rest N(0, 0.02) in ``dtype``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    matrix_type = np.dtype(np.float16 if dtype == "f16" else np.float32)
    for name, shape in plan:  # shape in numpy order
        kind = np.dtype(np.float32) if len(shape) == 1 else matrix_type
        writer.add_tensor_info(name, shape, kind, int(np.prod(shape)) * kind.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _name, shape in plan:
        if len(shape) == 1:
            writer.write_tensor_data(np.ones(shape, dtype=np.float32))
        else:
            writer.write_tensor_data((rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(matrix_type))
    writer.close()


def write_model(out: Path, vocab_dir: Path, shape: Shape, seed: int = 0, dtype: str = "f16") -> Path:
    """A Llama of ``shape``, the tokenizer of ``vocab_dir/ggml-vocab-<shape.vocab>.gguf``; returns ``out``."""
    _require_gguf()
    from gguf import GGUFReader, GGUFWriter

    reader = GGUFReader(vocab_file(shape.vocab, Path(vocab_dir)))
    head_dim = shape.n_embd // shape.n_head
    n_embd_kv = head_dim * shape.n_head_kv
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)

    partial = out.with_name(out.name + ".incomplete")
    writer = GGUFWriter(str(partial), "llama")
    writer.add_name(f"llcuda-random-{shape.n_layer}L-{shape.n_embd}")
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(1 if dtype == "f16" else 0)
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            copy_field(writer, key, field)
    if "tokenizer.chat_template" not in reader.fields:
        writer.add_chat_template(CHAT_TEMPLATE)

    e, kv, ff = shape.n_embd, n_embd_kv, shape.n_ff
    plan: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (n_vocab, e))]
    for i in range(shape.n_layer):
        plan += [
            (f"blk.{i}.attn_norm.weight", (e,)),
            (f"blk.{i}.attn_q.weight", (e, e)),
            (f"blk.{i}.attn_k.weight", (kv, e)),
            (f"blk.{i}.attn_v.weight", (kv, e)),
            (f"blk.{i}.attn_output.weight", (e, e)),
            (f"blk.{i}.ffn_norm.weight", (e,)),
            (f"blk.{i}.ffn_gate.weight", (ff, e)),
            (f"blk.{i}.ffn_up.weight", (ff, e)),
            (f"blk.{i}.ffn_down.weight", (e, ff)),
        ]
    plan += [("output_norm.weight", (e,)), ("output.weight", (n_vocab, e))]
    _write_tensors(writer, plan, seed, dtype)
    partial.replace(out)
    return out


def _open_gguf(path: Path, tmpdir: str) -> Any:
    from gguf import GGUFReader

    if path.suffix == ".gz":
        plain = Path(tmpdir) / path.stem
        with gzip.open(path, "rb") as src, plain.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        path = plain
    return GGUFReader(path)


def make_skeleton(real: Path, out: Path) -> Path:
    """The header, every metadata field and the tensor list of ``real``, no tensor data, gzip-compressed."""
    _require_gguf()
    from gguf import GGUFValueType, GGUFWriter

    with tempfile.TemporaryDirectory() as tmp:
        reader = _open_gguf(real, tmp)
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        tensors = [[t.name, [int(d) for d in t.shape], t.tensor_type.name] for t in reader.tensors]
        plain = Path(tmp) / "skeleton.gguf"
        writer = GGUFWriter(str(plain), arch)
        for key, field in reader.fields.items():
            if not key.startswith("GGUF.") and key != "general.architecture":
                copy_field(writer, key, field)
        writer.add_key_value(SKELETON_KEY, json.dumps(tensors, separators=(",", ":")), GGUFValueType.STRING)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        with plain.open("rb") as src, gzip.open(out, "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return out


def write_like(out: Path, like: Path, seed: int = 0, layers: int | None = None) -> Path:
    """Metadata, tokenizer, tensor names and shapes of ``like`` (a GGUF or a skeleton); random f16 weights.

    ``layers`` keeps the first N blocks (a small model of the same family). Raises :class:`LlcudaError`
    when ``like`` has fewer blocks.
    """
    _require_gguf()
    from gguf import GGUFValueType, GGUFWriter

    with tempfile.TemporaryDirectory() as tmp:
        reader = _open_gguf(like, tmp)
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        if SKELETON_KEY in reader.fields:
            tensors = json.loads(bytes(reader.fields[SKELETON_KEY].parts[-1]).decode())
        else:
            tensors = [[t.name, [int(d) for d in t.shape], t.tensor_type.name] for t in reader.tensors]
        n_block = int(reader.fields[f"{arch}.block_count"].parts[-1][0])
        if layers is not None and not 1 <= layers <= n_block:
            raise LlcudaError(f"layers={layers}: {like} has {n_block} blocks; ask for 1 to {n_block}.")
        keep = layers or n_block
        block = re.compile(r"^blk\.(\d+)\.")
        tensors = [t for t in tensors if not (m := block.match(t[0])) or int(m.group(1)) < keep]

        partial = out.with_name(out.name + ".incomplete")
        writer = GGUFWriter(str(partial), arch)
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key in ("general.architecture", SKELETON_KEY):
                continue
            value: Any = None
            if key == "general.file_type":
                value = 1  # LLAMA_FTYPE_MOSTLY_F16: what this file holds; llama-quantize sets its own
            elif key == f"{arch}.block_count":
                value = keep
            elif (
                key.startswith(f"{arch}.")
                and field.types[0] == GGUFValueType.ARRAY
                and len(field.data) == n_block
                and field.types[1] != GGUFValueType.STRING
            ):
                value = [field.parts[i].tolist()[0] for i in field.data][:keep]  # per-layer values
            copy_field(writer, key, field, value)
        _write_tensors(writer, [(name, tuple(reversed(ne))) for name, ne, _type in tensors], seed)
    partial.replace(out)
    return out


# -- the benchmark's random models ---------------------------------------------------------------
def random_model(
    name: str,
    *,
    binaries: Binaries | None = None,
    vocab_dir: Path | None = None,
    offline: bool | None = None,
    seed: int = 0,
) -> Path:
    """The file of random model ``name`` (a key of :data:`RANDOM_MODELS`), made once and then cached.

    Making ``random-1b`` writes a 2.5 GB f16 file next to the cached one, quantizes it with
    ``llama-quantize`` of ``binaries`` (default: the ones llcuda finds) and deletes it. The tokenizer
    comes from :func:`vocab_file` (``vocab_dir``, a cached llama.cpp source tree, or a download).
    Raises :class:`ModelNotFoundError` for an unknown name, :class:`LlcudaError` without the
    ``gguf`` package or when llama-quantize fails, and :func:`vocab_file`'s errors.
    """
    from llcuda.models import cache

    spec = RANDOM_MODELS.get(name)
    if spec is None:
        raise ModelNotFoundError(f"{name!r} is not a random model; choose one of {', '.join(RANDOM_MODELS)}.")
    dest = cache.root() / "random" / f"{name}.gguf"
    if dest.is_file() and cache.read_meta(dest).get("seed") == seed:
        return dest
    _require_gguf()
    shape = PRESETS[spec.preset]
    vocab = vocab_file(shape.vocab, vocab_dir, offline=offline)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with cache.file_lock(dest):
        if dest.is_file() and cache.read_meta(dest).get("seed") == seed:
            return dest
        log.info("writing the random model %s (%s shape) to %s", name, spec.preset, dest)
        if spec.quant is None:
            write_model(dest, vocab.parent, shape, seed)
        else:
            f16 = dest.with_name(f"{dest.stem}-f16.tmp.gguf")
            try:
                write_model(f16, vocab.parent, shape, seed)
                _quantize(f16, dest, spec.quant, binaries)
            finally:
                f16.unlink(missing_ok=True)
        cache.write_meta(
            dest,
            name=name,
            source="random",
            origin=name,
            seed=seed,
            preset=spec.preset,
            quant=spec.quant or "F16",
            size=dest.stat().st_size,
        )
    return dest


def _quantize(src: Path, dest: Path, quant: str, binaries: Binaries | None) -> None:
    from llcuda.system.binaries import subprocess_env, tool

    binaries = binaries or _find_binaries()
    partial = dest.with_name(dest.name + ".incomplete")
    done = subprocess.run(
        [str(tool("llama-quantize", binaries)), str(src), str(partial), quant],
        capture_output=True,
        text=True,
        env=subprocess_env(binaries),
        check=False,
    )
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise LlcudaError(
            f"llama-quantize {quant} failed (exit {done.returncode}):\n{done.stderr[-2000:]}\n"
            "Check that the binaries are complete with `llcuda doctor`."
        )
    partial.replace(dest)


def _find_binaries() -> Binaries:
    from llcuda.system.binaries import find_binaries

    return find_binaries()
