"""Regrades: one submission or a whole lab of the cohort goes back to the queue with the next
attempt and is dispatched again; never while it is queued or running; the report it replaces is
kept (the review says "was X, now Y"); an override survives; every regrade is audited; "Regrade
all" asks for confirmation first (a POST without it does nothing); the cohort page shows a
batch's progress and polls only while it runs."""

from __future__ import annotations

import pytest
from django.test import override_settings
from django.utils import timezone

from labs.models import AuditEntry, GradeOverride, Regrade, RegradeBatch, Submission
from labs.regrades import REPORTS_KEPT
from labs.services import (
    RegradeRefused,
    SubmissionRefused,
    check_rate_limits,
    override_grade,
    regrade_lab,
    regrade_submission,
)
from labs.tasks import record_report, retry_or_give_up
from tests.labs.conftest import CAROL, OTHER_LEARNER, graded, job_of, report_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def regrade_now(django_capture_on_commit_callbacks):
    """Run the dispatch that a regrade schedules for after the commit."""

    def run(**kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return regrade_submission(**kwargs)

    return run


def review_url(cohort, submission) -> str:
    return f"/instructor/cohorts/{cohort.pk}/submissions/{submission.pk}/"


def test_a_regrade_resets_the_submission_keeps_the_report_and_dispatches_it(
    lab, cohort, alice, sent, regrade_now
):
    submission = graded(lab, status="failed", speedup=1.1)
    old_report = submission.report
    regrade = regrade_now(submission=submission, by=alice, cohort=cohort, reason="Grader fix.")
    submission.refresh_from_db()
    assert (submission.status, submission.attempt, submission.report) == ("queued", 2, None)
    assert submission.finished is None and submission.dispatched_at is not None
    assert (regrade.attempt, regrade.previous_status) == (2, "failed")
    assert regrade.previous_report == old_report and regrade.previous_speedup == 1.1
    job = job_of(sent.call_args)
    assert (job["submission_id"], job["attempt"]) == (str(submission.pk), 2)
    assert job["notebook"] == {}  # the same notebook as uploaded
    # A report of the attempt it replaced changes nothing; the new attempt's is recorded.
    assert not record_report(report_for(submission, status="passed", attempt=1))
    assert record_report(report_for(submission, status="passed"))


def test_a_submission_queued_or_running_is_never_regraded(lab, cohort, alice, sent):
    for status in ("queued", "running"):
        active = Submission.objects.create(
            lab=lab, learner_key=cohort.members()[0].learner_key, notebook="{}", status=status
        )
        with pytest.raises(RegradeRefused, match="queued or running"):
            regrade_submission(submission=active, by=alice, cohort=cohort)
        active.refresh_from_db()
        assert (active.status, active.attempt) == (status, 1)
    assert not Regrade.objects.exists() and not AuditEntry.objects.exists()
    assert not sent.called


def test_the_regrade_button_is_refused_while_it_runs(client, lab, cohort, alice, sent):
    submission = graded(lab)
    client.force_login(alice)
    url = review_url(cohort, submission) + "regrade/"
    assert client.post(url).status_code == 302
    refused = client.post(url, follow=True)
    assert "queued or running; regrade it once it ends" in refused.content.decode()
    assert Submission.objects.get(pk=submission.pk).attempt == 2
    assert Regrade.objects.count() == 1


def test_every_regrade_is_an_audit_entry(client, lab, cohort, alice, sent):
    submission = graded(lab, status="error")
    client.force_login(alice)
    client.post(review_url(cohort, submission) + "regrade/", {"reason": "Fixed the grader."})
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.actor, entry.cohort, entry.submission) == (
        "regrade", alice, cohort, submission,
    )  # fmt: skip
    assert (entry.before, entry.after, entry.reason) == ("1 (error)", "2 (queued)",
                                                         "Fixed the grader.")  # fmt: skip
    body = client.get(review_url(cohort, submission)).content.decode()
    assert "Regrade: attempt 1 (error) → 2 (queued)" in body


def test_the_review_says_what_the_regrade_changed(client, lab, cohort, alice, sent):
    submission = graded(lab, status="failed", speedup=1.1)
    regrade_submission(submission=submission, by=alice, cohort=cohort)
    client.force_login(alice)
    body = client.get(review_url(cohort, submission)).content.decode()
    assert "regraded: was failed (1.10×), regrading…" in body
    assert "queued or running; it can be regraded once it has finished" in body
    submission.refresh_from_db()
    assert record_report(report_for(submission, status="passed", metrics={
        "timing": {"speedup": {"value": 1.5}}}))  # fmt: skip
    body = client.get(review_url(cohort, submission)).content.decode()
    assert "regraded: was failed (1.10×), now passed (1.50×)" in body


def test_an_override_survives_a_regrade(lab, cohort, alice, sent):
    submission = graded(lab, status="passed")
    override_grade(submission=submission, status="failed", reason="Hard-coded output.",
                   by=alice, cohort=cohort)  # fmt: skip
    regrade_submission(submission=submission, by=alice, cohort=cohort)
    submission.refresh_from_db()
    assert submission.final_status == "failed"  # still counts while it runs
    assert record_report(report_for(submission, status="passed"))
    submission.refresh_from_db()
    assert submission.status == "passed" and submission.final_status == "failed"
    assert GradeOverride.objects.get().reason == "Hard-coded output."


def test_only_the_latest_reports_are_kept_whole(lab, cohort, alice, sent):
    submission = graded(lab, status="failed")
    for _ in range(REPORTS_KEPT + 2):
        regrade_submission(submission=submission, by=alice, cohort=cohort)
        submission.refresh_from_db()
        assert record_report(report_for(submission, status="failed"))
        submission.refresh_from_db()
    rows = list(submission.regrades.all())
    assert len(rows) == REPORTS_KEPT + 2
    assert all(row.previous_report for row in rows[:REPORTS_KEPT])
    assert not any(row.previous_report for row in rows[REPORTS_KEPT:])
    assert all(row.previous_status == "failed" for row in rows)


@override_settings(SUBMISSION_MAX_ATTEMPTS=2)
def test_the_retry_cap_counts_the_runs_since_the_last_regrade(lab, cohort, alice, sent):
    submission = graded(lab, status="failed")
    regrade_submission(submission=submission, by=alice, cohort=cohort)
    regrade_submission(submission=_finished(submission), by=alice, cohort=cohort)
    submission.refresh_from_db()
    assert submission.attempt == 3
    Submission.objects.filter(pk=submission.pk).update(status="running")
    submission.refresh_from_db()
    assert retry_or_give_up(submission, now=timezone.now()) == "retried"  # run 2 of 2
    submission.refresh_from_db()
    Submission.objects.filter(pk=submission.pk).update(status="running")
    submission.refresh_from_db()
    assert retry_or_give_up(submission, now=timezone.now()) == "gave_up"


def _finished(submission):
    submission.refresh_from_db()
    assert record_report(report_for(submission, status="failed"))
    submission.refresh_from_db()
    return submission


def test_regrading_a_lab_sends_every_finished_submission_of_the_cohort(
    lab, cohort, alice, sent, django_capture_on_commit_callbacks
):
    mine = [graded(lab, status="failed"), graded(lab, OTHER_LEARNER, status="passed")]
    running = Submission.objects.create(lab=lab, learner_key=OTHER_LEARNER, notebook="{}",
                                        status="running")  # fmt: skip
    outsider = graded(lab, CAROL)
    with django_capture_on_commit_callbacks(execute=True):
        batch = regrade_lab(cohort=cohort, lab=lab, by=alice)
    assert batch.count == 2 and sent.call_count == 2
    assert {job_of(call)["submission_id"] for call in sent.call_args_list} == {
        str(s.pk) for s in mine
    }
    assert set(Submission.objects.filter(status="queued").values_list("pk", flat=True)) == {
        s.pk for s in mine
    }
    for untouched in (running, outsider):
        untouched.refresh_from_db()
        assert untouched.attempt == 1
    assert AuditEntry.objects.filter(action="regrade").count() == 2


def test_regrading_a_lab_with_nothing_finished_is_refused(lab, cohort, alice, sent):
    with pytest.raises(RegradeRefused, match="No finished submission"):
        regrade_lab(cohort=cohort, lab=lab, by=alice)
    assert not RegradeBatch.objects.exists()


def test_the_cohort_page_shows_a_batchs_progress_and_polls_while_it_runs(
    client, lab, cohort, alice, sent
):
    first, second = graded(lab, status="failed"), graded(lab, OTHER_LEARNER, status="failed")
    client.force_login(alice)
    response = client.post(
        f"/instructor/cohorts/{cohort.pk}/labs/pilot/regrade/", {"confirm": "yes"}, follow=True
    )
    body = response.content.decode()
    assert "Regrading 2 submissions of Pilot lab" in body
    assert "0 of 2 regraded (running" in body and 'hx-trigger="every 5s"' in body
    first.refresh_from_db()
    assert record_report(report_for(first, status="passed"))
    url = f"/instructor/cohorts/{cohort.pk}/"
    poll = client.get(url, headers={"HX-Request": "true"})
    assert poll.status_code == 200 and "1 of 2 regraded" in poll.content.decode()
    assert "<html" not in poll.content.decode()
    second.refresh_from_db()
    assert record_report(report_for(second, status="failed"))
    done = client.get(url, headers={"HX-Request": "true"})
    assert done.status_code == 286 and "2 of 2 regraded (done)" in done.content.decode()
    assert 'hx-trigger="every 5s"' not in client.get(url).content.decode()


@override_settings(SUBMISSIONS_ACTIVE_PER_LEARNER=1)
def test_a_regrade_running_does_not_stop_the_learner_submitting(lab, cohort, alice, sent):
    submission = graded(lab, status="failed")
    regrade_submission(submission=submission, by=alice, cohort=cohort)
    check_rate_limits(learner_key=submission.learner_key, client_ip=None)  # not refused
    Submission.objects.create(lab=lab, learner_key=submission.learner_key, notebook="{}")
    with pytest.raises(SubmissionRefused):
        check_rate_limits(learner_key=submission.learner_key, client_ip=None)


def test_regrade_all_asks_for_confirmation_first(client, lab, cohort, alice, sent):
    graded(lab, status="failed")
    graded(lab, OTHER_LEARNER, status="passed")
    Submission.objects.create(lab=lab, learner_key=OTHER_LEARNER, notebook="{}", status="running")
    client.force_login(alice)
    cohort_page = client.get(f"/instructor/cohorts/{cohort.pk}/").content.decode()
    url = f"/instructor/cohorts/{cohort.pk}/labs/pilot/regrade/"
    assert f'<a class="button" href="{url}"' in cohort_page
    page = client.get(url)
    body = page.content.decode()
    assert page.status_code == 200
    assert "2 finished submissions of Pilot lab" in body and "1 still queued or running" in body
    assert 'name="confirm" value="yes"' in body and "Regrade 2 submissions" in body
    assert not Regrade.objects.exists() and not sent.called


@pytest.mark.parametrize("data", [{}, {"confirm": ""}, {"confirm": "no"}, {"reason": "x"}])
def test_a_regrade_all_post_without_the_confirmation_regrades_nothing(
    client, lab, cohort, alice, sent, data
):
    submission = graded(lab, status="failed")
    client.force_login(alice)
    response = client.post(f"/instructor/cohorts/{cohort.pk}/labs/pilot/regrade/", data)
    assert response.status_code == 200
    assert "Nothing was regraded: confirm below to start." in response.content.decode()
    submission.refresh_from_db()
    assert (submission.status, submission.attempt) == ("failed", 1)
    assert not RegradeBatch.objects.exists() and not AuditEntry.objects.exists()
    assert not sent.called


def test_the_confirmed_regrade_all_keeps_its_reason(client, lab, cohort, alice, sent):
    graded(lab, status="failed")
    client.force_login(alice)
    url = f"/instructor/cohorts/{cohort.pk}/labs/pilot/regrade/"
    response = client.post(url, {"confirm": "yes", "reason": "Grader fix #12."})
    assert response.status_code == 302 and response["Location"].endswith("#regrades")
    assert RegradeBatch.objects.get().count == 1
    assert AuditEntry.objects.get().reason == "Grader fix #12."
