"""``llcuda chat``: a conversation in the terminal, or one message.

On a terminal the prompt has line editing and a history (readline), kept across runs in
``<home>/chat_history``. The reply streams as it is generated.

- Ctrl-C during a reply stops that reply; the conversation goes on. The part already shown
  stays in the conversation (the model sees it in the next turn) and is saved by ``/save``
  with ``"interrupted": true``. A reply interrupted before its first piece is dropped together
  with the message that asked for it.
- Ctrl-C at the prompt clears the line; Ctrl-D on an empty line (or ``/exit``) quits with 0.
- A line ending in ``\\`` continues on the next line; a line starting with ``\"\"\"`` opens a block
  that ends with a line ending in ``\"\"\"``. Ctrl-D inside either ends the message there.
- Commands: ``/system TEXT``, ``/clear``, ``/save FILE``, ``/load FILE``, ``/help``, ``/exit``.

With stdin not a terminal (a pipe or file), every line (or block) is one message, with the same
commands, and no prompt or history.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from llcuda import config
from llcuda import options as validation
from llcuda.errors import ConfigError, LlcudaError

log = logging.getLogger(__name__)

PROMPT = ">>> "
CONTINUATION_PROMPT = "... "
HISTORY_FILE = "chat_history"
HISTORY_LENGTH = 1000
BLOCK = '"""'
INTERRUPTED_MARK = "[interrupted]"
COMMANDS = {
    "/system": "/system TEXT   set the system prompt (no TEXT: show it)",
    "/clear": "/clear         forget the conversation (the system prompt stays)",
    "/save": "/save FILE     write the conversation to FILE as JSON messages",
    "/load": "/load FILE     continue the conversation saved in FILE",
    "/help": "/help          this list",
    "/exit": "/exit          quit (also Ctrl-D)",
}
HELP = "\n".join(
    [
        *COMMANDS.values(),
        'A line ending in \\ continues on the next line; """ starts and ends a block of lines.',
        "Ctrl-C stops a reply (the conversation goes on) or clears the line; Ctrl-D quits.",
    ]
)


class Conversation:
    """The messages of one chat. Assistant replies that were cut short carry ``"interrupted": True``."""

    def __init__(self, system: str | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        if system:
            self.set_system(system)

    @property
    def system(self) -> str | None:
        if self.messages and self.messages[0]["role"] == "system":
            return str(self.messages[0]["content"])
        return None

    def set_system(self, text: str) -> None:
        if self.system is not None:
            self.messages[0] = {"role": "system", "content": text}
        else:
            self.messages.insert(0, {"role": "system", "content": text})

    def clear(self) -> None:
        del self.messages[1 if self.system is not None else 0 :]

    def for_model(self) -> list[dict[str, Any]]:
        """The messages as the engine takes them (role and content only)."""
        return [{"role": m["role"], "content": m["content"]} for m in self.messages]

    def save(self, path: Path) -> None:
        """Write the messages as a JSON list (raises OSError)."""
        path.write_text(json.dumps(self.messages, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def load(self, path: Path) -> None:
        """Replace the messages with those saved in ``path``: a JSON list of messages, or an object with
        ``"messages"``. Raises OSError or ConfigError (the conversation is unchanged then)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{path} is not JSON ({exc}); /load reads files written by /save.") from None
        if isinstance(data, dict):
            data = data.get("messages")
        checked = validation.messages(data)
        self.messages = [{"role": m["role"], "content": m["content"]} for m in checked]
        for message, saved in zip(self.messages, checked):
            if saved.get("interrupted"):
                message["interrupted"] = True


class LineReader:
    """Reads what the user types: with readline and a prompt on a terminal, plain lines otherwise."""

    def __init__(self, stdin: TextIO, stdout: TextIO, history: Path | None) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.interactive = stdin is sys.stdin and stdin.isatty()  # input() reads sys.stdin
        self.history = history if self.interactive else None
        self._readline: Any = None

    def __enter__(self) -> LineReader:
        if self.interactive:
            self._readline = _setup_readline(self.history)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._readline is not None and self.history is not None:
            try:
                self.history.parent.mkdir(parents=True, exist_ok=True)
                # owner-only from the start: it holds what the user typed to the model
                os.close(os.open(self.history, os.O_WRONLY | os.O_CREAT, 0o600))
                self._readline.write_history_file(str(self.history))
                self.history.chmod(0o600)
            except OSError as exc:
                log.warning("could not save the chat history to %s: %s", self.history, exc)

    def line(self, prompt: str) -> str | None:
        """One line without its newline; None at end of input. Ctrl-C raises KeyboardInterrupt."""
        if self.interactive:
            try:
                return input(prompt)
            except EOFError:
                self.stdout.write("\n")
                return None
        text = self.stdin.readline()
        return text.rstrip("\r\n") if text else None

    def message(self) -> str | None:
        """One message: a line, lines joined by trailing backslashes, or a \"\"\" block; None at the end."""
        first = self.line(PROMPT)
        if first is None:
            return None
        if first.lstrip().startswith(BLOCK):
            body = first.lstrip()[len(BLOCK) :]
            if body.rstrip().endswith(BLOCK):
                return body.rstrip()[: -len(BLOCK)]
            lines = [body] if body.strip() else []
            while (line := self.line(CONTINUATION_PROMPT)) is not None:
                if line.rstrip().endswith(BLOCK):
                    lines.append(line.rstrip()[: -len(BLOCK)])
                    break
                lines.append(line)
            return "\n".join(lines).strip("\n")
        parts = []
        line = first
        while line is not None and line.endswith("\\"):
            parts.append(line[:-1])
            line = self.line(CONTINUATION_PROMPT)
        if line is not None:
            parts.append(line)
        return "\n".join(parts)


def _setup_readline(history: Path | None) -> Any:
    """Import readline (which makes ``input()`` edit lines), load the history, complete the commands."""
    try:
        import readline
    except ImportError:  # a Python built without it: input() still works, without editing keys
        return None
    if history is not None and history.exists():
        try:
            readline.read_history_file(str(history))
        except OSError as exc:
            log.warning("could not read the chat history %s: %s", history, exc)
    readline.set_history_length(HISTORY_LENGTH)

    def complete(text: str, state: int) -> str | None:
        matches = [c + " " for c in COMMANDS if c.startswith(text)] if text.startswith("/") else []
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    readline.set_completer_delims(" \t\n")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    return readline


class ChatLoop:
    """Runs the conversation: reads messages and commands, streams the replies."""

    def __init__(
        self,
        engine: Any,
        sampling: dict[str, Any],
        conversation: Conversation,
        *,
        stdout: TextIO,
        stderr: TextIO,
        verbose: bool = False,
    ) -> None:
        self.engine = engine
        self.sampling = sampling
        self.conversation = conversation
        self.out = stdout
        self.err = stderr
        self.verbose = verbose

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def reply(self, text: str) -> bool:
        """Send ``text`` as the user's turn and stream the reply; False if Ctrl-C cut it short."""
        messages = self.conversation.messages
        messages.append({"role": "user", "content": text})
        parts: list[str] = []
        stream = None
        try:
            stream = self.engine.chat(self.conversation.for_model(), stream=True, **self.sampling)
            for piece in stream:
                parts.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            if stream is not None:
                stream.close()  # the engine stops generating this reply
            if parts:
                messages.append({"role": "assistant", "content": "".join(parts), "interrupted": True})
                self.say(f"\n{INTERRUPTED_MARK}")
            else:
                messages.pop()  # nothing came back: as if the message was never sent
                self.say(f"\n{INTERRUPTED_MARK} (before the reply began; the message was not kept)")
            return False
        except LlcudaError:
            messages.pop()
            raise
        messages.append({"role": "assistant", "content": "".join(parts)})
        self.say("")
        if self.verbose and stream.result is not None:
            r = stream.result
            self.err.write(f"[{r.tokens_generated} tokens, {r.tokens_per_sec:.1f} tok/s, finish={r.finish_reason}]\n")
        return True

    def command(self, text: str) -> bool:
        """Run a /command; False when it asks to quit."""
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        handlers: dict[str, Callable[[str], bool]] = {
            "/system": self._system,
            "/clear": self._clear,
            "/save": self._save,
            "/load": self._load,
            "/help": lambda _: self._print(HELP),
            "/exit": lambda _: False,
            "/quit": lambda _: False,
        }
        handler = handlers.get(name)
        if handler is None:
            return self._print(f"unknown command {name}; /help lists the commands.")
        return handler(arg)

    def _print(self, text: str) -> bool:
        self.say(text)
        return True

    def _system(self, arg: str) -> bool:
        if not arg:
            return self._print(
                f"system prompt: {self.conversation.system}"
                if self.conversation.system
                else "no system prompt; set one with /system TEXT"
            )
        self.conversation.set_system(arg)
        return self._print("system prompt set.")

    def _clear(self, arg: str) -> bool:
        self.conversation.clear()
        return self._print("conversation cleared.")

    def _save(self, arg: str) -> bool:
        if not arg:
            return self._print("usage: /save FILE")
        path = Path(arg).expanduser()
        try:
            self.conversation.save(path)
        except OSError as exc:
            return self._print(f"could not save to {path}: {exc.strerror or exc}")
        return self._print(f"saved {len(self.conversation.messages)} messages to {path}")

    def _load(self, arg: str) -> bool:
        if not arg:
            return self._print("usage: /load FILE")
        path = Path(arg).expanduser()
        try:
            self.conversation.load(path)
        except OSError as exc:
            return self._print(f"could not read {path}: {exc.strerror or exc}")
        except ConfigError as exc:
            return self._print(f"could not load {path}: {exc}")
        turns = sum(1 for m in self.conversation.messages if m["role"] == "user")
        return self._print(f"loaded {len(self.conversation.messages)} messages ({turns} turns) from {path}")

    def run(self, reader: LineReader) -> int:
        if reader.interactive:
            self.say(
                f"llcuda chat with {self.engine.model_name}: /help lists the commands, Ctrl-C stops a "
                "reply, Ctrl-D quits."
            )
        while True:
            try:
                text = reader.message()
            except KeyboardInterrupt:  # at the prompt: drop the line, ask again
                self.out.write("\n")
                continue
            if text is None:
                return 0
            if not text.strip():
                continue
            if text.startswith("/") and "\n" not in text:
                if not self.command(text.strip()):
                    return 0
                continue
            try:
                self.reply(text)
            except LlcudaError as exc:
                if not reader.interactive:
                    raise
                self.err.write(f"llcuda: error: {exc}\n")  # the conversation goes on without that message
                self.err.flush()


def history_path() -> Path:
    """``<home>/chat_history``: the lines typed at the chat prompt, newest last."""
    return config.home_dir() / HISTORY_FILE


def run_chat(
    engine: Any,
    sampling: dict[str, Any],
    *,
    message: str | None,
    system: str | None,
    verbose: bool = False,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """One message (``message``), or the conversation read from ``stdin``; the exit status."""
    loop = ChatLoop(
        engine,
        sampling,
        Conversation(system),
        stdout=stdout or sys.stdout,
        stderr=stderr or sys.stderr,
        verbose=verbose,
    )
    if message is not None:
        return 0 if loop.reply(message) else 130
    with LineReader(stdin or sys.stdin, loop.out, history_path()) as reader:
        return loop.run(reader)
