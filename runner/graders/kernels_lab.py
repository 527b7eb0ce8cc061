"""The `kernels` lab's definition for its grader: fused residual-add + RMSNorm.

    h = x + residual;  out = h / sqrt(mean(h^2, over the last dim) + eps) * weight

The cases, the float64 reference, the trusted naive baseline, the inputs drawn from the secret
seed, the options read from lab.toml and the environment Triton needs in the sandbox.
runner.graders.kernels grades with them; runner.graders.kernels_timing times with them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.harness.bench import BenchPolicy
from runner.harness.correctness import tolerance_for
from runner.labspec import LabSpec

BASELINE = "runner.graders.kernels_lab:naive_fused_add_rmsnorm"
DTYPE = "float32"
REVIEW_SPEEDUP = 10.0


@dataclass(frozen=True)
class Case:
    rows: int
    hidden: int
    kind: str  # how x and residual are drawn: see make_inputs
    eps: float

    @property
    def label(self) -> str:
        return f"{self.kind} {self.rows}x{self.hidden} (eps={self.eps:g})"


# Small enough for Triton's interpreter on a 2-core CPU (each program instance runs in Python),
# and chosen so that each classic mistake shows: hidden sizes that are not powers of two (a
# missing mask reads past the row), a single row and a single column, tiny activations where
# eps dominates (forgetting eps, or adding it after the sqrt), rows where residual = -x so h is
# exactly zero (no eps gives 0/0 = NaN), large magnitudes, and each shape of the first pass met
# again with fresh values (an answer cached by shape or by pointer comes back stale).
CPU_CASES = (
    Case(1, 1, "normal", 1e-6),
    Case(3, 7, "normal", 1e-5),
    Case(5, 1, "small", 1e-2),
    Case(17, 1000, "small", 1e-2),
    Case(8, 4099, "large", 1e-6),
    Case(64, 768, "cancel", 1e-5),
    Case(31, 129, "normal", 1e-6),
    Case(4, 2048, "normal", 1e-6),
    Case(17, 1000, "normal", 1e-5),
    Case(64, 768, "normal", 1e-6),
)
# LLM hidden sizes: 4096 (Llama-2-7B / Llama-3-8B), 5120 (13B), 8192 (70B), and odd ones.
GPU_CASES = CPU_CASES + (
    Case(4096, 4096, "normal", 1e-6),
    Case(1024, 8192, "large", 1e-5),
    Case(333, 5120, "cancel", 1e-5),
    Case(257, 4099, "small", 1e-2),
    Case(4096, 4096, "normal", 1e-5),
)


def naive_fused_add_rmsnorm(x: Any, residual: Any, weight: Any, eps: float) -> Any:
    """The baseline: the unfused PyTorch composition, each op a separate pass over memory."""
    import torch

    h = x + residual
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference(x: np.ndarray, residual: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """The answer in float64, from the float32 inputs converted exactly."""
    h = x.astype(np.float64) + residual.astype(np.float64)
    inv_rms = 1.0 / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + eps)
    return h * inv_rms * weight.astype(np.float64)


def make_rows(rng: np.random.Generator, rows: int, hidden: int, kind: str) -> np.ndarray:
    """Rows of x (or of the residual) for a case kind."""
    shape = (rows, hidden)
    if kind in ("normal", "cancel"):
        values = rng.standard_normal(shape)
    elif kind == "small":
        values = rng.standard_normal(shape) * 1e-3
    elif kind == "large":
        values = rng.uniform(-1000, 1000, shape)
    else:
        raise ValueError(kind)
    return values.astype(np.float32)


def make_inputs(rng: np.random.Generator, case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, residual, weight) for a case, float32, contiguous."""
    x = make_rows(rng, case.rows, case.hidden, case.kind)
    residual = make_rows(rng, case.rows, case.hidden, case.kind)
    if case.kind == "cancel":
        # Every other row sums to exactly zero: h = 0, and the answer is 0 only thanks to eps.
        residual[::2] = -x[::2]
    # Signed weights away from 1: a kernel that ignores the weight is wrong almost everywhere.
    weight = rng.uniform(-2.0, 2.0, case.hidden).astype(np.float32)
    return x, residual, weight


@dataclass(frozen=True)
class Options:
    atol: float
    rtol: float
    load_timeout_s: float
    call_timeout_s: float
    triton_interpret_on_cpu: bool
    timing_rows: int
    timing_hidden: int
    timing_eps: float
    bench: BenchPolicy

    def longer(self) -> Options:
        """The same measurement with twice the time cap, for a second, decisive try."""
        return dataclasses.replace(
            self, bench=dataclasses.replace(self.bench, time_cap_s=2 * self.bench.time_cap_s)
        )

    @classmethod
    def from_spec(cls, spec: LabSpec, device_class: str) -> Options:
        options = dict(spec.options)
        timing = dict(options.get("timing", {}).get(device_class, {}))
        atol, rtol = tolerance_for(DTYPE)
        return cls(
            atol=float(options.get("atol", atol)),
            rtol=float(options.get("rtol", rtol)),
            load_timeout_s=float(options.get("load_timeout_s", 120)),
            call_timeout_s=float(options.get("call_timeout_s", 60)),
            triton_interpret_on_cpu=bool(options.get("triton_interpret_on_cpu", False)),
            timing_rows=int(timing.get("rows", 4096)),
            timing_hidden=int(timing.get("hidden", 4096)),
            timing_eps=float(timing.get("eps", 1e-6)),
            bench=BenchPolicy(
                min_samples=int(timing.get("min_rounds", 30)),
                target_rel_sem=float(timing.get("target_rel_sem", 0.005)),
                time_cap_s=float(timing.get("time_cap_s", 5.0)),
                **({"flush_bytes": int(timing["flush_bytes"])} if "flush_bytes" in timing else {}),
            ),
        )


def triton_environment(*, device: str, interpret_on_cpu: bool, home: str) -> dict[str, str]:
    """Environment for a sandboxed child that may run Triton kernels.

    Triton's cache (compiled kernels, its launcher stub) goes under `home`, the sandbox's own
    job folder, so nothing is shared between jobs or left on the node. On CPU, with the lab's
    consent, kernels run in Triton's interpreter (numpy, one program instance at a time): right
    answers, meaningless speed. The variable is read when `@triton.jit` runs, so it must be in
    the environment before the learner's module is imported.
    """
    env = {"TRITON_CACHE_DIR": f"{home}/.triton/cache", "TRITON_HOME": home}
    if device == "cpu" and interpret_on_cpu:
        env["TRITON_INTERPRET"] = "1"
    return env
