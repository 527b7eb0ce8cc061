"""The roadmap as rows. Rows are written only by the loader (curriculum/loader.py) from
the data file under version control; nothing else edits them.

Every trackable item (goal, milestone, project) has a slug unique across the whole
roadmap, because learners' browsers key their progress by slug alone.
"""

from __future__ import annotations

from django.db import models


class Roadmap(models.Model):
    """The one roadmap: its title and summary (a single row)."""

    title = models.CharField(max_length=200)
    summary = models.TextField(blank=True)

    def __str__(self) -> str:
        return self.title


class PhaseQuerySet(models.QuerySet["Phase"]):
    def total_weeks(self) -> int:
        return self.aggregate(total=models.Sum("weeks"))["total"] or 0


class Phase(models.Model):
    slug = models.SlugField(max_length=100, unique=True)
    number = models.PositiveSmallIntegerField(unique=True)
    title = models.CharField(max_length=200)
    weeks = models.PositiveSmallIntegerField()

    objects = PhaseQuerySet.as_manager()

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"Phase {self.number}: {self.title}"

    def trackable_slugs(self) -> list[str]:
        """Goal and milestone slugs, the items that make up this phase's progress bar."""
        slugs = [goal.slug for goal in self.goals.all()]
        if hasattr(self, "milestone"):
            slugs.append(self.milestone.slug)
        return slugs


class Goal(models.Model):
    phase = models.ForeignKey(Phase, on_delete=models.CASCADE, related_name="goals")
    slug = models.CharField(max_length=150, unique=True)
    position = models.PositiveSmallIntegerField()
    text = models.TextField()

    class Meta:
        ordering = ["phase__number", "position"]

    def __str__(self) -> str:
        return self.text


class Resource(models.Model):
    phase = models.ForeignKey(Phase, on_delete=models.CASCADE, related_name="resources")
    slug = models.CharField(max_length=150, unique=True)
    position = models.PositiveSmallIntegerField()
    title = models.CharField(max_length=300)
    # [{"label": ..., "url": ...}]; empty where the resource has no canonical page.
    links = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["phase__number", "position"]

    def __str__(self) -> str:
        return self.title


class Milestone(models.Model):
    phase = models.OneToOneField(Phase, on_delete=models.CASCADE, related_name="milestone")
    slug = models.CharField(max_length=150, unique=True)
    text = models.TextField()

    def __str__(self) -> str:
        return self.text


class Project(models.Model):
    class Difficulty(models.TextChoices):
        BEGINNER = "beginner", "Beginner"
        INTERMEDIATE = "intermediate", "Intermediate"
        ADVANCED = "advanced", "Advanced"

    slug = models.SlugField(max_length=100, unique=True)
    position = models.PositiveSmallIntegerField()
    title = models.CharField(max_length=200)
    difficulty = models.CharField(max_length=20, choices=Difficulty.choices)
    description = models.TextField()
    phase = models.ForeignKey(
        Phase, on_delete=models.SET_NULL, null=True, blank=True, related_name="projects"
    )

    class Meta:
        ordering = ["position"]

    def __str__(self) -> str:
        return self.title


class SlugAlias(models.Model):
    """An old slug that now means another item: progress stored under it moves over."""

    old_slug = models.CharField(max_length=150, unique=True)
    new_slug = models.CharField(max_length=150)

    class Meta:
        ordering = ["old_slug"]
        verbose_name_plural = "slug aliases"

    def __str__(self) -> str:
        return f"{self.old_slug} -> {self.new_slug}"
