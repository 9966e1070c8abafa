"""The portable benchmark: llcuda against llama.cpp's own tools, on one machine, in one run.

    python -m llcuda.benchmark                      # or: llcuda bench --compare
    python -m llcuda.benchmark --model gemma-3-1b-Q4_K_M --concurrency 1,8 --repeats 5

Runs, with the same llama.cpp binaries (never built here) and the same model: ``llama-bench`` (one
stream, prompt processing) and ``llama-batched-bench`` (N sequences together) as the ceilings, then
every system of :data:`~llcuda.benchmark.systems.SYSTEMS` (llcuda's engine backends, ``llcuda serve``
and stock llama-server through the ``openai`` client) at each concurrency level and sampling preset,
time to first token for a long prompt, and ``import llcuda`` and load times. Writes JSON, markdown
and a PNG plot to ``<out>/<device>-<date>/`` (see :mod:`llcuda.benchmark.runner`). The optional
``bench`` extra (``pip install 'llcuda[bench]'``) brings what random-weight models, the HTTP systems
and the plot need.

From Python::

    from llcuda.benchmark import BenchSettings, run_benchmark
    out = run_benchmark(BenchSettings(model="random-1b", concurrency=(1, 16, 64)))
    print(out.markdown_path.read_text())
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llcuda.benchmark.runner import BenchOutput, run_benchmark
    from llcuda.benchmark.settings import BenchSettings

_LAZY = {
    "BenchOutput": "llcuda.benchmark.runner",
    "run_benchmark": "llcuda.benchmark.runner",
    "BenchSettings": "llcuda.benchmark.settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llcuda.benchmark' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["BenchOutput", "BenchSettings", "run_benchmark"]
