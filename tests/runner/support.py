"""Helpers shared by the runner tests (kept out of conftest so tests can import them)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from runner.schema import JOB_SCHEMA

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "notebooks" / "softmax"
FIXTURES = LAB / "fixtures"
SEED = "5eed0000111122223333444455556666"

# Tests that start sandboxed processes need bubblewrap. CI installs it; skip, loudly, only
# where it is absent - never when it is present but broken (that is a failure to see).
# A worker installed from the wheelhouse names its own bwrap (docs/gpu-worker.md).
BWRAP = os.environ.get("RUNNER_BWRAP") or shutil.which("bwrap")
requires_bwrap = pytest.mark.skipif(
    BWRAP is None,
    reason="bubblewrap (bwrap) is not installed; sandboxed runner tests need it",
)


def make_job(notebook: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    job = {
        "schema": JOB_SCHEMA,
        "submission_id": "test-1",
        "attempt": 1,
        "lab": "softmax",
        "device_class": "cpu",
        "notebook": notebook,
        "seed": SEED,
        "limits": {"cell_timeout_s": 5, "total_timeout_s": 60, "max_output_bytes": 200_000},
    }
    job.update(overrides)
    return job


def solution_grader(grader: Any, spec: Any, policy: Any, tmp_path_factory: Any):
    """grade(notebook path) -> the GradeResult of its solution cells alone, graded on CPU with
    SEED by `grader` (a runner.graders module): the grading without the notebook run. Each
    notebook is graded once; a module-scoped fixture keeps the results."""
    import nbformat

    from runner.notebook import extract_solution

    cache: dict[str, Any] = {}

    def grade(path: Path):
        if path.name not in cache:
            workdir = tmp_path_factory.mktemp(path.stem)
            (workdir / "candidate").mkdir()
            solution = workdir / "candidate" / "solution.py"
            solution.write_text(extract_solution(nbformat.read(path, as_version=4)).text)
            cache[path.name] = grader.grade(
                spec=spec,
                solution_path=solution,
                seed=SEED,
                device_class="cpu",
                workdir=workdir,
                sandbox=policy,
            )
        return cache[path.name]

    return grade


def read_notebook(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def criterion(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["criteria"] if c["name"] == name)
