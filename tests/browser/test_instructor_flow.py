"""The instructor flow in headless Chromium: a learner joins a cohort from the browser (the
learner key comes from localStorage), an instructor signs in, watches the gradebook update
live while a submission runs, opens a submission, overrides it with a reason and sees the
audit entry; the gradebook then marks the override, and the learner leaves. Then: regrading a
lab (after a confirmation page), scoring a rubric item in place beside the learner's written
answer, and releasing the comment and the rubric points to the learner."""

from __future__ import annotations

import random

from django.contrib.auth.models import User

from curriculum.models import Milestone
from labs.models import AuditEntry, Cohort, Lab, Membership, RegradeBatch, Submission
from labs.tasks import record_report
from runner.graders.reporting import timing_metrics
from runner.schema import CriterionResult
from tests.conftest import save_screenshot
from tests.labs.conftest import RUBRIC, notebook_with_answer, report_for

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
    save_screenshot(page, "instructor-gradebook.png", full_page=True)

    # The review: criteria, the timing plot as an image, the earlier attempt.
    cell.locator("a").click()
    page.wait_for_url(f"{site}/instructor/cohorts/{cohort.pk}/submissions/{running.pk}/")
    assert page.locator("img[alt='Plot: timing']").evaluate("img => img.naturalWidth") > 0
    assert page.locator("text=<b>not markup</b>").count() == 1  # the log, as text
    assert "status failed → passed" in page.locator("table.attempts").inner_text()
    save_screenshot(page, "instructor-review.png")

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
    save_screenshot(page, "instructor-override.png")

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


def test_an_instructor_regrades_a_lab_and_releases_feedback(new_page, site, monkeypatch):
    from config.celery import app

    monkeypatch.setattr(app, "send_task", lambda *args, **kwargs: None)  # no broker here
    alice = User.objects.create_user("alice", password=PASSWORD, is_staff=True)
    cohort = Cohort.objects.create(name="Spring 2027")
    cohort.instructors.add(alice)
    lab = Lab.objects.create(
        slug="softmax", title="Numerically stable softmax", summary="s", device_classes=["cpu"],
        starter_filename="softmax.ipynb", starter_notebook="{}", rubric=RUBRIC,
        milestone=Milestone.objects.get(slug="advanced-optimization.milestone"),
    )  # fmt: skip
    key = "0123456789abcdef0123456789abcdef"
    cohort.join(learner_key=key, display_name="Ada Lovelace")
    submission = Submission.objects.create(
        lab=lab, learner_key=key, notebook=notebook_with_answer()
    )
    finish(submission, status="failed", speedup_ms=16)

    page = new_page(viewport={"width": 1100, "height": 900})
    page.goto(f"{site}/instructor/login/?next=/instructor/cohorts/{cohort.pk}/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button:text('Sign in')")
    page.wait_for_url(f"{site}/instructor/cohorts/{cohort.pk}/")

    # Regrade the lab, once confirmed: the progress line polls until the regrade has finished.
    page.click("a[aria-label='Regrade all submissions of Numerically stable softmax']")
    page.wait_for_url(f"{site}/instructor/cohorts/{cohort.pk}/labs/softmax/regrade/")
    assert submission.attempt == 1 and not RegradeBatch.objects.exists()
    page.fill("#id_regrade_reason", "Grader fix.")
    page.click("button:text('Regrade 1 submission')")
    page.locator("#regrades >> text=0 of 1 regraded").wait_for()
    submission.refresh_from_db()
    assert submission.status == "queued" and submission.attempt == 2
    finish(submission, status="passed", speedup_ms=10)
    page.locator("#regrades >> text=1 of 1 regraded (done)").wait_for(timeout=15_000)

    # The review says what changed; a comment stays hidden from the learner until released.
    page.goto(f"{site}/instructor/cohorts/{cohort.pk}/submissions/{submission.pk}/")
    assert "regraded: was failed" in page.locator("#regrades").inner_text()
    page.fill("#id_comment", "Well fused; now try a single pass.")
    page.click("button:text('Save the comment')")
    page.wait_for_url("**#feedback")

    # The rubric: the learner's written answer as text, a score saved in place (htmx).
    answer = page.locator("#rubric pre.answer")
    assert answer.count() == 1 and "<script>alert(1)</script>" in answer.inner_text()
    assert page.locator("#rubric script").count() == 0
    page.fill("#id_fusions-points", "3")
    page.fill("#id_fusions-comment", "Name the reduction kernel too.")
    url_before = page.url
    page.click("button[aria-label='Save the score for Names the fused kernels']")
    page.locator("#rubric-score-fusions >> text=Saved.").wait_for()
    assert page.url == url_before  # swapped in place, no reload
    assert "3 of 10 points (1 of 3 items scored)" in page.locator("#rubric-total").inner_text()
    assert "fusions not scored → 3/4" in page.locator("#audit").inner_text()
    assert page.locator("#rubric pre.answer").count() == 1  # the answer was not swapped

    learner = new_page()
    learner.goto(f"{site}/submissions/{submission.pk}/")
    assert learner.locator("text=From your instructor").count() == 0
    assert learner.locator("text=Name the reduction kernel too.").count() == 0
    page.click("button:text('Release to the learner')")
    page.locator("#feedback >> text=Released").first.wait_for()
    learner.reload()
    learner.locator("text=Well fused; now try a single pass.").wait_for()
    rubric = learner.locator("table.rubric")
    assert "Rubric: 3 of 10 points" in learner.locator("#rubric-heading").inner_text()
    assert "Names the fused kernels" in rubric.inner_text()
    assert "Name the reduction kernel too." in rubric.inner_text()
