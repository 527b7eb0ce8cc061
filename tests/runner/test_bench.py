"""The in-process bench (runner.harness.bench + runner.measure.device_timing) against honest
and cheating candidates, on CPU in the real sandbox. The same checks guard GPU timing; the
GPU-only cases (CUDA events replaced, work left on a side stream) are in
tests/runner/test_gpu_node.py and run on a GPU node."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.harness.bench import BenchPolicy, BenchRejected
from runner.harness.client import HarnessFailure
from tests.runner.bench_support import HONEST, bench_softmax
from tests.runner.support import LAB, make_job, read_notebook, requires_bwrap

pytestmark = requires_bwrap

ROWS, COLS = 64, 256
POLICY = BenchPolicy(sets=2, block=5, min_samples=10, time_cap_s=1.0, wall_target_s=0.02)


def bench(policy, tmp_path: Path, source: str):
    return bench_softmax(policy, tmp_path, source, rows=ROWS, cols=COLS, policy=POLICY)


def rejected(policy, tmp_path: Path, source: str) -> BenchRejected:
    with pytest.raises(BenchRejected) as caught:
        bench(policy, tmp_path, source)
    return caught.value


def test_an_honest_softmax_is_timed_on_both_sides_with_the_checks_recorded(policy, tmp_path):
    result = bench(policy, tmp_path, HONEST)
    assert len(result.candidate.samples) == len(result.baseline.samples) >= POLICY.min_samples
    assert all(t > 0 for t in result.candidate.samples + result.baseline.samples)
    assert result.stop_reason in {"target_rel_sem", "time_cap", "max_samples"}
    assert result.candidate.wall_per_call_ns > 0
    assert set(result.checks) == {"candidate", "baseline"}
    assert "perf_counter_ns" in result.method


def test_hard_coded_output_is_caught_by_the_probes(policy, tmp_path):
    caught = rejected(
        policy,
        tmp_path,
        """
        import torch
        def softmax(x):
            return torch.full_like(x, 1.0 / x.shape[-1])
        """,
    )
    assert caught.wrong is not None
    assert "returned wrong values while being timed" in caught.message


@pytest.mark.parametrize(
    "key",
    ["x.data_ptr()", "tuple(x.shape)", "x[0, :8].numpy().tobytes()"],
    ids=["pointer", "shape", "partial-content"],
)
def test_outputs_cached_by_pointer_shape_or_content_are_caught(policy, tmp_path, key):
    caught = rejected(
        policy,
        tmp_path,
        f"""
        import torch
        cache = {{}}
        def softmax(x):
            key = {key}
            if key not in cache:
                cache[key] = torch.softmax(x, dim=-1)
            return cache[key]
        """,
    )
    assert caught.wrong is not None, caught.message


def test_computing_in_lower_precision_than_allowed_is_caught(policy, tmp_path):
    caught = rejected(
        policy,
        tmp_path,
        """
        import torch
        def softmax(x):
            return torch.softmax(x.to(torch.bfloat16), dim=-1).to(torch.float32)
        """,
    )
    assert caught.wrong is not None
    assert caught.wrong[1].max_rel_error > 1e-4  # bfloat16 keeps 8 bits: ~4e-3


def test_computing_only_part_of_the_output_is_caught(policy, tmp_path):
    caught = rejected(
        policy,
        tmp_path,
        """
        import torch
        def softmax(x):
            out = torch.empty_like(x)
            half = x.shape[0] // 2
            out[:half] = torch.softmax(x[:half], dim=-1)
            return out
        """,
    )
    assert caught.wrong is not None


def test_behaving_differently_once_warmed_up_is_caught(policy, tmp_path):
    caught = rejected(
        policy,
        tmp_path,
        """
        import torch
        calls = 0
        def softmax(x):
            global calls
            calls += 1
            if calls > 8:
                return torch.sigmoid(x)  # fast and wrong, once the warm-up is over
            return torch.softmax(x, dim=-1)
        """,
    )
    assert caught.wrong is not None


def test_answering_in_place_in_the_input_is_rejected(policy, tmp_path):
    caught = rejected(
        policy,
        tmp_path,
        """
        import torch
        def softmax(x):
            x.sub_(x.max(dim=-1, keepdim=True).values).exp_()
            return x.div_(x.sum(dim=-1, keepdim=True))
        """,
    )
    assert "shares memory with its input" in caught.message


def test_editing_the_input_is_rejected(policy, tmp_path):
    caught = rejected(
        policy,
        tmp_path,
        """
        import torch
        def softmax(x):
            out = torch.softmax(x, dim=-1)
            x.mul_(0.5)
            return out
        """,
    )
    assert "changed its input" in caught.message


@pytest.mark.parametrize(
    "patch, name",
    [
        ("time.perf_counter_ns = lambda: 0", "time.perf_counter_ns"),
        ("torch.allclose = lambda *a, **k: True", "torch.allclose"),
        (
            "import runner.measure.device_timing as dt\n"
            "dt.DeviceBench.time_sample = lambda self, i: None",
            "runner.measure.device_timing.DeviceBench.time_sample",
        ),
    ],
    ids=["timer", "allclose", "harness-method"],
)
def test_replacing_timers_comparisons_or_the_harness_fails_and_is_named(
    policy, tmp_path, patch, name
):
    source = f"import time, torch\n{patch}\n" + textwrap.dedent(HONEST)
    with pytest.raises(HarnessFailure) as caught:
        bench(policy, tmp_path, source)
    assert caught.value.kind == "failed"
    assert name in caught.value.message


def test_faking_the_times_from_inside_is_caught_by_the_grader_clock(policy, tmp_path):
    # Reaches the live bench object and swaps its clock for one that reports 1 us per call.
    # No watched name changes; the wall-clock check outside the process catches it.
    caught = rejected(
        policy,
        tmp_path,
        """
        import gc, time, torch
        from runner.measure import device_timing as dt

        class FastClock(dt.HostClock):
            def time_call(self, call):
                return dt.Sample(time_ns=1_000, gap_ns=0, outputs=call())

        def softmax(x):
            for obj in gc.get_objects():
                if type(obj) is dt.DeviceBench and type(obj.backend) is dt.HostClock:
                    obj.backend = FastClock()
            time.sleep(0.002)
            return torch.softmax(x, dim=-1)
        """,
    )
    assert "by the grader's clock" in caught.message


def test_exiting_mid_measurement_is_an_error_not_a_pass(policy, tmp_path):
    with pytest.raises(HarnessFailure) as caught:
        bench(
            policy,
            tmp_path,
            """
            import os, torch
            calls = 0
            def softmax(x):
                global calls
                calls += 1
                if calls == 7:
                    os._exit(0)
                return torch.softmax(x, dim=-1)
            """,
        )
    assert caught.value.kind == "error"
    assert "exited with code 0" in caught.value.message


@pytest.fixture(scope="module")
def in_process_lab(tmp_path_factory) -> Path:
    """The softmax lab with its CPU timing switched to the in-process bench (the GPU method)."""
    import shutil

    root = tmp_path_factory.mktemp("notebooks")
    shutil.copytree(LAB, root / "softmax")
    toml = root / "softmax" / "lab.toml"
    text = toml.read_text()
    assert "[options.timing.cpu]\n" in text
    toml.write_text(
        text.replace("[options.timing.cpu]\n", '[options.timing.cpu]\nmethod = "in_process"\n')
    )
    return root


@pytest.mark.parametrize(
    "notebook, status", [("reference.ipynb", "passed"), ("softmax.ipynb", "error")]
)
def test_the_softmax_grader_runs_on_the_in_process_bench(
    policy, tmp_path, in_process_lab, notebook, status
):
    from runner.pipeline import run_job

    report = run_job(
        make_job(read_notebook(LAB / notebook)),
        workroot=tmp_path,
        policy=policy,
        notebooks=in_process_lab,
    )
    assert report["status"] == status, report["message"]
    if status == "passed":
        timing = report["metrics"]["timing"]
        assert "perf_counter_ns" in timing["method"]
        assert timing["candidate"]["n"] == timing["baseline"]["n"] >= 20
        assert timing["checks"]["candidate"]["wall_per_call_us"] > 0
        assert report["criteria"][2]["measured"] == timing["speedup"]["value"]
