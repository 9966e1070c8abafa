"""One benchmark run: find the binaries and the model, run each section in its own process, write results.

The results go to ``<out>/<device>-<YYYY-MM-DD>/`` (``-2``, ``-3``… when that folder holds a run already):

    report.json   the environment, the settings, every section's raw rows and the summary
    report.md     the tables: each llcuda row as tok/s and its ratio to the ceiling of the same run
    report.png    aggregate tokens/s against concurrent requests (needs matplotlib)
    logs/         each section's log and the servers' logs
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import llcuda
from llcuda.benchmark import environment, report
from llcuda.benchmark.random_model import RANDOM_MODELS, random_model
from llcuda.benchmark.settings import BenchSettings
from llcuda.benchmark.systems import SYSTEMS
from llcuda.errors import BinaryNotFoundError

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
SCHEMA = 1
CEILING_TOOLS = ("llama-bench", "llama-batched-bench")


@dataclass(frozen=True)
class BenchOutput:
    """Where a run's files went, and what they hold."""

    folder: Path
    json_path: Path
    markdown_path: Path
    plot_path: Path | None
    data: dict[str, Any]


def output_folder(root: Path, device_slug: str, day: str) -> Path:
    """``root/<device>-<day>``, or the first of ``…-2``, ``…-3`` that holds no run yet (created)."""
    base = f"{device_slug}-{day}"
    n = 1
    while True:
        folder = root / (base if n == 1 else f"{base}-{n}")
        if not (folder / "report.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        n += 1


def _model(settings: BenchSettings, binaries: Any, progress: Progress) -> Path:
    if settings.model in RANDOM_MODELS:
        progress(f"model: {settings.model} (random weights; made once, then cached)")
        return random_model(settings.model, binaries=binaries, vocab_dir=settings.vocab_dir, offline=settings.offline)
    from llcuda.models import resolve_model

    return resolve_model(settings.model, offline=settings.offline).path


def _child_env(binaries: Any) -> dict[str, str]:
    """This environment, with the same binaries and the same llcuda for every section."""
    package_root = str(Path(llcuda.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, LLCUDA_BIN_DIR=str(binaries.bin_dir), PYTHONPATH=path, PYTHONUNBUFFERED="1")


def _run_section(
    section: str,
    request: dict[str, Any],
    log_dir: Path,
    env: dict[str, str],
    timeout: float | None,
    progress: Progress,
) -> dict[str, Any]:
    name = re.sub(r"[^\w.-]+", "-", section)
    log_path = log_dir / f"{name}.log"
    result_path = log_dir / f"{name}.result.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "llcuda.benchmark.sections", section, json.dumps(request), str(result_path)]
    started = time.perf_counter()
    with log_path.open("w") as log_file:
        child = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: a kill reaches the tools it started as well
        )
        timed_out = threading.Event()

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)

        def expire() -> None:
            timed_out.set()
            kill()

        timer = threading.Timer(timeout, expire) if timeout else None
        if timer is not None:
            timer.start()
        try:
            for line in child.stdout or ():
                progress(f"{section}: {line.rstrip()}")
            code = child.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if child.poll() is None:  # interrupted
                kill()
                child.wait()
    seconds = round(time.perf_counter() - started, 1)
    if code != 0 or not result_path.is_file():
        why = f"timed out after {timeout:.0f} s" if timed_out.is_set() else f"exit code {code}"
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        progress(f"{section}: FAILED ({why}); log: {log_path}")
        log_name = f"{log_dir.name}/{log_path.name}"  # relative to the run's folder
        return {"error": why, "log": log_name, "log_tail": tail, "section_seconds": seconds}
    result = json.loads(result_path.read_text())
    result_path.unlink()
    result["section_seconds"] = seconds
    return result


def _check_tools(binaries: Any) -> None:
    from llcuda.system.binaries import tool

    for name in CEILING_TOOLS:
        try:
            tool(name, binaries)
        except FileNotFoundError:
            raise BinaryNotFoundError(
                f"{name} was not found next to {binaries.bin_dir / 'llama-server'} nor on PATH. The "
                f"benchmark compares llcuda with llama.cpp's {' and '.join(CEILING_TOOLS)} from the same "
                "build: install binaries that include them (the llcuda wheel and conda package do), or point "
                "LLCUDA_BIN_DIR at a llama.cpp build's bin/ folder that has them."
            ) from None


def run_benchmark(settings: BenchSettings, progress: Progress | None = None) -> BenchOutput:
    """Run the benchmark; ``progress`` receives one line per step (default: the log, at INFO).

    Raises :class:`~llcuda.BinaryNotFoundError` when llama-bench or llama-batched-bench is missing,
    :class:`~llcuda.ConfigError` for bad settings and the model errors of :func:`llcuda.resolve_model`
    or :func:`llcuda.benchmark.random_model.random_model`. A section that fails is recorded (with its
    log's tail) and the run goes on.
    """
    say = progress or log.info
    settings = settings.checked()
    binaries = llcuda.find_binaries()
    _check_tools(binaries)
    model = _model(settings, binaries, say)
    env_record = environment.collect(binaries, environment.model_facts(model, settings.model))
    folder = output_folder(settings.out_root(), env_record["device_slug"], time.strftime("%Y-%m-%d"))
    log_dir = folder / "logs"
    log_dir.mkdir(exist_ok=True)
    say(f"{env_record['device']}; llama.cpp {binaries.bin_dir}; model {model}; results in {folder}")

    request = {**settings.as_dict(), "model": str(model), "log_dir": str(log_dir)}
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "environment": env_record,
        "settings": settings.as_dict(),
        "reproduce": settings.reproduce(),
        "sections": {},
    }
    json_path = folder / "report.json"
    child_env = _child_env(binaries)
    plan = ["llama-bench", "batched-bench", "startup", "chat-turns"] + [
        f"system:{s}" for s in SYSTEMS if s in settings.systems
    ]
    for section in plan:
        if section.startswith("system:"):
            reason = SYSTEMS[section.split(":", 1)[1]]().unavailable()
            if reason:
                say(f"{section}: not run ({reason})")
                data["sections"][section] = {"skipped": reason}
                continue
        say(f"{section} ...")
        data["sections"][section] = _run_section(section, request, log_dir, child_env, settings.section_timeout, say)
        # after every section, so a run cut short keeps what it measured
        json_path.write_text(json.dumps(data, indent=1, default=str))

    data["summary"] = report.summarize(data)
    json_path.write_text(json.dumps(data, indent=1, default=str))
    markdown_path = folder / "report.md"
    markdown_path.write_text(report.markdown(data))
    from llcuda.benchmark.plot import write_plot

    plot_path = write_plot(data, folder / "report.png")
    if plot_path is None:
        say("report.png not written: matplotlib is not installed (pip install 'llcuda[bench]')")
    failed = [k for k, v in data["sections"].items() if "error" in v]
    if failed:
        say(f"sections that failed: {', '.join(failed)} (see {log_dir})")
    return BenchOutput(folder, json_path, markdown_path, plot_path, data)
