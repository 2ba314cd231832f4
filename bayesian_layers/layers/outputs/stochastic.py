"""Stochastic output layers of one family each: :class:`Normal`, :class:`LogNormal`,
:class:`StudentT`, :class:`Laplace`, :class:`Bernoulli`, :class:`Categorical`,
:class:`OneHotCategorical`, :class:`Poisson`, :class:`NegativeBinomial` and
:class:`MultivariateNormalTriL` (paper §2.3). The mixtures are in :mod:`.mixtures`.

The shape rules shared by every stochastic output layer (``units``,
``in_features``, ``event_dims``, constraints) are in :mod:`.output_base`.
"""

from __future__ import annotations

import torch
import torch.distributions as td
from torch import Tensor

from ..._checks import inverse_softplus
from . import distributions as od
from .base import StochasticOutput

__all__ = [
    "StochasticOutput",
    "Normal",
    "LogNormal",
    "StudentT",
    "Laplace",
    "Bernoulli",
    "Categorical",
    "OneHotCategorical",
    "Poisson",
    "NegativeBinomial",
    "MultivariateNormalTriL",
]


class _LocScale(StochasticOutput):
    param_names = ("loc", "scale")
    feature_params = {"scale": 1.0}
    positive = frozenset({"scale"})


class Normal(_LocScale):
    """Normal output, ``N(loc, scale²)`` per element.

    An output layer: features in, a random variable out; the random-variable
    constructor of the same name is ``bl.Normal``, which takes the parameters themselves.

    Shape:
        - Input: ``(*, F)``.
        - Without ``units``: ``loc`` = input; ``scale = softplus(scale_rho) +
          min_scale``, a trainable ``(F,)`` parameter starting at 1. Value ``(*, F)``.
        - With ``units=n``: projection to ``[loc | scale_raw]``, each ``(*, n)``;
          ``scale = softplus(scale_raw) + min_scale``. Value ``(*, n)``.
        - Event: the last ``event_dims`` (default 1) dims; ``log_prob``: ``(*)``.

    Has ``rsample``: the value carries gradients to every parameter.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from bayesian_layers.layers.outputs.stochastic import Normal
        >>> rv = Normal(units=2, name="latent_code")(torch.randn(5, 3))
        >>> rv.shape, rv.log_prob(torch.zeros(5, 2)).shape
        (torch.Size([5, 2]), torch.Size([5]))
        >>> rv.kl_divergence(bl.Normal(0.0, 1.0)).shape
        torch.Size([5])
    """

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        return od.Normal(params["loc"], params["scale"], validate_args=validate_args)


class LogNormal(_LocScale):
    """Log-normal output: ``exp(N(loc, scale²))`` per element.

    An output layer: features in, a random variable out; the random-variable
    constructor of the same name is ``bl.LogNormal``, which takes the parameters themselves.

    Shape:
        As :class:`Normal`; ``loc`` and ``scale`` are those of the logarithm.
    """

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        return od.LogNormal(params["loc"], params["scale"], validate_args=validate_args)


class Laplace(_LocScale):
    """Laplace output, density ``exp(-|x - loc| / scale) / (2 scale)`` per element.

    An output layer: features in, a random variable out; the random-variable
    constructor of the same name is ``bl.Laplace``, which takes the parameters themselves.

    Shape:
        As :class:`Normal`.
    """

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        return od.Laplace(params["loc"], params["scale"], validate_args=validate_args)


class StudentT(StochasticOutput):
    """Student-t output with ``df`` degrees of freedom, ``loc`` and ``scale``.

    An output layer: features in, a random variable out; the random-variable
    constructor of the same name is ``bl.StudentT``, which takes the parameters themselves.

    Shape:
        - Input: ``(*, F)``.
        - Without ``units``: ``loc`` = input; ``scale`` and ``df`` trainable ``(F,)``
          parameters (``softplus(·_rho) + min_scale``) starting at 1 and 5.
        - With ``units=n``: projection to ``[loc | scale_raw | df_raw]``, each
          ``(*, n)``, both made positive by ``softplus + min_scale``.
        - Value ``(*, F)`` or ``(*, n)``; event the last ``event_dims`` (default 1).
    """

    param_names = ("loc", "scale", "df")
    feature_params = {"scale": 1.0, "df": 5.0}
    positive = frozenset({"scale", "df"})

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        return od.StudentT(
            params["df"], params["loc"], params["scale"], validate_args=validate_args
        )


class Bernoulli(StochasticOutput):
    """Bernoulli output with ``P(1) = sigmoid(logits)``.

    An output layer: features in, a random variable out; the random-variable
    constructor of the same name is ``bl.Bernoulli``, which takes the parameters themselves.

    Shape:
        - Input: ``(*, F)``: the logits (no ``units``), or projected to ``(*, n)``.
        - Value: ``(*, F)`` or ``(*, n)`` floats in {0, 1}, drawn by ``sample()``
          (no gradient through it); event the last ``event_dims`` (default 1).
    """

    param_names = ("logits",)

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        return od.Bernoulli(logits=params["logits"], validate_args=validate_args)


class Categorical(StochasticOutput):
    """Categorical output over the last dimension's classes, ``softmax(logits)``.

    An output layer: features in, a random variable out; the random-variable
    constructor of the same name is ``bl.Categorical``, which takes the parameters themselves.

    Shape:
        - Input: ``(*, C)``: the class logits (no ``units``), or projected to
          ``(*, n)`` logits over ``n = units`` classes.
        - Value: ``(*)`` integer class indices (``sample()``, no gradient); the
          event is scalar (``event_dims`` default 0); ``log_prob``: ``(*)``, and
          rejects non-integer targets with a ``ValueError``.
    """

    param_names = ("logits",)
    consumes_last_dim = True

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        return od.Categorical(logits=params["logits"], validate_args=validate_args)


class OneHotCategorical(StochasticOutput):
    """One-hot categorical output, ``softmax(logits)`` over the last dimension.

    An output layer: features in, a random variable out; the random-variable
    constructor of the same name is ``bl.OneHotCategorical``, which takes the parameters themselves.

    Shape:
        - Input: ``(*, C)`` class logits (no ``units``), or projected to ``(*, n)``.
        - Value: ``(*, C)`` one-hot floats (``sample()``, no gradient); the event
          is the class dimension (``event_dims`` default 1).
    """

    param_names = ("logits",)
    intrinsic_event_dims = 1

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        return od.OneHotCategorical(logits=params["logits"], validate_args=validate_args)


class Poisson(StochasticOutput):
    """Poisson output with ``rate = exp(log_rate)``.

    An output layer: features in, a random variable out; the random-variable
    constructor of the same name is ``bl.Poisson``, which takes the parameters themselves.

    Draws are correct at any rate: torch's sampler up to ``rate = 2**30`` (log-rate
    ≈ 20.8), above it a normal approximation with a skewness correction whose error
    is ``O(1/rate)`` (:func:`.output_distributions.sample_poisson`); torch's own
    returns -9.2e18 past log-rate ≈ 43.7.

    Shape:
        - Input: ``(*, F)``: the log-rate (no ``units``), or projected to ``(*, n)``.
        - Value: counts as floats, ``(*, F)`` or ``(*, n)`` (``sample()``, no
          gradient); event the last ``event_dims`` (default 1).
    """

    param_names = ("log_rate",)

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        return od.Poisson(params["log_rate"].exp(), validate_args=validate_args)


class NegativeBinomial(StochasticOutput):
    """Negative-binomial output, in torch's parameterisation: the number of successes,
    each with probability ``p = sigmoid(logits)``, before ``total_count`` failures.
    Mean ``total_count · p / (1 - p) = total_count · exp(logits)``, variance
    ``mean / (1 - p)``. Draws are correct counts at any rate (see :class:`Poisson`).

    An output layer: features in, a random variable out; the random-variable
    constructor of the same name is ``bl.NegativeBinomial``, which takes the parameters themselves.

    Shape:
        - Input: ``(*, F)``.
        - Without ``units``: ``logits`` = input; ``total_count = softplus(
          total_count_rho) + min_scale``, a trainable ``(F,)`` parameter starting at 1.
        - With ``units=n``: projection to ``[logits | total_count_raw]``.
        - Value: counts as floats (``sample()``, no gradient); event the last
          ``event_dims`` (default 1).
    """

    param_names = ("logits", "total_count")
    feature_params = {"total_count": 1.0}
    positive = frozenset({"total_count"})

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        return od.NegativeBinomial(
            params["total_count"], logits=params["logits"], validate_args=validate_args
        )


class MultivariateNormalTriL(StochasticOutput):
    """Multivariate normal output ``N(loc, L Lᵀ)`` with a lower-triangular ``L``.

    ``L``'s diagonal is ``softplus(raw) + min_scale``; below it, ``L`` is ``raw``.

    Shape:
        - Input: ``(*, F)``.
        - Without ``units``: ``loc`` = input (``D = F``); ``L`` from a trainable
          ``(D, D)`` ``scale_tril_unconstrained`` (its lower triangle), starting at ``I``.
        - With ``units=n`` (``D = n``): projection to ``[loc (n) | tril (n(n+1)/2)]``,
          the triangle row by row (``torch.tril_indices`` order).
        - Value ``(*, D)``; the event is ``(D,)`` (``event_dims`` default 1).
    """

    param_names = ("loc", "scale_tril")
    intrinsic_event_dims = 1

    def _num_outputs(self, units: int) -> int:
        return units + units * (units + 1) // 2

    def _split(self, raw: Tensor) -> dict[str, Tensor]:
        n = self.units
        assert n is not None
        loc, flat = raw[..., :n], raw[..., n:]  # (*, n), (*, n(n+1)/2)
        rows, cols = torch.tril_indices(n, n, device=raw.device)
        tril = raw.new_zeros(raw.shape[:-1] + (n, n))
        tril[..., rows, cols] = flat  # (*, n, n)
        return {"loc": loc, "scale_tril": tril}

    def _feature_shapes(self, features: int) -> dict[str, tuple[int, ...]]:
        return {"scale_tril_unconstrained": (features, features)}

    def _initial_positive_values(self) -> list[float]:
        return [1.0]  # the diagonal of L starts at 1

    def reset_feature_parameters(self) -> None:
        with torch.no_grad():
            raw = self.get_parameter("scale_tril_unconstrained")
            raw.zero_().diagonal().fill_(inverse_softplus(1.0 - self.min_scale))

    def _from_input(self, x: Tensor) -> dict[str, Tensor]:
        return {"loc": x, "scale_tril": self.get_parameter("scale_tril_unconstrained")}

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        raw = params["scale_tril"]
        diag = self.constrain_positive(raw.diagonal(dim1=-2, dim2=-1))  # (*, D)
        scale_tril = raw.tril(-1) + torch.diag_embed(diag)
        return od.MultivariateNormal(
            params["loc"], scale_tril=scale_tril, validate_args=validate_args
        )
