"""Known-wrong answers to the `serving` lab, each a small change to the reference solution,
for the lab's tests: each must be caught, with a message a learner can act on.

- SharedBlockManager: forgets to take allocated blocks off the free list, so two sequences
  get the same block (the engine: SchedulerError "shared-block"; unchecked, wrong tokens).
- LeakyBlockManager: free() forgets the table but never returns the blocks; the cache runs
  dry (the engine: SchedulerError "stalled", naming the leak).
- NoPreemptScheduler: never preempts; when blocks run out, every running sequence waits for a
  block no one frees (the engine: SchedulerError "stalled", saying to preempt).
- StaticLikeScheduler: correct tokens, but admits only when the whole batch has finished, so
  it has no throughput gain over static batching (the grader's throughput check fails it).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from runner.serving.engine import ScheduledBatch, Sequence

REFERENCE_MODULE = "serving_reference_solution"


def load_reference():
    """reference_solution.py, beside this file (notebooks/ is not a package), loaded once as
    REFERENCE_MODULE so that tests loading it under that name share its classes."""
    if REFERENCE_MODULE not in sys.modules:
        path = Path(__file__).with_name("reference_solution.py")
        spec = importlib.util.spec_from_file_location(REFERENCE_MODULE, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[REFERENCE_MODULE] = module
        spec.loader.exec_module(module)
    return sys.modules[REFERENCE_MODULE]


BlockManager = load_reference().BlockManager
Scheduler = load_reference().Scheduler


class SharedBlockManager(BlockManager):
    def allocate(self, seq: Sequence) -> None:
        needed = self.blocks_needed(seq.num_tokens)
        # The bug: reads the free list without popping, so the next sequence gets the same.
        self.tables[seq.seq_id] = list(self.free_blocks)[:needed]


class LeakyBlockManager(BlockManager):
    def free(self, seq: Sequence) -> None:
        self.tables.pop(seq.seq_id, None)  # the bug: the blocks never go back


class NoPreemptScheduler(Scheduler):
    def _make_room(self) -> tuple[list[Sequence], list[Sequence]]:
        decode = []
        for seq in self.running:
            if self.block_manager.can_append(seq):
                self.block_manager.append_slot(seq)
                decode.append(seq)
            # The bug: a sequence that cannot grow just sits there, holding its blocks.
        return decode, []

    def schedule(self) -> ScheduledBatch:
        decode, _ = self._make_room()
        stalled = [seq for seq in self.running if seq not in decode]
        prefill = self._admit(num_running=len(self.running))
        self.running = sorted(decode + stalled + prefill, key=lambda s: s.arrival_time)
        return ScheduledBatch(prefill=prefill, decode=decode)


class StaticLikeScheduler(Scheduler):
    def schedule(self) -> ScheduledBatch:
        if self.running:  # the bug: no one joins until the whole batch has left
            decode, preempted = self._make_room()
            self.running = decode
            return ScheduledBatch(decode=decode, preempted=preempted)
        return super().schedule()
