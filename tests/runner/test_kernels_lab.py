"""The `kernels` lab (part 1, fused residual-add + RMSNorm in Triton) at CPU scale: every
notebook through the real pipeline (sandbox, executor, Triton's interpreter, grader), and the
GPU-only timing path driven on CPU with the in-process bench.

Each notebook is graded once per module (about 4-5 s each: a sandboxed kernel, then the
sandboxed candidate, both importing torch and triton).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from runner.graders import kernels
from runner.graders.kernels_lab import (
    CPU_CASES,
    GPU_CASES,
    make_inputs,
    naive_fused_add_rmsnorm,
    reference,
    triton_environment,
)
from runner.graders.kernels_timing import operation, workload
from runner.labspec import load_lab_spec
from runner.measure.peaks import Peaks
from runner.pipeline import run_job
from runner.schema import check_report
from tests.runner.support import REPO, criterion, make_job, read_notebook

pytestmark = pytest.mark.timeout(300)

LAB = REPO / "notebooks" / "kernels"
FIXTURES = LAB / "fixtures"


@pytest.fixture(scope="module")
def kernels_spec():
    return load_lab_spec(LAB)


@pytest.fixture(scope="module")
def graded(policy, tmp_path_factory):
    """graded("reference.ipynb" or a fixture name) -> report, computed once per module."""
    cache: dict[str, dict[str, Any]] = {}
    workroot = tmp_path_factory.mktemp("kernel-jobs")

    def grade(name: str) -> dict[str, Any]:
        if name not in cache:
            path = LAB / name if (LAB / name).exists() else FIXTURES / name
            job = make_job(
                read_notebook(path),
                lab="kernels",
                limits={"cell_timeout_s": 60, "total_timeout_s": 180, "max_output_bytes": 200_000},
            )
            cache[name] = run_job(job, workroot=workroot, policy=policy)
        return cache[name]

    return grade


# -- the lab's definition, in process ----------------------------------------------------


def test_the_lab_is_defined_under_the_phase_3_milestone(kernels_spec):
    assert kernels_spec.milestone == "advanced-optimization"
    assert kernels_spec.device_classes == ("cpu", "gpu")
    assert kernels_spec.solution == "fused_add_rmsnorm"
    thresholds = {c.name: dict(c.thresholds) for c in kernels_spec.criteria}
    assert thresholds == {
        "correct": {"cpu": 0, "gpu": 0},
        "finite": {"cpu": 0, "gpu": 0},
        "speed": {"gpu": 1.0},
        "bandwidth": {"gpu": 70},
    }


def test_the_naive_baseline_matches_the_float64_reference_at_every_case():
    import torch

    rng = np.random.default_rng(3)
    for case in GPU_CASES[: len(CPU_CASES)]:
        x, residual, weight = make_inputs(rng, case)
        got = naive_fused_add_rmsnorm(
            torch.from_numpy(x), torch.from_numpy(residual), torch.from_numpy(weight), case.eps
        ).numpy()
        expected = reference(x, residual, weight, case.eps)
        assert np.all(np.abs(got - expected) <= 1e-6 + 1e-5 * np.abs(expected)), case


def test_cancelling_rows_are_exactly_zero_and_finite_only_thanks_to_eps():
    case = next(c for c in CPU_CASES if c.kind == "cancel")
    x, residual, weight = make_inputs(np.random.default_rng(0), case)
    assert not (x[0] + residual[0]).any()
    assert np.all(reference(x, residual, weight, case.eps)[0] == 0)


def test_the_cases_include_non_powers_of_two_and_repeated_shapes():
    hidden = {c.hidden for c in CPU_CASES}
    assert {1, 7, 129, 1000, 4099} <= hidden and 2048 in hidden
    shapes = [(c.rows, c.hidden) for c in CPU_CASES]
    assert len(set(shapes)) < len(shapes)


def test_triton_runs_interpreted_only_on_cpu_and_caches_inside_the_job():
    cpu = triton_environment(device="cpu", interpret_on_cpu=True, home="/job")
    assert cpu == {
        "TRITON_INTERPRET": "1",
        "TRITON_CACHE_DIR": "/job/.triton/cache",
        "TRITON_HOME": "/job",
    }
    assert "TRITON_INTERPRET" not in triton_environment(
        device="cuda", interpret_on_cpu=True, home="/job"
    )
    assert "TRITON_INTERPRET" not in triton_environment(
        device="cpu", interpret_on_cpu=False, home="/job"
    )


def test_timed_probes_use_the_residual_rows_of_the_probed_indices(kernels_spec):
    options = kernels.Options.from_spec(kernels_spec, "gpu")
    op = operation(8, 33, 1e-5, options)
    x, residual, weight = op.make_set(np.random.default_rng(1))
    rows = np.array([2, 5])
    expected = reference(x, residual, weight, 1e-5)[rows]
    np.testing.assert_array_equal(op.reference_rows(x[rows], [residual, weight], rows), expected)
    assert op.scalars == (1e-5,)
    assert workload(8192, 4096).bytes_moved == (3 * 8192 * 4096 + 4096) * 4


# -- every notebook through the pipeline, on a CPU worker --------------------------------


def test_the_reference_passes_on_cpu_with_speed_and_bandwidth_left_to_gpu_nodes(graded):
    report = graded("reference.ipynb")
    check_report(report)
    assert report["status"] == "passed", report["message"]
    assert report["message"] == (
        "All 2 criteria passed. Not evaluated on cpu: speed, bandwidth (GPU nodes only)."
    )
    assert criterion(report, "correct")["passed"] and criterion(report, "finite")["passed"]
    for name in ("speed", "bandwidth"):
        row = criterion(report, name)
        assert row["evaluated"] is False and row["measured"] is None and row["threshold"] is None
        assert row["explanation"].startswith("Not evaluated on cpu workers: measured on GPU")
    assert report["metrics"]["evaluated_where"] == {
        "correct": ["cpu", "gpu"],
        "finite": ["cpu", "gpu"],
        "speed": ["gpu"],
        "bandwidth": ["gpu"],
    }
    correctness = report["metrics"]["correctness"]
    assert correctness["cases"] == len(CPU_CASES) and correctness["mismatched_elements"] == 0
    assert "timing" not in report["metrics"]  # nothing is timed on cpu
    assert report["environment"]["triton"]
    assert "Triton interpreter: True" in report["log_tail"]
    json.dumps(report, allow_nan=False)


def test_the_untouched_starter_errors_with_the_helpful_message(graded):
    report = graded("kernels.ipynb")
    assert report["status"] == "error"
    assert report["message"].startswith(
        "Cell 12 raised NotImplementedError: Implement fused_add_rmsnorm: launch "
        "_fused_add_rmsnorm_kernel on a grid of (rows,) with BLOCK = "
        "triton.next_power_of_2(hidden)"
    )


def test_forgetting_eps_fails_correct_and_finite_and_names_the_cases(graded):
    report = graded("no_eps.ipynb")
    assert report["status"] == "failed"
    assert not criterion(report, "correct")["passed"]
    assert criterion(report, "finite")["measured"] > 0
    failed = report["metrics"]["correctness"]["failed_cases"]
    assert any(case.startswith("cancel 64x768") for case in failed)
    assert any(case.startswith("small 17x1000 (eps=0.01)") for case in failed)
    assert report["mismatches"] and {"case", "index", "expected", "got"} <= set(
        report["mismatches"][0]
    )
    assert report["message"].startswith("2 of 2 criteria failed: correct (measured ")


def test_dividing_by_block_is_wrong_exactly_where_hidden_is_not_a_power_of_two(graded):
    report = graded("mean_over_block.ipynb")
    assert report["status"] == "failed"
    assert not criterion(report, "correct")["passed"]
    assert criterion(report, "finite")["passed"]
    failed = report["metrics"]["correctness"]["failed_cases"]
    hidden = {int(case.split()[1].split("x")[1]) for case in failed}
    assert hidden and all(h & (h - 1) for h in hidden)  # no power of two among them


def test_a_pure_pytorch_answer_passes_on_cpu_where_only_correctness_is_graded(graded):
    # Documented in docs/labs/kernels.md: graded by measuring, not by reading the code; on a
    # GPU the same answer is the naive baseline and fails the speed bar.
    report = graded("pure_pytorch.ipynb")
    assert report["status"] == "passed", report["message"]
    assert not criterion(report, "speed")["evaluated"]


def test_answers_cached_by_shape_come_back_stale_and_are_named(graded):
    report = graded("cached.ipynb")
    assert report["status"] == "failed"
    assert not criterion(report, "correct")["passed"]
    assert all(
        case.endswith("shape met again with fresh values")
        for case in report["metrics"]["correctness"]["failed_cases"]
    )
    assert "an answer cached by shape or by input pointer comes back stale" in report["message"]


def test_replacing_comparisons_and_clocks_is_caught_and_finds_no_seed(graded):
    report = graded("monkeypatch.ipynb")
    assert report["status"] == "failed"
    assert report["message"].startswith(
        "Your fused_add_rmsnorm() replaced time.perf_counter_ns, torch.allclose while loading."
    )
    assert "5eed0000111122223333444455556666" not in json.dumps(report)


# -- the GPU-only path (timing, roofline, speed and bandwidth criteria), driven on CPU ----


def timed_on_cpu(spec):
    """The lab with its GPU-only criteria given cpu thresholds and a tiny cpu timing shape,
    so that the GPU code path runs here (with the host clock instead of CUDA events)."""
    criteria = tuple(
        dataclasses.replace(c, thresholds={**c.thresholds, "cpu": c.thresholds["gpu"]})
        for c in spec.criteria
    )
    options = dict(spec.options)
    options["timing"] = {"cpu": {"rows": 16, "hidden": 257, "time_cap_s": 0.3, "min_rounds": 5}}
    return dataclasses.replace(spec, criteria=criteria, options=options)


def test_the_gpu_timing_path_measures_speed_and_bandwidth(
    kernels_spec, policy, tmp_path, monkeypatch
):
    fake_peaks = Peaks(
        memory_bytes_per_s=1e9,
        flops_per_s={"fp32": 1e13},
        device={"kind": "cpu"},
        measured_at="2026-11-27T00:00:00Z",
        method="a test's made-up peaks",
    )
    monkeypatch.setattr("runner.graders.reporting.node_peaks", lambda *a, **k: (fake_peaks, None))
    notebook = read_notebook(LAB / "reference.ipynb")
    source = next(
        "".join(c["source"])
        for c in notebook["cells"]
        if "solution" in c["metadata"].get("tags", [])
    )
    (tmp_path / "candidate").mkdir()
    solution = tmp_path / "candidate" / "solution.py"
    solution.write_text(source)
    result = kernels.grade(
        spec=timed_on_cpu(kernels_spec),
        solution_path=solution,
        seed="0123456789abcdef0123456789abcdef",
        device_class="cpu",
        workdir=tmp_path,
        sandbox=policy,
    )
    assert result.status in ("passed", "failed"), result.message
    speed = next(c for c in result.criteria if c.name == "speed")
    bandwidth = next(c for c in result.criteria if c.name == "bandwidth")
    timing = result.metrics["timing"]
    assert speed.evaluated and speed.measured == timing["speedup"]["ci95_low"]
    assert timing["shape"] == [16, 257] and timing["candidate"]["n"] >= 5
    roofline = result.metrics["roofline"]
    assert bandwidth.evaluated and bandwidth.measured == roofline["percent_of_copy_bandwidth"] > 0
    assert {p["name"] for p in result.plots} == {"timing", "roofline"}
