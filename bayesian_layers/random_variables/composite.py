"""Random-variable constructors built from other distributions: independent, mixture,
transformed.

Each constructor takes the torch distribution's own arguments and returns a
:class:`~bayesian_layers.RandomVariable`; the keyword-only ``name``, ``value`` and
``sample_shape`` are described in :mod:`bayesian_layers.random_variables`.
"""

from __future__ import annotations

import torch.distributions as td

from ._make import DistributionLike, Shape, Value
from ._make import make as _make
from .variable import RandomVariable

__all__ = [
    "Independent",
    "MixtureSameFamily",
    "TransformedDistribution",
]


def Independent(
    base_distribution: DistributionLike,
    reinterpreted_batch_ndims: int,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """``base_distribution`` with its rightmost ``reinterpreted_batch_ndims`` batch dimensions
    made event dimensions (:class:`torch.distributions.Independent`); a random variable
    passed as ``base_distribution`` stands for its distribution."""
    return _make(
        Independent,
        td.Independent,
        {
            "base_distribution": base_distribution,
            "reinterpreted_batch_ndims": reinterpreted_batch_ndims,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )


def MixtureSameFamily(
    mixture_distribution: DistributionLike,
    component_distribution: DistributionLike,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A mixture whose components share one family (:class:`torch.distributions.MixtureSameFamily`);
    random variables passed as either argument stand for their distributions."""
    return _make(
        MixtureSameFamily,
        td.MixtureSameFamily,
        {
            "mixture_distribution": mixture_distribution,
            "component_distribution": component_distribution,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )


def TransformedDistribution(
    base_distribution: DistributionLike,
    transforms: td.Transform | list[td.Transform],
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """``base_distribution`` pushed through ``transforms``
    (:class:`torch.distributions.TransformedDistribution`); a random variable passed as
    ``base_distribution`` stands for its distribution."""
    return _make(
        TransformedDistribution,
        td.TransformedDistribution,
        {
            "base_distribution": base_distribution,
            "transforms": transforms,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )
