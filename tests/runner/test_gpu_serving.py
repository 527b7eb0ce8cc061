"""The `serving` lab graded end to end on a GPU node: the reference and the starter through the
real pipeline, with the sandbox's GPU device nodes, the engine in bfloat16 on the GPU and the
load harness outside the sandboxes. Prints every measured value for docs/labs/serving.md.

Skipped where there is no NVIDIA GPU (CI has none). On a GPU node:

    python -m pytest -m gpu tests/runner/test_gpu_serving.py -s
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
    pytest.mark.timeout(1200),
]

LAB = REPO / "notebooks" / "serving"


def grade_on_gpu(gpu_policy, tmp_path, monkeypatch, notebook: str):
    from runner.pipeline import run_job

    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path.parent / "runner-cache"))
    report = run_job(
        make_job(
            read_notebook(LAB / notebook),
            lab="serving",
            device_class="gpu",
            seed=SEED,
            limits={"cell_timeout_s": 180, "total_timeout_s": 600, "max_output_bytes": 400_000},
        ),
        workroot=tmp_path,
        policy=gpu_policy,
        gpu_check=GpuMemoryCheck(indices=(0,)),
    )
    metrics = report["metrics"]
    burst = metrics.get("burst") or {}
    slo = metrics.get("slo_run") or {}
    keys = ("completed", "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms")
    print(
        f"\nserving {notebook}: {report['status']} - {report['message']}\n"
        + json.dumps(
            {
                "gpu": (report["environment"].get("gpu") or {}).get("name"),
                "measured": metrics.get("measured"),
                "settings": metrics.get("settings"),
                "engine_reported": metrics.get("engine_reported"),
                "burst": {
                    k: burst.get(k) for k in ("requests", "output_tokens", "output_throughput")
                },
                "burst_summaries": {
                    side: {k: (burst.get(side) or {}).get(k) for k in keys}
                    for side in ("baseline", "candidate")
                },
                "slo_run": {
                    side: {k: (slo.get(side) or {}).get(k) for k in keys}
                    for side in ("baseline", "candidate")
                },
                "durations": report["durations"],
            },
            indent=1,
        )
    )
    return report


def test_the_reference_passes_on_a_gpu(gpu_policy, tmp_path, monkeypatch):
    report = grade_on_gpu(gpu_policy, tmp_path, monkeypatch, "reference.ipynb")
    assert report["metrics"]["settings"]["device"] == "cuda"
    assert report["status"] == "passed", report["message"]


def test_the_starter_errors_on_a_gpu(gpu_policy, tmp_path, monkeypatch):
    report = grade_on_gpu(gpu_policy, tmp_path, monkeypatch, "serving.ipynb")
    assert report["status"] == "error"
    assert "NotImplementedError" in report["message"]
