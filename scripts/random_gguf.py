#!/usr/bin/env python3
"""Write a GGUF with random weights and a real tokenizer: a preset Llama shape, or the shape of a given GGUF.

llcuda's own tool for test and benchmark models; the weights are seeded random numbers.

Presets (``--preset``): the tokenizer (and its metadata) is copied from one of llama.cpp's vocab-only
GGUFs (``models/ggml-vocab-*.gguf`` in the source tree, ``--vocab-dir``):

* ``tiny``     — 2 layers, 64-wide, llama-spm vocab: ~4.5 MB, loads in a fraction of a second
* ``llama-1b`` — Llama-3.2-1B shape (16 layers, 2048 wide, GQA 32/8, llama-bpe vocab), f16;
                 quantize it with ``llama-quantize model.gguf out.gguf Q4_K_M``

Any architecture (``--like FILE``): every metadata key and value (tokenizer included) and every
tensor's name and shape of FILE, a real GGUF or a *skeleton* of one; weights f16 (f32 for 1-D
tensors, norms = 1). ``llama-quantize`` then gives the same type mix as a file quantized the same way.
A skeleton (``--make-skeleton REAL.gguf``) is the real file's header, metadata and tensor list without
tensor data, gzip-compressed: Gemma-3-270M's is ~3 MB instead of 253 MB, small enough to carry.
``--layers N`` keeps the first N blocks (a small model of the same family, for CPU tests).

    random_gguf.py out.gguf --preset llama-1b --vocab-dir llama.cpp/models
    random_gguf.py --make-skeleton gemma-3-270m-Q4_K_M.gguf gemma.skeleton.gguf.gz
    random_gguf.py out-f16.gguf --like gemma.skeleton.gguf.gz [--layers 2]

Needs the ``gguf`` and ``numpy`` packages (test/benchmark extras, not runtime dependencies).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# A plain template that any chat test can rely on (the vocab files carry none).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


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


def write_model(out: Path, vocab_dir: Path, shape: Shape, seed: int = 0, dtype: str = "f16") -> Path:
    import numpy as np
    from gguf import GGUFReader, GGUFWriter

    vocab_path = vocab_dir / f"ggml-vocab-{shape.vocab}.gguf"
    if not vocab_path.is_file():
        raise SystemExit(f"{vocab_path} not found; pass the llama.cpp tree's models/ folder as --vocab-dir")
    reader = GGUFReader(vocab_path)
    rng = np.random.default_rng(seed)
    np_dtype = np.float16 if dtype == "f16" else np.float32
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

    def rand(*dims: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * scale).astype(np_dtype)

    writer.add_tensor("token_embd.weight", rand(n_vocab, shape.n_embd))
    for i in range(shape.n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(shape.n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", rand(shape.n_embd, shape.n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", rand(n_embd_kv, shape.n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", rand(n_embd_kv, shape.n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", rand(shape.n_embd, shape.n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(shape.n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", rand(shape.n_ff, shape.n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", rand(shape.n_ff, shape.n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", rand(shape.n_embd, shape.n_ff))
    writer.add_tensor("output_norm.weight", np.ones(shape.n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", rand(n_vocab, shape.n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)
    return out


SKELETON_KEY = "llcuda.skeleton.tensors"  # JSON [[name, [ne0, ne1, ...], ggml type name], ...]


def copy_field(writer, key: str, field, values=None) -> None:
    """Copy one metadata field with its exact GGUF value type (and element type for arrays)."""
    from gguf import GGUFValueType

    vtype = GGUFValueType(field.types[0])
    if vtype == GGUFValueType.ARRAY:
        sub = GGUFValueType(field.types[1])
        if sub == GGUFValueType.ARRAY:
            raise SystemExit(f"{key}: nested arrays are not supported")
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


def _open_gguf(path: Path, tmpdir: str):
    from gguf import GGUFReader

    if path.suffix == ".gz":
        plain = Path(tmpdir) / path.stem
        with gzip.open(path, "rb") as src, plain.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        path = plain
    return GGUFReader(path)


def make_skeleton(real: Path, out: Path) -> Path:
    """The header, every metadata field and the tensor list of ``real``, no tensor data, gzip-compressed."""
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
    """Metadata, tokenizer, tensor names and shapes of ``like`` (a GGUF or a skeleton); random f16 weights."""
    import numpy as np
    from gguf import GGUFValueType, GGUFWriter

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        reader = _open_gguf(like, tmp)
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        if SKELETON_KEY in reader.fields:
            tensors = json.loads(bytes(reader.fields[SKELETON_KEY].parts[-1]).decode())
        else:
            tensors = [[t.name, [int(d) for d in t.shape], t.tensor_type.name] for t in reader.tensors]
        n_block = int(reader.fields[f"{arch}.block_count"].parts[-1][0])
        if layers is not None and not 1 <= layers <= n_block:
            raise SystemExit(f"--layers {layers}: {like} has {n_block} blocks")
        keep = layers or n_block
        block = re.compile(r"^blk\.(\d+)\.")
        tensors = [t for t in tensors if not (m := block.match(t[0])) or int(m.group(1)) < keep]

        partial = out.with_name(out.name + ".incomplete")
        writer = GGUFWriter(str(partial), arch)
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key in ("general.architecture", SKELETON_KEY):
                continue
            value = None
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
        plan = []
        for name, ne, _type in tensors:
            dtype = np.float32 if len(ne) == 1 else np.float16
            shape = tuple(reversed(ne))  # numpy order
            writer.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(ne)) * np.dtype(dtype).itemsize)
            plan.append((shape, dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for shape, dtype in plan:
            if len(shape) == 1:
                data = np.ones(shape, dtype=np.float32)  # norms: identity scale
            else:
                data = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
            writer.write_tensor_data(data)
        writer.close()
    partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", help="the GGUF to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--vocab-dir", type=Path, help="llama.cpp's models/ folder (for --preset)")
    parser.add_argument(
        "--like", type=Path, help="copy the metadata and tensor shapes of this GGUF or skeleton"
    )
    parser.add_argument("--layers", type=int, help="with --like: keep only the first N blocks")
    parser.add_argument(
        "--make-skeleton",
        nargs=2,
        type=Path,
        metavar=("REAL_GGUF", "OUT_GZ"),
        help="write REAL_GGUF's header, metadata and tensor list (no data) to OUT_GZ",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    args = parser.parse_args(argv)
    if args.make_skeleton:
        print(make_skeleton(*args.make_skeleton))
    elif args.out is None:
        parser.error("the output path is required")
    elif args.like:
        print(write_like(args.out, args.like, args.seed, args.layers))
    elif args.vocab_dir is None:
        parser.error("--vocab-dir is required with --preset")
    else:
        print(write_model(args.out, args.vocab_dir, PRESETS[args.preset], args.seed, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
