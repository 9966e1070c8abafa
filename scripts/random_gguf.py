#!/usr/bin/env python3
"""Write a Llama-architecture GGUF with random weights and a real tokenizer.

llcuda's own tool for test and benchmark models: the tokenizer (and its metadata) is copied
from one of llama.cpp's vocab-only GGUFs (``models/ggml-vocab-*.gguf`` in the source tree),
the weights are seeded random numbers. Presets:

* ``tiny``     — 2 layers, 64-wide, llama-spm vocab: ~4.5 MB, loads in a fraction of a second
* ``llama-1b`` — Llama-3.2-1B shape (16 layers, 2048 wide, GQA 32/8, llama-bpe vocab), f16;
                 quantize it with ``llama-quantize model.gguf out.gguf Q4_K_M``

Needs the ``gguf`` and ``numpy`` packages (test/benchmark extras, not runtime dependencies).
"""

from __future__ import annotations

import argparse
import sys
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
    "llama-1b": Shape("llama-bpe", n_layer=16, n_embd=2048, n_ff=8192, n_head=32, n_head_kv=8,
                      context_length=131072, rope_theta=500000.0),
}


def write_model(out: Path, vocab_dir: Path, shape: Shape, seed: int = 0, dtype: str = "f16") -> Path:
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

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
        if not key.startswith("tokenizer."):
            continue
        value_type = field.types[0]
        if value_type == GGUFValueType.ARRAY:
            item_type = field.types[1]
            values = [field.parts[i] for i in field.data]
            if item_type == GGUFValueType.STRING:
                writer.add_array(key, [bytes(v).decode("utf-8") for v in values])
            else:
                writer.add_array(key, [v.tolist()[0] for v in values])
        elif value_type == GGUFValueType.STRING:
            writer.add_string(key, bytes(field.parts[field.data[0]]).decode("utf-8"))
        else:
            writer.add_key_value(key, field.parts[field.data[0]].tolist()[0], value_type)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--vocab-dir", type=Path, required=True, help="llama.cpp's models/ folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    args = parser.parse_args(argv)
    print(write_model(args.out, args.vocab_dir, PRESETS[args.preset], args.seed, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
