"""The `profiling` lab graded end to end on a GPU node: the reference on one seed per planted
cause (host_sync included, which CPU workers never plant), the starter and two known-wrong
solutions, through the real pipeline with the sandbox's GPU device nodes.

Skipped where there is no NVIDIA GPU (CI has none). On a GPU node, after installing a worker
(docs/gpu-worker.md):

    python -m pytest -m gpu tests/runner/test_gpu_profiling.py -s

It prints, per run, the grader's own measurement and every criterion's measured value:
docs/labs/profiling.md records them (card, date, versions) and the GPU tolerances in lab.toml
are set from them.
"""

from __future__ import annotations

import json
import os

import pytest

from runner.gpu import GpuMemoryCheck
from tests.runner.support import REPO, SEED, make_job, read_notebook, requires_bwrap

pytestmark = [
    pytest.mark.gpu,
    requires_bwrap,
    pytest.mark.skipif(not os.path.exists("/dev/nvidia0"), reason="no NVIDIA GPU on this node"),
    pytest.mark.timeout(900),
]

LAB = REPO / "notebooks" / "profiling"
# One seed per cause at GPU scale (checked on CPU by tests/runner/test_profiling_lab.py):
# SEED plants a host sync.
SEEDS = {
    "host_sync": SEED,
    "unfused": "5eed0000111122223333444455550001",
    "shape": "5eed0000111122223333444455550002",
}


def grade_on_gpu(gpu_policy, tmp_path, monkeypatch, notebook: str, seed: str):
    from runner.pipeline import run_job

    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path.parent / "runner-cache"))
    return run_job(
        make_job(
            read_notebook(LAB / notebook),
            lab="profiling",
            device_class="gpu",
            seed=seed,
            limits={"cell_timeout_s": 120, "total_timeout_s": 600, "max_output_bytes": 200_000},
        ),
        workroot=tmp_path,
        policy=gpu_policy,
        gpu_check=GpuMemoryCheck(indices=(0,)),
    )


def record(notebook: str, seed: str, report: dict) -> None:
    """What docs/labs/profiling.md records: the grader's truth and every measured value."""
    metrics = report["metrics"]
    print(
        f"\nprofiling {notebook} seed {seed[-4:]}: {report['status']} - {report['message']}\n"
        + json.dumps(
            {
                "gpu": (report["environment"].get("gpu") or {}).get("name"),
                "truth": metrics.get("truth"),
                "truth_measurement": metrics.get("truth_measurement"),
                "answer": metrics.get("answer"),
                "measured": metrics.get("measured"),
                "trace": metrics.get("trace"),
                "durations": report["durations"],
            },
            indent=1,
        )
    )


@pytest.mark.parametrize("cause", sorted(SEEDS))
def test_the_reference_passes_on_a_gpu_for_every_cause(gpu_policy, tmp_path, monkeypatch, cause):
    report = grade_on_gpu(gpu_policy, tmp_path, monkeypatch, "reference.ipynb", SEEDS[cause])
    record("reference.ipynb", SEEDS[cause], report)
    assert report["status"] == "passed", report["message"]
    assert all(c["evaluated"] for c in report["criteria"])  # reserve and workspace too
    memory = report["metrics"]["truth"]["memory"]
    assert memory["workspace"] is not None and memory["allocator_reserve"] is not None
    assert report["metrics"]["truth"]["cause"] == cause
    [artifact] = report["artifacts"]
    assert artifact["name"] == "trace.json.gz"


@pytest.mark.parametrize(
    ("notebook", "status", "failed"),
    [
        ("profiling.ipynb", "error", None),
        # Naming the wrong module, it names that module's cause too: on the H100 (2026-11-27,
        # seed 6666, a host_sync) its guess was wrong as well; on CPU seeds it can be right.
        ("fixtures/by_parameters.ipynb", "failed", {"slowest_module", "top_k", "cause?"}),
        ("fixtures/no_kv_cache.ipynb", "failed", {"kv_cache_bytes"}),
    ],
)
def test_the_starter_and_wrong_answers_fail_on_a_gpu(
    gpu_policy, tmp_path, monkeypatch, notebook, status, failed
):
    report = grade_on_gpu(gpu_policy, tmp_path, monkeypatch, notebook, SEED)
    record(notebook, SEED, report)
    assert report["status"] == status, report["message"]
    if failed is not None:
        # "name?" may fail or pass; every other name must fail, and nothing else may.
        must = {name for name in failed if not name.endswith("?")}
        may = {name.rstrip("?") for name in failed}
        got = {c["name"] for c in report["criteria"] if not c["passed"]}
        assert must <= got <= may, got
