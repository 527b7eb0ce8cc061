"""Executing notebooks in the sandbox: errors and timeouts are outcomes naming the cell."""

from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from runner.execute import format_progress, parse_progress
from runner.notebook_run import run_notebook
from tests.runner.support import requires_bwrap


def notebook(*sources: str):
    return new_notebook(cells=[new_markdown_cell("# title")] + [new_code_cell(s) for s in sources])


def text_of(cell) -> str:
    """Stream text of a cell in the executed notebook (stored as a list of lines)."""
    return "".join("".join(o.get("text", "")) for o in cell["outputs"])


def run(policy, tmp_path, nb, **limits):
    jobdir = tmp_path / "notebook"
    jobdir.mkdir()
    progress = []
    result = run_notebook(
        nb,
        policy=policy,
        jobdir=jobdir,
        log_path=tmp_path / "executor.log",
        cell_timeout_s=limits.get("cell", 10),
        total_timeout_s=limits.get("total", 30),
        max_output_bytes=limits.get("output", 100_000),
        max_notebook_bytes=1_000_000,
        on_progress=lambda stage, **info: progress.append((stage, info)),
    )
    return result, progress


@requires_bwrap
def test_a_clean_notebook_runs_and_reports_progress_per_cell(policy, tmp_path):
    result, progress = run(policy, tmp_path, notebook("x = 21", "print(x * 2)"))
    assert result.outcome.status == "ok"
    assert progress == [
        ("starting", {"cells": 3}),
        ("running", {"cell": 2, "cells": 3}),
        ("running", {"cell": 3, "cells": 3}),
        # What a cell prints travels as the live log's tail once the cell ends.
        ("running", {"cell": 3, "cells": 3, "log_tail": "42\n"}),
    ]
    assert text_of(result.executed["cells"][2]) == "42\n"


@requires_bwrap
def test_the_live_log_keeps_only_the_tail_of_a_chatty_notebook(policy, tmp_path):
    nb = notebook("for i in range(3000):\n    print('line', i)", "print('the end')")
    _, progress = run(policy, tmp_path, nb)
    tail = progress[-1][1]["log_tail"]
    assert tail.endswith("line 2999\nthe end\n") and len(tail) <= 8192


@requires_bwrap
def test_an_exception_is_an_error_naming_the_cell_and_the_exception(policy, tmp_path):
    result, _ = run(policy, tmp_path, notebook("x = 1", "y = x / 0", "print('never')"))
    assert result.outcome.status == "error"
    assert result.outcome.message == "Cell 3 raised ZeroDivisionError: division by zero"
    assert result.outcome.cell == 3
    assert result.executed["cells"][3]["outputs"] == []


@requires_bwrap
def test_a_cell_past_its_limit_is_a_timeout_naming_the_cell(policy, tmp_path):
    result, _ = run(policy, tmp_path, notebook("x = 1", "import time\ntime.sleep(60)"), cell=2)
    assert result.outcome.status == "timeout"
    assert result.outcome.message == "Cell 3 ran past the 2 s limit for one cell."


@requires_bwrap
def test_the_total_limit_is_a_timeout_naming_the_cell_it_stopped_in(policy, tmp_path):
    nb = notebook("import time\ntime.sleep(1.5)", "time.sleep(1.5)", "time.sleep(1.5)")
    result, _ = run(policy, tmp_path, nb, cell=10, total=2.5)
    assert result.outcome.status == "timeout"
    assert result.outcome.message == (
        "The notebook ran past its total limit of 2.5 s while running cell 3."
    )


@requires_bwrap
def test_a_dying_kernel_is_an_error_naming_the_cell(policy, tmp_path):
    result, _ = run(policy, tmp_path, notebook("import os\nos._exit(1)"))
    assert result.outcome.status == "error"
    assert result.outcome.message.startswith("The Python kernel died while running cell 2")


@requires_bwrap
def test_output_past_the_cap_is_dropped_with_a_notice(policy, tmp_path):
    result, _ = run(
        policy, tmp_path, notebook("for i in range(2000):\n    print('x' * 100)"), output=20_000
    )
    assert result.outcome.status == "ok"
    assert result.outcome.output_truncated
    text = text_of(result.executed["cells"][1])
    assert "[output truncated" in text
    assert len(text) < 30_000


@requires_bwrap
def test_the_learners_kernel_cannot_forge_a_result_by_printing_progress(policy, tmp_path):
    forged = format_progress("done", status="passed") + "\n" + format_progress("running", cell=99)
    nb = notebook(f"import os\nos.write(1, {forged.encode()!r})\nos.write(2, b'x')")
    result, progress = run(policy, tmp_path, nb)
    assert result.outcome.status == "ok"
    assert all(stage in ("starting", "running") for stage, _ in progress)


@pytest.mark.parametrize(
    "line",
    [
        "hello",
        '@@inference-roadmap-progress {"stage": "done"}',
        '@@inference-roadmap-progress {"stage": "running", "cell": -1, "cells": "x"}',
        "@@inference-roadmap-progress not json",
    ],
)
def test_progress_lines_that_are_not_ours_carry_nothing(line):
    parsed = parse_progress(line)
    assert parsed is None or parsed == ("running", {})


def test_progress_lines_round_trip():
    assert parse_progress(format_progress("running", cell=3, cells=8)) == (
        "running",
        {"cell": 3, "cells": 8},
    )


def test_the_sanitised_notebooks_cells_keep_their_numbers_in_messages():
    # Messages count every cell, markdown included, as Jupyter's own cell numbers do.
    nb = notebook("1/0")
    assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
    nbformat.validate(nb)


def test_the_unsandboxed_development_mode_reports_through_the_same_pipes(tmp_path):
    from runner.sandbox import SandboxPolicy

    result, progress = run(SandboxPolicy(mode="none"), tmp_path, notebook("print(6 * 7)", "1/0"))
    assert result.outcome.message == "Cell 3 raised ZeroDivisionError: division by zero"
    assert text_of(result.executed["cells"][1]) == "42\n"
    # Nothing came back through the folder (IPython's scratch is all that is written there).
    names = {p.name for p in (tmp_path / "notebook").iterdir()}
    assert names <= {"submitted.ipynb", ".ipython", ".jupyter"}
