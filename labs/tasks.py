"""The bridge between the web application and the grading workers (runner/).

This is the only Django module that imports runner/. Workers do not touch the database:
they receive a job (JSON) on their device class's queue and send progress and the final
report back as messages to the tasks below, on the `web` queue. Recording is idempotent:
each UPDATE is conditional on the submission still being active *and* on the attempt
number carried by the message, so duplicates and messages from superseded attempts change
nothing.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from labs.alerts import evaluate_alerts
from labs.artifacts import record_artifacts, split_artifacts
from labs.models import Status, Submission, Worker, WorkerSample
from labs.workers import SAMPLES_KEPT, WORKER_NAME, clean_heartbeat
from runner import broker as runner_broker
from runner import heartbeat as runner_heartbeat
from runner import labspec as runner_labspec
from runner import notebook as runner_notebook
from runner import routing as runner_routing
from runner import schema as runner_schema

# For labs/fleet.py: the clock reasons the grader counts as throttling (runner/ is reached
# only through this module).
from runner.measure.telemetry import SPOILING_REASONS as THROTTLE_REASONS  # noqa: F401

log = logging.getLogger(__name__)

GRADE_TASK = runner_broker.GRADE_TASK  # defined in runner/worker.py, which needs no Django


class BadNotebook(ValueError):
    """The upload cannot be graded; the message is written for the learner."""


# --- Lab specs and notebooks: read through runner/ so both sides agree on the format ---


def read_lab_specs() -> list[dict[str, Any]]:
    """Every lab folder's spec as plain data, plus its starter notebook's text."""
    specs = runner_labspec.load_lab_specs(settings.NOTEBOOKS_DIR)
    return [
        spec.to_dict() | {"starter_notebook": spec.starter_path.read_text(encoding="utf-8")}
        for spec in specs.values()
    ]


def check_notebook(raw: bytes, *, max_bytes: int, max_cells: int) -> None:
    """Refuse an upload the worker could not grade, before anything is queued."""
    try:
        runner_notebook.validate_notebook(raw, max_bytes=max_bytes, max_cells=max_cells)
    except runner_notebook.NotebookRejected as exc:
        raise BadNotebook(str(exc)) from exc


# --- Sending work ------------------------------------------------------------------------


def build_job(submission: Submission) -> dict[str, Any]:
    limits = submission.lab.limits
    return {
        "schema": runner_schema.JOB_SCHEMA,
        "submission_id": str(submission.id),
        "attempt": submission.attempt,
        "lab": submission.lab.slug,
        "device_class": submission.device_class,
        "notebook": json.loads(submission.notebook),
        "seed": submission.seed,
        "limits": {
            "cell_timeout_s": limits["cell_timeout_s"],
            "total_timeout_s": limits["total_timeout_s"],
            "max_output_bytes": limits["max_output_bytes"],
        },
    }


def queue_for(submission: Submission) -> str:
    """`cpu`, or the GPU queue that the lab's [requirements] call for (runner/routing.py):
    only workers whose GPU satisfies them consume it."""
    if submission.device_class != "gpu":
        return runner_broker.grade_queue(submission.device_class)
    try:
        spec = runner_labspec.load_lab_spec(Path(settings.NOTEBOOKS_DIR) / submission.lab.slug)
    except runner_labspec.LabSpecError as exc:
        # The lab was loaded from this very file: a broken file now is an operator's slip.
        # Any GPU is a better guess than no grade; the worker's grader will say what fails.
        log.warning("routing %s to 'gpu': %s", submission.pk, exc)
        return runner_routing.queue_for("gpu")
    return runner_routing.queue_for("gpu", spec.requirements)


def dispatch(submission_id: str) -> bool:
    """Put the submission's job on its queue. Returns False when the broker is unreachable;
    the submission then stays queued with a message, and the sweeper sends it later."""
    submission = Submission.objects.select_related("lab").filter(pk=submission_id).first()
    if submission is None or submission.status != Status.QUEUED:
        return False
    from config.celery import app

    try:
        app.send_task(
            GRADE_TASK,
            args=[build_job(submission)],
            queue=queue_for(submission),
            # No time limits here: the worker enforces the job's own limits and reports a
            # timeout; its Celery limits (runner/worker.py) are only a backstop above them.
            retry=False,
        )
    except Exception as exc:  # kombu raises several types for "broker unreachable"
        log.warning("could not dispatch submission %s: %s", submission_id, exc)
        Submission.objects.filter(pk=submission.pk, status=Status.QUEUED).update(
            dispatched_at=None,
            message="Waiting for the grading service, which is unreachable right now. "
            "Your submission is saved and will be sent automatically.",
        )
        return False
    Submission.objects.filter(pk=submission.pk, status=Status.QUEUED).update(
        dispatched_at=timezone.now(), message=""
    )
    return True


# --- Receiving results -------------------------------------------------------------------


@shared_task(name="labs.record_progress", ignore_result=True)
def record_progress(submission_id: str, attempt: int, stage: str, info: dict | None = None):
    info = info if isinstance(info, dict) else {}
    worker = info.get("worker")
    now = timezone.now()
    active = Submission.objects.filter(
        pk=submission_id, attempt=attempt, status__in=[Status.QUEUED, Status.RUNNING]
    )
    # started is set once, by the first progress message of this attempt.
    active.filter(started__isnull=True).update(started=now)
    changes: dict[str, Any] = {
        "status": Status.RUNNING,
        "stage": str(stage)[:32],
        "progress": {k: v for k, v in info.items() if k not in ("log_tail", "worker")},
        "heartbeat_at": now,
    }
    if isinstance(worker, str) and WORKER_NAME.match(worker):
        changes["worker"] = worker  # whose heartbeats this run depends on (the sweeper)
    if "log_tail" in info:
        changes["log_tail"] = str(info["log_tail"])[-8000:]
    active.update(**changes)


@shared_task(name="labs.record_report", ignore_result=True)
def record_report(report: dict) -> bool:
    try:
        runner_schema.check_report(report)
    except ValueError as exc:
        log.error("dropping a malformed report: %s", exc)
        return False
    # Files to download (a trace) are kept as rows beside the submission, not in its report.
    report, artifacts = split_artifacts(report)
    with transaction.atomic():
        updated = Submission.objects.filter(
            pk=report["submission_id"],
            attempt=report["attempt"],
            status__in=[Status.QUEUED, Status.RUNNING],
        ).update(
            status=report["status"],
            message=report["message"][:2000],
            report=report,
            log_tail=str(report.get("log_tail") or "")[-8000:],
            stage="done",
            finished=timezone.now(),
        )
        if updated:
            record_artifacts(submission_id=report["submission_id"], artifacts=artifacts)
    if updated:
        log.info(
            "recorded %s for %s (attempt %s)",
            report["status"],
            report["submission_id"],
            report["attempt"],
        )
    else:
        log.info("ignored a duplicate or stale report for %s", report["submission_id"])
    return bool(updated)


@shared_task(name="labs.record_heartbeat", ignore_result=True)
def record_heartbeat(payload: dict) -> str:
    """A worker's heartbeat (runner/heartbeat.py). It came over the broker: every field is
    checked and a bad one dropped (labs.workers.clean_heartbeat); one that is not newer than
    the last recorded changes nothing. Returns "created", "updated", "stale" or "malformed"."""
    heartbeat = clean_heartbeat(payload, schema=runner_heartbeat.HEARTBEAT_SCHEMA)
    if heartbeat is None:
        log.warning("dropping a malformed heartbeat")
        return "malformed"
    return Worker.objects.record(heartbeat, now=timezone.now())


@shared_task(name="labs.record_worker_lost", ignore_result=True)
def record_worker_lost(submission_id: str, attempt: int) -> str:
    """A worker says the run of this attempt died with the process grading it (it found the
    run's mark when the broker delivered the job again; runner/unfinished.py). That attempt
    is over: send the next, or give up at the cap, as the sweeper does for a silent one."""
    submission = (
        Submission.objects.select_related("lab")
        .filter(pk=submission_id, attempt=attempt, status__in=[Status.QUEUED, Status.RUNNING])
        .first()
    )
    if submission is None:
        log.info("ignored a lost run of %s attempt %s: already superseded", submission_id, attempt)
        return ""
    log.warning("the run of %s attempt %s died with its worker", submission_id, attempt)
    return retry_or_give_up(submission, now=timezone.now())


def retry_or_give_up(submission: Submission, *, now: datetime) -> str:
    """The submission's current attempt ended without a report. Returns "retried" when
    another attempt was sent, "gave_up" when the cap was reached, "" when something else
    changed the submission first (the UPDATEs are conditional on what we read)."""
    base = Submission.objects.filter(
        pk=submission.pk, attempt=submission.attempt, status=submission.status
    )
    # The cap counts the runs since the last regrade: each regrade starts the count again.
    regraded_at = submission.regrades.aggregate(start=Max("attempt"))["start"] or 1
    runs = submission.attempt - regraded_at + 1
    if runs >= settings.SUBMISSION_MAX_ATTEMPTS:
        gave_up = base.update(
            status=Status.ERROR,
            finished=now,
            message=f"Grading did not finish after {runs} attempts: each time, "
            "the grading worker died or stopped answering before it had a result. "
            "Please tell an instructor.",
        )
        return "gave_up" if gave_up else ""
    retried = base.update(
        status=Status.QUEUED,
        attempt=submission.attempt + 1,
        stage="",
        progress={},
        dispatched_at=None,
        heartbeat_at=None,
        worker="",
    )
    if not retried:
        return ""
    dispatch(str(submission.pk))
    return "retried"


# --- Sweeper -----------------------------------------------------------------------------


@shared_task(name="labs.sweep_submissions", ignore_result=True)
def sweep_submissions() -> dict[str, int]:
    """Re-send what was never sent, re-run what got stuck or whose worker was lost, give up
    after the attempt cap; forget worker samples older than a day."""
    now = timezone.now()
    counts = {"sent": 0, "retried": 0, "gave_up": 0}
    WorkerSample.objects.filter(at__lt=now - SAMPLES_KEPT).delete()
    for submission in Submission.objects.filter(
        status=Status.QUEUED, dispatched_at__isnull=True
    ).only("pk"):
        counts["sent"] += dispatch(str(submission.pk))

    # A job whose worker stopped sending heartbeats is not waited for until its lease ends:
    # its worker is gone (killed, powered off, cut off from the broker).
    lost_workers = Worker.objects.lost(now=now).values_list("name", flat=True)
    for submission in Submission.objects.select_related("lab").filter(
        status=Status.RUNNING, worker__in=lost_workers
    ):
        log.warning("worker %s is lost; re-queueing %s", submission.worker, submission.pk)
        outcome = retry_or_give_up(submission, now=now)
        if outcome:
            counts[outcome] += 1

    queued_lease = timedelta(seconds=settings.SUBMISSION_QUEUED_LEASE_S)
    grace = timedelta(seconds=settings.SUBMISSION_RUNNING_GRACE_S)
    candidates = Submission.objects.select_related("lab").filter(
        Q(status=Status.QUEUED, dispatched_at__lt=now - queued_lease)
        | Q(status=Status.RUNNING, heartbeat_at__lt=now - grace)
    )
    for submission in candidates:
        # A running job must finish within its lab's total limit: silence longer than that
        # (plus the grace) means its worker is gone.
        lease = grace + timedelta(seconds=submission.lab.limits["total_timeout_s"])
        if submission.status == Status.RUNNING and submission.heartbeat_at > now - lease:
            continue
        outcome = retry_or_give_up(submission, now=now)
        if outcome:
            counts[outcome] += 1
    if any(counts.values()):
        log.info("sweeper: %s", counts)
    return counts


# --- Fleet alerts ------------------------------------------------------------------------


@shared_task(name="labs.evaluate_fleet_alerts", ignore_result=True)
def evaluate_fleet_alerts() -> dict[str, int]:
    """Evaluate the fleet's alert rules; notify each alert that starts or ends, once
    (labs/alerts.py). Scheduled by beat every FLEET_ALERT_INTERVAL_S."""
    return evaluate_alerts(now=timezone.now())
