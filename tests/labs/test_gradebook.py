"""The gradebook: current members x active labs; per cell the best attempt (passed > failed >
timeout > error > rejected, then the higher speedup, then the latest), an override counted
and marked, the number of attempts, colour plus text, filters, sorting, and polling only
while a submission of the cohort is queued or running."""

from __future__ import annotations

import pytest

from labs.gradebook import build_gradebook
from labs.models import Lab, Submission
from labs.services import override_grade
from tests.labs.conftest import CAROL, LEARNER, OTHER_LEARNER, graded

pytestmark = pytest.mark.django_db


def cell(book, learner=LEARNER, lab="pilot"):
    row = next(r for r in book.rows if r.member.learner_key == learner)
    return next(c for c in row.cells if c.lab.slug == lab)


def page(client, cohort, query="", **headers) -> str:
    url = f"/instructor/cohorts/{cohort.pk}/gradebook/{query}"
    return client.get(url, headers=headers).content.decode()


@pytest.fixture
def second_lab(lab):
    return Lab.objects.create(
        slug="second", title="Second lab", summary="s", device_classes=["cpu"], position=2,
        starter_filename="s.ipynb", starter_notebook="{}",
    )  # fmt: skip


@pytest.mark.parametrize(
    "statuses, best",
    [
        (["error", "passed", "failed"], "passed"),
        (["error", "failed", "timeout"], "failed"),
        (["rejected", "error", "timeout"], "timeout"),
        (["rejected", "error"], "error"),
        (["rejected"], "rejected"),
    ],
)
def test_the_best_attempt_is_the_best_status(lab, cohort, statuses, best):
    for minutes, status in enumerate(statuses):
        graded(lab, status=status, minutes_ago=minutes)
    the_cell = cell(build_gradebook(cohort))
    assert the_cell.status == best and len(the_cell.attempts) == len(statuses)


def test_between_equal_statuses_the_higher_speedup_then_the_latest_wins(lab, cohort):
    graded(lab, speedup=1.3, minutes_ago=30)
    fastest = graded(lab, speedup=2.1, minutes_ago=20)
    graded(lab, speedup=1.7, minutes_ago=10)
    assert cell(build_gradebook(cohort)).best == fastest
    older = graded(lab, OTHER_LEARNER, "failed", minutes_ago=5)
    newer = graded(lab, OTHER_LEARNER, "failed", minutes_ago=1)
    assert cell(build_gradebook(cohort), OTHER_LEARNER).best == newer != older


def test_a_queued_or_running_attempt_never_hides_a_finished_one(lab, cohort):
    graded(lab, status="rejected", minutes_ago=5)
    Submission.objects.create(lab=lab, learner_key=LEARNER, notebook="{}", status="running")
    the_cell = cell(build_gradebook(cohort))
    assert the_cell.status == "rejected" and the_cell.active == 1
    only_running = cell(build_gradebook(cohort), OTHER_LEARNER)
    assert only_running.status == "none"
    Submission.objects.create(lab=lab, learner_key=OTHER_LEARNER, notebook="{}")
    assert cell(build_gradebook(cohort), OTHER_LEARNER).status == "queued"


def test_an_override_decides_the_best_attempt_and_is_marked(lab, cohort, alice, client):
    failed = graded(lab, status="failed", speedup=1.1, minutes_ago=10)
    graded(lab, status="failed", speedup=1.0, minutes_ago=5)
    override_grade(submission=failed, status="passed", reason="ok", by=alice, cohort=cohort)
    the_cell = cell(build_gradebook(cohort))
    assert the_cell.best == failed and the_cell.status == "passed" and the_cell.overridden
    client.force_login(alice)
    body = page(client, cohort)
    marked = (
        '<span class="cell-status">✓ Passed</span> <span class="badge override">override</span>'
    )
    assert marked in body


def test_rejecting_the_best_attempt_shows_the_next_best_and_says_so(lab, cohort, alice, client):
    earlier = graded(lab, status="failed", minutes_ago=10)
    best = graded(lab, status="passed", minutes_ago=5)
    override_grade(submission=best, status="rejected", reason="copied", by=alice, cohort=cohort)
    the_cell = cell(build_gradebook(cohort))
    assert the_cell.best == earlier and not the_cell.overridden
    assert the_cell.overridden_attempts == 1
    client.force_login(alice)
    assert "2 attempts, 1 overridden" in page(client, cohort)


def test_each_cell_shows_colour_and_text_attempts_speedup_and_links_the_review(
    client, alice, lab, cohort
):
    graded(lab, status="failed", minutes_ago=3)
    best = graded(lab, status="passed", speedup=1.8456, minutes_ago=2)
    graded(lab, OTHER_LEARNER, status="error")
    client.force_login(alice)
    body = page(client, cohort)
    assert f'href="/instructor/cohorts/{cohort.pk}/submissions/{best.pk}/"' in body
    assert '<td class="cell cell-passed" data-lab="pilot">' in body  # the colour
    assert "✓ Passed" in body and "1.85×" in body and "2 attempts" in body  # the text
    assert '<td class="cell cell-error" data-lab="pilot">' in body and "! Error" in body
    assert "1 attempt<" in body


def test_learners_outside_the_cohort_and_former_members_are_not_in_it(lab, cohort, alice):
    graded(lab, CAROL)
    cohort.memberships.get(learner_key=OTHER_LEARNER).remove(by=alice)
    book = build_gradebook(cohort)
    assert [row.member.learner_key for row in book.rows] == [LEARNER]


def test_filters_keep_one_lab_and_learners_with_a_status(lab, second_lab, cohort):
    graded(lab, status="passed")
    graded(second_lab, OTHER_LEARNER, status="failed")
    assert [lab.slug for lab in build_gradebook(cohort, lab="second").labs] == ["second"]
    assert len(build_gradebook(cohort, lab="no-such-lab").labs) == 2  # unknown: ignored
    failed = build_gradebook(cohort, status="failed")
    assert [r.member.display_name for r in failed.rows] == ["Grace"]
    not_started = build_gradebook(cohort, lab="pilot", status="none")
    assert [r.member.display_name for r in not_started.rows] == ["Grace"]
    Submission.objects.create(lab=second_lab, learner_key=LEARNER, notebook="{}")
    running = build_gradebook(cohort, status="active")
    assert [r.member.display_name for r in running.rows] == ["Ada"]


def test_rows_sort_by_name_or_by_labs_passed(lab, second_lab, cohort):
    cohort.join(learner_key=CAROL, display_name="barbara")
    graded(lab, OTHER_LEARNER, status="passed")
    graded(second_lab, OTHER_LEARNER, status="passed")
    graded(lab, CAROL, status="passed")
    by_name = [r.member.display_name for r in build_gradebook(cohort).rows]
    assert by_name == ["Ada", "barbara", "Grace"]  # case-insensitive
    by_passed = build_gradebook(cohort, sort="passed").rows
    assert [(r.member.display_name, r.passed) for r in by_passed] == [
        ("Grace", 2),
        ("barbara", 1),
        ("Ada", 0),
    ]


def test_the_filter_form_swaps_the_table_and_keeps_the_query_for_polling(
    client, alice, lab, cohort
):
    client.force_login(alice)
    body = page(client, cohort)
    assert 'hx-target="#gradebook"' in body and 'hx-push-url="true"' in body
    fragment = page(client, cohort, "?status=failed&sort=passed", HX_Request="true")
    assert "<html" not in fragment and 'id="gradebook"' in fragment


def test_the_table_polls_only_while_a_submission_is_queued_or_running(client, alice, lab, cohort):
    client.force_login(alice)
    graded(lab)
    assert 'hx-trigger="every 5s"' not in page(client, cohort)
    running = Submission.objects.create(lab=lab, learner_key=OTHER_LEARNER, notebook="{}")
    body = page(client, cohort, "?sort=passed")
    polling = 'hx-get="/instructor/cohorts/{}/gradebook/?sort=passed" hx-trigger="every 5s"'
    assert polling.format(cohort.pk) in body
    assert "this table refreshes every 5 s" in body
    url = f"/instructor/cohorts/{cohort.pk}/gradebook/?sort=passed"
    poll = client.get(url, headers={"HX-Request": "true"})
    assert poll.status_code == 200 and 'hx-trigger="every 5s"' in poll.content.decode()
    assert "1 running" in poll.content.decode()

    Submission.objects.filter(pk=running.pk).update(status="passed")
    done = client.get(url, headers={"HX-Request": "true"})
    assert done.status_code == 286  # htmx stops polling
    assert 'hx-trigger="every 5s"' not in done.content.decode()
    assert "No submission is queued or running." in done.content.decode()


def test_the_speedup_read_in_the_query_matches_the_report(lab, cohort):
    submission = graded(lab, speedup=1.23456, mismatched=7)
    light = Submission.objects.light().get(pk=submission.pk)
    full = Submission.objects.get(pk=submission.pk)
    assert light.speedup == full.speedup == pytest.approx(1.23456)
    assert light.mismatched_elements == full.mismatched_elements == 7
    unmeasured = Submission.objects.light().get(pk=graded(lab, status="error").pk)
    assert unmeasured.speedup is None and unmeasured.mismatched_elements is None


def test_a_lab_with_a_rubric_shows_the_best_attempts_rubric_total(
    rubric_lab, second_lab, cohort, alice, client
):
    from labs.rubric import score_rubric_item

    best = graded(rubric_lab, status="passed", minutes_ago=2)
    worse = graded(rubric_lab, status="failed", minutes_ago=1)
    graded(rubric_lab, OTHER_LEARNER, status="failed")  # not scored: no rubric text
    for item, points in (("fusions", 4), ("evidence", 3)):
        score_rubric_item(submission=best, item=item, points=points, comment="", by=alice,
                          cohort=cohort)  # fmt: skip
    score_rubric_item(submission=worse, item="why", points=0, comment="", by=alice, cohort=cohort)
    book = build_gradebook(cohort)
    total = cell(book).rubric
    assert (total.points, total.max, total.scored, total.items) == (7, 10, 2, 3)
    assert cell(book, OTHER_LEARNER).rubric is None
    assert cell(book, lab="second").rubric is None  # the lab has no rubric
    client.force_login(alice)
    text = page(client, cohort)
    assert '✓ Passed</span> <span class="cell-rubric"' in text
    assert "· rubric 7/10 (2 of 3 items)" in text
    score_rubric_item(submission=best, item="why", points=2, comment="", by=alice, cohort=cohort)
    assert "· rubric 9/10</span>" in page(client, cohort)
