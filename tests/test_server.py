"""LlamaServer process management with the real llama-server binary."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
from processes import gone

from llcuda import ConfigError, ServerStartError
from llcuda.processes.llama_server import LlamaServer, ServerSettings, build_command


def test_command_is_an_argument_list_with_every_setting(tmp_path):
    settings = ServerSettings(
        model_path=tmp_path / "m.gguf",
        ctx_size=1024,
        n_parallel=2,
        gpu_layers=10,
        flash_attn="on",
        embeddings=True,
        tensor_split=(0.5, 0.5),
        rpc=("h:1", "h:2"),
        split_mode="row",
        main_gpu=1,
        api_key="secret",
    )
    cmd = build_command(Path("/bin/llama-server"), settings, 1234)

    def value(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert value("--model") == str(tmp_path / "m.gguf")
    assert value("--port") == "1234" and value("--host") == "127.0.0.1"
    assert value("--ctx-size") == "1024" and value("--parallel") == "2" and value("--n-gpu-layers") == "10"
    assert value("--flash-attn") == "on"
    assert "--kv-unified" in cmd and "--no-kv-unified" not in cmd, "LoadOptions' default: one shared KV cache"
    split = build_command(Path("/bin/llama-server"), replace(settings, kv_unified=False), 1234)
    assert "--no-kv-unified" in split and "--kv-unified" not in split
    assert "--tensor-split" in cmd and "0.5,0.5" in cmd and "h:1,h:2" in cmd
    assert "--embeddings" in cmd and "row" in cmd
    assert "secret" not in cmd, "the API key is added at spawn time only, never in a loggable command"
    assert "secret" not in repr(settings)


@pytest.mark.parametrize("field,value", [("n_parallel", 0), ("ctx_size", 8), ("flash_attn", "maybe"), ("port", 70000)])
def test_invalid_settings_are_refused(tmp_path, binaries, field, value):
    settings = ServerSettings(model_path=tmp_path / "m.gguf", **{field: value})
    with pytest.raises(ConfigError):
        LlamaServer(settings, binaries=binaries)


def test_start_wait_ready_stop(binaries, tiny_model, isolated_home):
    server = LlamaServer(ServerSettings(model_path=tiny_model, ctx_size=512, n_parallel=1), binaries=binaries)
    url = server.start()
    assert url.startswith("http://127.0.0.1:")
    pid = server.pid
    assert server.is_running()
    assert server.log_path is not None and server.log_path.parent == isolated_home / "logs"
    server.stop()
    assert not server.is_running()
    assert gone(pid)


def test_a_server_that_cannot_load_reports_its_log(binaries, tmp_path, isolated_home):
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    server = LlamaServer(ServerSettings(model_path=bogus, ctx_size=512, n_parallel=1), binaries=binaries)
    with pytest.raises(ServerStartError) as info:
        server.start(timeout=60)
    assert "exited with code" in str(info.value)
    assert info.value.log_tail, "the error must carry the server's own log lines"
    assert not server.is_running()


def test_taken_fixed_port_is_a_clear_error(binaries, tiny_model, isolated_home):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = LlamaServer(
            ServerSettings(model_path=tiny_model, ctx_size=512, n_parallel=1, port=port), binaries=binaries
        )
        with pytest.raises(ServerStartError, match="already in use"):
            server.start(timeout=60)


def test_server_dies_with_its_parent_even_on_sigkill(binaries, tiny_model, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from llcuda.processes.llama_server import LlamaServer
        from llcuda.processes.llama_server import ServerSettings
        from llcuda.system.binaries import find_binaries
        s = LlamaServer(ServerSettings(model_path=__import__('pathlib').Path({str(tiny_model)!r}),
                        ctx_size=512, n_parallel=1), binaries=find_binaries())
        s.start()
        print(s.pid, flush=True)
        time.sleep(600)
    """)
    env = dict(os.environ, LLCUDA_HOME=str(tmp_path))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        child_pid = int(parent.stdout.readline())
        os.kill(child_pid, 0)  # alive
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert gone(child_pid), "llama-server outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_server_started_from_a_short_lived_thread_survives_it(binaries, tiny_model, isolated_home):
    import threading

    holder = {}

    def start() -> None:
        server = LlamaServer(ServerSettings(model_path=tiny_model, ctx_size=512, n_parallel=1), binaries=binaries)
        server.start()
        holder["server"] = server

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    time.sleep(0.5)
    server = holder["server"]
    try:
        assert server.is_running(), "the parent-death signal must be tied to the process, not the thread"
    finally:
        server.stop()
