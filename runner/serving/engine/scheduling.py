"""The contract between the engine and a scheduler (the `serving` lab's learner writes one; the
static-batching baseline in static.py is another).

Each step the engine calls `scheduler.schedule()` and gets a `ScheduledBatch`: which sequences
to prefill (run every token not in the cache), which to decode (run the last output token) and
which it preempted (evicted: blocks freed, back in its waiting queue; the engine recomputes
them from scratch when they are prefilled again). The engine then asks
`scheduler.block_manager.block_table(seq)` where each sequence's K/V goes, checks everything
(see validation.py) and runs the model. When a sequence finishes (or is aborted) the engine
calls `scheduler.finish(seq)`.

The two Protocols below spell out the methods; nothing needs to inherit from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from runner.serving.engine.sequence import Sequence


@dataclass
class ScheduledBatch:
    """What to run in one step. A sequence appears at most once in prefill + decode."""

    prefill: list[Sequence] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        """Nothing to run (preempting alone makes no progress)."""
        return not self.prefill and not self.decode


class SchedulerError(Exception):
    """A scheduler or block manager broke a rule of the contract; the message is for the
    learner who wrote it. `rule` is a short stable name for the rule (see validation.RULES)."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


class BlockManager(Protocol):
    """Hands out KV-cache blocks of `block_size` token slots each."""

    @property
    def num_free_blocks(self) -> int: ...
    def can_allocate(self, num_tokens: int) -> bool: ...
    def allocate(self, seq: Sequence) -> None: ...  # blocks for seq.num_tokens
    def can_append(self, seq: Sequence) -> bool: ...  # room for one more token?
    def append_slot(self, seq: Sequence) -> None: ...  # make sure seq.num_tokens positions fit
    def free(self, seq: Sequence) -> None: ...
    def block_table(self, seq: Sequence) -> list[int]: ...


class Scheduler(Protocol):
    """Decides, each step, what runs. Built with its BlockManager by the engine's user:
    `Scheduler(BlockManager(num_blocks, block_size), max_num_seqs=.., max_num_batched_tokens=..)`.
    The engine reads `max_num_seqs` and `max_num_batched_tokens` back from it to check the
    batches (or is told them explicitly)."""

    block_manager: BlockManager

    def add(self, seq: Sequence) -> None: ...
    def schedule(self) -> ScheduledBatch: ...
    def finish(self, seq: Sequence) -> None: ...  # free its blocks, forget it
    def has_unfinished(self) -> bool: ...
