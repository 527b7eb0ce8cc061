"""The `quantization` lab graded end to end on a GPU node: the reference and the starter
through the real pipeline with the sandbox's GPU device nodes. Quality is measured on the
committed trained model; decode speed on random weights of Llama-2-7B shapes (lab.toml's
options.scale.gpu.speed_model), and the report says which is which.

Skipped where there is no NVIDIA GPU (CI has none). On a GPU node, after installing a worker
(docs/gpu-worker.md):

    python -m pytest -m gpu tests/runner/test_gpu_quantization.py -s

It prints every measured value: docs/labs/quantization.md records them (card, date,
versions) and the GPU thresholds in lab.toml, PROVISIONAL until then, are set from them.
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
    pytest.mark.timeout(1800),
]

LAB = REPO / "notebooks" / "quantization"
QUALITY = (
    "int8_bytes",
    "int8_perplexity",
    "int8_kl",
    "int4_bytes",
    "int4_perplexity",
    "int4_kl",
    "calibrated_bytes",
    "calibrated_perplexity",
    "calibrated_beats_rtn",
)


def grade_on_gpu(gpu_policy, tmp_path, monkeypatch, notebook: str):
    from runner.pipeline import run_job

    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path.parent / "runner-cache"))
    report = run_job(
        make_job(
            read_notebook(LAB / notebook),
            lab="quantization",
            device_class="gpu",
            seed=SEED,
            limits={"cell_timeout_s": 120, "total_timeout_s": 600, "max_output_bytes": 200_000},
        ),
        workroot=tmp_path,
        policy=gpu_policy,
        gpu_check=GpuMemoryCheck(indices=(0,)),
    )
    metrics = report["metrics"]
    print(
        f"\nquantization {notebook}: {report['status']} - {report['message']}\n"
        + json.dumps(
            {
                "gpu": (report["environment"].get("gpu") or {}).get("name"),
                "weights": metrics.get("weights"),
                "measured": metrics.get("measured"),
                "baseline": metrics.get("baseline"),
                "large_speed": metrics.get("large_speed"),
                "methods": metrics.get("methods"),
                "durations": report["durations"],
            },
            indent=1,
        )
    )
    return report


def test_the_reference_meets_every_quality_and_bytes_bar_on_a_gpu(
    gpu_policy, tmp_path, monkeypatch
):
    report = grade_on_gpu(gpu_policy, tmp_path, monkeypatch, "reference.ipynb")
    criteria = {c["name"]: c for c in report["criteria"]}
    assert all(criteria[name]["passed"] for name in QUALITY), report["message"]
    # Speed on random weights of a real shape, measured for every method at batch 1 and the
    # larger batch, eager and replayed from a CUDA graph. INT4's graphed speedup at batch 1 is
    # graded; INT8's is shown only: torch has no fast int8 weight-only kernel on CUDA
    # (lab.toml says what was measured).
    assert report["metrics"]["weights"]["speed"].startswith("random weights of llama-2-7b")
    for method in ("baseline", "int8", "int4"):
        speeds = report["metrics"]["large_speed"][method]["speed"]
        assert set(speeds) == {"1", "32"}
        assert all(s["decode_tokens_per_s"] > 0 for s in speeds.values())
        assert speeds["1"]["graphed_decode_tokens_per_s"] > 0, speeds  # the graded batch
        # At batch 32 random weights' near-ties may fail the token check (agreement measured
        # 0.938-0.947, docs/labs/quantization.md): shown, not graded, so either is fine.
        assert "graphed_decode_tokens_per_s" in speeds["32"] or speeds["32"]["graph_problem"]
    assert criteria["int8_decode_speed"]["evaluated"] is False
    assert criteria["int8_decode_speed"]["measured"] is not None
    assert criteria["int4_decode_speed"]["evaluated"] is True
    assert criteria["int4_decode_speed"]["passed"], criteria["int4_decode_speed"]
    assert report["status"] == "passed", report["message"]


def test_the_starter_errors_on_a_gpu(gpu_policy, tmp_path, monkeypatch):
    report = grade_on_gpu(gpu_policy, tmp_path, monkeypatch, "quantization.ipynb")
    assert report["status"] == "error"
    assert "NotImplementedError" in report["message"]
