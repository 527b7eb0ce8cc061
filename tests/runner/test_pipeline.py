"""End to end: a job in, a report out, through the real sandbox, executor and grader.

Each notebook is graded once per session (see the `graded` fixture) and read by several tests.
"""

from __future__ import annotations

import base64
import json

import pytest

from runner.pipeline import run_job
from runner.sandbox import SandboxPolicy
from runner.schema import check_report
from tests.runner.support import FIXTURES, LAB, SEED, criterion, make_job, read_notebook

pytestmark = pytest.mark.timeout(240)


def test_the_reference_solution_passes_every_criterion(graded):
    report = graded("reference.ipynb")
    check_report(report | {"_progress": None})
    assert report["status"] == "passed", report["message"]
    assert report["message"].startswith("All 3 criteria passed. Speedup vs naive PyTorch:")
    assert [c["passed"] for c in report["criteria"]] == [True, True, True]
    assert report["mismatches"] == []


def test_the_reference_report_carries_measurements_environment_and_a_plot(graded):
    report = graded("reference.ipynb")
    timing = report["metrics"]["timing"]
    for side in ("candidate", "baseline"):
        assert set(timing[side]) >= {"n", "median", "mean", "std", "sem", "min", "max"}
        assert timing[side]["n"] >= 2
    speedup = timing["speedup"]
    assert speedup["ci95_low"] <= speedup["value"] <= speedup["ci95_high"]
    assert criterion(report, "speed")["measured"] == speedup["value"]
    assert report["metrics"]["correctness"]["cases"] == 10
    assert report["environment"]["python"] and report["environment"]["cpu"]["count"]
    assert report["environment"]["gpu"] is None
    assert report["environment"]["sandbox"] == "bwrap"
    assert set(report["durations"]) == {"validate", "execute", "grade"}
    plot = report["plots"][0]
    assert plot["mime"] == "image/svg+xml"
    assert base64.b64decode(plot["data_base64"]).startswith(b"<svg")
    assert report["executed_notebook"]["cells"][2]["outputs"]  # the overflow demo ran
    json.dumps(report, allow_nan=False)


def test_progress_goes_from_starting_through_the_cells_to_done(graded):
    stages = [stage for stage, _ in graded("reference.ipynb")["_progress"]]
    assert stages[0] == "starting"
    assert "running" in stages
    assert stages[-2:] == ["grading", "done"]


def test_the_untouched_starter_errors_with_the_helpful_message(graded):
    report = graded("softmax.ipynb")
    assert report["status"] == "error"
    assert report["message"] == (
        "Cell 7 raised NotImplementedError: Implement softmax: subtract the row max before "
        "exp, then divide by the row sum"
    )
    assert "NotImplementedError" in report["log_tail"]


def test_the_naive_formula_fails_correctness_and_finiteness(graded):
    report = graded("naive_overflow.ipynb")
    assert report["status"] == "failed"
    assert not criterion(report, "correct")["passed"]
    assert not criterion(report, "finite")["passed"]
    assert criterion(report, "finite")["measured"] > 0
    speed = criterion(report, "speed")
    assert speed["measured"] is None and not speed["passed"]
    assert "not measured" in speed["explanation"].lower()
    assert any(m.get("got") == "NaN" for m in report["mismatches"])


def test_softmax_over_the_wrong_dimension_fails_correctness_only(graded):
    report = graded("wrong_dim.ipynb")
    assert report["status"] == "failed"
    assert not criterion(report, "correct")["passed"]
    assert criterion(report, "finite")["passed"]
    first = report["mismatches"][0]
    assert set(first) == {"case", "index", "expected", "got"}


def test_hardcoded_outputs_fail_and_the_seed_is_nowhere_the_solution_can_look(graded):
    report = graded("hardcoded.ipynb")
    assert report["status"] == "failed"
    assert not criterion(report, "correct")["passed"]
    # The fixture prints every 32-hex string it found in its environment, /proc and files.
    assert "seed candidates found: []" in report["log_tail"]
    assert SEED not in json.dumps(report)


def test_printing_a_fake_pass_and_exiting_does_not_pass(graded):
    report = graded("prints_pass.ipynb")
    assert report["status"] == "error"
    assert "exited with code 0" in report["message"]
    assert not any(c["passed"] for c in report["criteria"])
    assert '"status": "passed"' in report["log_tail"]  # it did print its fake report


def test_monkeypatching_timers_and_comparisons_fails_and_names_them(graded):
    # The trusted side never used the replaced functions; replacing them still fails, so a
    # cheat is told it was seen rather than graded on its merits.
    report = graded("monkeypatch_timer.ipynb")
    assert report["status"] == "failed"
    assert report["message"].startswith("Your softmax() replaced ")
    for name in ("time.perf_counter_ns", "torch.allclose", "numpy.allclose"):
        assert name in report["message"]
    assert "while loading" in report["message"]
    assert not any(c["passed"] for c in report["criteria"])


def test_a_raising_learner_cell_is_an_error_naming_the_cell(graded):
    report = graded("raises.ipynb")
    assert report["status"] == "error"
    assert report["message"] == (
        "Cell 6 raised IndexError: index 5 is out of bounds for dimension 1 with size 3"
    )


def test_a_solution_that_raises_only_when_graded_names_its_cell_and_line(graded):
    report = graded("raises_in_grader.ipynb")
    assert report["status"] == "error"
    assert report["message"] == (
        "Your softmax() raised ValueError in cell 5, line 6 on an input of shape 17x33: "
        "17 rows? that cannot happen"
    )


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("no_solution.ipynb", "No code cell is tagged 'solution'"),
        ("nbformat3.ipynb", "nbformat 3"),
        ("r_kernel.ipynb", "Python 3 only"),
    ],
)
def test_a_bad_notebook_is_rejected_before_anything_runs(policy, tmp_path, fixture, message):
    report = run_job(make_job(read_notebook(FIXTURES / fixture)), workroot=tmp_path, policy=policy)
    assert report["status"] == "rejected"
    assert message in report["message"]
    assert list(tmp_path.iterdir()) == []  # no job folder was even made


def test_the_worker_refuses_to_grade_without_a_sandbox(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNER_ALLOW_UNSANDBOXED", raising=False)
    policy = SandboxPolicy(mode="bwrap", bwrap=str(tmp_path / "missing-bwrap"))
    report = run_job(
        make_job(read_notebook(LAB / "reference.ipynb")), workroot=tmp_path, policy=policy
    )
    assert report["status"] == "error"
    assert report["message"].startswith("The worker refused to run your notebook because its")
    assert "bubblewrap is not installed" in report["message"]


def test_a_malformed_job_is_an_error_report_not_an_exception(tmp_path):
    report = run_job({"schema": "nope", "submission_id": "s9"}, workroot=tmp_path)
    assert report["status"] == "error"
    assert report["submission_id"] == "s9"
    assert "malformed job" in report["message"]


def test_an_unknown_lab_is_an_error_report(tmp_path, policy):
    report = run_job(make_job({}, lab="no-such-lab"), workroot=tmp_path, policy=policy)
    assert report["status"] == "error"
    assert "cannot grade the lab 'no-such-lab'" in report["message"]


def test_job_folders_are_removed_after_grading(graded, tmp_path_factory):
    graded("raises.ipynb")
    workroot = tmp_path_factory.getbasetemp() / "jobs0"
    assert workroot.is_dir() and list(workroot.iterdir()) == []
