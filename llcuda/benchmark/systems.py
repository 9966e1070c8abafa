"""The systems the benchmark compares with llama.cpp's own tools: one small class each, in :data:`SYSTEMS`.

A system starts the model (:meth:`System.start`, timed as load -> ready), answers one request at a time
from any thread (:meth:`System.request`), and stops. Adding a system is one class and one entry.
Each runs in a fresh Python process of its own (see :mod:`llcuda.benchmark.sections`).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from llcuda.benchmark.workload import Reply, Sampling
from llcuda.errors import ConfigError
from llcuda.processes.process import ManagedProcess

if TYPE_CHECKING:
    from llcuda.options import LoadOptions

SERVE_READY_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Job:
    """What every system loads: the same model, slots and context."""

    model: Path
    n_parallel: int
    ctx_size: int
    gpu_layers: int
    flash_attn: str
    log_dir: Path

    def load_options(self) -> LoadOptions:
        from llcuda.options import LoadOptions

        return LoadOptions(
            gpu_layers=self.gpu_layers, ctx_size=self.ctx_size, n_parallel=self.n_parallel, flash_attn=self.flash_attn
        ).checked()

    def log_file(self, name: str) -> Path:
        """``<log_dir>/<name>.log``, created empty (a child process's output is appended to it)."""
        path = self.log_dir / f"{name}.log"
        path.touch()
        return path


class System:
    """One way of running the model. Subclasses set ``label`` and implement the four methods."""

    label = ""

    def unavailable(self) -> str | None:
        """Why this system cannot run here (a missing package or module), or None."""
        return None

    def start(self, job: Job) -> dict[str, Any]:
        """Load the model and return facts worth recording (which API, which backend)."""
        raise NotImplementedError

    def request(self, prompt: str, max_tokens: int, sampling: Sampling) -> Reply:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class EngineSystem(System):
    """``llcuda.InferenceEngine`` with a given backend (None: the default one)."""

    def __init__(self, backend: str | None) -> None:
        self.backend = backend
        self.label = f"InferenceEngine(backend={backend!r})" if backend else "InferenceEngine() default"
        self.engine: Any = None

    def start(self, job: Job) -> dict[str, Any]:
        from llcuda import InferenceEngine

        self.engine = InferenceEngine(backend=self.backend, request_timeout=REQUEST_TIMEOUT_S)
        self.engine.load_model(job.model, job.load_options())
        return {"backend": self.engine.backend, "load_timings": dict(self.engine.load_timings or {})}

    def request(self, prompt: str, max_tokens: int, sampling: Sampling) -> Reply:
        t0 = time.perf_counter()
        result = self.engine.infer(prompt, max_tokens=max_tokens, ignore_eos=True, **sampling.arguments())
        return Reply(result.tokens_generated, time.perf_counter() - t0, result.prompt_tokens)

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.unload()


class OpenAIClientSystem(System):
    """An OpenAI-compatible server through the official ``openai`` client: ``/v1/completions``,
    streamed or not. Subclasses start the server and set ``base_url``."""

    server_name = ""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.label = f"{self.server_name} via openai client" + (", streaming" if stream else "")
        self.base_url = ""
        self.client: Any = None
        self.model_id = ""

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("openai") is None:
            return "the openai package is not installed: pip install 'llcuda[bench]'"
        return None

    def connect(self) -> None:
        import openai

        self.client = openai.OpenAI(
            base_url=f"{self.base_url}/v1",
            api_key="unused",
            max_retries=0,
            timeout=REQUEST_TIMEOUT_S,
            http_client=openai.DefaultHttpxClient(trust_env=False),
        )  # loopback: no proxy
        self.model_id = self.client.models.list().data[0].id

    def request(self, prompt: str, max_tokens: int, sampling: Sampling) -> Reply:
        args = sampling.arguments()
        extra = {"ignore_eos": True}
        if "top_k" in args:
            extra["top_k"] = args.pop("top_k")
        t0 = time.perf_counter()
        if not self.stream:
            done = self.client.completions.create(
                model=self.model_id, prompt=prompt, max_tokens=max_tokens, extra_body=extra, **args
            )
            usage = done.usage
            return Reply(usage.completion_tokens, time.perf_counter() - t0, usage.prompt_tokens)
        first = None
        pieces = 0
        usage = None
        stream = self.client.completions.create(
            model=self.model_id,
            prompt=prompt,
            max_tokens=max_tokens,
            extra_body=extra,
            stream=True,
            stream_options={"include_usage": True},
            **args,
        )
        for chunk in stream:
            if chunk.choices:
                pieces += 1
                if first is None:
                    first = time.perf_counter() - t0
            if getattr(chunk, "usage", None):
                usage = chunk.usage
        wall = time.perf_counter() - t0
        tokens = usage.completion_tokens if usage else pieces
        return Reply(tokens, wall, usage.prompt_tokens if usage else None, first)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()


class LlamaServerSystem(OpenAIClientSystem):
    """Stock llama-server, started by llcuda's :class:`~llcuda.LlamaServer` with the job's settings."""

    server_name = "llama-server"

    def start(self, job: Job) -> dict[str, Any]:
        from llcuda.processes.llama_server import LlamaServer, ServerSettings

        log_path = job.log_file(f"llama-server-{'stream' if self.stream else 'plain'}")
        self.server = LlamaServer(ServerSettings.from_options(job.model, job.load_options()), log_path=log_path)
        self.base_url = self.server.start(SERVE_READY_TIMEOUT_S)
        self.connect()
        return {"server_log": log_path.name}

    def stop(self) -> None:
        super().stop()
        self.server.stop()


class ServeProcess(ManagedProcess):
    """``llcuda serve`` on loopback, as a user starts it: ready once ``/health`` answers 200."""

    name = "llcuda serve"
    bind_failure_markers = ("address already in use",)

    def __init__(self, job: Job, log_path: Path) -> None:
        super().__init__(host="127.0.0.1", port=None, log_path=log_path)
        self.job = job

    def command(self, port: int) -> list[str]:
        from llcuda.options import to_arguments

        cmd = [sys.executable, "-m", "llcuda", "serve", "--model", str(self.job.model), "--host", self.host]
        return cmd + ["--port", str(port), *to_arguments(self.job.load_options())]

    def probe(self) -> bool:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
        try:
            with opener.open(f"http://{self.host}:{self.port}/health", timeout=2.0) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False


class ServeSystem(OpenAIClientSystem):
    """``llcuda serve`` (llcuda's own OpenAI-compatible app), started as a user would, on loopback."""

    server_name = "llcuda serve"

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("llcuda.serve") is None:
            return "this llcuda has no llcuda.serve"
        return super().unavailable()

    def start(self, job: Job) -> dict[str, Any]:
        log_path = job.log_file(f"llcuda-serve-{'stream' if self.stream else 'plain'}")
        self.process = ServeProcess(job, log_path)
        self.process.start_process(SERVE_READY_TIMEOUT_S)
        self.base_url = f"http://127.0.0.1:{self.process.port}"
        self.connect()
        return {"server_log": log_path.name}

    def stop(self) -> None:
        super().stop()
        self.process.stop()


# name -> factory; the order is the report's.
SYSTEMS: dict[str, Callable[[], System]] = {
    "inprocess": lambda: EngineSystem("inprocess"),
    "engine": lambda: EngineSystem(None),
    "serve": lambda: ServeSystem(stream=False),
    "serve-stream": lambda: ServeSystem(stream=True),
    "llama-server": lambda: LlamaServerSystem(stream=False),
    "llama-server-stream": lambda: LlamaServerSystem(stream=True),
}


def get_system(name: str) -> System:
    try:
        return SYSTEMS[name]()
    except KeyError:
        raise ConfigError(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}.") from None
