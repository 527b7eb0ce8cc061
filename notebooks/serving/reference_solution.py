"""The `serving` lab's reference answer: a paged KV block manager and a continuous-batching
scheduler, a simplified version of vLLM's V0 scheduler (first come, first served; preemption
by recomputation). Learners read it after trying; the lab's tests and the server's
`--scheduler-file notebooks/serving/reference_solution.py` run it.

It lives outside runner/ on purpose: runner/ is importable inside the learner's sandbox.

How the pieces meet (see runner/serving/engine/scheduling.py for the contract):
- The KV cache is `num_blocks` blocks of `block_size` token slots. A sequence's block table
  lists its blocks in order: position p lives in block table[p // block_size], slot
  p % block_size. Blocks need not be contiguous, so memory is handed out a block at a time
  as sequences grow, instead of reserved up front for the longest possible answer.
- Each step the engine calls `schedule()`, runs what it returns, appends one token to every
  sequence that ran, and calls `finish(seq)` for those that are done.
"""

from __future__ import annotations

from collections import deque

from runner.serving.engine import ScheduledBatch, Sequence


class BlockManager:
    """A free list of block ids and a block table per sequence."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: deque[int] = deque(range(num_blocks))
        self.tables: dict[int, list[int]] = {}  # seq_id -> block ids, in position order

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)  # ceil(num_tokens / block_size)

    def can_allocate(self, num_tokens: int, *, keep_free: int = 0) -> bool:
        """Are there blocks for num_tokens positions, leaving `keep_free` blocks spare?"""
        return self.blocks_needed(num_tokens) + keep_free <= len(self.free_blocks)

    def allocate(self, seq: Sequence) -> None:
        """Blocks for the whole sequence (prompt + any outputs: a preempted sequence comes
        back with its outputs and recomputes them)."""
        assert seq.seq_id not in self.tables, f"sequence {seq.seq_id} already has blocks"
        needed = self.blocks_needed(seq.num_tokens)
        self.tables[seq.seq_id] = [self.free_blocks.popleft() for _ in range(needed)]

    def can_append(self, seq: Sequence) -> bool:
        """Can the token this step decodes get a slot? Either its position falls in the last
        block, which has room, or a free block is left."""
        table = self.tables[seq.seq_id]
        return len(table) * self.block_size >= seq.num_tokens or bool(self.free_blocks)

    def append_slot(self, seq: Sequence) -> None:
        """Make the table cover seq.num_tokens positions: one more block when the last is
        full."""
        table = self.tables[seq.seq_id]
        while len(table) * self.block_size < seq.num_tokens:
            table.append(self.free_blocks.popleft())

    def free(self, seq: Sequence) -> None:
        # A sequence still waiting (never admitted, or preempted) has no blocks.
        self.free_blocks.extend(self.tables.pop(seq.seq_id, []))

    def block_table(self, seq: Sequence) -> list[int]:
        return self.tables[seq.seq_id]


class Scheduler:
    """Continuous batching: sequences join and leave the running batch at every step.

    Each step:
    1. Make room for every running sequence's next token, oldest first. When no block is
       free, preempt the most recently arrived running sequence (free its blocks, put it at
       the FRONT of the waiting queue: it is recomputed later) until the token fits. The
       newest loses because it has the least work to redo, and first come, first served
       says the oldest goes first.
    2. If nothing was preempted, admit waiting sequences in arrival order while
       max_num_seqs, max_num_batched_tokens and the free blocks allow, keeping a small
       watermark of free blocks so that the running sequences can grow.
    3. Prefill the admitted, decode the running.
    """

    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        watermark: float = 0.01,
    ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # As vLLM: 1% of the blocks stay free when admitting, so that a newly admitted
        # sequence does not force a preemption on the very next step.
        self.watermark_blocks = int(watermark * block_manager.num_blocks)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in arrival order

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch:
        decode, preempted = self._make_room()
        prefill = [] if preempted else self._admit(num_running=len(decode))
        self.running = sorted(decode + prefill, key=arrival)
        return ScheduledBatch(prefill=prefill, decode=decode, preempted=preempted)

    def _make_room(self) -> tuple[list[Sequence], list[Sequence]]:
        queue = deque(self.running)  # oldest first
        decode: list[Sequence] = []
        preempted: list[Sequence] = []
        while queue:
            seq = queue.popleft()
            while not self.block_manager.can_append(seq):
                # Evict the newest running sequence; if seq itself is the newest, it goes.
                victim = queue.pop() if queue else seq
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                self.block_manager.append_slot(seq)
                decode.append(seq)
        return decode, preempted

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = "waiting"
        # Victims come newest first, so the oldest ends up at the very front.
        self.waiting.appendleft(seq)

    def _admit(self, *, num_running: int) -> list[Sequence]:
        prefill: list[Sequence] = []
        tokens = 0
        while self.waiting and num_running + len(prefill) < self.max_num_seqs:
            seq = self.waiting[0]  # first come, first served: never skip ahead
            # A prompt longer than the token budget may still run, alone.
            if prefill and tokens + seq.num_tokens > self.max_num_batched_tokens:
                break
            # The watermark protects running sequences; with none, use every block (else a
            # prompt needing the whole cache would never start).
            keep_free = self.watermark_blocks if num_running or prefill else 0
            if not self.block_manager.can_allocate(seq.num_tokens, keep_free=keep_free):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq)
            seq.status = "running"
            prefill.append(seq)
            tokens += seq.num_tokens
        return prefill

    def finish(self, seq: Sequence) -> None:
        """The engine is done with seq (finished or aborted): free its blocks, forget it."""
        self.block_manager.free(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)


def arrival(seq: Sequence) -> tuple[float, int]:
    return (seq.arrival_time, seq.seq_id)
