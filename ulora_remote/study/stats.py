"""Small statistics for comparing runs: mean with a 95% interval and a paired t-test.

Pure Python (no numpy, no scipy): Student's t distribution through the regularised incomplete
beta function (Numerical Recipes' continued fraction), checked against scipy in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ulora_remote.errors import InputError

NAN = math.nan

__all__ = ["MeanInterval", "PairedTTest", "mean_ci", "paired_t_test", "student_t_cdf",
           "student_t_quantile", "summarize"]


class PairedTTest(NamedTuple):
    """A two-sided paired t-test of ``a − b``: statistic, p-value, pairs used, mean difference."""

    statistic: float
    p_value: float
    n: int
    mean_difference: float


class MeanInterval(NamedTuple):
    """A mean with its 95% confidence interval; unpacks as ``mean, lo, hi``."""

    mean: float
    low: float
    high: float


def summarize(values: Iterable[float]) -> MeanInterval:
    """Mean and 95% confidence interval (Student t, n − 1 degrees of freedom).

    NaN entries (a metric undefined for that run, e.g. the overshoot of a censored recovery)
    are left out; count them yourself if the table should say so.

    Returns:
        ``(mean, lo, hi)`` as a ``MeanInterval``; with one value the bounds are NaN, with none
        all three are.
    """
    items = [float(v) for v in values if not math.isnan(float(v))]
    n = len(items)
    if n == 0:
        return MeanInterval(NAN, NAN, NAN)
    mean = sum(items) / n
    if n == 1:
        return MeanInterval(mean, NAN, NAN)
    sd = math.sqrt(sum((x - mean) ** 2 for x in items) / (n - 1))
    half = student_t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return MeanInterval(mean, mean - half, mean + half)


mean_ci = summarize  # another name for the same function


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTTest:
    """Two-sided paired t-test of H0: mean(a − b) = 0, e.g. a method against the best fixed LR
    on the same seeds. Pairs where either value is NaN are dropped.

    Raises:
        InputError: the sequences differ in length, or fewer than 2 complete pairs remain.
    """
    if len(a) != len(b):
        raise InputError(f"paired test needs equal lengths (got {len(a)} and {len(b)})")
    diffs = [x - y for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]
    n = len(diffs)
    if n < 2:
        raise InputError(f"paired test needs at least 2 complete pairs (got {n})")
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0.0:
        # Identical differences: no spread to test against; exact when all are zero.
        return PairedTTest(
            0.0 if mean == 0 else math.copysign(math.inf, mean), 1.0 if mean == 0 else 0.0, n, mean
        )
    t = mean / (sd / math.sqrt(n))
    p = _incomplete_beta((n - 1) / 2, 0.5, (n - 1) / ((n - 1) + t * t))
    return PairedTTest(t, min(1.0, p), n, mean)


def student_t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with ``dof`` degrees of freedom."""
    if dof <= 0:
        raise InputError(f"dof={dof}: degrees of freedom must be > 0")
    tail = 0.5 * _incomplete_beta(dof / 2, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, dof: float) -> float:
    """The t with ``student_t_cdf(t, dof) == p``, by bisection (to 1e-12 relative)."""
    if not 0.0 < p < 1.0:
        raise InputError(f"p={p}: a quantile needs 0 < p < 1")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, dof)
    low, high = 0.0, 1.0
    while student_t_cdf(high, dof) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, dof) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * high:
            break
    return 0.5 * (low + high)


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (Numerical Recipes' betai)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    # The continued fraction converges fast for x < (a+1)/(a+b+2); use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    # Modified Lentz evaluation of the continued fraction for I_x(a, b).
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result
