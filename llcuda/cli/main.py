"""The ``llcuda`` command line: infer, chat, serve, bench, rpc-worker, models, ps, stop, doctor.

The only module that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llcuda import config, options
from llcuda.errors import ConfigError, LlcudaError
from llcuda.options import CHAT_MAX_TOKENS, LoadOptions, SamplingOptions
from llcuda.processes.process import is_loopback
from llcuda.serve.streaming import STREAM_INTERVAL_S

log = logging.getLogger("llcuda.cli.main")


def _version() -> str:
    import llcuda

    return str(llcuda.__version__)


# -- shared options ----------------------------------------------------------------------------
def _add_model_options(parser: argparse.ArgumentParser, *, backend: bool = True) -> None:
    group = parser.add_argument_group("model")
    if backend:
        group.add_argument(
            "--backend",
            choices=config.BACKENDS,
            default=None,
            help="serve: llcuda's engine in a child process; inprocess: the same engine in this "
            "process; llama-server: llama.cpp's server (default: LLCUDA_BACKEND, else serve with a GPU and "
            "inprocess on a CPU-only build)",
        )
        group.add_argument("--server-url", default=None, help="use a running server instead of starting one")
    group.add_argument(
        "-m",
        "--model",
        default=None,
        help=f"registry name, path, owner/repo:QUANT, hf://repo/file.gguf or URL (default: "
        f"{config.DEFAULT_MODEL}, or LLCUDA_DEFAULT_MODEL)",
    )
    group.add_argument("--offline", action="store_true", default=None, help="never download (also LLCUDA_OFFLINE=1)")
    options.add_arguments(parser.add_argument_group("loading (the same defaults in Python)"), LoadOptions)
    group = parser.add_argument_group("llama-server backend")
    group.add_argument(
        "--rpc",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="an `llcuda rpc-worker` to offload layers to (repeatable; --backend llama-server)",
    )


def _load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``load_model`` keyword arguments from the parsed flags."""
    kwargs: dict[str, Any] = {"options": options.load_options_from(args), "offline": args.offline}
    if getattr(args, "rpc", None):
        kwargs["rpc"] = args.rpc
    return kwargs


def _add_sampling_options(parser: argparse.ArgumentParser, *, max_tokens: int | None = None) -> None:
    group = parser.add_argument_group("sampling (the same defaults in Python)")
    options.add_arguments(group, SamplingOptions)
    if max_tokens is not None:
        parser.set_defaults(max_tokens=max_tokens)


def _engine(args: argparse.Namespace) -> Any:
    from llcuda.engine import InferenceEngine

    engine = InferenceEngine(server_url=args.server_url, backend=args.backend)
    if not args.server_url:
        engine.load_model(args.model, **_load_kwargs(args))
    return engine


def _sampling(args: argparse.Namespace, chat: bool = False) -> dict[str, Any]:
    """The sampling keyword arguments of the parsed flags (a chat turn always ends at end-of-generation)."""
    names = [n for n in options.sampling_option_names() if hasattr(args, n) and not (chat and n == "ignore_eos")]
    return {name: getattr(args, name) for name in names}


# -- commands ----------------------------------------------------------------------------------
def _infer_prompt(args: argparse.Namespace) -> str:
    """The prompt argument; ``-`` (or none, with stdin not a terminal) reads stdin, final newlines dropped."""
    if args.prompt is not None and args.prompt != "-":
        return str(args.prompt)
    if args.prompt is None and sys.stdin.isatty():
        raise ConfigError('give a prompt (llcuda infer "Once upon a time") or pipe one in (echo text | llcuda infer).')
    text = sys.stdin.read().rstrip("\r\n")
    if not text.strip():
        raise ConfigError("the prompt read from stdin is empty; pipe text in or give the prompt as argument.")
    return text


def cmd_infer(args: argparse.Namespace) -> int:
    prompt = _infer_prompt(args)
    with _engine(args) as engine:
        if args.json:
            result = engine.infer(prompt, **_sampling(args))
            print(
                json.dumps(
                    {
                        "text": result.text,
                        "tokens_generated": result.tokens_generated,
                        "prompt_tokens": result.prompt_tokens,
                        "latency_ms": round(result.latency_ms, 2),
                        "tokens_per_sec": round(result.tokens_per_sec, 2),
                        "finish_reason": result.finish_reason,
                        "model": result.model,
                    }
                )
            )
            return 0
        stream = engine.infer_stream(prompt, **_sampling(args))
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if args.verbose and stream.result is not None:
            r = stream.result
            print(
                f"[{r.tokens_generated} tokens, {r.tokens_per_sec:.1f} tok/s, {r.latency_ms:.0f} ms, "
                f"finish={r.finish_reason}]",
                file=sys.stderr,
            )
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from llcuda.cli.chat import run_chat

    with _engine(args) as engine:
        return run_chat(
            engine, _sampling(args, chat=True), message=args.message, system=args.system, verbose=args.verbose
        )


def cmd_serve(args: argparse.Namespace) -> int:
    """The OpenAI-compatible server on llcuda's in-process engine (llcuda.serve), or llama-server."""
    api_key = config.api_key(args.api_key)
    if not is_loopback(args.host) and not api_key and not args.allow_unauthenticated:
        raise ConfigError(
            f"refusing to serve on {args.host} without an API key: anyone who can reach it could use the model. "
            "Pass --api-key KEY (or set LLCUDA_API_KEY), or --allow-unauthenticated if you really mean it."
        )
    if args.llama_server:
        return _serve_llama_server(args, api_key)
    if args.server_args:
        raise ConfigError(
            f"{' '.join(args.server_args)!r}: arguments after -- go to llama-server; add --llama-server (or drop them)."
        )
    if args.rpc:
        raise ConfigError("--rpc is an option of llama-server; add --llama-server to use it.")
    from llcuda.serve.launch import run_server

    return run_server(
        args.model,
        _load_kwargs(args),
        host=args.host,
        port=args.port,
        api_key=api_key,
        allow_unauthenticated=args.allow_unauthenticated,
        alias=args.alias,
        max_tokens=args.max_tokens,
        stream_interval=args.stream_interval,
        ui_dir=args.ui_dir,
        log_level="info" if args.verbose else "warning",
        on_event=lambda message: print(f"llcuda: {message}", flush=True),
    )


def _serve_llama_server(args: argparse.Namespace, api_key: str | None) -> int:
    from llcuda.engine import InferenceEngine

    extra = [
        *(["--alias", args.alias] if args.alias else []),
        *(["--n-predict", str(args.max_tokens)] if args.max_tokens else []),
        *(["--ui", "--path", str(args.ui_dir)] if args.ui_dir else []),
        *args.server_args,
    ]
    engine = InferenceEngine(api_key=api_key, backend="llama-server")
    engine.load_model(
        args.model,
        host=args.host,
        port=args.port,
        allow_unauthenticated=args.allow_unauthenticated,
        extra_args=extra,
        **_load_kwargs(args),
    )
    server = engine.server
    assert server is not None
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)  # before the banner: whoever reads it may signal us at once
    print(
        f"llcuda: serving {engine.model_name} at http://{args.host}:{server.port} "
        f"(OpenAI-compatible: /v1/chat/completions, /v1/completions, /v1/embeddings); Ctrl-C stops.",
        flush=True,
    )
    print(f"llcuda: server log: {server.log_path}", flush=True)
    try:
        while not stop["now"] and server.is_running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    code = server.returncode()
    engine.unload()
    if code not in (None, 0) and not stop["now"]:
        print(f"llcuda: llama-server exited with code {code}", file=sys.stderr)
        return 1
    return 0


def cmd_rpc_worker(args: argparse.Namespace) -> int:
    """Run one rpc-server until Ctrl-C / SIGTERM; llama-servers elsewhere use it with --rpc HOST:PORT."""
    from llcuda.processes.rpc_worker import RpcWorker

    worker = RpcWorker(
        args.host,
        args.port,
        devices=args.device or (),
        threads=args.threads,
        cache=args.cache,
        allow_remote=args.allow_remote,
    )
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        worker.start()
        devices = ", ".join(f"{d.name} ({d.description}, {d.memory_free_mib} MiB free)" for d in worker.devices)
        where = worker.endpoint if is_loopback(worker.host) else f"<this host's address>:{worker.port}"
        print(
            f"llcuda: rpc-worker listening on {worker.host}:{worker.port}, devices: {devices or '?'}; Ctrl-C stops.",
            flush=True,
        )
        print(
            f"llcuda: load models with --rpc {where} (Python: rpc=[{where!r}]); worker log: {worker.log_path}",
            flush=True,
        )
        while not stop["now"] and worker.is_running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        stop["now"] = True
    finally:
        code = worker.returncode()
        worker.stop()
    # An rpc-server stopped by SIGINT sent to it directly ended cleanly as well.
    if not stop["now"] and code not in (None, 0, -signal.SIGINT):
        print(f"llcuda: rpc-server exited with code {code}; log tail:\n{worker.log_tail(20)}", file=sys.stderr)
        return 1
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from llcuda.cli.bench import run_compare, run_quick_bench

    if args.compare:
        return run_compare(args)
    if args.server_url:
        raise ConfigError("llcuda bench loads its own model; drop --server-url.")
    report = run_quick_bench(
        model=args.model,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        options=options.load_options_from(args),
        offline=args.offline,
        backend=args.backend,
        rpc=args.rpc,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"model {report['model']}  load {report['load_seconds']:.2f} s  backend {report['backend']}  "
            f"engine {report['engine']}"
        )
        print(f"{'concurrency':>11}  {'requests':>8}  {'tok/s (aggregate)':>17}  {'p50 ms':>8}  {'p95 ms':>8}")
        for row in report["runs"]:
            print(
                f"{row['concurrency']:>11}  {row['requests']:>8}  {row['throughput_tokens_per_sec']:>17.1f}  "
                f"{row['latency_ms_p50']:>8.0f}  {row['latency_ms_p95']:>8.0f}"
            )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from llcuda.cli.doctor import collect

    report = collect()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for line in _doctor_lines(report):
            print(line)
    return 0 if report["ok"] else 1


def _doctor_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"llcuda {report['version']}  python {report['python']}"]
    b = report["binaries"]
    if b.get("found"):
        info = b.get("build_info", {})
        lines.append(f"binaries: {b['bin_dir']} (found via {b['source']})")
        lines.append(
            f"  llama.cpp build b{info.get('llama_cpp_build', '?')}, backend {info.get('backend', '?')}"
            + (
                f", CUDA {info.get('cuda_version')} archs {', '.join(info.get('cuda_archs', []))}"
                if info.get("backend") == "cuda"
                else ""
            )
        )
        for name, path in b["tools"].items():
            lines.append(f"  {name:<20} {path or 'MISSING'}")
    else:
        lines.append(f"binaries: NOT FOUND\n{b.get('error')}")
    g = report["gpu"]
    if g["gpus"]:
        lines.append(
            f"GPUs (driver {g['gpus'][0]['driver_version']}, CUDA {g['driver_cuda_version']}, via "
            f"{g.get('source') or '?'}):"
        )
        for gpu in g["gpus"]:
            lines.append(
                f"  [{gpu['index']}] {gpu['name']}  compute capability {gpu['compute_capability']}  "
                f"{gpu['memory_free_mib']}/{gpu['memory_total_mib']} MiB free"
            )
    else:
        lines.append(f"GPUs: none ({g.get('error') or 'no NVIDIA GPU visible'})")
    for problem in report["problems"]:
        lines.append(f"PROBLEM: {problem}")
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    cache = report.get("cache") or {}
    if cache:
        lines.append(
            f"model cache: {cache.get('path')} ({cache.get('count', 0)} models, "
            f"{cache.get('total_bytes', 0) / 1e6:.1f} MB)"
        )
    lines.append("ok" if report["ok"] else "NOT OK: see the problems above")
    return lines


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llcuda", description="GPU LLM inference on llama.cpp's CUDA binaries.")
    parser.add_argument("--version", action="version", version=f"llcuda {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("infer", help="continue a prompt")
    p.add_argument(
        "prompt",
        nargs="?",
        default=None,
        help="the text to continue; - reads it from stdin (so does none, with stdin not a tty)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of streaming text")
    _add_model_options(p)
    _add_sampling_options(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser(
        "chat",
        help="chat with the model's own template (interactive, or one message)",
        description="Chat with the model. Interactive: line editing and history, Ctrl-C "
        "stops a reply, Ctrl-D quits, /help lists the commands (/system, /clear, "
        "/save, /load).",
    )
    p.add_argument("message", nargs="?", default=None, help="one message; omit for an interactive session")
    p.add_argument("--system", default=None, help="system prompt")
    _add_model_options(p)
    _add_sampling_options(p, max_tokens=CHAT_MAX_TOKENS)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser(
        "serve",
        help="run an OpenAI-compatible server (127.0.0.1 by default)",
        description="Serve the model over HTTP with llcuda's in-process engine (OpenAI-compatible "
        "API, Prometheus /metrics, the chat page at /), or with llama.cpp's "
        "llama-server (--llama-server; arguments after -- go to it).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0: any free port)")
    p.add_argument("--api-key", default=None, help="require this key (also LLCUDA_API_KEY)")
    p.add_argument("--allow-unauthenticated", action="store_true", help="allow a non-loopback host without an API key")
    p.add_argument("--alias", default=None, help="the model's name in the API (default: the model's own name)")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="the most tokens of one answer, whatever a request asks (default: up to the context's end)",
    )
    p.add_argument(
        "--stream-interval",
        type=float,
        default=STREAM_INTERVAL_S,
        metavar="SECONDS",
        help="the shortest time between two chunks of a stream; faster decode steps share a chunk "
        f"(default {STREAM_INTERVAL_S}; 0: a chunk per step)",
    )
    p.add_argument(
        "--ui-dir",
        type=Path,
        default=None,
        help="serve the chat page built in this folder (default: the one beside the binaries)",
    )
    p.add_argument(
        "--llama-server",
        action="store_true",
        help="serve with llama.cpp's llama-server in a child process instead of llcuda's engine",
    )
    p.add_argument(
        "server_args",
        nargs="*",
        metavar="-- LLAMA_SERVER_ARGS",
        help="with --llama-server: more llama-server arguments, after --",
    )
    _add_model_options(p, backend=False)
    p.set_defaults(func=cmd_serve)

    from llcuda.cli.bench import add_compare_options

    p = sub.add_parser(
        "bench",
        help="measure llcuda throughput at several concurrency levels (--compare: against llama.cpp's own tools)",
    )
    p.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="comma-separated levels (default 1,4; with --compare 1,16,64)",
    )
    p.add_argument(
        "-n", "--max-tokens", type=int, default=None, help="tokens per request (default 64; with --compare 128)"
    )
    p.add_argument("--json", action="store_true")
    _add_model_options(p)
    add_compare_options(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "rpc-worker",
        help="lend this host's GPUs to llama-servers elsewhere (llama.cpp rpc-server)",
        description="Start llama.cpp's rpc-server. It has NO authentication and NO encryption: keep "
        "it on 127.0.0.1 (default) or a private network you trust.",
    )
    p.add_argument("--host", default="127.0.0.1", help="IPv4 address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50052, help="TCP port (default 50052)")
    p.add_argument(
        "--device",
        "-d",
        action="append",
        default=None,
        help="device to expose, e.g. CUDA0 (repeatable; default: every GPU, else the CPU)",
    )
    p.add_argument("--threads", "-t", type=int, default=None, help="threads for a CPU device")
    p.add_argument("--cache", "-c", action="store_true", help="cache large tensors locally for faster reloads")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (anyone who can reach it can use this machine's devices)",
    )
    p.set_defaults(func=cmd_rpc_worker)

    from llcuda.cli.models import add_models_parser, run_models_command

    add_models_parser(sub)
    sub.choices["models"].set_defaults(func=run_models_command)

    from llcuda.cli.ps import add_parsers as add_ps_parsers

    add_ps_parsers(sub)

    p = sub.add_parser("doctor", help="check binaries, GPUs, driver and model cache")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="llcuda: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except LlcudaError as exc:
        print(f"llcuda: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
