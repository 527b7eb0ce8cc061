"""The instructor flow in headless Chromium: a learner joins a cohort from the browser (the
learner key comes from localStorage), an instructor signs in, watches the gradebook update
live while a submission runs, opens a submission, overrides it with a reason and sees the
audit entry; the gradebook then marks the override, and the learner leaves."""

from __future__ import annotations

import random
from pathlib import Path

from django.contrib.auth.models import User

from curriculum.models import Milestone
from labs.models import AuditEntry, Cohort, Lab, Membership, Submission
from labs.tasks import record_report
from runner.graders.reporting import timing_metrics
from runner.schema import CriterionResult
from tests.labs.conftest import report_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PASSWORD = "a-long-password-for-the-browser-1"


def finish(submission, *, status, speedup_ms):
    """Record a realistic grader report: criteria, a timing summary and its plot."""
    rng = random.Random(7)
    candidate = [int(rng.gauss(speedup_ms * 1e6, 3e4)) for _ in range(80)]
    baseline = [int(rng.gauss(18e6, 5e4)) for _ in range(80)]
    timing, plot = timing_metrics(
        candidate_ns=candidate, baseline_ns=baseline,
        labels=("your softmax", "naive baseline"), title="Time per call, 512x1000 float32",
    )  # fmt: skip
    speedup = timing["speedup"]["value"]
    criteria = [
        CriterionResult(name="correct", metric="mismatched_elements", measured=0.0,
                        threshold=0.0, comparator="==", passed=True, explanation="Outputs match.",
                        hint="", unit="", evaluated=True),
        CriterionResult(name="fast", metric="speedup_vs_naive", measured=speedup, threshold=1.2,
                        comparator=">=", passed=status == "passed", explanation="Beat naive.",
                        hint="Fuse the passes.", unit="x", evaluated=True),
    ]  # fmt: skip
    Submission.objects.filter(pk=submission.pk).update(status="running")
    submission.refresh_from_db()
    record_report(
        report_for(
            submission, status=status, message=f"Speedup {speedup:.2f}x.", criteria=criteria,
            metrics={"timing": timing, "correctness": {"mismatched_elements": 0}},
            plots=[plot], environment={"cpu": "test runner", "torch": "2.x"},
            log_tail="cell 3: ok\n<b>not markup</b>",
        )
    )  # fmt: skip


def test_an_instructor_reviews_and_overrides_a_submission(new_page, site):
    User.objects.create_user("alice", password=PASSWORD, is_staff=True)
    cohort = Cohort.objects.create(name="Spring 2027")
    cohort.instructors.add(User.objects.get(username="alice"))
    lab = Lab.objects.create(
        slug="softmax", title="Numerically stable softmax", summary="s", device_classes=["cpu"],
        starter_filename="softmax.ipynb", starter_notebook="{}",
        milestone=Milestone.objects.get(slug="advanced-optimization.milestone"),
    )  # fmt: skip

    # The learner joins with the code and a display name; no account.
    learner = new_page()
    learner.goto(f"{site}/cohorts/join/?code={cohort.join_code.lower()}")
    learner.fill("#id_display_name", "Ada Lovelace")
    learner.click("text=Join the cohort")
    learner.wait_for_url(f"{site}/cohorts/")
    learner.locator("#cohort-list >> text=Spring 2027").wait_for()
    key = learner.evaluate("InferenceRoadmapProgress.learnerKey()")
    assert Membership.objects.get(cohort=cohort).learner_key == key

    first = Submission.objects.create(lab=lab, learner_key=key, notebook="{}")
    finish(first, status="failed", speedup_ms=16)
    running = Submission.objects.create(lab=lab, learner_key=key, notebook="{}", status="running")

    # The instructor signs in and opens the gradebook while a submission runs.
    page = new_page(viewport={"width": 1100, "height": 900})
    page.goto(f"{site}/instructor/cohorts/{cohort.pk}/gradebook/")
    page.wait_for_url(f"{site}/instructor/login/?next=**")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button:text('Sign in')")
    page.wait_for_url(f"{site}/instructor/cohorts/{cohort.pk}/gradebook/")
    cell = page.locator('td[data-lab="softmax"]')
    assert "Failed" in cell.inner_text() and "1 running" in cell.inner_text()

    # It refreshes itself when the run finishes, then stops polling.
    finish(running, status="passed", speedup_ms=10)
    cell.locator("text=✓ Passed").wait_for(timeout=15_000)
    assert "2 attempts" in cell.inner_text() and "1.8" in cell.inner_text()
    page.locator("text=No submission is queued or running.").wait_for()
    page.screenshot(path=str(DOCS / "instructor-gradebook.png"), full_page=True)

    # The review: criteria, the timing plot as an image, the earlier attempt.
    cell.locator("a").click()
    page.wait_for_url(f"{site}/instructor/cohorts/{cohort.pk}/submissions/{running.pk}/")
    assert page.locator("img[alt='Plot: timing']").evaluate("img => img.naturalWidth") > 0
    assert page.locator("text=<b>not markup</b>").count() == 1  # the log, as text
    assert "status failed → passed" in page.locator("table.attempts").inner_text()
    page.screenshot(path=str(DOCS / "instructor-review.png"))

    # Override with a reason; the audit trail shows it.
    page.select_option("#id_status", "rejected")
    page.click("button:text('Save the override')")  # no reason: refused by the browser...
    assert page.url.endswith(f"/submissions/{running.pk}/")
    assert not AuditEntry.objects.exists()
    page.fill("#id_reason", "The solution cell returns the harness's own reference.")
    page.click("button:text('Save the override')")
    page.wait_for_url("**#audit")
    audit = page.locator("#audit tbody tr").first
    assert "alice" in audit.inner_text()
    assert "status passed → rejected" in audit.inner_text()
    assert "harness's own reference" in audit.inner_text()
    page.locator("#audit").scroll_into_view_if_needed()
    page.screenshot(path=str(DOCS / "instructor-override.png"))

    # The rejected attempt no longer counts: the cell shows the next best, and says why.
    page.click("nav.breadcrumbs >> text=Gradebook")
    text = page.locator('td[data-lab="softmax"]').inner_text()
    assert "✗ Failed" in text and "2 attempts, 1 overridden" in text

    # The learner leaves; they drop out of the gradebook.
    learner.on("dialog", lambda dialog: dialog.accept())
    learner.click("button:text('Leave')")
    learner.locator("text=You left Spring 2027.").wait_for()
    page.reload()
    page.locator("text=No members yet").wait_for()
