from __future__ import annotations

import math
import statistics

import pytest

from runner.measure.plot import timeline_svg
from runner.measure.stats import RunningStats, speedup, summarize, t_critical_95
from runner.measure.timing import Contender, TimingPolicy, time_interleaved


def test_summarize_matches_hand_computed_values():
    s = summarize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert s.n == 8
    assert s.mean == 5.0
    assert s.median == 4.5
    assert s.std == pytest.approx(2.138089935)  # sample std, n - 1
    assert s.sem == pytest.approx(2.138089935 / math.sqrt(8))
    half = 2.365 * s.sem  # t(0.975, 7)
    assert (s.ci95_low, s.ci95_high) == pytest.approx((5.0 - half, 5.0 + half))
    assert (s.min, s.max) == (2.0, 9.0)
    assert s.rel_sem == pytest.approx(s.sem / 5.0)


def test_summarize_handles_one_sample_and_refuses_none():
    s = summarize([3.0])
    assert (s.std, s.sem, s.ci95_low, s.ci95_high) == (0.0, 0.0, 3.0, 3.0)
    with pytest.raises(ValueError):
        summarize([])


def test_scaled_converts_every_field_but_n():
    s = summarize([1000.0, 3000.0]).scaled(1e-3)
    assert (s.n, s.mean, s.min, s.max) == (2, 2.0, 1.0, 3.0)


def test_t_critical_values_come_from_the_table_then_the_normal():
    assert t_critical_95(1) == 12.706
    assert t_critical_95(30) == 2.042
    assert t_critical_95(1000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError):
        t_critical_95(0)


def test_running_stats_agree_with_the_batch_computation():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    running = RunningStats()
    for v in values:
        running.add(v)
    expected = statistics.stdev(values) / math.sqrt(len(values)) / statistics.fmean(values)
    assert running.rel_sem == pytest.approx(expected)
    assert RunningStats().rel_sem == math.inf


def test_speedup_is_the_ratio_of_medians_with_a_bracketing_interval():
    baseline = [200.0 + i % 7 for i in range(60)]
    candidate = [100.0 + i % 5 for i in range(60)]
    ratio = speedup(baseline=baseline, candidate=candidate)
    assert ratio.value == pytest.approx(statistics.median(baseline) / statistics.median(candidate))
    assert ratio.ci95_low <= ratio.value <= ratio.ci95_high
    assert ratio.ci95_low > 1.9 and ratio.ci95_high < 2.1
    assert ratio.method.startswith("paired")


def test_speedup_of_identical_samples_is_exactly_one():
    samples = [5.0, 6.0, 7.0, 5.5, 6.5]
    ratio = speedup(baseline=samples, candidate=samples)
    assert (ratio.value, ratio.ci95_low, ratio.ci95_high) == (1.0, 1.0, 1.0)


def test_speedup_is_deterministic_and_accepts_unequal_counts():
    a = speedup(baseline=[10.0, 11.0, 12.0, 13.0], candidate=[5.0, 6.0, 7.0])
    b = speedup(baseline=[10.0, 11.0, 12.0, 13.0], candidate=[5.0, 6.0, 7.0])
    assert a == b
    assert not a.method.startswith("paired")


def test_speedup_refuses_non_positive_timings():
    with pytest.raises(ValueError):
        speedup(baseline=[1.0], candidate=[0.0])


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def contender(name: str, cost_ns: int, calls: list[str], clock: FakeClock) -> Contender:
    def run(data: int) -> tuple[int, int]:
        calls.append(name)
        clock.now += cost_ns / 1e9
        return cost_ns, data

    return Contender(name, run)


def test_timing_interleaves_and_alternates_the_order_each_round():
    calls: list[str] = []
    clock = FakeClock()
    result = time_interleaved(
        contenders=[contender("a", 100, calls, clock), contender("b", 200, calls, clock)],
        make_input=lambda r: r,
        policy=TimingPolicy(warmup_rounds=1, min_rounds=3, max_rounds=3, time_cap_s=1e9),
        monotonic=clock,
    )
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert result.samples == {"a": [100, 100, 100], "b": [200, 200, 200]}  # warm-up dropped
    assert result.rounds == 3


def test_timing_stops_once_the_relative_sem_is_small_enough():
    calls: list[str] = []
    clock = FakeClock()
    result = time_interleaved(
        contenders=[contender("a", 100, calls, clock), contender("b", 200, calls, clock)],
        make_input=lambda r: r,
        policy=TimingPolicy(warmup_rounds=0, min_rounds=5, max_rounds=100, time_cap_s=1e9),
        monotonic=clock,
    )
    assert result.stop_reason == "target_rel_sem" and result.converged
    assert result.rounds == 5


def test_timing_stops_at_the_time_cap_when_samples_stay_noisy():
    clock = FakeClock()
    noisy = iter([100, 300] * 1000)

    def run(data: int) -> tuple[int, int]:
        clock.now += 0.4
        return next(noisy), data

    result = time_interleaved(
        contenders=[Contender("a", run)],
        make_input=lambda r: r,
        policy=TimingPolicy(warmup_rounds=0, min_rounds=2, max_rounds=1000, time_cap_s=2.0),
        monotonic=clock,
    )
    assert result.stop_reason == "time_cap" and not result.converged
    assert result.rounds == 5


def test_timing_runs_prepare_before_each_call_and_stops_when_check_raises():
    events: list[str] = []

    def run(data: int) -> tuple[int, int]:
        events.append(f"run {data}")
        return 1, data

    def check(name: str, data: int, output: int) -> None:
        if data == 2:
            raise RuntimeError("wrong while timed")

    with pytest.raises(RuntimeError, match="wrong while timed"):
        time_interleaved(
            contenders=[Contender("a", run, prepare=lambda: events.append("prepare"))],
            make_input=lambda r: r,
            policy=TimingPolicy(warmup_rounds=0, min_rounds=10, time_cap_s=1e9),
            check=check,
        )
    assert events == ["prepare", "run 0", "prepare", "run 1", "prepare", "run 2"]


def test_the_timing_plot_is_an_svg_naming_both_series():
    svg = timeline_svg(series={"yours": [1.0, 2.0], "naive <b>": [2.0, 3.0]}, unit="us", title="t")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "yours" in svg and "naive &lt;b&gt;" in svg and "<script" not in svg
