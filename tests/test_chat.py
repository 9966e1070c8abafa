"""`llcuda chat` in a real pseudo-terminal (pexpect) with SmolLM2-135M-Instruct on a real llama-server."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

pytestmark = pytest.mark.realmodel

UP = "\x1b[A"
PROMPT = ">>> "
STORY = "Write a very long story about a dragon and a knight, in twenty chapters, each with many details."


class Chat:
    """One `llcuda chat` run in a terminal of its own."""

    def __init__(self, model: Path, home: Path, *args: str, ctx_size: int = 2048) -> None:
        env = dict(os.environ, LLCUDA_HOME=str(home), TERM="dumb")
        self.home = home
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "llcuda", "chat", "-m", str(model), "-t", "0", "-c", str(ctx_size), "-np", "1", *args],
            env=env, encoding="utf-8", timeout=300, dimensions=(40, 400),
        )  # fmt: skip
        # keys arrive at a person's pace: typed within milliseconds of the prompt, readline can miss them
        self.child.delaybeforesend = 0.5
        self.expect_prompt()

    def expect_prompt(self) -> str:
        """Wait for the prompt at the start of a line (readline redraws a recalled line after a bare CR)
        and for readline to read keys; returns what came before it."""
        self.child.expect_exact("\n" + PROMPT)
        before = str(self.child.before)
        self.wait_for_keys()
        return before

    def wait_for_keys(self) -> None:
        """Until readline has the terminal (echo off: it echoes keys itself). Keys typed before that, while
        the terminal still is in line mode, can be lost, as a person never types that fast."""
        self.child.waitnoecho(timeout=60)

    def line(self, text: str) -> str:
        """Type ``text`` and Enter; returns the output up to the next prompt."""
        self.child.send(text + "\r")
        return self.expect_prompt()

    def save(self, path: Path) -> list[dict[str, object]]:
        assert "saved" in self.line(f"/save {path}")
        return json.loads(path.read_text())

    def quit(self) -> int:
        """Ctrl-D at the prompt; the exit status."""
        self.child.sendeof()
        self.child.expect(pexpect.EOF)
        self.child.close()
        return int(self.child.exitstatus)

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


def _server_pids(home: Path) -> list[int]:
    """The servers `llcuda ps` would list (this chat's only)."""
    return sorted(json.loads(p.read_text())["pid"] for p in (home / "run").glob("*.json"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_history_recalls_lines_in_the_session_and_the_next(smollm2_model, home, tmp_path):
    chat = Chat(smollm2_model, home, "-n", "16")
    try:
        chat.line("What is the capital of France?")
        chat.child.send(UP)  # the same question again, from the history
        chat.child.expect_exact("What is the capital of France?")
        chat.line("")
        saved = chat.save(tmp_path / "a.json")
        assert [m["content"] for m in saved if m["role"] == "user"] == ["What is the capital of France?"] * 2
        assert all(m["content"] for m in saved if m["role"] == "assistant") and len(saved) == 4
        assert chat.quit() == 0
    finally:
        chat.kill()
    history = (home / "chat_history").read_text()
    assert "What is the capital of France?" in history
    assert (home / "chat_history").stat().st_mode & 0o077 == 0

    again = Chat(smollm2_model, home, "-n", "16")
    try:
        again.child.send(UP + UP)  # the last line of the earlier run was /save; the one before, the question
        again.child.expect_exact("What is the capital of France?")
        again.line("")
        saved = again.save(tmp_path / "b.json")
        assert [m["content"] for m in saved if m["role"] == "user"] == ["What is the capital of France?"]
        assert again.quit() == 0
    finally:
        again.kill()


@pytest.mark.parametrize("backend", ["serve", "llama-server"])
def test_ctrl_c_stops_the_reply_and_keeps_the_conversation(smollm2_model, home, tmp_path, backend):
    # Replies may run to 2000 tokens, far beyond the moment of Ctrl-C; the small context still ends the
    # next reply soon (llama-server stops a reply when the context is full).
    chat = Chat(smollm2_model, home, "-n", "2000", "--backend", backend, ctx_size=256)
    try:
        (server_pid,) = _server_pids(home)
        chat.child.send(STORY + "\r")
        chat.child.expect_exact(STORY)  # the echo of the line typed
        chat.child.expect(r"\w+ \w+ \w+")  # the reply has begun
        chat.child.sendintr()
        chat.child.expect_exact("[interrupted]")
        chat.expect_prompt()
        reply = chat.line("What is 2 + 2?")
        assert reply.strip()
        saved = chat.save(tmp_path / "chat.json")
        assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
        assert saved[0]["content"] == STORY
        assert saved[1]["interrupted"] is True and saved[1]["content"].strip()
        assert saved[2]["content"] == "What is 2 + 2?"
        assert saved[3]["content"].strip() and "interrupted" not in saved[3]
        # Ctrl-C reached the chat, not its llama-server: the same server answered the next turn.
        assert _server_pids(home) == [server_pid]
        assert chat.quit() == 0
    finally:
        chat.kill()


def test_commands_multiline_input_and_ctrl_c_at_the_prompt(smollm2_model, home, tmp_path):
    chat = Chat(smollm2_model, home, "-n", "16")
    try:
        assert "/save FILE" in chat.line("/help")
        assert "system prompt set" in chat.line("/system You answer in one short sentence.")
        chat.child.send("Say hello\\\r")  # a trailing backslash continues the message
        chat.child.expect_exact("... ")
        chat.wait_for_keys()
        chat.line("to me.")
        first = chat.save(tmp_path / "first.json")
        assert first[0] == {"role": "system", "content": "You answer in one short sentence."}
        assert first[1] == {"role": "user", "content": "Say hello\nto me."}
        assert first[2]["role"] == "assistant" and first[2]["content"].strip()

        chat.child.send("some text that is never sent")
        # A person sees the line echoed before pressing Ctrl-C. Sooner, the signal can land while readline
        # is still taking the keys, and CPython's readline only notices it at the next key it waits for.
        chat.child.expect_exact("never sent")
        chat.child.sendintr()  # Ctrl-C at the prompt drops the line
        chat.expect_prompt()
        assert "conversation cleared" in chat.line("/clear")
        assert chat.save(tmp_path / "cleared.json") == first[:1]

        assert "loaded 3 messages" in chat.line(f"/load {tmp_path / 'first.json'}")
        chat.child.send('"""\r')  # a block of lines
        chat.child.expect_exact("... ")
        chat.wait_for_keys()
        chat.child.send("Line one.\r")
        chat.child.expect_exact("... ")
        chat.wait_for_keys()
        chat.line('Line two."""')
        loaded = chat.save(tmp_path / "loaded.json")
        assert loaded[:3] == first
        assert loaded[3] == {"role": "user", "content": "Line one.\nLine two."}
        assert loaded[4]["role"] == "assistant" and len(loaded) == 5
        assert "never sent" not in json.dumps(loaded)

        assert "could not read" in chat.line(f"/load {tmp_path / 'missing.json'}")
        (tmp_path / "bad.json").write_text('[{"role": "wizard", "content": "x"}]')
        assert "could not load" in chat.line(f"/load {tmp_path / 'bad.json'}")
        assert chat.save(tmp_path / "still.json") == loaded  # a failed /load changes nothing
        assert "unknown command" in chat.line("/nope")
        chat.child.send("/exit\r")
        chat.child.expect(pexpect.EOF)
        chat.child.close()
        assert chat.child.exitstatus == 0
    finally:
        chat.kill()
