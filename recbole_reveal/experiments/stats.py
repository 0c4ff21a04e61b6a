"""Statistics of the paper's tables (§5.3): mean ± sample std over seeds, the relative improvement of
a model over its reference, and the two-sided paired t-test over seeds."""

import math

from scipy.special import stdtr


def mean_std(values):
    """Mean and sample standard deviation (n - 1); the std of a single value is 0."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std of no values")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def relative_improvement(new, reference):
    """(new - reference) / reference; NaN when the reference is 0."""
    return (new - reference) / reference if reference else float("nan")


def paired_ttest(a, b):
    """Two-sided paired t-test of ``b`` against ``a`` (pairs: same index = same seed).

    Returns ``(t, p)`` with t = mean(d) / (sd(d) / sqrt(n)), d = b - a, and p from Student's t
    distribution with n - 1 degrees of freedom. NaN for fewer than two pairs or identical samples;
    a constant non-zero difference gives t = ±inf, p = 0 (as ``scipy.stats.ttest_rel``).
    """
    if len(a) != len(b):
        raise ValueError(f"paired_ttest needs samples of equal length, got {len(a)} and {len(b)}")
    n = len(a)
    if n < 2:
        return float("nan"), float("nan")
    d = [float(y) - float(x) for x, y in zip(a, b)]
    mean, sd = mean_std(d)
    if sd == 0.0:
        if mean == 0.0:
            return float("nan"), float("nan")
        return math.copysign(math.inf, mean), 0.0
    t = mean / (sd / math.sqrt(n))
    return t, float(2.0 * stdtr(n - 1, -abs(t)))
