"""Download progress: a bar on a terminal (a real pty) and in a real Jupyter kernel, nothing in pipes."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_server import FakeHub, make_gguf

from llcuda.models.progress import Progress, in_notebook, interactive

REPO = "org/bar"
SPEC = f"hf://{REPO}/bar-Q4_K_M.gguf"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    for var in ("HF_TOKEN", "LLCUDA_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("LLCUDA_HOME", str(tmp_path / "home"))
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        model = make_gguf(tmp_path / "m.gguf", tensor_bytes=2 << 20)
        fake.add_file(REPO, "bar-Q4_K_M.gguf", model.read_bytes())
        yield fake


def _download_in_child(stderr: Any) -> subprocess.Popen[bytes]:
    code = f"from llcuda.models import resolve_model; print(resolve_model({SPEC!r}).size)"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=stderr)


def test_quiet_when_nobody_watches(server: FakeHub) -> None:
    stream = io.StringIO()
    bar = Progress("model.gguf", 100, stream=stream)
    bar.update(60)
    bar.reset(10, 200)
    bar.update(190)
    bar.close()
    assert not bar.enabled and stream.getvalue() == "" and bar.done == 200
    assert not interactive(stream) and not in_notebook()
    child = _download_in_child(subprocess.PIPE)  # stderr is a pipe: not a terminal, not a notebook
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert err == b"" and int(out) > 2 << 20


def test_forced_bar_counts_resumed_bytes(server: FakeHub) -> None:
    stream = io.StringIO()
    bar = Progress("a-very-long-label-" * 4 + "model.gguf", 4096, enabled=True, stream=stream)
    bar.reset(1024)
    bar.update(3072)
    bar.close()
    text = stream.getvalue()
    assert "100%" in text and "4.00k" in text.lower() and text.endswith("\n")
    assert "…" in text and "model.gguf" in text and "a-very-long-label-a" not in text


def test_bar_draws_on_a_terminal(server: FakeHub) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        child = _download_in_child(slave)
        os.close(slave)
        chunks = []
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        out, _ = child.communicate(timeout=60)
    finally:
        os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert child.returncode == 0, screen
    assert int(out) > 2 << 20
    assert "100%" in screen and "bar-Q4_K_M.gguf" in screen and "B/s" in screen, screen
    assert "\r" in screen  # redrawn in place


@pytest.mark.slow
def test_bar_is_a_widget_in_a_jupyter_kernel(server: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ipykernel", reason="the test extra installs ipykernel")
    pytest.importorskip("ipywidgets", reason="the test extra installs ipywidgets")
    from jupyter_client.manager import KernelManager

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    )
    server.add_file(REPO, "bar-Q8_0.gguf", make_gguf(tmp_path / "q8.gguf", tensor_bytes=1 << 20).read_bytes())
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))  # no TCP ports
    km.start_kernel()
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=120)

        def run(code: str) -> list[dict[str, Any]]:
            messages: list[dict[str, Any]] = []
            reply = kc.execute_interactive(textwrap.dedent(code), output_hook=messages.append, timeout=120)
            assert reply["content"]["status"] == "ok", messages
            return messages

        run("""
            from llcuda.models import resolve_model
            from llcuda.models.progress import in_notebook
            assert in_notebook()
        """)
        drawn = run(f"print(resolve_model({SPEC!r}).size)")
        kinds = [m["msg_type"] for m in drawn]
        widgets = [
            m
            for m in drawn
            if m["msg_type"] == "display_data" and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]
        ]
        assert widgets, kinds
        size = int(
            next(m["content"]["text"] for m in drawn if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")
        )
        values = [
            m["content"]["data"]["state"].get("value")
            for m in drawn
            if m["msg_type"] in ("comm_open", "comm_msg") and "state" in m["content"].get("data", {})
        ]
        assert size in values, "the widget must reach the file size"
        assert not [m for m in drawn if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"]
        quiet = run(f"_ = resolve_model('{REPO}:Q8_0', progress=False)")
        assert [m["msg_type"] for m in quiet if m["msg_type"] != "status"] == ["execute_input"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
