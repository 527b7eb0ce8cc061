"""The sandboxed children of one grading run, and the one way a run stops early.

Every grader runs the learner's code in one sandboxed child (runner.harness.serve) and, most
of them, trusted code of its own (a baseline, the grader's measurement) in others, all under
the same policy, limits and device. This module is that shared set-up, so that a grader's
`grade()` reads as its lab's steps:

    limits = grading_limits(limits, cpu_seconds=600, file_size_bytes=16 << 20)
    with GradingChildren(spec=spec, ..., limits=limits, threads=options.threads) as children:
        candidate = children.learner(adapter=ADAPTER)
        baseline = children.grader_side("baseline", BASELINE, label="the naive baseline")
        run = _Run(...)

        def steps() -> GradeResult:
            ...
            return run.finish(...)

        return children.result_of(steps, metrics=run.metrics, timeout_s=options.load_timeout_s)

Trust is in the names: a failure of the learner's child is the learner's (error, timeout, or
failed when the harness caught a cheat); a failure of a `grader_side` child is the grader's
(runner.graders.base.GraderBroken), reported as such and never held against the learner.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from runner.gpu import gpu_indices, nvml_index_of_minor
from runner.graders.base import GraderBroken, GradeResult, failure_from, trusted
from runner.harness.bench import BenchRejected
from runner.harness.client import Entry, HarnessFailure, ServedFunction
from runner.labspec import LabSpec
from runner.sandbox import ResourceLimits, SandboxPolicy


def grading_limits(
    given: ResourceLimits | None, *, cpu_seconds: int, file_size_bytes: int, **more: Any
) -> ResourceLimits:
    """The pipeline's limits (memory, processes and tmpfs size from lab.toml, or less if the
    job asked) with what the grader sets itself: CPU time and file size always, and `more`,
    e.g. `cpus` where its children are timed on pinned cores."""
    mine = {"cpu_seconds": cpu_seconds, "file_size_bytes": file_size_bytes, **more}
    return dataclasses.replace(given or ResourceLimits(**mine), **mine)


class GradingChildren:
    """Starts the children of one grading run alike and stops them all on leaving the `with`.

    `shared` are the ServedFunction keywords every child gets (`threads`, `env`,
    `max_payload_bytes`, ...); a call's own keywords add to them. `env_for`, where a child's
    environment depends on its job folder (Triton's cache under the sandbox's view of it),
    gives that environment. `device` defaults to the device class's ("cuda" on GPU nodes)."""

    def __init__(
        self,
        *,
        spec: LabSpec,
        device_class: str,
        solution_path: Path,
        workdir: Path,
        sandbox: SandboxPolicy,
        limits: ResourceLimits,
        locate: Callable[[int], tuple[int, int] | None] | None = None,
        device: str | None = None,
        env_for: Callable[[Path], Mapping[str, str]] | None = None,
        **shared: Any,
    ) -> None:
        self.spec = spec
        self.device_class = device_class
        self.solution_path = solution_path
        self.workdir = workdir
        self.sandbox = sandbox
        self.limits = limits
        self.locate = locate
        self.device = device or ("cuda" if device_class == "gpu" else "cpu")
        self.env_for = env_for
        self.shared = shared
        self._stack = contextlib.ExitStack()
        self._learner: ServedFunction | None = None
        self._grader_side: list[ServedFunction] = []
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> GradingChildren:
        self._stack.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> bool | None:
        return self._stack.__exit__(*exc_info)

    @property
    def gpu_index(self) -> int:
        """NVML's index of the GPU this job's sandboxes may use, for telemetry (0 off GPU)."""
        return nvml_index_of_minor((gpu_indices(self.sandbox.gpu_devices) or (0,))[0])

    def learner(
        self, *, adapter: str | None = None, label: str | None = None, **extra: Any
    ) -> ServedFunction:
        """The child serving the learner's solution function (lab.toml's `solution`)."""
        entry = Entry(
            label=label or f"your {self.spec.solution}()",
            file=self.solution_path,
            function=self.spec.solution,
            adapter=adapter,
        )
        self._learner = self._start(entry, self.solution_path.parent, "candidate.log", **extra)
        return self._learner

    def grader_side(
        self, name: str, target: str, *, label: str, adapter: str | None = None, **extra: Any
    ) -> ServedFunction:
        """A clean child serving trusted `module:function` from its own job folder
        (workdir/<name>), logging to logs/<name>.log. `label` reads mid-sentence."""
        jobdir = self.workdir / name
        jobdir.mkdir(exist_ok=True)
        entry = Entry(label=label, trusted=target, adapter=adapter)
        child = self._start(entry, jobdir, f"{name}.log", **extra)
        self._grader_side.append(child)
        return child

    def result_of(
        self,
        steps: Callable[[], GradeResult],
        *,
        metrics: Mapping[str, Any],
        timeout_s: float,
    ) -> GradeResult:
        """Wait until every child has loaded (`timeout_s` each), then run the grader's
        `steps`. A run that stops early (the learner's code crashed, hung or was caught
        cheating, or the grader's side broke) becomes its GradeResult, with the `metrics`
        measured so far and the tail of the learner's log."""
        if self._learner is None:
            raise RuntimeError("start the learner's child before grading")
        learner = self._learner
        try:
            learner.wait_ready(timeout_s=timeout_s)
            for child in self._grader_side:
                trusted(child.wait_ready, timeout_s=timeout_s)
            return steps()
        except (BenchRejected, HarnessFailure, GraderBroken) as exc:
            return failure_from(
                exc,
                spec=self.spec,
                device_class=self.device_class,
                metrics=metrics,
                log_tail=learner.log_tail(),
            )

    def _start(self, entry: Entry, jobdir: Path, log: str, **extra: Any) -> ServedFunction:
        options = {**self.shared, **extra}
        if self.env_for is not None and "env" not in options:
            options["env"] = dict(self.env_for(jobdir))
        child = ServedFunction(
            entry=entry,
            policy=self.sandbox,
            jobdir=jobdir,
            log_path=self.workdir / "logs" / log,
            limits=self.limits,
            device=self.device,
            locate=self.locate if entry.trusted is None else None,
            **options,
        )
        return self._stack.enter_context(child)
