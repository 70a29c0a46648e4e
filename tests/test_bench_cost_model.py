"""The error summary of benchmarks/cost_model.py, computed by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # the benchmarks import their table module by name

from cost_model import relative_errors  # noqa: E402


def test_relative_errors_by_hand() -> None:
    """(estimate, actual) = (11, 10), (8, 10), (30, 20): per run 10 %, 20 %, 50 % → median 20 %,
    max 50 %; the total 49 s against 40 s is +22.5 % (the -20 % run does not cancel the others)."""
    median, worst, total = relative_errors([(11.0, 10.0), (8.0, 10.0), (30.0, 20.0)])
    assert (median, worst, total) == pytest.approx((0.2, 0.5, 0.225))
    assert relative_errors([(5.0, 10.0)]) == pytest.approx((0.5, 0.5, -0.5))  # an underestimate is negative in total
