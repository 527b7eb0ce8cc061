"""runner.graders.children: the set-up every grader shares. Who is blamed when a child fails
(the learner for theirs, the grader for its own), the limits a grader sets, and the
environment each child gets. Real sandboxed children on the softmax lab's spec."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from runner.graders.base import GradeResult
from runner.graders.children import GradingChildren, grading_limits
from runner.graders.softmax_lab import BASELINE
from runner.sandbox import ResourceLimits

LIMITS = ResourceLimits(cpu_seconds=60, file_size_bytes=1 << 20, memory_bytes=2 << 30)


def children_for(spec, policy, tmp_path: Path, source: str, **extra) -> GradingChildren:
    (tmp_path / "candidate").mkdir()
    solution = tmp_path / "candidate" / "solution.py"
    solution.write_text(source)
    return GradingChildren(
        spec=spec,
        device_class="cpu",
        solution_path=solution,
        workdir=tmp_path / "work",
        sandbox=policy,
        limits=LIMITS,
        **extra,
    )


def passed() -> GradeResult:
    return GradeResult(status="passed", message="every step ran")


def test_grading_limits_keep_the_pipelines_memory_and_set_the_graders_own():
    limits = grading_limits(LIMITS, cpu_seconds=900, file_size_bytes=4 << 20, cpus=frozenset({1}))
    assert (limits.cpu_seconds, limits.file_size_bytes, limits.cpus) == (900, 4 << 20, {1})
    assert limits.memory_bytes == LIMITS.memory_bytes  # lab.toml's, as the pipeline decided
    # Without pipeline limits (a grader called directly, as the tests do): the defaults.
    alone = grading_limits(None, cpu_seconds=600, file_size_bytes=1)
    assert alone == dataclasses.replace(ResourceLimits(cpu_seconds=600, file_size_bytes=1))


def test_every_step_runs_once_both_children_have_loaded(spec, policy, tmp_path):
    source = "import torch\ndef softmax(x):\n    return torch.ones_like(x)\n"
    with children_for(spec, policy, tmp_path, source) as children:
        candidate = children.learner()
        baseline = children.grader_side("baseline", BASELINE, label="the naive baseline")
        answers = []

        def steps() -> GradeResult:
            x = np.zeros((2, 3), dtype=np.float32)
            answers.append(candidate.call([x], timeout_s=30).arrays[0])
            answers.append(baseline.call([x], timeout_s=30).arrays[0])
            return passed()

        result = children.result_of(steps, metrics={}, timeout_s=60)
    assert result.status == "passed"
    np.testing.assert_allclose(answers[0], 1.0)
    np.testing.assert_allclose(answers[1], 1 / 3, rtol=1e-6)  # the real naive softmax
    assert (tmp_path / "work" / "logs" / "candidate.log").exists()
    assert (tmp_path / "work" / "logs" / "baseline.log").exists()


def test_a_learner_whose_code_does_not_load_gets_an_error_and_its_log(spec, policy, tmp_path):
    source = "print('importing my solution')\nraise ValueError('my bug')\n"
    with children_for(spec, policy, tmp_path, source) as children:
        children.learner()
        children.grader_side("baseline", BASELINE, label="the naive baseline")
        ran = []
        result = children.result_of(
            lambda: ran.append(1) or passed(), metrics={"measured": 1}, timeout_s=60
        )
    assert result.status == "error"
    assert "my bug" in result.message
    assert "importing my solution" in result.log_tail
    assert result.metrics == {"measured": 1}
    assert ran == []  # no step runs against code that did not load
    assert all(not c.evaluated or not c.passed for c in result.criteria)


def test_a_grader_side_child_that_breaks_is_the_graders_failure(spec, policy, tmp_path):
    source = "def softmax(x):\n    return x\n"
    with children_for(spec, policy, tmp_path, source) as children:
        children.learner()
        children.grader_side(
            "baseline", "runner.graders.softmax_lab:no_such_function", label="the baseline"
        )
        result = children.result_of(passed, metrics={}, timeout_s=60)
    assert result.status == "error"
    assert result.message.startswith("The grader failed, not your code")


def test_each_child_gets_the_environment_of_its_own_job_folder(spec, policy, tmp_path):
    source = (
        "import os\nimport torch\n"
        "def softmax(x):  # the children serve torch tensors\n"
        "    return torch.full_like(x, len(os.environ['JOB_HOME']))\n"
    )
    asked = []

    def env_for(jobdir: Path) -> dict[str, str]:
        asked.append(jobdir)
        return {"JOB_HOME": policy.job_path(jobdir)}

    with children_for(spec, policy, tmp_path, source, env_for=env_for) as children:
        candidate = children.learner()
        children.grader_side("baseline", BASELINE, label="the naive baseline")

        def steps() -> GradeResult:
            got = candidate.call([np.zeros(1, dtype=np.float32)], timeout_s=30).arrays[0]
            assert got[0] == len(policy.job_path(asked[0]))
            return passed()

        assert children.result_of(steps, metrics={}, timeout_s=60).status == "passed"
    assert asked == [tmp_path / "candidate", tmp_path / "work" / "baseline"]


def test_grading_before_the_learners_child_started_is_a_grader_bug(spec, policy, tmp_path):
    children = children_for(spec, policy, tmp_path, "")
    with children, pytest.raises(RuntimeError, match="learner's child"):
        children.result_of(passed, metrics={}, timeout_s=1)
