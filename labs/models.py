"""Labs, submissions and instructor overrides (cohorts are in labs/cohorts.py).

A Lab row mirrors a lab folder `notebooks/<lab>/` (loaded by `manage.py load_labs`); a
Submission is one notebook a learner sent, with its lifecycle:

    queued -> running (stage, progress) -> passed | failed | error | timeout | rejected

Workers never write rows directly: they send progress and reports as messages to the `web`
queue, and labs/tasks.py records them with conditional UPDATEs keyed by the attempt number,
so a duplicate or stale message changes nothing.

A Cohort (labs/cohorts.py) groups learners, by learner key, under instructors (staff
users). An instructor's GradeOverride lives beside the submission, never inside its report:
recording a report (a first grade or a regrade) only writes Submission's own columns, so an
override survives it. Every override, regrade, release of feedback, rubric score and edit of
a released comment is an AuditEntry. Regrades are in labs/regrades.py, instructor comments and
their release in labs/feedback.py, rubric scores in labs/rubric.py.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import models
from django.db.models.fields.json import KT
from django.utils import timezone

from curriculum.models import Milestone


class Lab(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    title = models.CharField(max_length=200)
    summary = models.TextField()
    milestone = models.ForeignKey(
        Milestone, on_delete=models.SET_NULL, null=True, blank=True, related_name="labs"
    )
    device_classes = models.JSONField(default=list)
    # Criteria and limits exactly as the lab spec states them (for the lab page's table).
    criteria = models.JSONField(default=list)
    limits = models.JSONField(default=dict)
    # Items an instructor scores by hand ([[rubric]] in lab.toml): name, title, points (the
    # maximum), description, answer_tag. Empty: graded by measurement alone.
    rubric = models.JSONField(default=list, blank=True)
    starter_filename = models.CharField(max_length=200)
    starter_notebook = models.TextField(help_text="The learner notebook, served for download.")
    position = models.PositiveSmallIntegerField(default=0)
    # A lab whose folder was removed stays (its submissions keep their history) but is hidden.
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["position", "slug"]

    def __str__(self) -> str:
        return self.title

    def criteria_for(self, device_class: str) -> list[dict]:
        """Criteria with this device class's threshold; those not evaluated there left out."""
        rows = []
        for criterion in self.criteria:
            threshold = (criterion.get("threshold") or {}).get(device_class)
            if threshold is not None:
                rows.append(criterion | {"threshold": threshold})
        return rows

    @property
    def shown_only(self) -> list[dict]:
        """Criteria graded on no device class: measured and shown on results, never graded
        (lab.toml's `threshold = {}`, e.g. a speed no honest path can reach yet)."""
        return [c for c in self.criteria if not c.get("threshold")]

    def rubric_item(self, name: str) -> dict | None:
        return next((item for item in self.rubric if item.get("name") == name), None)

    @property
    def rubric_max(self) -> int:
        return sum(int(item.get("points") or 0) for item in self.rubric)


class Status(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PASSED = "passed", "Passed"
    FAILED = "failed", "Failed"
    ERROR = "error", "Error"
    TIMEOUT = "timeout", "Timed out"
    REJECTED = "rejected", "Rejected"


ACTIVE = (Status.QUEUED, Status.RUNNING)
FINAL = (Status.PASSED, Status.FAILED, Status.ERROR, Status.TIMEOUT, Status.REJECTED)
# Which attempt is a learner's best: a pass beats everything; a failure at least ran and was
# measured; a timeout ran; an error or a rejection (an exploit, an impossible time) tells the
# least. Attempts still queued or running rank below any finished one.
RANK = {
    Status.PASSED: 6,
    Status.FAILED: 5,
    Status.TIMEOUT: 4,
    Status.ERROR: 3,
    Status.REJECTED: 2,
    Status.RUNNING: 1,
    Status.QUEUED: 0,
}
# What an instructor may set a final status to.
OVERRIDE_STATUSES = (Status.PASSED, Status.FAILED, Status.REJECTED)
# Plots come from our grader, but they travel through the broker as data: only these types,
# only well-formed base64, and always as <img src="data:..."> (an SVG in <img> runs nothing).
PLOT_TYPES = ("image/svg+xml", "image/png")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def _number(value: Any) -> float | None:
    """A finite number from a report value (a JSON number, or text from a JSON query)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class SubmissionQuerySet(models.QuerySet["Submission"]):
    def active(self) -> SubmissionQuerySet:
        return self.filter(status__in=ACTIVE)

    def for_learner(self, learner_key: str) -> SubmissionQuerySet:
        return self.filter(learner_key=learner_key)

    def since(self, delta: timedelta) -> SubmissionQuerySet:
        return self.filter(created__gte=timezone.now() - delta)

    def light(self) -> SubmissionQuerySet:
        """Without the heavy columns (the notebook; the report, which holds the executed
        notebook): the few report values a listing shows come out of its JSON in the query."""
        return (
            self.select_related("override")
            .defer("notebook", "report", "log_tail", "progress")
            .annotate(
                speedup_text=KT("report__metrics__timing__speedup__value"),
                mismatched_text=KT("report__metrics__correctness__mismatched_elements"),
            )
        )


def new_seed() -> str:
    # The secret behind every graded input of this submission; never shown to anyone.
    return secrets.token_hex(16)


class Submission(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    lab = models.ForeignKey(Lab, on_delete=models.PROTECT, related_name="submissions")
    learner_key = models.CharField(max_length=32, db_index=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    device_class = models.CharField(max_length=16, default="cpu")
    notebook = models.TextField(help_text="The notebook as uploaded (JSON text).")
    notebook_name = models.CharField(max_length=255, blank=True)
    seed = models.CharField(max_length=32, default=new_seed, editable=False)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=32, blank=True)
    progress = models.JSONField(default=dict, blank=True)
    message = models.TextField(blank=True)
    # Each (re)dispatch is a new attempt; messages from older attempts are ignored.
    attempt = models.PositiveSmallIntegerField(default=1)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The worker running the current attempt (its Celery hostname, from its progress
    # messages): when that worker's heartbeats stop, the sweeper re-queues the job.
    worker = models.CharField(max_length=200, blank=True)

    report = models.JSONField(null=True, blank=True)
    log_tail = models.TextField(blank=True)

    created = models.DateTimeField(default=timezone.now, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    objects = SubmissionQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["status", "device_class", "created"])]

    def __str__(self) -> str:
        return f"{self.lab.slug} {self.id} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    @property
    def criteria(self) -> list[dict]:
        return (self.report or {}).get("criteria") or []

    def queue_position(self) -> int | None:
        """1 = next to run. Only meaningful while queued."""
        if self.status != Status.QUEUED:
            return None
        ahead = Submission.objects.filter(
            status=Status.QUEUED, device_class=self.device_class, created__lt=self.created
        ).count()
        return ahead + 1

    def elapsed(self) -> timedelta:
        end = self.finished or timezone.now()
        return end - (self.started or self.created)

    # --- What instructors see ---------------------------------------------------------------

    @property
    def grade_override(self) -> GradeOverride | None:
        try:
            return self.override
        except ObjectDoesNotExist:
            return None

    @property
    def final_status(self) -> str:
        """The status that counts: an instructor's override, else the grader's."""
        override = self.grade_override
        return override.status if override else self.status

    @property
    def released_feedback(self) -> Feedback | None:
        """The instructor's feedback, once released to the learner (labs/feedback.py)."""
        try:
            feedback = self.feedback
        except ObjectDoesNotExist:
            return None
        return feedback if feedback.released else None

    @property
    def learner_status(self) -> str:
        """The status the learner is told, and the roadmap's verification follows: the
        grader's, until feedback is released; then an override's, where there is one."""
        override = self.grade_override
        if override is not None and self.released_feedback is not None:
            return override.status
        return self.status

    @property
    def rank(self) -> tuple[int, float, object]:
        """Sort key of "best attempt": status, then speedup, then the most recent."""
        return (RANK.get(self.final_status, -1), self.speedup or 0.0, self.created)

    @property
    def speedup(self) -> float | None:
        """The grader's speedup over the lab's baseline (median ratio), where it timed one."""
        if hasattr(self, "speedup_text"):  # annotated by light()
            return _number(self.speedup_text)
        return _number((self.timing.get("speedup") or {}).get("value"))

    @property
    def metrics(self) -> dict:
        metrics = (self.report or {}).get("metrics")
        return metrics if isinstance(metrics, dict) else {}

    @property
    def timing(self) -> dict:
        timing = self.metrics.get("timing")
        return timing if isinstance(timing, dict) else {}

    @property
    def mismatched_elements(self) -> int | None:
        if hasattr(self, "mismatched_text"):  # annotated by light()
            value = _number(self.mismatched_text)
        else:
            value = _number((self.metrics.get("correctness") or {}).get("mismatched_elements"))
        return None if value is None else int(value)

    @property
    def flags(self) -> list[str]:
        return [str(flag) for flag in self.metrics.get("flags") or []]

    def attempts(self) -> SubmissionQuerySet:
        """This learner's submissions of this lab, this one included, oldest first."""
        return Submission.objects.filter(learner_key=self.learner_key, lab_id=self.lab_id).order_by(
            "created"
        )

    def changes_since(self, previous: Submission | None) -> list[str]:
        """What differs from the learner's previous attempt: status, speedup, mismatches."""
        if previous is None:
            return ["first attempt"]
        changes = []
        if previous.final_status != self.final_status:
            changes.append(f"status {previous.final_status} → {self.final_status}")
        before, after = previous.speedup, self.speedup
        if before is not None and after is not None and before != after:
            changes.append(f"speedup {before:.2f}× → {after:.2f}× ({after - before:+.2f}×)")
        elif after is not None and before is None:
            changes.append(f"speedup measured: {after:.2f}×")
        elif before is not None and after is None:
            changes.append(f"speedup not measured (was {before:.2f}×)")
        before, after = previous.mismatched_elements, self.mismatched_elements
        if before != after and None not in (before, after):
            changes.append(f"mismatched elements {before:,} → {after:,}")
        return changes or ["same status, speedup and mismatches"]

    @property
    def plots(self) -> list[dict[str, str]]:
        """The report's plots that are safe to show as data: URIs, each {name, src}."""
        shown = []
        for plot in (self.report or {}).get("plots") or []:
            if not isinstance(plot, dict) or plot.get("mime") not in PLOT_TYPES:
                continue
            data = str(plot.get("data_base64") or "")
            try:
                if not _BASE64.match(data):
                    continue
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                continue
            name = str(plot.get("name") or "plot")
            shown.append({"name": name, "src": f"data:{plot['mime']};base64,{data}"})
        return shown


class GradeOverride(models.Model):
    """An instructor's final status for a submission. The grader's report and status are
    never touched; `graded_status` keeps what the grader said when the override was made, so
    the review page can tell when a later regrade changed the grader's mind."""

    submission = models.OneToOneField(Submission, on_delete=models.CASCADE, related_name="override")
    status = models.CharField(max_length=16, choices=Status.choices)
    graded_status = models.CharField(max_length=16, choices=Status.choices)
    reason = models.TextField()
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.submission_id}: {self.graded_status} -> {self.status}"


class AuditEntry(models.Model):
    """One change an instructor made to a grade: append-only, never edited."""

    class Action(models.TextChoices):
        OVERRIDE = "override", "Override"
        REMOVE = "remove", "Override removed"
        REGRADE = "regrade", "Regrade"
        RELEASE = "release", "Feedback released"
        # A comment changed after the learner could read it (labs/services.save_feedback).
        COMMENT = "comment", "Released comment edited"
        RUBRIC = "rubric", "Rubric score"
        RUBRIC_COMMENT = "rubric-comment", "Rubric comment"

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    # The username as it was: the trail still says who if the account is deleted.
    actor_name = models.CharField(max_length=150)
    # PROTECT: a submission with an audit trail cannot be deleted by accident.
    submission = models.ForeignKey(Submission, on_delete=models.PROTECT, related_name="audit")
    cohort = models.ForeignKey(
        "labs.Cohort", on_delete=models.SET_NULL, null=True, related_name="+"
    )
    action = models.CharField(max_length=16, choices=Action.choices)
    field = models.CharField(max_length=32)
    # Text, not a short column: an edited comment is kept whole on both sides.
    before = models.TextField()
    after = models.TextField()
    reason = models.TextField()

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.actor_name}: {self.field} {self.before} -> {self.after}"


# Cohorts live in their own module; importing them here registers them with the app.
from labs.cohorts import (  # noqa: E402
    JOIN_CODE_ALPHABET,
    JOIN_CODE_LENGTH,
    Cohort,
    Membership,
    normalise_join_code,
)

__all__ = [
    "ACTIVE",
    "FINAL",
    "JOIN_CODE_ALPHABET",
    "JOIN_CODE_LENGTH",
    "OVERRIDE_STATUSES",
    "AuditEntry",
    "Cohort",
    "GradeOverride",
    "Lab",
    "Membership",
    "Status",
    "Submission",
    "normalise_join_code",
]

# Instructor feedback (labs/feedback.py), regrades (labs/regrades.py), rubric scores
# (labs/rubric.py), grading workers and their heartbeats (labs/workers.py), the fleet's
# alerts (labs/alerts.py) and prices per GPU-hour (labs/fleet_costs.py).
from labs.alerts import FleetAlert  # noqa: E402,F401
from labs.artifacts import SubmissionArtifact  # noqa: E402,F401  files to download (traces)
from labs.feedback import CommentTemplate, Feedback  # noqa: E402,F401
from labs.fleet_costs import GpuPrice  # noqa: E402,F401
from labs.regrades import Regrade, RegradeBatch  # noqa: E402,F401
from labs.rubric import RubricScore  # noqa: E402,F401
from labs.workers import Worker, WorkerSample  # noqa: E402,F401
