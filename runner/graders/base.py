"""What every grader returns, and the generic step from measured metrics to a verdict.

Graders measure; this module compares the measurements with the lab's criteria (data from
lab.toml), so that thresholds and wording live in one place and every lab reads the same.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.harness.bench import BenchRejected
from runner.harness.client import HarnessFailure
from runner.labspec import LabSpec
from runner.schema import CriterionResult

_COMPARE = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
}


@dataclass
class GradeResult:
    status: str  # passed | failed | error | timeout
    message: str
    criteria: list[CriterionResult] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    plots: list[dict[str, str]] = field(default_factory=list)
    log_tail: str = ""
    # Files offered for download on the result page (runner.schema.new_report's artifacts).
    artifacts: list[dict[str, str]] = field(default_factory=list)


def meets(measured: float, comparator: str, threshold: float) -> bool:
    """NaN never meets a threshold, whatever the comparator."""
    if isinstance(measured, float) and math.isnan(measured):
        return False
    return bool(_COMPARE[comparator](measured, threshold))


def evaluate_criteria(
    *,
    spec: LabSpec,
    device_class: str,
    measured: Mapping[str, float | None],
    notes: Mapping[str, str] | None = None,
) -> list[CriterionResult]:
    """One CriterionResult per criterion of the lab, in lab.toml order.

    A criterion without a threshold for this device class is listed with evaluated=False. A
    metric that could not be measured (None) fails, and `notes[metric]` says why.
    """
    notes = notes or {}
    results = []
    for criterion in spec.criteria:
        threshold = criterion.threshold_for(device_class)
        value = measured.get(criterion.metric)
        explanation = criterion.explanation
        if threshold is not None and value is None and criterion.metric in notes:
            explanation = f"{explanation} Not measured: {notes[criterion.metric]}"
        results.append(
            CriterionResult(
                name=criterion.name,
                metric=criterion.metric,
                measured=value,
                threshold=threshold,
                comparator=criterion.comparator,
                passed=(
                    threshold is not None
                    and value is not None
                    and meets(value, criterion.comparator, threshold)
                ),
                explanation=explanation,
                hint=criterion.hint,
                unit=criterion.unit,
                evaluated=threshold is not None,
            )
        )
    return results


def verdict(criteria: list[CriterionResult], *, headline: str = "") -> tuple[str, str]:
    """(status, one-sentence message) from evaluated criteria: passed only if all passed."""
    evaluated = [c for c in criteria if c.evaluated]
    failed = [c for c in evaluated if not c.passed]
    if not evaluated:
        return "error", "This lab has no criterion for this device class, so nothing was graded."
    if not failed:
        extra = f" {headline}" if headline else ""
        return "passed", f"All {len(evaluated)} criteria passed.{extra}"
    parts = [f"{c.name} ({_describe(c)})" for c in failed]
    return "failed", f"{len(failed)} of {len(evaluated)} criteria failed: {'; '.join(parts)}."


def _describe(criterion: CriterionResult) -> str:
    unit = f" {criterion.unit}" if criterion.unit else ""
    if criterion.measured is None:
        return "not measured"
    return (
        f"measured {_number(criterion.measured)}{unit}, needs {criterion.comparator} "
        f"{_number(criterion.threshold)}{unit}"
    )


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}"


def failure(
    *,
    spec: LabSpec,
    device_class: str,
    kind: str,
    message: str,
    metrics: Mapping[str, Any] | None = None,
    measured: Mapping[str, float | None] | None = None,
    log_tail: str = "",
) -> GradeResult:
    """A GradeResult for when the learner's code could not be graded to the end."""
    criteria = evaluate_criteria(
        spec=spec,
        device_class=device_class,
        measured=measured or {},
        notes={c.metric: "grading stopped early." for c in spec.criteria},
    )
    return GradeResult(
        # "failed": the harness caught the code cheating (runner.harness.client); a verdict on
        # the code, not an accident of running it.
        status=kind if kind in ("timeout", "failed") else "error",
        message=message,
        criteria=criteria,
        metrics=dict(metrics or {}),
        log_tail=log_tail,
    )


class GraderBroken(Exception):
    """The trusted side (a baseline, the reference, the node) failed: our bug or the node's,
    never the learner's."""


def trusted(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call into a trusted child (a baseline): its failures are the grader's, not the
    learner's."""
    try:
        return call(*args, **kwargs)
    except HarnessFailure as exc:
        raise GraderBroken(exc.message) from None


def failure_from(
    exc: BenchRejected | HarnessFailure | GraderBroken,
    *,
    spec: LabSpec,
    device_class: str,
    metrics: Mapping[str, Any] | None,
    log_tail: str,
) -> GradeResult:
    """The GradeResult for a grading run that stopped early: the harness caught a cheat
    (failed), the learner's code crashed or hung (error, timeout), or the grader broke."""
    if isinstance(exc, BenchRejected):
        kind, message = "failed", exc.message
    elif isinstance(exc, GraderBroken):
        kind, message = "error", f"The grader failed, not your code: {exc}"
    else:
        kind, message = exc.kind, exc.message
    return failure(
        spec=spec,
        device_class=device_class,
        kind=kind,
        message=message,
        metrics=metrics,
        log_tail=log_tail,
    )
