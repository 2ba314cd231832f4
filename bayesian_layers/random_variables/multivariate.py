"""Random-variable constructors of random vectors and matrices: normals, Dirichlet, Wishart.

Each constructor takes the torch distribution's own arguments and returns a
:class:`~bayesian_layers.RandomVariable`; the keyword-only ``name``, ``value`` and
``sample_shape`` are described in :mod:`bayesian_layers.random_variables`.
"""

from __future__ import annotations

import torch.distributions as td
from torch import Tensor

from ._make import Real, Shape, Value
from ._make import make as _make
from .variable import RandomVariable

__all__ = [
    "Dirichlet",
    "LKJCholesky",
    "LogisticNormal",
    "LowRankMultivariateNormal",
    "MultivariateNormal",
    "Wishart",
]


def Dirichlet(
    concentration: Tensor,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Dirichlet random variable on the simplex (:class:`torch.distributions.Dirichlet`)."""
    return _make(
        Dirichlet,
        td.Dirichlet,
        {"concentration": concentration, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def LKJCholesky(
    dim: int,
    concentration: Real = 1.0,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """The Cholesky factor of an LKJ-distributed ``dim x dim`` correlation matrix
    (:class:`torch.distributions.LKJCholesky`)."""
    return _make(
        LKJCholesky,
        td.LKJCholesky,
        {"dim": dim, "concentration": concentration, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def LogisticNormal(
    loc: Real,
    scale: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A logistic-normal random variable on the simplex; its event has one more entry than
    ``loc`` (:class:`torch.distributions.LogisticNormal`)."""
    return _make(
        LogisticNormal,
        td.LogisticNormal,
        {"loc": loc, "scale": scale, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def LowRankMultivariateNormal(
    loc: Tensor,
    cov_factor: Tensor,
    cov_diag: Tensor,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A multivariate normal with covariance ``cov_factor @ cov_factor.T + diag(cov_diag)``
    (:class:`torch.distributions.LowRankMultivariateNormal`)."""
    return _make(
        LowRankMultivariateNormal,
        td.LowRankMultivariateNormal,
        {
            "loc": loc,
            "cov_factor": cov_factor,
            "cov_diag": cov_diag,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )


def MultivariateNormal(
    loc: Tensor,
    covariance_matrix: Tensor | None = None,
    precision_matrix: Tensor | None = None,
    scale_tril: Tensor | None = None,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A multivariate normal random variable; give exactly one of ``covariance_matrix``,
    ``precision_matrix``, ``scale_tril`` (:class:`torch.distributions.MultivariateNormal`)."""
    return _make(
        MultivariateNormal,
        td.MultivariateNormal,
        {
            "loc": loc,
            "covariance_matrix": covariance_matrix,
            "precision_matrix": precision_matrix,
            "scale_tril": scale_tril,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )


def Wishart(
    df: Tensor | float,
    covariance_matrix: Tensor | None = None,
    precision_matrix: Tensor | None = None,
    scale_tril: Tensor | None = None,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Wishart random matrix; give exactly one of ``covariance_matrix``,
    ``precision_matrix``, ``scale_tril`` (:class:`torch.distributions.Wishart`)."""
    return _make(
        Wishart,
        td.Wishart,
        {
            "df": df,
            "covariance_matrix": covariance_matrix,
            "precision_matrix": precision_matrix,
            "scale_tril": scale_tril,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )
