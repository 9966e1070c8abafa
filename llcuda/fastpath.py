"""Former home of the in-process engine; kept so ``from llcuda.fastpath import InProcessEngine`` works.

The engine now lives in :mod:`llcuda.inprocess` (and is ``InferenceEngine(backend="inprocess")``),
the ctypes bindings in :mod:`llcuda.libllama`.
"""

from __future__ import annotations

from .inprocess import InProcessEngine
from .libllama import (
                       Batch,
                       ChainParams,
                       ChatMessage,
                       ContextParams,
                       ModelParams,
                       SamplerSeqConfig,
                       load_library,
                       recent_log,
)

__all__ = ["Batch", "ChainParams", "ChatMessage", "ContextParams", "InProcessEngine", "ModelParams",
           "SamplerSeqConfig", "load_library", "recent_log"]
