"""Private helpers of the output distributions and layers (no stability promise).

What more than one file of :mod:`bayesian_layers.layers.outputs` (or the
discretized flows of :mod:`bayesian_layers.layers.reversible.discretize`) needs lives
here; package-wide argument checks live in :mod:`bayesian_layers._checks`.
"""

from __future__ import annotations

import math

import torch
import torch.distributions as td
from torch import Tensor

__all__ = ["Size", "no_rsample", "strip_independent", "log1mexp"]

#: What ``sample_shape`` / ``batch_shape`` arguments accept.
Size = torch.Size | list[int] | tuple[int, ...]


def no_rsample(dist: td.Distribution, reason: str) -> NotImplementedError:
    """The error ``rsample`` of a family without reparameterised samples raises."""
    return NotImplementedError(
        f"{type(dist).__name__} has no reparameterised sample (rsample): {reason}, so no "
        "gradient can flow through a draw. Use .sample() (a value without gradient) with a "
        "score-function estimator built on log_prob, or a continuous relaxation such as "
        "torch.distributions.RelaxedBernoulli / RelaxedOneHotCategorical."
    )


def strip_independent(d: td.Distribution) -> tuple[td.Distribution, int]:
    """The base of nested ``Independent`` wrappers and the dims they reinterpret in all."""
    n = 0
    while isinstance(d, td.Independent):
        n += d.reinterpreted_batch_ndims
        d = d.base_dist
    return d, n


def log1mexp(d: Tensor) -> Tensor:
    """``log(1 - exp(d))`` for ``d < 0``, accurate near 0 and in the far tail.

    The far-tail branch is evaluated at ``min(d, -log 2)``, so that near 0, where it is
    not used, it never reaches ``log1p(-1)`` (whose infinite derivative would make the
    gradient NaN through the ``where``).
    """
    d = d.clamp(max=-torch.finfo(d.dtype).tiny)
    near = d > -math.log(2)
    far = torch.log1p(-torch.exp(torch.clamp(d, max=-math.log(2))))
    return torch.where(near, torch.log(-torch.expm1(d)), far)
