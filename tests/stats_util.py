"""Shared statistics for the tests: the family-wise error rate and Bonferroni quantiles."""

from __future__ import annotations

from statistics import NormalDist

ALPHA = 1e-3  # family-wise false-failure rate of each statistical test


def z_bonferroni(k: int, alpha: float = ALPHA) -> float:
    """Two-sided normal quantile ``z(1 - α / 2k)`` for ``k`` simultaneous checks."""
    return NormalDist().inv_cdf(1 - alpha / (2 * k))
