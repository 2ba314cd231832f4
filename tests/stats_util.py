"""Shared test helpers: the family-wise error rate, Bonferroni quantiles, finite differences,
posterior scales widened for moment tests."""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import torch
from torch import Tensor, nn

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


def widen(model: nn.Module, scale: float = 0.3) -> nn.Module:
    """Posterior scales large enough that the spread of the outputs is material: every
    parameter named ``*rho`` set to ``softplus⁻¹(scale)``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("rho"):
                p.fill_(math.log(math.expm1(scale)))
    return model
