"""Cohorts: learners grouped under instructors.

Learners have no accounts: a Membership holds the learner key their browser keeps and the
display name they chose. Instructors are staff users. Joining shares every submission made
with that key, before or after joining, with the cohort's instructors (the join page says
so); leaving or being removed ends that. Imported by labs/models.py, which registers these
models with the app.
"""

from __future__ import annotations

import re
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from labs.models import Submission, SubmissionQuerySet

JOIN_CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
JOIN_CODE_LENGTH = 8


def new_join_code() -> str:
    """8 characters from an alphabet without 0/O and 1/I: easy to read out and to type."""
    while True:
        code = "".join(secrets.choice(JOIN_CODE_ALPHABET) for _ in range(JOIN_CODE_LENGTH))
        if not Cohort.objects.filter(join_code=code).exists():
            return code


def normalise_join_code(text: str) -> str:
    """What a learner typed, as stored: upper case, without spaces or dashes."""
    return re.sub(r"[\s-]", "", text or "").upper()


class CohortQuerySet(models.QuerySet["Cohort"]):
    def taught_by(self, user) -> CohortQuerySet:
        if not (user.is_authenticated and user.is_staff):
            return self.none()
        return self.filter(instructors=user)


class Cohort(models.Model):
    name = models.CharField(max_length=120)
    join_code = models.CharField(max_length=JOIN_CODE_LENGTH, unique=True, default=new_join_code)
    instructors = models.ManyToManyField(
        settings.AUTH_USER_MODEL, related_name="cohorts_taught", blank=True
    )
    created = models.DateTimeField(default=timezone.now)

    objects = CohortQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.name

    def members(self) -> MembershipQuerySet:
        return self.memberships.current().order_by("display_name", "joined")

    def submissions(self) -> SubmissionQuerySet:
        """Every submission of the current members, made before or after they joined: joining
        shares a learner's work with the cohort's instructors (the join page says so)."""
        keys = self.memberships.current().values("learner_key")
        return Submission.objects.filter(learner_key__in=keys)

    def join(self, *, learner_key: str, display_name: str) -> Membership:
        """Join, or rejoin after leaving, or change one's display name: one row per learner."""
        membership, _ = Membership.objects.update_or_create(
            cohort=self,
            learner_key=learner_key,
            defaults={"display_name": display_name, "left": None, "removed_by": None},
            create_defaults={"display_name": display_name},
        )
        return membership

    def new_join_code(self) -> str:
        """Replace the code (a leaked one stops working; members stay members)."""
        self.join_code = new_join_code()
        self.save(update_fields=["join_code"])
        return self.join_code


class MembershipQuerySet(models.QuerySet["Membership"]):
    def current(self) -> MembershipQuerySet:
        return self.filter(left__isnull=True)

    def for_learner(self, learner_key: str) -> MembershipQuerySet:
        return self.filter(learner_key=learner_key)


class Membership(models.Model):
    """A learner in a cohort. Leaving or being removed keeps the row (with who removed them)
    and takes the learner out of the gradebook; joining again brings the row back."""

    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="memberships")
    learner_key = models.CharField(max_length=32, db_index=True)
    display_name = models.CharField(max_length=60)
    joined = models.DateTimeField(default=timezone.now)
    left = models.DateTimeField(null=True, blank=True)
    removed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cohort", "learner_key"], name="one_membership_each")
        ]

    def __str__(self) -> str:
        return f"{self.display_name} in {self.cohort}"

    @property
    def learner_id(self) -> str:
        """The first 8 hex digits of the key: tells two "Alex"es apart, and is no use for
        acting as the learner (the other 96 bits stay secret). The full key never leaves the
        learner's browser on an instructor page or in an export."""
        return self.learner_key[:8]

    def leave(self) -> None:
        self.left = timezone.now()
        self.save(update_fields=["left"])

    def remove(self, *, by) -> None:
        self.left = timezone.now()
        self.removed_by = by
        self.save(update_fields=["left", "removed_by"])
