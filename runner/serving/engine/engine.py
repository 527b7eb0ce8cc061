"""The serving engine's loop: requests in, one token per running request out, each step.

    runner = PagedLlama(load_model(), num_blocks=512, block_size=16)
    scheduler = Scheduler(BlockManager(512, 16), max_num_seqs=64, max_num_batched_tokens=2048)
    engine = LLMEngine(runner, scheduler, eos_token_id=tokenizer.eos_token_id, max_model_len=512)
    engine.add_request(prompt_ids, max_tokens=64)
    while engine.has_unfinished():
        for event in engine.step(): ...          # TokenEvent per sequence that ran

A step asks the scheduler what to run, checks its answer (validation.py: a SchedulerError
for the learner on any broken rule), runs the model on the prefills and decodes, takes the
greedy token of each, and finishes sequences that reached max_tokens or the end-of-sequence
token (`scheduler.finish(seq)`). The engine is single-threaded: engine_thread.py runs it on a
thread of its own for the server.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from operator import index

from runner.serving.engine.model_runner import StepInput
from runner.serving.engine.sequence import FINISHED, Sequence
from runner.serving.engine.validation import BatchValidator, blocks_for


@dataclass(frozen=True)
class TokenEvent:
    """A token generated for a sequence; the last one has finished=True and a reason:
    "length" (max_tokens reached) or "stop" (the end-of-sequence token)."""

    seq_id: int
    token_id: int
    finished: bool
    finish_reason: str | None


@dataclass(frozen=True)
class StepStats:
    """What one step did. `blocks_used` counts the blocks in the block tables of the sequences
    that hold K/V (as the engine checked them, not as the block manager reports)."""

    time: float  # time.monotonic() at the end of the step
    duration_s: float
    num_prefill: int
    num_decode: int
    num_preempted: int
    batched_tokens: int  # tokens run through the model: whole prefills plus one per decode
    blocks_used: int
    waiting: int  # unfinished requests that did not run this step


class LLMEngine:
    """Greedy generation for many requests at once with a paged KV cache. `runner` is a
    PagedLlama (or anything with num_blocks, block_size, vocab_size and forward(items));
    `scheduler` follows scheduling.Scheduler. The limits the batches are checked against are
    the scheduler's `max_num_seqs` and `max_num_batched_tokens` unless given here."""

    def __init__(
        self,
        runner,
        scheduler,
        *,
        eos_token_id: int | None,
        max_model_len: int,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        stats_limit: int = 100_000,
    ) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.eos_token_id = eos_token_id
        self.max_model_len = max_model_len
        self.num_blocks = runner.num_blocks
        self.block_size = runner.block_size
        self.max_num_seqs = self._limit(scheduler, "max_num_seqs", max_num_seqs)
        self.max_num_batched_tokens = self._limit(
            scheduler, "max_num_batched_tokens", max_num_batched_tokens
        )
        self._check_block_manager(scheduler)
        self.validator = BatchValidator(
            num_blocks=self.num_blocks,
            block_size=self.block_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
        )
        self._live: dict[int, Sequence] = {}
        self._next_seq_id = 0
        # The most recent steps; totals survive the cap.
        self.stats: list[StepStats] = []
        self.stats_limit = stats_limit
        self.num_steps = 0
        self.num_preemptions = 0

    @staticmethod
    def _limit(scheduler, name: str, given: int | None) -> int:
        value = given if given is not None else getattr(scheduler, name, None)
        if value is None:
            raise ValueError(
                f"the engine checks every batch against {name}: keep it as an attribute of "
                f"your Scheduler (self.{name} = {name}) or pass {name}= to LLMEngine"
            )
        value = index(value)
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
        return value

    def _check_block_manager(self, scheduler) -> None:
        block_manager = getattr(scheduler, "block_manager", None)
        if block_manager is None:
            raise ValueError(
                "the engine asks scheduler.block_manager.block_table(seq) where each "
                "sequence's K/V goes: your Scheduler needs a block_manager attribute"
            )
        for name, expected in (("num_blocks", self.num_blocks), ("block_size", self.block_size)):
            value = getattr(block_manager, name, expected)
            if value != expected:
                raise ValueError(
                    f"your BlockManager has {name}={value} but the model's KV cache has "
                    f"{name}={expected}: build both with the same numbers"
                )

    # --- requests ---

    def check_request(self, prompt_ids: Iterable[int], *, max_tokens: int) -> list[int]:
        """The prompt as a list of ints, or ValueError saying why the request cannot run."""
        try:
            prompt = [index(token) for token in prompt_ids]
            max_tokens = index(max_tokens)
        except TypeError:
            raise ValueError("prompt_ids must be token ids (ints) and max_tokens an int") from None
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        vocab_size = getattr(self.runner, "vocab_size", None)
        if vocab_size is not None:
            bad = [token for token in prompt if not 0 <= token < vocab_size]
            if bad:
                raise ValueError(
                    f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})"
                )
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        total = len(prompt) + max_tokens
        if total > self.max_model_len:
            raise ValueError(
                f"the prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) is {total} "
                f"tokens, more than max_model_len={self.max_model_len}"
            )
        # The last generated token is never run through the model, so needs no K/V slot.
        needed = blocks_for(total - 1, self.block_size)
        if needed > self.num_blocks:
            raise ValueError(
                f"the request needs {needed} KV blocks of {self.block_size} tokens and the "
                f"whole cache has {self.num_blocks}: it could never run"
            )
        return prompt

    def add_request(
        self,
        prompt_ids: Iterable[int],
        *,
        max_tokens: int,
        ignore_eos: bool = False,
        seq_id: int | None = None,
    ) -> Sequence:
        """Queue a request (ValueError if it cannot run). `seq_id` lets a caller choose the id
        (engine_thread does, to answer before the engine thread sees the request)."""
        prompt = self.check_request(prompt_ids, max_tokens=max_tokens)
        if seq_id is None:
            seq_id = self._next_seq_id
        elif seq_id in self._live:
            raise ValueError(f"sequence {seq_id} is already being served")
        self._next_seq_id = max(self._next_seq_id, seq_id + 1)
        seq = Sequence(seq_id, prompt, max_tokens=index(max_tokens), ignore_eos=ignore_eos)
        self._live[seq_id] = seq
        self.scheduler.add(seq)
        return seq

    def abort(self, seq_id: int) -> None:
        """Stop serving a request (a client went away). Unknown or finished ids are ignored."""
        seq = self._live.get(seq_id)
        if seq is not None:
            self._finish(seq, "abort")

    def has_unfinished(self) -> bool:
        return bool(self._live)

    @property
    def num_unfinished(self) -> int:
        return len(self._live)

    # --- the loop ---

    def step(self) -> list[TokenEvent]:
        if not self._live:
            return []
        start = time.monotonic()
        waiting_before = len(self._live)
        batch = self.validator.check(
            self.scheduler.schedule(),
            live=self._live,
            block_manager=self.scheduler.block_manager,
        )
        for seq in batch.preempted:
            # Recompute, as vLLM does by default: the next prefill runs prompt + outputs.
            seq.num_computed = 0
        self.num_preemptions += len(batch.preempted)
        self.validator.check_progress(batch, live=self._live, scheduler=self.scheduler)

        items = [StepInput(seq.token_ids, 0, batch.tables[seq.seq_id]) for seq in batch.prefill]
        items += [
            StepInput([seq.output_ids[-1]], seq.num_tokens - 1, batch.tables[seq.seq_id])
            for seq in batch.decode
        ]
        events: list[TokenEvent] = []
        if items:
            logits = self.runner.forward(items)
            if tuple(logits.shape[:1]) != (len(items),):
                raise RuntimeError(
                    f"the model runner returned logits of shape {tuple(logits.shape)} for "
                    f"{len(items)} sequences"
                )
            next_ids = logits.argmax(dim=-1).tolist()
            for seq, token in zip(batch.prefill + batch.decode, next_ids, strict=True):
                events.append(self._append(seq, token))

        self.num_steps += 1
        end = time.monotonic()
        self._record(
            StepStats(
                time=end,
                duration_s=end - start,
                num_prefill=len(batch.prefill),
                num_decode=len(batch.decode),
                num_preempted=len(batch.preempted),
                batched_tokens=sum(len(item.token_ids) for item in items),
                blocks_used=batch.blocks_used,
                waiting=waiting_before - len(items),
            )
        )
        return events

    def _append(self, seq: Sequence, token: int) -> TokenEvent:
        seq.num_computed = seq.num_tokens
        seq.output_ids.append(token)
        reason = None
        if not seq.ignore_eos and token == self.eos_token_id:
            reason = "stop"
        elif len(seq.output_ids) >= seq.max_tokens:
            reason = "length"
        if reason is not None:
            self._finish(seq, reason)
        return TokenEvent(seq.seq_id, token, reason is not None, reason)

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.status = FINISHED
        seq.finish_reason = reason
        del self._live[seq.seq_id]
        self.validator.forget(seq.seq_id)
        self.scheduler.finish(seq)

    def _record(self, stats: StepStats) -> None:
        self.stats.append(stats)
        # Trim in chunks, not one entry per step: deleting from the front of a list is O(n).
        if len(self.stats) > self.stats_limit + self.stats_limit // 4:
            del self.stats[: len(self.stats) - self.stats_limit]

    def generate(
        self, prompts: list[list[int]], *, max_tokens: int | list[int], ignore_eos: bool = True
    ) -> list[list[int]]:
        """Run the given prompts to completion (with whatever else is queued) and return their
        output token ids, in order. For notebooks and tests; a server steps the engine itself."""
        limits = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
        if len(limits) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(limits)} max_tokens")
        seqs = [
            self.add_request(prompt, max_tokens=limit, ignore_eos=ignore_eos)
            for prompt, limit in zip(prompts, limits, strict=True)
        ]
        # The engine's own record, not seq.status, which a scheduler may set.
        while any(self._live.get(seq.seq_id) is seq for seq in seqs):
            self.step()
        return [list(seq.output_ids) for seq in seqs]
