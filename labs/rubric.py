"""Rubric grading: an instructor's points and comment per rubric item of a submission.

A lab declares its rubric in lab.toml (`[[rubric]]`, parsed by runner/labspec.py and mirrored
into Lab.rubric by load_labs): the written answers no grader can measure, such as the cost
lab's defence or the kernels lab's explanation of a profiler trace. Scores live in their own
table beside the submission, as an override does: recording a report (a first grade or a
regrade) writes only Submission's columns, so a regrade never touches them. Every change is an
AuditEntry (who, when, before, after). Learners see the points and comments on their result
page only once the feedback is released (labs/feedback.py), like an instructor's comment.

The learner's answer to an item is the text of the markdown cells tagged with the item's
`answer_tag` in the notebook as submitted, shown as escaped text, never as HTML. Imported by
labs/models.py, which registers the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from labs.models import AuditEntry, Cohort, Lab, Submission


class RubricScore(models.Model):
    submission = models.ForeignKey(
        Submission, on_delete=models.CASCADE, related_name="rubric_scores"
    )
    # The rubric item's name in the lab's spec.
    item = models.CharField(max_length=32)
    points = models.PositiveSmallIntegerField()
    comment = models.TextField(blank=True)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["submission", "item"]
        constraints = [
            models.UniqueConstraint(fields=["submission", "item"], name="one_score_per_item")
        ]

    def __str__(self) -> str:
        return f"{self.submission_id} {self.item}: {self.points}"


# --- The learner's written answers -------------------------------------------------------


def written_answers(notebook_text: str) -> dict[str, list[str]]:
    """Tag -> the text of each markdown cell carrying it, in notebook order. A notebook that
    is not JSON (it was validated at upload, but be safe) has no answers."""
    try:
        notebook = json.loads(notebook_text or "{}")
    except ValueError:
        return {}
    answers: dict[str, list[str]] = {}
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    for cell in cells if isinstance(cells, list) else []:
        if not isinstance(cell, dict) or cell.get("cell_type") != "markdown":
            continue
        tags = (cell.get("metadata") or {}).get("tags") or []
        source = cell.get("source") or ""
        text = "".join(map(str, source)) if isinstance(source, list) else str(source)
        for tag in tags if isinstance(tags, list) else []:
            if isinstance(tag, str) and text.strip():
                answers.setdefault(tag, []).append(text.strip())
    return answers


# --- What the pages show -----------------------------------------------------------------


@dataclass
class RubricRow:
    """One rubric item of a submission: the item as the lab declares it, its score (None: not
    scored yet) and, on the review page, the learner's answer."""

    item: dict
    score: RubricScore | None = None
    answers: list[str] = field(default_factory=list)
    # The title of an earlier item with the same answer_tag: its answer is shown there once.
    answer_shown_with: str = ""
    form: object = None

    @property
    def name(self) -> str:
        return self.item["name"]

    @property
    def title(self) -> str:
        return self.item.get("title") or self.name

    @property
    def max(self) -> int:
        return int(self.item.get("points") or 0)

    @property
    def description(self) -> str:
        return self.item.get("description", "")

    @property
    def answer_tag(self) -> str:
        return self.item.get("answer_tag", "")

    @property
    def over_max(self) -> bool:
        """Scored above the item's maximum: the lab's rubric was lowered after scoring."""
        return self.score is not None and self.score.points > self.max


@dataclass(frozen=True)
class RubricTotal:
    points: int
    max: int
    scored: int
    items: int

    def __str__(self) -> str:
        return f"{self.points}/{self.max}"

    @property
    def complete(self) -> bool:
        return self.scored == self.items


def rubric_total(lab: Lab, scores: dict[str, int]) -> RubricTotal | None:
    """The sum over the lab's current items (a score of a removed item does not count); None
    when the lab has no rubric or nothing is scored."""
    names = [item["name"] for item in lab.rubric]
    scored = [name for name in names if name in scores]
    if not scored:
        return None
    return RubricTotal(
        points=sum(scores[name] for name in scored),
        max=lab.rubric_max,
        scored=len(scored),
        items=len(names),
    )


def scores_by_submission(submissions: Iterable[Submission]) -> dict:
    """Submission pk -> {item: points}, in one query (the gradebook and the exports)."""
    scores: dict = {}
    rows = RubricScore.objects.filter(submission__in=[s.pk for s in submissions])
    for pk, item, points in rows.values_list("submission_id", "item", "points"):
        scores.setdefault(pk, {})[item] = points
    return scores


def rubric_rows(submission: Submission, *, with_answers: bool) -> list[RubricRow]:
    """The lab's rubric items in order, each with this submission's score; with the learner's
    answers for the review page (the learner's own page leaves them out)."""
    if not submission.lab.rubric:
        return []  # no query, no parsing of the notebook
    scores = {score.item: score for score in submission.rubric_scores.select_related("by")}
    answers = written_answers(submission.notebook) if with_answers else {}
    rows, shown_by_tag = [], {}
    for item in submission.lab.rubric:
        row = RubricRow(item=item, score=scores.get(item["name"]))
        tag = row.answer_tag
        if with_answers and tag:
            if tag in shown_by_tag:
                row.answer_shown_with = shown_by_tag[tag]
            else:
                row.answers = answers.get(tag, [])
                shown_by_tag[tag] = row.title
        rows.append(row)
    return rows


def total_of(rows: list[RubricRow], lab: Lab) -> RubricTotal | None:
    return rubric_total(lab, {row.name: row.score.points for row in rows if row.score})


def released_rubric(submission: Submission) -> dict:
    """The learner page's rubric context: the items and total once the feedback is released
    and something is scored; nothing before (the page is then exactly the grader's)."""
    if submission.released_feedback is None or not submission.lab.rubric:
        return {"rubric": [], "rubric_total": None}
    rows = rubric_rows(submission, with_answers=False)
    if not any(row.score for row in rows):
        return {"rubric": [], "rubric_total": None}
    return {"rubric": rows, "rubric_total": total_of(rows, submission.lab)}


# --- Scoring -----------------------------------------------------------------------------


class RubricRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _points_text(points: int | None, maximum: int) -> str:
    return "not scored" if points is None else f"{points}/{maximum}"


def score_rubric_item(
    *,
    submission: Submission,
    item: str,
    points: int | None,
    comment: str,
    by,
    cohort: Cohort | None,
) -> list[AuditEntry]:
    """Set an item's points (0 to its maximum) and comment; points None with no comment
    removes the score. Each change of the points and of the comment is an audit entry;
    returns them (none: nothing changed). The grader's report is never touched."""
    declared = submission.lab.rubric_item(item)
    if declared is None:
        raise RubricRefused(f"The lab's rubric has no item “{item}”.")
    maximum = int(declared["points"])
    comment = (comment or "").strip()
    if points is None and comment:
        raise RubricRefused(f"Give points (0 to {maximum}) with the comment.")
    if points is not None and not 0 <= points <= maximum:
        raise RubricRefused(f"Give between 0 and {maximum} points for “{declared['title']}”.")
    with transaction.atomic():
        # Lock the submission: two instructors scoring at once each see the other's result.
        submission = Submission.objects.select_for_update().get(pk=submission.pk)
        current = RubricScore.objects.filter(submission=submission, item=item).first()
        before_points = current.points if current else None
        before_comment = current.comment if current else ""
        if points is None:
            if current is not None:
                current.delete()
        else:
            RubricScore.objects.update_or_create(
                submission=submission,
                item=item,
                defaults={"points": points, "comment": comment, "by": by, "at": timezone.now()},
            )
        released = Submission.objects.filter(
            pk=submission.pk, feedback__released_at__isnull=False
        ).exists()
        reason = "Changed after release: the learner sees the new value." if released else ""
        entries = []

        def audit(action: str, before: str, after: str) -> None:
            entries.append(
                AuditEntry.objects.create(
                    actor=by, actor_name=by.get_username(), submission=submission,
                    cohort=cohort, action=action, field=item, before=before, after=after,
                    reason=reason,
                )
            )  # fmt: skip

        if before_points != points:
            audit(
                AuditEntry.Action.RUBRIC,
                _points_text(before_points, maximum),
                _points_text(points, maximum),
            )
        if before_comment != comment:
            audit(AuditEntry.Action.RUBRIC_COMMENT, before_comment or "(none)", comment or "(none)")
    return entries
