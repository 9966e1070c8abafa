"""``llcuda serve`` as a real child process on a free loopback port, for the tests that talk to it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from openai import OpenAI

START_TIMEOUT_S = 240.0


@dataclass
class Served:
    process: subprocess.Popen[str]
    url: str
    log: Path
    auth: dict[str, str] = field(default_factory=dict)  # the API key's header, if the server has one

    def client(self, api_key: str = "unused", **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=120, **kwargs)

    def running(self) -> int:
        return int(self.get("/health").json()["running"])

    def metric(self, line_start: str) -> float:
        for line in self.get("/metrics", headers=self.auth).text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def start_serve(
    model: Path | str, *args: str, log: Path, env: dict[str, str] | None = None, api_key: str | None = None
) -> Served:
    """``llcuda serve`` on a free loopback port; returns once ``/health`` answers 200."""
    command = [sys.executable, "-m", "llcuda", "serve", "-m", str(model), "--port", "0", "--threads", "1", *args]
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("LLCUDA_API_KEY", None)
    if api_key:
        full_env["LLCUDA_API_KEY"] = api_key
    with log.open("w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=full_env)
    try:
        return _wait_ready(process, log, api_key)
    except BaseException:
        process.kill()  # a server that failed to start must not outlive the test
        process.wait()
        raise


def _wait_ready(process: subprocess.Popen[str], log: Path, api_key: str | None) -> Served:
    assert process.stdout is not None
    first = process.stdout.readline()
    found = re.search(r"listening at (http://127\.0\.0\.1:\d+)", first)
    if not found:
        pytest.fail(f"llcuda serve did not say where it listens: {first!r}\n{log.read_text()}")
    served = Served(process, found.group(1), log, {"Authorization": f"Bearer {api_key}"} if api_key else {})
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        status = served.get("/health").status_code
        if status == 200:
            break
        assert status == 503, f"/health answered {status} while loading"
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"llcuda serve did not become ready (exit {process.poll()}):\n{log.read_text()}")
        time.sleep(0.2)
    assert "serving" in process.stdout.readline()
    return served


def stop_serve(served: Served) -> None:
    served.process.send_signal(signal.SIGTERM)
    try:
        code = served.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        served.process.kill()
        raise
    assert code == 0, f"llcuda serve exited with {code} after SIGTERM:\n{served.log.read_text()}"
