"""Regrades: the same notebook sent through the same pipeline again (after a grader fix, say).

A regrade reuses the Submission row: it goes back to queued with the next attempt number, so
a report from the attempt before can no longer be recorded (labs/tasks.py keys every UPDATE
by the attempt). Each regrade is a Regrade row holding what it replaced: the status and
speedup always, the whole report for the latest few only (a report carries the executed
notebook, so keeping every one would grow without bound). Rows, not a JSON list on
Submission: the gradebook reads submissions by the hundred and should not carry history, a
batch's progress is then one query, and the attempt a regrade started at is known when a
worker is lost (the retry cap counts attempts since the last regrade). A RegradeBatch is
one instructor's "regrade every submission of this lab in my cohort"; its progress is how
many of its regrades have finished. Imported by labs/models.py, which registers them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Count, Q
from django.utils import timezone

from labs.models import FINAL, Submission

# Whole reports kept per submission (the newest regrades); older rows keep status and speedup.
REPORTS_KEPT = 5


class RegradeBatchQuerySet(models.QuerySet["RegradeBatch"]):
    def with_progress(self) -> RegradeBatchQuerySet:
        """Each batch with `finished_count`: how many of its submissions are graded again."""
        return self.annotate(
            finished_count=Count("regrades", filter=Q(regrades__submission__status__in=FINAL))
        )


class RegradeBatch(models.Model):
    cohort = models.ForeignKey("labs.Cohort", on_delete=models.CASCADE, related_name="regrades")
    lab = models.ForeignKey("labs.Lab", on_delete=models.CASCADE, related_name="+")
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    at = models.DateTimeField(default=timezone.now)
    # How many submissions were sent back (those queued or running then were skipped).
    count = models.PositiveIntegerField(default=0)

    objects = RegradeBatchQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.lab_id} x{self.count} ({self.at:%Y-%m-%d %H:%M})"

    @property
    def running(self) -> bool:
        """Some of its submissions are still queued or running (needs with_progress())."""
        return self.finished_count < self.count


class Regrade(models.Model):
    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="regrades")
    batch = models.ForeignKey(
        RegradeBatch, on_delete=models.SET_NULL, null=True, blank=True, related_name="regrades"
    )
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    at = models.DateTimeField(default=timezone.now)
    # The attempt this regrade started (the one before it produced previous_report).
    attempt = models.PositiveSmallIntegerField()
    previous_status = models.CharField(max_length=16)
    previous_speedup = models.FloatField(null=True, blank=True)
    previous_report = models.JSONField(null=True, blank=True)
    previous_finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.submission_id} attempt {self.attempt} (was {self.previous_status})"


def regrade_history(submission: Submission) -> list[dict]:
    """Newest first: each regrade with what it replaced ("was") and what it gave ("now": the
    next regrade's "was", or the submission as it is; None while it still runs)."""
    rows = []
    now: dict | None = None if submission.status not in FINAL else {
        "status": submission.status, "speedup": submission.speedup,
    }  # fmt: skip
    for regrade in submission.regrades.select_related("by"):
        rows.append({"regrade": regrade, "was": regrade.previous_status, "now": now,
                     "was_speedup": regrade.previous_speedup})  # fmt: skip
        now = {"status": regrade.previous_status, "speedup": regrade.previous_speedup}
    return rows
