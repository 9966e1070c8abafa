"""llcuda.benchmark end to end on the CPU build with the tiny random model, and its parts (no timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llcuda.benchmark import environment, report, tools
from llcuda.benchmark.runner import output_folder
from llcuda.benchmark.settings import BenchSettings
from llcuda.benchmark.systems import SYSTEMS
from llcuda.config import DEFAULT_CPU_BACKEND
from llcuda.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
LEVELS = (1, 2)
SAMPLINGS = ("greedy", "default")


def _bench(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llcuda.benchmark", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def run(binaries, tiny_model: Path, isolated_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """One benchmark run: every system, concurrency 1,2, both sampling presets, 1 repeat, 8 tokens."""
    out = tmp_path_factory.mktemp("bench-out")
    env = dict(os.environ, LLCUDA_BIN_DIR=str(binaries.bin_dir), PYTHONPATH=str(REPO))
    env.pop("LLCUDA_BACKEND", None)  # "InferenceEngine() default" is the real default
    done = _bench(
        [
            "--model",
            str(tiny_model),
            "--concurrency",
            "1,2",
            "--sampling",
            ",".join(SAMPLINGS),
            "--repeats",
            "1",
            "--max-tokens",
            "8",
            "--prompt-tokens",
            "64",
            "--out",
            str(out),
        ],
        env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (folder,) = out.iterdir()
    return folder, done


def test_writes_json_markdown_and_plot(run) -> None:
    folder, done = run
    data = json.loads((folder / "report.json").read_text())
    env = data["environment"]
    assert folder.name.startswith(env["device_slug"] + "-")
    assert (env["device_slug"].startswith("cpu-")) == (not env["on_gpu"])
    assert env["model"]["architecture"] == "llama" and env["model"]["layers"] == 2
    assert env["build_info"] and env["llcuda_version"]
    assert data["summary"]["failed"] == {}, data["summary"]["failed"]
    png = (folder / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(folder / "report.md") in done.stdout


def test_ceilings_and_rows(run, binaries) -> None:
    folder, _ = run
    data = json.loads((folder / "report.json").read_text())
    summary = data["summary"]
    ceil = summary["ceilings"]
    assert ceil["tg_key"] == "tg8" and ceil["tg"] > 0 and ceil["pp_key"] == "pp64" and ceil["pp"] > 0
    assert set(ceil["batched"]) == {str(n) for n in LEVELS}

    ran = [name for name in SYSTEMS if "waves" in data["sections"][f"system:{name}"]]
    skipped = {k.split(":", 1)[1] for k in summary["not_run"]}
    assert set(ran) | skipped == set(SYSTEMS)
    assert {"inprocess", "engine", "llama-server", "llama-server-stream"} <= set(ran)
    # the default of a CPU-only build (this suite runs on one)
    assert binaries.build_info["backend"] == "cpu"
    assert data["sections"]["system:engine"]["backend"] == DEFAULT_CPU_BACKEND
    rows = {(r["system"], r["sampling"], r["level"]) for r in summary["throughput"]}
    assert rows == {(s, p, n) for s in ran for p in SAMPLINGS for n in LEVELS}
    for row in summary["throughput"]:
        assert row["tps"] > 0 and row["ratio"] > 0 and row["short_requests"] == 0, row
    assert {r["system"] for r in summary["first_token"]} == set(ran)
    assert all(r["ttft_s"] > 0 and r["ratio"] > 0 for r in summary["first_token"])
    assert {r["system"]: r["streamed"] for r in summary["first_token"]}["llama-server-stream"] is True
    assert summary["import_s"]["n"] == 1
    assert set(summary["load_s"]) == {"InferenceEngine(backend='inprocess')", "InferenceEngine() default"}

    text = (folder / "report.md").read_text()
    assert "| system | sampling | N=1 | N=2 |" in text
    labels = {r["label"] for r in summary["throughput"]}
    for label in labels:
        assert sum(line.startswith(f"| {label} |") for line in text.splitlines()) == len(SAMPLINGS) + 1  # + TTFT
    assert data["reproduce"] in text


def test_missing_ceiling_tools_are_a_clear_error(binaries, tiny_model: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-server").symlink_to(binaries.executable("llama-server"))
    env = dict(os.environ, LLCUDA_BIN_DIR=str(bin_dir), PYTHONPATH=str(REPO), PATH="/usr/bin:/bin")
    done = _bench(["--model", str(tiny_model), "--out", str(tmp_path / "out")], env, timeout=60)
    assert done.returncode == 1
    assert "llama-bench was not found" in done.stderr and "LLCUDA_BIN_DIR" in done.stderr
    assert not (tmp_path / "out").exists()


def test_settings_are_checked() -> None:
    assert BenchSettings(concurrency=(16, 1, 16)).checked().concurrency == (1, 16)
    for bad in ({"concurrency": (0,)}, {"sampling": ("nucleus",)}, {"systems": ("vllm",)}, {"repeats": 0}):
        with pytest.raises(ConfigError):
            BenchSettings(**bad).checked()  # type: ignore[arg-type]


def test_output_folder_never_overwrites_a_run(tmp_path: Path) -> None:
    first = output_folder(tmp_path, "cpu-x", "2030-01-02")
    assert first.name == "cpu-x-2030-01-02" and output_folder(tmp_path, "cpu-x", "2030-01-02") == first
    (first / "report.json").write_text("{}")
    assert output_folder(tmp_path, "cpu-x", "2030-01-02").name == "cpu-x-2030-01-02-2"


def test_slugs() -> None:
    assert environment.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert environment.slug("Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz") == "intel-xeon-platinum-8480c"
    assert environment.slug("AMD EPYC 9654 96-Core Processor") == "amd-epyc-9654-96-core-processor"


def test_tool_output_parsers() -> None:
    bench = json.dumps(
        [
            {"n_prompt": 2048, "n_gen": 0, "avg_ts": 9000.5, "stddev_ts": 10.0, "samples_ts": [9000.5]},
            {"n_prompt": 0, "n_gen": 128, "avg_ts": 300.25, "stddev_ts": 1.5, "samples_ts": [300.0, 300.5]},
        ]
    )
    parsed = tools.parse_llama_bench(bench)
    assert parsed["pp2048"]["tps"] == 9000.5 and parsed["tg128"]["stddev"] == 1.5
    lines = "\n".join(
        [
            "main: n_kv_max = 1024",
            '{"n_kv_max": 1024, "pl": 1, "speed_tg": 250.0, "speed_pp": 800.0, "speed": 260.0, "t": 0.6}',
            '{"n_kv_max": 1024, "pl": 16, "speed_tg": 2500.0, "speed_pp": 9000.0, "speed": 2600.0, "t": 1.2}',
        ]
    )
    assert tools.parse_batched_bench(lines) == {
        "1": {"S_TG": 250.0, "S_PP": 800.0, "S": 260.0, "t": 0.6},
        "16": {"S_TG": 2500.0, "S_PP": 9000.0, "S": 2600.0, "t": 1.2},
    }


def test_ratios_use_the_ceiling_of_each_level() -> None:
    wave = {"tokens": 0, "wall_s": 1.0, "short_requests": 0, "request_wall_s_median": 1.0}
    data = {
        "settings": {"max_tokens": 128, "prompt_tokens": 2048, "concurrency": [1, 16]},
        "sections": {
            "llama-bench": {
                "tests": {"tg128": {"tps": 200.0, "stddev": 1.0}, "pp2048": {"tps": 4096.0, "stddev": 1.0}}
            },
            "batched-bench": {"levels": {"1": {"S_TG": 190.0}, "16": {"S_TG": 2000.0}}},
            "system:inprocess": {
                "label": "in-process",
                "load_s": 1.0,
                "waves": [
                    {**wave, "sampling": "greedy", "level": 1, "tps": 190.0},
                    {**wave, "sampling": "greedy", "level": 16, "tps": 1000.0},
                    {**wave, "sampling": "greedy", "level": 16, "tps": 1600.0},
                    {**wave, "sampling": "greedy", "level": 16, "tps": 1500.0},
                ],
                "ttft": [{"ttft_s": 1.0, "prompt_tokens": 2048, "streamed": False}],
            },
            "system:serve": {"skipped": "this llcuda has no llcuda.serve"},
        },
    }
    summary = report.summarize(data)
    by_level = {r["level"]: r for r in summary["throughput"]}
    assert by_level[1]["ratio"] == pytest.approx(190 / 200)  # one stream: llama-bench tg128
    assert by_level[16]["tps"] == 1500.0 and by_level[16]["ratio"] == pytest.approx(0.75)  # median / S_TG(16)
    (ttft,) = summary["first_token"]
    assert ttft["ceiling_s"] == pytest.approx(0.5) and ttft["ratio"] == pytest.approx(0.5)
    assert summary["not_run"] == {"system:serve": "this llcuda has no llcuda.serve"}
