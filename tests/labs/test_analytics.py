"""The cohort analytics page: who may see it, each chart's numbers from known submissions
(best attempts as the gradebook picks them), hostile labels escaped, an empty cohort."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from labs import charts
from labs.analytics import build_analytics
from labs.models import Cohort, Lab, Submission
from labs.services import override_grade
from runner.schema import CriterionResult
from tests.labs.conftest import CAROL, LEARNER, OTHER_LEARNER, graded

pytestmark = pytest.mark.django_db

HOSTILE = '<script>alert("x")</script>'


def url(cohort) -> str:
    return f"/instructor/cohorts/{cohort.pk}/analytics/"


def criterion(name: str, passed: bool, *, evaluated: bool = True) -> CriterionResult:
    return CriterionResult(
        name=name, metric="speedup" if name == "fast" else "max_abs_error", measured=1.0,
        threshold=1.0, comparator=">=", passed=passed, explanation="", hint="", unit="",
        evaluated=evaluated,
    )  # fmt: skip


def analytics(cohort):
    return build_analytics(cohort, now=timezone.now())


# --- Permissions -----------------------------------------------------------------------------


def test_it_sends_anonymous_visitors_to_the_login(client, cohort):
    response = client.get(url(cohort))
    assert response.status_code == 302 and "/instructor/login/" in response["Location"]


def test_it_refuses_accounts_without_staff_status(client, cohort, charlie):
    client.force_login(charlie)
    assert client.get(url(cohort)).status_code == 403


def test_it_hides_the_cohort_from_staff_who_do_not_teach_it(client, cohort, bob):
    client.force_login(bob)
    assert client.get(url(cohort)).status_code == 404


def test_it_is_linked_from_the_cohort_page_and_the_gradebook(client, cohort, alice, lab):
    client.force_login(alice)
    for page in (
        f"/instructor/cohorts/{cohort.pk}/",
        f"/instructor/cohorts/{cohort.pk}/gradebook/",
    ):
        assert url(cohort) in client.get(page).content.decode()
    response = client.get(url(cohort))
    assert response.status_code == 200
    assert (
        response.content.decode().count('role="img"') == 4
    )  # outcomes, criteria, speedups, per day


# --- 1. Outcomes -----------------------------------------------------------------------------


def test_outcomes_count_each_members_best_attempt(lab, cohort, alice):
    graded(lab, LEARNER, "error", minutes_ago=20)
    graded(lab, LEARNER, "failed", minutes_ago=10)  # best: failed
    rejected = graded(lab, OTHER_LEARNER, "rejected", minutes_ago=5)
    graded(lab, CAROL, "passed")  # not a member: not counted
    row = analytics(cohort).outcomes[0]
    assert row.counts == {
        "passed": 0, "failed": 1, "error": 0, "timeout": 0, "rejected": 1, "none": 0,
    }  # fmt: skip
    override_grade(submission=rejected, status="passed", reason="ok", by=alice, cohort=cohort)
    assert analytics(cohort).outcomes[0].counts["passed"] == 1


def test_a_member_with_only_a_running_attempt_has_not_attempted(lab, cohort):
    graded(lab, LEARNER, "timeout")
    Submission.objects.create(lab=lab, learner_key=OTHER_LEARNER, notebook="{}", status="running")
    counts = analytics(cohort).outcomes[0].counts
    assert counts["timeout"] == 1 and counts["none"] == 1


def test_the_page_shows_the_outcome_numbers_as_text(client, lab, cohort, alice):
    graded(lab, LEARNER, "passed")
    client.force_login(alice)
    html = client.get(url(cohort)).content.decode()
    assert '<td data-outcome="passed">1</td>' in html
    assert '<td data-outcome="none">1</td>' in html
    assert "✓ Passed" in html and "— Not attempted" in html  # a word with every colour


# --- 2. Criteria -----------------------------------------------------------------------------


def test_criterion_pass_rate_is_among_evaluated_best_attempts(lab, cohort):
    graded(lab, LEARNER, "failed", criteria=[criterion("correct", False)], minutes_ago=10)
    graded(lab, LEARNER, "passed", criteria=[criterion("correct", True), criterion("fast", True)])
    graded(
        lab, OTHER_LEARNER, "failed",
        criteria=[criterion("correct", True), criterion("fast", False, evaluated=False)],
    )  # fmt: skip
    rates = {rate.name: rate for rate in analytics(cohort).criteria[0].criteria}
    # Only best attempts count: Ada's earlier failed "correct" is not one.
    assert (rates["correct"].passed, rates["correct"].evaluated) == (2, 2)
    assert (rates["fast"].passed, rates["fast"].evaluated) == (1, 1)
    assert rates["correct"].percent == 100


def test_a_criterion_nobody_was_evaluated_on_has_no_rate(lab, cohort, client, alice):
    rates = {rate.name: rate for rate in analytics(cohort).criteria[0].criteria}
    assert rates["fast"].evaluated == 0 and rates["fast"].percent is None
    client.force_login(alice)
    assert "no data" in client.get(url(cohort)).content.decode()


# --- 3. Speedups -----------------------------------------------------------------------------


def test_speedups_of_best_attempts_fall_in_log_bins_with_the_threshold(lab, cohort):
    graded(lab, LEARNER, "passed", speedup=1.5, minutes_ago=10)
    graded(lab, LEARNER, "passed", speedup=3.0)  # best: the higher speedup
    graded(lab, OTHER_LEARNER, "failed", speedup=0.1)  # below the first edge
    (speedups,) = analytics(cohort).speedups
    assert speedups.speedups == [0.1, 3.0]
    assert speedups.thresholds == [("gpu", 1.2)]
    bins = dict(speedups.bins)
    assert bins["below 0.5×"] == 1 and bins["2× to 4×"] == 1 and sum(bins.values()) == 2
    assert 'class="threshold"' in str(speedups.chart) and "gpu ≥ 1.2×" in str(speedups.chart)


def test_labs_without_a_speedup_criterion_have_no_histogram(lab, cohort):
    Lab.objects.create(
        slug="plain", title="Plain", summary="s", starter_filename="p.ipynb",
        starter_notebook="{}", criteria=[{"name": "correct", "metric": "max_abs_error"}],
    )  # fmt: skip
    assert [s.lab.slug for s in analytics(cohort).speedups] == ["pilot"]


def test_bins_are_powers_of_two_and_catch_outliers():
    edges = charts.log_bins(0.25, 4)
    assert edges == [0.25, 0.5, 1, 2, 4]
    assert charts.bin_counts([0.01, 0.3, 1.0, 1.99, 100], edges) == [2, 0, 2, 1]


# --- 4. Submissions per day ------------------------------------------------------------------


def test_submissions_per_day_cover_the_last_30_days_of_members(lab, cohort):
    graded(lab, LEARNER, "failed", minutes_ago=5)
    graded(lab, OTHER_LEARNER, "passed", minutes_ago=6)
    graded(lab, LEARNER, "failed", minutes_ago=3 * 24 * 60)
    graded(lab, LEARNER, "failed", minutes_ago=40 * 24 * 60)  # too old
    graded(lab, CAROL, "passed")  # not a member
    now = timezone.now()
    days = dict(build_analytics(cohort, now=now).days)
    assert len(days) == 30 and sum(days.values()) == 3
    today = timezone.localdate(now)
    # Minutes ago may cross midnight: count today and yesterday together.
    assert days[today] + days.get(today - timedelta(days=1), 0) >= 2
    assert days[timezone.localdate(now - timedelta(days=3))] >= 1


# --- Escaping and the empty cohort -----------------------------------------------------------


def test_hostile_lab_titles_and_criterion_names_are_escaped(client, lab, cohort, alice):
    lab.title = HOSTILE
    lab.criteria = [lab.criteria[0] | {"name": HOSTILE}, lab.criteria[1]]
    lab.save()
    graded(lab, LEARNER, "passed", speedup=2.0, criteria=[criterion(HOSTILE, True)])
    client.force_login(alice)
    html = client.get(url(cohort)).content.decode()
    assert HOSTILE not in html
    assert "&lt;script&gt;" in html
    for svg in (charts.stacked_bars([(HOSTILE, [("passed", HOSTILE, 1)])], summary=HOSTILE),
                charts.percent_bars([(HOSTILE, 50.0)], summary=HOSTILE),
                charts.histogram([1], [1, 2], markers=[(1.5, HOSTILE)], summary=HOSTILE),
                charts.column_chart([(HOSTILE, 1)], summary=HOSTILE)):  # fmt: skip
        assert "<script>" not in svg and "&lt;script&gt;" in svg


def test_an_empty_cohort_has_empty_charts(client, alice, lab):
    empty = Cohort.objects.create(name="Empty")
    empty.instructors.add(alice)
    result = analytics(empty)
    assert result.members == 0
    assert result.outcomes[0].counts["none"] == 0
    assert sum(n for _, n in result.days) == 0
    client.force_login(alice)
    response = client.get(url(empty))
    assert response.status_code == 200 and "No members yet" in response.content.decode()


def test_a_cohort_page_without_labs_still_renders(client, alice, cohort):
    client.force_login(alice)
    html = client.get(url(cohort)).content.decode()
    assert "No active labs." in html and "No active lab has a speedup criterion." in html
