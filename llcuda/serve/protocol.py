"""OpenAI's request and response shapes: parsing a request body into engine arguments, and the
bodies, stream chunks and error bodies sent back.

Defaults are :class:`~llcuda.options.SamplingOptions`' (temperature 0.7, top_p 0.95, top_k 40,
min_p 0.05), the Python API's; ``max_tokens`` absent means "up to the end of the context". Fields this
server cannot honour (``n`` > 1, ``logprobs``, penalties, ``logit_bias``)
are refused with 400 rather than ignored; fields it does not know are ignored, as OpenAI's server
does for new optional ones.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llcuda import options as validation
from llcuda.errors import ConfigError
from llcuda.grammar import JSON_OBJECT_GRAMMAR, schema_to_gbnf
from llcuda.options import SamplingOptions

_DEFAULTS = SamplingOptions()  # the one set of defaults: the Python API's
DEFAULT_TEMPERATURE = _DEFAULTS.temperature
DEFAULT_TOP_P = _DEFAULTS.top_p
DEFAULT_TOP_K = _DEFAULTS.top_k
DEFAULT_MIN_P = _DEFAULTS.min_p
DONE = b"data: [DONE]\n\n"


class APIError(Exception):
    """An error answered with OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_loaded() -> APIError:
    return APIError(
        503, "The model is still loading; retry in a moment.", type="unavailable_error", code="model_loading"
    )


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body (400 for anything else)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"The request body is not valid JSON ({exc}).") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _checked(param: str, check: Any, *args: Any) -> Any:
    """``check(*args)`` with a ConfigError turned into a 400 naming ``param``."""
    try:
        return check(*args)
    except ConfigError as exc:
        raise bad_request(str(exc), param=param) from None


def _get(body: Mapping[str, Any], name: str, default: Any) -> Any:
    value = body.get(name)
    return default if value is None else value


@dataclass
class Generation:
    """The engine arguments of one completion request, checked."""

    max_tokens: int | None  # None: up to the end of the context
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = DEFAULT_TOP_K
    min_p: float = DEFAULT_MIN_P
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    grammar: str | None = None
    stream: bool = False
    include_usage: bool = False

    def submit_kwargs(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "seed": self.seed,
            "stop": self.stop,
            "ignore_eos": self.ignore_eos,
            "grammar": self.grammar,
        }


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request(
            f"n={n!r}: this server returns one choice per request; send n=1 (or leave it out) and "
            "send several requests for several answers.",
            param="n",
        )
    if body.get("best_of") not in (None, 1):
        raise bad_request("best_of is not supported; leave it out.", param="best_of")
    for name in ("logprobs", "top_logprobs", "echo", "suffix"):
        if body.get(name) not in (None, False, 0, ""):
            raise bad_request(f"{name} is not supported by this server; leave it out.", param=name)
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise bad_request(f"{name} is not supported by this server; leave it out or send 0.", param=name)
    if body.get("logit_bias"):
        raise bad_request("logit_bias is not supported by this server; leave it out.", param="logit_bias")


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens", "n_predict"):
        value = body.get(name)
        if value is None or (value == -1 and not isinstance(value, bool)):  # -1: llama-server's "no limit"
            continue
        return int(_checked(name, validation.check_max_tokens, value))
    return None


def _grammar(body: Mapping[str, Any]) -> str | None:
    """The GBNF of ``response_format`` (json_object, json_schema), or llama-server's ``grammar`` and
    ``json_schema`` fields."""
    fmt = body.get("response_format")
    schema: Any = None
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "text":
            pass
        elif kind == "json_object":
            return JSON_OBJECT_GRAMMAR
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise bad_request(
                    'response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}.',
                    param="response_format",
                )
        else:
            raise bad_request(
                f"response_format type {kind!r} is not one of 'text', 'json_object', 'json_schema'.",
                param="response_format",
            )
    if schema is None and isinstance(body.get("json_schema"), dict):
        schema = body["json_schema"]
    if schema is not None:
        return str(_checked("response_format", schema_to_gbnf, schema))
    grammar = body.get("grammar")
    if grammar is None or grammar == "":
        return None
    if not isinstance(grammar, str):
        raise bad_request("grammar must be a GBNF string.", param="grammar")
    return grammar


def generation(body: Mapping[str, Any]) -> Generation:
    """The sampling and length options of a chat or text completion request."""
    _refuse_unsupported(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("stream_options must be an object.", param="stream_options")
    include_usage = bool(options and options.get("include_usage"))
    temperature = _checked(
        "temperature", validation.number, _get(body, "temperature", DEFAULT_TEMPERATURE), "temperature", 0.0, 100.0
    )
    top_p = _checked("top_p", validation.number, _get(body, "top_p", DEFAULT_TOP_P), "top_p", 0.0, 1.0)
    top_k = _checked("top_k", validation.integer, _get(body, "top_k", DEFAULT_TOP_K), "top_k", 0, 1_000_000)
    min_p = _checked("min_p", validation.number, _get(body, "min_p", DEFAULT_MIN_P), "min_p", 0.0, 1.0)
    seed = body.get("seed")
    if seed is not None:
        seed = _checked("seed", validation.integer, seed, "seed", -(2**63), 2**64 - 1) % 2**32  # a 32-bit seed
    stop = _checked("stop", validation.check_stop, body.get("stop"))
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise bad_request("ignore_eos must be true or false.", param="ignore_eos")
    return Generation(
        max_tokens=_max_tokens(body),
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        seed=seed,
        stop=stop,
        ignore_eos=ignore_eos,
        grammar=_grammar(body),
        stream=stream,
        include_usage=include_usage,
    )


def _text_content(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_request(
                    f"messages[{index}].content has a {kind!r} part; this server takes text only.",
                    param=f"messages[{index}].content",
                )
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(
        f"messages[{index}].content must be a string or a list of text parts.", param=f"messages[{index}].content"
    )


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The messages, each with text content (content parts joined; None, as with tool calls, is "")."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request(
            "messages must be a non-empty list of {'role': ..., 'content': ...} objects.", param="messages"
        )
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{i}] must be an object with 'role' and 'content'.", param=f"messages[{i}]")
        if message.get("role") not in validation.VALID_ROLES:
            raise bad_request(
                f"messages[{i}].role={message.get('role')!r} must be one of {sorted(validation.VALID_ROLES)}.",
                param=f"messages[{i}].role",
            )
        out.append({**message, "content": _text_content(message.get("content"), i)})
    return out


def chat_tools(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise bad_request("tools must be a list of objects.", param="tools")
    return tools


def completion_prompt(body: Mapping[str, Any]) -> str | list[int]:
    """The prompt of a text completion: a string, a list of token ids, or a list of one of either."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("prompt is empty; give the model some text to continue.", param="prompt")
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise bad_request("prompt: this server takes one prompt per request; send several requests.", param="prompt")
    raise bad_request("prompt must be a non-empty string or a list of token ids.", param="prompt")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def timings(
    prompt_tokens: int, generated: int, submitted: float, first_token: float | None, done: float
) -> dict[str, float]:
    """llama-server's ``timings`` of a finished request (llama.cpp's chat page shows them); the times
    are ``time.perf_counter()`` values."""
    first = first_token or done
    prompt_ms, predicted_ms = (first - submitted) * 1000.0, (done - first) * 1000.0
    return {
        "prompt_n": prompt_tokens,
        "prompt_ms": prompt_ms,
        "prompt_per_second": prompt_tokens / prompt_ms * 1000.0 if prompt_ms > 0 else 0.0,
        "predicted_n": generated,
        "predicted_ms": predicted_ms,
        "predicted_per_second": (generated - 1) / predicted_ms * 1000.0 if predicted_ms > 0 else 0.0,
    }


def chat_response(
    rid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int, timing: dict[str, float]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
        ],
        "usage": usage(prompt_tokens, completion_tokens),
        "timings": timing,
    }


def completion_response(
    rid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int, timing: dict[str, float]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": usage(prompt_tokens, completion_tokens),
        "timings": timing,
    }


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class ChunkWriter:
    """The server-sent events of one streamed completion, chat or text.

    The JSON around a chunk's text is the same for every chunk of a stream, so it is encoded once;
    each chunk only encodes its text.
    """

    __slots__ = ("_chat", "_head", "_prefix", "_suffix")

    def __init__(self, rid: str, model: str, *, chat: bool) -> None:
        self._chat = chat
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._head = {"id": rid, "object": obj, "created": created, "model": model}
        head = json.dumps(self._head, separators=(",", ":"))[:-1]  # without the closing brace
        if chat:
            self._prefix = f'data: {head},"choices":[{{"index":0,"delta":{{"content":'.encode()
            self._suffix = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._prefix = f'data: {head},"choices":[{{"index":0,"text":'.encode()
            self._suffix = b',"logprobs":null,"finish_reason":null}]}\n\n'

    def text(self, text: str) -> bytes:
        return self._prefix + json.dumps(text).encode() + self._suffix

    def start(self) -> bytes | None:
        """A chat stream's first event: the assistant's role, no text yet."""
        if not self._chat:
            return None
        return _event(
            {
                **self._head,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                ],
            }
        )

    def finish(self, reason: str, timing: dict[str, float]) -> bytes:
        """The last chunk with a choice: no text, the finish reason, and llama-server's ``timings``."""
        choice: dict[str, Any] = {"index": 0, "delta": {}} if self._chat else {"index": 0, "text": ""}
        return _event(
            {**self._head, "choices": [{**choice, "logprobs": None, "finish_reason": reason}], "timings": timing}
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The chunk ``stream_options.include_usage`` asks for: no choices, the usage of the whole stream."""
        return _event({**self._head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})

    @staticmethod
    def error(error: APIError) -> bytes:
        return _event(error.body())


def model_card(name: str, created: int, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "llcuda", "meta": dict(meta)}


def embedding_inputs(body: Mapping[str, Any]) -> list[str | list[int]]:
    """``input`` of an embeddings request: a string, a list of strings, token ids, or lists of them."""
    value = body.get("input")
    if isinstance(value, str):
        items: Sequence[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        items = [value]
    elif isinstance(value, list) and value:
        items = value
    else:
        raise bad_request(
            "input must be a non-empty string, list of strings, or list of token-id lists.", param="input"
        )
    out: list[str | list[int]] = []
    for i, item in enumerate(items):
        if isinstance(item, str) and item:
            out.append(item)
        elif isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            out.append(list(item))
        else:
            raise bad_request(f"input[{i}] must be a non-empty string or a non-empty list of token ids.", param="input")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise bad_request("encoding_format must be 'float' or 'base64'.", param="encoding_format")
    return out
