"""A grading worker that dies mid-job on marked submissions, for the fault tests.

    celery -A tests.e2e.fragile_worker worker -Q cpu ...

Everything is runner.worker's (the same app, task and settings) except one thing: while it
grades a job whose notebook contains the text in $E2E_KILL_WORKER_ON, the pool process
running the job is SIGKILLed as soon as the notebook starts running cells, every time the
job is delivered.

Why a stand-in: the sandbox keeps learner code from killing the worker (the `kill_parent`
and `kill_all` hostile cases prove it), yet submissions do take workers down in production,
from the worker's side of the fence: the kernel's OOM killer picks the pool process, whose
trusted grader holds the arrays a submission sends back; native code (torch, a GPU driver)
crashes on what a submission produced. All of these reach Celery as what this module does:
a SIGKILL of the pool process in the middle of a job. The OOM killer itself cannot be aimed
at one process on a shared test machine without cgroup v2.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from runner import worker
from runner.worker import app

__all__ = ["app"]

MARK = os.environ["E2E_KILL_WORKER_ON"]

_run_job = worker.run_job


def _run_job_or_die(job: Any, *, on_progress: Any = None, **options: Any) -> dict[str, Any]:
    if MARK not in json.dumps(job.get("notebook") if isinstance(job, dict) else None):
        return _run_job(job, on_progress=on_progress, **options)

    def progress(stage: str, **info: Any) -> None:
        if on_progress is not None:
            on_progress(stage, **info)
        if stage == "running":  # cells are running: the job is well under way
            print(
                f"fragile worker: SIGKILL of pool process {os.getpid()} grading "
                f"{job['submission_id']} attempt {job['attempt']}",
                file=sys.stderr,
                flush=True,
            )
            os.kill(os.getpid(), signal.SIGKILL)

    return _run_job(job, on_progress=progress, **options)


worker.run_job = _run_job_or_die
