"""Random-variable constructors of discrete distributions, and their continuous relaxations.

Each constructor takes the torch distribution's own arguments and returns a
:class:`~bayesian_layers.RandomVariable`; the keyword-only ``name``, ``value`` and
``sample_shape`` are described in :mod:`bayesian_layers.random_variables`.
"""

from __future__ import annotations

import torch.distributions as td
from torch import Tensor

from ._make import OptionalReal, Real, Shape, Value
from ._make import make as _make
from .variable import RandomVariable

__all__ = [
    "Bernoulli",
    "Binomial",
    "Categorical",
    "Geometric",
    "Multinomial",
    "NegativeBinomial",
    "OneHotCategorical",
    "OneHotCategoricalStraightThrough",
    "Poisson",
    "RelaxedBernoulli",
    "RelaxedOneHotCategorical",
]


def Bernoulli(
    probs: OptionalReal = None,
    logits: OptionalReal = None,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Bernoulli random variable (:class:`torch.distributions.Bernoulli`).

    A random variable built from parameters; the output layer of the same name is
    ``bl.layers.Bernoulli``, which maps features to the parameters and returns one.

    Takes 1 with probability ``probs`` (or ``sigmoid(logits)``; give exactly one)
    and 0 otherwise. The value is a float tensor of the batch shape; it is not
    reparameterizable, so no gradient reaches ``probs`` through it (use
    :meth:`RandomVariable.log_prob` for score-function estimators, or
    :func:`RelaxedBernoulli`).

    Args:
        probs: probability of a 1, in ``[0, 1]``.
        logits: log-odds of a 1.
        validate_args: check the arguments (torch's default when ``None``).
        name: the variable's name.
        value: an observed value instead of a draw.
        sample_shape: leading shape of the drawn value.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> x = Bernoulli(probs=torch.tensor([0.0, 1.0]), name="coin")
        >>> x.value, x.mean
        (tensor([0., 1.]), tensor([0., 1.]))
        >>> Bernoulli(logits=torch.zeros(2), value=torch.ones(2)).log_prob(torch.ones(2))
        tensor([-0.6931, -0.6931])
        >>> bl.Bernoulli(probs=torch.full((2,), 0.5)).shape  # parameters in
        torch.Size([2])
        >>> bl.layers.Bernoulli(units=2)(torch.randn(5, 3)).shape  # features in
        torch.Size([5, 2])
    """
    return _make(
        Bernoulli,
        td.Bernoulli,
        {"probs": probs, "logits": logits, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def Binomial(
    total_count: Tensor | int = 1,
    probs: Tensor | None = None,
    logits: Tensor | None = None,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Binomial random variable (:class:`torch.distributions.Binomial`)."""
    return _make(
        Binomial,
        td.Binomial,
        {
            "total_count": total_count,
            "probs": probs,
            "logits": logits,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )


def Categorical(
    probs: Tensor | None = None,
    logits: Tensor | None = None,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Categorical random variable (:class:`torch.distributions.Categorical`).

    A random variable built from parameters; the output layer of the same name is
    ``bl.layers.Categorical``, which maps features to the parameters and returns one.

    Takes an integer class index in ``{0, ..., K - 1}`` with the probabilities in
    the last dimension of ``probs`` (normalised) or ``softmax(logits)``; give
    exactly one. The value has the batch shape (the parameters' shape without
    the last dimension) and dtype ``int64``; it is not reparameterizable
    (:func:`RelaxedOneHotCategorical` and :func:`OneHotCategoricalStraightThrough`
    are).

    Args:
        probs: non-negative class weights of shape ``(*batch, K)``.
        logits: unnormalised log-probabilities of shape ``(*batch, K)``.
        validate_args: check the arguments (torch's default when ``None``).
        name: the variable's name.
        value: an observed value instead of a draw.
        sample_shape: leading shape of the drawn value.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> _ = torch.manual_seed(0)
        >>> y = Categorical(logits=torch.zeros(2, 5), sample_shape=(3,), name="label")
        >>> y.shape, y.dtype
        (torch.Size([3, 2]), torch.int64)
        >>> y.entropy()  # log 5
        tensor([1.6094, 1.6094])
        >>> bl.Categorical(logits=torch.zeros(2, 4)).shape  # parameters in
        torch.Size([2])
        >>> bl.layers.Categorical(units=2)(torch.randn(5, 3)).shape  # features in
        torch.Size([5])
    """
    return _make(
        Categorical,
        td.Categorical,
        {"probs": probs, "logits": logits, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def Geometric(
    probs: OptionalReal = None,
    logits: OptionalReal = None,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Geometric random variable, the number of failures before the first success
    (:class:`torch.distributions.Geometric`)."""
    return _make(
        Geometric,
        td.Geometric,
        {"probs": probs, "logits": logits, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def Multinomial(
    total_count: int = 1,
    probs: Tensor | None = None,
    logits: Tensor | None = None,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Multinomial random variable: ``total_count`` draws counted per category
    (:class:`torch.distributions.Multinomial`)."""
    return _make(
        Multinomial,
        td.Multinomial,
        {
            "total_count": total_count,
            "probs": probs,
            "logits": logits,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )


def NegativeBinomial(
    total_count: Real,
    probs: Tensor | None = None,
    logits: Tensor | None = None,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A negative-binomial random variable (:class:`torch.distributions.NegativeBinomial`).

    A random variable built from parameters; the output layer of the same name is
    ``bl.layers.NegativeBinomial``, which maps features to the parameters and returns one.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> bl.NegativeBinomial(torch.ones(2), logits=torch.zeros(2)).shape  # parameters in
        torch.Size([2])
        >>> bl.layers.NegativeBinomial(units=2)(torch.randn(5, 3)).shape  # features in
        torch.Size([5, 2])
    """
    return _make(
        NegativeBinomial,
        td.NegativeBinomial,
        {
            "total_count": total_count,
            "probs": probs,
            "logits": logits,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )


def OneHotCategorical(
    probs: Tensor | None = None,
    logits: Tensor | None = None,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A categorical random variable encoded one-hot
    (:class:`torch.distributions.OneHotCategorical`).

    A random variable built from parameters; the output layer of the same name is
    ``bl.layers.OneHotCategorical``, which maps features to the parameters and returns one.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> bl.OneHotCategorical(logits=torch.zeros(2, 4)).shape  # parameters in
        torch.Size([2, 4])
        >>> bl.layers.OneHotCategorical(units=2)(torch.randn(5, 3)).shape  # features in
        torch.Size([5, 2])
    """
    return _make(
        OneHotCategorical,
        td.OneHotCategorical,
        {"probs": probs, "logits": logits, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def OneHotCategoricalStraightThrough(
    probs: Tensor | None = None,
    logits: Tensor | None = None,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A one-hot categorical random variable with straight-through gradients
    (:class:`torch.distributions.OneHotCategoricalStraightThrough`)."""
    return _make(
        OneHotCategoricalStraightThrough,
        td.OneHotCategoricalStraightThrough,
        {"probs": probs, "logits": logits, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def Poisson(
    rate: Tensor | float,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A Poisson random variable (:class:`torch.distributions.Poisson`).

    A random variable built from parameters; the output layer of the same name is
    ``bl.layers.Poisson``, which maps features to the parameters and returns one.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> bl.Poisson(torch.ones(2)).shape  # parameters in
        torch.Size([2])
        >>> bl.layers.Poisson(units=2)(torch.randn(5, 3)).shape  # features in
        torch.Size([5, 2])
    """
    return _make(
        Poisson,
        td.Poisson,
        {"rate": rate, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


def RelaxedBernoulli(
    temperature: Real,
    probs: OptionalReal = None,
    logits: OptionalReal = None,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A relaxed (Concrete) Bernoulli random variable on ``(0, 1)``, reparameterizable
    (:class:`torch.distributions.RelaxedBernoulli`)."""
    return _make(
        RelaxedBernoulli,
        td.RelaxedBernoulli,
        {
            "temperature": temperature,
            "probs": probs,
            "logits": logits,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )


def RelaxedOneHotCategorical(
    temperature: Real,
    probs: Tensor | None = None,
    logits: Tensor | None = None,
    validate_args: bool | None = None,
    *,
    name: str | None = None,
    value: Value = None,
    sample_shape: Shape = (),
) -> RandomVariable:
    """A relaxed (Gumbel-softmax) one-hot categorical random variable, reparameterizable
    (:class:`torch.distributions.RelaxedOneHotCategorical`)."""
    return _make(
        RelaxedOneHotCategorical,
        td.RelaxedOneHotCategorical,
        {
            "temperature": temperature,
            "probs": probs,
            "logits": logits,
            "validate_args": validate_args,
        },
        name,
        value,
        sample_shape,
    )
