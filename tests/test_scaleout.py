"""Scale-out: llama.cpp RPC workers (real rpc-server processes on loopback) and multi-GPU split checks.

A worker serves one llama-server at a time, so the tests that load a model through workers
each use their own engine and unload it before the next test starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import gone

from llcuda import ConfigError, InferenceError, ServerStartError
from llcuda.cli.main import build_parser, main
from llcuda.engine import InferenceEngine
from llcuda.models.gguf import read_gguf_info
from llcuda.processes import rpc_worker as rpc
from llcuda.processes.process import free_port
from llcuda.system import placement as split
from llcuda.system.gpu import GPUInfo, detect
from llcuda.system.memory import head_sizes

LOAD = {"ctx_size": 512, "n_parallel": 1, "threads": 1}
VERBOSE = ("--log-verbosity", "4")  # llama.cpp logs where each buffer went at verbosity 4


def _gpu(index: int, free_mib: int, name: str = "NVIDIA H100 80GB HBM3") -> GPUInfo:
    return GPUInfo(index, f"GPU-{index}", name, (9, 0), 81559, free_mib, "550.54")


def _rpc_servers_on(port: int) -> list[int]:
    """PIDs of rpc-server processes whose command line has ``--port <port>``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"rpc-server") and str(port).encode() in args:
            found.append(int(entry.name))
    return found


def _connected(pid: int, port: int) -> bool:
    """Whether process ``pid`` has an established TCP connection to 127.0.0.1:``port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for row in rows:
        fields = row.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if state == "01" and int(remote.split(":")[1], 16) == port and inode in inodes:
            return True
    return False


@pytest.fixture(scope="module")
def workers(binaries, isolated_home) -> Iterator[tuple[rpc.RpcWorker, rpc.RpcWorker]]:
    """Two CPU rpc-server workers on loopback, shared by the tests of this module."""
    first = rpc.RpcWorker(threads=1, binaries=binaries).start(timeout=60)
    second = rpc.RpcWorker(threads=1, binaries=binaries).start(timeout=60)
    yield first, second
    first.stop()
    second.stop()


# -- endpoints and split arguments (no processes) ----------------------------------------------
def test_endpoints_are_normalized():
    assert rpc.parse_endpoints(None) == ()
    assert rpc.parse_endpoints(" 10.0.0.2:50052 ,gpu-box:50053") == ("10.0.0.2:50052", "gpu-box:50053")
    assert rpc.parse_endpoints(["127.0.0.1:1", "127.0.0.1:2"]) == ("127.0.0.1:1", "127.0.0.1:2")


@pytest.mark.parametrize(
    "bad", ["nohost", ":50052", "h:", "h:0", "h:70000", "h:abc", "[::1]:50052", "::1:50052", ["h:1", "h:1"], [50052]]
)
def test_bad_endpoints_are_refused(bad):
    with pytest.raises(ConfigError):
        rpc.parse_endpoints(bad)


def test_auto_tensor_split_is_proportional_to_free_memory():
    assert split.auto_tensor_split([_gpu(0, 60000), _gpu(1, 20000)]) == (0.75, 0.25)
    three = split.auto_tensor_split([_gpu(0, 10000), _gpu(1, 10000), _gpu(2, 10000)])
    assert three == (0.333, 0.333, 0.333)
    assert split.auto_tensor_split([_gpu(0, 0), _gpu(1, 0)]) == (0.5, 0.5), "no free memory reported: equal shares"
    assert split.auto_tensor_split([_gpu(0, 5000)]) == (1.0,)
    assert split.auto_tensor_split([]) == ()
    assert (
        split.describe([_gpu(0, 60000), _gpu(1, 20000, "NVIDIA L4")])
        == "GPU0 NVIDIA H100 80GB HBM3 (75%), GPU1 NVIDIA L4 (25%)"
    )


def test_valid_split_arguments_pass_normalized():
    assert split.validate("layer", [3, 1], 1, local_gpus=2) == ("layer", (3.0, 1.0), 1)
    assert split.validate(None, None, None, local_gpus=8) == (None, (), None)
    # RPC workers may expose several devices each: only a lower bound on the entries is known.
    assert split.validate("layer", [1, 1, 2], None, rpc=("a:1", "b:2"), local_gpus=0)[1] == (1.0, 1.0, 2.0)
    assert split.validate("tensor", None, None, rpc=("a:1",), local_gpus=1)[0] == "tensor"
    # A CPU build without workers: llama.cpp ignores these, so they pass (prepare() warns).
    assert split.validate("row", [1, 1], 3, local_gpus=0) == ("row", (1.0, 1.0), 3)
    # Device count unknown (no build-info.json): only the checks that need none.
    assert split.validate("row", [1, 1, 1], 5, local_gpus=None)[1] == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"split_mode": "rows"}, "must be one of"),
        ({"split_mode": "row", "rpc": ("a:1",)}, "does not support split buffers"),
        ({"tensor_split": [1, -1]}, ">= 0"),
        ({"tensor_split": [1, float("nan")]}, "finite"),
        ({"tensor_split": [0, 0]}, "all zeros"),
        ({"tensor_split": "3,1"}, "not a string"),
        ({"tensor_split": [1] * 16}, "at most 15"),
        ({"tensor_split": [1, 1, 1], "local_gpus": 2}, "one proportion per GPU"),
        ({"tensor_split": [1], "local_gpus": 2}, "CUDA_VISIBLE_DEVICES"),
        ({"main_gpu": 2, "local_gpus": 2}, "out of range"),
        ({"main_gpu": -1}, "device index"),
        ({"tensor_split": [1, 1], "rpc": ("a:1", "b:2"), "local_gpus": 1}, "at least 3 devices"),
    ],
)
def test_bad_split_arguments_say_what_to_change(kwargs, words):
    kwargs = {"split_mode": None, "tensor_split": None, "main_gpu": None, "local_gpus": 2, **kwargs}
    with pytest.raises(ConfigError, match=words):
        split.validate(kwargs.pop("split_mode"), kwargs.pop("tensor_split"), kwargs.pop("main_gpu"), **kwargs)


def test_prepare_warns_that_a_cpu_build_ignores_split_arguments(caplog):
    with caplog.at_level("WARNING", logger="llcuda.system.placement"):
        assert split.prepare({"backend": "cpu"}, "layer", [1, 1], None) == ("layer", (1.0, 1.0), None)
    assert "no effect" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="llcuda.system.placement"):
        split.prepare({"backend": "cpu"}, None, [1, 1], None, rpc=("a:1", "b:2"))
    assert "no effect" not in caplog.text, "with workers the split is meaningful on a CPU build"


def test_engine_refuses_bad_split_before_starting_anything(binaries, tiny_model, isolated_home):
    engine = InferenceEngine(binaries=binaries)
    with pytest.raises(ConfigError, match="must be one of"):
        engine.load_model(tiny_model, split_mode="rows", **LOAD)
    with pytest.raises(ConfigError, match="listed twice"):
        engine.load_model(tiny_model, rpc=["127.0.0.1:5", "127.0.0.1:5"], **LOAD)
    assert not engine.is_loaded and engine.server is None


def test_cli_model_options_reach_load_model():
    args = build_parser().parse_args(
        ["infer", "hi", "--rpc", "a:1", "--rpc", "b:2", "--tensor-split", "3,1", "-sm", "layer", "--main-gpu", "0"]
    )
    assert (args.rpc, args.tensor_split, args.split_mode, args.main_gpu) == (["a:1", "b:2"], (3.0, 1.0), "layer", 0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--tensor-split", "3,x"])


# -- the worker process ------------------------------------------------------------------------
def test_worker_starts_reports_devices_and_stops(binaries, isolated_home):
    worker = rpc.RpcWorker(threads=1, binaries=binaries)
    worker.start(timeout=60)
    try:
        assert worker.is_running() and rpc.probe(worker.endpoint) is None
        assert worker.log_path is not None and worker.log_path.parent == isolated_home / "logs"
        assert worker.devices, f"the worker's devices were not parsed from its log:\n{worker.log_tail()}"
        if binaries.build_info.get("backend") == "cpu":
            assert [d.name for d in worker.devices] == ["CPU"]
        assert all(d.memory_total_mib > 0 for d in worker.devices)
        pid = worker.pid
    finally:
        worker.stop()
    assert pid is not None and gone(pid)
    assert rpc.probe(worker.endpoint) is not None, "nothing may listen on the port after stop()"


def test_worker_refuses_non_loopback_without_allow_remote(binaries):
    with pytest.raises(ConfigError, match="no authentication") as info:
        rpc.RpcWorker("0.0.0.0", binaries=binaries)
    assert "allow_remote=True" in str(info.value)
    with pytest.raises(ConfigError, match="IPv4"):
        rpc.RpcWorker("::1", binaries=binaries)
    remote = rpc.RpcWorker("0.0.0.0", 50052, allow_remote=True, devices=["CUDA0,CUDA1"], binaries=binaries)
    cmd = remote.command(50052)
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--device") + 1] == "CUDA0,CUDA1"
    assert rpc.RpcWorker("localhost", binaries=binaries).host == "127.0.0.1"


def test_a_taken_port_is_a_clear_error(binaries, workers, isolated_home):
    taken = workers[0].port
    with pytest.raises(ServerStartError, match=f"^port {taken} on 127.0.0.1 is already in use; choose another") as info:
        rpc.RpcWorker(port=taken, threads=1, binaries=binaries).start(timeout=30)
    assert "Failed to create server socket" in info.value.log_tail
    assert workers[0].is_running(), "the worker that holds the port is unaffected"


def test_an_unknown_device_is_a_clear_error(binaries, isolated_home):
    with pytest.raises(ServerStartError, match="device does not exist") as info:
        rpc.RpcWorker(devices=["NOPE7"], threads=1, binaries=binaries).start(timeout=30)
    assert "unknown device" in info.value.log_tail


def test_worker_dies_with_its_parent_even_on_sigkill(binaries, tmp_path):
    script = textwrap.dedent("""
        import time
        from llcuda.processes.rpc_worker import RpcWorker
        w = RpcWorker(threads=1).start()
        print(w.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, LLCUDA_HOME=str(tmp_path)),
    )
    try:
        child_pid = int(parent.stdout.readline())
        os.kill(child_pid, 0)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert gone(child_pid), "rpc-server outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_worker_survives_a_client_that_vanished_while_queued(binaries, workers, tiny_model, isolated_home):
    """rpc-server serves one client at a time; a queued client that dies must not kill it (SIGPIPE)."""
    worker = workers[0]
    with InferenceEngine(binaries=binaries) as engine:
        engine.load_model(tiny_model, rpc=[worker.endpoint], **LOAD)
        # A second llama-server on the same worker waits in the accept queue, having sent its hello.
        blocked = subprocess.Popen(
            [
                str(binaries.executable("llama-server")),
                "-m",
                str(tiny_model),
                "--port",
                str(free_port()),
                "-c",
                "256",
                "-np",
                "1",
                "-t",
                "1",
                "--rpc",
                worker.endpoint,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not _connected(blocked.pid, worker.port) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _connected(blocked.pid, worker.port), "the second llama-server never connected to the worker"
            time.sleep(0.5)  # it sends its hello right after connecting
        finally:
            blocked.kill()
            blocked.wait()
    # The engine disconnected: the worker now answers the dead client, which must not kill it.
    time.sleep(1.0)
    assert worker.is_running(), f"rpc-server died (code {worker.returncode()}):\n{worker.log_tail()}"
    with InferenceEngine(binaries=binaries) as engine:
        engine.load_model(tiny_model, rpc=[worker.endpoint], **LOAD)
        assert engine.infer("Hello", max_tokens=4, temperature=0.0, ignore_eos=True).tokens_generated == 4


# -- models through workers --------------------------------------------------------------------
def test_a_model_split_over_two_workers_generates(binaries, workers, tiny_model, isolated_home):
    endpoints = [w.endpoint for w in workers]
    with InferenceEngine(binaries=binaries) as engine:
        engine.load_model(tiny_model, rpc=endpoints, extra_args=VERBOSE, **LOAD)
        result = engine.infer("Once upon a time", max_tokens=8, temperature=0.0, ignore_eos=True)
        assert result.tokens_generated == 8 and result.text
        assert engine.server is not None
        log_text = engine.server.log_path.read_text(errors="replace")
        placement = rpc.buffer_placement(log_text)
        for endpoint in endpoints:
            on_worker = {dev: sizes for dev, sizes in placement.items() if dev.endswith(f"[{endpoint}]")}
            assert on_worker and sum(sum(s.values()) for s in on_worker.values()) > 0, (
                f"no llama-server buffer on worker {endpoint}: {placement}"
            )
        model_on_workers = sum(s.get("model", 0.0) for dev, s in placement.items() if dev.startswith("RPC"))
        assert model_on_workers > 0, f"no weights on the workers: {placement}"
        with pytest.raises(ConfigError, match="embeddings=True"):
            engine.embed("a second server cannot share the workers")


def test_tensor_split_indexes_workers_in_rpc_order(binaries, workers, tiny_model, isolated_home):
    first, second = (w.endpoint for w in workers)
    with InferenceEngine(binaries=binaries) as engine:
        engine.load_model(tiny_model, rpc=[first, second], tensor_split=[0, 1], extra_args=VERBOSE, **LOAD)
        assert engine.infer("Hi", max_tokens=2, temperature=0.0, ignore_eos=True).tokens_generated == 2
        placement = rpc.buffer_placement(engine.server.log_path.read_text(errors="replace"))
    weights = {dev: s.get("model", 0.0) for dev, s in placement.items()}
    assert weights.get(f"RPC0[{second}]", 0.0) > 0, placement
    assert weights.get(f"RPC0[{first}]", 0.0) == 0.0, f"tensor_split=[0, 1] put weights on {first}: {placement}"


def test_an_unreachable_worker_is_reported_before_llama_server_starts(binaries, tiny_model, isolated_home):
    nobody = f"127.0.0.1:{free_port()}"
    engine = InferenceEngine(binaries=binaries)
    with pytest.raises(ServerStartError, match="not reachable") as info:
        engine.load_model(tiny_model, rpc=[nobody], **LOAD)
    assert nobody in str(info.value) and "llcuda rpc-worker" in str(info.value)
    assert engine.server is None


def test_worker_death_is_a_clear_error_and_a_restarted_worker_recovers(binaries, tiny_model, isolated_home):
    worker = rpc.RpcWorker(threads=1, binaries=binaries).start(timeout=60)
    port = worker.port
    try:
        with InferenceEngine(binaries=binaries) as engine:
            engine.load_model(tiny_model, rpc=[worker.endpoint], **LOAD)
            assert engine.infer("Hello", max_tokens=4, temperature=0.0, ignore_eos=True).tokens_generated == 4
            worker.stop()
            with pytest.raises(InferenceError) as died:
                engine.infer("Hello", max_tokens=4, temperature=0.0)
            assert f"127.0.0.1:{port}" in str(died.value) and "unreachable" in str(died.value)
            # The worker was started here, so its own log is part of the error.
            assert f"last lines of the rpc-server log ({worker.log_path})" in str(died.value), str(died.value)
            # The next call would restart llama-server; with the worker still down it says so instead.
            with pytest.raises(ServerStartError, match="not reachable"):
                engine.infer("Hello", max_tokens=4, temperature=0.0)
            worker = rpc.RpcWorker(port=port, threads=1, binaries=binaries).start(timeout=60)
            assert engine.infer("Hello", max_tokens=4, temperature=0.0, ignore_eos=True).tokens_generated == 4
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("requested", "sizes", "passed"),
    [
        ("auto", (128, 128), "on"),
        ("auto", (576, 512), "off"),
        ("auto", (16, 16), "off"),
        ("auto", None, "off"),
        ("on", (16, 16), "on"),
        ("off", (128, 128), "off"),
    ],
)
def test_flash_attn_auto_is_decided_by_llcuda_for_rpc_workers(requested, sizes, passed):
    assert rpc.flash_attn_over_rpc(requested, sizes) == passed


def test_the_tiny_models_head_size_has_no_cuda_flash_attn_kernel(tiny_model):
    # head size 16: llama-server with a CUDA worker must get --flash-attn off (test_gpu_worker_holds_the_weights)
    assert head_sizes(read_gguf_info(tiny_model)) == (16, 16)


def test_a_worker_crash_is_explained_with_the_workers_log(binaries, isolated_home):
    worker = rpc.RpcWorker(threads=1, binaries=binaries).start(timeout=60)
    endpoint = worker.endpoint
    try:
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGABRT)  # what a GGML_ABORT in the worker ends with
        server_tail = f"ggml-rpc.cpp:566: {rpc.WORKER_CRASH_MARKER} or returned malformed response"
        text = rpc.explain_worker_crash([endpoint, "10.0.0.9:50052"], server_tail)
    finally:
        worker.stop()
    assert f"rpc-server at {endpoint} (exited with code -{int(signal.SIGABRT)})" in text, text
    assert str(worker.log_path) in text
    assert "Accepted client connection" in text  # a line of the worker's own log
    assert "rpc-server at 10.0.0.9:50052 closed the connection; its own log, on that host" in text
    assert rpc.explain_worker_crash([endpoint], "llama-server: some other failure") == ""


# -- the command line --------------------------------------------------------------------------
def test_cli_rpc_worker_starts_and_stops_cleanly_on_sigint(isolated_home):
    port = free_port()
    cli = subprocess.Popen(
        [sys.executable, "-m", "llcuda", "rpc-worker", "--port", str(port), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, LLCUDA_HOME=str(isolated_home)),
    )
    try:
        first_line = cli.stdout.readline()
        assert f"listening on 127.0.0.1:{port}" in first_line, first_line + cli.stderr.read()
        assert rpc.probe(f"127.0.0.1:{port}") is None
        servers = _rpc_servers_on(port)
        assert len(servers) == 1
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=30) == 0, cli.stderr.read()
        assert gone(servers[0]), "rpc-server outlived `llcuda rpc-worker`"
        assert rpc.probe(f"127.0.0.1:{port}") is not None
    finally:
        if cli.poll() is None:
            cli.kill()


def test_cli_refuses_a_remote_bind_without_allow_remote(capsys):
    assert main(["rpc-worker", "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "no authentication" in err and "--allow-remote" in err


def test_cli_infer_through_a_worker(workers, tiny_model, isolated_home, capsys):
    worker = workers[1]
    before = worker.log_tail(10_000).count("Accepted client connection")
    code = main(["infer", "Hello", "-m", str(tiny_model), "--rpc", worker.endpoint, "-n", "4", "-c", "512", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["tokens_generated"] >= 1
    after = worker.log_tail(10_000).count("Accepted client connection")
    assert after > before + 1, "llama-server never connected to the worker given with --rpc"


# -- several GPUs (skipped where there are fewer than two) --------------------------------------
def _need_gpus(count: int) -> None:
    visible = len(detect().gpus)
    if visible < count:
        pytest.skip(f"needs {count} visible GPUs, {visible} visible")


@pytest.mark.gpu
def test_gpu_worker_holds_the_weights(binaries, tiny_model, isolated_home):
    """A CUDA rpc-server on loopback: llama-server's only offload device is the worker (--device RPC0)."""
    _need_gpus(1)
    with rpc.RpcWorker(devices=["CUDA0"], binaries=binaries) as worker:
        assert [d.name for d in worker.devices] == ["CUDA0"]
        with InferenceEngine(binaries=binaries) as engine:
            engine.load_model(tiny_model, rpc=[worker.endpoint], extra_args=(*VERBOSE, "--device", "RPC0"), **LOAD)
            assert engine.infer("Hello", max_tokens=8, temperature=0.0, ignore_eos=True).tokens_generated == 8
            placement = rpc.buffer_placement(engine.server.log_path.read_text(errors="replace"))
    assert placement.get(f"RPC0[{worker.endpoint}]", {}).get("model", 0.0) > 0, placement
    assert "CUDA0" not in placement, f"weights went to the local GPU, not through the worker: {placement}"


@pytest.mark.gpu
@pytest.mark.parametrize("split_mode", ["layer", "row"])
def test_two_gpus_share_the_model(binaries, tiny_model, isolated_home, split_mode):
    _need_gpus(2)
    with InferenceEngine(binaries=binaries) as engine:
        engine.load_model(tiny_model, split_mode=split_mode, extra_args=VERBOSE, **LOAD)
        assert engine.infer("Hello", max_tokens=8, temperature=0.0, ignore_eos=True).tokens_generated == 8
        placement = rpc.buffer_placement(engine.server.log_path.read_text(errors="replace"))
    used = [dev for dev, sizes in placement.items() if dev.startswith("CUDA") and sum(sizes.values()) > 0]
    assert len(used) >= 2, f"split_mode={split_mode} used {used}: {placement}"


@pytest.mark.gpu
def test_tensor_split_can_leave_a_gpu_out(binaries, tiny_model, isolated_home):
    _need_gpus(2)
    shares = [1.0] + [0.0] * (len(detect().gpus) - 1)
    with InferenceEngine(binaries=binaries) as engine:
        engine.load_model(tiny_model, tensor_split=shares, extra_args=VERBOSE, **LOAD)
        assert engine.infer("Hello", max_tokens=4, temperature=0.0, ignore_eos=True).tokens_generated == 4
        placement = rpc.buffer_placement(engine.server.log_path.read_text(errors="replace"))
    assert placement.get("CUDA0", {}).get("model", 0.0) > 0, placement
    assert placement.get("CUDA1", {}).get("model", 0.0) == 0.0, placement
