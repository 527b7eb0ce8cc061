"""Trusted kernels for measuring the measurement: served like a lab's baseline, in the
sandbox, so a benchmark of the timing method (bench/measurement_noise.py) goes through the same
processes, protocol and checks as a graded submission. Timing a kernel against itself (an A/A
run) shows the method's bias: the speedup must come out at 1.0 within its interval."""

from __future__ import annotations

from typing import Any


def softmax(x: Any) -> Any:
    import torch

    return torch.softmax(x, dim=-1)


def naive_softmax(x: Any) -> Any:
    from runner.graders.softmax import naive_softmax as naive

    return naive(x)


def copy(x: Any) -> Any:
    return x.clone()


def matmul(a: Any, b: Any) -> Any:
    return a @ b
