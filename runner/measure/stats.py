"""Summary statistics for timing samples, and the confidence interval of a speedup.

Pure functions on plain sequences, so they are easy to test on known data and reuse for GPU
timings (CUDA events) later.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

# Two-sided 95% critical values of Student's t for small samples; above 30 degrees of freedom
# the normal value is within 2% and the table would add nothing a reader could check.
_T_975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    21: 2.080,
    22: 2.074,
    23: 2.069,
    24: 2.064,
    25: 2.060,
    26: 2.056,
    27: 2.052,
    28: 2.048,
    29: 2.045,
    30: 2.042,
}
_Z_975 = 1.959964


def t_critical_95(df: int) -> float:
    """Two-sided 95% critical value of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError("need at least one degree of freedom")
    return _T_975.get(df, _Z_975)


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    mean: float
    std: float
    sem: float
    ci95_low: float  # of the mean, Student's t
    ci95_high: float
    min: float
    max: float

    @property
    def rel_sem(self) -> float:
        """Standard error of the mean relative to the mean: the stopping rule's yardstick."""
        return self.sem / self.mean if self.mean else math.inf

    def scaled(self, factor: float) -> Summary:
        """The same summary in another unit (e.g. ns -> us with factor 1e-3)."""
        return Summary(
            n=self.n,
            median=self.median * factor,
            mean=self.mean * factor,
            std=self.std * factor,
            sem=self.sem * factor,
            ci95_low=self.ci95_low * factor,
            ci95_high=self.ci95_high * factor,
            min=self.min * factor,
            max=self.max * factor,
        )

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "rel_sem": self.rel_sem}


def summarize(samples: Sequence[float]) -> Summary:
    """n, median, mean, sample std (n-1), SEM, 95% CI of the mean, min and max."""
    n = len(samples)
    if n == 0:
        raise ValueError("cannot summarise zero samples")
    mean = statistics.fmean(samples)
    std = statistics.stdev(samples) if n > 1 else 0.0
    sem = std / math.sqrt(n)
    half = t_critical_95(n - 1) * sem if n > 1 else 0.0
    return Summary(
        n=n,
        median=statistics.median(samples),
        mean=mean,
        std=std,
        sem=sem,
        ci95_low=mean - half,
        ci95_high=mean + half,
        min=min(samples),
        max=max(samples),
    )


def rel_sem(samples: Sequence[float]) -> float:
    return summarize(samples).rel_sem if len(samples) > 1 else math.inf


class RunningStats:
    """Welford's online mean and variance, so a stopping rule checked after every sample
    costs O(1) instead of re-summarising the whole list."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (value - self.mean)

    @property
    def rel_sem(self) -> float:
        if self.n < 2 or self.mean == 0:
            return math.inf
        return math.sqrt(self._m2 / (self.n - 1) / self.n) / abs(self.mean)


@dataclass(frozen=True)
class Ratio:
    """A speedup: baseline median / candidate median, with a bootstrap 95% interval."""

    value: float
    ci95_low: float
    ci95_high: float
    method: str
    resamples: int

    def to_dict(self) -> dict[str, float | str | int]:
        return asdict(self)


def speedup(
    *,
    baseline: Sequence[float],
    candidate: Sequence[float],
    resamples: int = 2000,
    seed: int = 0,
) -> Ratio:
    """How many times faster the candidate is than the baseline (>1 is faster), as a ratio of
    medians, with a percentile-bootstrap 95% interval.

    When both sides have the same number of samples they were taken in interleaved pairs, so
    pairs are resampled together (a paired bootstrap): drift that hit both sides of a pair
    stays matched. The seed is fixed so that the same samples always give the same interval.
    """
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    if base.size == 0 or cand.size == 0:
        raise ValueError("cannot compare empty samples")
    if np.any(cand <= 0) or np.any(base <= 0):
        raise ValueError("timings must be positive")
    value = float(np.median(base) / np.median(cand))
    rng = np.random.default_rng(seed)
    paired = base.size == cand.size
    ratios = []
    for start in range(0, resamples, 250):  # chunks bound memory to 250 x n
        count = min(250, resamples - start)
        pick_b = rng.integers(0, base.size, size=(count, base.size))
        pick_c = pick_b if paired else rng.integers(0, cand.size, size=(count, cand.size))
        ratios.append(np.median(base[pick_b], axis=1) / np.median(cand[pick_c], axis=1))
    all_ratios = np.concatenate(ratios)
    low, high = np.percentile(all_ratios, [2.5, 97.5])
    return Ratio(
        value=value,
        ci95_low=float(low),
        ci95_high=float(high),
        method="paired bootstrap of the ratio of medians"
        if paired
        else "bootstrap of the ratio of medians",
        resamples=resamples,
    )
