"""What one benchmark run measures: every default of ``python -m llcuda.benchmark`` lives here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llcuda.benchmark.systems import SYSTEMS
from llcuda.benchmark.workload import SAMPLING
from llcuda.errors import ConfigError

DEFAULT_MODEL = "random-1b"
DEFAULT_CONCURRENCY = (1, 16, 64)
DEFAULT_SAMPLING = ("greedy", "default")
DEFAULT_MAX_TOKENS = 128
DEFAULT_PROMPT_TOKENS = 2048
DEFAULT_REPEATS = 3
RESULTS_DIR = Path("benchmarks") / "results"  # used when it exists under the working directory
FALLBACK_OUT_DIR = Path("llcuda-bench")


@dataclass(frozen=True)
class BenchSettings:
    """One run's settings.

    Args:
        model: a registry name, a path, ``hf://…``/URL, or a random-weight model (``random-1b``: the
            Llama-3.2-1B shape as Q4_K_M, made once and cached; ``random-tiny``).
        concurrency: the numbers of requests released together (waves); the largest is also the
            number of slots (``n_parallel``) every system is loaded with.
        sampling: preset names of :data:`llcuda.benchmark.workload.SAMPLING`.
        max_tokens: tokens every request generates (end-of-sequence ignored); llama-bench ``tg<N>``.
        prompt_tokens: the time-to-first-token prompt's length; llama-bench ``pp<N>``.
        repeats: waves per level, time-to-first-token requests, fresh-process loads and imports, and
            llama-bench's ``-r``; the report shows medians.
        systems: names of :data:`llcuda.benchmark.systems.SYSTEMS` to run (all by default; those
            that cannot run here are reported as not run).
        out: the folder that receives ``<device>-<date>/`` (default: ``benchmarks/results`` when the
            working directory has one, else ``llcuda-bench``).
        vocab_dir: llama.cpp's ``models/`` folder, for the tokenizer of a random model.
        gpu_layers, flash_attn: as ``InferenceEngine.load_model``, for every system and tool.
        section_timeout: seconds one section may take (None: no limit).
        offline: never download (default: ``LLCUDA_OFFLINE``/``HF_HUB_OFFLINE``).
    """

    model: str = DEFAULT_MODEL
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    sampling: tuple[str, ...] = DEFAULT_SAMPLING
    max_tokens: int = DEFAULT_MAX_TOKENS
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    repeats: int = DEFAULT_REPEATS
    systems: tuple[str, ...] = field(default_factory=lambda: tuple(SYSTEMS))
    out: Path | None = None
    vocab_dir: Path | None = None
    gpu_layers: int = 99
    flash_attn: str = "auto"
    section_timeout: float | None = None
    offline: bool | None = None

    def checked(self) -> BenchSettings:
        """These settings, levels sorted and de-duplicated; raises :class:`ConfigError` naming a bad value."""
        levels = tuple(sorted(set(self.concurrency)))
        if not levels or levels[0] < 1:
            raise ConfigError(f"concurrency {self.concurrency!r}: give one or more levels of at least 1, e.g. 1,16,64.")
        for name in self.sampling:
            if name not in SAMPLING:
                raise ConfigError(f"sampling {name!r}: choose from {', '.join(SAMPLING)}.")
        if not self.sampling:
            raise ConfigError(f"sampling: name at least one of {', '.join(SAMPLING)}.")
        for name in self.systems:
            if name not in SYSTEMS:
                raise ConfigError(f"system {name!r}: choose from {', '.join(SYSTEMS)}.")
        for key in ("max_tokens", "prompt_tokens", "repeats"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key}={getattr(self, key)!r} must be at least 1.")
        if self.flash_attn not in ("on", "off", "auto"):
            raise ConfigError(f"flash_attn={self.flash_attn!r} must be on, off or auto.")
        return replace(self, concurrency=levels)

    def out_root(self, cwd: Path | None = None) -> Path:
        if self.out is not None:
            return Path(self.out).expanduser()
        base = cwd or Path.cwd()
        return base / RESULTS_DIR if (base / RESULTS_DIR).is_dir() else base / FALLBACK_OUT_DIR

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(self).items()
        }

    def reproduce(self) -> str:
        """The command line that repeats this run's measurements."""
        parts = [
            "python -m llcuda.benchmark",
            f"--model {self.model}",
            f"--concurrency {','.join(map(str, self.concurrency))}",
            f"--sampling {','.join(self.sampling)}",
            f"--max-tokens {self.max_tokens}",
            f"--prompt-tokens {self.prompt_tokens}",
            f"--repeats {self.repeats}",
        ]
        if tuple(self.systems) != tuple(SYSTEMS):
            parts.append(f"--systems {','.join(self.systems)}")
        return " ".join(parts)
