#!/usr/bin/env python3
"""Write llcuda/models/gguf_data.json from the pinned llama.cpp source.

The GGUF reader (llcuda/models/gguf.py) needs three tables that belong to llama.cpp, not to us:

* ``architectures``: the names llama.cpp can load (``LLM_ARCH_NAMES`` in src/llama-arch.cpp),
  minus ``clip`` (a multimodal projector, only used by llama-quantize) and ``(unknown)``;
* ``ggml_types``: every tensor type a GGUF file may use (``enum ggml_type`` in ggml/include/ggml.h)
  with its block size and bytes per block (``GGML_QUANT_SIZES`` in gguf-py/gguf/constants.py),
  so a truncated file can be told from a whole one;
* ``file_types``: ``general.file_type`` numbers to names (``enum llama_ftype`` in include/llama.h).

Run it again whenever the llama.cpp pin in recipe/recipe.yaml moves, and commit the result:

    python scripts/gen_gguf_data.py                  # fetches the pinned tree via llama_source.py
    python scripts/gen_gguf_data.py --llama-cpp DIR  # or use a tree you already have
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "llcuda" / "models" / "gguf_data.json"
EXCLUDED_ARCHS = {
    "clip": "a multimodal projector (mmproj) file, not a model: pass it to llama-server with --mmproj",
    "(unknown)": "placeholder for an unknown architecture",
}


def arch_names(tree: Path) -> list[str]:
    text = (tree / "src" / "llama-arch.cpp").read_text()
    table = re.search(r"LLM_ARCH_NAMES\s*=\s*\{(.*?)\n\};", text, re.DOTALL)
    if not table:
        raise SystemExit("src/llama-arch.cpp: LLM_ARCH_NAMES table not found; the script needs updating")
    names = re.findall(r'\{\s*LLM_ARCH_\w+\s*,\s*"([^"]+)"\s*\}', table.group(1))
    if len(names) < 50:
        raise SystemExit(f"src/llama-arch.cpp: only {len(names)} architectures parsed; the script needs updating")
    return [name for name in names if name not in EXCLUDED_ARCHS]


def c_enum(text: str, prefix: str) -> dict[str, int]:
    """``PREFIX_NAME = 12,`` lines that are not commented out."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(rf"^\s*{prefix}(\w+)\s*=\s*(\d+)\s*,", line)
        if match:
            values[match.group(1)] = int(match.group(2))
    return values


def quant_sizes(tree: Path) -> dict[str, tuple[int, int]]:
    source = (tree / "gguf-py" / "gguf" / "constants.py").read_text()
    module = ast.parse(source)
    qk_k = None
    table = None
    for node in module.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "QK_K" for t in node.targets):
            qk_k = ast.literal_eval(node.value)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "GGML_QUANT_SIZES":
            table = node.value
    if qk_k is None or not isinstance(table, ast.Dict):
        raise SystemExit("gguf-py/gguf/constants.py: QK_K or GGML_QUANT_SIZES not found")
    sizes: dict[str, tuple[int, int]] = {}
    for key, value in zip(table.keys, table.values):
        name = key.attr if isinstance(key, ast.Attribute) else None
        if name is None:
            raise SystemExit("GGML_QUANT_SIZES: unexpected key shape")
        expr = ast.unparse(value)
        if not re.fullmatch(r"[\d\s+*/()/,QK_]+", expr):
            raise SystemExit(f"GGML_QUANT_SIZES[{name}]: unexpected expression {expr!r}")
        block, size = eval(expr, {"__builtins__": {}}, {"QK_K": qk_k})
        sizes[name] = (int(block), int(size))
    return sizes


def build(tree: Path) -> dict:
    ggml_enum = c_enum((tree / "ggml" / "include" / "ggml.h").read_text(), "GGML_TYPE_")
    count = ggml_enum.pop("COUNT")
    sizes = quant_sizes(tree)
    missing = sorted(set(ggml_enum) - set(sizes))
    if missing:
        raise SystemExit(f"ggml types without a size in gguf-py: {missing}")
    ftypes = c_enum((tree / "include" / "llama.h").read_text(), "LLAMA_FTYPE_")
    file_types = {str(v): k.replace("MOSTLY_", "").replace("ALL_", "") for k, v in ftypes.items()}
    build_no = re.search(r"llama_cpp_build:\s*(\d+)", (REPO_ROOT / "recipe" / "recipe.yaml").read_text())
    return {
        "generated_by": "scripts/gen_gguf_data.py",
        "llama_cpp_build": int(build_no.group(1)) if build_no else None,
        "architectures": arch_names(tree),
        "excluded_architectures": EXCLUDED_ARCHS,
        "ggml_type_count": count,
        "ggml_types": {
            str(value): {"name": name, "block_size": sizes[name][0], "type_size": sizes[name][1]}
            for name, value in sorted(ggml_enum.items(), key=lambda item: item[1])
        },
        "file_types": file_types,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, help="llama.cpp source tree (default: the pinned one)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is out of date")
    args = parser.parse_args(argv)
    tree = args.llama_cpp
    if tree is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from llama_source import fetch_source

        tree = fetch_source()
    text = json.dumps(build(tree), indent=1, sort_keys=False) + "\n"
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run scripts/gen_gguf_data.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
