"""Compare a returned array with a float64 reference, element by element, in the trusted
process. NaN or Inf where the reference is finite always counts as a mismatch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FIRST_MISMATCHES = 5

# Default (atol, rtol) per output dtype, for labs that state no tolerance of their own: what
# an honest kernel in that precision reaches against a float64 reference (float32 within a
# few ulps; half precisions keep 11 and 8 significant bits). A lab tightens or loosens them
# in lab.toml [options] and says why there.
DEFAULT_TOLERANCES = {
    "float64": (1e-12, 1e-10),
    "float32": (1e-6, 1e-5),
    "float16": (1e-3, 1e-2),
    "bfloat16": (1e-2, 1e-2),
}


def tolerance_for(dtype: str) -> tuple[float, float]:
    """(atol, rtol) for an output dtype; there is no default for integer outputs, which
    must match exactly (0, 0)."""
    return DEFAULT_TOLERANCES.get(dtype, (0.0, 0.0))


@dataclass
class Comparison:
    elements: int
    mismatched: int
    non_finite: int
    max_abs_error: float
    max_rel_error: float
    problem: str | None = None  # wrong type, shape or dtype: nothing element-wise to compare
    first: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None and self.mismatched == 0


def compare_output(
    *,
    got: np.ndarray | None,
    expected: np.ndarray,
    dtype: str,
    atol: float,
    rtol: float,
    returned_type: str | None = None,
) -> Comparison:
    """Elementwise |got - expected| <= atol + rtol * |expected|, like numpy.isclose, with the
    reference in float64 and the tolerance stated up front rather than tuned afterwards."""
    elements = int(expected.size)
    if got is None:
        return _whole(elements, f"returned {returned_type or 'nothing'}, not a tensor")
    if tuple(got.shape) != tuple(expected.shape):
        return _whole(
            elements, f"returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        )
    if got.dtype.name != dtype:
        return _whole(elements, f"returned dtype {got.dtype.name}, expected {dtype}")
    got64 = got.astype(np.float64)
    finite = np.isfinite(got64)
    error = np.abs(got64 - expected)
    bad = ~finite | (error > atol + rtol * np.abs(expected))
    finite_error = np.where(finite, error, 0.0)
    significant = np.abs(expected) > atol
    rel = np.where(significant & finite, error / np.where(significant, np.abs(expected), 1), 0)
    comparison = Comparison(
        elements=elements,
        mismatched=int(bad.sum()),
        non_finite=int((~finite).sum()),
        max_abs_error=float(finite_error.max(initial=0.0)) if finite.all() else float("inf"),
        max_rel_error=float(rel.max(initial=0.0)) if finite.all() else float("inf"),
    )
    for index in np.argwhere(bad)[:FIRST_MISMATCHES]:
        at = tuple(int(i) for i in index)
        comparison.first.append(
            {"index": list(at), "expected": float(expected[at]), "got": float(got64[at])}
        )
    return comparison


def _whole(elements: int, problem: str) -> Comparison:
    return Comparison(
        elements=elements,
        mismatched=elements,
        non_finite=0,
        max_abs_error=float("inf"),
        max_rel_error=float("inf"),
        problem=problem,
    )


@dataclass
class Tally:
    """Totals over many cases, keeping the first few mismatches to show the learner."""

    cases: int = 0
    elements: int = 0
    mismatched: int = 0
    non_finite: int = 0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    failed_cases: list[str] = field(default_factory=list)
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    def add(self, case: str, comparison: Comparison) -> None:
        self.cases += 1
        self.elements += comparison.elements
        self.mismatched += comparison.mismatched
        self.non_finite += comparison.non_finite
        self.max_abs_error = max(self.max_abs_error, comparison.max_abs_error)
        self.max_rel_error = max(self.max_rel_error, comparison.max_rel_error)
        if comparison.ok:
            return
        self.failed_cases.append(case)
        if comparison.problem and len(self.mismatches) < 2 * FIRST_MISMATCHES:
            self.mismatches.append({"case": case, "problem": comparison.problem})
        for item in comparison.first:
            if len(self.mismatches) >= 2 * FIRST_MISMATCHES:
                break
            self.mismatches.append({"case": case, **item})

    def to_dict(self, *, atol: float, rtol: float) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "elements": self.elements,
            "mismatched_elements": self.mismatched,
            "non_finite_outputs": self.non_finite,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "failed_cases": self.failed_cases,
            "atol": atol,
            "rtol": rtol,
        }
