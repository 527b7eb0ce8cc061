"""The highest request rate at which a server still meets an SLO: run the load at `low`
and `high`, then bisect between the last rate that met the SLO and the first that did not.

    def run_at(rate):
        return run_load_sync(url, requests, model="tiny", rate=rate).summary(slos={"ttft": 200})

    found = find_max_rate(run_at, {"p99_ttft_ms": 500, "goodput_fraction": 0.9},
                          low=1, high=64, steps=5)
    found.best_rate, found.points      # every rate tried, with its summary and verdict

An SLO is a mapping from a summary field to a bound. Fields ending in `_ms` (p99_ttft_ms,
mean_tpot_ms, ...) and `failed_fraction` are upper bounds; `goodput_fraction` (requests
that met the goodput SLOs / all requests), `completed_fraction` and the throughputs are
lower bounds. Unless the SLO names `failed_fraction`, a rate at which any request failed
does not meet it: failures are not in the latencies, so they must count somewhere.

The search assumes latency grows with the rate (so there is one boundary). Bisection is
geometric (midpoint sqrt(low * high)) because rates span orders of magnitude; `steps` runs
narrow the bracket by a factor of 2**steps in log-space.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

LOWER_BOUNDS = (
    "goodput_fraction",
    "completed_fraction",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
)


@dataclass
class SweepPoint:
    rate: float
    summary: dict[str, Any]
    met: bool
    misses: list[str] = field(default_factory=list)  # which bounds it missed, in words


@dataclass
class SweepResult:
    slo: dict[str, float]
    points: list[SweepPoint]  # sorted by rate

    @property
    def best_rate(self) -> float | None:
        """The highest rate tried that met the SLO (None: not even `low`)."""
        met = [p.rate for p in self.points if p.met]
        return max(met) if met else None

    def to_json(self) -> dict[str, Any]:
        return {
            "slo": self.slo,
            "best_rate": self.best_rate,
            "points": [
                {"rate": p.rate, "met": p.met, "misses": p.misses, "summary": p.summary}
                for p in self.points
            ],
        }


def parse_slo(pairs: list[str] | str) -> dict[str, float]:
    """["p99_ttft_ms:500", "goodput_fraction:0.9"] -> {"p99_ttft_ms": 500.0, ...}."""
    if isinstance(pairs, str):
        pairs = pairs.split()
    slo = {}
    for pair in pairs:
        name, colon, value = pair.partition(":")
        try:
            slo[name.strip()] = float(value)
        except ValueError:
            raise ValueError(
                f"SLO {pair!r}: write FIELD:BOUND, e.g. p99_ttft_ms:500 or goodput_fraction:0.9"
            ) from None
        if not colon or not name.strip():
            raise ValueError(f"SLO {pair!r}: write FIELD:BOUND")
    return slo


def derived(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary with the fractions an SLO may name."""
    values = dict(summary)
    total = summary.get("completed", 0) + summary.get("failed", 0)
    if total:
        values["completed_fraction"] = summary.get("completed", 0) / total
        values["failed_fraction"] = summary.get("failed", 0) / total
        if summary.get("request_goodput") is not None and summary.get("duration"):
            values["goodput_fraction"] = summary["request_goodput"] * summary["duration"] / total
    return values


def check(summary: Mapping[str, Any], slo: Mapping[str, float]) -> list[str]:
    """The bounds this summary misses, in words (empty: it meets the SLO)."""
    values = derived(summary)
    bounds = dict(slo)
    if "failed_fraction" in values:
        bounds = {"failed_fraction": 0.0, **slo}
    misses = []
    for name, bound in bounds.items():
        value = values.get(name)
        lower = name in LOWER_BOUNDS
        if value is None or (isinstance(value, float) and math.isnan(value)):
            misses.append(f"{name} was not measured (no completed request, or no goodput SLO)")
        elif lower and value < bound:
            misses.append(f"{name} {value:.4g} < {bound:g}")
        elif not lower and value > bound:
            misses.append(f"{name} {value:.4g} > {bound:g}")
    return misses


def find_max_rate(
    run_at_rate: Callable[[float], Mapping[str, Any]],
    slo: Mapping[str, float],
    *,
    low: float,
    high: float,
    steps: int = 5,
) -> SweepResult:
    """Try `low`, then `high`, then up to `steps` rates between the highest rate that met
    the SLO and the lowest that did not. `run_at_rate(rate)` runs the load and returns its
    summary (LoadResult.summary). Stops early when `low` already misses or `high` meets."""
    if not 0 < low < high or math.isinf(high):
        raise ValueError(f"need 0 < low < high < inf, not low={low}, high={high}")
    if steps < 0:
        raise ValueError("steps must not be negative")
    if not slo:
        raise ValueError("give at least one SLO bound, e.g. {'p99_ttft_ms': 500}")
    points: list[SweepPoint] = []

    def attempt(rate: float) -> bool:
        summary = dict(run_at_rate(rate))
        misses = check(summary, slo)
        points.append(SweepPoint(rate=rate, summary=summary, met=not misses, misses=misses))
        return not misses

    if attempt(low) and not attempt(high):
        good, bad = low, high
        for _ in range(steps):
            middle = math.sqrt(good * bad)
            if attempt(middle):
                good = middle
            else:
                bad = middle
    return SweepResult(slo=dict(slo), points=sorted(points, key=lambda p: p.rate))
