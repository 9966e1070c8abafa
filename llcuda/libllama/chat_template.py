"""Chat messages to one prompt with the model's own template, through llama.cpp's built-in templates.

``llama_chat_apply_template`` recognises the common template families (ChatML, Llama 2/3,
Gemma, Mistral, Phi, …) from the template text stored in the GGUF; it has no Jinja engine,
so an unusual template is refused. llama-server (``backend="server"``) renders templates with
Jinja and falls back to ChatML for a model without one.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from llcuda import options as validation
from llcuda.errors import ConfigError
from llcuda.libllama.bindings import ChatMessage


def _text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ConfigError(f"messages[{index}]['content'] has a part that is not text; the in-process backend "
                              "takes text only (use backend='server' for other content).")
        parts.append(part["text"])
    return "".join(parts)


def apply(lib: Any, model: Any, model_name: str, messages: Sequence[dict[str, Any]]) -> str:
    """``messages`` formatted as a prompt ending where the assistant's turn begins."""
    checked = validation.messages(messages)
    template = lib.llama_model_chat_template(model, None)
    if not template:
        raise ConfigError(f"{model_name} has no chat template (no tokenizer.chat_template in the GGUF); use infer() "
                          "with a prompt in the model's format, or backend='server' (which falls back to ChatML).")
    encoded = [(m["role"].encode("utf-8"), _text(m["content"], i).encode("utf-8")) for i, m in enumerate(checked)]
    chat = (ChatMessage * len(encoded))(*(ChatMessage(role, content) for role, content in encoded))
    size = 2 * sum(len(r) + len(c) for r, c in encoded) + 256
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = lib.llama_chat_apply_template(template, chat, len(encoded), True, buf, size)
        if n < 0:
            raise ConfigError(f"llama.cpp's built-in chat templates do not recognise {model_name}'s template (it "
                              "needs a Jinja engine); use backend='server' for chat with this model, or infer() "
                              "with a prompt in the model's format.")
        if n <= size:
            return buf.raw[:n].decode("utf-8", errors="replace")
        size = n + 1
    raise ConfigError(f"could not format the chat for {model_name} (template output kept growing).")
