"""The submission review: criteria, timing with its interval, roofline, telemetry, flags,
plots as images (never markup), the environment, the log escaped, the executed notebook in the
sandboxed frame, earlier attempts with what changed; and overrides, which need a reason, are
audited, never touch the grader's report and survive a regrade."""

from __future__ import annotations

import base64

import pytest

from labs.models import AuditEntry, GradeOverride, Submission
from labs.services import OverrideRefused, override_grade, regrade_submission
from labs.tasks import record_report
from runner.schema import CriterionResult
from tests.labs.conftest import graded, report_for

pytestmark = pytest.mark.django_db

SVG = '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>'
SVG_BASE64 = base64.b64encode(SVG.encode()).decode()
TELEMETRY = {
    "available": True, "reason": None, "n": 40, "duration_s": 2.0, "interval_s": 0.05,
    "sm_clock_mhz": {"min": 1755, "median": 1980, "max": 1980},
    "temperature_c": {"min": 41, "median": 44, "max": 47},
    "clock_event_reasons": ["sw_thermal_slowdown"], "throttled": True,
    "throttle_note": "The GPU lowered its clocks during the measurement (sw_thermal_slowdown).",
}  # fmt: skip
ROOFLINE = {
    "available": True, "enforced": True,
    "candidate": {"percent_of_roofline": 71.25, "bound": "memory", "achieved_gb_per_s": 2390.5},
    "baseline": {"percent_of_roofline": 22.5, "bound": "memory", "achieved_gb_per_s": 754.0},
}  # fmt: skip
SUMMARY = {
    "n": 200, "median": 12.5, "mean": 12.7, "ci95_low": 12.6, "ci95_high": 12.8,
    "rel_sem": 0.004, "min": 12.1, "max": 15.0,
}  # fmt: skip
CRITERION = CriterionResult(
    name="fast", metric="speedup_vs_naive", measured=1.84, threshold=1.2, comparator=">=",
    passed=True, explanation="Faster.", hint="", unit="x", evaluated=True,
)  # fmt: skip


@pytest.fixture
def reviewed(client, alice, lab, cohort):
    client.force_login(alice)
    earlier = graded(lab, status="failed", mismatched=1024, minutes_ago=30)
    submission = graded(
        lab,
        status="passed",
        speedup=1.84,
        mismatched=0,
        minutes_ago=10,
        criteria=[CRITERION],
        metrics={"roofline": ROOFLINE, "telemetry": TELEMETRY, "flags": ["speedup over 10x"]},
        plots=[
            {"name": "timing", "mime": "image/svg+xml", "data_base64": SVG_BASE64},
            {"name": "bad-mime", "mime": "text/html", "data_base64": "PGI+eDwvYj4="},
            {"name": "broken", "mime": "image/png", "data_base64": 'x" onerror="alert(3)'},
        ],
        environment={"gpu_name": "NVIDIA H100", "torch": "2.5.1"},
        log_tail="<script>alert('log')</script>\nall good",
        executed_notebook={"cells": [{"cell_type": "code", "source": "print(42)", "outputs": []}]},
    )  # fmt: skip
    # The timing summary as the grader writes it (graded() wrote only the speedup).
    report = submission.report
    report["metrics"]["timing"] |= {
        "candidate": SUMMARY, "baseline": SUMMARY | {"median": 23.0}, "stop_reason": "rel_sem",
        "converged": True, "method": "CUDA events, L2 flushed.",
    }  # fmt: skip
    Submission.objects.filter(pk=submission.pk).update(report=report)
    submission.refresh_from_db()
    url = f"/instructor/cohorts/{cohort.pk}/submissions/{submission.pk}/"
    return {"submission": submission, "earlier": earlier, "url": url, "cohort": cohort}


def test_the_review_shows_criteria_timing_roofline_telemetry_and_flags(client, reviewed):
    body = client.get(reviewed["url"]).content.decode()
    assert "<h1>Pilot lab: Ada" in body and "0123456789abcdef0123456789abcdef" not in body
    assert "speedup_vs_naive" in body and "&gt;= 1.2 x" in body and "✓ passed" in body
    assert "Speedup 1.840×</strong> (95% CI 1.656–2.024)" in body
    assert "Median (us)" in body and "<td>12.50</td>" in body and "<td>12.60–12.80</td>" in body
    assert "Stopped: rel_sem (converged)" in body
    assert "<td>71.2%</td>" in body or "<td>71.3%</td>" in body
    assert "Enforced: a time under the floor is rejected." in body
    assert "40 samples over 2.0 s" in body and "sm_clock_mhz" in body and "1,980" in body
    assert "The GPU lowered its clocks" in body
    assert "Flags for review" in body and "speedup over 10x" in body
    assert "NVIDIA H100" in body


def test_plots_are_data_images_never_markup(client, reviewed):
    body = client.get(reviewed["url"]).content.decode()
    assert f'<img src="data:image/svg+xml;base64,{SVG_BASE64}" alt="Plot: timing">' in body
    assert "<svg" not in body and "alert(1)" not in body and "alert(2)" not in body
    assert "bad-mime" not in body and "broken" not in body and "alert(3)" not in body


def test_the_log_is_escaped_and_the_notebook_stays_in_its_sandboxed_frame(client, reviewed):
    body = client.get(reviewed["url"]).content.decode()
    assert "&lt;script&gt;alert(&#x27;log&#x27;)&lt;/script&gt;" in body
    assert "<script>alert('log')" not in body
    pk = reviewed["submission"].pk
    assert f'<iframe class="notebook-frame" sandbox src="/submissions/{pk}/notebook.html"' in body
    assert "print(42)" not in body


def test_earlier_attempts_are_listed_with_what_changed(client, lab, reviewed):
    later = graded(lab, status="passed", speedup=2.5, mismatched=0, minutes_ago=1)
    body = client.get(reviewed["url"]).content.decode()
    assert "Attempts at this lab (3)" in body
    assert "status failed → passed; speedup measured: 1.84×; mismatched elements 1,024 → 0" in body
    assert "speedup 1.84× → 2.50× (+0.66×)" in body
    assert "first attempt" in body and "(this one)" in body
    cohort = reviewed["cohort"]
    assert f'href="/instructor/cohorts/{cohort.pk}/submissions/{later.pk}/"' in body
    assert f'href="/instructor/cohorts/{cohort.pk}/submissions/{reviewed["earlier"].pk}/"' in body


@pytest.mark.parametrize("reason", ["", "   \n "])
def test_an_override_needs_a_reason(client, reviewed, reason):
    response = client.post(reviewed["url"] + "override/", {"status": "failed", "reason": reason})
    assert response.status_code == 400
    assert "Give a reason: it is kept in the audit trail." in response.content.decode()
    assert not GradeOverride.objects.exists() and not AuditEntry.objects.exists()


def test_an_override_is_audited_and_leaves_the_graders_report_alone(client, alice, reviewed):
    submission = reviewed["submission"]
    report_before = submission.report
    response = client.post(
        reviewed["url"] + "override/",
        {"status": "rejected", "reason": "Copied the reference <b>verbatim</b>."},
    )
    assert response.status_code == 302 and response["Location"].endswith("#audit")
    submission.refresh_from_db()
    assert submission.status == "passed" and submission.report == report_before
    assert submission.final_status == "rejected"
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.actor_name, entry.submission, entry.cohort) == (
        alice, "alice", submission, reviewed["cohort"],
    )  # fmt: skip
    assert (entry.field, entry.before, entry.after) == ("status", "passed", "rejected")
    body = client.get(reviewed["url"]).content.decode()
    assert "Status changed from passed to rejected" in body
    assert "Override: status passed → rejected" in body
    assert "Copied the reference &lt;b&gt;verbatim&lt;/b&gt;." in body
    assert 'Rejected</span> <span class="badge override">override</span>' in body
    assert "The grader said <strong>passed</strong>" in body


def test_removing_an_override_is_audited_too(client, reviewed):
    client.post(reviewed["url"] + "override/", {"status": "failed", "reason": "Wrong shape."})
    response = client.post(reviewed["url"] + "override/", {"status": "grader", "reason": "Oops."})
    assert response.status_code == 302
    assert not GradeOverride.objects.exists()
    removed = AuditEntry.objects.first()  # newest first
    assert (removed.action, removed.before, removed.after) == ("remove", "failed", "passed")
    assert AuditEntry.objects.count() == 2
    body = client.get(reviewed["url"]).content.decode()
    assert "Override removed: status failed → passed" in body


def test_an_override_to_the_status_it_already_has_changes_nothing(client, reviewed):
    response = client.post(reviewed["url"] + "override/", {"status": "passed", "reason": "x"})
    assert response.status_code == 400
    assert "Its status is already passed." in response.content.decode()
    response = client.post(reviewed["url"] + "override/", {"status": "grader", "reason": "x"})
    assert response.status_code == 400  # no override to remove: not even offered
    assert not AuditEntry.objects.exists()


def test_a_submission_still_being_graded_cannot_be_overridden(alice, lab, cohort):
    running = Submission.objects.create(lab=lab, learner_key=cohort.members()[0].learner_key,
                                        notebook="{}", status="running")  # fmt: skip
    with pytest.raises(OverrideRefused, match="still being graded"):
        override_grade(submission=running, status="passed", reason="r", by=alice, cohort=cohort)
    assert not AuditEntry.objects.exists()


def test_an_override_survives_a_regrade(client, alice, lab, sent, reviewed):
    """A regrade sends the same row back to queued with the next attempt number, and
    labs/tasks.py records the new report. The override stays and counts, and the review says
    the grader's verdict changed underneath it."""
    submission = reviewed["submission"]
    override_grade(submission=submission, status="failed", reason="Hard-coded output.",
                   by=alice, cohort=reviewed["cohort"])  # fmt: skip
    regrade_submission(submission=submission, by=alice, cohort=reviewed["cohort"])
    submission.refresh_from_db()
    assert submission.attempt == 2
    assert record_report(report_for(submission, status="error", message="Regraded."))
    submission.refresh_from_db()
    assert submission.status == "error" and submission.final_status == "failed"
    assert GradeOverride.objects.get().graded_status == "passed"
    body = client.get(reviewed["url"]).content.decode()
    assert "it said passed then and says error now. The override still counts" in body
    assert "regraded: was passed (1.84×), now error" in body
