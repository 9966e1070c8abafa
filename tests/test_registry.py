"""The registry of running servers, `llcuda ps` and `llcuda stop`: real llama-server and rpc-server processes
started by one Python process, listed and stopped from others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from processes import gone

from llcuda.cli.ps import format_uptime, table
from llcuda.errors import ConfigError
from llcuda.processes import registry

# Starts servers, prints their pids, then waits; "unload" on stdin unloads the engine, end of stdin exits.
OWNER = textwrap.dedent("""
    import sys
    from llcuda.engine import InferenceEngine
    from llcuda.processes.rpc_worker import RpcWorker

    engine = InferenceEngine(backend=sys.argv[2])
    engine.load_model(sys.argv[1], ctx_size=256, n_parallel=1, threads=1)
    pids = [engine.server.pid]
    if "rpc" in sys.argv[3:]:
        worker = RpcWorker(threads=1).start()
        pids.append(worker.pid)
    print(*pids, flush=True)
    for line in sys.stdin:
        if line.strip() == "unload":
            engine.unload()
            print("unloaded", flush=True)
""")


def llcuda(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llcuda", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, LLCUDA_HOME=str(home)),
    )


def ps(home: Path) -> list[dict[str, object]]:
    done = llcuda(home, "ps", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class Owner:
    """A Python process that started servers and keeps them."""

    def __init__(self, home: Path, model: Path, *extra: str, backend: str = "llama-server") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", OWNER, str(model), backend, *extra], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, LLCUDA_HOME=str(home)),
        )  # fmt: skip
        line = self.process.stdout.readline()
        assert line.strip(), self.process.stderr.read()
        self.pids = [int(x) for x in line.split()]

    def send(self, text: str) -> str:
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_ps_lists_a_server_of_another_process_and_stop_stops_it(binaries, tiny_model, home):
    owner = Owner(home, tiny_model)
    try:
        (server_pid,) = owner.pids
        (entry,) = ps(home)
        assert entry["pid"] == server_pid and entry["kind"] == "llama-server"
        assert entry["parent_pid"] == owner.process.pid
        assert entry["model"] == str(tiny_model)
        assert entry["url"] == f"http://127.0.0.1:{entry['port']}" and entry["host"] == "127.0.0.1"
        assert Path(str(entry["log_path"])).is_file()
        assert 0 <= float(str(entry["uptime_s"])) < 600
        assert (home / "run" / f"{server_pid}.json").is_file()

        listing = llcuda(home, "ps").stdout.splitlines()
        assert listing[0].split() == ["ID", "PID", "KIND", "MODEL", "URL", "UPTIME", "GPU", "MEM"]
        assert listing[1].split()[:4] == [entry["id"], str(server_pid), "llama-server", tiny_model.name]

        stopped = llcuda(home, "stop", str(entry["id"]))
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped llama-server {entry['id']} (pid {server_pid})" in stopped.stdout
        assert gone(server_pid)
        assert ps(home) == [] and not (home / "run" / f"{server_pid}.json").exists()
        assert owner.process.poll() is None  # only the server was stopped
    finally:
        owner.close()


def test_a_record_is_removed_when_its_server_stops(binaries, tiny_model, home):
    owner = Owner(home, tiny_model)
    try:
        (server_pid,) = owner.pids
        assert [e["pid"] for e in ps(home)] == [server_pid]
        assert owner.send("unload") == "unloaded"
        assert not (home / "run" / f"{server_pid}.json").exists()
        assert ps(home) == []
    finally:
        owner.close()


def test_a_crashed_server_is_ignored_and_its_record_cleaned(binaries, tiny_model, home):
    owner = Owner(home, tiny_model)
    try:
        (server_pid,) = owner.pids
        os.kill(server_pid, signal.SIGKILL)  # its parent has not reaped it: a zombie until then
        assert gone(server_pid)
        assert (home / "run" / f"{server_pid}.json").is_file()
        assert ps(home) == []
        assert not (home / "run" / f"{server_pid}.json").exists()
        done = llcuda(home, "stop", str(server_pid))
        assert done.returncode == 1 and "`llcuda ps` lists them" in done.stderr
    finally:
        owner.close()


def test_the_records_of_a_killed_owner_are_cleaned(binaries, tiny_model, home):
    owner = Owner(home, tiny_model)
    (server_pid,) = owner.pids
    owner.process.kill()  # no Python cleanup: the parent-death signal ends the server, its record stays
    owner.process.wait()
    assert gone(server_pid)
    assert (home / "run" / f"{server_pid}.json").is_file()
    assert ps(home) == [] and list((home / "run").iterdir()) == []


def test_stop_all_stops_llama_server_and_rpc_server(binaries, tiny_model, home):
    owner = Owner(home, tiny_model, "rpc")
    try:
        server_pid, worker_pid = owner.pids
        entries = {e["pid"]: e for e in ps(home)}
        assert set(entries) == {server_pid, worker_pid}
        assert entries[worker_pid]["kind"] == "rpc-server"
        assert entries[worker_pid]["url"] == f"127.0.0.1:{entries[worker_pid]['port']}"
        assert entries[worker_pid]["model"] is None
        done = llcuda(home, "stop", "--all")
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == 2
        assert gone(server_pid) and gone(worker_pid)
        assert ps(home) == []
        assert llcuda(home, "stop", "--all").stdout.strip() == "no servers started by llcuda are running"
    finally:
        owner.close()


def test_a_llcuda_serve_child_is_listed_and_stopped(binaries, tiny_model, home):
    owner = Owner(home, tiny_model, backend="serve")  # InferenceEngine's default: `llcuda serve` in a child
    try:
        (serve_pid,) = owner.pids
        (entry,) = ps(home)
        assert (entry["pid"], entry["kind"]) == (serve_pid, "llcuda-serve")
        assert entry["parent_pid"] == owner.process.pid
        assert entry["model"] == str(tiny_model) and str(entry["url"]).startswith("http://127.0.0.1:")
        done = llcuda(home, "stop", str(serve_pid))
        assert done.returncode == 0, done.stderr
        assert gone(serve_pid) and ps(home) == []
    finally:
        owner.close()


def test_a_process_recorded_twice_keeps_what_each_record_told(home, monkeypatch):
    monkeypatch.setenv("LLCUDA_HOME", str(home))
    first = registry.register(
        os.getpid(), kind="llcuda-serve", host="127.0.0.1", port=9, model="/m/a.gguf", log_path="/l/serve.log"
    )
    second = registry.register(os.getpid(), kind="llcuda-serve", host="127.0.0.1", port=9, backend="inprocess")
    assert (second.model, second.log_path, second.backend) == ("/m/a.gguf", "/l/serve.log", "inprocess")
    assert second.id == first.id and registry.list_running() == [second]


def test_stop_escalates_to_sigkill(home, monkeypatch):
    monkeypatch.setenv("LLCUDA_HOME", str(home))
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(); time.sleep(600)"
    stubborn = subprocess.Popen([sys.executable, "-uc", code], stdout=subprocess.PIPE, text=True)
    try:
        stubborn.stdout.readline()  # SIGTERM is ignored from here on
        entry = registry.register(stubborn.pid, kind="serve", host="127.0.0.1", port=9, backend="inprocess")
        assert [e.pid for e in registry.list_running()] == [stubborn.pid]
        assert registry.stop(entry.id, grace=0.5) == entry
        assert stubborn.wait(timeout=10) == -signal.SIGKILL
        assert registry.list_running() == []
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
            stubborn.wait()


def test_a_reused_pid_is_not_taken_for_the_recorded_process(home, monkeypatch):
    monkeypatch.setenv("LLCUDA_HOME", str(home))
    entry = registry.register(os.getpid(), kind="serve", host="127.0.0.1", port=9)
    assert registry.list_running() == [entry] and registry.is_running(entry)
    assert entry.start_ticks is not None and entry.parent_pid == os.getppid()
    # The same pid with another start time: a process that ended, its pid now someone else's.
    record = home / "run" / f"{os.getpid()}.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps(dict(data, start_ticks=entry.start_ticks - 1)))
    assert registry.list_running() == [] and not record.exists()
    with pytest.raises(ConfigError, match="llcuda ps"):
        registry.stop(str(os.getpid()))  # never signals a process it did not start


def test_unreadable_records_are_removed_and_unregister_spares_a_newer_record(home, monkeypatch):
    monkeypatch.setenv("LLCUDA_HOME", str(home))
    (home / "run").mkdir(parents=True)
    (home / "run" / "123.json").write_text("{not json")
    assert registry.list_running() == [] and list((home / "run").iterdir()) == []
    entry = registry.register(os.getpid(), kind="serve", host="127.0.0.1", port=9)
    older = registry.RunEntry(
        **dict(json.loads((home / "run" / f"{os.getpid()}.json").read_text()), start_ticks=(entry.start_ticks or 0) - 1)
    )
    registry.unregister(older)
    assert registry.list_running() == [entry]
    registry.unregister(entry)
    assert registry.list_running() == []


def test_a_llcuda_serve_started_from_a_shell_is_listed_and_stopped(binaries, tiny_model, home):
    cli = subprocess.Popen(
        [sys.executable, "-m", "llcuda", "serve", "-m", str(tiny_model), "--port", "0", "-c", "512", "-np", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, LLCUDA_HOME=str(home), LLCUDA_BIN_DIR=str(binaries.bin_dir)),
        start_new_session=True,
    )
    try:
        while "serving" not in (line := cli.stdout.readline()):  # once the model is loaded
            assert line, cli.stderr.read()
        (entry,) = [e for e in ps(home) if e["pid"] == cli.pid]
        assert entry["kind"] == "llcuda-serve" and str(entry["model"]).endswith(tiny_model.name)
        assert str(entry["url"]).startswith("http://127.0.0.1:")
        done = llcuda(home, "stop", str(cli.pid))
        assert done.returncode == 0, done.stderr
        assert cli.wait(timeout=60) == 0
        assert [e for e in ps(home) if e["pid"] == cli.pid] == []
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()


def test_uptime_and_table_format():
    assert [format_uptime(s) for s in (5, 65, 3 * 3600 + 7 * 60, 2 * 86400 + 4 * 3600)] == [
        "5s",
        "1m05s",
        "3h07m",
        "2d04h",
    ]
    lines = table(
        [
            {
                "id": "abc123",
                "pid": 42,
                "kind": "llama-server",
                "model": "/m/x.gguf",
                "url": "http://127.0.0.1:8080",
                "uptime_s": 61.0,
                "gpu_memory_mib": 812,
            }
        ]
    )
    assert lines[1].split() == [
        "abc123",
        "42",
        "llama-server",
        "x.gguf",
        "http://127.0.0.1:8080",
        "1m01s",
        "812",
        "MiB",
    ]
    assert lines[0].index("PID") == lines[1].index("42")
    assert lines[0].index("URL") == lines[1].index("http")


@pytest.mark.gpu
def test_ps_shows_the_gpu_memory_of_a_server(binaries, tiny_model, home):
    owner = Owner(home, tiny_model)
    try:
        (entry,) = ps(home)
        assert isinstance(entry["gpu_memory_mib"], int) and entry["gpu_memory_mib"] > 0
        assert "MiB" in llcuda(home, "ps").stdout
    finally:
        owner.close()
