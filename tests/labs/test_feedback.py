"""Feedback: an instructor's comment (typed, or picked from the lab's saved comments) shows on
the review page at once and on the learner's result page only once released, per submission
or for a whole lab of the cohort; a released override shows with its reason; and the roadmap's
verified token follows the status the learner is told."""

from __future__ import annotations

import json
import re

import pytest

from labs.models import AuditEntry, CommentTemplate, Feedback
from labs.services import override_grade, release_feedback, save_feedback
from labs.verification import make_token, read_token
from tests.labs.conftest import OTHER_LEARNER, graded

pytestmark = pytest.mark.django_db

COMMENT = "Nice fusion. <b>Watch</b> the tail."


def review_url(cohort, submission) -> str:
    return f"/instructor/cohorts/{cohort.pk}/submissions/{submission.pk}/"


def learner_page(client, submission) -> str:
    body = client.get(f"/submissions/{submission.pk}/").content.decode()
    return re.sub(r'"X-CSRFToken": "[^"]*"', "", body)  # a fresh token each time


def verified(client, submission) -> bool:
    token = make_token(submission) or ""
    body = json.dumps({"tokens": {submission.lab.milestone.slug: token}})
    response = client.post("/api/v1/verifications/check", body, content_type="application/json")
    return response.json()["valid"] == [submission.lab.milestone.slug]


def test_a_comment_shows_on_the_review_but_not_to_the_learner_until_released(
    client, lab, cohort, alice
):
    submission = graded(lab, status="failed")
    before = learner_page(client, submission)
    client.force_login(alice)
    response = client.post(review_url(cohort, submission) + "feedback/", {"comment": COMMENT})
    assert response.status_code == 302 and response["Location"].endswith("#feedback")
    review = client.get(review_url(cohort, submission)).content.decode()
    assert "Nice fusion. &lt;b&gt;Watch&lt;/b&gt; the tail." in review
    assert "Not released:" in review
    client.logout()
    assert learner_page(client, submission) == before  # unchanged until released
    assert "Nice fusion" not in before and "From your instructor" not in before


def test_released_feedback_shows_the_comment_to_the_learner(client, lab, cohort, alice):
    submission = graded(lab, status="failed")
    client.force_login(alice)
    client.post(review_url(cohort, submission) + "feedback/", {"comment": COMMENT})
    response = client.post(review_url(cohort, submission) + "release/")
    assert response.status_code == 302
    feedback = Feedback.objects.get()
    assert feedback.released_by == alice and feedback.released
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.before, entry.after) == ("release", "not released", "released")
    client.logout()
    page = learner_page(client, submission)
    assert "From your instructor" in page
    assert "Nice fusion. &lt;b&gt;Watch&lt;/b&gt; the tail." in page
    assert "<b>Watch</b>" not in page


def test_a_released_override_shows_its_status_and_reason(client, lab, cohort, alice):
    submission = graded(lab, status="passed")
    override_grade(submission=submission, status="rejected", reason="Copied the reference.",
                   by=alice, cohort=cohort)  # fmt: skip
    assert "Copied the reference" not in learner_page(client, submission)
    release_feedback(submissions=cohort.submissions(), by=alice, cohort=cohort)
    page = learner_page(client, submission)
    assert "set the final status to <strong" in page and ">Rejected</strong>" in page
    assert "(the grader said passed): “Copied the reference.”" in page


def test_nothing_to_release_without_a_comment_or_an_override(client, lab, cohort, alice):
    submission = graded(lab)
    client.force_login(alice)
    response = client.post(review_url(cohort, submission) + "release/", follow=True)
    assert "Nothing to release" in response.content.decode()
    assert not Feedback.objects.exists() and not AuditEntry.objects.exists()


def test_release_all_releases_the_labs_feedback_in_the_cohort_once(client, lab, cohort, alice):
    commented = graded(lab, status="failed")
    overridden = graded(lab, OTHER_LEARNER, status="failed")
    untouched = graded(lab, OTHER_LEARNER, status="error")
    save_feedback(submission=commented, comment="Close.", by=alice)
    override_grade(submission=overridden, status="passed", reason="Tolerance too strict.",
                   by=alice, cohort=cohort)  # fmt: skip
    client.force_login(alice)
    url = f"/instructor/cohorts/{cohort.pk}/labs/pilot/release/"
    body = client.post(url, follow=True).content.decode()
    assert "Released feedback on 2 submissions of Pilot lab." in body
    assert Feedback.objects.filter(released_at__isnull=False).count() == 2
    assert not Feedback.objects.filter(submission=untouched).exists()
    again = client.post(url, follow=True).content.decode()
    assert "Nothing to release in Pilot lab" in again
    assert AuditEntry.objects.filter(action="release").count() == 2


def test_a_saved_comment_can_be_reused_on_another_submission(client, lab, cohort, alice):
    first, second = graded(lab, status="failed"), graded(lab, OTHER_LEARNER, status="failed")
    client.force_login(alice)
    client.post(review_url(cohort, first) + "feedback/",
                {"comment": "Subtract the max first.", "save_as_template": "on"})  # fmt: skip
    template = CommentTemplate.objects.get()
    assert (template.lab, template.text) == (lab, "Subtract the max first.")
    review = client.get(review_url(cohort, second)).content.decode()
    assert f'<option value="{template.pk}">Subtract the max first.</option>' in review
    client.post(review_url(cohort, second) + "feedback/",
                {"comment": "Overflow in exp.", "template": template.pk})  # fmt: skip
    assert Feedback.objects.get(submission=second).comment == (
        "Overflow in exp.\n\nSubtract the max first."
    )


def test_verification_follows_an_override_to_failed_once_released(client, lab, cohort, alice):
    submission = graded(lab, status="passed")
    token = make_token(submission)
    assert token and verified(client, submission)
    override_grade(submission=submission, status="failed", reason="Hard-coded output.",
                   by=alice, cohort=cohort)  # fmt: skip
    submission.refresh_from_db()
    # Not released: the learner is still told "passed", and the roadmap agrees.
    assert read_token(token) is not None
    release_feedback(submissions=cohort.submissions(), by=alice, cohort=cohort)
    submission.refresh_from_db()
    assert read_token(token) is None and make_token(submission) is None
    assert not verified(client, submission)
    assert "marked <strong>verified</strong>" not in learner_page(client, submission)


def test_a_released_override_to_passed_verifies(client, lab, cohort, alice):
    submission = graded(lab, status="failed")
    assert make_token(submission) is None
    override_grade(submission=submission, status="passed", reason="Tolerance too strict.",
                   by=alice, cohort=cohort)  # fmt: skip
    release_feedback(submissions=cohort.submissions(), by=alice, cohort=cohort)
    submission.refresh_from_db()
    assert verified(client, submission)
    assert "marked <strong>verified</strong>" in learner_page(client, submission)


def test_editing_a_released_comment_is_audited_with_the_text_before_and_after(
    client, lab, cohort, alice
):
    submission = graded(lab, status="failed")
    client.force_login(alice)
    url = review_url(cohort, submission) + "feedback/"
    client.post(url, {"comment": "First draft."})
    client.post(url, {"comment": "Second draft."})  # not released yet: not audited
    assert not AuditEntry.objects.exists()
    client.post(review_url(cohort, submission) + "release/")
    response = client.post(url, {"comment": "Corrected:\nthe tail is fine."}, follow=True)
    assert "the change is in the audit trail" in response.content.decode()
    edit = AuditEntry.objects.get(action="comment")
    assert (edit.actor, edit.cohort, edit.field) == (alice, cohort, "comment")
    assert (edit.before, edit.after) == ("Second draft.", "Corrected:\nthe tail is fine.")
    assert edit.reason == "Edited after release: the learner sees the new text."
    body = client.get(review_url(cohort, submission)).content.decode()
    assert (
        "Released comment edited: comment Second draft. → Corrected:<br>the tail is fine." in body
    )
    client.post(url, {"comment": "Corrected:\nthe tail is fine."})  # unchanged: no entry
    assert AuditEntry.objects.filter(action="comment").count() == 1


def test_a_long_released_comment_is_kept_whole_in_the_audit_trail(lab, cohort, alice):
    submission = graded(lab, status="failed")
    save_feedback(submission=submission, comment="a" * 3000, by=alice)
    release_feedback(submissions=cohort.submissions(), by=alice, cohort=cohort)
    save_feedback(submission=submission, comment="b" * 3000, by=alice, cohort=cohort)
    edit = AuditEntry.objects.get(action="comment")
    assert (edit.before, edit.after) == ("a" * 3000, "b" * 3000)
