from __future__ import annotations

import json
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
