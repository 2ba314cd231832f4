"""Shared test helpers: the family-wise error rate, Bonferroni quantiles, finite differences."""

from __future__ import annotations

from collections.abc import Callable
from statistics import NormalDist

import torch
from torch import Tensor

ALPHA = 1e-3  # family-wise false-failure rate of each statistical test


def z_bonferroni(k: int, alpha: float = ALPHA) -> float:
    """Two-sided normal quantile ``z(1 - α / 2k)`` for ``k`` simultaneous checks."""
    return NormalDist().inv_cdf(1 - alpha / (2 * k))


def finite_difference(loss_fn: Callable[[], Tensor], params: list[Tensor]) -> list[Tensor]:
    """Central differences (step 1e-6, float64) of ``loss_fn`` in every parameter element."""
    eps, grads = 1e-6, []
    with torch.no_grad():
        for p in params:
            grad = torch.zeros_like(p)
            flat, gflat = p.view(-1), grad.view(-1)
            for i in range(flat.numel()):
                orig = flat[i].item()
                flat[i] = orig + eps
                plus = loss_fn().item()
                flat[i] = orig - eps
                minus = loss_fn().item()
                flat[i] = orig
                gflat[i] = (plus - minus) / (2 * eps)
            grads.append(grad)
    return grads
