"""The `softmax` lab's definition for its grader: the cases, the float64 reference, the
trusted naive baseline, and the options read from lab.toml. runner.graders.softmax grades with
them; runner.graders.softmax_timing times with them."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.harness.bench import BenchPolicy
from runner.labspec import LabSpec
from runner.measure.timing import TimingPolicy

BASELINE = "runner.graders.softmax:naive_softmax"
DTYPE = "float32"
REVIEW_SPEEDUP = 10.0

# (rows, cols, kind): non-powers of two, single rows and columns, and the magnitudes that
# break the naive formula (exp overflows float32 above ~88.7 and underflows below ~-103).
CPU_CASES = (
    (1, 1, "normal"),
    (5, 1, "normal"),
    (1, 7, "large"),
    (17, 33, "normal"),
    (3, 1000, "large"),
    (64, 257, "negative"),
    (128, 129, "spread"),
    (8, 513, "constant"),
    (31, 4099, "normal"),
    (1, 10007, "spread"),
)
GPU_CASES = CPU_CASES + ((1024, 32000, "spread"), (4096, 4099, "large"))


def naive_softmax(x: Any) -> Any:
    """The baseline: the textbook stable composition of separate PyTorch ops, unfused."""
    import torch

    shifted = x - torch.max(x, dim=-1, keepdim=True).values
    exps = torch.exp(shifted)
    return exps / torch.sum(exps, dim=-1, keepdim=True)


def reference(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64, from the float32 input converted exactly."""
    x64 = x.astype(np.float64)
    exps = np.exp(x64 - x64.max(axis=-1, keepdims=True))
    return exps / exps.sum(axis=-1, keepdims=True)


def make_input(rng: np.random.Generator, rows: int, cols: int, kind: str) -> np.ndarray:
    shape = (rows, cols)
    if kind == "normal":
        x = rng.standard_normal(shape) * 3
    elif kind == "large":
        x = rng.uniform(-1000, 1000, shape)
    elif kind == "negative":
        x = rng.uniform(-2000, -1000, shape)
    elif kind == "spread":
        x = rng.standard_normal(shape) * 30
    elif kind == "constant":
        x = np.repeat(rng.uniform(-50, 50, (rows, 1)), cols, axis=1)
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


@dataclass(frozen=True)
class Options:
    atol: float
    rtol: float
    load_timeout_s: float
    call_timeout_s: float
    timing_rows: int
    timing_cols: int
    threads: int  # torch threads in both children; 0 keeps torch's default
    timing: TimingPolicy
    # "round_trip": each call timed through the pipe by the worker (CPU default);
    # "in_process": each child times its own calls, checked by runner.harness.bench (GPU).
    method: str
    bench: BenchPolicy

    def longer(self) -> Options:
        """The same measurement with twice the time cap, for a second, decisive try."""
        return dataclasses.replace(
            self,
            timing=dataclasses.replace(self.timing, time_cap_s=2 * self.timing.time_cap_s),
            bench=dataclasses.replace(self.bench, time_cap_s=2 * self.bench.time_cap_s),
        )

    @classmethod
    def from_spec(cls, spec: LabSpec, device_class: str) -> Options:
        options = dict(spec.options)
        timing = dict(options.get("timing", {}).get(device_class, {}))
        return cls(
            atol=float(options.get("atol", 1e-6)),
            rtol=float(options.get("rtol", 1e-5)),
            load_timeout_s=float(options.get("load_timeout_s", 120)),
            call_timeout_s=float(options.get("call_timeout_s", 20)),
            timing_rows=int(timing.get("rows", 256)),
            timing_cols=int(timing.get("cols", 2000)),
            threads=int(timing.get("threads", 0)),
            timing=TimingPolicy(
                warmup_rounds=int(timing.get("warmup_rounds", 5)),
                min_rounds=int(timing.get("min_rounds", 20)),
                target_rel_sem=float(timing.get("target_rel_sem", 0.005)),
                time_cap_s=float(timing.get("time_cap_s", 3.0)),
            ),
            method=str(
                timing.get("method", "in_process" if device_class == "gpu" else "round_trip")
            ),
            bench=BenchPolicy(
                min_samples=int(timing.get("min_rounds", 30)),
                target_rel_sem=float(timing.get("target_rel_sem", 0.005)),
                time_cap_s=float(timing.get("time_cap_s", 5.0)),
                **({"flush_bytes": int(timing["flush_bytes"])} if "flush_bytes" in timing else {}),
            ),
        )


# A fixed mmap threshold for timed children: otherwise glibc adapts it to each process's own
# history of frees, and two processes running the same code can differ by 10% in page faults.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def timing_cpus(threads: int) -> frozenset[int] | None:
    """Pin both timed children to the same CPUs, away from the worker's first CPU, so they
    are timed on identical cores; None when the machine is too small to spare them."""
    available = sorted(os.sched_getaffinity(0))
    if threads < 1 or len(available) <= threads:
        return None
    return frozenset(available[-threads:])


class WrongWhileTimed(Exception):
    pass
