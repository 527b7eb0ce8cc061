"""CSV exports of a cohort: the gradebook (one row per learner) and one lab's submissions
(one row per submission).

Column names are stable: fixed names, and per lab `<lab slug>_<what>`, never titles, so a
spreadsheet or script that reads them keeps working when a lab is retitled. Text that a
learner controls (display names, and grader messages that may quote the learner's own
exception text) is guarded against formula injection: a spreadsheet would run a cell that
starts with = + - @ (or a tab or carriage return) as a formula, so such text gets a leading
apostrophe, which spreadsheets show as text. Numbers are written as numbers.

A lab with a rubric gets more columns, after its others: `<lab>_rubric_points` (the best
attempt's rubric total; empty: not scored) and `<lab>_rubric_max` in the gradebook, and
`rubric_points`, `rubric_max` and per item `rubric_<item>_points` and `rubric_<item>_comment`
in its submissions file. A lab without a rubric keeps exactly the columns it had.

The learner column is the first 8 hex digits of the learner key, never the whole key: the
key is the learner's only credential (it submits and reads their work), and a CSV travels
by e-mail and into other systems. Eight digits tell learners with the same display name apart.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from django.urls import reverse

from labs.gradebook import NOT_STARTED, Gradebook
from labs.models import Cohort, Lab, Submission
from labs.rubric import RubricScore, rubric_total

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "＝", "＋", "－", "＠")
GRADEBOOK_FIXED = ["learner", "display_name", "joined", "labs_passed"]
LAB_COLUMNS = ["status", "best_speedup", "attempts", "override"]
RUBRIC_COLUMNS = ["rubric_points", "rubric_max"]
DETAIL_COLUMNS = [
    "submission_id",
    "learner",
    "display_name",
    "lab",
    "created",
    "finished",
    "device_class",
    "graded_status",
    "override_status",
    "final_status",
    "speedup",
    "speedup_ci95_low",
    "speedup_ci95_high",
    "mismatched_elements",
    "criteria_passed",
    "criteria_failed",
    "flags",
    "message",
    "review_url",
]


def safe_text(value: str) -> str:
    """Text as a spreadsheet will show it, never run it."""
    if value.lstrip(" ").startswith(FORMULA_START):
        return "'" + value
    return value


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, int):
        return value
    return safe_text(str(value))


def to_csv(header: list[str], rows: Iterable[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return out.getvalue()


def _lab_columns(lab: Lab) -> list[str]:
    return LAB_COLUMNS + (RUBRIC_COLUMNS if lab.rubric else [])


def gradebook_header(labs: list[Lab]) -> list[str]:
    return GRADEBOOK_FIXED + [f"{lab.slug}_{what}" for lab in labs for what in _lab_columns(lab)]


def gradebook_csv(gradebook: Gradebook) -> str:
    """`<lab>_status` is the final status of the best attempt (empty: not started),
    `<lab>_override` the grader's status that an instructor's override replaced (empty: no
    override)."""

    def row(r) -> list[Any]:
        values: list[Any] = [
            r.member.learner_id,
            r.member.display_name,
            r.member.joined.date().isoformat(),
            r.passed,
        ]
        for cell in r.cells:
            override = cell.best.grade_override if cell.best else None
            values += [
                "" if cell.status == NOT_STARTED else cell.status,
                cell.speedup,
                len(cell.attempts),
                override.graded_status if override else "",
            ]
            if cell.lab.rubric:
                values += [cell.rubric.points if cell.rubric else None, cell.lab.rubric_max]
        return values

    return to_csv(gradebook_header(gradebook.labs), map(row, gradebook.rows))


def lab_detail_csv(cohort: Cohort, lab: Lab, *, base_url: str) -> str:
    """Every submission of the cohort's current members for this lab, oldest first."""
    names = {m.learner_key: m.display_name for m in cohort.members()}
    submissions = (
        cohort.submissions().filter(lab=lab).select_related("override").order_by("created")
    )

    items = [item["name"] for item in lab.rubric]
    scores: dict = {}
    for score in RubricScore.objects.filter(submission__in=submissions, item__in=items):
        scores.setdefault(score.submission_id, {})[score.item] = score

    def rubric_values(s: Submission) -> list[Any]:
        mine = scores.get(s.pk, {})
        total = rubric_total(lab, {name: score.points for name, score in mine.items()})
        values: list[Any] = [total.points if total else None, lab.rubric_max]
        for name in items:
            score = mine.get(name)
            values += [score.points if score else None, score.comment if score else ""]
        return values

    def row(s: Submission) -> list[Any]:
        override = s.grade_override
        speedup = s.timing.get("speedup") or {}
        evaluated = [c for c in s.criteria if c.get("evaluated", True)]
        return [
            str(s.pk),
            s.learner_key[:8],
            names.get(s.learner_key, ""),
            lab.slug,
            s.created.isoformat(),
            s.finished.isoformat() if s.finished else "",
            s.device_class,
            s.status,
            override.status if override else "",
            s.final_status,
            s.speedup,
            speedup.get("ci95_low"),
            speedup.get("ci95_high"),
            s.mismatched_elements,
            sum(1 for c in evaluated if c.get("passed")),
            sum(1 for c in evaluated if not c.get("passed")),
            "; ".join(s.flags),
            s.message,
            base_url + reverse("instructor-review", args=[cohort.pk, s.pk]),
            *(rubric_values(s) if items else []),
        ]

    header = DETAIL_COLUMNS + (detail_rubric_columns(items) if items else [])
    return to_csv(header, map(row, submissions))


def detail_rubric_columns(items: list[str]) -> list[str]:
    per_item = [f"rubric_{name}_{what}" for name in items for what in ("points", "comment")]
    return RUBRIC_COLUMNS + per_item
