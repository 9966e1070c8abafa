"""The llcuda command line, run as a real subprocess against the real binaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_cli(*args: str, env_extra: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 120):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "llcuda", *args], capture_output=True, text=True, input=stdin, timeout=timeout, env=env
    )


@pytest.fixture
def cli_env(isolated_home):
    return {"LLCUDA_HOME": str(isolated_home)}


def test_version():
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("llcuda ")


def test_infer_streams_text(tiny_model, cli_env):
    done = run_cli("infer", "Hello", "-m", str(tiny_model), "-n", "8", env_extra=cli_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_infer_json_matches_the_engine(tiny_model, tiny_engine, cli_env):
    done = run_cli("infer", "Hello", "-m", str(tiny_model), "-n", "12", "-t", "0", "--json", env_extra=cli_env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    expected = tiny_engine.infer("Hello", max_tokens=12, temperature=0.0)
    assert data["text"] == expected.text
    assert data["tokens_generated"] == expected.tokens_generated


def test_infer_against_a_running_server(tiny_engine, cli_env):
    done = run_cli("infer", "Hi", "--server-url", tiny_engine.url, "-n", "4", "--json", env_extra=cli_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tokens_generated"] <= 4


def test_chat_one_shot(tiny_model, cli_env):
    one = run_cli("chat", "Hello", "-m", str(tiny_model), "-n", "6", "-t", "0", env_extra=cli_env)
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() and ">>>" not in one.stdout


def test_chat_reads_messages_and_commands_from_a_pipe(tiny_model, cli_env, tmp_path):
    transcript = tmp_path / "chat.json"
    typed = f'Hi\n/clear\nfirst \\\nsecond\n"""\nin a\nblock"""\n/save {transcript}\n/exit\nNever\n'
    session = run_cli(
        "chat", "-m", str(tiny_model), "-n", "6", "-t", "0", "--system", "Be brief.", stdin=typed, env_extra=cli_env
    )
    assert session.returncode == 0, session.stderr
    assert "conversation cleared." in session.stdout and f"saved 5 messages to {transcript}" in session.stdout
    saved = json.loads(transcript.read_text())
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
    assert [saved[0]["content"], saved[1]["content"], saved[3]["content"]] == [
        "Be brief.",
        "first \nsecond",
        "in a\nblock",
    ]
    assert ">>>" not in session.stdout  # no prompt without a terminal


def test_infer_reads_the_prompt_from_stdin(tiny_model, tiny_engine, cli_env):
    expected = tiny_engine.infer("Hello", max_tokens=12, temperature=0.0).text
    for args in (["infer", "-"], ["infer"]):
        done = run_cli(
            *args, "-m", str(tiny_model), "-n", "12", "-t", "0", "--json", stdin="Hello\n", env_extra=cli_env
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["text"] == expected
    empty = run_cli("infer", "-", "-m", str(tiny_model), stdin="\n", env_extra=cli_env)
    assert empty.returncode == 1 and "stdin is empty" in empty.stderr


def test_missing_model_is_a_clear_error(tmp_path, cli_env):
    done = run_cli("infer", "x", "-m", str(tmp_path / "nope.gguf"), env_extra=cli_env)
    assert done.returncode == 1
    assert "llcuda: error:" in done.stderr and "nope.gguf" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_public_bind_without_a_key(tiny_model, cli_env):
    done = run_cli("serve", "-m", str(tiny_model), "--host", "0.0.0.0", env_extra=cli_env)
    assert done.returncode == 1
    assert "--api-key" in done.stderr


def test_doctor_json_finds_the_binaries(binaries, cli_env):
    done = run_cli("doctor", "--json", env_extra=cli_env)
    report = json.loads(done.stdout)
    assert report["binaries"]["found"] is True
    assert report["binaries"]["bin_dir"] == str(binaries.bin_dir)
    assert report["binaries"]["build_info"]["llama_cpp_build"] == 11434
    assert all(report["binaries"]["tools"].values())
    assert done.returncode == (0 if report["ok"] else 1)


def test_doctor_reports_a_damaged_install(tmp_path, cli_env):
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "llama-server").write_text("not a program")  # present but not executable
    env = dict(cli_env, LLCUDA_BIN_DIR=str(broken))
    done = run_cli("doctor", env_extra=env)
    assert done.returncode == 1
    assert "binaries: NOT FOUND" in done.stdout and "not executable" in done.stdout
    assert "NOT OK" in done.stdout
    report = json.loads(run_cli("doctor", "--json", env_extra=env).stdout)
    assert report["ok"] is False and report["binaries"]["found"] is False


def test_no_command_prints_help():
    done = run_cli()
    assert done.returncode == 2 and "infer" in done.stdout


def test_infer_with_the_inprocess_backend_matches_the_server(tiny_model, tiny_engine, cli_env):
    done = run_cli(
        "infer",
        "Hello",
        "-m",
        str(tiny_model),
        "-n",
        "12",
        "-t",
        "0",
        "--json",
        "--backend",
        "inprocess",
        env_extra=cli_env,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"] == tiny_engine.infer("Hello", max_tokens=12, temperature=0.0).text
    streamed = run_cli(
        "infer",
        "Hello",
        "-m",
        str(tiny_model),
        "-n",
        "12",
        "-t",
        "0",
        env_extra=dict(cli_env, LLCUDA_BACKEND="inprocess"),
    )
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.rstrip("\n") == json.loads(done.stdout)["text"]


def test_inprocess_backend_refuses_server_options(tiny_model, cli_env):
    done = run_cli(
        "infer", "Hi", "-m", str(tiny_model), "--backend", "inprocess", "--rpc", "127.0.0.1:50052", env_extra=cli_env
    )
    assert done.returncode == 1 and "rpc is an option of the server backend" in done.stderr
    assert "Traceback" not in done.stderr
    bad = run_cli("infer", "Hi", "--backend", "fast", env_extra=cli_env)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_bench_with_the_inprocess_backend(tiny_model, cli_env):
    done = run_cli(
        "bench",
        "-m",
        str(tiny_model),
        "--backend",
        "inprocess",
        "--concurrency",
        "1,2",
        "-n",
        "8",
        "--json",
        env_extra=cli_env,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["engine"] == "inprocess"
    assert [r["tokens"] for r in report["runs"]] == [8, 16]
