"""The 95% interval and the paired t-test, checked against printed t tables and hand arithmetic."""

from __future__ import annotations

import math

import pytest

from ulora_remote.errors import InputError
from ulora_remote.study.stats import (
    mean_ci,
    paired_t_test,
    student_t_cdf,
    student_t_quantile,
    summarize,
)

# Two-sided 95% critical values from a printed Student t table.
T_TABLE_975 = [
    (1, 12.706),
    (2, 4.303),
    (3, 3.182),
    (4, 2.776),
    (5, 2.571),
    (9, 2.262),
    (10, 2.228),
    (20, 2.086),
    (30, 2.042),
    (120, 1.980),
]


@pytest.mark.parametrize(("dof", "critical"), T_TABLE_975)
def test_t_quantile_matches_the_printed_table(dof: int, critical: float) -> None:
    assert student_t_quantile(0.975, dof) == pytest.approx(critical, abs=1e-3)
    assert student_t_quantile(0.025, dof) == pytest.approx(-critical, abs=1e-3)
    assert student_t_cdf(critical, dof) == pytest.approx(0.975, abs=1e-4)


def test_t_cdf_special_cases() -> None:
    assert student_t_cdf(0.0, 7) == pytest.approx(0.5)
    # dof = 1 is the Cauchy distribution: F(t) = 1/2 + atan(t)/π.
    for t in (-3.0, -0.5, 0.7, 4.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)


def test_summarize_mean_and_interval_by_hand() -> None:
    mean, lo, hi = summarize([1.0, 2.0, 3.0, 4.0])
    half = 3.182446 * math.sqrt(5 / 3 / 4)  # t(0.975, 3) · s / √n, s² = 5/3
    assert mean == 2.5
    assert (lo, hi) == (pytest.approx(2.5 - half, abs=1e-5), pytest.approx(2.5 + half, abs=1e-5))


def test_summarize_edge_cases() -> None:
    mean, lo, hi = summarize([0.7])
    assert mean == 0.7 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(x) for x in summarize([]))
    assert summarize([2.0, math.nan, 4.0])[0] == 3.0  # NaN entries are left out
    assert summarize([5.0, 5.0, 5.0]) == (5.0, 5.0, 5.0)
    named = mean_ci([1.0, 3.0])
    assert (named.mean, named.low, named.high) == tuple(summarize([1.0, 3.0]))


def test_paired_t_test_by_hand() -> None:
    # Differences −0.1, −0.3, 0.1, −0.5, −0.2: mean −0.2, s = √0.05, t = −2 exactly, dof 4.
    result = paired_t_test([1, 2, 3, 4, 5], [1.1, 2.3, 2.9, 4.5, 5.2])
    assert result.n == 5 and result.mean_difference == pytest.approx(-0.2)
    assert result.statistic == pytest.approx(-2.0)
    # Two-sided p = I_x(2, 1/2) with x = dof/(dof + t²) = 1/2; for dof = 4 the integral has the
    # closed form I_x(2, 1/2) = 1 − (3/2)·√(1−x) + (1/2)·(1−x)^(3/2).
    x = 4 / (4 + 4)
    closed_form = 1 - 1.5 * (1 - x) ** 0.5 + 0.5 * (1 - x) ** 1.5
    assert result.p_value == pytest.approx(closed_form, rel=1e-9)
    assert result.p_value == pytest.approx(0.1161, abs=1e-4)


def test_paired_t_test_symmetry_and_degenerate_cases() -> None:
    a, b = [3.0, 2.0, 5.0, 4.0], [1.0, 1.5, 2.0, 2.5]
    forward, backward = paired_t_test(a, b), paired_t_test(b, a)
    assert forward.p_value == pytest.approx(backward.p_value)
    assert forward.statistic == pytest.approx(-backward.statistic)
    assert paired_t_test([1.0, 2.0], [1.0, 2.0]).p_value == 1.0
    assert paired_t_test([2.0, 3.0], [1.0, 2.0]).p_value == 0.0
    assert paired_t_test([1.0, math.nan, 3.0], [0.0, 1.0, 1.5]).n == 2
    with pytest.raises(InputError, match="equal lengths"):
        paired_t_test([1.0], [1.0, 2.0])
    with pytest.raises(InputError, match="at least 2"):
        paired_t_test([1.0, math.nan], [1.0, 2.0])
