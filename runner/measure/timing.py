"""An interleaved timing loop for two or more contenders (e.g. a candidate and a baseline).

Each round draws a fresh input, then times every contender once on it, alternating the order
each round (A B, B A, A B, ...) so that slow drift - thermal, frequency, a noisy neighbour -
lands on both sides equally. The first rounds are warm-up and are not recorded. The loop stops
when every contender's relative standard error of the mean is at or below the target, or at
the time cap, or at the round cap, and says which.

The loop does not know what a call is: the caller supplies `run`, which must do the work and
return its wall time in nanoseconds (measured around exactly the work, by the caller's own
trusted clock), plus an output for `check`. Preparing inputs, checking outputs and pausing
other contenders all happen outside the timed region.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.measure.stats import RunningStats


@dataclass(frozen=True)
class TimingPolicy:
    warmup_rounds: int = 5
    min_rounds: int = 20
    max_rounds: int = 5000
    target_rel_sem: float = 0.005
    time_cap_s: float = 3.0


@dataclass(frozen=True)
class Contender:
    name: str
    # run(input) -> (elapsed_ns, output)
    run: Callable[[Any], tuple[int, Any]]
    # Called before this contender's timed call, e.g. to pause the others' processes.
    prepare: Callable[[], None] | None = None


@dataclass
class TimingResult:
    samples: dict[str, list[int]] = field(default_factory=dict)
    rounds: int = 0
    stop_reason: str = ""
    elapsed_s: float = 0.0

    @property
    def converged(self) -> bool:
        return self.stop_reason == "target_rel_sem"


def time_interleaved(
    *,
    contenders: Sequence[Contender],
    make_input: Callable[[int], Any],
    policy: TimingPolicy,
    check: Callable[[str, Any, Any], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> TimingResult:
    """Time every contender round by round until the policy says stop.

    `check(name, input, output)` runs after each timed call and may raise to abort, which is
    how a wrong answer produced while being timed is caught.
    """
    if len(contenders) < 1:
        raise ValueError("need at least one contender")
    # As timeit does: a collection in the middle of a timed call is noise, not the contender.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _loop(contenders, make_input, policy, check, monotonic)
    finally:
        if gc_was_enabled:
            gc.enable()


def _loop(
    contenders: Sequence[Contender],
    make_input: Callable[[int], Any],
    policy: TimingPolicy,
    check: Callable[[str, Any, Any], None] | None,
    monotonic: Callable[[], float],
) -> TimingResult:
    result = TimingResult(samples={c.name: [] for c in contenders})
    running = {c.name: RunningStats() for c in contenders}
    started = monotonic()
    round_number = 0
    while True:
        data = make_input(round_number)
        order = contenders if round_number % 2 == 0 else list(reversed(contenders))
        for contender in order:
            if contender.prepare is not None:
                contender.prepare()
            elapsed_ns, output = contender.run(data)
            if check is not None:
                check(contender.name, data, output)
            if round_number >= policy.warmup_rounds:
                result.samples[contender.name].append(elapsed_ns)
                running[contender.name].add(elapsed_ns)
        round_number += 1
        recorded = round_number - policy.warmup_rounds
        result.elapsed_s = monotonic() - started
        if recorded >= policy.min_rounds and all(
            r.rel_sem <= policy.target_rel_sem for r in running.values()
        ):
            result.stop_reason = "target_rel_sem"
        elif recorded >= policy.max_rounds:
            result.stop_reason = "max_rounds"
        elif result.elapsed_s >= policy.time_cap_s and recorded >= 2:
            result.stop_reason = "time_cap"
        if result.stop_reason:
            result.rounds = recorded
            return result
