"""A cohort's gradebook: its current members x the active labs, the best attempt per cell.

It reads across Membership, Submission, GradeOverride, RubricScore and Lab, so it lives in its
own module (the ranking itself is Submission.rank). A cell of a lab with a rubric carries the
rubric total of its best attempt, where an instructor scored it. The page, its live fragment
and the CSV export all build it here, so what an instructor sees and what they download always
agree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property

from labs.models import ACTIVE, Cohort, Lab, Membership, Status, Submission
from labs.rubric import RubricTotal, rubric_total, scores_by_submission

NOT_STARTED = "none"
IN_PROGRESS = "active"
# Colour is never the only signal: every state has a symbol and a word.
SYMBOLS = {
    Status.PASSED: "✓",
    Status.FAILED: "✗",
    Status.TIMEOUT: "⏱",
    Status.ERROR: "!",
    Status.REJECTED: "⊘",
    Status.RUNNING: "…",
    Status.QUEUED: "…",
}
STATUS_FILTERS = [
    (Status.PASSED.value, "Passed"),
    (Status.FAILED.value, "Failed"),
    (Status.TIMEOUT.value, "Timed out"),
    (Status.ERROR.value, "Error"),
    (Status.REJECTED.value, "Rejected"),
    (IN_PROGRESS, "Queued or running"),
    (NOT_STARTED, "Not started"),
]
SORTS = [("name", "Name"), ("passed", "Labs passed")]


@dataclass
class Cell:
    lab: Lab
    attempts: list[Submission] = field(default_factory=list)
    # The best attempt's rubric total (None: the lab has no rubric, or nothing is scored).
    rubric: RubricTotal | None = None

    @cached_property
    def best(self) -> Submission | None:
        return max(self.attempts, key=lambda s: s.rank, default=None)

    @property
    def status(self) -> str:
        """The best attempt's final status (an override counts), or "none"."""
        return self.best.final_status if self.best else NOT_STARTED

    @property
    def label(self) -> str:
        return Status(self.status).label if self.best else "Not started"

    @property
    def symbol(self) -> str:
        return SYMBOLS.get(self.status, "—")

    @property
    def overridden(self) -> bool:
        return self.best is not None and self.best.grade_override is not None

    @property
    def overridden_attempts(self) -> int:
        """Overrides anywhere in the cell: rejecting the best attempt shows the next best,
        and the cell still says that an instructor changed something in it."""
        return sum(1 for s in self.attempts if s.grade_override is not None)

    @property
    def speedup(self) -> float | None:
        return self.best.speedup if self.best else None

    @property
    def active(self) -> int:
        return sum(1 for s in self.attempts if s.status in ACTIVE)

    def matches(self, status: str) -> bool:
        if status == IN_PROGRESS:
            return self.active > 0
        return self.status == status


@dataclass
class Row:
    member: Membership
    cells: list[Cell]

    @property
    def passed(self) -> int:
        return sum(1 for cell in self.cells if cell.status == Status.PASSED)


@dataclass
class Gradebook:
    cohort: Cohort
    labs: list[Lab]
    rows: list[Row]
    # Some submission of a member is queued or running: the page keeps refreshing.
    active: bool


def build_gradebook(
    cohort: Cohort, *, lab: str = "", status: str = "", sort: str = "name"
) -> Gradebook:
    """`lab` keeps one lab's column, `status` the learners with a shown cell in that state,
    `sort` is "name" or "passed" (most first). Unknown values are ignored."""
    labs = list(Lab.objects.filter(active=True))
    if any(each.slug == lab for each in labs):
        labs = [each for each in labs if each.slug == lab]
    attempts: dict[tuple[str, int], list[Submission]] = defaultdict(list)
    for submission in cohort.submissions().filter(lab__in=labs).light():
        attempts[(submission.learner_key, submission.lab_id)].append(submission)
    rows = [
        Row(member, [Cell(each, attempts[(member.learner_key, each.pk)]) for each in labs])
        for member in cohort.members()
    ]
    if status in dict(STATUS_FILTERS):
        rows = [row for row in rows if any(cell.matches(status) for cell in row.cells)]
    rows.sort(key=lambda row: (row.member.display_name.casefold(), row.member.learner_id))
    if sort == "passed":
        rows.sort(key=lambda row: row.passed, reverse=True)  # stable: ties stay by name
    _add_rubric_totals(rows)
    active = cohort.submissions().filter(lab__active=True).active().exists()
    return Gradebook(cohort=cohort, labs=labs, rows=rows, active=active)


def _add_rubric_totals(rows: list[Row]) -> None:
    """Each cell of a lab with a rubric gets its best attempt's total (one query for all)."""
    cells = [cell for row in rows for cell in row.cells if cell.lab.rubric and cell.best]
    scores = scores_by_submission(cell.best for cell in cells)
    for cell in cells:
        cell.rubric = rubric_total(cell.lab, scores.get(cell.best.pk, {}))
