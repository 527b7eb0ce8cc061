"""One request as the engine tracks it: its prompt, the tokens generated so far, and how much
of it is in the KV cache. The engine creates and updates `Sequence` objects; a scheduler reads
them (to decide what runs) and may set `status`, nothing else.

    seq.num_tokens                 # prompt + outputs so far
    seq.num_computed               # tokens whose K/V is in the cache (0 after a preemption)
    seq.num_tokens - seq.num_computed   # what the next step must run: all of it for a prefill,
                                        # 1 (the last output token) for a decode
"""

from __future__ import annotations

import time

WAITING = "waiting"
RUNNING = "running"
FINISHED = "finished"


class Sequence:
    """A request being served. `status` is "waiting", "running" or "finished"; schedulers set
    the first two, the engine sets "finished" (and `finish_reason`: "length", "stop" or
    "abort")."""

    def __init__(
        self,
        seq_id: int,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        ignore_eos: bool = False,
        arrival_time: float | None = None,
    ) -> None:
        self.seq_id = seq_id
        self.prompt_ids = list(prompt_ids)
        self.output_ids: list[int] = []
        self.max_tokens = max_tokens
        self.ignore_eos = ignore_eos
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.status = WAITING
        self.num_computed = 0
        self.finish_reason: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def token_ids(self) -> list[int]:
        """Prompt then outputs: what a prefill runs (a new list each time)."""
        return self.prompt_ids + self.output_ids

    @property
    def is_finished(self) -> bool:
        return self.status == FINISHED

    def __repr__(self) -> str:
        return (
            f"Sequence(seq_id={self.seq_id}, status={self.status!r}, "
            f"prompt={len(self.prompt_ids)}, outputs={len(self.output_ids)}/{self.max_tokens}, "
            f"num_computed={self.num_computed})"
        )
