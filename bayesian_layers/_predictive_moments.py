"""The output distribution's moments under each function sample, for
:func:`bayesian_layers.predict` (private)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    ContinuousBernoulli,
    Distribution,
    Independent,
    OneHotCategorical,
)

from .random_variables.variable import RandomVariable

__all__ = ["output_tensor", "output_moments", "fold_moments", "stack_moments"]


def output_tensor(out: object) -> Tensor:
    """The tensor of a model's output: a Tensor, a random variable's value, or the
    ``logits`` of a mapping (a ``transformers`` model's output)."""
    if isinstance(out, RandomVariable):
        return out.value
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    if not isinstance(out, Tensor):
        raise TypeError(
            f"predict expected the model to return a Tensor, a RandomVariable or a mapping "
            f"with 'logits', got {type(out).__name__}"
        )
    return out


def _class_probs(distribution: Distribution) -> Tensor | None:
    """Class probabilities ``(*batch, C)`` of a categorical-type distribution, else ``None``."""
    base = distribution
    while isinstance(base, Independent):
        base = base.base_dist
    if isinstance(base, (Categorical, OneHotCategorical)):
        return base.probs
    if isinstance(base, Bernoulli) and not isinstance(base, ContinuousBernoulli):
        p = base.probs
        return torch.stack([1 - p, p], -1)
    return None


def output_moments(out: object) -> dict[str, Tensor]:
    """The output distribution's moments, each with the batch as its first dimension."""
    if not isinstance(out, RandomVariable):
        return {}
    dist = out.distribution
    probs = _class_probs(dist)
    if probs is not None:
        return {"output_probs": probs}
    try:
        moments = {"output_mean": dist.mean, "output_variance": dist.variance}
    except NotImplementedError:  # a family without closed-form moments
        return {}
    shape = dist.batch_shape + dist.event_shape
    return {k: v.expand(shape) for k, v in moments.items()}


def fold_moments(moments: dict[str, Tensor], k: int, b: int) -> dict[str, Tensor]:
    """``(k * b, ...)`` moments of a vectorised call as ``(k, b, ...)``, sample-major."""
    folded = {}
    for name, t in moments.items():
        if t.dim() == 0 or t.shape[0] != k * b:
            raise ValueError(
                f"predict expected the output distribution's {name[7:]} to have the "
                f"{k} x {b} function-sample-major rows of the vectorised call first, got shape "
                f"{tuple(t.shape)}; pass vectorized=False for a model that moves the batch"
            )
        folded[name] = t.reshape(k, b, *t.shape[1:])  # (K, B, ...)
    return folded


def stack_moments(parts: list[dict[str, Tensor]], dim_cat: bool) -> dict[str, Tensor]:
    names = set(parts[0])
    if any(set(p) != names for p in parts):
        return {}
    join = torch.cat if dim_cat else torch.stack
    return {n: join([p[n] for p in parts]) for n in names}
