"""What every performance-graded lab puts in its report from a timing: the statistics, the
speedup with its interval, a plot of every sample, and the roofline. Lab-agnostic: a grader
passes samples, labels and its workload; the wording and the rules live here once."""

from __future__ import annotations

import base64
import contextlib
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.harness.bench import BenchRejected, BenchResult, measure_pair
from runner.harness.correctness import Tally
from runner.measure.node_peaks import node_peaks
from runner.measure.plot import timeline_svg
from runner.measure.roofline import RooflineResult, Workload, assess, roofline_svg
from runner.measure.stats import speedup, summarize
from runner.measure.telemetry import TelemetrySampler


def undecided(speedup: dict[str, Any], threshold: float | None) -> bool:
    """True when the speedup's 95% interval contains the threshold: this measurement cannot
    say which side of the bar the code is on. Graders measure once more, and report an
    interval that still straddles the bar as inconclusive rather than guess."""
    return threshold is not None and speedup["ci95_low"] < threshold < speedup["ci95_high"]


def svg_plot(name: str, svg: str) -> dict[str, str]:
    return {
        "name": name,
        "mime": "image/svg+xml",
        "data_base64": base64.b64encode(svg.encode()).decode(),
    }


def timing_metrics(
    *,
    candidate_ns: Sequence[int],
    baseline_ns: Sequence[int],
    labels: tuple[str, str],
    title: str,
) -> tuple[dict[str, Any], dict[str, str]]:
    """(metrics.timing without the method-specific keys, the timeline plot), in microseconds.
    The speedup is baseline median / candidate median with a bootstrap 95% interval."""
    us = 1e-3
    metrics = {
        "unit": "us",
        "candidate": summarize(candidate_ns).scaled(us).to_dict(),
        "baseline": summarize(baseline_ns).scaled(us).to_dict(),
        "speedup": speedup(baseline=baseline_ns, candidate=candidate_ns).to_dict(),
    }
    svg = timeline_svg(
        series={
            labels[0]: [v * us for v in candidate_ns],
            labels[1]: [v * us for v in baseline_ns],
        },
        unit="us",
        title=title,
    )
    return metrics, svg_plot("timing", svg)


@dataclass
class RooflineReport:
    metrics: dict[str, Any]
    plot: dict[str, str] | None = None
    candidate: RooflineResult | None = None
    baseline: RooflineResult | None = None

    def impossible(self, side: str) -> str | None:
        """The message when `side`'s median beat the floor and the floor is enforced."""
        result = self.candidate if side == "candidate" else self.baseline
        if result is None or not self.metrics.get("enforced") or not result.impossible:
            return None
        return result.message


def roofline_report(
    *,
    workload: Workload,
    candidate_ns: Sequence[int],
    baseline_ns: Sequence[int],
    device_class: str,
    dtype: str,
    threads: int,
    labels: tuple[str, str],
    title: str,
) -> RooflineReport:
    """Both medians on this node's measured roofline (runner.measure.node_peaks). On a GPU,
    whose L2 is flushed before every timed call, a median under the floor is impossible and
    the grader must reject it; on CPU the data stays in cache on purpose, so the floor is
    shown but not enforced."""
    gpu = device_class == "gpu"
    peaks, why = node_peaks("cuda" if gpu else "cpu", threads=threads)
    if peaks is None:
        return RooflineReport(metrics={"available": False, "reason": why})
    candidate = assess(workload, statistics.median(candidate_ns) / 1e9, peaks, dtype)
    baseline = assess(workload, statistics.median(baseline_ns) / 1e9, peaks, dtype)
    metrics = {
        "available": True,
        "enforced": gpu,
        "peaks": peaks.to_dict(),
        "workload": {"bytes_moved": workload.bytes_moved, "flops": workload.flops},
        "candidate": candidate.to_dict(),
        "baseline": baseline.to_dict(),
    }
    points = [
        (labels[0], workload.arithmetic_intensity, candidate.achieved_flops_per_s),
        (labels[1], workload.arithmetic_intensity, baseline.achieved_flops_per_s),
    ]
    svg = roofline_svg(peaks, points, title=title, dtypes=[dtype])
    return RooflineReport(metrics, svg_plot("roofline", svg), candidate, baseline)


def bench_on_device(
    run: Any, *, baseline: Any, operation: Any, rng: Any, tally: Tally, broken: type[Exception]
) -> BenchResult | None:
    """runner.harness.bench.measure_pair for a grader's run (its options, candidate, device
    class and GPU), with NVML telemetry sampled throughout on a GPU and a throttled run
    flagged in run.metrics. None, with the wrong rows added to `tally`, when an output
    produced while timed was wrong; other rejections propagate."""
    options = run.options
    gpu = run.device_class == "gpu"
    sampler: Any = TelemetrySampler(index=run.gpu_index) if gpu else contextlib.nullcontext()
    try:
        with sampler:
            result = measure_pair(
                candidate=run.candidate,
                baseline=baseline,
                operation=operation,
                policy=options.bench,
                rng=rng,
                timeout_s=options.call_timeout_s,
                baseline_broken=broken,
            )
    except BenchRejected as exc:
        if exc.wrong is None:
            raise
        tally.add(*exc.wrong)
        run.metrics["correctness"] = tally.to_dict(atol=options.atol, rtol=options.rtol)
        return None
    if gpu:
        run.metrics["telemetry"] = sampler.summary()
        if run.metrics["telemetry"].get("throttled"):
            run.metrics.setdefault("flags", []).append(
                f"GPU throttled during timing: {run.metrics['telemetry']['throttle_note']}"
            )
    return result


def bench_details(result: BenchResult, *, method: str) -> dict[str, Any]:
    """The keys metrics.timing gets from an in-process bench run; `method` follows the
    bench's own description of its clock."""
    return {
        "rounds": result.rounds,
        "stop_reason": result.stop_reason,
        "converged": result.converged,
        "elapsed_s": round(result.elapsed_s, 3),
        "method": f"{result.method}. {method}",
        "device": result.candidate.setup.get("device_name"),
        "flush_bytes": result.candidate.setup.get("flush_bytes"),
        "checks": {
            side: {
                k.removesuffix("_ns") + "_us": (
                    round(v / 1e3, 3) if isinstance(v, int | float) else v
                )
                for k, v in values.items()
            }
            for side, values in result.checks.items()
        },
    }
