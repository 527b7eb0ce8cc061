"""How the terminal client prints each criterion of a verdict."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "static" / "cli"))

from roadmap_submit import criterion_line  # noqa: E402


def criterion(**fields) -> dict:
    return {"name": "speed", "measured": 1.3, "comparator": ">=", "threshold": 0.8} | fields


def test_an_evaluated_criterion_shows_its_measurement_and_bar():
    assert criterion_line(criterion(passed=True), "cpu") == "[PASS] speed: 1.3 >= 0.8"
    assert criterion_line(criterion(passed=False, measured=None), "cpu") == (
        "[FAIL] speed: not measured >= 0.8"
    )


def test_a_criterion_for_another_device_says_where_it_is_not_evaluated():
    line = criterion_line(criterion(evaluated=False, measured=None, threshold=None), "cpu")
    assert line == "[-] speed: not evaluated on cpu"
