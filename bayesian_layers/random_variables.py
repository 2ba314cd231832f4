"""Edward2-style random-variable constructors, one per ``torch.distributions`` class.

Each constructor takes the torch distribution's own arguments (same names, same
order, same defaults, ``validate_args`` included) and returns a
:class:`~bayesian_layers.RandomVariable` holding that distribution and one value
of it. Three keyword-only arguments are common to all of them:

- ``name``: a name for the variable (used by tracing and in the ``repr``);
- ``value``: an observed or fixed value, of shape
  ``sample_shape + batch_shape + event_shape``; drawn (``rsample`` when the
  distribution has it) when omitted;
- ``sample_shape``: leading shape of the drawn value.

A random variable passed as a parameter acts as its value, so variables build
hierarchical models directly: ``Normal(loc=Normal(0.0, 1.0), scale=0.1)``. A random
variable passed where a *distribution* is expected (``base_distribution`` of
:func:`Independent` and :func:`TransformedDistribution`, the two distributions of
:func:`MixtureSameFamily`) stands for its distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import torch
import torch.distributions as td
from torch import Tensor

from . import distributions as _bl_distributions
from . import tracing as _tracing
from .random_variable import RandomVariable

__all__ = [
    "Bernoulli",
    "Beta",
    "Binomial",
    "Categorical",
    "Cauchy",
    "Chi2",
    "ContinuousBernoulli",
    "Deterministic",
    "Dirichlet",
    "Exponential",
    "FisherSnedecor",
    "Gamma",
    "GeneralizedPareto",
    "Geometric",
    "Gumbel",
    "HalfCauchy",
    "HalfNormal",
    "Independent",
    "InverseGamma",
    "Kumaraswamy",
    "LKJCholesky",
    "Laplace",
    "LogNormal",
    "LogisticNormal",
    "LowRankMultivariateNormal",
    "MixtureSameFamily",
    "Multinomial",
    "MultivariateNormal",
    "NegativeBinomial",
    "Normal",
    "OneHotCategorical",
    "OneHotCategoricalStraightThrough",
    "Pareto",
    "Poisson",
    "RelaxedBernoulli",
    "RelaxedOneHotCategorical",
    "StudentT",
    "TransformedDistribution",
    "Uniform",
    "VonMises",
    "Weibull",
    "Wishart",
]

Real: TypeAlias = Tensor | float
OptionalReal: TypeAlias = Tensor | float | None
DistributionLike: TypeAlias = td.Distribution | RandomVariable
Value: TypeAlias = Tensor | float | Sequence[float] | None
Shape: TypeAlias = Sequence[int] | torch.Size

# Arguments that take a distribution: a random variable passed there stands for its
# distribution (everywhere else it stands for its value).
_DISTRIBUTION_ARGUMENTS = frozenset(
    {"base_distribution", "mixture_distribution", "component_distribution"}
)


def _make(
    dist_cls: type[td.Distribution],
    args: dict[str, Any],
    name: str | None,
    value: Value,
    sample_shape: Shape,
) -> RandomVariable:
    """Build ``dist_cls(**args)`` and wrap it: the one place every constructor goes through.

    While a tracer is active (:func:`bayesian_layers.trace`) the call goes to the
    tracers as ``tracer(<public constructor>, **args, name=, value=, sample_shape=)``.
    """
    if _tracing._active and _tracing.is_tracing():
        constructor = globals()[dist_cls.__name__]
        kwargs = {**args, "name": name, "value": value, "sample_shape": sample_shape}
        return _tracing._dispatch(constructor, (), kwargs)
    kwargs = {}
    for key, arg in args.items():
        if isinstance(arg, RandomVariable):
            arg = arg.distribution if key in _DISTRIBUTION_ARGUMENTS else arg.value
        kwargs[key] = arg
    distribution = dist_cls(**kwargs)
    return RandomVariable(distribution, value=value, sample_shape=sample_shape, name=name)


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
        >>> x = Bernoulli(probs=torch.tensor([0.0, 1.0]), name="coin")
        >>> x.value, x.mean
        (tensor([0., 1.]), tensor([0., 1.]))
        >>> Bernoulli(logits=torch.zeros(2), value=torch.ones(2)).log_prob(torch.ones(2))
        tensor([-0.6931, -0.6931])
    """
    return _make(
        td.Bernoulli,
        {"probs": probs, "logits": logits, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


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
        >>> _ = torch.manual_seed(0)
        >>> y = Categorical(logits=torch.zeros(2, 5), sample_shape=(3,), name="label")
        >>> y.shape, y.dtype
        (torch.Size([3, 2]), torch.int64)
        >>> y.entropy()  # log 5
        tensor([1.6094, 1.6094])
    """
    return _make(
        td.Categorical,
        {"probs": probs, "logits": logits, "validate_args": validate_args},
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
        td.Cauchy,
        {"loc": loc, "scale": scale, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


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
    return _make(td.Chi2, {"df": df, "validate_args": validate_args}, name, value, sample_shape)


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
        _bl_distributions.Deterministic,
        {"loc": loc, "validate_args": validate_args},
        name,
        value,
        sample_shape,
    )


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
        td.Dirichlet,
        {"concentration": concentration, "validate_args": validate_args},
        name,
        value,
        sample_shape,
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
        td.Exponential, {"rate": rate, "validate_args": validate_args}, name, value, sample_shape
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
        td.Geometric,
        {"probs": probs, "logits": logits, "validate_args": validate_args},
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
        td.Gumbel,
        {"loc": loc, "scale": scale, "validate_args": validate_args},
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
        td.HalfCauchy, {"scale": scale, "validate_args": validate_args}, name, value, sample_shape
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
        td.HalfNormal, {"scale": scale, "validate_args": validate_args}, name, value, sample_shape
    )


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
        td.InverseGamma,
        {"concentration": concentration, "rate": rate, "validate_args": validate_args},
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
        td.LKJCholesky,
        {"dim": dim, "concentration": concentration, "validate_args": validate_args},
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
    """A Laplace random variable (:class:`torch.distributions.Laplace`)."""
    return _make(
        td.Laplace,
        {"loc": loc, "scale": scale, "validate_args": validate_args},
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
    (:class:`torch.distributions.LogNormal`)."""
    return _make(
        td.LogNormal,
        {"loc": loc, "scale": scale, "validate_args": validate_args},
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
    """A negative-binomial random variable (:class:`torch.distributions.NegativeBinomial`)."""
    return _make(
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
        >>> _ = torch.manual_seed(0)
        >>> z = Normal(torch.zeros(3), 1.0, name="z")
        >>> z  # doctest: +ELLIPSIS
        <RandomVariable 'z' Normal shape=(3,) batch_shape=(3,) event_shape=() ...>
        >>> x = Normal(loc=z, scale=0.1, sample_shape=(2,))  # z parameterises x
        >>> x.shape, type(torch.exp(x) + z).__name__
        (torch.Size([2, 3]), 'Tensor')
        >>> Normal(0.0, 1.0, value=torch.tensor(0.0)).log_prob(torch.tensor(0.0))
        tensor(-0.9189)
    """
    return _make(
        td.Normal,
        {"loc": loc, "scale": scale, "validate_args": validate_args},
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
    (:class:`torch.distributions.OneHotCategorical`)."""
    return _make(
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
        td.OneHotCategoricalStraightThrough,
        {"probs": probs, "logits": logits, "validate_args": validate_args},
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
        td.Pareto,
        {"scale": scale, "alpha": alpha, "validate_args": validate_args},
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
    """A Poisson random variable (:class:`torch.distributions.Poisson`)."""
    return _make(
        td.Poisson, {"rate": rate, "validate_args": validate_args}, name, value, sample_shape
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
    """A Student's t random variable (:class:`torch.distributions.StudentT`)."""
    return _make(
        td.StudentT,
        {"df": df, "loc": loc, "scale": scale, "validate_args": validate_args},
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
        td.VonMises,
        {"loc": loc, "concentration": concentration, "validate_args": validate_args},
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
        td.Weibull,
        {"scale": scale, "concentration": concentration, "validate_args": validate_args},
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
