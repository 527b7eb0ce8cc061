"""Faults with real processes: a job delivered twice records one result; a worker stopped
with SIGTERM during a deploy loses nothing."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "notebooks" / "softmax"
LEARNER = "0123456789abcdef0123456789abcdef"
pytestmark = pytest.mark.timeout(600)


def finished_at(stack, submission_id: str) -> str:
    code = "from labs.models import Submission as S; print(S.objects.get(pk=ID).finished)"
    out = stack.manage("shell", "-v", "0", "-c", code.replace("ID", repr(submission_id)))
    return out.strip().splitlines()[-1]


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_the_same_job_delivered_twice_is_recorded_once(stack):
    created = stack.submit(LAB / "reference.ipynb", lab="softmax", learner=LEARNER)
    # A second copy of the very same job message, as a broker redelivery would make.
    stack.manage(
        "shell", "-v", "0", "-c", f"from labs.tasks import dispatch; dispatch('{created['id']}')"
    )
    first = stack.wait(created["id"])
    assert first["status"] == "passed"
    recorded = finished_at(stack, created["id"])
    deadline = time.monotonic() + 120
    while len(re.findall(r"runner\.grade\[.*\] succeeded", stack.log("grading-worker"))) < 2:
        assert time.monotonic() < deadline, stack.log("grading-worker")
        time.sleep(0.5)
    time.sleep(2)  # let the second report reach the web worker
    assert finished_at(stack, created["id"]) == recorded
    assert "ignored a duplicate or stale report" in stack.log("web-worker")


@pytest.mark.parametrize(
    "stack", [pytest.param("redis", marks=pytest.mark.postgres)], indirect=True
)
def test_a_worker_stopped_during_a_deploy_loses_nothing(stack):
    created = stack.submit(LAB / "reference.ipynb", lab="softmax", learner=LEARNER)
    stack.wait(created["id"], until={"running"})
    worker = stack.processes["grading-worker"]
    os.killpg(worker.pid, signal.SIGTERM)  # what a deploy does: warm shutdown
    worker.wait(timeout=300)
    stack.start_grading_worker()  # the new release's worker
    final = stack.wait(created["id"])
    assert final["status"] == "passed", final["message"]
