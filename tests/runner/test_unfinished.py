"""Job marks: how a worker node tells a job that died with its process from a new one and
from a copy that another process is running now (runner/unfinished.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from runner.unfinished import Start, UnfinishedJobs
from tests.runner.support import REPO

TAKE_MARK = """
import os, signal, sys, time
from runner.unfinished import UnfinishedJobs
mark = UnfinishedJobs.from_env().begin("s1", 1)
print(mark.start.value, flush=True)
if sys.argv[1] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(60)
"""


@pytest.fixture
def jobs(tmp_path):
    return UnfinishedJobs(tmp_path / "unfinished")


def take_mark_in_another_process(tmp_path, how: str) -> subprocess.Popen:
    """A process that takes the mark of job s1 attempt 1, then dies or keeps running."""
    process = subprocess.Popen(
        [sys.executable, "-c", TAKE_MARK, how],
        cwd=REPO,
        env={**os.environ, "VAR_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "new"
    return process


def test_a_new_job_gets_a_mark_that_goes_when_its_run_ends(jobs):
    mark = jobs.begin("s1", 1)
    assert mark.start is Start.NEW and mark.path.exists()
    mark.release()
    assert not mark.path.exists()
    mark.release()  # twice is harmless
    assert jobs.begin("s1", 1).start is Start.NEW


def test_a_job_whose_process_was_killed_mid_run_is_known_to_have_died(jobs, tmp_path):
    process = take_mark_in_another_process(tmp_path, "die")
    assert process.wait(timeout=30) == -signal.SIGKILL
    mark = jobs.begin("s1", 1)
    assert mark.start is Start.DIED
    mark.release()
    assert jobs.begin("s1", 1).start is Start.NEW


def test_a_job_that_another_live_process_runs_is_a_duplicate_until_that_process_dies(
    jobs, tmp_path
):
    process = take_mark_in_another_process(tmp_path, "live")
    try:
        assert jobs.begin("s1", 1).start is Start.RUNNING
        assert jobs.begin("s1", 2).start is Start.NEW  # another attempt is another job
    finally:
        process.kill()
        process.wait()
    assert jobs.begin("s1", 1).start is Start.DIED


@pytest.mark.parametrize(
    "submission_id, attempt",
    [("../../etc/passwd", 1), ("", 1), ("s1", "1"), ("s1", None), ("s1", True), (None, 1)],
)
def test_a_job_too_malformed_to_name_gets_no_mark(jobs, submission_id, attempt):
    assert jobs.begin(submission_id, attempt) is None
    assert not jobs.folder.exists() or list(jobs.folder.iterdir()) == []


def test_a_mark_planted_as_a_symbolic_link_is_not_followed(jobs, tmp_path):
    target = tmp_path / "target"
    target.write_text("keep")
    jobs.folder.mkdir()
    (jobs.folder / "s1-a1").symlink_to(target)
    assert jobs.begin("s1", 1) is None
    assert target.read_text() == "keep"


def test_marks_of_jobs_that_never_came_back_are_forgotten_after_a_week(jobs):
    old, recent = jobs.begin("s1", 1), jobs.begin("s2", 1)
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(old.path, (week_ago, week_ago))
    jobs.prune()
    assert not old.path.exists() and recent.path.exists()
