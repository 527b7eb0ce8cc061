"""Grader for the `kernels` lab, part 1: a fused residual-add + RMSNorm (Triton on GPU nodes,
Triton's interpreter on CPU nodes).

Trust boundary, as for softmax: this module runs in the worker. The learner's function runs
only in a sandboxed child (runner.harness.serve) that never sees the seed; on GPU nodes the
naive baseline runs in a second, clean child that loads nothing but
`runner.graders.kernels_lab:naive_fused_add_rmsnorm`. Inputs come from the secret seed, the
float64 reference is computed here before the candidate sees an input, every comparison happens
here, and the on-device times are checked from here (runner.graders.kernels_timing).

Which criteria are measured where: `correct` and `finite` on every device class; `speed` and
`bandwidth` only on GPU nodes (lab.toml gives them no cpu threshold). On CPU no baseline child
is started and nothing is timed: a kernel run by Triton's interpreter says nothing about speed.
"""

from __future__ import annotations

import dataclasses
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
from runner.graders.kernels_lab import (
    BASELINE,
    CPU_CASES,
    DTYPE,
    GPU_CASES,
    REVIEW_SPEEDUP,
    Case,
    Options,
    make_inputs,
    naive_fused_add_rmsnorm,
    reference,
    triton_environment,
)
from runner.graders.kernels_timing import time_on_device
from runner.harness.client import ServedFunction
from runner.harness.correctness import Tally, compare_output
from runner.labspec import LabSpec
from runner.sandbox import ResourceLimits, SandboxPolicy

# The baseline's child imports it from kernels_lab (BASELINE); tests import it from here.
__all__ = ["grade", "naive_fused_add_rmsnorm", "reference"]

TIMED_METRICS = ("speedup_ci_low_vs_naive", "percent_of_copy_bandwidth")


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
    timed = any(_threshold(spec, m, device_class) is not None for m in TIMED_METRICS)
    children = GradingChildren(
        spec=spec,
        device_class=device_class,
        solution_path=solution_path,
        workdir=workdir,
        sandbox=sandbox,
        locate=locate,
        limits=grading_limits(limits, cpu_seconds=600, file_size_bytes=16 << 20),
        # Triton's cache lives in each child's own job folder, as the sandbox sees it.
        env_for=lambda jobdir: triton_environment(
            device="cuda" if device_class == "gpu" else "cpu",
            interpret_on_cpu=options.triton_interpret_on_cpu,
            home=sandbox.job_path(jobdir),
        ),
    )
    with children:
        candidate = children.learner()
        baseline = None
        if timed:
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
            timing = None
            if baseline is not None:
                # The baseline answers the same cases: a check on the grader itself.
                trusted(run.check_baseline, baseline, cases)
                if tally.mismatched == 0:
                    timing = run.measure_speed(baseline, timing_rng, tally)
            return run.finish(tally, timing)

        return children.result_of(steps, metrics=run.metrics, timeout_s=options.load_timeout_s)


def _threshold(spec: LabSpec, metric: str, device_class: str) -> float | None:
    for criterion in spec.criteria:
        if criterion.metric == metric:
            return criterion.threshold_for(device_class)
    return None


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
        self.spec = spec
        self.device_class = device_class
        self.options = options
        self.candidate = candidate
        self.gpu_index = gpu_index  # NVML's index of the GPU being timed, for telemetry
        self.metrics: dict[str, Any] = {}
        self.plots: list[dict[str, str]] = []
        self.repeated: set[str] = set()  # labels of cases whose shape came up before

    def compare(self, got: np.ndarray | None, expected: np.ndarray, returned: str | None = None):
        return compare_output(
            got=got,
            expected=expected,
            dtype=DTYPE,
            atol=self.options.atol,
            rtol=self.options.rtol,
            returned_type=returned,
        )

    def check_correctness(self, rng: np.random.Generator, cases: tuple[Case, ...]) -> Tally:
        tally = Tally()
        seen: set[tuple[int, int]] = set()
        for case in cases:
            x, residual, weight = make_inputs(rng, case)
            label = case.label
            if (case.rows, case.hidden) in seen:
                label += ", shape met again with fresh values"
                self.repeated.add(label)
            seen.add((case.rows, case.hidden))
            expected = reference(x, residual, weight, case.eps)  # before the candidate runs
            result = self.candidate.call(
                [x, residual, weight], scalars=[case.eps], timeout_s=self.options.call_timeout_s
            )
            single = result.arrays[0] if result.arrays and len(result.arrays) == 1 else None
            returned = result.returned_type or (
                f"{len(result.arrays)} tensors" if result.arrays else None
            )
            tally.add(label, self.compare(single, expected, returned))
        self.metrics["correctness"] = tally.to_dict(atol=self.options.atol, rtol=self.options.rtol)
        return tally

    def check_baseline(self, baseline: ServedFunction, cases: tuple[Case, ...]) -> None:
        rng = np.random.default_rng(0)
        for case in cases:
            x, residual, weight = make_inputs(rng, case)
            result = baseline.call(
                [x, residual, weight], scalars=[case.eps], timeout_s=self.options.call_timeout_s
            )
            got = result.arrays[0] if result.arrays else None
            if not self.compare(got, reference(x, residual, weight, case.eps)).ok:
                raise GraderBroken(f"the naive baseline is wrong on {case.label}")

    def measure_speed(
        self, baseline: ServedFunction, rng: np.random.Generator, tally: Tally
    ) -> dict[str, Any] | None:
        """Time candidate against baseline. The speed bar is on the interval's lower end, so
        when the median is above the bar but the interval reaches below it, measure once more
        for twice as long and keep the second measurement (the first is reported too)."""
        timing = time_on_device(self, baseline, rng, tally)
        threshold = _threshold(self.spec, "speedup_ci_low_vs_naive", self.device_class)
        if timing is None or threshold is None:
            return timing
        speedup = timing["speedup"]
        if not speedup["ci95_low"] < threshold < speedup["value"]:
            return timing
        self.options = self.options.longer()
        self.plots = [p for p in self.plots if p["name"] not in ("timing", "roofline")]
        second = time_on_device(self, baseline, rng, tally)
        if second is not None:
            second["first_measurement"] = speedup
        return second

    def finish(self, tally: Tally, timing: dict[str, Any] | None) -> GradeResult:
        roofline = self.metrics.get("roofline", {})
        measured: dict[str, float | None] = {
            "mismatched_elements": float(tally.mismatched),
            "non_finite_outputs": float(tally.non_finite),
            "speedup_ci_low_vs_naive": timing["speedup"]["ci95_low"] if timing else None,
            "percent_of_copy_bandwidth": roofline.get("percent_of_copy_bandwidth")
            if timing
            else None,
        }
        flags = self.metrics.get("flags", [])
        if timing and timing["speedup"]["value"] > REVIEW_SPEEDUP:
            flags.append(f"speedup over {REVIEW_SPEEDUP:g}x: flagged for instructor review")
        self.metrics["flags"] = flags
        self.metrics["measured"] = measured
        not_timed = "outputs were wrong, so nothing was timed."
        criteria = evaluate_criteria(
            spec=self.spec,
            device_class=self.device_class,
            measured=measured,
            notes={metric: not_timed for metric in TIMED_METRICS},
        )
        skipped = [c.name for c in criteria if not c.evaluated]
        criteria = [
            c
            if c.evaluated
            else dataclasses.replace(
                c,
                explanation=(
                    f"Not evaluated on {self.device_class} workers: measured on GPU nodes "
                    "only. Here your kernel ran in Triton's interpreter (numpy, one program "
                    f"at a time), which checks correctness but says nothing about speed. "
                    f"{c.explanation}"
                ),
            )
            for c in criteria
        ]
        self.metrics["evaluated_where"] = {
            c.name: [d for d in self.spec.device_classes if c.threshold_for(d) is not None]
            for c in self.spec.criteria
        }
        headline = ""
        if timing:
            s = timing["speedup"]
            headline = (
                f"Speedup vs naive PyTorch: {s['value']:.2f}x "
                f"(95% CI {s['ci95_low']:.2f}-{s['ci95_high']:.2f})"
            )
            if (percent := measured["percent_of_copy_bandwidth"]) is not None:
                headline += f", {percent:.0f}% of the measured copy bandwidth"
            headline += "."
        status, message = verdict(criteria, headline=headline)
        if tally.failed_cases and set(tally.failed_cases) <= self.repeated:
            message += (
                " Every wrong answer came on a shape met a second time with different values: "
                "an answer cached by shape or by input pointer comes back stale."
            )
        if skipped and status in ("passed", "failed"):
            message += (
                f" Not evaluated on {self.device_class}: {', '.join(skipped)} (GPU nodes only)."
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
