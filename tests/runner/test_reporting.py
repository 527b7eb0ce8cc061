"""The grader's shared reporting rules: undecided speedups, and what a grade does with one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from runner.graders import softmax
from runner.graders.reporting import undecided
from runner.graders.softmax_lab import Options
from runner.harness.correctness import Tally


def speedup(value: float, low: float, high: float) -> dict:
    return {"value": value, "ci95_low": low, "ci95_high": high}


@pytest.mark.parametrize(
    "interval, decided",
    [((0.9, 0.85, 0.95), True), ((0.75, 0.7, 0.79), True), ((0.8, 0.7, 0.9), False)],
)
def test_an_interval_that_contains_the_bar_is_undecided(interval, decided):
    assert undecided(speedup(*interval), 0.8) is not decided


def test_there_is_nothing_to_decide_without_a_bar():
    assert not undecided(speedup(0.8, 0.7, 0.9), None)


def fake_run(spec, timings: list[dict]):
    calls = []

    def measure(run, baseline, rng, tally):
        calls.append(run.options.timing.time_cap_s)
        return {"speedup": timings[len(calls) - 1]}

    run = softmax._Run(
        spec=spec,
        device_class="cpu",
        options=Options.from_spec(spec, "cpu"),
        candidate=SimpleNamespace(log_tail=lambda: ""),
    )
    return run, measure, calls


def test_an_undecided_speedup_is_measured_again_for_twice_as_long(spec, monkeypatch):
    run, measure, calls = fake_run(spec, [speedup(0.8, 0.7, 0.9), speedup(0.9, 0.85, 0.95)])
    monkeypatch.setattr(softmax, "time_round_trip", measure)
    timing = run.measure_speed(None, None, Tally())
    assert calls == [calls[0], 2 * calls[0]]
    assert timing["first_measurement"] == speedup(0.8, 0.7, 0.9)
    assert not timing["inconclusive"]
    result = run.finish(Tally(), timing)
    assert result.status == "passed"


def test_a_speedup_still_undecided_after_two_measurements_is_inconclusive(spec, monkeypatch):
    run, measure, calls = fake_run(spec, [speedup(0.8, 0.7, 0.9), speedup(0.81, 0.75, 0.88)])
    monkeypatch.setattr(softmax, "time_round_trip", measure)
    timing = run.measure_speed(None, None, Tally())
    assert len(calls) == 2 and timing["inconclusive"]
    result = run.finish(Tally(), timing)
    assert result.status == "error"
    assert result.message.startswith("The speed measurement could not decide: your speedup is")
    assert "(0.75-0.88) still contains the bar of 0.8x" in result.message
