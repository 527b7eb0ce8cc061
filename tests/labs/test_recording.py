"""Recording what workers send back: idempotent, attempt-aware, and the sweeper that
re-sends lost jobs, re-runs stuck ones and gives up after the attempt cap."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from labs.models import Status, Submission
from labs.tasks import record_progress, record_report, record_worker_lost, sweep_submissions
from labs.verification import make_token, read_token
from tests.labs.conftest import LEARNER, job_of, make_notebook, report_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def submission(lab):
    return Submission.objects.create(
        lab=lab,
        learner_key=LEARNER,
        notebook=make_notebook().decode(),
        dispatched_at=timezone.now(),
    )


def test_progress_moves_a_submission_to_running_with_its_stage(submission):
    record_progress(str(submission.pk), 1, "running", {"cell": 3, "cells": 7})
    submission.refresh_from_db()
    assert submission.status == Status.RUNNING and submission.stage == "running"
    assert submission.progress == {"cell": 3, "cells": 7}
    assert submission.started is not None and submission.heartbeat_at is not None


def test_a_report_is_recorded_once(submission):
    assert record_report(report_for(submission)) is True
    assert record_report(report_for(submission, status="failed", message="x")) is False
    submission.refresh_from_db()
    assert submission.status == Status.PASSED and submission.message == "All criteria passed."
    assert submission.finished is not None


def test_messages_from_an_older_attempt_change_nothing(submission):
    Submission.objects.filter(pk=submission.pk).update(attempt=2)
    assert record_report(report_for(submission, attempt=1)) is False
    record_progress(str(submission.pk), 1, "grading", {})
    submission.refresh_from_db()
    assert submission.status == Status.QUEUED and submission.stage == ""


def test_progress_after_the_verdict_changes_nothing(submission):
    record_report(report_for(submission, status="failed", message="Too slow."))
    record_progress(str(submission.pk), 1, "running", {"cell": 1, "cells": 2})
    submission.refresh_from_db()
    assert submission.status == Status.FAILED


def test_a_malformed_report_is_dropped(submission):
    assert record_report({"schema": "nope"}) is False
    bad = report_for(submission) | {"status": "excellent"}
    assert record_report(bad) is False
    submission.refresh_from_db()
    assert submission.status == Status.QUEUED


def test_the_sweeper_reruns_a_job_whose_worker_went_silent(submission, sent):
    long_ago = timezone.now() - timedelta(seconds=120 + 120 + 5)  # lab limit 120 + grace 120
    Submission.objects.filter(pk=submission.pk).update(
        status=Status.RUNNING, heartbeat_at=long_ago, started=long_ago
    )
    assert sweep_submissions()["retried"] == 1
    submission.refresh_from_db()
    assert submission.status == Status.QUEUED and submission.attempt == 2
    assert job_of(sent.call_args)["attempt"] == 2


def test_the_sweeper_leaves_a_job_that_is_within_its_time_limit(submission, sent):
    recently = timezone.now() - timedelta(seconds=130)  # past the grace, within limit + grace
    Submission.objects.filter(pk=submission.pk).update(status=Status.RUNNING, heartbeat_at=recently)
    assert sweep_submissions() == {"sent": 0, "retried": 0, "gave_up": 0}


@override_settings(SUBMISSION_MAX_ATTEMPTS=2)
def test_the_sweeper_gives_up_after_the_attempt_cap(submission, sent):
    long_ago = timezone.now() - timedelta(hours=1)
    Submission.objects.filter(pk=submission.pk).update(
        status=Status.RUNNING, heartbeat_at=long_ago, attempt=2
    )
    assert sweep_submissions()["gave_up"] == 1
    submission.refresh_from_db()
    assert submission.status == Status.ERROR and "after 2 attempts" in submission.message
    assert not sent.called


def test_the_sweeper_resends_a_job_that_sat_in_the_queue_too_long(submission, sent):
    Submission.objects.filter(pk=submission.pk).update(
        dispatched_at=timezone.now() - timedelta(hours=2)
    )
    assert sweep_submissions()["retried"] == 1
    assert sent.call_count == 1


def test_a_run_that_died_with_its_worker_is_sent_again_as_the_next_attempt(submission, sent):
    Submission.objects.filter(pk=submission.pk).update(
        status=Status.RUNNING, heartbeat_at=timezone.now(), stage="running"
    )
    assert record_worker_lost(str(submission.pk), 1) == "retried"
    submission.refresh_from_db()
    assert submission.status == Status.QUEUED and submission.attempt == 2
    assert submission.stage == "" and submission.dispatched_at is not None
    assert job_of(sent.call_args)["attempt"] == 2


def test_a_run_lost_before_its_first_progress_counts_too(submission, sent):
    assert submission.status == Status.QUEUED
    assert record_worker_lost(str(submission.pk), 1) == "retried"
    submission.refresh_from_db()
    assert submission.attempt == 2


def test_the_same_lost_run_reported_twice_counts_once(submission, sent):
    record_worker_lost(str(submission.pk), 1)
    assert record_worker_lost(str(submission.pk), 1) == ""
    submission.refresh_from_db()
    assert submission.attempt == 2 and sent.call_count == 1


@override_settings(SUBMISSION_MAX_ATTEMPTS=3)
def test_a_run_lost_on_the_last_attempt_ends_in_an_error_that_says_so(submission, sent):
    Submission.objects.filter(pk=submission.pk).update(status=Status.RUNNING, attempt=3)
    assert record_worker_lost(str(submission.pk), 3) == "gave_up"
    submission.refresh_from_db()
    assert submission.status == Status.ERROR and submission.finished is not None
    assert "after 3 attempts" in submission.message and "worker died" in submission.message
    assert not sent.called


def test_a_lost_run_of_a_superseded_attempt_or_a_finished_submission_changes_nothing(
    submission, sent
):
    Submission.objects.filter(pk=submission.pk).update(attempt=2)
    assert record_worker_lost(str(submission.pk), 1) == ""
    record_report(report_for(submission, attempt=2))
    assert record_worker_lost(str(submission.pk), 2) == ""
    submission.refresh_from_db()
    assert submission.status == Status.PASSED and submission.attempt == 2
    assert not sent.called


def test_a_passed_submission_gets_a_verification_token_for_its_milestone(submission):
    assert make_token(submission) is None
    record_report(report_for(submission))
    submission.refresh_from_db()
    token = make_token(submission)
    payload = read_token(token)
    assert payload["m"] == "advanced-optimization.milestone" and payload["k"] == LEARNER
    assert read_token(token[:-2] + "xx") is None


def test_the_verification_check_endpoint_confirms_only_genuine_tokens(client, submission):
    record_report(report_for(submission))
    submission.refresh_from_db()
    token = make_token(submission)
    response = client.post(
        "/api/v1/verifications/check",
        {
            "tokens": {
                "advanced-optimization.milestone": token,
                "foundations.milestone": token,
                "serving-quantization.milestone": "forged",
            }
        },
        content_type="application/json",
    )
    assert response.json() == {"valid": ["advanced-optimization.milestone"]}
