"""Grader for the `softmax` lab: a numerically stable row softmax in float32.

Trust boundary: this module runs in the worker. The learner's function runs only in a
sandboxed child (runner.harness.serve) that never sees the seed; the naive baseline runs in a
second, clean child that loads nothing but `naive_softmax` below. Inputs come from the secret
seed, the float64 reference is computed here, every comparison happens here, and every clock
read happens here.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.graders.base import GradeResult, evaluate_criteria, failure, verdict
from runner.harness.client import Entry, HarnessFailure, ServedFunction
from runner.harness.correctness import Tally, compare_output
from runner.labspec import LabSpec
from runner.measure.plot import timeline_svg
from runner.measure.stats import speedup, summarize
from runner.measure.timing import Contender, TimingPolicy, time_interleaved
from runner.sandbox import ResourceLimits, SandboxPolicy

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


class _GraderBroken(Exception):
    """The trusted baseline failed: our bug or the node's, never the learner's."""


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
class _Options:
    atol: float
    rtol: float
    load_timeout_s: float
    call_timeout_s: float
    timing_rows: int
    timing_cols: int
    threads: int  # torch threads in both children; 0 keeps torch's default
    timing: TimingPolicy

    @classmethod
    def from_spec(cls, spec: LabSpec, device_class: str) -> _Options:
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
        )


def grade(
    *,
    spec: LabSpec,
    solution_path: Path,
    seed: str,
    device_class: str,
    workdir: Path,
    sandbox: SandboxPolicy,
    locate: Callable[[int], tuple[int, int] | None] | None = None,
    limits: ResourceLimits | None = None,
) -> GradeResult:
    options = _Options.from_spec(spec, device_class)
    correctness_rng, timing_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed, 16)).spawn(2)
    )
    device = "cuda" if device_class == "gpu" else "cpu"
    cases = GPU_CASES if device_class == "gpu" else CPU_CASES
    (workdir / "baseline").mkdir(exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    # Memory, processes and tmpfs size as the pipeline decided (lab.toml, or less if the job
    # asked); CPU time and CPUs are the grader's business.
    limits = dataclasses.replace(
        limits or ResourceLimits(cpu_seconds=600, file_size_bytes=16 << 20),
        cpu_seconds=600,
        file_size_bytes=16 << 20,
        cpus=timing_cpus(options.threads),
    )
    common = {
        "policy": sandbox,
        "limits": limits,
        "device": device,
        "threads": options.threads,
        # A fixed mmap threshold: otherwise glibc adapts it to each process's own history of
        # frees, and two processes running the same code can differ by 10% in page faults.
        "env": {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)},
    }
    with contextlib.ExitStack() as stack:
        candidate = stack.enter_context(
            ServedFunction(
                entry=Entry(
                    label=f"your {spec.solution}()", file=solution_path, function=spec.solution
                ),
                jobdir=solution_path.parent,
                log_path=workdir / "logs" / "candidate.log",
                locate=locate,
                **common,
            )
        )
        baseline = stack.enter_context(
            ServedFunction(
                entry=Entry(label="the naive baseline", trusted=BASELINE),
                jobdir=workdir / "baseline",
                log_path=workdir / "logs" / "baseline.log",
                **common,
            )
        )
        run = _Run(spec=spec, device_class=device_class, options=options, candidate=candidate)
        try:
            candidate.wait_ready(timeout_s=options.load_timeout_s)
            _trusted(baseline.wait_ready, timeout_s=options.load_timeout_s)
            tally = run.check_correctness(correctness_rng, cases)
            # The baseline answers the same cases: a check on the grader itself, and it gives
            # both processes the same history before they are timed.
            _trusted(run.check_baseline, baseline, cases)
            timing = None
            if tally.mismatched == 0:
                timing = run.time_against(baseline, timing_rng, tally)
        except (HarnessFailure, _GraderBroken) as exc:
            broken = isinstance(exc, _GraderBroken)
            return failure(
                spec=spec,
                device_class=device_class,
                kind="error" if broken else exc.kind,
                message=(f"The grader failed, not your code: {exc}" if broken else exc.message),
                metrics=run.metrics,
                log_tail=candidate.log_tail(),
            )
        return run.finish(tally, timing)


def timing_cpus(threads: int) -> frozenset[int] | None:
    """Pin both timed children to the same CPUs, away from the worker's first CPU, so they
    are timed on identical cores; None when the machine is too small to spare them."""
    available = sorted(os.sched_getaffinity(0))
    if threads < 1 or len(available) <= threads:
        return None
    return frozenset(available[-threads:])


def _trusted(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except HarnessFailure as exc:
        raise _GraderBroken(exc.message) from None


class _WrongWhileTimed(Exception):
    pass


class _Run:
    """The state of one grading run, so each step reads as one short method."""

    def __init__(
        self,
        *,
        spec: LabSpec,
        device_class: str,
        options: _Options,
        candidate: ServedFunction,
    ) -> None:
        self.spec = spec
        self.device_class = device_class
        self.options = options
        self.candidate = candidate
        self.metrics: dict[str, Any] = {}
        self.plots: list[dict[str, str]] = []

    def check_correctness(self, rng: np.random.Generator, cases: tuple) -> Tally:
        tally = Tally()
        for rows, cols, kind in cases:
            x = make_input(rng, rows, cols, kind)
            expected = reference(x)  # computed before the candidate ever sees x
            result = self.candidate.call([x], timeout_s=self.options.call_timeout_s)
            tally.add(
                f"{kind} {rows}x{cols}",
                compare_output(
                    got=result.arrays[0] if result.arrays and len(result.arrays) == 1 else None,
                    expected=expected,
                    dtype=DTYPE,
                    atol=self.options.atol,
                    rtol=self.options.rtol,
                    returned_type=result.returned_type
                    or (f"{len(result.arrays)} tensors" if result.arrays else None),
                ),
            )
        self.metrics["correctness"] = tally.to_dict(atol=self.options.atol, rtol=self.options.rtol)
        return tally

    def check_baseline(self, baseline: ServedFunction, cases: tuple) -> None:
        rng = np.random.default_rng(0)
        for rows, cols, kind in cases:
            x = make_input(rng, rows, cols, kind)
            result = baseline.call([x], timeout_s=self.options.call_timeout_s)
            comparison = compare_output(
                got=result.arrays[0] if result.arrays else None,
                expected=reference(x),
                dtype=DTYPE,
                atol=self.options.atol,
                rtol=self.options.rtol,
            )
            if not comparison.ok:
                raise _GraderBroken(f"the naive baseline is wrong on {kind} {rows}x{cols}")

    def time_against(
        self, baseline: ServedFunction, rng: np.random.Generator, tally: Tally
    ) -> dict[str, Any] | None:
        rows, cols = self.options.timing_rows, self.options.timing_cols
        timeout = self.options.call_timeout_s
        candidate = self.candidate

        def run_candidate(x: np.ndarray) -> tuple[int, Any]:
            return candidate.timed_call([x], timeout_s=timeout)

        def run_baseline(x: np.ndarray) -> tuple[int, Any]:
            return _trusted(baseline.timed_call, [x], timeout_s=timeout)

        def isolate(active: ServedFunction, other: ServedFunction) -> Callable[[], None]:
            def prepare() -> None:
                other.pause()
                active.resume()

            return prepare

        def check(name: str, x: np.ndarray, result: Any) -> None:
            # Re-check outputs produced while being timed, on random rows: a cheat that is only
            # right when it is not timed (or only fast when it is wrong) fails here.
            probe = np.sort(rng.choice(rows, size=min(4, rows), replace=False))
            got = result.arrays[0][probe] if result.arrays and len(result.arrays) == 1 else None
            comparison = compare_output(
                got=got,
                expected=reference(x[probe]),
                dtype=DTYPE,
                atol=self.options.atol,
                rtol=self.options.rtol,
                returned_type=result.returned_type,
            )
            if name == "baseline" and not comparison.ok:
                raise _GraderBroken("the naive baseline returned a wrong answer")
            if not comparison.ok:
                tally.add(f"timed call, rows {probe.tolist()} of {rows}x{cols}", comparison)
                raise _WrongWhileTimed()

        contenders = [
            Contender("candidate", run_candidate, isolate(candidate, baseline)),
            Contender("baseline", run_baseline, isolate(baseline, candidate)),
        ]
        try:
            result = time_interleaved(
                contenders=contenders,
                make_input=lambda _: rng.standard_normal((rows, cols), dtype=np.float32) * 3,
                policy=self.options.timing,
                check=check,
            )
        except _WrongWhileTimed:
            self.metrics["correctness"] = tally.to_dict(
                atol=self.options.atol, rtol=self.options.rtol
            )
            return None
        finally:
            candidate.resume()
            baseline.resume()
        return self._timing_metrics(result)

    def _timing_metrics(self, result: Any) -> dict[str, Any]:
        us = 1e-3
        cand, base = result.samples["candidate"], result.samples["baseline"]
        ratio = speedup(baseline=base, candidate=cand)
        timing = {
            "shape": [self.options.timing_rows, self.options.timing_cols],
            "dtype": DTYPE,
            "unit": "us",
            "candidate": summarize(cand).scaled(us).to_dict(),
            "baseline": summarize(base).scaled(us).to_dict(),
            "speedup": ratio.to_dict(),
            "rounds": result.rounds,
            "stop_reason": result.stop_reason,
            "converged": result.converged,
            "elapsed_s": round(result.elapsed_s, 3),
            "method": (
                "round trip of each call through the harness pipe, timed in the trusted worker "
                "with perf_counter_ns; candidate and baseline interleaved on the same fresh "
                "inputs; the idle side paused. IPC is paid by both sides, which pulls the "
                "speedup toward 1 (conservative)."
            ),
        }
        self.metrics["timing"] = timing
        svg = timeline_svg(
            series={
                f"your {self.spec.solution}": [v * us for v in cand],
                "naive baseline": [v * us for v in base],
            },
            unit="us",
            title=f"Time per call, {self.options.timing_rows}x{self.options.timing_cols} float32",
        )
        self.plots.append(
            {
                "name": "timing",
                "mime": "image/svg+xml",
                "data_base64": base64.b64encode(svg.encode()).decode(),
            }
        )
        return timing

    def finish(self, tally: Tally, timing: dict[str, Any] | None) -> GradeResult:
        measured: dict[str, float | None] = {
            "mismatched_elements": float(tally.mismatched),
            "non_finite_outputs": float(tally.non_finite),
            "speedup_vs_naive": timing["speedup"]["value"] if timing else None,
        }
        flags = []
        if timing and timing["speedup"]["value"] > REVIEW_SPEEDUP:
            flags.append(f"speedup over {REVIEW_SPEEDUP:g}x: flagged for instructor review")
        self.metrics["flags"] = flags
        self.metrics["measured"] = measured
        criteria = evaluate_criteria(
            spec=self.spec,
            device_class=self.device_class,
            measured=measured,
            notes={"speedup_vs_naive": "outputs were wrong, so speed was not measured."},
        )
        headline = ""
        if timing:
            s = timing["speedup"]
            headline = (
                f"Speedup vs naive PyTorch: {s['value']:.2f}x "
                f"(95% CI {s['ci95_low']:.2f}-{s['ci95_high']:.2f})."
            )
        status, message = verdict(criteria, headline=headline)
        return GradeResult(
            status=status,
            message=message,
            criteria=criteria,
            metrics=self.metrics,
            mismatches=tally.mismatches,
            plots=self.plots,
            log_tail=self.candidate.log_tail(),
        )
