#!/usr/bin/env python3
"""Write a GGUF with random weights and a real tokenizer (the CLI of llcuda.benchmark.random_model).

    random_gguf.py out.gguf --preset llama-1b --vocab-dir llama.cpp/models
    random_gguf.py --make-skeleton gemma-3-270m-Q4_K_M.gguf gemma.skeleton.gguf.gz
    random_gguf.py out-f16.gguf --like gemma.skeleton.gguf.gz [--layers 2]

``--preset`` copies the tokenizer from llama.cpp's vocab-only GGUFs (``--vocab-dir``: the source tree's
``models/`` folder); ``--like`` copies the metadata and tensor shapes of a GGUF or a skeleton of one.
Needs the ``gguf`` and ``numpy`` packages (``pip install 'llcuda[bench]'``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's llcuda

from llcuda.benchmark.random_model import PRESETS, make_skeleton, write_like, write_model  # noqa: E402
from llcuda.errors import LlcudaError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", help="the GGUF to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--vocab-dir", type=Path, help="llama.cpp's models/ folder (for --preset)")
    parser.add_argument("--like", type=Path, help="copy the metadata and tensor shapes of this GGUF or skeleton")
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
    try:
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
    except LlcudaError as exc:
        print(f"random_gguf.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
