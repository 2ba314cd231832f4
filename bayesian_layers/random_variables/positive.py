"""Random-variable constructors of continuous distributions on a half-line (most on ``[0, inf)``).

Each constructor takes the torch distribution's own arguments and returns a
:class:`~bayesian_layers.RandomVariable`; the keyword-only ``name``, ``value`` and
``sample_shape`` are described in :mod:`bayesian_layers.random_variables`.
"""

from __future__ import annotations

import torch.distributions as td

from ._make import Real, Shape, Value
from ._make import make as _make
from .variable import RandomVariable

__all__ = [
    "Chi2",
    "Exponential",
    "FisherSnedecor",
    "Gamma",
    "GeneralizedPareto",
    "HalfCauchy",
    "HalfNormal",
    "InverseGamma",
    "LogNormal",
    "Pareto",
    "Weibull",
]


def Chi2(
    df: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A chi-squared random variable with ``df`` degrees of freedom
    (:class:`torch.distributions.Chi2`)."""
    return _make(
        Chi2, td.Chi2, {"df": df, "validate_args": validate_args}, name, value, sample_shape
    )


def Exponential(
    rate: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """An Exponential random variable (:class:`torch.distributions.Exponential`)."""
    return _make(
        Exponential,
        td.Exponential,
        {"rate": rate, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def FisherSnedecor(
    df1: Real,
    df2: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Fisher-Snedecor (F) random variable (:class:`torch.distributions.FisherSnedecor`)."""
    return _make(
        FisherSnedecor,
        td.FisherSnedecor,
        {"df1": df1, "df2": df2, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def Gamma(
    concentration: Real,
    rate: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Gamma random variable (:class:`torch.distributions.Gamma`)."""
    return _make(
        Gamma,
        td.Gamma,
        {"concentration": concentration, "rate": rate, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def GeneralizedPareto(
    loc: Real,
    scale: Real,
    concentration: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A generalized Pareto random variable
    (:class:`torch.distributions.GeneralizedPareto`, in torch since 2.6)."""
    return _make(
        GeneralizedPareto,
        td.GeneralizedPareto,
        {
            "loc": loc,
            "scale": scale,
            "concentration": concentration,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )


def HalfCauchy(
    scale: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A half-Cauchy random variable on ``[0, inf)`` (:class:`torch.distributions.HalfCauchy`)."""
    return _make(
        HalfCauchy,
        td.HalfCauchy,
        {"scale": scale, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def HalfNormal(
    scale: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A half-normal random variable on ``[0, inf)`` (:class:`torch.distributions.HalfNormal`)."""
    return _make(
        HalfNormal,
        td.HalfNormal,
        {"scale": scale, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def InverseGamma(
    concentration: Real,
    rate: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """An inverse-Gamma random variable (:class:`torch.distributions.InverseGamma`)."""
    return _make(
        InverseGamma,
        td.InverseGamma,
        {"concentration": concentration, "rate": rate, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def LogNormal(
    loc: Real,
    scale: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A log-normal random variable, ``exp`` of a ``Normal(loc, scale)``
    (:class:`torch.distributions.LogNormal`).

    A random variable built from parameters; the output layer of the same name is
    ``bl.layers.LogNormal``, which maps features to the parameters and returns one.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> bl.LogNormal(torch.zeros(2), 1.0).shape  # parameters in
        torch.Size([2])
        >>> bl.layers.LogNormal(units=2)(torch.randn(5, 3)).shape  # features in
        torch.Size([5, 2])
    """
    return _make(
        LogNormal,
        td.LogNormal,
        {"loc": loc, "scale": scale, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def Pareto(
    scale: Real,
    alpha: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Pareto type-1 random variable (:class:`torch.distributions.Pareto`)."""
    return _make(
        Pareto,
        td.Pareto,
        {"scale": scale, "alpha": alpha, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def Weibull(
    scale: Real,
    concentration: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Weibull random variable (:class:`torch.distributions.Weibull`)."""
    return _make(
        Weibull,
        td.Weibull,
        {"scale": scale, "concentration": concentration, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )
