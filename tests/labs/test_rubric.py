"""Rubric grading: an instructor scores each rubric item of a submission (0 to the item's
maximum, with a comment), beside the learner's written answer taken from the submitted
notebook and shown as text; every change is audited; a regrade never touches the scores;
saving works in place with htmx and as a plain form; reusable comments are kept per item; and
the learner sees the points and comments only once the feedback is released."""

from __future__ import annotations

import re

import pytest

from labs.catalog import sync_labs
from labs.models import AuditEntry, CommentTemplate, Feedback, Lab, RubricScore
from labs.rubric import RubricRefused, score_rubric_item, written_answers
from labs.services import regrade_submission, release_feedback, save_feedback
from labs.tasks import record_report
from runner.labspec import load_lab_spec
from tests.labs.conftest import ANSWER, REPO_NOTEBOOKS, answered, graded, report_for

pytestmark = pytest.mark.django_db


def review_url(cohort, submission) -> str:
    return f"/instructor/cohorts/{cohort.pk}/submissions/{submission.pk}/"


def score_url(cohort, submission, item="fusions") -> str:
    return f"{review_url(cohort, submission)}rubric/{item}/"


def learner_page(client, submission) -> str:
    body = client.get(f"/submissions/{submission.pk}/").content.decode()
    return re.sub(r'"X-CSRFToken": "[^"]*"', "", body)  # a fresh token each time


def score(submission, alice, cohort, item="fusions", points=3, comment=""):
    return score_rubric_item(submission=submission, item=item, points=points, comment=comment,
                             by=alice, cohort=cohort)  # fmt: skip


# --- Scoring and its audit trail -----------------------------------------------------------


@pytest.mark.parametrize("points", [-1, 5, 100])
def test_points_outside_zero_to_the_items_maximum_are_refused(rubric_lab, cohort, alice, points):
    submission = answered(rubric_lab)
    with pytest.raises(RubricRefused, match="between 0 and 4 points"):
        score(submission, alice, cohort, points=points)
    assert not RubricScore.objects.exists() and not AuditEntry.objects.exists()


@pytest.mark.parametrize("points", [0, 4])
def test_points_at_either_bound_are_kept(rubric_lab, cohort, alice, points):
    submission = answered(rubric_lab)
    score(submission, alice, cohort, points=points)
    assert RubricScore.objects.get().points == points


def test_an_item_the_lab_does_not_declare_is_refused(rubric_lab, cohort, alice):
    with pytest.raises(RubricRefused, match="no item “style”"):
        score(answered(rubric_lab), alice, cohort, item="style")


def test_every_change_of_points_or_comment_is_an_audit_entry(rubric_lab, cohort, alice):
    submission = answered(rubric_lab)
    [created] = score(submission, alice, cohort, points=3)
    assert (created.action, created.field, created.before, created.after) == (
        "rubric", "fusions", "not scored", "3/4",
    )  # fmt: skip
    assert (created.actor, created.actor_name, created.cohort) == (alice, "alice", cohort)
    assert created.reason == ""  # not released: the learner has not seen anything
    [commented] = score(submission, alice, cohort, points=3, comment="Name the reduction.")
    assert (commented.action, commented.before, commented.after) == (
        "rubric-comment", "(none)", "Name the reduction.",
    )  # fmt: skip
    assert score(submission, alice, cohort, points=3, comment="Name the reduction.") == []
    both = score(submission, alice, cohort, points=4, comment="Good.")
    assert [(e.action, e.before, e.after) for e in both] == [
        ("rubric", "3/4", "4/4"), ("rubric-comment", "Name the reduction.", "Good."),
    ]  # fmt: skip
    removed = score(submission, alice, cohort, points=None, comment="")
    assert [(e.before, e.after) for e in removed] == [("4/4", "not scored"), ("Good.", "(none)")]
    assert not RubricScore.objects.exists()
    assert AuditEntry.objects.filter(submission=submission).count() == 6


def test_a_comment_needs_points(rubric_lab, cohort, alice):
    with pytest.raises(RubricRefused, match=r"Give points \(0 to 4\) with the comment"):
        score(answered(rubric_lab), alice, cohort, points=None, comment="Close.")


def test_a_change_after_release_says_the_learner_sees_it(rubric_lab, cohort, alice):
    submission = answered(rubric_lab)
    score(submission, alice, cohort, points=2)
    release_feedback(submissions=cohort.submissions(), by=alice, cohort=cohort)
    [entry] = score(submission, alice, cohort, points=3)
    assert entry.reason == "Changed after release: the learner sees the new value."


def test_a_regrade_never_touches_the_rubric_scores(rubric_lab, cohort, alice, sent):
    submission = answered(rubric_lab, status="failed")
    score(submission, alice, cohort, points=3, comment="Right kernels.")
    score(submission, alice, cohort, item="why", points=1)
    regrade_submission(submission=submission, by=alice, cohort=cohort)
    submission.refresh_from_db()
    assert submission.status == "queued" and submission.report is None
    assert record_report(report_for(submission, status="passed"))
    submission.refresh_from_db()
    assert submission.status == "passed"
    kept = {s.item: (s.points, s.comment, s.by) for s in RubricScore.objects.all()}
    assert kept == {"fusions": (3, "Right kernels.", alice), "why": (1, "", alice)}


# --- The learner's written answer ----------------------------------------------------------


def test_the_answer_is_the_text_of_the_tagged_markdown_cells_only():
    from tests.labs.conftest import notebook_with_answer

    answers = written_answers(notebook_with_answer())
    assert answers == {"explanation": [ANSWER]}  # not the tagged code cell, not untagged notes
    assert written_answers("not json") == {} and written_answers('{"cells": 3}') == {}


def test_the_review_shows_each_item_with_the_answer_as_escaped_text(
    client, rubric_lab, cohort, alice
):
    submission = answered(rubric_lab)
    client.force_login(alice)
    body = client.get(review_url(cohort, submission)).content.decode()
    assert 'id="rubric"' in body and "Names the fused kernels" in body
    assert "Names each fused kernel and its ops." in body and "(up to 4 points)" in body
    escaped = "The &lt;script&gt;alert(1)&lt;/script&gt; **fused** kernel"
    assert body.count(escaped) == 1  # shown once, under the first item with the tag
    assert "<script>alert(1)</script>" not in body
    assert "shown under “Names the fused kernels”" in body
    assert "code tagged explanation" not in body and "An untagged note." not in body
    assert "Rubric total: not scored yet." in body


def test_the_review_says_when_the_notebook_has_no_answer_cell(client, rubric_lab, cohort, alice):
    submission = graded(rubric_lab)  # the notebook has no cell tagged explanation
    client.force_login(alice)
    body = client.get(review_url(cohort, submission)).content.decode()
    assert "has no markdown cell tagged <code>explanation</code>" in body


def test_a_lab_without_a_rubric_has_no_rubric_panel(client, lab, cohort, alice):
    submission = graded(lab)
    client.force_login(alice)
    assert 'id="rubric"' not in client.get(review_url(cohort, submission)).content.decode()


# --- Saving from the review page -----------------------------------------------------------


def test_a_plain_form_post_saves_and_returns_to_the_item(client, rubric_lab, cohort, alice):
    submission = answered(rubric_lab)
    client.force_login(alice)
    response = client.post(
        score_url(cohort, submission), {"fusions-points": "3", "fusions-comment": "Good."}
    )
    assert response.status_code == 302 and response["Location"].endswith("#rubric-fusions")
    stored = RubricScore.objects.get()
    assert (stored.item, stored.points, stored.comment, stored.by) == ("fusions", 3, "Good.", alice)
    body = client.get(review_url(cohort, submission)).content.decode()
    assert "Names the fused kernels: Saved." in body
    assert "Rubric total: <strong>3 of 10 points</strong> (1 of 3 items scored)" in body
    assert "Rubric score: fusions not scored → 3/4" in body


@pytest.mark.parametrize(
    ("points", "comment", "complaint"),
    [
        ("7", "Too generous?", "Give between 0 and 4 points for “Names the fused kernels”."),
        ("-1", "Negative", "Give between 0 and 4 points for “Names the fused kernels”."),
        ("2.5", "Half", "Enter the points as a whole number from 0 to 4."),
        ("", "Only a comment", "Give points (0 to 4) with the comment."),
    ],
)
def test_bad_points_are_refused_and_what_was_typed_comes_back(
    client, rubric_lab, cohort, alice, points, comment, complaint
):
    submission = answered(rubric_lab)
    client.force_login(alice)
    data = {"fusions-points": points, "fusions-comment": comment}
    response = client.post(score_url(cohort, submission), data)
    assert response.status_code == 400
    body = response.content.decode()
    assert "The score was not saved:" in body and complaint in body
    assert 'id="id_fusions-points" min="0" max="4"' in body
    assert f'value="{points}"' in body and f">{comment}</textarea>" in body
    assert not RubricScore.objects.exists() and not AuditEntry.objects.exists()


def test_htmx_saves_in_place_and_updates_the_total_and_the_audit_trail(
    client, rubric_lab, cohort, alice
):
    submission = answered(rubric_lab)
    client.force_login(alice)
    response = client.post(
        score_url(cohort, submission, "evidence"), {"evidence-points": "2"},
        headers={"HX-Request": "true"},
    )  # fmt: skip
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body and body.lstrip().startswith('<div id="rubric-score-evidence"')
    assert "Saved. Cites the trace: 2 of 3 points." in body
    assert 'id="rubric-total" role="status" hx-swap-oob="true"' in body
    assert "2 of 10 points" in body
    assert '<section class="card" id="audit"' in body and "evidence not scored → 2/3" in body
    assert "alert(1)" not in body  # the learner's answer never travels through htmx
    assert RubricScore.objects.get().points == 2


def test_htmx_errors_come_back_in_the_fragment(client, rubric_lab, cohort, alice):
    submission = answered(rubric_lab)
    client.force_login(alice)
    response = client.post(
        score_url(cohort, submission, "why"), {"why-points": "9", "why-comment": "Kept"},
        headers={"HX-Request": "true"},
    )  # fmt: skip
    body = response.content.decode()
    assert response.status_code == 200  # htmx swaps only 2xx answers
    assert 'role="alert"' in body and "Give between 0 and 3 points" in body
    assert 'value="9"' in body and ">Kept</textarea>" in body
    assert not RubricScore.objects.exists()


def test_the_review_page_posts_each_item_with_htmx_and_a_plain_fallback(
    client, rubric_lab, cohort, alice
):
    submission = answered(rubric_lab)
    client.force_login(alice)
    body = client.get(review_url(cohort, submission)).content.decode()
    url = score_url(cohort, submission)
    assert f'<form method="post" action="{url}" hx-post="{url}"' in body
    assert 'hx-target="#rubric-score-fusions" hx-swap="outerHTML"' in body


def test_an_item_the_lab_does_not_declare_is_not_found(client, rubric_lab, cohort, alice):
    submission = answered(rubric_lab)
    client.force_login(alice)
    assert client.post(score_url(cohort, submission, "style"), {}).status_code == 404


def test_saved_comments_are_reused_per_rubric_item(client, rubric_lab, cohort, alice):
    from tests.labs.conftest import OTHER_LEARNER

    first, second = answered(rubric_lab), answered(rubric_lab, OTHER_LEARNER)
    client.force_login(alice)
    client.post(score_url(cohort, first), {"fusions-points": "2",
        "fusions-comment": "Say which ops the reduction kernel fused.",
        "fusions-save_as_template": "on"})  # fmt: skip
    template = CommentTemplate.objects.get()
    assert (template.rubric_item, template.lab) == ("fusions", rubric_lab)
    body = client.get(review_url(cohort, second)).content.decode()
    option = f'<option value="{template.pk}">Say which ops the reduction kernel fused.</option>'
    assert body.count(option) == 1
    assert 'id="id_fusions-template"' in body and 'id="id_evidence-template"' not in body
    assert 'id="id_template"' not in body  # not offered as a general comment either
    client.post(score_url(cohort, second),
                {"fusions-points": "1", "fusions-template": template.pk})  # fmt: skip
    assert RubricScore.objects.get(submission=second).comment == template.text


# --- What the learner sees -----------------------------------------------------------------


def test_the_learner_sees_rubric_points_only_once_released(client, rubric_lab, cohort, alice):
    submission = answered(rubric_lab, status="failed")
    before = learner_page(client, submission)
    score(submission, alice, cohort, points=3, comment="Close: <b>name</b> the reduction.")
    score(submission, alice, cohort, item="why", points=2)
    assert learner_page(client, submission) == before  # nothing shows until released
    assert "Rubric" not in before
    assert release_feedback(submissions=cohort.submissions(), by=alice, cohort=cohort) == 1
    page = learner_page(client, submission)
    assert "From your instructor" in page and "Rubric: 5 of 10 points" in page
    assert "Names the fused kernels" in page and "3 of 4" in page and "2 of 3" in page
    assert "Cites the trace" in page and "not scored" in page
    assert "Close: &lt;b&gt;name&lt;/b&gt; the reduction." in page
    assert "Bytes moved and launches." in page  # the description says what earns the points
    assert "alert(1)" not in page  # their own answer is not repeated back


def test_release_counts_rubric_scores_as_feedback(client, rubric_lab, cohort, alice):
    submission = answered(rubric_lab)
    score(submission, alice, cohort, points=1)
    client.force_login(alice)
    client.post(review_url(cohort, submission) + "release/")
    assert Feedback.objects.get(submission=submission).released
    assert AuditEntry.objects.filter(action="release").count() == 1


def test_a_released_comment_alone_shows_no_empty_rubric(client, rubric_lab, cohort, alice):
    submission = answered(rubric_lab)
    save_feedback(submission=submission, comment="See me.", by=alice)
    release_feedback(submissions=cohort.submissions(), by=alice, cohort=cohort)
    page = learner_page(client, submission)
    assert "See me." in page and "Rubric" not in page


# --- The lab spec's rubric reaches the Lab row ---------------------------------------------


def test_load_labs_carries_the_kernels_labs_rubric(curriculum):
    spec = load_lab_spec(REPO_NOTEBOOKS / "kernels")
    data = spec.to_dict() | {"starter_notebook": "{}"}
    sync_labs([data])
    lab = Lab.objects.get(slug="kernels")
    assert [(i["name"], i["points"], i["answer_tag"]) for i in lab.rubric] == [
        ("fusions", 4, "explanation"), ("evidence", 3, "explanation"), ("why", 3, "explanation"),
    ]  # fmt: skip
    assert lab.rubric_max == 10
    edited = data | {"rubric": data["rubric"][:1]}
    assert sync_labs([edited])["updated"] == 1
    lab.refresh_from_db()
    assert [i["name"] for i in lab.rubric] == ["fusions"]
    assert sync_labs([edited])["unchanged"] == 1


def test_a_lab_spec_without_a_rubric_loads_an_empty_one(curriculum):
    spec = load_lab_spec(REPO_NOTEBOOKS / "softmax")
    sync_labs([spec.to_dict() | {"starter_notebook": "{}"}])
    assert Lab.objects.get(slug="softmax").rubric == []
