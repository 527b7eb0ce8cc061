"""A small LLM serving engine for the project's own Llama models: a paged KV cache
(model_runner.PagedLlama), continuous batching by a pluggable scheduler (the `serving` lab's
learner writes one; static.StaticBatchScheduler is the baseline), greedy decoding.

    from runner.serving.engine import LLMEngine, PagedLlama, StaticBatchScheduler
    from runner.serving.engine import ReservingBlockManager

The contract a scheduler follows is in scheduling.py; what the engine checks, in
validation.py. Importing this package does not import torch: the names that need it (the
model runner, the engine, greedy generation) load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from runner.serving.engine.scheduling import ScheduledBatch, SchedulerError
from runner.serving.engine.sequence import Sequence
from runner.serving.engine.static import ReservingBlockManager, StaticBatchScheduler

if TYPE_CHECKING:
    from runner.serving.engine.engine import LLMEngine, StepStats, TokenEvent
    from runner.serving.engine.engine_thread import EngineFailure, EngineThread
    from runner.serving.engine.greedy import GreedyOutput, greedy_alone
    from runner.serving.engine.model_runner import PagedLlama, StepInput

_LAZY = {
    "LLMEngine": "engine",
    "StepStats": "engine",
    "TokenEvent": "engine",
    "EngineFailure": "engine_thread",
    "EngineThread": "engine_thread",
    "GreedyOutput": "greedy",
    "greedy_alone": "greedy",
    "PagedLlama": "model_runner",
    "StepInput": "model_runner",
}

__all__ = [
    "EngineFailure",
    "EngineThread",
    "GreedyOutput",
    "LLMEngine",
    "PagedLlama",
    "ReservingBlockManager",
    "ScheduledBatch",
    "SchedulerError",
    "Sequence",
    "StaticBatchScheduler",
    "StepInput",
    "StepStats",
    "TokenEvent",
    "greedy_alone",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"runner.serving.engine.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
