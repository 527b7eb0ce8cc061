"""Timing a learner-style softmax against the naive baseline with the in-process bench, in
the real sandbox: shared by the CPU exploit suite (test_bench.py) and the GPU one
(test_gpu_node.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from runner.graders.softmax import reference
from runner.harness.bench import BenchPolicy, BenchResult, RowOperation, measure_pair
from runner.harness.client import Entry, ServedFunction
from runner.harness.correctness import compare_output
from runner.sandbox import ResourceLimits, SandboxPolicy

HONEST = """
import torch
def softmax(x):
    return torch.softmax(x, dim=-1)
"""


class BaselineBroken(Exception):
    """The trusted side failed: a test bug, never the candidate's doing."""


def softmax_operation(rows: int, cols: int) -> RowOperation:
    return RowOperation(
        make_set=lambda r: [r.standard_normal((rows, cols), dtype=np.float32) * 3],
        make_rows=lambda r, n: r.standard_normal((n, cols), dtype=np.float32) * 3,
        reference_rows=lambda x, _others, _indices: reference(x),
        compare=lambda got, expected: compare_output(
            got=got, expected=expected, dtype="float32", atol=1e-6, rtol=1e-5
        ),
    )


def bench_softmax(
    sandbox: SandboxPolicy,
    tmp_path: Path,
    source: str,
    *,
    rows: int,
    cols: int,
    policy: BenchPolicy,
    device: str = "cpu",
    seed: int = 7,
    timeout_s: float = 20,
) -> BenchResult:
    """Serve `source`'s softmax() and the naive baseline, and time them against each other."""
    folder = tmp_path / "candidate"
    folder.mkdir(exist_ok=True)
    path = folder / "solution.py"
    path.write_text(textwrap.dedent(source))

    def served(name: str, **entry: str | Path) -> ServedFunction:
        (tmp_path / name).mkdir(exist_ok=True)
        return ServedFunction(
            entry=Entry(**entry),
            policy=sandbox,
            jobdir=tmp_path / name,
            log_path=tmp_path / f"{name}.log",
            limits=ResourceLimits(cpu_seconds=300, file_size_bytes=1 << 20),
            device=device,
            threads=1 if device == "cpu" else 0,
        )

    with (
        served("candidate", label="your softmax()", file=path, function="softmax") as candidate,
        served(
            "baseline", label="the naive baseline", trusted="runner.graders.softmax:naive_softmax"
        ) as baseline,
    ):
        candidate.wait_ready(timeout_s=120)
        baseline.wait_ready(timeout_s=120)
        return measure_pair(
            candidate=candidate,
            baseline=baseline,
            operation=softmax_operation(rows, cols),
            policy=policy,
            rng=np.random.default_rng(seed),
            timeout_s=timeout_s,
            baseline_broken=BaselineBroken,
        )
