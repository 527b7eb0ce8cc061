"""Workloads and the traffic drawn from them: arrival times (Poisson, gamma-bursty, piecewise
rates for bursts and a daily curve) and prompt / output lengths, all vectorised with numpy.

A workload is plain data (what a learner's plan function receives) with a typed twin here.
Traffic is drawn from a numpy Generator, so one seed gives the same requests to every plan:
two plans are compared on identical traffic (common random numbers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.cost.shapes import ModelShape

HOURS = 24


class WorkloadError(ValueError):
    """A workload description that cannot be used; the message names the field."""


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WorkloadError(f"{what} must be a number")
    if not math.isfinite(value) or value <= 0:
        raise WorkloadError(f"{what} must be positive")
    return float(value)


@dataclass(frozen=True)
class LengthDistribution:
    """Token counts, lognormal with this mean (before clipping) and log-space sigma, rounded
    and clipped to 1..max. Real prompt and output lengths are right-skewed like this."""

    mean: float
    sigma: float
    max: int

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        mu = math.log(self.mean) - self.sigma**2 / 2  # so that E[exp(N(mu, sigma))] = mean
        values = np.rint(rng.lognormal(mu, self.sigma, count))
        return np.clip(values, 1, self.max).astype(np.int64)

    def to_plain(self) -> dict[str, Any]:
        return {
            "distribution": "lognormal",
            "mean": self.mean,
            "sigma": self.sigma,
            "max": self.max,
        }

    @classmethod
    def from_plain(cls, data: Any, what: str) -> LengthDistribution:
        if not isinstance(data, Mapping):
            raise WorkloadError(f"{what} must be a table")
        if data.get("distribution", "lognormal") != "lognormal":
            raise WorkloadError(f"{what}.distribution must be 'lognormal'")
        sigma = data.get("sigma")
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not 0 <= sigma < 3:
            raise WorkloadError(f"{what}.sigma must be a number in [0, 3)")
        return cls(
            mean=_positive(data.get("mean"), f"{what}.mean"),
            sigma=float(sigma),
            max=int(_positive(data.get("max"), f"{what}.max")),
        )


@dataclass(frozen=True)
class Slo:
    ttft_p99_s: float  # 99th percentile of time to first token
    tpot_p99_s: float  # 99th percentile of time per output token, (E2EL - TTFT) / (n - 1)


@dataclass(frozen=True)
class Burst:
    """Traffic at `multiplier` x peak for `duration_s`; requests arriving during the burst and
    the recovery after it must keep their 99th-percentile TTFT under `ttft_p99_s`."""

    multiplier: float
    duration_s: float
    ttft_p99_s: float


@dataclass(frozen=True)
class Workload:
    name: str
    model: ModelShape
    peak_rps: float
    daily_curve: tuple[float, ...]  # 24 hourly fractions of the peak, the largest 1.0
    prompt_tokens: LengthDistribution
    output_tokens: LengthDistribution
    slo: Slo
    burst: Burst
    precisions: tuple[str, ...]  # the precisions whose quality this workload accepts
    routing: tuple[str, ...]  # the routing policies the fleet may use

    def rate_at_hour(self, hour: int) -> float:
        return self.peak_rps * self.daily_curve[hour]

    @property
    def max_tokens_per_request(self) -> int:
        return self.prompt_tokens.max + self.output_tokens.max

    def to_plain(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model.to_plain(),
            "peak_rps": self.peak_rps,
            "daily_curve": list(self.daily_curve),
            "prompt_tokens": self.prompt_tokens.to_plain(),
            "output_tokens": self.output_tokens.to_plain(),
            "slo": {"ttft_p99_s": self.slo.ttft_p99_s, "tpot_p99_s": self.slo.tpot_p99_s},
            "burst": {
                "multiplier": self.burst.multiplier,
                "duration_s": self.burst.duration_s,
                "ttft_p99_s": self.burst.ttft_p99_s,
            },
            "precisions": list(self.precisions),
            "routing": list(self.routing),
        }

    @classmethod
    def from_plain(cls, data: Any) -> Workload:
        if not isinstance(data, Mapping):
            raise WorkloadError("a workload must be a table")
        curve = data.get("daily_curve")
        if (
            not isinstance(curve, list | tuple)
            or len(curve) != HOURS
            or not all(isinstance(v, int | float) and 0 < v <= 1 for v in curve)
            or max(curve) != 1
        ):
            raise WorkloadError("daily_curve must be 24 fractions of the peak in (0, 1], max 1")
        slo, burst = data.get("slo"), data.get("burst")
        if not isinstance(slo, Mapping) or not isinstance(burst, Mapping):
            raise WorkloadError("slo and burst must be tables")
        multiplier = _positive(burst.get("multiplier"), "burst.multiplier")
        if multiplier < 1:
            raise WorkloadError("burst.multiplier must be at least 1")
        return cls(
            name=str(data.get("name", "workload")),
            model=ModelShape.from_plain(data.get("model")),
            peak_rps=_positive(data.get("peak_rps"), "peak_rps"),
            daily_curve=tuple(float(v) for v in curve),
            prompt_tokens=LengthDistribution.from_plain(data.get("prompt_tokens"), "prompt_tokens"),
            output_tokens=LengthDistribution.from_plain(data.get("output_tokens"), "output_tokens"),
            slo=Slo(
                ttft_p99_s=_positive(slo.get("ttft_p99_s"), "slo.ttft_p99_s"),
                tpot_p99_s=_positive(slo.get("tpot_p99_s"), "slo.tpot_p99_s"),
            ),
            burst=Burst(
                multiplier=multiplier,
                duration_s=_positive(burst.get("duration_s"), "burst.duration_s"),
                ttft_p99_s=_positive(burst.get("ttft_p99_s"), "burst.ttft_p99_s"),
            ),
            precisions=tuple(str(p) for p in data.get("precisions", ("bf16",))),
            routing=tuple(str(r) for r in data.get("routing", ("round_robin", "least_loaded"))),
        )


def arrival_times(
    rng: np.random.Generator,
    segments: Sequence[tuple[float, float]],
    *,
    burstiness: float = 1.0,
) -> np.ndarray:
    """Sorted arrival times (seconds from 0) for consecutive segments of (duration_s,
    requests per second). Gaps are gamma-distributed with shape `burstiness` and mean
    1 / rate, as vLLM's benchmark draws them: 1.0 is a Poisson process, below 1 burstier,
    above 1 more regular."""
    if burstiness <= 0:
        raise ValueError("burstiness must be positive")
    parts = []
    start = 0.0
    for duration, rate in segments:
        if duration < 0 or rate < 0:
            raise ValueError("segments need non-negative durations and rates")
        if duration > 0 and rate > 0:
            parts.append(start + _renewal(rng, rate, duration, burstiness))
        start += duration
    return np.concatenate(parts) if parts else np.empty(0)


def _renewal(rng: np.random.Generator, rate: float, duration: float, shape: float) -> np.ndarray:
    expected = rate * duration
    count = int(expected + 6 * math.sqrt(expected) + 16)
    times = np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), count))
    while times[-1] < duration:  # rare: draw more
        more = np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), count)) + times[-1]
        times = np.concatenate([times, more])
    return times[: np.searchsorted(times, duration)]


def diurnal_curve(*, trough: float, peak_hour: int, sharpness: float = 1.5) -> tuple[float, ...]:
    """24 hourly fractions of the peak: a smooth day with its maximum 1.0 at `peak_hour` and
    its minimum `trough` twelve hours away (sharpness > 1 narrows the busy hours)."""
    values = []
    for hour in range(HOURS):
        phase = 0.5 + 0.5 * math.cos(2 * math.pi * (hour - peak_hour) / HOURS)
        values.append(trough + (1 - trough) * phase**sharpness)
    top = max(values)
    return tuple(round(v / top, 4) for v in values)
