"""The baseline the `serving` lab measures against: static batching, as servers did before
paged attention (e.g. Hugging Face `generate` on a padded batch, FasterTransformer).

- Memory: each sequence reserves K/V for `reserve_tokens` positions up front (the engine's
  max_model_len by default: the server cannot know how long an answer will be), so the
  reservation, not the actual lengths, limits how many sequences fit.
- Batching: a batch is admitted all at once and runs until its LAST sequence finishes; the
  sequences that finish early leave idle slots, and new requests wait for the whole batch.

It follows the same contract as the learner's scheduler and is trusted (the engine checks it
all the same):

    scheduler = StaticBatchScheduler(
        ReservingBlockManager(num_blocks, block_size),
        max_num_seqs=64, max_num_batched_tokens=2048, reserve_tokens=max_model_len,
    )
"""

from __future__ import annotations

from collections import deque

from runner.serving.engine.scheduling import ScheduledBatch
from runner.serving.engine.sequence import RUNNING, Sequence
from runner.serving.engine.validation import blocks_for


class ReservingBlockManager:
    """Blocks from a free list; `allocate(seq, num_tokens)` reserves room for num_tokens
    positions at once, so a sequence never needs another block while it runs."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be at least 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free = deque(range(num_blocks))
        self._tables: dict[int, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def can_allocate(self, num_tokens: int) -> bool:
        return blocks_for(num_tokens, self.block_size) <= len(self._free)

    def allocate(self, seq: Sequence, num_tokens: int | None = None) -> None:
        """Reserve room for max(num_tokens, seq.num_tokens) positions."""
        if seq.seq_id in self._tables:
            raise RuntimeError(f"sequence {seq.seq_id} already has blocks")
        needed = blocks_for(max(num_tokens or 0, seq.num_tokens), self.block_size)
        if needed > len(self._free):
            raise RuntimeError(f"{needed} blocks wanted, {len(self._free)} free")
        self._tables[seq.seq_id] = [self._free.popleft() for _ in range(needed)]

    def can_append(self, seq: Sequence) -> bool:
        return len(self._tables[seq.seq_id]) * self.block_size >= seq.num_tokens

    def append_slot(self, seq: Sequence) -> None:
        if not self.can_append(seq):
            raise RuntimeError(f"sequence {seq.seq_id} outgrew its reservation")

    def free(self, seq: Sequence) -> None:
        self._free.extend(self._tables.pop(seq.seq_id, []))

    def block_table(self, seq: Sequence) -> list[int]:
        return self._tables[seq.seq_id]


class StaticBatchScheduler:
    """First come, first served, one batch at a time: when nothing is running, admit waiting
    sequences while max_num_seqs, the prefill token budget and the reservations allow; prefill
    them together, then decode them until every one has finished."""

    def __init__(
        self,
        block_manager: ReservingBlockManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        reserve_tokens: int,
    ) -> None:
        capacity = block_manager.num_blocks * block_manager.block_size
        if reserve_tokens > capacity:
            raise ValueError(
                f"reserve_tokens={reserve_tokens} is more than the whole KV cache holds "
                f"({block_manager.num_blocks} blocks of {block_manager.block_size} = "
                f"{capacity} tokens): not one sequence would fit"
            )
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.reserve_tokens = reserve_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def reservation(self, seq: Sequence) -> int:
        # Never less than the request can use, so a running sequence never needs another
        # block (the last generated token is never run, so needs no slot).
        return max(self.reserve_tokens, len(seq.prompt_ids) + seq.max_tokens - 1)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch:
        if self.running:
            return ScheduledBatch(decode=list(self.running))
        prefill: list[Sequence] = []
        tokens = 0
        while self.waiting and len(prefill) < self.max_num_seqs:
            seq = self.waiting[0]
            # The first prompt of a batch runs even if it alone is over the token budget.
            if prefill and tokens + seq.num_tokens > self.max_num_batched_tokens:
                break
            if not self.block_manager.can_allocate(self.reservation(seq)):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq, self.reservation(seq))
            seq.status = RUNNING
            prefill.append(seq)
            tokens += seq.num_tokens
        self.running = list(prefill)
        return ScheduledBatch(prefill=prefill)

    def finish(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)
