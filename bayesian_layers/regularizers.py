"""Penalties on weight random variables (the KL term of the ELBO).

A regularizer is a module called on a weight :class:`~bayesian_layers.RandomVariable`
(or a distribution) that returns a scalar. Prior hyperparameters are buffers, so
they live in ``state_dict()``. Every regularizer multiplies its result by
``scale_factor``.

Which value a Monte Carlo regularizer uses: the random variable's value, which a
layer sets to its most recent whole-weight draw (or a fresh draw for estimators
that never draw whole weights). Closed-form ones ignore the value.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import (
    AffineTransform,
    Distribution,
    HalfCauchy,
    Normal,
    TransformedDistribution,
    kl_divergence,
)

from .distributions import Deterministic
from .random_variable import RandomVariable

__all__ = [
    "Regularizer",
    "NormalKLDivergence",
    "LogUniformKLDivergence",
    "HalfCauchyKLDivergence",
    "MonteCarloKLDivergence",
    "get_regularizer",
    "REGULARIZERS",
]


def _as_rv(owner: str, x: RandomVariable | Distribution) -> RandomVariable:
    if isinstance(x, RandomVariable):
        return x
    if isinstance(x, Distribution):
        return RandomVariable(x)
    raise TypeError(f"{owner} expected a RandomVariable or Distribution, got {type(x).__name__}")


def _float_buffer(value: float | Tensor) -> Tensor:
    """A floating-point copy of ``value`` (never an alias of the caller's tensor)."""
    t = torch.as_tensor(value).detach().clone()
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def _positive_buffer(owner: str, name: str, value: float | Tensor) -> Tensor:
    t = _float_buffer(value)
    if t.device.type != "meta" and not bool((t > 0).all() and torch.isfinite(t).all()):
        raise ValueError(f"{owner} expected `{name}` > 0 and finite, got {value}")
    return t


class _NormalKLScalarPrior(torch.autograd.Function):
    """``sum KL(N(μ, σ) || N(μ_p, σ_p))`` for a scalar prior, with an analytic backward.

    Forward: ``(‖σ‖² + ‖μ - μ_p‖²) / (2σ_p²) - Σ log σ + n (log σ_p - 1/2)``, two dot
    products and one log pass. Backward: ``∂/∂μ = (μ - μ_p)/σ_p²``,
    ``∂/∂σ = σ/σ_p² - 1/σ`` (the prior is a constant: no gradient); the backward
    is built from the saved inputs with differentiable ops, so double backward works.
    """

    @staticmethod
    def forward(loc: Tensor, scale: Tensor, p_loc: Tensor, p_scale: Tensor) -> Tensor:  # type: ignore[override]
        centred = (loc - p_loc).reshape(-1)
        flat_scale = scale.reshape(-1)
        quad = torch.dot(flat_scale, flat_scale) + torch.dot(centred, centred)
        log_p_scale = torch.log(p_scale)
        return (
            0.5 * quad * torch.exp(-2 * log_p_scale)
            - torch.log(flat_scale).sum()
            + loc.numel() * (log_p_scale - 0.5)
        )

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        loc, scale, p_loc, p_scale = inputs
        ctx.save_for_backward(loc, scale, p_loc, p_scale)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        loc, scale, p_loc, p_scale = ctx.saved_tensors
        g = grad / (p_scale * p_scale)
        grad_loc = (loc - p_loc) * g if ctx.needs_input_grad[0] else None
        grad_scale = scale * g - grad / scale if ctx.needs_input_grad[1] else None
        return grad_loc, grad_scale, None, None


def normal_kl_scalar_prior(
    loc: Tensor, scale: Tensor, prior_loc: Tensor, prior_scale: Tensor
) -> Tensor:
    """``sum KL(N(loc, scale) || N(prior_loc, prior_scale))`` for 0-d prior tensors.

    ``loc`` and ``scale`` have the same shape. Fused: a few passes over the
    parameters forward and backward instead of autograd's dozen.
    """
    return _NormalKLScalarPrior.apply(loc, scale, prior_loc, prior_scale)


def monte_carlo_kl(q: Distribution, p: Distribution, value: Tensor) -> Tensor:
    """Single-sample estimate ``sum(log q(w) - log p(w))`` at ``w = value``."""
    return (q.log_prob(value) - p.log_prob(value)).sum()


class Regularizer(nn.Module):
    """Base class. Subclasses implement ``penalty(rv) -> Tensor`` (unscaled).

    Args:
        scale_factor: multiplies the penalty (a tempered KL uses < 1).
    """

    #: whether the penalty reads the random variable's value (Monte Carlo).
    needs_sample: bool = False

    def __init__(self, scale_factor: float = 1.0) -> None:
        super().__init__()
        if not isinstance(scale_factor, (int, float)) or not scale_factor >= 0:
            raise ValueError(
                f"{type(self).__name__} expected `scale_factor` >= 0, got {scale_factor!r}"
            )
        self.scale_factor = float(scale_factor)

    def penalty(self, rv: RandomVariable) -> Tensor:
        raise NotImplementedError

    def normal_penalty(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        """The scaled penalty of ``N(loc, scale)`` straight from its parameters, or ``None``.

        Layers call this first for normal posteriors: it skips building a
        distribution and a random variable on the training hot path.
        """
        return None

    def forward(self, rv: RandomVariable | Distribution) -> Tensor:
        out = self.penalty(_as_rv(type(self).__name__, rv))
        return out if self.scale_factor == 1.0 else out * self.scale_factor


class _LocScalePrior(Regularizer):
    """A regularizer whose prior has a location and a positive scale, kept as buffers."""

    prior_loc: Tensor
    prior_scale: Tensor

    def __init__(
        self, loc: float | Tensor = 0.0, scale: float | Tensor = 1.0, scale_factor: float = 1.0
    ) -> None:
        super().__init__(scale_factor)
        self.register_buffer("prior_loc", _float_buffer(loc))
        self.register_buffer("prior_scale", _positive_buffer(type(self).__name__, "scale", scale))


class NormalKLDivergence(_LocScalePrior):
    """``KL(q || N(loc, scale))`` summed over elements.

    Closed form for a normal ``q``: ``log(σ_p/σ) + (σ² + (μ - μ_p)²) / (2σ_p²) - 1/2``
    per element; torch's registered ``kl_divergence`` for other families that
    have one; for a point estimate (``Deterministic``) the negative log prior
    density of the point (MAP; the KL itself is infinite); a one-sample Monte
    Carlo estimate otherwise.

    Args:
        loc: prior mean (scalar or broadcastable tensor).
        scale: prior standard deviation, > 0.
        scale_factor: multiplies the result.

    Example:
        >>> q = Normal(torch.zeros(3), torch.ones(3))
        >>> float(NormalKLDivergence()(q))
        0.0
    """

    def prior(self) -> Normal:
        return Normal(self.prior_loc, self.prior_scale, validate_args=False)

    def penalty(self, rv: RandomVariable) -> Tensor:
        q = rv.distribution
        if type(q) is Normal:
            return self.normal_kl(q.loc, q.scale)
        if isinstance(q, Deterministic):
            return -self.prior().log_prob(q.loc).sum()
        try:
            return kl_divergence(q, self.prior()).sum()
        except NotImplementedError:
            return monte_carlo_kl(q, self.prior(), rv.value)

    def normal_penalty(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        out = self.normal_kl(loc, scale)
        return out if self.scale_factor == 1.0 else out * self.scale_factor

    def normal_kl(self, loc: Tensor, scale: Tensor) -> Tensor:
        """Closed-form ``KL(N(loc, scale) || prior)`` summed over elements."""
        p_loc, p_scale = self.prior_loc, self.prior_scale
        if p_loc.numel() == 1 and p_scale.numel() == 1:
            return normal_kl_scalar_prior(loc, scale, p_loc.reshape(()), p_scale.reshape(()))
        var_ratio = (scale / p_scale).square()
        t1 = ((loc - p_loc) / p_scale).square()
        return 0.5 * (var_ratio + t1 - 1 - var_ratio.log()).sum()

    def extra_repr(self) -> str:
        return (
            f"loc={self.prior_loc.tolist() if self.prior_loc.device.type != 'meta' else '?'}, "
            f"scale={self.prior_scale.tolist() if self.prior_scale.device.type != 'meta' else '?'}"
            f", scale_factor={self.scale_factor}"
        )


class LogUniformKLDivergence(Regularizer):
    """KL from a normal ``q`` to the log-uniform prior, Molchanov et al. (2017)'s approximation.

    With ``α = σ²/μ²``: ``KL ≈ k1 - k1·sigmoid(k2 + k3·log α) + ½·log(1 + 1/α)``,
    ``k1, k2, k3 = 0.63576, 1.87320, 1.48695``, summed over elements.

    Args:
        scale_factor: multiplies the result.

    Example:
        >>> q = Normal(torch.ones(3), 0.1 * torch.ones(3))
        >>> bool(LogUniformKLDivergence()(q) > 0)
        True
    """

    K1, K2, K3 = 0.63576, 1.87320, 1.48695

    def penalty(self, rv: RandomVariable) -> Tensor:
        q = rv.distribution
        if not isinstance(q, Normal):
            raise TypeError(
                "LogUniformKLDivergence expected a Normal weight distribution, "
                f"got {type(q).__name__}"
            )
        return self.log_uniform_kl(q.loc, q.scale)

    def normal_penalty(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        out = self.log_uniform_kl(loc, scale)
        return out if self.scale_factor == 1.0 else out * self.scale_factor

    def log_uniform_kl(self, loc: Tensor, scale: Tensor) -> Tensor:
        log_alpha = 2 * torch.log(scale) - torch.log(loc.square() + 1e-16)
        neg_kl = (
            self.K1 * torch.sigmoid(self.K2 + self.K3 * log_alpha)
            - 0.5 * nn.functional.softplus(-log_alpha)
            - self.K1
        )
        return -neg_kl.sum()


class HalfCauchyKLDivergence(_LocScalePrior):
    """Monte Carlo ``KL(q || HalfCauchy(loc, scale))`` at the variable's value.

    The prior is the half-Cauchy on ``[loc, inf)``; pair it with a positive
    posterior such as ``TrainableHalfCauchy`` or ``TrainableLogNormal``. A value
    outside the prior's support raises ``ValueError`` (the KL would be infinite).

    Args:
        loc: prior location (lower end of its support).
        scale: prior scale, > 0.
        scale_factor: multiplies the result.
    """

    needs_sample = True

    def prior(self) -> Distribution:
        return TransformedDistribution(
            HalfCauchy(self.prior_scale, validate_args=False),
            [AffineTransform(self.prior_loc, 1.0)],
            validate_args=False,
        )

    def penalty(self, rv: RandomVariable) -> Tensor:
        value = rv.value
        if bool((value < self.prior_loc).any()):
            raise ValueError(
                "HalfCauchyKLDivergence: the weight has values below the prior's support "
                f"[{float(self.prior_loc)}, inf); use a positive posterior "
                "(TrainableHalfCauchy, TrainableLogNormal)"
            )
        return monte_carlo_kl(rv.distribution, self.prior(), value)


class MonteCarloKLDivergence(Regularizer):
    """Monte Carlo ``KL(q || prior)`` for any prior: ``sum(log q(w) - log p(w))``.

    The prior's parameters are stored as buffers ``prior_<arg>`` so they are part
    of ``state_dict()``; the prior is rebuilt from them on each call.

    Args:
        prior: a ``torch.distributions`` distribution whose constructor takes its
            ``arg_constraints`` names (Normal, Laplace, StudentT, ...).
        scale_factor: multiplies the result.

    Example:
        >>> from torch.distributions import Laplace
        >>> reg = MonteCarloKLDivergence(Laplace(0.0, 1.0))
        >>> sorted(reg.state_dict())
        ['prior_loc', 'prior_scale']
    """

    needs_sample = True

    def __init__(self, prior: Distribution, scale_factor: float = 1.0) -> None:
        super().__init__(scale_factor)
        if not isinstance(prior, Distribution):
            raise TypeError(
                f"MonteCarloKLDivergence expected a Distribution prior, got {type(prior).__name__}"
            )
        self.prior_class = type(prior)
        self._arg_names = []
        for name in prior.arg_constraints:
            if name in prior.__dict__ and isinstance(prior.__dict__[name], Tensor):
                self.register_buffer(f"prior_{name}", prior.__dict__[name].detach().clone())
                self._arg_names.append(name)

    def prior(self) -> Distribution:
        kwargs = {n: getattr(self, f"prior_{n}") for n in self._arg_names}
        return self.prior_class(**kwargs, validate_args=False)

    def penalty(self, rv: RandomVariable) -> Tensor:
        return monte_carlo_kl(rv.distribution, self.prior(), rv.value)

    def extra_repr(self) -> str:
        return f"prior={self.prior_class.__name__}, scale_factor={self.scale_factor}"


REGULARIZERS: dict[str, type[Regularizer]] = {
    "normal_kl_divergence": NormalKLDivergence,
    "log_uniform_kl_divergence": LogUniformKLDivergence,
    "half_cauchy_kl_divergence": HalfCauchyKLDivergence,
}


def get_regularizer(spec: str | Regularizer | None, *, owner: str = "layer") -> Regularizer | None:
    """Resolve a string alias, a regularizer class or instance, or ``None``.

    Raises:
        ValueError: unknown alias (the message lists the known ones).
        TypeError: anything else.
    """
    if spec is None or isinstance(spec, Regularizer):
        return spec
    if isinstance(spec, type) and issubclass(spec, Regularizer):
        return spec()
    if isinstance(spec, str):
        cls = REGULARIZERS.get(spec)
        if cls is None:
            raise ValueError(
                f"{owner}: unknown regularizer {spec!r}; expected one of {sorted(REGULARIZERS)}, "
                "None, or a Regularizer instance"
            )
        return cls()
    raise TypeError(
        f"{owner} expected a regularizer name, Regularizer or None, got {type(spec).__name__}"
    )
