"""The KL regularizers: closed-form normal, log-uniform, half-Cauchy and any-prior Monte Carlo."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    AffineTransform,
    Distribution,
    HalfCauchy,
    Normal,
    TransformedDistribution,
    kl_divergence,
)

from ..distributions import Deterministic
from ..initializers import log_softplus
from ..random_variables.variable import RandomVariable
from ._fused import softplus_normal_kl_scalar_prior
from .base import LocScalePrior, Regularizer, monte_carlo_kl

__all__ = [
    "NormalKLDivergence",
    "LogUniformKLDivergence",
    "HalfCauchyKLDivergence",
    "MonteCarloKLDivergence",
]


class NormalKLDivergence(LocScalePrior):
    """``KL(q || N(loc, scale))`` summed over elements.

    Closed form for a normal ``q``: ``log(σ_p/σ) + (σ² + (μ - μ_p)²) / (2σ_p²) - 1/2``
    per element; torch's registered ``kl_divergence`` for other families that
    have one; for a point estimate (``Deterministic``) the negative log prior
    density of the point (MAP; the KL itself is infinite); a one-sample Monte
    Carlo estimate otherwise.

    The prior scale may also be chosen from the posterior instead of fixed:
    ``scale="empirical_bayes"`` builds an
    :class:`~bayesian_layers.regularizers.EmpiricalBayesNormalKLDivergence` (the
    closed-form type-II maximum-likelihood scale, one per weight tensor) and
    ``scale="learned"`` a
    :class:`~bayesian_layers.regularizers.LearnedScaleNormalKLDivergence` (a trainable
    scale, starting at 1).

    Args:
        loc: prior mean (scalar or broadcastable tensor).
        scale: prior standard deviation, > 0; or ``"empirical_bayes"`` or ``"learned"``.
        scale_factor: multiplies the result.

    Example:
        >>> q = Normal(torch.zeros(3), torch.ones(3))
        >>> float(NormalKLDivergence()(q))
        0.0
        >>> type(NormalKLDivergence(scale="empirical_bayes")).__name__
        'EmpiricalBayesNormalKLDivergence'
    """

    def __new__(
        cls, loc: float | Tensor = 0.0, scale: float | Tensor | str = 1.0, scale_factor: float = 1.0
    ) -> NormalKLDivergence:
        if isinstance(scale, str):
            # A prior scale chosen from the posterior: another class (its __init__ has run,
            # and Python skips ours because the object is not a NormalKLDivergence).
            from .empirical_bayes import EmpiricalBayesNormalKLDivergence
            from .hierarchical import LearnedScaleNormalKLDivergence

            if scale == "empirical_bayes":
                return EmpiricalBayesNormalKLDivergence(loc, scale_factor)  # type: ignore[return-value]
            if scale == "learned":
                return LearnedScaleNormalKLDivergence(loc, 1.0, scale_factor)  # type: ignore[return-value]
            raise TypeError(
                f"NormalKLDivergence expected `scale` to be a positive number or tensor, or "
                f"'empirical_bayes' or 'learned', got {scale!r}"
            )
        return super().__new__(cls)

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

    def softplus_normal_penalty(self, loc: Tensor, rho: Tensor) -> Tensor | None:
        out = self.softplus_normal_kl(loc, rho)
        return out if self.scale_factor == 1.0 else out * self.scale_factor

    def normal_kl(self, loc: Tensor, scale: Tensor) -> Tensor:
        """Closed-form ``KL(N(loc, scale) || prior)`` summed over elements."""
        return self._elementwise_kl(loc, scale, scale.log())

    def softplus_normal_kl(self, loc: Tensor, rho: Tensor) -> Tensor:
        """Closed-form ``KL(N(loc, softplus(rho)) || prior)`` summed over elements.

        ``log softplus(rho)`` is computed stably, so the value and gradient are
        finite for every finite ``rho`` (float32 ``softplus`` underflows below -104).
        """
        p_loc, p_scale = self.prior_loc, self.prior_scale
        # The fused Function has a custom jvp, which Dynamo cannot trace: compiled code
        # takes the elementwise form (the compiler fuses it anyway).
        fused = not torch.compiler.is_compiling()
        if fused and p_loc.numel() == 1 and p_scale.numel() == 1:
            return softplus_normal_kl_scalar_prior(loc, rho, p_loc.reshape(()), p_scale.reshape(()))
        return self._elementwise_kl(loc, F.softplus(rho), log_softplus(rho))

    def _elementwise_kl(self, loc: Tensor, scale: Tensor, log_scale: Tensor) -> Tensor:
        p_loc, p_scale = self.prior_loc, self.prior_scale
        var_ratio = (scale / p_scale).square()
        t1 = ((loc - p_loc) / p_scale).square()
        log_ratio = log_scale - p_scale.log()
        return (0.5 * (var_ratio + t1 - 1) - log_ratio).sum()

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

    def softplus_normal_penalty(self, loc: Tensor, rho: Tensor) -> Tensor | None:
        out = self._kl_from_log_scale(loc, log_softplus(rho))
        return out if self.scale_factor == 1.0 else out * self.scale_factor

    def log_uniform_kl(self, loc: Tensor, scale: Tensor) -> Tensor:
        """The approximate KL summed over elements."""
        return self._kl_from_log_scale(loc, torch.log(scale))

    def _kl_from_log_scale(self, loc: Tensor, log_scale: Tensor) -> Tensor:
        log_alpha = 2 * log_scale - torch.log(loc.square() + 1e-16)
        neg_kl = (
            self.K1 * torch.sigmoid(self.K2 + self.K3 * log_alpha)
            - 0.5 * nn.functional.softplus(-log_alpha)
            - self.K1
        )
        return -neg_kl.sum()


class HalfCauchyKLDivergence(LocScalePrior):
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
                value = prior.__dict__[name].detach().clone()
                if value.device.type != "meta" and not bool(torch.isfinite(value).all()):
                    raise ValueError(
                        f"MonteCarloKLDivergence expected `prior` with finite parameters, "
                        f"got `{name}` = {value!r}"
                    )
                self.register_buffer(f"prior_{name}", value)
                self._arg_names.append(name)

    def prior(self) -> Distribution:
        kwargs = {n: getattr(self, f"prior_{n}") for n in self._arg_names}
        return self.prior_class(**kwargs, validate_args=False)

    def penalty(self, rv: RandomVariable) -> Tensor:
        return monte_carlo_kl(rv.distribution, self.prior(), rv.value)

    def extra_repr(self) -> str:
        return f"prior={self.prior_class.__name__}, scale_factor={self.scale_factor}"
