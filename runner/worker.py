"""The Celery app of a grading worker, without Django.

Run it with, for example:

    celery -A runner.worker worker -Q cpu --concurrency 1 --loglevel INFO

It consumes `runner.grade` jobs, runs each through runner.pipeline, and sends progress and
the final report to the web side as `labs.record_progress` / `labs.record_report` tasks on
the `web` queue. A job whose earlier run on this node died mid-job is not run again: the
worker sends `labs.record_worker_lost` instead (runner/unfinished.py says why). Its main
process sends a heartbeat (`labs.record_heartbeat`, runner/heartbeat.py) every
RUNNER_HEARTBEAT_S seconds and once more when it stops. It needs no database and no secret
beyond the broker URL.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_ready, worker_shutdown

from runner import heartbeat
from runner.broker import (
    GRADE_TASK,
    RECORD_HEARTBEAT_TASK,
    RECORD_PROGRESS_TASK,
    RECORD_REPORT_TASK,
    RECORD_WORKER_LOST_TASK,
    WEB_QUEUE,
    broker_settings_from_env,
)
from runner.gpu import gpu_indices
from runner.health import WORKER_HEALTH
from runner.pipeline import run_job
from runner.sandbox import GPU_DEVICES_ENV, SandboxPolicy, SandboxUnavailable, sandbox_status
from runner.schema import new_report
from runner.unfinished import Mark, Start, UnfinishedJobs

logger = logging.getLogger(__name__)

# The longest a lab allows is total_timeout_s (300 s for softmax) plus kernel start-up and the
# grader's own loading, checking and timing; these limits are only a backstop above that.
SOFT_LIMIT_S = int(os.environ.get("RUNNER_TASK_SOFT_LIMIT_S", "1200"))
HARD_LIMIT_S = SOFT_LIMIT_S + 60
PROGRESS_INTERVAL_S = 0.5
# Messages back to the web side are worth waiting for: a lost one costs a sweeper's lease.
SEND_RETRY = {"max_retries": 10, "interval_start": 1, "interval_step": 2}

# No fix-ups: Celery's built-in Django fix-up would import Django and its settings (database
# credentials included) whenever DJANGO_SETTINGS_MODULE happens to be set on this machine.
app = Celery("inference_roadmap_runner", fixups=[])
app.conf.update(broker_settings_from_env())
app.conf.update(
    task_soft_time_limit=SOFT_LIMIT_S,
    task_time_limit=HARD_LIMIT_S,
    # One timing job per worker process: a second job on the same CPU or GPU skews timings.
    worker_concurrency=int(os.environ.get("RUNNER_CONCURRENCY", "1")),
)


@worker_init.connect
def _check_sandbox(**_: Any) -> None:
    """Say at start-up, not at the first job, when this node cannot grade."""
    UnfinishedJobs.from_env().prune()
    try:
        SandboxPolicy.from_env().check()
    except SandboxUnavailable as exc:
        logger.error("sandbox unavailable, every job will be refused: %s", exc)
        return
    for warning in sandbox_status()["warnings"]:
        logger.warning("sandbox: %s", warning)


# The heartbeat of this worker, once its main process is ready (see _start_heartbeat).
_HEARTBEAT: dict[str, heartbeat.Heartbeat] = {}


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """Start sending heartbeats. worker_ready is sent in the worker's main process (never in
    a pool process) once it consumes; it comes again after a broker reconnection, which
    keeps the heartbeat already running."""
    if _HEARTBEAT or sender is None:
        return
    queues = consumed_queues(sender)
    gpus = gpu_indices(tuple(d for d in os.environ.get(GPU_DEVICES_ENV, "").split(",") if d))
    interval_s = heartbeat.interval_from_env()
    state = heartbeat.WorkerState(
        worker=str(getattr(sender, "hostname", "") or "unknown"),
        queues=lambda: consumed_queues(sender),
        jobs=lambda: heartbeat.celery_jobs(GRADE_TASK),
        health=lambda: WORKER_HEALTH.problem,
        interval_s=interval_s,
        device_class=heartbeat.device_class(queues, has_gpus=bool(gpus)),
        gpu_minors=gpus,
        sandbox=heartbeat.sandbox_summary(sandbox_status()),
    )
    _HEARTBEAT["main"] = heartbeat.Heartbeat(state, send_heartbeat, interval_s=interval_s).start()
    logger.info("heartbeats every %g s as %s", interval_s, state.worker)


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    """The worker stopped (after a warm shutdown let its jobs finish): say so, so that the
    web side shows it stopped rather than lost."""
    beat = _HEARTBEAT.pop("main", None)
    if beat is not None:
        beat.stop()


def consumed_queues(consumer: Any) -> list[str]:
    """The queues this worker consumes now (fewer once an unhealthy worker stopped one)."""
    queues = getattr(getattr(consumer, "task_consumer", None), "queues", None)
    if queues is None:  # between a broker disconnection and the reconnection
        queues = app.amqp.queues.consume_from.values()
    return sorted({str(queue.name) for queue in queues})


def send_heartbeat(payload: dict[str, Any]) -> None:
    app.send_task(
        RECORD_HEARTBEAT_TASK,
        args=[payload],
        queue=WEB_QUEUE,
        expires=heartbeat.EXPIRES_INTERVALS * payload["interval_s"],
        # The goodbye is worth a retry; a regular heartbeat is replaced by the next one.
        retry=payload["stopping"],
        retry_policy={"max_retries": 3, "interval_start": 0.5, "interval_step": 0.5},
    )


class ProgressSender:
    """Forwards pipeline progress to the web side, at most one 'running' update per interval:
    the web side needs a live view, not a message per cell. Each message names the worker
    (its Celery hostname) so that the web side knows whose heartbeats the job depends on."""

    def __init__(
        self, *, submission_id: str, attempt: int, interval_s: float, worker: str | None = None
    ) -> None:
        self.submission_id = submission_id
        self.attempt = attempt
        self.interval_s = interval_s
        self.worker = worker
        self.last_sent = float("-inf")

    def __call__(self, stage: str, **info: Any) -> None:
        now = time.monotonic()
        if stage == "running" and now - self.last_sent < self.interval_s:
            return
        self.last_sent = now
        if self.worker:
            info["worker"] = self.worker
        try:
            app.send_task(
                RECORD_PROGRESS_TASK,
                args=[self.submission_id, self.attempt, stage, info],
                queue=WEB_QUEUE,
                retry=False,
            )
        except Exception:  # noqa: BLE001 - progress is advisory; the report is what matters
            logger.warning("could not send progress for %s", self.submission_id, exc_info=True)


@app.task(name=GRADE_TASK, bind=True)
def grade(self: Any, job: dict[str, Any]) -> str:
    """Grade one job and send its report to the web side; returns the report's status, or
    "lost" / "duplicate" for a job it did not run (see `not_run_again`)."""
    submission_id = str(job.get("submission_id", "unknown")) if isinstance(job, dict) else "?"
    attempt = job.get("attempt", 0) if isinstance(job, dict) else 0
    mark = UnfinishedJobs.from_env().begin(submission_id, attempt)
    if mark is not None and mark.start is not Start.NEW:
        return not_run_again(mark, submission_id=submission_id, attempt=attempt)
    try:
        return run_and_report(self, job, submission_id=submission_id, attempt=attempt)
    finally:
        if mark is not None:
            mark.release()


def run_and_report(task: Any, job: Any, *, submission_id: str, attempt: Any) -> str:
    progress = ProgressSender(
        submission_id=submission_id,
        attempt=attempt,
        interval_s=PROGRESS_INTERVAL_S,
        worker=getattr(getattr(task, "request", None), "hostname", None),
    )
    try:
        report = run_job(job, on_progress=progress)
    except Exception as exc:  # noqa: BLE001 - includes the soft time limit; never lose a job
        logger.exception("job %s failed outside the pipeline", submission_id)
        over_time = isinstance(exc, SoftTimeLimitExceeded)
        report = new_report(
            submission_id=submission_id,
            attempt=attempt if isinstance(attempt, int) else 0,
            lab=str(job.get("lab", "unknown")) if isinstance(job, dict) else "unknown",
            device_class=str(job.get("device_class", "cpu")) if isinstance(job, dict) else "cpu",
            status="timeout" if over_time else "error",
            message=(
                "Grading ran past the worker's overall time limit for one job."
                if over_time
                else f"The worker failed while grading ({type(exc).__name__}); not your code."
            ),
        )
    app.send_task(
        RECORD_REPORT_TASK, args=[report], queue=WEB_QUEUE, retry=True, retry_policy=SEND_RETRY
    )
    if not WORKER_HEALTH.ok:
        stop_consuming(task.request)
    return report["status"]


def not_run_again(mark: Mark, *, submission_id: str, attempt: int) -> str:
    """A job this node started before and never finished came back: the process that ran it
    died mid-job (killed, out of memory, crashed), and the broker put the job back. Running
    it again could kill this worker too, for ever; the web side decides instead whether it
    gets another attempt. A job whose mark is held is a second copy of one running now."""
    if mark.start is Start.RUNNING:
        logger.warning(
            "job %s attempt %s is being graded by another process of this node; "
            "dropped this second copy",
            submission_id,
            attempt,
        )
        return "duplicate"
    logger.error(
        "job %s attempt %s was started on this node before and never finished (the process "
        "grading it died); not running it again, reporting the run as lost",
        submission_id,
        attempt,
    )
    try:
        app.send_task(
            RECORD_WORKER_LOST_TASK,
            args=[submission_id, attempt],
            queue=WEB_QUEUE,
            retry=True,
            retry_policy=SEND_RETRY,
        )
    finally:
        mark.release()
    return "lost"


def stop_consuming(request: Any) -> None:
    """Ask this worker to stop taking jobs from the queue this one came from, so that other,
    healthy workers get them; until an operator restarts it, any job that still arrives is
    answered with an error report (runner.health). Best effort: the filesystem broker of
    the embedded mode has no broadcast channel for this."""
    queue = (getattr(request, "delivery_info", None) or {}).get("routing_key")
    hostname = getattr(request, "hostname", None)
    if not queue or not hostname:
        return
    try:
        app.control.cancel_consumer(queue, destination=[hostname])
        logger.error("unhealthy: stopped consuming queue %s on %s", queue, hostname)
    except Exception:  # noqa: BLE001 - the refusal reports still protect learners
        logger.warning("could not stop consuming queue %s", queue, exc_info=True)
