"""Check an installed llcuda platform wheel from the inside; run by scripts/build_wheel.sh.

Runs with the fresh venv's interpreter in isolated mode (``python -I``), so ``llcuda`` can only come
from that venv. Writes a JSON report; the caller (and tests/test_wheel.py) judge it. Steps:

1. where ``llcuda`` and its binaries come from (the bootstrap's ``source`` must be ``bundled``);
2. the tools are executable and run from the installed layout with no LD_LIBRARY_PATH (RUNPATH),
   and ``ldd`` resolves every llama.cpp library inside the package;
3. a real completion with the given GGUF (``LLCUDA_OFFLINE=1`` is the caller's job) through the bundled
   llama-server, and through llcuda's engine in this process and in a ``llcuda serve`` child;
4. damage: a tool made non-executable, a tool deleted, a library deleted — what the bootstrap says,
   then the reinstall command from its message, run offline (``--no-index --find-links``), must repair it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import traceback
from pathlib import Path


def _bootstrap_error() -> str | None:
    from llcuda.errors import BinaryNotFoundError
    from llcuda.system import binaries as bootstrap

    try:
        found = bootstrap.find_binaries()
    except BinaryNotFoundError as exc:
        return str(exc)
    return None if found.source == "bundled" else f"(no error, but source is {found.source})"


def _reinstall(message: str, find_links: list[str]) -> dict:
    """Run the pip command the error message names, made offline; report what happened."""
    match = re.search(r"(pip install [^\n]*?llcuda)\b", message)
    if not match:
        return {"command": None, "returncode": None}
    words = shlex.split(match.group(1))[2:]  # after "pip install"
    offline = ["--no-index"] + [arg for d in find_links for arg in ("--find-links", d)]
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *offline, *words]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    return {
        "command": match.group(1),
        "returncode": proc.returncode,
        "stderr": proc.stderr[-2000:],
        "error_after": _bootstrap_error(),
    }


def _start_error(model: Path) -> str | None:
    """What a user sees when the bootstrap lets a damaged install through: the server start error."""
    import llcuda

    engine = llcuda.InferenceEngine(backend="llama-server")  # the bundled llama-server itself
    try:
        engine.load_model(model, ctx_size=512, n_parallel=1)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return f"{type(exc).__name__}: {exc}"[-1500:]
    finally:
        engine.unload()
    return None


def damage(kind: str, target: Path, find_links: list[str], model: Path) -> dict:
    mode = target.stat().st_mode
    if kind == "not-executable":
        target.chmod(mode & ~0o111)
    else:
        target.unlink()
    message = _bootstrap_error()
    report = {"kind": kind, "file": target.name, "message": message}
    if message is None:
        report["load_model_error"] = _start_error(model)
    report["reinstall"] = _reinstall(message or "", find_links)
    report["repaired"] = target.is_file() and os.access(target, os.X_OK) and report["reinstall"]["error_after"] is None
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--find-links", action="append", default=[], help="offline wheel folders, for repairs")
    parser.add_argument(
        "--no-damage",
        action="store_true",
        help="skip the damage/repair steps (a GPU machine without the wheel's dependencies at hand)",
    )
    args = parser.parse_args(argv)
    report: dict = {
        "python": sys.executable,
        "sys_prefix": sys.prefix,
        "env": {
            k: os.environ.get(k)
            for k in (
                "LLCUDA_OFFLINE",
                "HF_HUB_OFFLINE",
                "LLCUDA_BIN_DIR",
                "LD_LIBRARY_PATH",
                "CONDA_PREFIX",
                "PATH",
                "LLCUDA_NETWORK_ISOLATED",
            )
        },
    }
    try:
        import llcuda
        from llcuda.system import binaries as bootstrap

        report["llcuda_file"] = llcuda.__file__
        binaries = bootstrap.find_binaries()
        report["source"] = binaries.source
        report["bin_dir"] = str(binaries.bin_dir)
        report["lib_dir"] = str(binaries.lib_dir)
        report["backend"] = binaries.build_info.get("backend")
        tools = sorted(p for p in binaries.bin_dir.iterdir())
        report["tools"] = {
            p.name: {"mode": oct(p.stat().st_mode & 0o777), "executable": os.access(p, os.X_OK)} for p in tools
        }
        clean = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        runs = {}
        for tool in ("llama-server", "llama-cli", "rpc-server", "ggml-rpc-server"):
            proc = subprocess.run(
                [str(binaries.bin_dir / tool), "--version"],
                check=False,
                capture_output=True,
                text=True,
                env=clean,
                timeout=60,
            )
            runs[tool] = {"returncode": proc.returncode, "output": (proc.stdout + proc.stderr)[-400:]}
        report["version_runs"] = runs
        ldd = subprocess.run(
            ["ldd", str(binaries.bin_dir / "llama-server")],
            check=False,
            capture_output=True,
            text=True,
            env=clean,
        ).stdout
        report["ldd"] = {
            name: where if where == "not found" else os.path.realpath(where)
            for name, where in re.findall(r"^\s*(\S+) => (.+?)(?: \(0x[0-9a-f]+\))?$", ldd, re.MULTILINE)
        }
        report["bundled_libs"] = sorted(p.name for p in (binaries.lib_dir or binaries.bin_dir).iterdir())

        engine = llcuda.InferenceEngine(backend="llama-server")  # the bundled llama-server itself
        try:
            engine.load_model(args.model, ctx_size=512, n_parallel=1)
            result = engine.infer("Hello", max_tokens=64, temperature=0.0, ignore_eos=True)
            report["inference"] = {
                "text": result.text,
                "tokens_generated": result.tokens_generated,
                "finish_reason": result.finish_reason,
                "tokens_per_sec": result.tokens_per_sec,
            }
            server = engine.server
            if server is not None and server.log_path is not None:  # where the layers went (CUDA or CPU)
                log_text = server.log_path.read_text(errors="replace")
                report["offload_lines"] = [
                    line.strip()
                    for line in log_text.splitlines()
                    if "offloaded" in line or "CUDA0 model buffer" in line or "using device" in line
                ][:8]
        finally:
            engine.unload()

        # llcuda's own engine loads libllama with ctypes from the same folder: in this process, and in the
        # `llcuda serve` child the default backend starts where a GPU runs the build
        report["default_backend"] = llcuda.InferenceEngine().backend
        report["engines"] = {}
        for backend in ("inprocess", "serve"):
            engine = llcuda.InferenceEngine(backend=backend)
            try:
                engine.load_model(args.model, ctx_size=512, n_parallel=1)
                result = engine.infer("Hello", max_tokens=16, temperature=0.0, ignore_eos=True)
                report["engines"][backend] = {"text": result.text, "tokens_generated": result.tokens_generated}
            except Exception as exc:  # noqa: BLE001 - the report names what failed, the others still run
                report["engines"][backend] = {"error": f"{type(exc).__name__}: {exc}"[-1500:]}
            finally:
                engine.unload()

        lib = binaries.lib_dir or binaries.bin_dir.parent / "lib"
        report["damage"] = (
            []
            if args.no_damage
            else [
                damage(kind, path, args.find_links, args.model)
                for kind, path in (
                    ("not-executable", binaries.bin_dir / "llama-server"),
                    ("missing-tool", binaries.bin_dir / "llama-cli"),
                    ("missing-library", lib / "libllama.so.0"),
                )
            ]
        )
    except Exception:  # noqa: BLE001 - the report must say what broke, whatever it was
        report["error"] = traceback.format_exc()
    report["failures"] = failures(report)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["failures"] else 0


def failures(report: dict) -> list[str]:
    """What CI rejects; tests/test_wheel.py checks the same facts on the report's raw fields."""
    found = []
    if "error" in report:
        found.append("the smoke test raised (see error)")
    if report.get("source") != "bundled":
        found.append(f"bootstrap source is {report.get('source')!r}, not 'bundled'")
    for backend, run in report.get("engines", {}).items():
        if not run.get("tokens_generated"):
            found.append(f"backend {backend!r} generated nothing: {run.get('error', run)}")
    if not str(report.get("llcuda_file", "")).startswith(report["sys_prefix"]):
        found.append("llcuda was not imported from the fresh venv")
    found += [f"{name} is not executable" for name, t in report.get("tools", {}).items() if not t["executable"]]
    found += [
        f"{name} --version exited {run['returncode']}"
        for name, run in report.get("version_runs", {}).items()
        if run["returncode"] != 0
    ]
    lib_dir = os.path.realpath(report.get("lib_dir", "")) + os.sep
    for name, where in report.get("ldd", {}).items():
        bundled = name in report.get("bundled_libs", [])  # then the RUNPATH must have found that copy
        if where == "not found" or (bundled and not where.startswith(lib_dir)):
            found.append(f"ldd llama-server: {name} => {where}")
    if report.get("inference", {}).get("tokens_generated", 0) < 1:
        found.append("no tokens generated")
    for case in report.get("damage", []):
        if not case["message"] or "pip install --force-reinstall" not in case["message"]:
            found.append(f"{case['kind']}: the bootstrap gave no reinstall command ({case['message']!r})")
        elif not case["repaired"]:
            found.append(f"{case['kind']}: running the reinstall command did not repair it")
    return found


if __name__ == "__main__":
    sys.exit(main())
