"""Roofline estimates for serving one model on one kind of GPU: weight and KV-cache memory,
decode and prefill step times, the batch where decode turns compute-bound, and the request
rate one replica sustains.

A replica is `gpus_per_replica` GPUs of one model holding one copy of the weights (tensor
parallel). One engine step reads every weight once and the KV cache of every running
sequence, and does 2 x params FLOPs per token it processes; it takes whichever is longer,
plus a fixed overhead:

    step_time = overhead + max((weight_bytes + kv_bytes_read) / (bandwidth x efficiency),
                               2 x params x tokens / (FLOP/s x efficiency))

Decode (one token per running sequence) is memory-bound until the batch is large; prefill
(hundreds of prompt tokens at once) is compute-bound. The efficiencies and the overhead are
the catalogue's assumptions (catalogue.toml says where each comes from).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from runner.cost.catalogue import PRECISION_BYTES, Assumptions, Gpu
from runner.cost.shapes import ModelShape


class DoesNotFit(ValueError):
    """The weights (and one request's KV cache) do not fit in the replica's memory."""


@dataclass(frozen=True)
class Deployment:
    model: ModelShape
    gpu: Gpu
    precision: str
    gpus_per_replica: int
    assumptions: Assumptions

    @property
    def bytes_per_element(self) -> int:
        return PRECISION_BYTES[self.precision]

    @property
    def weight_bytes(self) -> float:
        return self.model.weight_bytes(self.bytes_per_element)

    @property
    def kv_bytes_per_token(self) -> float:
        return self.model.kv_bytes_per_token(self.bytes_per_element)

    @property
    def _parallel_efficiency(self) -> float:
        return 1.0 if self.gpus_per_replica == 1 else self.assumptions.tensor_parallel_efficiency

    @property
    def bandwidth(self) -> float:
        """Bytes per second a decode step reaches on the whole replica."""
        return (
            self.gpu.bandwidth_bytes_per_s
            * self.gpus_per_replica
            * self.assumptions.memory_efficiency
            * self._parallel_efficiency
        )

    @property
    def flops(self) -> float:
        """FLOP/s a prefill reaches on the whole replica, at this precision."""
        return (
            self.gpu.flops_per_s[self.precision]
            * self.gpus_per_replica
            * self.assumptions.compute_efficiency
            * self._parallel_efficiency
        )

    @property
    def usable_memory_bytes(self) -> float:
        return self.gpu.memory_bytes * self.gpus_per_replica * self.assumptions.memory_utilisation

    @property
    def kv_budget_tokens(self) -> int:
        """Tokens of KV cache that fit beside the weights (0 when the weights do not fit)."""
        free = self.usable_memory_bytes - self.weight_bytes
        return max(0, math.floor(free / self.kv_bytes_per_token))

    def check_fits(self, *, tokens_per_request: int) -> None:
        """Raise DoesNotFit, saying by how much, unless the weights and the KV cache of one
        request of `tokens_per_request` tokens fit in the replica's usable memory."""
        usable = self.usable_memory_bytes
        where = (
            f"{self.gpus_per_replica} x {self.gpu.name} holds {usable / 1e9:.1f} GB "
            f"({self.assumptions.memory_utilisation:.0%} of "
            f"{self.gpu.memory_bytes * self.gpus_per_replica / 1e9:.0f} GB)"
        )
        if self.weight_bytes >= usable:
            raise DoesNotFit(
                f"{self.model.name} in {self.precision} is {self.weight_bytes / 1e9:.1f} GB of "
                f"weights; {where}"
            )
        if self.kv_budget_tokens < tokens_per_request:
            raise DoesNotFit(
                f"{self.model.name} in {self.precision} leaves room for {self.kv_budget_tokens} "
                f"tokens of KV cache beside its {self.weight_bytes / 1e9:.1f} GB of weights "
                f"({where}), fewer than one request of {tokens_per_request} tokens"
            )

    # -- time ------------------------------------------------------------------------------

    def step_time(self, *, sequences: float, context_tokens: float, prefill_tokens: float = 0):
        """Seconds for one engine step: `sequences` decode one token each while reading
        `context_tokens` tokens of KV cache in all, and `prefill_tokens` prompt tokens are
        prefilled."""
        read = self.weight_bytes + self.kv_bytes_per_token * context_tokens
        work = self.model.flops_per_token * (sequences + prefill_tokens)
        return self.assumptions.step_overhead_s + max(read / self.bandwidth, work / self.flops)

    def decode_step_time(self, *, batch: float, context: float) -> float:
        """One decode step of `batch` sequences of `context` tokens each."""
        return self.step_time(sequences=batch, context_tokens=batch * context)

    def prefill_time(self, tokens: float) -> float:
        """Seconds to prefill `tokens` prompt tokens on their own (compute-bound)."""
        return self.step_time(sequences=0, context_tokens=0, prefill_tokens=tokens)

    def compute_bound_batch(self, *, context: float) -> float:
        """The decode batch above which a step is limited by FLOP/s, not bandwidth: where
        (weights + batch x context x kv) / bandwidth = 2 x params x batch / FLOP/s.
        Infinite when the KV bytes each sequence adds take longer to read than its FLOPs
        take to compute (long contexts): then decode never turns compute-bound."""
        per_sequence = self.model.flops_per_token / self.flops
        per_sequence -= context * self.kv_bytes_per_token / self.bandwidth
        if per_sequence <= 0:
            return math.inf
        return self.weight_bytes / self.bandwidth / per_sequence

    # -- capacity --------------------------------------------------------------------------

    def steady_state(self, *, batch: float, mean_prompt: float, mean_output: float):
        """(requests per second, step time) of a replica that keeps `batch` sequences running.

        Every request spends `mean_output` steps in the batch (its prefill step gives the first
        token), so by Little's law rate = batch / (mean_output x step_time); each step also
        prefills the prompts of the requests that join, batch x mean_prompt / mean_output
        tokens on average, and reads each sequence's context, mean_prompt + mean_output / 2.
        """
        step = self.step_time(
            sequences=batch,
            context_tokens=batch * (mean_prompt + mean_output / 2),
            prefill_tokens=batch * mean_prompt / mean_output,
        )
        return batch / (mean_output * step), step

    def max_batch_in_memory(self, *, mean_prompt: float, mean_output: float) -> int:
        """Sequences whose whole KV cache (prompt + output) fits at once."""
        return max(0, math.floor(self.kv_budget_tokens / (mean_prompt + mean_output)))

    def largest_batch(self, *, max_batch: int, mean_prompt: float, mean_output: float) -> float:
        """The largest batch a replica can keep running: at most max_batch, at most what fits
        in memory, and at most what the prefill budget can refill: each step must prefill
        batch x mean_prompt / mean_output tokens on average, and prefills at most
        max_prefill_tokens."""
        return float(
            min(
                max_batch,
                self.max_batch_in_memory(mean_prompt=mean_prompt, mean_output=mean_output),
                self.assumptions.max_prefill_tokens * mean_output / max(mean_prompt, 1e-9),
            )
        )

    def capacity(
        self,
        *,
        max_batch: int,
        mean_prompt: float,
        mean_output: float,
        step_time_limit: float | None = None,
    ) -> tuple[float, float, float]:
        """(requests per second, batch, step time) at the largest batch this replica can
        run (largest_batch) and, with `step_time_limit` (a TPOT target), whose slowest
        common step is within it: the larger of the steady step and a step that also carries
        a full prefill budget (slowest_step). (0, 0, inf) when not even one sequence can run
        within the limit."""
        shape = {"mean_prompt": mean_prompt, "mean_output": mean_output}
        batch = self.largest_batch(max_batch=max_batch, **shape)
        if batch < 1:
            return 0.0, 0.0, math.inf
        if step_time_limit is not None and self.slowest_step(batch=batch, **shape) > (
            step_time_limit
        ):
            # Step time grows with the batch: bisect for the largest batch within the limit.
            low, high = 0.0, batch
            for _ in range(50):
                middle = (low + high) / 2
                fits = self.slowest_step(batch=middle, **shape) <= step_time_limit
                low, high = (middle, high) if fits else (low, middle)
            if low < 1:
                return 0.0, 0.0, math.inf
            batch = low
        rate, step = self.steady_state(batch=batch, **shape)
        return rate, batch, step

    def slowest_step(self, *, batch: float, mean_prompt: float, mean_output: float) -> float:
        """The larger of the steady step and the step that prefills a full budget of
        max_prefill_tokens beside the batch's decodes. Arrivals are random, so some steps
        take in far more prompts than the average; a sequence's p99 time per token is set by
        those steps when they are slow (compute-bound replicas with a small FLOP/s)."""
        _, step = self.steady_state(batch=batch, mean_prompt=mean_prompt, mean_output=mean_output)
        full = self.step_time(
            sequences=batch,
            context_tokens=batch * (mean_prompt + mean_output / 2),
            prefill_tokens=self.assumptions.max_prefill_tokens,
        )
        return max(step, full)

    def batch_for_rate(
        self, rate: float, *, max_batch: int, mean_prompt: float, mean_output: float
    ) -> float:
        """The batch a replica settles at when `rate` requests per second arrive (the inverse
        of steady_state, which grows with the batch); the largest batch when it cannot keep
        up with that rate."""
        shape = {"mean_prompt": mean_prompt, "mean_output": mean_output}
        high = self.largest_batch(max_batch=max_batch, **shape)
        if high <= 0 or self.steady_state(batch=high, **shape)[0] <= rate:
            return max(high, 0.0)
        low = 0.0
        for _ in range(50):
            middle = (low + high) / 2
            low, high = (
                (middle, high)
                if self.steady_state(batch=middle, **shape)[0] < rate
                else (
                    low,
                    middle,
                )
            )
        return high
