"""Grader for the `softmax` lab: a numerically stable row softmax in float32.

Trust boundary: this module runs in the worker. The learner's function runs only in a
sandboxed child (runner.harness.serve) that never sees the seed; the naive baseline runs in a
second, clean child that loads nothing but `naive_softmax` (runner.graders.softmax_lab).
Inputs come from the secret seed, the float64 reference is computed here, every comparison
happens here, and every clock that decides the grade is read here or checked from here
(runner.graders.softmax_timing).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runner.graders.base import (
    GraderBroken,
    GradeResult,
    evaluate_criteria,
    trusted,
    verdict,
)
from runner.graders.children import GradingChildren, grading_limits
from runner.graders.reporting import undecided
from runner.graders.softmax_lab import (
    BASELINE,
    CPU_CASES,
    DTYPE,
    GPU_CASES,
    MALLOC_ENV,
    REVIEW_SPEEDUP,
    Options,
    make_input,
    naive_softmax,
    reference,
    timing_cpus,
)
from runner.graders.softmax_timing import time_on_device, time_round_trip
from runner.harness.client import ServedFunction
from runner.harness.correctness import Tally, compare_output
from runner.labspec import LabSpec
from runner.sandbox import ResourceLimits, SandboxPolicy

# The naive baseline's child imports it from here (BASELINE); the tests import reference.
__all__ = ["grade", "naive_softmax", "reference"]


def grade(
    *,
    spec: LabSpec,
    solution_path: Path,
    seed: str,
    device_class: str,
    workdir: Path,
    sandbox: SandboxPolicy,
    locate: Callable[[int], tuple[int, int] | None] | None = None,
    limits: ResourceLimits | None = None,
) -> GradeResult:
    options = Options.from_spec(spec, device_class)
    correctness_rng, timing_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed, 16)).spawn(2)
    )
    cases = GPU_CASES if device_class == "gpu" else CPU_CASES
    children = GradingChildren(
        spec=spec,
        device_class=device_class,
        solution_path=solution_path,
        workdir=workdir,
        sandbox=sandbox,
        locate=locate,
        limits=grading_limits(
            limits, cpu_seconds=600, file_size_bytes=16 << 20, cpus=timing_cpus(options.threads)
        ),
        threads=options.threads,
        env=MALLOC_ENV,
    )
    with children:
        candidate = children.learner()
        baseline = children.grader_side("baseline", BASELINE, label="the naive baseline")
        run = _Run(
            spec=spec,
            device_class=device_class,
            options=options,
            candidate=candidate,
            gpu_index=children.gpu_index,
        )

        def steps() -> GradeResult:
            tally = run.check_correctness(correctness_rng, cases)
            # The baseline answers the same cases: a check on the grader itself, and it gives
            # both processes the same history before they are timed.
            trusted(run.check_baseline, baseline, cases)
            timing = None
            if tally.mismatched == 0:
                timing = run.measure_speed(baseline, timing_rng, tally)
            return run.finish(tally, timing)

        return children.result_of(steps, metrics=run.metrics, timeout_s=options.load_timeout_s)


class _Run:
    """The state of one grading run, so each step reads as one short method."""

    def __init__(
        self,
        *,
        spec: LabSpec,
        device_class: str,
        options: Options,
        candidate: ServedFunction,
        gpu_index: int = 0,
    ) -> None:
        self.gpu_index = gpu_index  # NVML's index of the GPU being timed, for telemetry
        self.spec = spec
        self.device_class = device_class
        self.options = options
        self.candidate = candidate
        self.metrics: dict[str, Any] = {}
        self.plots: list[dict[str, str]] = []

    def check_correctness(self, rng: np.random.Generator, cases: tuple) -> Tally:
        tally = Tally()
        for rows, cols, kind in cases:
            x = make_input(rng, rows, cols, kind)
            expected = reference(x)  # computed before the candidate ever sees x
            result = self.candidate.call([x], timeout_s=self.options.call_timeout_s)
            tally.add(
                f"{kind} {rows}x{cols}",
                compare_output(
                    got=result.arrays[0] if result.arrays and len(result.arrays) == 1 else None,
                    expected=expected,
                    dtype=DTYPE,
                    atol=self.options.atol,
                    rtol=self.options.rtol,
                    returned_type=result.returned_type
                    or (f"{len(result.arrays)} tensors" if result.arrays else None),
                ),
            )
        self.metrics["correctness"] = tally.to_dict(atol=self.options.atol, rtol=self.options.rtol)
        return tally

    def check_baseline(self, baseline: ServedFunction, cases: tuple) -> None:
        rng = np.random.default_rng(0)
        for rows, cols, kind in cases:
            x = make_input(rng, rows, cols, kind)
            result = baseline.call([x], timeout_s=self.options.call_timeout_s)
            comparison = compare_output(
                got=result.arrays[0] if result.arrays else None,
                expected=reference(x),
                dtype=DTYPE,
                atol=self.options.atol,
                rtol=self.options.rtol,
            )
            if not comparison.ok:
                raise GraderBroken(f"the naive baseline is wrong on {kind} {rows}x{cols}")

    def measure_speed(
        self, baseline: ServedFunction, rng: np.random.Generator, tally: Tally
    ) -> dict[str, Any] | None:
        """Time candidate against baseline; when the speedup's interval straddles the lab's
        threshold, once more for twice as long; if it still does, mark it inconclusive."""
        measure = time_on_device if self.options.method == "in_process" else time_round_trip
        timing = measure(self, baseline, rng, tally)
        threshold = self.spec_threshold("speedup_vs_naive")
        if timing is None or not undecided(timing["speedup"], threshold):
            return timing
        first = timing["speedup"]
        self.options = self.options.longer()
        self.plots = [p for p in self.plots if p["name"] not in ("timing", "roofline")]
        timing = measure(self, baseline, rng, tally)
        if timing is not None:
            timing["first_measurement"] = first
            timing["inconclusive"] = undecided(timing["speedup"], threshold)
        return timing

    def spec_threshold(self, metric: str) -> float | None:
        for criterion in self.spec.criteria:
            if criterion.metric == metric:
                return criterion.threshold_for(self.device_class)
        return None

    def finish(self, tally: Tally, timing: dict[str, Any] | None) -> GradeResult:
        measured: dict[str, float | None] = {
            "mismatched_elements": float(tally.mismatched),
            "non_finite_outputs": float(tally.non_finite),
            "speedup_vs_naive": timing["speedup"]["value"] if timing else None,
        }
        flags = self.metrics.get("flags", [])
        if timing and timing["speedup"]["value"] > REVIEW_SPEEDUP:
            flags.append(f"speedup over {REVIEW_SPEEDUP:g}x: flagged for instructor review")
        self.metrics["flags"] = flags
        self.metrics["measured"] = measured
        criteria = evaluate_criteria(
            spec=self.spec,
            device_class=self.device_class,
            measured=measured,
            notes={"speedup_vs_naive": "outputs were wrong, so speed was not measured."},
        )
        headline = ""
        if timing:
            s = timing["speedup"]
            headline = (
                f"Speedup vs naive PyTorch: {s['value']:.2f}x "
                f"(95% CI {s['ci95_low']:.2f}-{s['ci95_high']:.2f})."
            )
        status, message = verdict(criteria, headline=headline)
        if timing and timing.get("inconclusive") and tally.mismatched == 0:
            s, threshold = timing["speedup"], self.spec_threshold("speedup_vs_naive")
            status = "error"
            message = (
                f"The speed measurement could not decide: your speedup is {s['value']:.2f}x, "
                f"but its 95% interval ({s['ci95_low']:.2f}-{s['ci95_high']:.2f}) still "
                f"contains the bar of {threshold:g}x after two measurements, so the machine "
                "was too noisy to say. Your answers were correct; resubmit to measure again."
            )
        return GradeResult(
            status=status,
            message=message,
            criteria=criteria,
            metrics=self.metrics,
            mismatches=tally.mismatches,
            plots=self.plots,
            log_tail=self.candidate.log_tail(),
        )
