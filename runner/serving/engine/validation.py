"""The engine's checks of what a scheduler returns, step by step. The learner's Scheduler and
BlockManager run in the engine's process, so a mistake in them would otherwise show up as
wrong tokens (two sequences writing K/V into one block) or a hang; instead every step is
checked before the model runs and a broken rule raises `SchedulerError`, whose message names
the rule and the sequences or blocks involved, and whose `rule` is one of RULES.

The validator remembers the block table of every sequence whose K/V is in the cache, so it can
tell when a block still holding a sequence's K/V is handed to another one, or dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from operator import index

from runner.serving.engine.scheduling import ScheduledBatch, SchedulerError
from runner.serving.engine.sequence import Sequence

RULES = {
    "batch-type": "schedule() returns a ScheduledBatch whose prefill, decode and preempted "
    "are lists of Sequence objects",
    "unknown-sequence": "only sequences added to this engine, and neither finished nor "
    "aborted, are scheduled",
    "duplicate": "a sequence appears at most once per step (prefill, decode or preempted)",
    "prefill-state": "a prefill is for a sequence with nothing in the cache (num_computed == 0)",
    "decode-state": "a decode is for a sequence whose cache holds all but its last token "
    "(num_computed == num_tokens - 1)",
    "max-num-seqs": "at most max_num_seqs sequences run per step",
    "max-num-batched-tokens": "at most max_num_batched_tokens prefill tokens per step (a "
    "single longer prompt may run alone)",
    "block-table": "block_manager.block_table(seq) returns a list of int block ids for every "
    "sequence that has K/V in the cache or is scheduled",
    "block-range": "block ids are in range(num_blocks)",
    "block-coverage": "a sequence's block table covers every position it writes",
    "shared-block": "a block belongs to one sequence at a time",
    "moved-block": "a block holding a sequence's cached K/V stays in its table, at the same "
    "place, until the sequence finishes or is preempted",
    "lost-sequence": "the scheduler has unfinished work while any request is unfinished",
    "stalled": "while requests are unfinished, some step eventually runs something",
}

# A correct scheduler may return an empty batch for a step (e.g. after preempting its only
# running sequence); this many in a row means it never will.
STALL_STEPS = 8


def fail(rule: str, message: str) -> SchedulerError:
    return SchedulerError(f"{message} [rule {rule}: {RULES[rule]}]", rule=rule)


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


@dataclass(frozen=True)
class CheckedBatch:
    """A batch that passed every rule, with the block tables to run it with."""

    prefill: list[Sequence]
    decode: list[Sequence]
    preempted: list[Sequence]
    tables: dict[int, list[int]]  # seq_id -> block table, for every sequence holding blocks
    blocks_used: int


class BatchValidator:
    """Checks each ScheduledBatch against the rules and remembers which blocks hold whose
    K/V. The engine calls `check` every step and `forget` when a sequence finishes."""

    def __init__(
        self, *, num_blocks: int, block_size: int, max_num_seqs: int, max_num_batched_tokens: int
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # seq_id -> the block table its cached K/V was written with.
        self._cached: dict[int, list[int]] = {}
        self._empty_steps = 0

    def forget(self, seq_id: int) -> None:
        self._cached.pop(seq_id, None)

    def check(
        self, batch: object, *, live: Mapping[int, Sequence], block_manager: object
    ) -> CheckedBatch:
        prefill, decode, preempted = self._check_shape(batch)
        self._check_membership(prefill, decode, preempted, live)
        for seq in preempted:
            # Its blocks are gone: it will be prefilled from scratch.
            self._cached.pop(seq.seq_id, None)
        self._check_states(prefill, decode)
        self._check_limits(prefill, decode)
        tables = self._check_blocks(prefill, decode, live, block_manager)
        for seq in prefill + decode:
            self._cached[seq.seq_id] = tables[seq.seq_id]
        blocks_used = sum(len(table) for table in tables.values())
        return CheckedBatch(prefill, decode, preempted, tables, blocks_used)

    def check_progress(
        self, batch: CheckedBatch, *, live: Mapping[int, Sequence], scheduler: object
    ) -> None:
        """Called after `check`: an empty batch is fine now and then, never for ever."""
        if not batch.prefill and not batch.decode:
            if live and not scheduler.has_unfinished():
                ids = ", ".join(str(seq_id) for seq_id in list(live)[:5])
                raise fail(
                    "lost-sequence",
                    f"your Scheduler's has_unfinished() is False but {len(live)} requests are "
                    f"unfinished (sequences {ids}): did add() or finish() lose them?",
                )
            self._empty_steps += 1
            if self._empty_steps >= STALL_STEPS:
                raise fail("stalled", self._stall_message(batch, live, scheduler))
        else:
            self._empty_steps = 0

    # --- the rules ---

    def _check_shape(self, batch: object) -> tuple[list, list, list]:
        if not isinstance(batch, ScheduledBatch):
            raise fail(
                "batch-type",
                f"your Scheduler's schedule() returned {type(batch).__name__}, "
                "not a ScheduledBatch",
            )
        parts = []
        for name in ("prefill", "decode", "preempted"):
            items = getattr(batch, name)
            if not isinstance(items, list | tuple):
                raise fail(
                    "batch-type",
                    f"ScheduledBatch.{name} is a {type(items).__name__}, not a list of Sequence",
                )
            for item in items:
                if not isinstance(item, Sequence):
                    raise fail(
                        "batch-type",
                        f"ScheduledBatch.{name} holds a {type(item).__name__} ({item!r:.60}), "
                        "not a Sequence",
                    )
            parts.append(list(items))
        return parts[0], parts[1], parts[2]

    def _check_membership(self, prefill, decode, preempted, live) -> None:
        seen: dict[int, str] = {}
        for name, items in (("prefill", prefill), ("decode", decode), ("preempted", preempted)):
            for seq in items:
                if live.get(seq.seq_id) is not seq:
                    why = (
                        f"which finished ({seq.finish_reason}): finish(seq) should forget it"
                        if seq.finish_reason is not None
                        else "which this engine is not serving"
                    )
                    raise fail(
                        "unknown-sequence",
                        f"your Scheduler put sequence {seq.seq_id} in {name}, {why}",
                    )
                if seq.seq_id in seen:
                    where = seen[seq.seq_id]
                    both = f"in {name} twice" if where == name else f"in both {where} and {name}"
                    raise fail("duplicate", f"your Scheduler put sequence {seq.seq_id} {both}")
                seen[seq.seq_id] = name

    def _check_states(self, prefill, decode) -> None:
        for seq in prefill:
            if seq.num_computed != 0:
                raise fail(
                    "prefill-state",
                    f"your Scheduler prefills sequence {seq.seq_id}, but {seq.num_computed} of "
                    f"its {seq.num_tokens} tokens are already in the cache: decode it, or if "
                    "you preempted it, list it in ScheduledBatch.preempted",
                )
        for seq in decode:
            if seq.seq_id not in self._cached or seq.num_computed == 0:
                raise fail(
                    "decode-state",
                    f"your Scheduler decodes sequence {seq.seq_id}, but none of its tokens is "
                    "in the cache: a new (or preempted) sequence is prefilled first",
                )
            if seq.num_computed != seq.num_tokens - 1:
                raise fail(
                    "decode-state",
                    f"your Scheduler decodes sequence {seq.seq_id}, which has "
                    f"{seq.num_computed} of {seq.num_tokens} tokens in the cache",
                )

    def _check_limits(self, prefill, decode) -> None:
        num_seqs = len(prefill) + len(decode)
        if num_seqs > self.max_num_seqs:
            raise fail(
                "max-num-seqs",
                f"your Scheduler runs {num_seqs} sequences in one step "
                f"({len(prefill)} prefills, {len(decode)} decodes); max_num_seqs is "
                f"{self.max_num_seqs}",
            )
        tokens = sum(seq.num_tokens for seq in prefill)
        if len(prefill) > 1 and tokens > self.max_num_batched_tokens:
            raise fail(
                "max-num-batched-tokens",
                f"your Scheduler prefills {len(prefill)} sequences of {tokens} tokens in all "
                f"in one step; max_num_batched_tokens is {self.max_num_batched_tokens}",
            )

    def _check_blocks(self, prefill, decode, live, block_manager) -> dict[int, list[int]]:
        scheduled = {seq.seq_id for seq in prefill + decode}
        # Everything whose K/V is in the cache, scheduled or not, plus the prefills.
        holders = [live[seq_id] for seq_id in self._cached if seq_id in live]
        holders += prefill
        owner: dict[int, int] = {}
        tables: dict[int, list[int]] = {}
        for seq in holders:
            table = self._table(block_manager, seq)
            for block in table:
                if not 0 <= block < self.num_blocks:
                    raise fail(
                        "block-range",
                        f"your BlockManager gave sequence {seq.seq_id} block {block}; the "
                        f"cache has blocks 0 to {self.num_blocks - 1}",
                    )
                other = owner.setdefault(block, seq.seq_id)
                if other != seq.seq_id:
                    raise fail(
                        "shared-block",
                        f"your BlockManager gave block {block} to sequences {other} and "
                        f"{seq.seq_id}",
                    )
            if len(set(table)) != len(table):
                twice = next(block for block in table if table.count(block) > 1)
                raise fail(
                    "shared-block",
                    f"block {twice} appears twice in sequence {seq.seq_id}'s block table "
                    f"{table[:20]}",
                )
            # A scheduled sequence writes up to num_tokens positions; the others only keep
            # what they have.
            needed = seq.num_tokens if seq.seq_id in scheduled else seq.num_computed
            if len(table) * self.block_size < needed:
                raise fail(
                    "block-coverage",
                    f"sequence {seq.seq_id} needs {needed} positions, i.e. "
                    f"{blocks_for(needed, self.block_size)} blocks of {self.block_size}, but "
                    f"its block table has {len(table)}",
                )
            previous = self._cached.get(seq.seq_id)
            if previous is not None:
                kept = blocks_for(seq.num_computed, self.block_size)
                if table[:kept] != previous[:kept]:
                    where = next(i for i in range(kept) if table[i : i + 1] != previous[i : i + 1])
                    now = table[where] if where < len(table) else "nothing"
                    raise fail(
                        "moved-block",
                        f"sequence {seq.seq_id}'s block table changed at index {where} (block "
                        f"{previous[where]} became {now}) while that block held its cached "
                        "K/V: if you preempted it, list it in ScheduledBatch.preempted",
                    )
            tables[seq.seq_id] = table
        return tables

    def _table(self, block_manager, seq: Sequence) -> list[int]:
        try:
            table = block_manager.block_table(seq)
        except Exception as exc:
            state = (
                f"{seq.num_computed} of its tokens are in the cache"
                if seq.num_computed
                else "it is scheduled for a prefill"
            )
            raise fail(
                "block-table",
                f"your BlockManager's block_table(seq) raised {type(exc).__name__}: {exc} for "
                f"sequence {seq.seq_id}, but {state}; if you preempted it, list it in "
                "ScheduledBatch.preempted",
            ) from exc
        try:
            if isinstance(table, str | bytes):
                raise TypeError
            return [index(block) for block in table]
        except TypeError:
            raise fail(
                "block-table",
                f"your BlockManager's block_table(seq) returned {table!r:.80} for sequence "
                f"{seq.seq_id}, not a list of int block ids",
            ) from None

    def _stall_message(self, batch: CheckedBatch, live, scheduler) -> str:
        try:
            free = int(scheduler.block_manager.num_free_blocks)
        except Exception:
            free = None
        running = len(batch.tables)
        waiting = len(live) - running
        head = f"your Scheduler scheduled nothing for {STALL_STEPS} steps in a row while"
        if running == 0 and free == self.num_blocks:
            return f"{head} {waiting} requests wait and every block is free: admit (prefill) some"
        if running == 0:
            return (
                f"{head} {waiting} requests wait and no sequence holds a block, yet your "
                f"BlockManager reports {free} of {self.num_blocks} blocks free: blocks leak "
                "(does free() give them back?)"
            )
        return (
            f"{head} {waiting} requests wait and {running} are running with "
            f"{batch.blocks_used} blocks ({free} of {self.num_blocks} free): when a running "
            "sequence needs a block and none is free, preempt one (free its blocks, put it "
            "back in the waiting queue, list it in ScheduledBatch.preempted)"
        )
