"""Grader for the `profiling` lab (Phase 1): profile a transformer block stack, find its
slowest modules and why, and break its memory down.

Trust boundary, as for the other labs: this module runs in the worker. The secret seed picks
the model (runner.graders.profiling_lab.draw_config): its sizes, and which leaf module is
slow and why. Two sandboxed children build that same model from the config
(runner.graders.profiling_adapter): a clean one where the grader measures the truth
(runner.graders.profiling_truth), and the learner's, where their `profile_model` runs and whose
request is emptied before their code sees it. Every comparison happens here
(runner.graders.profiling_scoring), on plain data.

What is graded where (lab.toml): the slowest module, the top k, the shares, the cause, the
parameter, KV-cache and activation bytes and the trace on every device class; the allocator
reserve and the workspace on GPU nodes only (a CPU has neither).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runner.graders.base import (
    GraderBroken,
    GradeResult,
    evaluate_criteria,
    trusted,
    verdict,
)
from runner.graders.children import GradingChildren, grading_limits
from runner.graders.profiling_lab import (
    SOLUTION_ADAPTER,
    TRACE_CONTENT_TYPE,
    TRACE_NAME,
    TRUTH,
    TRUTH_ADAPTER,
    Options,
    draw_config,
)
from runner.graders.profiling_model import ModelConfig
from runner.graders.profiling_scoring import Answer, Truth, check_trace, read_answer, score
from runner.graders.softmax_lab import MALLOC_ENV, timing_cpus
from runner.harness.client import ServedFunction
from runner.labspec import LabSpec
from runner.sandbox import ResourceLimits, SandboxPolicy

# The planted module must beat every other leaf by this factor in the grader's own
# measurement, or the node was too busy to grade fairly (measured twice before giving up).
MIN_MARGIN = 1.5


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
    options = Options.from_spec(spec, device_class)
    config = draw_config(np.random.default_rng(np.random.SeedSequence(int(seed, 16))), device_class)
    device = "cuda" if device_class == "gpu" else "cpu"
    children = GradingChildren(
        spec=spec,
        device_class=device_class,
        solution_path=solution_path,
        workdir=workdir,
        sandbox=sandbox,
        locate=locate,
        # A trace of a few forwards is a few MB; the adapter refuses one over the lab's cap, so
        # the file-size limit only has to let that much be written.
        limits=grading_limits(
            limits,
            cpu_seconds=600,
            file_size_bytes=2 * options.trace_max_bytes,
            cpus=timing_cpus(options.threads) if device == "cpu" else None,
        ),
        threads=options.threads,
        # Both children alike, or page faults land on different modules (softmax_lab says why).
        env=MALLOC_ENV,
        max_payload_bytes=2 * options.trace_max_bytes,
    )
    with children:
        candidate = children.learner(adapter=SOLUTION_ADAPTER)
        truth_child = children.grader_side(
            "truth", TRUTH, label="the grader's measurement", adapter=TRUTH_ADAPTER
        )
        run = _Run(spec=spec, device_class=device_class, options=options, config=config)

        def steps() -> GradeResult:
            truth = trusted(run.measure_truth, truth_child)
            call = candidate.call_json(
                {
                    "config": config.to_dict(),
                    "device": device,
                    "k": options.k,
                    "trace_max_bytes": options.trace_max_bytes,
                },
                timeout_s=options.call_timeout_s,
                doing="profiling the model",
            )
            return run.finish(call, truth, log_tail=candidate.log_tail())

        return children.result_of(steps, metrics=run.metrics, timeout_s=options.load_timeout_s)


class _Run:
    """The state of one grading run, so each step reads as one short method."""

    def __init__(
        self, *, spec: LabSpec, device_class: str, options: Options, config: ModelConfig
    ) -> None:
        self.spec = spec
        self.device_class = device_class
        self.options = options
        self.config = config
        self.metrics: dict[str, Any] = {}

    def measure_truth(self, child: ServedFunction) -> Truth:
        """The grader's own measurement, checked against what it planted: the parameter and
        cache bytes it can compute, and the slow module on top by a margin. A busy node gets
        one more, longer try; then the grader gives up rather than grade against noise."""
        reps = self.options.truth_reps
        for attempt in (1, 2):
            raw = child.call_json(
                {
                    "config": self.config.to_dict(),
                    "device": "cuda" if self.device_class == "gpu" else "cpu",
                    "reps": reps,
                    "warmup": self.options.truth_warmup,
                },
                timeout_s=self.options.call_timeout_s,
                doing="measuring the model",
            ).answer
            truth, margin = self._truth_from(raw)
            self.metrics["truth_measurement"] = {
                "attempt": attempt,
                "reps": reps,
                "forward_ms": round(truth.forward_ms, 3),
                "margin": round(margin, 2),
            }
            if margin >= MIN_MARGIN:
                return truth
            reps *= 2
        raise GraderBroken(
            f"the node was too busy to measure the model: the slow module was only {margin:.2f}x "
            f"the next in the grader's own measurement (needs {MIN_MARGIN}x)"
        )

    def _truth_from(self, raw: Any) -> tuple[Truth, float]:
        if not isinstance(raw, dict) or not isinstance(raw.get("leaves"), dict):
            raise GraderBroken("the grader's measurement returned no per-module times")
        shares = {name: float(v["share"]) for name, v in raw["leaves"].items()}
        memory = dict(raw["memory"])
        expected = {
            "parameters": self.config.parameter_bytes(),
            "kv_cache": self.config.kv_cache_bytes(),
        }
        for key, value in expected.items():
            if memory.get(key) != value:
                raise GraderBroken(f"the model holds {memory.get(key)} {key} bytes, not {value}")
        planted = self.config.slow_module
        others = max(s for name, s in shares.items() if name != planted)
        margin = shares[planted] / others if others > 0 else float("inf")
        truth = Truth(
            shares=shares,
            slowest=planted,
            cause=self.config.cause,
            memory=memory,
            forward_ms=float(raw["forward_ms"]),
        )
        self.metrics["truth"] = {
            "slowest": planted,
            "cause": self.config.cause,
            "top": [
                {"module": name, "share": round(share, 4)}
                for name, share in truth.top(self.options.k + 2)
            ],
            "spread": {
                name: [round(raw["leaves"][name]["low"], 4), round(raw["leaves"][name]["high"], 4)]
                for name, _ in truth.top(self.options.k)
            },
            "memory": memory,
            "forward_ms": round(truth.forward_ms, 3),
        }
        return truth, margin

    def finish(self, call: Any, truth: Truth, *, log_tail: str) -> GradeResult:
        reply = call.answer if isinstance(call.answer, dict) else {}
        answer = read_answer(reply.get("answer"), k=self.options.k)
        if call.returned_instead or reply.get("problem"):
            problem = call.returned_instead or reply.get("problem")
            answer = Answer(problems=[f"your answer could not be read: {str(problem)[:300]}"])
        measured, said = score(
            answer, truth, k=self.options.k, tolerance=self.options.share_tolerance
        )
        trace = check_trace(
            reply.get("trace"),
            call.arrays[0].tobytes() if call.arrays else None,
            max_bytes=self.options.trace_max_bytes,
            min_operators=len(truth.shares),
            name=TRACE_NAME,
            content_type=TRACE_CONTENT_TYPE,
        )
        measured["trace_valid"] = float(trace.valid)
        said["trace_valid"] = trace.message
        self.metrics["answer"] = reply.get("answer")
        self.metrics["answer_problems"] = answer.problems
        self.metrics["trace"] = {
            "valid": trace.valid,
            "events": trace.events,
            "note": trace.message,
        }
        self.metrics["measured"] = measured
        self.metrics["evaluated_where"] = {
            c.name: [d for d in self.spec.device_classes if c.threshold_for(d) is not None]
            for c in self.spec.criteria
        }
        not_read = "your answer did not give it" + (
            f" ({'; '.join(answer.problems[:3])})." if answer.problems else "."
        )
        criteria = evaluate_criteria(
            spec=self.spec,
            device_class=self.device_class,
            measured=measured,
            notes={metric: not_read for metric, value in measured.items() if value is None},
        )
        criteria = [self._explained(c, said.get(c.metric, "")) for c in criteria]
        status, message = verdict(criteria)
        if answer.problems and status == "failed":
            message += f" Your answer: {answer.problems[0]}"
        skipped = [c.name for c in criteria if not c.evaluated]
        if skipped and status in ("passed", "failed"):
            message += (
                f" Not evaluated on {self.device_class}: {', '.join(skipped)} (GPU nodes only)."
            )
        return GradeResult(
            status=status,
            message=message,
            criteria=criteria,
            metrics=self.metrics,
            log_tail=log_tail,
            artifacts=[trace.artifact] if trace.artifact else [],
        )

    def _explained(self, criterion: Any, said: str) -> Any:
        if not criterion.evaluated:
            return dataclasses.replace(
                criterion,
                explanation=(
                    f"Not evaluated on {self.device_class} workers: a CPU has no caching "
                    f"allocator reserve or library workspace to measure. {criterion.explanation}"
                ),
            )
        if not said:
            return criterion
        return dataclasses.replace(criterion, explanation=f"{criterion.explanation} {said}")
