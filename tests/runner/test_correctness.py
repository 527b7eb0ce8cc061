"""Element-wise comparison against a float64 reference, and the default tolerances."""

from __future__ import annotations

import numpy as np
import pytest

from runner.harness.correctness import compare_output, tolerance_for


def test_nan_and_inf_always_count_as_mismatches():
    expected = np.array([0.5, 0.25, 0.25])
    got = np.array([np.nan, np.inf, 0.25], dtype=np.float32)
    comparison = compare_output(got=got, expected=expected, dtype="float32", atol=1, rtol=1)
    assert comparison.mismatched == 2 and comparison.non_finite == 2
    first = comparison.first[0]
    assert first["index"] == [0] and first["expected"] == 0.5 and np.isnan(first["got"])


def rounded(values: np.ndarray, bits: int) -> np.ndarray:
    """`values` rounded to `bits` significant bits, as a float type with that mantissa does."""
    mantissa, exponent = np.frexp(values)
    return np.ldexp(np.round(mantissa * 2**bits) / 2**bits, exponent)


def within(dtype: str, got: np.ndarray, expected: np.ndarray) -> bool:
    atol, rtol = tolerance_for(dtype)
    return bool(np.all(np.abs(got - expected) <= atol + rtol * np.abs(expected)))


EXPECTED = np.random.default_rng(0).uniform(0.5, 1.0, 1000)


@pytest.mark.parametrize("dtype, bits", [("float32", 24), ("float16", 11), ("bfloat16", 8)])
def test_each_default_tolerance_accepts_its_own_dtypes_rounding(dtype, bits):
    assert within(dtype, rounded(EXPECTED, bits), EXPECTED)


@pytest.mark.parametrize("bits", [11, 8], ids=["float16", "bfloat16"])
def test_the_float32_tolerance_refuses_results_computed_in_half_precision(bits):
    assert not within("float32", rounded(EXPECTED, bits), EXPECTED)


def test_integer_outputs_must_match_exactly():
    assert tolerance_for("int32") == (0.0, 0.0)
