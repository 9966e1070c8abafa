"""``llcuda serve`` as a child process: llcuda's own engine behind its OpenAI-compatible HTTP API.

``InferenceEngine()`` runs the model this way by default: the fast in-process engine, with the
crash isolation of a separate process (parent-death signal, restart after a crash, the log's tail
in errors). It answers the same endpoints as llama-server, so the same client and backend serve both.
"""

from __future__ import annotations

import os
import sys

from llcuda.options import to_arguments
from llcuda.processes.llama_server import LlamaServer


class LlcudaServer(LlamaServer):
    """``python -m llcuda serve`` for :attr:`settings`, on the binaries this process found."""

    name = "llcuda-serve"
    bind_failure_markers = ("cannot listen on",)

    def command(self, port: int) -> list[str]:
        s = self.settings
        cmd = [
            sys.executable,
            "-m",
            "llcuda",
            "serve",
            "--model",
            str(s.model_path),
            "--host",
            s.host,
            "--port",
            str(port),
            *to_arguments(s.load_options()),
        ]
        if s.alias:
            cmd += ["--alias", s.alias]
        if s.allow_unauthenticated:
            cmd += ["--allow-unauthenticated"]
        return cmd + list(s.extra_args)

    def environment(self, port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("LLCUDA_API_KEY", None)
        env["LLCUDA_BIN_DIR"] = str(self.binaries.bin_dir)  # the same binaries as this process
        env["PYTHONUNBUFFERED"] = "1"
        if self.settings.api_key:  # the environment (owner-only), never argv
            env["LLCUDA_API_KEY"] = self.settings.api_key
        return env

    def explain_exit(self, code: int, tail: str) -> str:
        return f"llcuda serve exited with code {code} before it was ready (model: {self.settings.model_path})."
