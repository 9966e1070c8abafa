"""Checks on user arguments, done before anything is sent to the server."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llcuda.errors import ConfigError

MAX_TOKENS_LIMIT = 1 << 20
VALID_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


def prompt(value: object, name: str = "prompt") -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a str, got {type(value).__name__}.")
    if not value:
        raise ConfigError(f"{name} is empty; give the model some text to continue.")
    return value


def max_tokens(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"max_tokens must be an int, got {value!r}.")
    if value < 1 or value > MAX_TOKENS_LIMIT:
        raise ConfigError(f"max_tokens={value} must be between 1 and {MAX_TOKENS_LIMIT}.")
    return value


def number(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}.")
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} must be between {low} and {high}.")
    return float(value)


def integer(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {value!r}.")
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} must be between {low} and {high}.")
    return value


def sampling(temperature: object, top_p: object, top_k: object,
             seed: object) -> tuple[float, float, int, int | None]:
    """``(temperature, top_p, top_k, seed)`` checked, in that order (``seed`` None: a random one).

    The one check of the sampling options, for both backends (``GenerationArgs.checked``) and the
    in-process engine (``Sampling.make``).
    """
    return (
        number(temperature, "temperature", 0.0, 100.0),
        number(top_p, "top_p", 0.0, 1.0),
        integer(top_k, "top_k", 0, 1_000_000),
        None if seed is None else integer(seed, "seed", -1, 2**32 - 1),
    )


def stop(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(s, str) and s for s in value):
        raise ConfigError(f"stop must be a non-empty string or a list of them, got {value!r}.")
    return list(value)


def messages(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or not value:
        raise ConfigError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts.")
    checked = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise ConfigError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(message).__name__}.")
        role, content = message.get("role"), message.get("content")
        if role not in VALID_ROLES:
            raise ConfigError(f"messages[{i}]['role']={role!r} must be one of {sorted(VALID_ROLES)}.")
        if not isinstance(content, (str, list)):
            raise ConfigError(f"messages[{i}]['content'] must be a str (or a list of content parts).")
        checked.append(dict(message))
    return checked


@dataclass(frozen=True)
class GenerationArgs:
    """The checked options of one generation (defaults: those of ``InferenceEngine.infer``)."""

    max_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    seed: int | None = None  # None: a random seed
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @classmethod
    def checked(cls, max_tokens: int = 128, temperature: float = 0.7, top_p: float = 0.95, top_k: int = 40,
                seed: int | None = None, stop: str | Sequence[str] | None = None,
                ignore_eos: bool = False) -> GenerationArgs:
        """Validated options; ConfigError names the first bad one."""
        max_tokens = max_tokens(max_tokens)
        temperature, top_p, top_k, seed = sampling(temperature, top_p, top_k, seed)
        return cls(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                   stop=tuple(stop(stop)), ignore_eos=bool(ignore_eos))
