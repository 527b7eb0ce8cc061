"""Instructor feedback on a submission, and its release to the learner.

Feedback is a comment and a release mark. Until it is released the learner's result page is
exactly the grader's; once released the learner sees the comment and, where there is one,
the override (status and reason). The verified token follows the same rule
(Submission.learner_status): an override counts for the roadmap once the learner can read
why. Comments that instructors reuse are kept per lab (CommentTemplate). Rubric points and
their comments (labs/rubric.py) follow the same release mark. Imported by labs/models.py,
which registers them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from labs.models import Submission


class Feedback(models.Model):
    submission = models.OneToOneField(Submission, on_delete=models.CASCADE, related_name="feedback")
    comment = models.TextField(blank=True)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    at = models.DateTimeField(default=timezone.now)
    released_at = models.DateTimeField(null=True, blank=True)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        verbose_name_plural = "feedback"

    def __str__(self) -> str:
        return f"{self.submission_id} ({'released' if self.released else 'not released'})"

    @property
    def released(self) -> bool:
        return self.released_at is not None


class CommentTemplate(models.Model):
    """A comment an instructor saved to reuse on other submissions of the same lab: for the
    feedback comment (`rubric_item` empty) or for one rubric item (labs/rubric.py)."""

    lab = models.ForeignKey("labs.Lab", on_delete=models.CASCADE, related_name="comment_templates")
    rubric_item = models.CharField(max_length=32, blank=True, default="")
    text = models.TextField()
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["text"]

    def __str__(self) -> str:
        return self.text[:60]
