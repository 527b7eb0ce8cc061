"""Timing for the `softmax` grader, two ways (lab.toml `[options.timing.<device>] method`):
through the pipe, timed by the worker (`round_trip`, the cpu default), or on the device by
each child and checked by the worker (`in_process`, the gpu default; runner.harness.bench).
Both fill `run.metrics["timing"]` and the report's plots; docs/runner.md explains the methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from runner.graders.base import GraderBroken, trusted
from runner.graders.reporting import (
    bench_details,
    bench_on_device,
    roofline_report,
    timing_metrics,
)
from runner.graders.softmax_lab import (
    DTYPE,
    WrongWhileTimed,
    reference,
    timing_cpus,
)
from runner.harness.bench import BenchRejected, RowOperation
from runner.harness.client import ServedFunction
from runner.harness.correctness import Tally, compare_output
from runner.measure.roofline import Workload
from runner.measure.timing import Contender, time_interleaved

if TYPE_CHECKING:
    from runner.graders.softmax import _Run


def time_round_trip(
    run: _Run, baseline: ServedFunction, rng: np.random.Generator, tally: Tally
) -> dict[str, Any] | None:
    """Each call timed as its round trip through the pipe, by the worker's clock; None (with
    the wrong rows in `tally`) when an output produced while timed was wrong."""
    rows, cols = run.options.timing_rows, run.options.timing_cols
    timeout = run.options.call_timeout_s
    candidate = run.candidate

    def run_candidate(x: np.ndarray) -> tuple[int, Any]:
        return candidate.timed_call([x], timeout_s=timeout)

    def run_baseline(x: np.ndarray) -> tuple[int, Any]:
        return trusted(baseline.timed_call, [x], timeout_s=timeout)

    def isolate(active: ServedFunction, other: ServedFunction) -> Callable[[], None]:
        def prepare() -> None:
            other.pause()
            active.resume()

        return prepare

    def check(name: str, x: np.ndarray, result: Any) -> None:
        # Re-check outputs produced while being timed, on random rows: a cheat that is only
        # right when it is not timed (or only fast when it is wrong) fails here.
        probe = np.sort(rng.choice(rows, size=min(4, rows), replace=False))
        got = result.arrays[0][probe] if result.arrays and len(result.arrays) == 1 else None
        comparison = compare_output(
            got=got,
            expected=reference(x[probe]),
            dtype=DTYPE,
            atol=run.options.atol,
            rtol=run.options.rtol,
            returned_type=result.returned_type,
        )
        if name == "baseline" and not comparison.ok:
            raise GraderBroken("the naive baseline returned a wrong answer")
        if not comparison.ok:
            tally.add(f"timed call, rows {probe.tolist()} of {rows}x{cols}", comparison)
            raise WrongWhileTimed()

    contenders = [
        Contender("candidate", run_candidate, isolate(candidate, baseline)),
        Contender("baseline", run_baseline, isolate(baseline, candidate)),
    ]
    try:
        result = time_interleaved(
            contenders=contenders,
            make_input=lambda _: rng.standard_normal((rows, cols), dtype=np.float32) * 3,
            policy=run.options.timing,
            check=check,
        )
    except WrongWhileTimed:
        run.metrics["correctness"] = tally.to_dict(atol=run.options.atol, rtol=run.options.rtol)
        return None
    finally:
        candidate.resume()
        baseline.resume()
    return _timing_metrics(run, result)


def time_on_device(
    run: _Run, baseline: ServedFunction, rng: np.random.Generator, tally: Tally
) -> dict[str, Any] | None:
    """Each child times its own calls (CUDA events on a GPU); runner.harness.bench checks
    them against fresh inputs, probes and this process's clock."""
    rows, cols = run.options.timing_rows, run.options.timing_cols
    options = run.options

    def compare(got: np.ndarray | None, expected: np.ndarray) -> Any:
        return compare_output(
            got=got, expected=expected, dtype=DTYPE, atol=options.atol, rtol=options.rtol
        )

    operation = RowOperation(
        make_set=lambda r: [r.standard_normal((rows, cols), dtype=np.float32) * 3],
        make_rows=lambda r, n: r.standard_normal((n, cols), dtype=np.float32) * 3,
        reference_rows=lambda rows, _others, _indices: reference(rows),
        compare=compare,
    )
    result = bench_on_device(
        run, baseline=baseline, operation=operation, rng=rng, tally=tally, broken=GraderBroken
    )
    if result is None:
        return None
    _roofline(run, result)
    timing = _timing_metrics(
        run, result, samples=(result.candidate.samples, result.baseline.samples)
    )
    timing.update(
        bench_details(
            result,
            method="Candidate and baseline in separate processes, in alternating blocks of "
            "calls; fresh rows before every call; outputs checked on random rows; event "
            "times checked against the grader's own clock over back-to-back calls.",
        )
    )
    return timing


def _roofline(run: _Run, result: Any) -> None:
    rows, cols = run.options.timing_rows, run.options.timing_cols
    report = roofline_report(
        # One read and one write of every element; ~5 fp32 operations per element (max,
        # subtract, exp, sum, divide), bounded by the fp32 peak.
        workload=Workload(bytes_moved=2 * rows * cols * 4, flops=5 * rows * cols),
        candidate_ns=result.candidate.samples,
        baseline_ns=result.baseline.samples,
        device_class=run.device_class,
        dtype="fp32",
        threads=run.options.threads,
        labels=(f"your {run.spec.solution}", "naive"),
        title=f"Roofline, {rows}x{cols} float32",
    )
    run.metrics["roofline"] = report.metrics
    if report.plot:
        run.plots.append(report.plot)
    if message := report.impossible("baseline"):
        raise GraderBroken(f"the baseline beat the roofline: {message}")
    if message := report.impossible("candidate"):
        raise BenchRejected(message)


def _timing_metrics(
    run: _Run, result: Any, samples: tuple[list[int], list[int]] | None = None
) -> dict[str, Any]:
    rows, cols = run.options.timing_rows, run.options.timing_cols
    cand, base = samples or (result.samples["candidate"], result.samples["baseline"])
    metrics, plot = timing_metrics(
        candidate_ns=cand,
        baseline_ns=base,
        labels=(f"your {run.spec.solution}", "naive baseline"),
        title=f"Time per call, {rows}x{cols} float32",
    )
    timing = {
        "shape": [rows, cols],
        "dtype": DTYPE,
        # torch threads in each timed child (0: torch's default), and the CPUs both are
        # pinned to (None: too few CPUs to spare, not pinned)
        "threads": run.options.threads,
        "cpus": sorted(cpus) if (cpus := timing_cpus(run.options.threads)) else None,
        **metrics,
        "rounds": result.rounds,
        "stop_reason": result.stop_reason,
        "converged": result.converged,
        "elapsed_s": round(result.elapsed_s, 3),
        "method": (
            "round trip of each call through the harness pipe, timed in the trusted worker "
            "with perf_counter_ns; candidate and baseline interleaved on the same fresh "
            "inputs; the idle side paused. IPC is paid by both sides, which pulls the "
            "speedup toward 1 (conservative)."
        ),
    }
    run.metrics["timing"] = timing
    run.plots.append(plot)
    return timing
