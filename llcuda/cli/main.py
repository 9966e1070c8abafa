"""The ``llcuda`` command line: infer, chat, serve, bench, rpc-worker, models, doctor. The only module that prints."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from llcuda import config
from llcuda.errors import ConfigError, LlcudaError
from llcuda.processes.process import is_loopback

log = logging.getLogger("llcuda.cli.main")


def _version() -> str:
    import llcuda

    return str(llcuda.__version__)


# -- shared options ----------------------------------------------------------------------------
def _add_model_options(parser: argparse.ArgumentParser, *, n_parallel: int = 1, ctx_size: int = 4096,
                       backend: bool = True) -> None:
    group = parser.add_argument_group("model and server")
    if backend:
        group.add_argument("--backend", choices=config.BACKENDS, default=None,
                           help="server: llama-server in a child process; inprocess: libllama in this process, "
                                "the fastest decode (default: LLCUDA_BACKEND, else server)")
    group.add_argument("-m", "--model", default=None,
                       help=f"registry name, path, hf://repo/file.gguf or URL (default: {config.DEFAULT_MODEL}, "
                            "or LLCUDA_DEFAULT_MODEL)")
    group.add_argument("--server-url", default=None, help="use a running llama-server instead of starting one")
    group.add_argument("--gpu-layers", "-ngl", type=int, default=99, help="layers to offload to the GPU (default 99)")
    group.add_argument("--ctx-size", "-c", type=int, default=ctx_size, help=f"context size (default {ctx_size})")
    group.add_argument("--n-parallel", "-np", type=int, default=n_parallel, help="server slots")
    group.add_argument("--flash-attn", "-fa", choices=["on", "off", "auto"], default="auto")
    group.add_argument("--offline", action="store_true", default=None, help="never download (also LLCUDA_OFFLINE=1)")
    group = parser.add_argument_group("several GPUs and RPC workers")
    group.add_argument("--split-mode", "-sm", choices=["none", "layer", "row", "tensor"], default=None,
                       help="how to spread the model over devices (llama.cpp's default: layer)")
    group.add_argument("--tensor-split", "-ts", type=_tensor_split, default=None, metavar="N0,N1,...",
                       help="proportion per device, e.g. 3,1 (default: by free memory); RPC workers' devices first")
    group.add_argument("--main-gpu", "-mg", type=int, default=None, help="device index for split-mode none/row")
    group.add_argument("--rpc", action="append", default=None, metavar="HOST:PORT",
                       help="an `llcuda rpc-worker` to offload layers to (repeatable)")


def _tensor_split(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace("/", ",").split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers such as 3,1") from None


def _scaleout(args: argparse.Namespace) -> dict[str, Any]:
    return {"split_mode": args.split_mode, "tensor_split": args.tensor_split, "main_gpu": args.main_gpu,
            "rpc": args.rpc}


def _add_sampling_options(parser: argparse.ArgumentParser, *, max_tokens: int, temperature: float) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("-n", "--max-tokens", type=int, default=max_tokens, help=f"default {max_tokens}")
    group.add_argument("-t", "--temperature", type=float, default=temperature,
                       help=f"0 is greedy (default {temperature})")
    group.add_argument("--top-p", type=float, default=0.95)
    group.add_argument("--top-k", type=int, default=40)
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def _engine(args: argparse.Namespace) -> Any:
    from llcuda.engine import InferenceEngine

    engine = InferenceEngine(server_url=args.server_url, backend=args.backend)
    if not args.server_url:
        engine.load_model(args.model, gpu_layers=args.gpu_layers, ctx_size=args.ctx_size,
                          n_parallel=args.n_parallel, flash_attn=args.flash_attn, offline=args.offline,
                          **_scaleout(args))
    return engine


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "top_k": args.top_k, "seed": args.seed, "stop": args.stop}


# -- commands ----------------------------------------------------------------------------------
def cmd_infer(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        if args.json:
            result = engine.infer(args.prompt, **_sampling(args))
            print(json.dumps({"text": result.text, "tokens_generated": result.tokens_generated,
                              "prompt_tokens": result.prompt_tokens, "latency_ms": round(result.latency_ms, 2),
                              "tokens_per_sec": round(result.tokens_per_sec, 2),
                              "finish_reason": result.finish_reason, "model": result.model}))
            return 0
        stream = engine.infer_stream(args.prompt, **_sampling(args))
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if args.verbose and stream.result is not None:
            r = stream.result
            print(f"[{r.tokens_generated} tokens, {r.tokens_per_sec:.1f} tok/s, {r.latency_ms:.0f} ms, "
                  f"finish={r.finish_reason}]", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    with _engine(args) as engine:
        def turn(text: str) -> None:
            messages.append({"role": "user", "content": text})
            stream = engine.chat(messages, stream=True, **_sampling(args))
            for piece in stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
            messages.append({"role": "assistant", "content": stream.text()})

        if args.message:
            turn(args.message)
            return 0
        interactive = sys.stdin.isatty()
        if interactive:
            print(f"llcuda chat with {engine.model_name} — /reset clears the history, /exit or Ctrl-D quits.")
        while True:
            if interactive:
                sys.stdout.write("you> ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                del messages[1 if args.system else 0:]
                continue
            turn(text)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from llcuda.engine import InferenceEngine

    api_key = config.api_key(args.api_key)
    if not is_loopback(args.host) and not api_key and not args.allow_unauthenticated:
        raise ConfigError(
            f"refusing to serve on {args.host} without an API key: anyone who can reach it could use the model. "
            "Pass --api-key KEY (or set LLCUDA_API_KEY), or --allow-unauthenticated if you really mean it."
        )
    engine = InferenceEngine(api_key=api_key, backend="server")  # serving is what the server backend is
    engine.load_model(args.model, gpu_layers=args.gpu_layers, ctx_size=args.ctx_size, n_parallel=args.n_parallel,
                      flash_attn=args.flash_attn, host=args.host, port=args.port, offline=args.offline,
                      embeddings=args.embeddings, allow_unauthenticated=args.allow_unauthenticated,
                      **_scaleout(args))
    server = engine.server
    assert server is not None
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)  # before the banner: whoever reads it may signal us at once
    print(f"llcuda: serving {engine.model_name} at http://{args.host}:{server.port} "
          f"(OpenAI-compatible: /v1/chat/completions, /v1/completions, /v1/embeddings); Ctrl-C stops.", flush=True)
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

    worker = RpcWorker(args.host, args.port, devices=args.device or (), threads=args.threads, cache=args.cache,
                       allow_remote=args.allow_remote)
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        worker.start()
        devices = ", ".join(f"{d.name} ({d.description}, {d.memory_free_mib} MiB free)" for d in worker.devices)
        where = worker.endpoint if is_loopback(worker.host) else f"<this host's address>:{worker.port}"
        print(f"llcuda: rpc-worker listening on {worker.host}:{worker.port}, devices: {devices or '?'}; "
              "Ctrl-C stops.", flush=True)
        print(f"llcuda: load models with --rpc {where} (Python: rpc=[{where!r}]); worker log: {worker.log_path}",
              flush=True)
        while not stop["now"] and worker.is_running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        stop["now"] = True
    finally:
        code = worker.returncode()
        worker.stop()
    # Ctrl-C in a terminal reaches rpc-server too (same process group): that is a clean stop as well.
    if not stop["now"] and code not in (None, 0, -signal.SIGINT):
        print(f"llcuda: rpc-server exited with code {code}; log tail:\n{worker.log_tail(20)}", file=sys.stderr)
        return 1
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from llcuda.cli.bench import run_compare, run_quick_bench

    if args.compare:
        return run_compare(args)
    backend = config.backend(args.backend)
    options = _scaleout(args)
    if backend == "inprocess":
        if options.pop("rpc"):
            raise ConfigError("--rpc is an option of the server backend; drop it or use --backend server.")
        if args.server_url:
            raise ConfigError("--server-url is an option of the server backend; use --backend server.")
    report = run_quick_bench(
        model=args.model, concurrency=args.concurrency or [1, 4], max_tokens=args.max_tokens or 64,
        gpu_layers=args.gpu_layers,
        ctx_size=args.ctx_size, flash_attn=args.flash_attn, offline=args.offline, load_options=options,
        engine=backend,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"model {report['model']}  load {report['load_seconds']:.2f} s  backend {report['backend']}  "
              f"engine {report['engine']}")
        print(f"{'concurrency':>11}  {'requests':>8}  {'tok/s (aggregate)':>17}  {'p50 ms':>8}  {'p95 ms':>8}")
        for row in report["runs"]:
            print(f"{row['concurrency']:>11}  {row['requests']:>8}  {row['throughput_tokens_per_sec']:>17.1f}  "
                  f"{row['latency_ms_p50']:>8.0f}  {row['latency_ms_p95']:>8.0f}")
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
        lines.append(f"  llama.cpp build b{info.get('llama_cpp_build', '?')}, backend {info.get('backend', '?')}"
                     + (f", CUDA {info.get('cuda_version')} archs {', '.join(info.get('cuda_archs', []))}"
                        if info.get("backend") == "cuda" else ""))
        for name, path in b["tools"].items():
            lines.append(f"  {name:<20} {path or 'MISSING'}")
    else:
        lines.append(f"binaries: NOT FOUND\n{b.get('error')}")
    g = report["gpu"]
    if g["gpus"]:
        lines.append(f"GPUs (driver {g['gpus'][0]['driver_version']}, CUDA {g['driver_cuda_version']}, via "
                     f"{g.get('source') or '?'}):")
        for gpu in g["gpus"]:
            lines.append(f"  [{gpu['index']}] {gpu['name']}  compute capability {gpu['compute_capability']}  "
                         f"{gpu['memory_free_mib']}/{gpu['memory_total_mib']} MiB free")
    else:
        lines.append(f"GPUs: none ({g.get('error') or 'no NVIDIA GPU visible'})")
    for problem in report["problems"]:
        lines.append(f"PROBLEM: {problem}")
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    cache = report.get("cache") or {}
    if cache:
        lines.append(f"model cache: {cache.get('path')} ({cache.get('count', 0)} models, "
                     f"{cache.get('total_bytes', 0) / 1e6:.1f} MB)")
    lines.append("ok" if report["ok"] else "NOT OK: see the problems above")
    return lines


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llcuda", description="GPU LLM inference on llama.cpp's CUDA binaries.")
    parser.add_argument("--version", action="version", version=f"llcuda {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("infer", help="continue a prompt (greedy by default)")
    p.add_argument("prompt")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of streaming text")
    _add_model_options(p)
    _add_sampling_options(p, max_tokens=64, temperature=0.0)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("chat", help="chat with the model's own template (interactive, or one message)")
    p.add_argument("message", nargs="?", default=None, help="one message; omit for an interactive session")
    p.add_argument("--system", default=None, help="system prompt")
    _add_model_options(p)
    _add_sampling_options(p, max_tokens=256, temperature=0.7)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="run an OpenAI-compatible server (127.0.0.1 by default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=None, help="require this key (also LLCUDA_API_KEY)")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="allow a non-loopback host without an API key")
    p.add_argument("--embeddings", action="store_true", help="serve embeddings only")
    _add_model_options(p, n_parallel=4, backend=False)
    p.set_defaults(func=cmd_serve)

    from llcuda.cli.bench import add_compare_options

    p = sub.add_parser("bench", help="measure llcuda throughput at several concurrency levels (--compare: "
                                     "against llama.cpp's own tools)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="comma-separated levels (default 1,4; with --compare 1,16,64)")
    p.add_argument("-n", "--max-tokens", type=int, default=None,
                   help="tokens per request (default 64; with --compare 128)")
    p.add_argument("--json", action="store_true")
    _add_model_options(p)
    add_compare_options(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("rpc-worker", help="lend this host's GPUs to llama-servers elsewhere (llama.cpp rpc-server)",
                       description="Start llama.cpp's rpc-server. It has NO authentication and NO encryption: keep "
                                   "it on 127.0.0.1 (default) or a private network you trust.")
    p.add_argument("--host", default="127.0.0.1", help="IPv4 address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50052, help="TCP port (default 50052)")
    p.add_argument("--device", "-d", action="append", default=None,
                   help="device to expose, e.g. CUDA0 (repeatable; default: every GPU, else the CPU)")
    p.add_argument("--threads", "-t", type=int, default=None, help="threads for a CPU device")
    p.add_argument("--cache", "-c", action="store_true", help="cache large tensors locally for faster reloads")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (anyone who can reach it can use this machine's devices)")
    p.set_defaults(func=cmd_rpc_worker)

    from llcuda.cli.models import add_models_parser, run_models_command

    add_models_parser(sub)
    sub.choices["models"].set_defaults(func=run_models_command)

    p = sub.add_parser("doctor", help="check binaries, GPUs, driver and model cache")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="llcuda: %(levelname)s: %(message)s", stream=sys.stderr)
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
