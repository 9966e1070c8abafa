"""The options of loading a model and of generating text: every default and every check, once.

:class:`LoadOptions` (how a model is loaded) and :class:`SamplingOptions` (how one request
generates) are what every backend, the CLI (its flags are built from the fields' metadata) and
the docs read; the small checks below are shared by both and by the request validators.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llcuda import config
from llcuda.errors import ConfigError

MAX_TOKENS_LIMIT = 1 << 20
VALID_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


def prompt(value: object, name: str = "prompt") -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a str, got {type(value).__name__}.")
    if not value:
        raise ConfigError(f"{name} is empty; give the model some text to continue.")
    return value


def check_max_tokens(value: object) -> int:
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


def sampling(temperature: object, top_p: object, top_k: object, seed: object) -> tuple[float, float, int, int | None]:
    """``(temperature, top_p, top_k, seed)`` checked, in that order (``seed`` None: a random one).

    The one check of the sampling options, for both backends (``SamplingOptions.checked``) and the
    in-process engine (``Sampling.make``).
    """
    return (
        number(temperature, "temperature", 0.0, 100.0),
        number(top_p, "top_p", 0.0, 1.0),
        integer(top_k, "top_k", 0, 1_000_000),
        None if seed is None else integer(seed, "seed", -1, 2**32 - 1),
    )


def check_stop(value: object) -> list[str]:
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


CHAT_MAX_TOKENS = 256  # a chat turn's default length; a completion's is SamplingOptions.max_tokens
CTX_PER_SEQUENCE = 4096  # default context of one sequence when each has its own cache (kv_unified=False)
MAX_UNIFIED_CTX = 32768  # default shared cache when kv_unified=True: the model's own length, capped here
FLASH_ATTN = ("on", "off", "auto")
SPLIT_MODES = ("none", "layer", "row", "tensor")
LOAD_MODES = config.LOAD_MODES
POOLING = ("none", "mean", "cls", "last", "rank")


def _opt(default: Any, help: str, flag: str | None = None, **meta: Any) -> Any:
    """A dataclass field with its CLI flag and help text, which the CLI and the docs read."""
    return field(default=default, metadata={"help": help, "flag": flag, **meta})


@dataclass(frozen=True)
class LoadOptions:
    """How a model is loaded. The same options and defaults for every backend.

    ``ctx_size`` is the whole KV cache in tokens. With ``kv_unified=True`` (the default) every
    sequence shares it, so one long conversation can use all of it while short requests leave room
    for many; None picks the model's trained context, capped at ``MAX_UNIFIED_CTX``. With
    ``kv_unified=False`` each of the ``n_parallel`` sequences gets ``ctx_size / n_parallel`` tokens
    (None: ``CTX_PER_SEQUENCE`` each).
    """

    gpu_layers: int = _opt(
        99, "layers offloaded to the GPU (-1 or 99: all; a CPU build ignores it)", "--gpu-layers", short="-ngl"
    )
    ctx_size: int | None = _opt(
        None,
        "KV cache size in tokens (default: the model's context, capped at 32768, shared by all sequences)",
        "--ctx-size",
        short="-c",
    )
    n_parallel: int = _opt(
        64, "sequences decoded together (concurrent requests; more wait in a queue)", "--n-parallel", short="-np"
    )
    kv_unified: bool = _opt(
        True, "one KV cache shared by every sequence (off: ctx_size / n_parallel each)", "--kv-unified"
    )
    flash_attn: str = _opt("auto", "flash attention: on, off or auto", "--flash-attn", short="-fa", choices=FLASH_ATTN)
    threads: int | None = _opt(None, "CPU threads (default: the physical cores this process may use)", "--threads")
    batch_size: int | None = _opt(
        None, "logical batch size (prompt tokens per decode call; default 2048)", "--batch-size", short="-b"
    )
    ubatch_size: int | None = _opt(None, "physical batch size (default 512)", "--ubatch-size", short="-ub")
    split_mode: str | None = _opt(
        None,
        "how several GPUs share the model: none, layer, row or tensor",
        "--split-mode",
        short="-sm",
        choices=SPLIT_MODES,
    )
    tensor_split: tuple[float, ...] = _opt(
        (), "proportion of the model per device, e.g. 3,1", "--tensor-split", short="-ts"
    )
    main_gpu: int | None = _opt(None, "the GPU for a single-GPU or row split", "--main-gpu", short="-mg")
    load_mode: str | None = _opt(
        None,
        "how llama.cpp reads the weights: auto (mmap), mmap, none or direct_io (default: LLCUDA_LOAD_MODE, else auto)",
        "--load-mode",
        choices=LOAD_MODES,
    )
    embeddings: bool = _opt(False, "load for embeddings (pooled vectors) instead of text generation", "--embeddings")
    pooling: str | None = _opt(
        None, "embedding pooling: none, mean, cls, last or rank (default: the model's)", "--pooling", choices=POOLING
    )

    def checked(self) -> LoadOptions:
        """These options, validated; ConfigError names the first bad one and its range."""
        integer(self.gpu_layers, "gpu_layers", -1, 100_000)
        integer(self.n_parallel, "n_parallel", 1, 512)
        if self.ctx_size is not None:
            integer(self.ctx_size, "ctx_size", 16, 1 << 24)
            if not self.kv_unified and self.ctx_size // self.n_parallel < 16:
                raise ConfigError(
                    f"ctx_size={self.ctx_size} split over n_parallel={self.n_parallel} sequences leaves under 16 "
                    "tokens each; raise ctx_size, lower n_parallel, or keep kv_unified=True."
                )
        choice(self.flash_attn, "flash_attn", FLASH_ATTN)
        if self.load_mode is None:
            return dataclasses.replace(self, load_mode=config.load_mode()).checked()
        choice(self.load_mode, "load_mode", LOAD_MODES)
        if self.split_mode is not None:
            choice(self.split_mode, "split_mode", SPLIT_MODES)
        if self.pooling is not None:
            choice(self.pooling, "pooling", POOLING)
        for name in ("threads", "batch_size", "ubatch_size"):
            value = getattr(self, name)
            if value is not None:
                integer(value, name, 1, 1 << 20)
        if self.main_gpu is not None:
            integer(self.main_gpu, "main_gpu", 0, 1023)
        return self

    def context_tokens(self, n_ctx_train: int | None) -> int:
        """The KV cache size to create: ``ctx_size``, or its default for this model (see the class)."""
        if self.ctx_size is not None:
            return self.ctx_size
        if not self.kv_unified:
            return CTX_PER_SEQUENCE * self.n_parallel
        return min(n_ctx_train or MAX_UNIFIED_CTX, MAX_UNIFIED_CTX)

    def replace(self, **changes: Any) -> LoadOptions:
        return dataclasses.replace(self, **changes).checked()


@dataclass(frozen=True)
class SamplingOptions:
    """How one request generates (defaults: those of ``InferenceEngine.infer`` and ``llcuda serve``).

    The sampler chain is llama-server's: top-k, top-p, min-p, temperature, then a random draw
    (``seed`` None: a new random seed per request); ``temperature=0`` is greedy. ``grammar`` (GBNF)
    constrains the output, e.g. to JSON (:mod:`llcuda.grammar`).
    """

    max_tokens: int = _opt(128, "tokens to generate at most", "--max-tokens", short="-n")
    temperature: float = _opt(0.7, "randomness; 0 is greedy", "--temperature", short="-t")
    top_p: float = _opt(0.95, "nucleus sampling: keep the most likely tokens up to this probability mass", "--top-p")
    top_k: int = _opt(40, "keep only the k most likely tokens (0: all)", "--top-k")
    min_p: float = _opt(0.05, "drop tokens less likely than min_p times the most likely one", "--min-p")
    seed: int | None = _opt(None, "random seed (default: a new one per request)", "--seed")
    stop: tuple[str, ...] = _opt((), "stop before this text (repeatable)", "--stop")
    ignore_eos: bool = _opt(False, "keep generating past the end-of-generation token", "--ignore-eos")
    grammar: str | None = _opt(None, "a GBNF grammar the output must follow", None)

    @classmethod
    def checked(
        cls,
        max_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 0.95,
        top_k: int = 40,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        ignore_eos: bool = False,
        min_p: float = 0.05,
        grammar: str | None = None,
    ) -> SamplingOptions:
        """Validated options; ConfigError names the first bad one."""
        max_tokens = check_max_tokens(max_tokens)
        temperature, top_p, top_k, seed = sampling(temperature, top_p, top_k, seed)
        min_p = number(min_p, "min_p", 0.0, 1.0)
        if grammar is not None and (not isinstance(grammar, str) or not grammar.strip()):
            raise ConfigError("grammar must be a non-empty GBNF string (see llcuda.grammar.schema_to_gbnf).")
        return cls(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            seed=seed,
            stop=tuple(check_stop(stop)),
            ignore_eos=bool(ignore_eos),
            grammar=grammar,
        )

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def choice(value: object, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(map(repr, allowed))}.")
    return str(value)


def load_option_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(LoadOptions))


def sampling_option_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(SamplingOptions))


def add_arguments(
    parser: argparse._ActionsContainer, options: type[LoadOptions] | type[SamplingOptions], skip: Sequence[str] = ()
) -> None:
    """Add one flag per option of ``options`` that has one (defaults: the dataclass's)."""
    for f in dataclasses.fields(options):
        flag = f.metadata.get("flag")
        if not flag or f.name in skip:
            continue
        names = [flag] + ([f.metadata["short"]] if f.metadata.get("short") else [])
        default = f.default
        help_text = f"{f.metadata['help']} (default: {default})" if default not in (None, ()) else f.metadata["help"]
        if isinstance(default, bool):
            parser.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif f.name == "tensor_split":
            parser.add_argument(
                *names,
                dest=f.name,
                default=default,
                help=help_text,
                type=lambda s: tuple(float(x) for x in s.split(",") if x),
            )
        elif f.name == "stop":
            parser.add_argument(*names, dest=f.name, action="append", default=None, help=help_text)
        else:
            kind = {int: int, float: float}.get(type(default)) if default is not None else None
            if kind is None:
                kind = float if "float" in str(f.type) else int if "int" in str(f.type) else str
            parser.add_argument(
                *names, dest=f.name, type=kind, default=default, help=help_text, choices=f.metadata.get("choices")
            )


def load_options_from(namespace: argparse.Namespace) -> LoadOptions:
    """The LoadOptions of parsed CLI arguments (see :func:`add_arguments`)."""
    values = {name: getattr(namespace, name) for name in load_option_names() if hasattr(namespace, name)}
    return LoadOptions(**values).checked()


def to_arguments(options: LoadOptions) -> list[str]:
    """The CLI flags that give ``options`` (only those that differ from the defaults)."""
    args: list[str] = []
    for f in dataclasses.fields(LoadOptions):
        value, flag = getattr(options, f.name), f.metadata.get("flag")
        if value == f.default or not flag:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            args += [flag, ",".join(f"{x:g}" for x in value)]
        else:
            args += [flag, str(value)]
    return args
