"""The llcuda-binaries package that scripts/conda_build.py built, installed with py-rattler and moved.

CI runs scripts/conda_build.py once and exports CONDA_PREFIX=<the moved prefix>; these tests read that
prefix only (never a build tree): its conda-meta record, its files, the libraries each ELF file loads,
and a real llama-server from $CONDA_PREFIX/bin answering on loopback with a tiny generated model.
Skipped where $CONDA_PREFIX holds no llcuda-binaries. CI builds the CPU variant; on a GPU machine the
same tests read a CUDA variant (`scripts/conda_build.py WORKDIR --variant cuda13`); running its tools
needs the NVIDIA driver.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PREFIX = Path(os.environ.get("CONDA_PREFIX", "/nonexistent"))
RECORDS = sorted((PREFIX / "conda-meta").glob("llcuda-binaries-*.json")) if PREFIX.is_dir() else []

pytestmark = [
    pytest.mark.conda,
    pytest.mark.skipif(not RECORDS, reason="$CONDA_PREFIX holds no llcuda-binaries (run scripts/conda_build.py)"),
]

BUILD_SCRIPT_TOOLS = (
    re.search(
        r"^TOOLS=\(([^)]*)\)",
        (REPO / "recipe" / "build-binaries.sh").read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    .group(1)
    .split()
)
TOOLS = sorted({t.replace("ggml-rpc-server", "rpc-server") for t in BUILD_SCRIPT_TOOLS} | {"ggml-rpc-server"})
OUR_LIBS = re.compile(r"^lib(ggml|llama|mtmd)")
BUILD_STRING = re.compile(r"(cpu|cuda12|cuda13)_b11434_h[0-9a-f]{7}_0")


@pytest.fixture(scope="module")
def record() -> dict:
    assert len(RECORDS) == 1, RECORDS
    return json.loads(RECORDS[0].read_text(encoding="utf-8"))


def elf_files() -> list[Path]:
    found = []
    for path in [*(PREFIX / "bin").iterdir(), *(PREFIX / "lib").iterdir()]:
        if path.is_file() and not path.is_symlink() and path.read_bytes()[:4] == b"\x7fELF":
            found.append(path)
    return found


@pytest.fixture(scope="module")
def flavour(record: dict) -> str:
    """cpu, cuda12 or cuda13: the variant the build string names."""
    match = BUILD_STRING.fullmatch(record["build"])
    assert match, record["build"]
    return match.group(1)


@pytest.fixture(scope="module")
def runs_here(flavour: str) -> bool:
    """Whether this machine can run the package's tools: a CUDA build loads the driver's libcuda.so.1."""
    return flavour == "cpu" or ctypes.util.find_library("cuda") is not None


def test_record_names_the_build(record: dict, flavour: str) -> None:
    assert record["name"] == "llcuda-binaries"
    assert record["subdir"] == "linux-64"
    cuda = [dep for dep in record.get("depends", []) if dep.startswith("__cuda")]
    assert cuda == ([] if flavour == "cpu" else [f"__cuda >={flavour[4:]}"])
    assert record["build_number"] == {"cpu": 0, "cuda12": 100, "cuda13": 200}[flavour]


def test_record_keeps_other_llama_cpp_builds_out(record: dict) -> None:
    assert {"llama.cpp <0.0.0a0", "whisper.cpp <0.0.0a0"} <= set(record.get("constrains", []))


def test_every_file_of_the_package_is_in_the_prefix(record: dict) -> None:
    files = record["files"]
    assert files, "the record lists no files"
    missing = [f for f in files if not os.path.lexists(PREFIX / f)]
    assert missing == []


def test_every_tool_is_installed(record: dict) -> None:
    for tool in TOOLS:
        assert f"bin/{tool}" in record["files"], tool
        assert os.access(PREFIX / "bin" / tool, os.X_OK), tool
    assert os.readlink(PREFIX / "bin" / "ggml-rpc-server") == "rpc-server"


def test_every_library_is_installed(record: dict, flavour: str) -> None:
    libs = {Path(f).name for f in record["files"] if f.startswith("lib/")}
    cuda = ("libggml-cuda",) if flavour != "cpu" else ()
    for stem in (
        "libggml",
        "libggml-base",
        "libggml-cpu",
        "libggml-rpc",
        "libllama",
        "libllama-common",
        "libmtmd",
        *cuda,
    ):
        assert f"{stem}.so" in libs, stem
        assert any(re.fullmatch(rf"{re.escape(stem)}\.so\.\d+", n) for n in libs), stem


def test_licenses_and_build_info(record: dict, flavour: str) -> None:
    license_text = (PREFIX / "share" / "licenses" / "llama.cpp" / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License")
    info = json.loads((PREFIX / "share" / "llcuda" / "build-info.json").read_text(encoding="utf-8"))
    assert info["llama_cpp_build"] == 11434
    assert info["backend"] == ("cpu" if flavour == "cpu" else "cuda")
    assert info["cpu_isa"] == "avx2"
    if flavour != "cpu":
        assert info["cuda_version"].split(".")[0] == flavour[4:]
        assert info["cuda_archs"] and all(re.fullmatch(r"\d+-(real|virtual)", a) for a in info["cuda_archs"])
    assert sorted(info["tools"]) == sorted(t.replace("ggml-rpc-server", "rpc-server") for t in BUILD_SCRIPT_TOOLS)


def test_libraries_resolve_inside_the_prefix(runs_here: bool) -> None:
    """ldd on every ELF file: nothing missing, and llama.cpp's own libraries come from $PREFIX/lib."""
    if not runs_here:
        pytest.skip("a CUDA build's libggml-cuda needs the NVIDIA driver's libcuda.so.1, not installed here")
    elves = elf_files()
    assert len(elves) >= len(TOOLS) - 1 + 7
    for path in elves:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True).stdout
        assert "not found" not in out, f"{path}:\n{out}"
        for name, target in re.findall(r"^\s*(\S+) => (\S+)", out, re.MULTILINE):
            if OUR_LIBS.match(name):
                assert Path(target).resolve().parent == (PREFIX / "lib").resolve(), f"{path}: {name} => {target}"


def test_runpaths_are_relative() -> None:
    """RPATH/RUNPATH only through $ORIGIN: the prefix works wherever it is moved."""
    for path in elf_files():
        out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
        for kind, value in re.findall(r"\((RPATH|RUNPATH)\)\s+Library (?:rpath|runpath): \[([^\]]*)\]", out):
            for entry in value.split(":"):
                assert entry.startswith("$ORIGIN"), f"{path}: {kind} {value}"


def test_no_binary_file_carries_a_prefix(record: dict) -> None:
    """A binary with an embedded install path would point at where the prefix was installed, not at it."""
    carrying = [
        p["_path"]
        for p in record.get("paths_data", {}).get("paths", [])
        if p.get("prefix_placeholder") and p.get("file_mode") == "binary"
    ]
    assert carrying == []


@pytest.mark.parametrize("tool", ["llama-server", "llama-cli"])
def test_version_runs_from_the_moved_prefix(tool: str, runs_here: bool) -> None:
    if not runs_here:
        pytest.skip("a CUDA build's tools need the NVIDIA driver (libcuda.so.1)")
    out = subprocess.run(
        [str(PREFIX / "bin" / tool), "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"\(build 11434, ", out.stdout + out.stderr)


def _tiny_model(path: Path) -> Path:
    """A 2-layer llama with random weights and a byte-fallback SentencePiece vocabulary (~300 KiB)."""
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += ["▁Paris", "▁is", "▁the", "▁capital", "▁of", "▁France", "▁a", "▁city"]
    types = [2, 3, 3] + [6] * 256 + [1] * 8  # unknown, control, byte, normal
    n_vocab, n_embd, n_ff, n_head, n_layer = len(tokens), 32, 64, 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("llcuda-recipe-test")
    writer.add_context_length(256)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_block_count(n_layer)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(0)  # all F32
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(8)])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    rng = np.random.default_rng(0)

    def weight(*shape: int):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", weight(n_vocab, n_embd))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_llama_server_from_the_prefix_serves_a_model(tmp_path: Path, runs_here: bool) -> None:
    if not runs_here:
        pytest.skip("a CUDA build's tools need the NVIDIA driver (libcuda.so.1)")
    model = _tiny_model(tmp_path / "tiny.gguf")
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [
            str(PREFIX / "bin" / "llama-server"),
            "-m",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-c",
            "256",
            "-t",
            "2",
            "--no-webui",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "LD_LIBRARY_PATH": ""},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text(errors="replace")
            time.sleep(0.3)
        answer = _post(
            f"http://127.0.0.1:{port}/completion",
            {"prompt": "Paris is the capital of", "n_predict": 8, "temperature": 0},
        )
        assert answer["tokens_predicted"] == 8
        assert isinstance(answer["content"], str)
        assert answer["tokens_evaluated"] >= 2
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
