"""Labs and submissions.

A Lab row mirrors a lab folder `notebooks/<lab>/` (loaded by `manage.py load_labs`); a
Submission is one notebook a learner sent, with its lifecycle:

    queued -> running (stage, progress) -> passed | failed | error | timeout | rejected

Workers never write rows directly: they send progress and reports as messages to the `web`
queue, and labs/tasks.py records them with conditional UPDATEs keyed by the attempt number,
so a duplicate or stale message changes nothing.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

from django.db import models
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


class SubmissionQuerySet(models.QuerySet["Submission"]):
    def active(self) -> SubmissionQuerySet:
        return self.filter(status__in=ACTIVE)

    def for_learner(self, learner_key: str) -> SubmissionQuerySet:
        return self.filter(learner_key=learner_key)

    def since(self, delta: timedelta) -> SubmissionQuerySet:
        return self.filter(created__gte=timezone.now() - delta)


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
