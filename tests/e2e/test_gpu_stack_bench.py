"""bench/gpu_stack.py, the whole-stack benchmark a GPU node runs (docs/gpu-worker.md), in its
CPU dry run: the same web app, web worker and JSON API submissions, with the CPU grading
worker in place of `gpu-workers`. Keeps the script that produced the GPU records working
between GPU visits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.conftest import require_sandbox
from tests.e2e.stack import REPO

pytestmark = pytest.mark.timeout(600)


def test_the_stack_bench_grades_a_burst_and_records_the_fleet_page(tmp_path):
    require_sandbox()
    dropped = ("DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE")
    env = {k: v for k, v in os.environ.items() if k not in dropped} | {"OUT": str(tmp_path)}
    command = [
        sys.executable,
        "bench/gpu_stack.py",
        "--device-class",
        "cpu",
        "--labs",
        "softmax,cost",
        "--kinds",
        "starter",
        "--sequential",
        "none",
    ]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=540, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "stack" / "results.json").read_text())
    burst = results["burst"]
    assert [(r["lab"], r["notebook"], r["status"]) for r in burst] == [
        ("softmax", "softmax.ipynb", "error"),
        ("cost", "cost.ipynb", "error"),
    ]
    for row in burst:
        # The pipeline's overhead is what is left of the time after the cells and the grader.
        assert row["overhead_after_start_s"] >= 0 and row["cells_s"] > 0
    assert results["burst_idle"] and results["one_at_a_time"] == []
    assert (
        "| burst | softmax | softmax.ipynb | error | error |"
        in (tmp_path / "stack" / "summary.md").read_text()
    )
    page = (tmp_path / "stack" / "fleet.html").read_text()
    assert "Grading fleet" in page and "data-per-1k-tokens" in page
