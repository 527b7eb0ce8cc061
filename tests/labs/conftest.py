from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import nbformat
import pytest

from curriculum.models import Milestone
from labs.models import Lab

LEARNER = "0123456789abcdef0123456789abcdef"
OTHER_LEARNER = "fedcba9876543210fedcba9876543210"


def make_notebook(solution: str = "def softmax(x):\n    return x\n", *, extra_cells: int = 0):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "language": "python",
        "display_name": "Python 3",
    }
    nb.cells.append(nbformat.v4.new_markdown_cell("# A lab"))
    cell = nbformat.v4.new_code_cell(solution)
    cell.metadata["tags"] = ["solution"]
    nb.cells.append(cell)
    for i in range(extra_cells):
        nb.cells.append(nbformat.v4.new_code_cell(f"x = {i}"))
    return nbformat.writes(nb).encode()


@pytest.fixture
def lab(curriculum) -> Lab:
    """A lab row as load_labs would make it, independent of the lab folders on disk."""
    return Lab.objects.create(
        slug="pilot",
        title="Pilot lab",
        summary="A lab for the tests.",
        milestone=Milestone.objects.get(slug="advanced-optimization.milestone"),
        device_classes=["cpu", "gpu"],
        criteria=[
            {
                "name": "correct",
                "metric": "max_abs_error",
                "comparator": "<=",
                "unit": "",
                "explanation": "Outputs match the reference.",
                "hint": "Subtract the max.",
                "threshold": {"cpu": 1e-6, "gpu": 1e-6},
            },
            {
                "name": "fast",
                "metric": "speedup",
                "comparator": ">=",
                "unit": "x",
                "explanation": "Faster than naive.",
                "hint": "Fuse.",
                "threshold": {"gpu": 1.2},
            },
        ],
        limits={
            "cell_timeout_s": 30,
            "total_timeout_s": 120,
            "max_notebook_bytes": 200_000,
            "max_cells": 20,
            "max_output_bytes": 100_000,
        },
        starter_filename="pilot.ipynb",
        starter_notebook=make_notebook("raise NotImplementedError").decode(),
    )


@pytest.fixture
def sent(settings):
    """Capture tasks sent to workers instead of putting them on a broker."""
    from config.celery import app

    with mock.patch.object(app, "send_task") as send_task:
        yield send_task


def report_for(
    submission, *, status="passed", attempt=None, message="All criteria passed.", **fields
) -> dict:
    """A worker's report for this submission (runner's own schema), as the worker sends it."""
    from runner.schema import new_report

    return new_report(
        submission_id=str(submission.pk), attempt=attempt or submission.attempt,
        lab=submission.lab.slug, device_class="cpu", status=status, message=message, **fields,
    )  # fmt: skip


def job_of(call) -> dict:
    return call.kwargs["args"][0] if "args" in call.kwargs else call.args[1][0]


def decode(response) -> dict:
    return json.loads(response.content)


# --- Cohorts and instructors -------------------------------------------------------------
# Named users: alice teaches the cohort, bob is staff and teaches another one, charlie has an
# account without staff status (learners have none, so he stands for "signed in, no access").
PASSWORD = "a-long-test-password-1"
CAROL = "c0ffee00c0ffee00c0ffee00c0ffee00"  # a learner key outside the cohort


@pytest.fixture
def alice(db):
    from django.contrib.auth.models import User

    return User.objects.create_user("alice", password=PASSWORD, is_staff=True)


@pytest.fixture
def bob(db):
    from django.contrib.auth.models import User

    from labs.models import Cohort

    bob = User.objects.create_user("bob", password=PASSWORD, is_staff=True)
    Cohort.objects.create(name="Bob's cohort").instructors.add(bob)
    return bob


@pytest.fixture
def charlie(db):
    from django.contrib.auth.models import User

    return User.objects.create_user("charlie", password=PASSWORD)


@pytest.fixture
def cohort(alice):
    from labs.models import Cohort

    cohort = Cohort.objects.create(name="Spring 2027")
    cohort.instructors.add(alice)
    cohort.join(learner_key=LEARNER, display_name="Ada")
    cohort.join(learner_key=OTHER_LEARNER, display_name="Grace")
    return cohort


def graded(
    lab,
    learner=LEARNER,
    status="passed",
    *,
    speedup=None,
    mismatched=None,
    minutes_ago=0,
    **fields,
):
    """A submission the grader has finished, recorded the way labs/tasks.py records it."""
    from datetime import timedelta

    from django.utils import timezone

    from labs.models import Submission
    from labs.tasks import record_report

    submission = Submission.objects.create(
        lab=lab,
        learner_key=learner,
        notebook="{}",
        status="running",
        created=timezone.now() - timedelta(minutes=minutes_ago),
    )
    metrics = fields.pop("metrics", {})
    if speedup is not None:
        metrics["timing"] = {
            "unit": "us",
            "speedup": {"value": speedup, "ci95_low": speedup * 0.9, "ci95_high": speedup * 1.1},
        }
    if mismatched is not None:
        metrics["correctness"] = {"mismatched_elements": mismatched}
    message = fields.pop("message", f"Graded: {status}.")
    assert record_report(
        report_for(submission, status=status, message=message, metrics=metrics, **fields)
    )
    submission.refresh_from_db()
    return submission


# --- Rubrics -----------------------------------------------------------------------------
REPO_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# The kernels lab's rubric in miniature: two items share the `explanation` cell, one has none.
RUBRIC = [
    {"name": "fusions", "title": "Names the fused kernels", "points": 4,
     "description": "Names each fused kernel and its ops.", "answer_tag": "explanation"},
    {"name": "evidence", "title": "Cites the trace", "points": 3,
     "description": "Kernel names, counts and times.", "answer_tag": "explanation"},
    {"name": "why", "title": "Explains why it is faster", "points": 3,
     "description": "Bytes moved and launches.", "answer_tag": ""},
]  # fmt: skip
ANSWER = "The <script>alert(1)</script> **fused** kernel `triton_red_fused_add_mean_0` ran once."


def notebook_with_answer(answer: str = ANSWER) -> str:
    """A submitted notebook whose markdown cell tagged `explanation` holds the answer, with
    decoys that are not the answer: an untagged markdown cell and a tagged code cell."""
    nb = nbformat.reads(make_notebook().decode(), as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("An untagged note."))
    decoy = nbformat.v4.new_code_cell("print('code tagged explanation')")
    decoy.metadata["tags"] = ["explanation"]
    nb.cells.append(decoy)
    cell = nbformat.v4.new_markdown_cell(answer)
    cell.metadata["tags"] = ["explanation"]
    nb.cells.append(cell)
    return nbformat.writes(nb)


@pytest.fixture
def rubric_lab(lab) -> Lab:
    lab.rubric = RUBRIC
    lab.save(update_fields=["rubric"])
    return lab


def answered(lab, learner=LEARNER, status="passed", **fields):
    """A graded submission whose notebook holds a written answer."""
    from labs.models import Submission

    submission = graded(lab, learner, status, **fields)
    Submission.objects.filter(pk=submission.pk).update(notebook=notebook_with_answer())
    submission.refresh_from_db()
    return submission
