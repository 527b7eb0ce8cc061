"""On-device timing for the `kernels` grader (GPU nodes): the learner's fused kernel against
the naive PyTorch composition, with the in-process bench (runner.harness.bench), and both
medians placed on this node's measured copy roofline.

The bench mutates rows of the first input (x) before every call; the residual and the weight
stay as sent, and the float64 reference of a probed row takes the residual's matching row
(RowOperation.reference_rows gets the row indices for that). docs/runner.md, "On-device
timing", explains the checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from runner.graders.base import GraderBroken
from runner.graders.kernels_lab import DTYPE, make_rows, reference
from runner.graders.reporting import (
    bench_details,
    bench_on_device,
    roofline_report,
    timing_metrics,
)
from runner.harness.bench import BenchRejected, RowOperation
from runner.harness.client import ServedFunction
from runner.harness.correctness import Tally, compare_output
from runner.measure.roofline import Workload

if TYPE_CHECKING:
    from runner.graders.kernels import _Run


def workload(rows: int, hidden: int) -> Workload:
    """The least any correct kernel moves and computes: read x and the residual, write the
    output (the weight is read once and stays in cache), 4 bytes each; per element an add, a
    square, a sum term and two multiplies."""
    return Workload(bytes_moved=(3 * rows * hidden + hidden) * 4, flops=5 * rows * hidden)


def operation(rows: int, hidden: int, eps: float, options: Any) -> RowOperation:
    def make_set(r: np.random.Generator) -> list[np.ndarray]:
        return [
            make_rows(r, rows, hidden, "normal"),
            make_rows(r, rows, hidden, "normal"),
            r.uniform(-2.0, 2.0, hidden).astype(np.float32),
        ]

    def reference_rows(
        first_rows: np.ndarray, others: list[np.ndarray], indices: np.ndarray
    ) -> np.ndarray:
        residual, weight = others
        return reference(first_rows, residual[indices], weight, eps)

    def compare(got: np.ndarray | None, expected: np.ndarray) -> Any:
        return compare_output(
            got=got, expected=expected, dtype=DTYPE, atol=options.atol, rtol=options.rtol
        )

    return RowOperation(
        make_set=make_set,
        make_rows=lambda r, n: make_rows(r, n, hidden, "normal"),
        reference_rows=reference_rows,
        compare=compare,
        scalars=(eps,),
    )


def time_on_device(
    run: _Run, baseline: ServedFunction, rng: np.random.Generator, tally: Tally
) -> dict[str, Any] | None:
    """Fill run.metrics' timing, roofline and telemetry; None (with the wrong rows in `tally`)
    when an output produced while timed was wrong."""
    options = run.options
    rows, hidden = options.timing_rows, options.timing_hidden
    result = bench_on_device(
        run,
        baseline=baseline,
        operation=operation(rows, hidden, options.timing_eps, options),
        rng=rng,
        tally=tally,
        broken=GraderBroken,
    )
    if result is None:
        return None
    _roofline(run, result)
    metrics, plot = timing_metrics(
        candidate_ns=result.candidate.samples,
        baseline_ns=result.baseline.samples,
        labels=(f"your {run.spec.solution}", "naive baseline"),
        title=f"Time per call, {rows}x{hidden} float32",
    )
    run.plots.append(plot)
    timing = {
        "shape": [rows, hidden],
        "dtype": DTYPE,
        "eps": options.timing_eps,
        **metrics,
        **bench_details(
            result,
            method="Candidate and baseline in separate processes, in alternating blocks of "
            "calls; fresh rows of x before every call; outputs checked on random rows; event "
            "times checked against the grader's own clock over back-to-back calls.",
        ),
    }
    run.metrics["timing"] = timing
    return timing


def _roofline(run: _Run, result: Any) -> None:
    rows, hidden = run.options.timing_rows, run.options.timing_hidden
    report = roofline_report(
        workload=workload(rows, hidden),
        candidate_ns=result.candidate.samples,
        baseline_ns=result.baseline.samples,
        device_class=run.device_class,
        dtype="fp32",
        threads=0,
        labels=(f"your {run.spec.solution}", "naive"),
        title=f"Roofline, {rows}x{hidden} float32",
    )
    metrics = report.metrics
    if report.candidate is not None and report.baseline is not None:
        # Memory-bound: the share of the node's measured copy bandwidth each side reached.
        for side, assessed in (("candidate", report.candidate), ("baseline", report.baseline)):
            metrics[side]["percent_of_copy_bandwidth"] = (
                assessed.memory_floor_s / assessed.seconds * 100
            )
        metrics["percent_of_copy_bandwidth"] = metrics["candidate"]["percent_of_copy_bandwidth"]
    run.metrics["roofline"] = metrics
    if report.plot:
        run.plots.append(report.plot)
    if message := report.impossible("baseline"):
        raise GraderBroken(f"the baseline beat the roofline: {message}")
    if message := report.impossible("candidate"):
        raise BenchRejected(message)
