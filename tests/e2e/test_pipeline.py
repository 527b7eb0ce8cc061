"""Upload -> queue -> grading worker (sandboxed) -> report -> recorded, with real processes,
in the embedded mode (SQLite + filesystem broker) and in production mode (PostgreSQL with
Redis, and with RabbitMQ)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "notebooks" / "softmax"
LEARNER = "0123456789abcdef0123456789abcdef"

MODES = [
    pytest.param("embedded", id="embedded"),
    pytest.param("redis", id="postgres+redis", marks=pytest.mark.postgres),
    pytest.param("rabbitmq", id="postgres+rabbitmq", marks=pytest.mark.postgres),
]
pytestmark = pytest.mark.timeout(900)


@pytest.mark.parametrize("stack", MODES, indirect=True)
def test_the_reference_solution_passes(stack):
    created = stack.submit(LAB / "reference.ipynb", lab="softmax", learner=LEARNER)
    assert created["status"] == "queued"
    final = stack.wait(created["id"])
    assert final["status"] == "passed", final["message"] + stack.logs()
    assert {c["name"] for c in final["criteria"]} == {"correct", "finite", "speed"}
    assert all(c["passed"] for c in final["criteria"] if c["evaluated"])
    assert final["environment"]["python"] and final["started"] and final["finished"]
    assert final["verification"]


@pytest.mark.parametrize("stack", MODES, indirect=True)
def test_the_untouched_starter_fails_with_a_helpful_message(stack):
    created = stack.submit(LAB / "softmax.ipynb", lab="softmax", learner=LEARNER)
    final = stack.wait(created["id"])
    assert final["status"] in ("error", "failed"), final
    assert "NotImplementedError" in final["message"] or "Implement softmax" in final["message"]
    assert final["verification"] is None


@pytest.mark.parametrize("stack", MODES[:1], indirect=True)
def test_a_notebook_that_raises_is_an_error_naming_the_cell(stack):
    created = stack.submit(LAB / "fixtures" / "raises.ipynb", lab="softmax", learner=LEARNER)
    final = stack.wait(created["id"])
    assert final["status"] == "error"
    assert "Cell" in final["message"] or "cell" in final["message"]


def grading_pool_children(stack) -> list[int]:
    """PIDs of the grading worker's prefork pool processes."""
    parent = stack.processes["grading-worker"].pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children]


@pytest.mark.parametrize("stack", MODES[1:2], indirect=True)
def test_a_pool_process_killed_mid_job_is_redelivered_and_recorded_once(stack):
    created = stack.submit(LAB / "reference.ipynb", lab="softmax", learner=LEARNER)
    stack.wait(created["id"], until={"running"})
    time.sleep(0.5)
    for pid in grading_pool_children(stack):
        os.kill(pid, signal.SIGKILL)
    final = stack.wait(created["id"])
    assert final["status"] == "passed", final["message"]
    worker_log = stack.log("grading-worker")
    assert "WorkerLostError" in worker_log or "exited" in worker_log or "signal 9" in worker_log
