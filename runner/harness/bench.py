"""The trusted side of in-process timing: drive two children's benches, check what they say.

The candidate (the learner's function) and the baseline (trusted code) each run in their own
sandboxed child, which times its own calls with CUDA events or the host clock
(runner.measure.device_timing). Everything that decides a grade happens here instead:

- inputs come from the secret seed here; K input sets are sent once, then before every timed
  call a few rows of the set are overwritten with fresh values chosen here, so no call sees
  an input that an earlier call saw;
- after each block of calls, rows of every output are fetched and compared with a float64
  reference computed here: the rows that were just overwritten (a cache returns them stale)
  and random rows (a kernel that computes only part of its output leaves NaN poison or old
  data there); rows of the input sets are fetched too, to catch a call that edits its input;
- blocks alternate between candidate and baseline (A B, B A, ...) so drift cancels; the loop
  stops when both relative standard errors are at the target, or at the time cap;
- the children's event times are checked against this process's own clock: a block of calls
  run back to back and timed through the pipe from here bounds the true time per call, and an
  event time far below it means the timers lied (runner.measure.device_timing explains the
  other checks: replaced names, outputs that alias inputs, work left on other streams).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.harness.client import HarnessFailure, ServedFunction
from runner.harness.correctness import Comparison
from runner.measure.stats import RunningStats


@dataclass(frozen=True)
class BenchPolicy:
    sets: int = 4  # input sets sent once and rotated
    block: int = 10  # timed calls per request
    warmup_blocks: int = 1
    warmup_s: float = 0.3  # and at least this long, both sides together
    min_samples: int = 30
    max_samples: int = 3000
    target_rel_sem: float = 0.005
    time_cap_s: float = 5.0
    mutate_rows: int = 2  # rows overwritten before each call
    random_probe_rows: int = 2  # rows checked per call besides the overwritten ones
    # None: the backend's default (2x L2 and at least 256 MiB on a GPU, 0 on CPU)
    flush_bytes: int | None = None
    calibration_calls: int = 20
    wall_target_s: float = 0.05  # how long each wall-clock block should take
    wall_repeats: int = 3
    # Work past the end of the call: flagged when the median gap exceeds the empty call's by
    # more than this many ns and this fraction of the median time.
    side_stream_ns: int = 20_000
    side_stream_fraction: float = 0.2
    # Event times must be at least this fraction of the wall-clock time per call, less slack
    # for timer resolution: honest calls flushed and isolated take longer than warm ones
    # run back to back, never less.
    wall_agreement: float = 0.7
    wall_slack_ns: int = 2_000


@dataclass(frozen=True)
class RowOperation:
    """What the bench needs from a lab whose first input and first output are row-aligned
    (row i of the output depends only on row i of the input, as in softmax or layer norm)."""

    make_set: Callable[[np.random.Generator], list[np.ndarray]]
    make_rows: Callable[[np.random.Generator, int], np.ndarray]
    # (rows of the first input as they were at the call, the set's other inputs (never
    # mutated), the indices of those rows) -> expected rows. The indices let a lab with
    # row-aligned side inputs (a residual) pick the matching rows of them.
    reference_rows: Callable[[np.ndarray, list[np.ndarray], np.ndarray], np.ndarray]
    compare: Callable[[np.ndarray | None, np.ndarray], Comparison]
    # Plain numbers passed after the arrays on every call (e.g. an epsilon), the same for
    # candidate and baseline.
    scalars: tuple[float | int, ...] = ()


class BenchRejected(Exception):
    """The candidate was caught doing something the measurement forbids; the message names
    it. `wrong` carries a failed output comparison, when that is what was caught."""

    def __init__(self, message: str, wrong: tuple[str, Comparison] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.wrong = wrong


@dataclass
class Side:
    """One contender's measurements."""

    name: str
    served: ServedFunction
    samples: list[int] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)
    calibration_gaps: list[int] = field(default_factory=list)
    wall_per_call_ns: float | None = None
    running: RunningStats = field(default_factory=RunningStats)
    setup: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchResult:
    candidate: Side
    baseline: Side
    rounds: int
    stop_reason: str
    elapsed_s: float
    method: str
    checks: dict[str, Any]

    @property
    def converged(self) -> bool:
        return self.stop_reason == "target_rel_sem"


class _Probe:
    """Which rows of which sample's output are checked, and what they should be."""

    def __init__(self, sample: int, set_index: int, rows: np.ndarray, inputs: np.ndarray) -> None:
        self.sample = sample
        self.set_index = set_index
        self.rows = rows
        self.inputs = inputs  # the input rows as they were when the sample ran


def measure_pair(
    *,
    candidate: ServedFunction,
    baseline: ServedFunction,
    operation: RowOperation,
    policy: BenchPolicy,
    rng: np.random.Generator,
    timeout_s: float,
    baseline_broken: Callable[[str], Exception],
) -> BenchResult:
    """Time candidate and baseline in alternating blocks until the policy says stop.

    Raises BenchRejected for the candidate's misdeeds, HarnessFailure when it crashes or
    hangs, and `baseline_broken(message)` for anything wrong on the trusted side.
    """
    sets = [operation.make_set(rng) for _ in range(policy.sets)]
    sides = [Side("candidate", candidate), Side("baseline", baseline)]
    runner = _Runner(policy, operation, rng, sets, timeout_s, baseline_broken, sides)
    for side in sides:
        runner.setup(side)
    started = time.monotonic()
    rounds = 0
    stop_reason = ""
    turn = 0
    warming = True
    while not stop_reason:
        # Warm-up lasts a number of blocks and a minimum time: a GPU under a heavy kernel
        # takes a while to settle its clocks and power, and samples taken before are noise.
        warming = warming and (
            turn < policy.warmup_blocks or time.monotonic() - started < policy.warmup_s
        )
        order = sides if turn % 2 == 0 else list(reversed(sides))
        for side in order:
            runner.block(side, record=not warming)
        turn += 1
        if warming:
            continue
        rounds += 1
        n = min(len(s.samples) for s in sides)
        if n >= policy.min_samples and all(
            s.running.rel_sem <= policy.target_rel_sem for s in sides
        ):
            stop_reason = "target_rel_sem"
        elif n >= policy.max_samples:
            stop_reason = "max_samples"
        elif time.monotonic() - started >= policy.time_cap_s:
            stop_reason = "time_cap"
    elapsed = time.monotonic() - started
    for side in sides:
        runner.wall(side)
    checks = runner.check()
    for side in sides:
        side.served.resume()
    return BenchResult(
        candidate=sides[0],
        baseline=sides[1],
        rounds=rounds,
        stop_reason=stop_reason,
        elapsed_s=elapsed,
        method=str(sides[0].setup.get("method", "")),
        checks=checks,
    )


class _Runner:
    def __init__(
        self,
        policy: BenchPolicy,
        operation: RowOperation,
        rng: np.random.Generator,
        sets: list[list[np.ndarray]],
        timeout_s: float,
        baseline_broken: Callable[[str], Exception],
        sides: list[Side],
    ) -> None:
        self.policy = policy
        self.operation = operation
        self.rng = rng
        # The trusted copy of each child's input sets, mutated in step with the child's own.
        self.sets = {side.name: [[a.copy() for a in arrays] for arrays in sets] for side in sides}
        self.rows_per_set = sets[0][0].shape[0]
        self.timeout_s = timeout_s
        self.baseline_broken = baseline_broken
        self.sides = sides
        self.next_set = 0

    # Every request goes through here, so that a baseline failure is never blamed on the
    # learner, and the other contender is stopped while one is measured.
    def request(
        self, side: Side, op: str, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()
    ) -> tuple[int, dict[str, Any], list[np.ndarray]]:
        for other in self.sides:
            if other is not side:
                other.served.pause()
        side.served.resume()
        try:
            return side.served.bench(op, header, arrays, timeout_s=self.timeout_s)
        except HarnessFailure as exc:
            if side.name == "baseline":
                raise self.baseline_broken(exc.message) from None
            raise

    def setup(self, side: Side) -> None:
        flat = [array for arrays in self.sets[side.name] for array in arrays]
        header: dict[str, Any] = {"sets": len(self.sets[side.name])}
        if self.operation.scalars:
            header["scalars"] = list(self.operation.scalars)
        if self.policy.flush_bytes is not None:
            header["flush_bytes"] = self.policy.flush_bytes
        _, side.setup, _ = self.request(side, "bench_setup", header, flat)
        _, reply, _ = self.request(
            side, "bench_calibrate", {"count": self.policy.calibration_calls}
        )
        side.calibration_gaps = [int(g) for g in reply.get("gaps_ns", [])]

    def block(self, side: Side, *, record: bool) -> None:
        plan, mutations, probes = [], [], []
        rows_per_set = self.rows_per_set
        sets = self.sets[side.name]
        for sample in range(self.policy.block):
            set_index = self.next_set % len(sets)
            self.next_set += 1
            first = sets[set_index][0]
            count = min(self.policy.mutate_rows, rows_per_set)
            mutated = np.sort(self.rng.choice(rows_per_set, size=count, replace=False))
            values = self.operation.make_rows(self.rng, count)
            first[mutated] = values
            extra = self.rng.choice(
                rows_per_set, size=min(self.policy.random_probe_rows, rows_per_set), replace=False
            )
            rows = np.unique(np.concatenate([mutated, extra]))
            probes.append(_Probe(sample, set_index, rows, first[rows].copy()))
            plan.append({"set": set_index, "rows": mutated.tolist()})
            mutations.append(values)
        _, reply, _ = self.request(side, "bench_block", {"plan": plan}, mutations)
        times = [int(t) for t in reply.get("times_ns", [])]
        gaps = [int(g) for g in reply.get("gaps_ns", [])]
        if len(times) != len(plan) or len(gaps) != len(plan):
            self.fail(side, "answered a timing request with the wrong number of samples")
        self.check_outputs(side, reply)
        self.check_probes(side, probes, plan)
        if record:
            for value in times:
                if value <= 0:
                    self.fail(side, f"reported a time of {value} ns, which no call can take")
                side.samples.append(value)
                side.running.add(value)
            side.gaps.extend(gaps)

    def check_outputs(self, side: Side, reply: dict[str, Any]) -> None:
        problems = [p for p in reply.get("problems", []) if p]
        if problems:
            self.fail(side, f"returned {problems[0]} instead of a tensor while being timed")
        if any(reply.get("aliases", [])):
            self.fail(
                side,
                "returned a tensor that shares memory with its input: the answer must be "
                "written to new memory, not over the input or as a view of it",
            )

    def check_probes(self, side: Side, probes: list[_Probe], plan: list[dict]) -> None:
        used = sorted({step["set"] for step in plan})
        rows_per_set = self.rows_per_set
        input_checks = [
            {
                "set": s,
                "rows": np.sort(
                    self.rng.choice(rows_per_set, size=min(4, rows_per_set), replace=False)
                ).tolist(),
            }
            for s in used
        ]
        _, _, arrays = self.request(
            side,
            "bench_probe",
            {
                "outputs": [{"sample": p.sample, "rows": p.rows.tolist()} for p in probes],
                "inputs": input_checks,
            },
        )
        if len(arrays) != len(probes) + len(input_checks):
            self.fail(side, "answered a check with the wrong number of arrays")
        # Inputs first: an edited input also makes later outputs wrong, and the edit is the
        # cause to name.
        for check, got in zip(input_checks, arrays[len(probes) :], strict=False):
            expected = self.sets[side.name][check["set"]][0][check["rows"]]
            if got.shape != expected.shape or not np.array_equal(got, expected, equal_nan=True):
                self.fail(
                    side,
                    "changed its input while being timed (the input rows read back differ "
                    "from what was sent): a function must leave its input as it found it",
                )
        for probe, got in zip(probes, arrays, strict=False):
            others = self.sets[side.name][probe.set_index][1:]
            expected = self.operation.reference_rows(probe.inputs, others, probe.rows)
            comparison = self.operation.compare(got, expected)
            if not comparison.ok:
                label = f"timed call, rows {probe.rows.tolist()}"
                if side.name == "baseline":
                    raise self.baseline_broken(f"the baseline was wrong on a {label}")
                raise BenchRejected(
                    f"{side.served.subject} returned wrong values while being timed "
                    f"(rows {probe.rows.tolist()}); it was right before, so it behaves "
                    "differently when timed, caches answers, or leaves part of its output "
                    "unwritten.",
                    wrong=(label, comparison),
                )

    def wall(self, side: Side) -> None:
        """Time `count` calls back to back through the pipe, from here, minus an empty request:
        an upper bound on the true time per call that the child cannot bend. The count comes
        from a short first block timed the same way, never from the times the child reported,
        which may be lies."""
        empty = min(self.request(side, "bench_wall", {"set": 0, "count": 0})[0] for _ in range(3))
        rough_count = 5
        rough = self.request(side, "bench_wall", {"set": 0, "count": rough_count})[0]
        per_call = max((rough - empty) / rough_count, 1.0)
        count = int(min(2000, max(5, math.ceil(self.policy.wall_target_s * 1e9 / per_call))))
        full = []
        for _ in range(self.policy.wall_repeats):
            full.append(self.request(side, "bench_wall", {"set": 0, "count": count})[0])
        side.wall_per_call_ns = max(0.0, (min(full) - empty) / count)

    def check(self) -> dict[str, Any]:
        policy = self.policy
        checks: dict[str, Any] = {}
        for side in self.sides:
            median = statistics.median(side.samples)
            gap = statistics.median(side.gaps) if side.gaps else 0
            calibration = statistics.median(side.calibration_gaps) if side.calibration_gaps else 0
            excess = gap - calibration
            checks[side.name] = {
                "median_ns": median,
                "gap_ns": gap,
                "calibration_gap_ns": calibration,
                "wall_per_call_ns": side.wall_per_call_ns,
            }
            if excess > max(policy.side_stream_ns, policy.side_stream_fraction * median):
                self.fail(
                    side,
                    f"left work running after each call returned (median {excess / 1e3:.0f} us "
                    "past the end of the call, on another stream or thread): the timed "
                    "region must contain all the work, so join side streams before returning",
                )
            wall = side.wall_per_call_ns or 0.0
            if median < policy.wall_agreement * wall - policy.wall_slack_ns:
                self.fail(
                    side,
                    f"was timed at {median / 1e3:.1f} us per call by its own process, but "
                    f"{wall / 1e3:.1f} us per call by the grader's clock outside it: the timers "
                    "were tampered with, or the work escaped the timed region",
                )
        return checks

    def fail(self, side: Side, what: str) -> None:
        if side.name == "baseline":
            raise self.baseline_broken(f"the baseline {what}")
        raise BenchRejected(f"{side.served.subject} {what}.")
