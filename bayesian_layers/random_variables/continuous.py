"""Random-variable constructors of continuous distributions on the real line or an interval.

Each constructor takes the torch distribution's own arguments and returns a
:class:`~bayesian_layers.RandomVariable`; the keyword-only ``name``, ``value`` and
``sample_shape`` are described in :mod:`bayesian_layers.random_variables`.
"""

from __future__ import annotations

import torch.distributions as td
from torch import Tensor

from .. import distributions as _bl_distributions
from ._make import OptionalReal, Real, Shape, Value
from ._make import make as _make
from .variable import RandomVariable

__all__ = [
    "Beta",
    "Cauchy",
    "ContinuousBernoulli",
    "Deterministic",
    "Gumbel",
    "Kumaraswamy",
    "Laplace",
    "Normal",
    "StudentT",
    "Uniform",
    "VonMises",
]


def Beta(
    concentration1: Real,
    concentration0: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Beta random variable on ``(0, 1)`` (:class:`torch.distributions.Beta`)."""
    return _make(
        Beta,
        td.Beta,
        {
            "concentration1": concentration1,
            "concentration0": concentration0,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )


def Cauchy(
    loc: Real,
    scale: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Cauchy random variable (:class:`torch.distributions.Cauchy`)."""
    return _make(
        Cauchy,
        td.Cauchy,
        {"loc": loc, "scale": scale, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def ContinuousBernoulli(
    probs: OptionalReal = None,
    logits: OptionalReal = None,
    lims: tuple[float, float] = (0.499, 0.501),
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A continuous Bernoulli random variable on ``[0, 1]``
    (:class:`torch.distributions.ContinuousBernoulli`)."""
    return _make(
        ContinuousBernoulli,
        td.ContinuousBernoulli,
        {"probs": probs, "logits": logits, "lims": lims, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def Deterministic(
    loc: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A point mass at ``loc``: its value is ``loc`` and gradients reach ``loc``
    (:class:`bayesian_layers.distributions.Deterministic`)."""
    return _make(
        Deterministic,
        _bl_distributions.Deterministic,
        {"loc": loc, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def Gumbel(
    loc: Real,
    scale: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Gumbel random variable (:class:`torch.distributions.Gumbel`)."""
    return _make(
        Gumbel,
        td.Gumbel,
        {"loc": loc, "scale": scale, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def Kumaraswamy(
    concentration1: Real,
    concentration0: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Kumaraswamy random variable on ``(0, 1)`` (:class:`torch.distributions.Kumaraswamy`)."""
    return _make(
        Kumaraswamy,
        td.Kumaraswamy,
        {
            "concentration1": concentration1,
            "concentration0": concentration0,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )


def Laplace(
    loc: Real,
    scale: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Laplace random variable (:class:`torch.distributions.Laplace`).

    A random variable built from parameters; the output layer of the same name is
    ``bl.layers.Laplace``, which maps features to the parameters and returns one.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> bl.Laplace(torch.zeros(2), 1.0).shape  # parameters in
        torch.Size([2])
        >>> bl.layers.Laplace(units=2)(torch.randn(5, 3)).shape  # features in
        torch.Size([5, 2])
    """
    return _make(
        Laplace,
        td.Laplace,
        {"loc": loc, "scale": scale, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def Normal(
    loc: Real,
    scale: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A normal (Gaussian) random variable (:class:`torch.distributions.Normal`).

    A random variable built from parameters; the output layer of the same name is
    ``bl.layers.Normal``, which maps features to the parameters and returns one.

    The value is drawn with ``rsample``, ``loc + scale * eps``, so gradients of
    anything computed from it reach ``loc`` and ``scale``. ``scale`` is a standard
    deviation. The batch shape is the broadcast shape of ``loc`` and ``scale``.

    Args:
        loc: the mean.
        scale: the standard deviation, positive.
        validate_args: check the arguments (torch's default when ``None``).
        name: the variable's name.
        value: an observed value instead of a draw.
        sample_shape: leading shape of the drawn value.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> _ = torch.manual_seed(0)
        >>> z = Normal(torch.zeros(3), 1.0, name="z")
        >>> z  # doctest: +ELLIPSIS
        <RandomVariable 'z' Normal shape=(3,) batch_shape=(3,) event_shape=() ...>
        >>> x = Normal(loc=z, scale=0.1, sample_shape=(2,))  # z parameterises x
        >>> x.shape, type(torch.exp(x) + z).__name__
        (torch.Size([2, 3]), 'Tensor')
        >>> Normal(0.0, 1.0, value=torch.tensor(0.0)).log_prob(torch.tensor(0.0))
        tensor(-0.9189)
        >>> bl.Normal(torch.zeros(2), 1.0).shape  # parameters in
        torch.Size([2])
        >>> bl.layers.Normal(units=2)(torch.randn(5, 3)).shape  # features in
        torch.Size([5, 2])
    """
    return _make(
        Normal,
        td.Normal,
        {"loc": loc, "scale": scale, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def StudentT(
    df: Real,
    loc: Real = 0.0,
    scale: Real = 1.0,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Student's t random variable (:class:`torch.distributions.StudentT`).

    A random variable built from parameters; the output layer of the same name is
    ``bl.layers.StudentT``, which maps features to the parameters and returns one.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> bl.StudentT(3.0, torch.zeros(2)).shape  # parameters in
        torch.Size([2])
        >>> bl.layers.StudentT(units=2)(torch.randn(5, 3)).shape  # features in
        torch.Size([5, 2])
    """
    return _make(
        StudentT,
        td.StudentT,
        {"df": df, "loc": loc, "scale": scale, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def Uniform(
    low: Real,
    high: Real,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A uniform random variable on ``[low, high)`` (:class:`torch.distributions.Uniform`)."""
    return _make(
        Uniform,
        td.Uniform,
        {"low": low, "high": high, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def VonMises(
    loc: Tensor,
    concentration: Tensor,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A von Mises (circular normal) random variable (:class:`torch.distributions.VonMises`)."""
    return _make(
        VonMises,
        td.VonMises,
        {"loc": loc, "concentration": concentration, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )
