"""Chat messages to one prompt with the model's own Jinja chat template, as transformers renders it.

A GGUF keeps the Hugging Face chat template in ``tokenizer.chat_template``. :class:`ChatTemplate`
renders it the way transformers' ``apply_chat_template`` does: jinja2's immutable sandbox (a
template cannot reach Python internals or change the messages), ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, transformers' ``tojson`` filter (no HTML
escaping, ``ensure_ascii=False``), its globals ``raise_exception`` and ``strftime_now``, and its
``{% generation %}`` blocks (rendered as their body). One difference: an attribute the sandbox
refuses (``{{ ''.__class__ }}``) is an error here, not an empty string. For example::

    from llcuda.libllama.chat_template import ChatTemplate

    template = ChatTemplate.from_gguf("model.gguf")
    text = template.render([{"role": "user", "content": "Hello"}])        # ends where the reply begins
    tokens = tokenize(text, add_special=template.add_special(text), parse_special=True)

Tokenizing the result: the template writes its special tokens as text (``<|im_start|>``, and often
the BOS token itself through ``{{ bos_token }}``), so tokenize with ``parse_special=True``, and let
the tokenizer add BOS (``add_special=True``) only where the text does not already start with it —
:meth:`ChatTemplate.add_special` answers that. This gives what llama.cpp's own Jinja path gives
(it strips a rendered BOS and lets the tokenizer add it back): exactly one BOS, whether the
template writes it (Llama 3, Gemma), or the vocabulary adds it, or neither (Qwen).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from llcuda.errors import ConfigError
from llcuda.models.gguf import read_gguf_info, read_token_texts

StrPath = Union[str, "os.PathLike[str]"]
COMPILED_CACHE_SIZE = 64  # compiled templates kept, keyed by source (a process rarely sees more than a few)
_FIX = "format the prompt yourself and call infer(), or use backend='llama-server'"


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' ``tojson``: plain ``json.dumps`` (jinja2's own filter escapes ``<>&'`` for HTML)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _TemplateRaised(Exception):
    """The template called ``raise_exception(message)``."""


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    """The local time now, formatted (templates date their system prompts with it)."""
    return datetime.now().strftime(fmt)


class _GenerationBlocks(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}``: transformers marks the assistant's tokens with it (for
    training masks); rendering only needs the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


class _Undefined(jinja2.Undefined):
    """jinja2's default undefined value (prints as "", is false), except that one standing for an
    attribute the sandbox refused fails wherever it is used, so ``{{ ''.__class__ }}`` is an
    error and not an empty string."""

    __slots__ = ()

    def _check(self) -> None:
        if self._undefined_exception is SecurityError:
            self._fail_with_undefined_error()

    def __str__(self) -> str:
        self._check()
        return super().__str__()

    def __bool__(self) -> bool:
        self._check()
        return super().__bool__()

    def __iter__(self) -> Any:
        self._check()
        return super().__iter__()

    def __len__(self) -> int:
        self._check()
        return super().__len__()


@lru_cache(maxsize=COMPILED_CACHE_SIZE)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=_Undefined,
        extensions=[jinja2.ext.loopcontrols, _GenerationBlocks],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


class ChatTemplate:
    """A model's Jinja chat template, compiled once (compilations are cached by source text).

    ``source``: the template text (a GGUF's ``tokenizer.chat_template``, or your own).
    ``bos_token``/``eos_token``: the text of the vocabulary's BOS and EOS tokens, which templates
    write with ``{{ bos_token }}``/``{{ eos_token }}`` ("" where the vocabulary has none).
    ``name`` names the model in error messages.

    Raises :class:`~llcuda.errors.ConfigError` when ``source`` is not a valid Jinja template.
    """

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", name: str = "the model") -> None:
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"the chat template of {name} is empty; {_FIX}.")
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.name = name
        try:
            self._template = _compile(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(
                f"the chat template of {name} is not a valid Jinja template ({exc.message}, line {exc.lineno}); {_FIX}."
            ) from exc

    @classmethod
    def from_gguf(cls, path: StrPath, *, variant: str | None = None, name: str | None = None) -> ChatTemplate:
        """The chat template stored in a GGUF file, with the text of its BOS and EOS tokens.

        ``variant`` picks a named template (``tokenizer.chat_template.<variant>``, e.g. ``tool_use``)
        instead of the default one. ``name`` names the model in errors (default: the file name).

        Raises :class:`~llcuda.errors.ConfigError` when the file has no such template or it is not
        valid Jinja, and :class:`~llcuda.errors.ModelNotFoundError` /
        :class:`~llcuda.errors.InvalidModelError` when the file is missing or not a GGUF file.
        """
        info = read_gguf_info(path)
        label = name or Path(os.fspath(path)).name
        key = "tokenizer.chat_template" + (f".{variant}" if variant else "")
        source = info.metadata.get(key)
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"{label} has no chat template ({key} is not in its metadata); {_FIX}.")
        ids = {role: info.metadata.get(f"tokenizer.ggml.{role}_token_id") for role in ("bos", "eos")}
        wanted = [i for i in ids.values() if isinstance(i, int) and not isinstance(i, bool) and i >= 0]
        texts = read_token_texts(path, wanted) if wanted else {}

        def text(role: str) -> str:
            token = ids[role]
            return texts.get(token, "") if isinstance(token, int) else ""

        return cls(source, bos_token=text("bos"), eos_token=text("eos"), name=label)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The conversation as the model's prompt text.

        ``messages``: dicts with ``role`` and ``content`` (and whatever else the template reads, e.g.
        ``tool_calls``). ``add_generation_prompt``: end with the opening of the assistant's turn.
        ``tools``: function schemas in OpenAI's format, passed to templates that describe tools.
        ``documents``: for templates with retrieval support. Other keyword arguments become template
        variables (e.g. ``enable_thinking=False`` for Qwen3).

        Raises :class:`~llcuda.errors.ConfigError` when the template refuses the messages (its
        ``raise_exception`` message is quoted), when the sandbox blocks it, or when it fails.
        """
        if (
            isinstance(messages, (str, bytes))
            or not isinstance(messages, Sequence)
            or not all(isinstance(m, Mapping) for m in messages)
        ):
            raise ConfigError("messages must be a list of dicts with 'role' and 'content'.")
        variables = {
            **kwargs,
            "messages": [dict(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "tools": None if tools is None else [dict(t) for t in tools],
            "documents": None if documents is None else [dict(d) for d in documents],
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        try:
            return self._template.render(**variables)
        except _TemplateRaised as exc:
            raise ConfigError(
                f"the chat template of {self.name} refused these messages: {exc}. Change the "
                f"messages as it asks, or {_FIX}."
            ) from None
        except SecurityError as exc:
            raise ConfigError(
                f"the sandbox stopped the chat template of {self.name}: {exc}. The template tried "
                f"something a chat template must not do; {_FIX}."
            ) from exc
        except (
            jinja2.TemplateError,
            TypeError,
            ValueError,
            KeyError,
            IndexError,
            AttributeError,
            ZeroDivisionError,
            OverflowError,
            RecursionError,
        ) as exc:
            raise ConfigError(
                f"the chat template of {self.name} failed on these messages ({type(exc).__name__}: {exc}); {_FIX}."
            ) from exc

    def add_special(self, text: str) -> bool:
        """The ``add_special`` argument for tokenizing ``text`` (with ``parse_special=True``): False when
        the text already starts with the BOS token, so BOS is not doubled."""
        return not (self.bos_token and text.startswith(self.bos_token))

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, bos_token={self.bos_token!r}, eos_token={self.eos_token!r})"
