"""Normal priors whose scale is learned (type-II maximum likelihood) or random (hierarchical).

Both are regularizers for ``weight_regularizer=`` of any Bayesian layer. Unlike the
fixed priors of :mod:`.kl` (buffers), their prior scale has trainable parameters: the
regularizer is a submodule of the layer, so ``model.parameters()`` holds them, an
optimizer built from it updates them, and ``bl.losses(model)`` carries their gradient.

- :class:`LearnedScaleNormalKLDivergence`: ``KL(q(w) || N(loc, s²))`` with a learned
  ``s`` (Edward2's ``TrainableNormalKLDivergenceStdDev``).
- :class:`HierarchicalNormalKLDivergence`: ``w | τ ~ N(loc, τ²)`` with a hyperprior
  ``p(τ)`` (half-Cauchy or log-normal) and a log-normal variational posterior ``q(τ)``;
  the penalty is the KL of the joint, in closed form.

Both are for unsharded weights: under FSDP2 or tensor parallelism
(``bl.distributed.kl_divergence`` sums per-shard terms) a per-unit scale would not
match a local shard, and the hyperprior term would be counted once per shard.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, HalfCauchy, LogNormal, Normal, kl_divergence

from .._checks import inverse_softplus
from ..distributions import Deterministic
from ..initializers import check_positive, log_softplus
from ..random_variables.variable import RandomVariable
from .base import NormalClosedForm, Regularizer, _float_buffer, _positive_buffer

__all__ = ["LearnedScaleNormalKLDivergence", "HierarchicalNormalKLDivergence"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _check_broadcast(owner: str, prior_shape: torch.Size, weight_shape: torch.Size) -> None:
    """The prior's scale must broadcast to the weight's shape without growing it."""
    try:
        ok = torch.broadcast_shapes(prior_shape, weight_shape) == weight_shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{owner} expected a weight whose shape its prior scale {tuple(prior_shape)} "
            f"broadcasts to (e.g. (out_features, 1) for one scale per output unit), got a "
            f"weight of shape {tuple(weight_shape)}"
        )


def _posterior_family(owner: str, rv: RandomVariable) -> Normal | Deterministic:
    q = rv.distribution
    if isinstance(q, (Normal, Deterministic)):
        return q
    raise TypeError(
        f"{owner} expected a Normal (or Deterministic) weight distribution, got {type(q).__name__}"
    )


class LearnedScaleNormalKLDivergence(NormalClosedForm):
    """``KL(q || N(loc, s²))`` summed over elements, with a learned prior scale ``s``.

    ``s = softplus(prior_scale_rho)`` is an ``nn.Parameter``: one for the whole weight
    (a scalar ``scale``) or one per output unit (``scale`` of shape ``(out, 1)`` for a
    ``(out, in)`` weight; any shape that broadcasts to the weight's). Per element, for
    ``q = N(μ, σ²)``::

        KL = log s - log σ + (σ² + (μ - loc)²) / (2 s²) - 1/2

    Minimising over ``s²`` (type-II maximum likelihood, empirical Bayes) gives
    ``s² = mean((μ - loc)² + σ²)`` over the elements that share ``s``: the prior
    follows the posterior's second moment, so train it with the KL, not to zero.
    For a point estimate (``Deterministic``) the penalty is ``-log N(w; loc, s²)``.

    Args:
        loc: prior mean, a fixed buffer (scalar or broadcastable tensor).
        scale: initial prior standard deviation, > 0; its shape is the shape of the
            learned parameter.
        scale_factor: multiplies the result.

    Attributes:
        prior_scale_rho: the trainable parameter, ``prior_scale = softplus(it)``.

    Example:
        >>> import bayesian_layers as bl
        >>> reg = LearnedScaleNormalKLDivergence(scale=torch.ones(2, 1))  # per unit
        >>> layer = bl.layers.LinearReparameterization(3, 2, weight_regularizer=reg)
        >>> sum(bl.losses(layer)).backward()
        >>> layer.weight_regularizer.prior_scale_rho.grad.shape
        torch.Size([2, 1])
        >>> any(p is reg.prior_scale_rho for p in layer.parameters())
        True
    """

    prior_loc: Tensor

    def __init__(
        self, loc: float | Tensor = 0.0, scale: float | Tensor = 1.0, scale_factor: float = 1.0
    ) -> None:
        super().__init__(scale_factor)
        owner = type(self).__name__
        self.register_buffer("prior_loc", _float_buffer(owner, "loc", loc))
        self.prior_scale_rho = nn.Parameter(
            inverse_softplus(_positive_buffer(owner, "scale", scale))
        )

    @property
    def prior_scale(self) -> Tensor:
        """``softplus(prior_scale_rho)``, the prior standard deviation."""
        return F.softplus(self.prior_scale_rho)

    def prior(self) -> Normal:
        """The current prior ``N(loc, prior_scale²)``."""
        return Normal(self.prior_loc, self.prior_scale, validate_args=False)

    def penalty(self, rv: RandomVariable) -> Tensor:
        q = _posterior_family(type(self).__name__, rv)
        if isinstance(q, Deterministic):
            _check_broadcast(type(self).__name__, self.prior_scale_rho.shape, q.loc.shape)
            return -self.prior().log_prob(q.loc).sum()
        return self._kl(q.loc, q.scale, q.scale.log())

    def _kl(self, loc: Tensor, scale: Tensor, log_scale: Tensor) -> Tensor:
        _check_broadcast(type(self).__name__, self.prior_scale_rho.shape, loc.shape)
        rho = self.prior_scale_rho
        inv_var = torch.exp(-2 * log_softplus(rho))  # 1 / s²
        second_moment = scale.square() + (loc - self.prior_loc).square()
        kl = log_softplus(rho) - log_scale + 0.5 * second_moment * inv_var - 0.5
        return kl.sum()

    def extra_repr(self) -> str:
        return f"scale_shape={tuple(self.prior_scale_rho.shape)}, scale_factor={self.scale_factor}"


@functools.lru_cache(maxsize=8)
def _gauss_hermite(n: int) -> tuple[Tensor, Tensor]:
    """Nodes ``x_k`` and weights ``w_k / sqrt(pi)`` (float64) of ``n``-point Gauss-Hermite:
    ``E[f(Z)] ≈ Σ_k w_k f(sqrt(2) x_k)`` for ``Z ~ N(0, 1)`` (Golub-Welsch)."""
    off = torch.arange(1, n, dtype=torch.float64).div(2).sqrt()
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    return nodes, vectors[0].square()  # weights sum to 1


def _normal_expectation(
    fn: Callable[[Tensor], Tensor], mean: Tensor, std: Tensor, n: int
) -> Tensor:
    """``E[fn(u)]`` for ``u ~ N(mean, std²)`` elementwise, by ``n``-point Gauss-Hermite."""
    nodes, weights = (t.to(device=mean.device, dtype=mean.dtype) for t in _gauss_hermite(n))
    u = mean.unsqueeze(-1) + math.sqrt(2.0) * std.unsqueeze(-1) * nodes  # (*, n)
    return (fn(u) * weights).sum(-1)


class HierarchicalNormalKLDivergence(Regularizer):
    """Normal prior with a random scale ``τ``: ``w | τ ~ N(loc, τ²)``, ``τ ~ p(τ)``.

    The variational posterior of the scale is log-normal, ``log τ ~ N(m, v²)`` with
    trainable ``m = prior_scale_loc`` and ``v = softplus(prior_scale_rho)``, independent
    of ``q(w)``. The penalty is the KL of the joint, ``KL(q(w) q(τ) || p(w | τ) p(τ))``::

        E_q(τ)[KL(q(w) || N(loc, τ²))] + KL(q(τ) || p(τ))

    For log-normal ``τ``, ``E[log τ] = m`` and ``E[τ⁻²] = exp(-2m + 2v²)``, so for
    ``q(w) = N(μ, σ²)`` the first term is closed form, per weight element::

        m - log σ + (σ² + (μ - loc)²) exp(-2m + 2v²) / 2 - 1/2

    (a ``Deterministic`` point ``w`` gives ``E[-log N(w; loc, τ²)]``, with
    ``log(2π)/2 + m + (w - loc)² exp(-2m + 2v²) / 2``). The hyperprior term, per
    element of ``τ``:

    - ``LogNormal(m₀, v₀)``: the normal KL of the logarithms (torch's closed form).
    - ``HalfCauchy(b)`` (Edward2's horseshoe-style scale prior, the default ``b = 1``):
      ``-H[q(τ)] - E[log p(τ)]`` with ``H[q(τ)] = m + log(v sqrt(2πe))`` and
      ``-log p(τ) = log(πb/2) + softplus(2(log τ - log b))``, whose expectation over
      ``log τ ~ N(m, v²)`` is a one-dimensional Gaussian integral, computed with
      ``quadrature_points``-point Gauss-Hermite quadrature (smooth, deterministic, and
      differentiable in ``m`` and ``v``).

    One ``τ`` for the whole weight (scalar ``scale``) or one per output unit
    (``scale`` of shape ``(out, 1)``): any shape that broadcasts to the weight's.

    Args:
        loc: prior mean of the weights, a fixed buffer.
        scale: initial median ``exp(m)`` of ``q(τ)``, > 0; its shape is that of ``τ``.
        log_scale_std: initial ``v``, the standard deviation of ``log τ`` under ``q``.
        hyperprior: ``torch.distributions.HalfCauchy(b)`` or ``LogNormal(m₀, v₀)``
            (parameters broadcastable to ``τ``; kept as buffers ``hyperprior_*``).
            Default ``HalfCauchy(1.0)``.
        quadrature_points: Gauss-Hermite points for the half-Cauchy term.
        scale_factor: multiplies the result.

    Example:
        >>> import bayesian_layers as bl
        >>> reg = HierarchicalNormalKLDivergence(scale=torch.ones(2, 1))
        >>> layer = bl.layers.LinearReparameterization(3, 2, weight_regularizer=reg)
        >>> sum(bl.losses(layer)).backward()
        >>> reg.prior_scale_loc.grad.shape, reg.prior_scale_rho.grad.shape
        (torch.Size([2, 1]), torch.Size([2, 1]))
    """

    prior_loc: Tensor
    hyperprior_loc: Tensor
    hyperprior_scale: Tensor

    def __init__(
        self,
        loc: float | Tensor = 0.0,
        scale: float | Tensor = 1.0,
        *,
        log_scale_std: float = 0.1,
        hyperprior: Distribution | None = None,
        quadrature_points: int = 64,
        scale_factor: float = 1.0,
    ) -> None:
        super().__init__(scale_factor)
        owner = type(self).__name__
        check_positive(owner, "log_scale_std", log_scale_std)
        if isinstance(quadrature_points, bool) or not isinstance(quadrature_points, int):
            raise TypeError(
                f"{owner} expected `quadrature_points` to be an int, got "
                f"{type(quadrature_points).__name__}"
            )
        if not 2 <= quadrature_points <= 256:
            raise ValueError(
                f"{owner} expected `quadrature_points` in [2, 256], got {quadrature_points}"
            )
        self.quadrature_points = quadrature_points
        self.register_buffer("prior_loc", _float_buffer(owner, "loc", loc))
        median = _positive_buffer(owner, "scale", scale)
        self.prior_scale_loc = nn.Parameter(median.log())
        self.prior_scale_rho = nn.Parameter(
            torch.full_like(median, inverse_softplus(float(log_scale_std)))
        )
        hyperprior = HalfCauchy(1.0) if hyperprior is None else hyperprior
        if type(hyperprior) is HalfCauchy:
            self.hyperprior_family = "HalfCauchy"
            self.register_buffer(
                "hyperprior_scale", _positive_buffer(owner, "hyperprior.scale", hyperprior.scale)
            )
        elif type(hyperprior) is LogNormal:
            self.hyperprior_family = "LogNormal"
            self.register_buffer(
                "hyperprior_loc", _float_buffer(owner, "hyperprior.loc", hyperprior.loc)
            )
            self.register_buffer(
                "hyperprior_scale", _positive_buffer(owner, "hyperprior.scale", hyperprior.scale)
            )
        else:
            raise TypeError(
                f"{owner} expected `hyperprior` to be a torch.distributions HalfCauchy or "
                f"LogNormal, got {type(hyperprior).__name__}"
            )
        for name, buffer in self.named_buffers():
            if name.startswith("hyperprior_"):
                try:
                    fits = torch.broadcast_shapes(buffer.shape, median.shape) == median.shape
                except RuntimeError:
                    fits = False
                if not fits:
                    raise ValueError(
                        f"{owner} expected the hyperprior's parameters to broadcast to the "
                        f"shape of `scale` {tuple(median.shape)}, got `{name}` of shape "
                        f"{tuple(buffer.shape)}"
                    )

    @property
    def log_scale_std(self) -> Tensor:
        """``v = softplus(prior_scale_rho)``, the standard deviation of ``log τ`` under ``q``."""
        return F.softplus(self.prior_scale_rho)

    def scale_posterior(self) -> LogNormal:
        """The variational posterior ``q(τ) = LogNormal(m, v)``."""
        return LogNormal(self.prior_scale_loc, self.log_scale_std, validate_args=False)

    def hyperprior(self) -> Distribution:
        """The hyperprior ``p(τ)`` rebuilt from its buffers."""
        if self.hyperprior_family == "HalfCauchy":
            return HalfCauchy(self.hyperprior_scale, validate_args=False)
        return LogNormal(self.hyperprior_loc, self.hyperprior_scale, validate_args=False)

    def hyperprior_kl(self) -> Tensor:
        """``KL(q(τ) || p(τ))`` summed over the elements of ``τ``."""
        m, rho = self.prior_scale_loc, self.prior_scale_rho
        if self.hyperprior_family == "LogNormal":
            q = Normal(m, F.softplus(rho), validate_args=False)
            p = Normal(self.hyperprior_loc, self.hyperprior_scale, validate_args=False)
            return kl_divergence(q, p).sum()
        log_b = self.hyperprior_scale.log().expand_as(m)  # (τ's shape)
        entropy = m + log_softplus(rho) + 0.5 * math.log(2 * math.pi * math.e)
        tail = _normal_expectation(
            lambda u: F.softplus(2 * (u - log_b.unsqueeze(-1))),
            m,
            F.softplus(rho),
            self.quadrature_points,
        )  # E[log(1 + τ²/b²)]
        return (math.log(math.pi / 2) + log_b + tail - entropy).sum()

    def expected_conditional_kl(self, loc: Tensor, scale: Tensor, log_scale: Tensor) -> Tensor:
        """``E_q(τ)[KL(N(loc, scale²) || N(prior_loc, τ²))]`` summed over elements."""
        _check_broadcast(type(self).__name__, self.prior_scale_loc.shape, loc.shape)
        m, v = self.prior_scale_loc, F.softplus(self.prior_scale_rho)
        inv_var = torch.exp(2 * (v.square() - m))  # E[τ⁻²]
        second_moment = scale.square() + (loc - self.prior_loc).square()
        return (m - log_scale + 0.5 * second_moment * inv_var - 0.5).sum()

    def penalty(self, rv: RandomVariable) -> Tensor:
        q = _posterior_family(type(self).__name__, rv)
        if isinstance(q, Deterministic):
            _check_broadcast(type(self).__name__, self.prior_scale_loc.shape, q.loc.shape)
            m, v = self.prior_scale_loc, F.softplus(self.prior_scale_rho)
            inv_var = torch.exp(2 * (v.square() - m))
            nll = _HALF_LOG_2PI + m + 0.5 * (q.loc - self.prior_loc).square() * inv_var
            return nll.sum() + self.hyperprior_kl()
        return self.expected_conditional_kl(q.loc, q.scale, q.scale.log()) + self.hyperprior_kl()

    def normal_penalty(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        out = self.expected_conditional_kl(loc, scale, scale.log()) + self.hyperprior_kl()
        return out if self.scale_factor == 1.0 else out * self.scale_factor

    def softplus_normal_penalty(self, loc: Tensor, rho: Tensor) -> Tensor | None:
        kl = self.expected_conditional_kl(loc, F.softplus(rho), log_softplus(rho))
        out = kl + self.hyperprior_kl()
        return out if self.scale_factor == 1.0 else out * self.scale_factor

    def extra_repr(self) -> str:
        return (
            f"scale_shape={tuple(self.prior_scale_loc.shape)}, "
            f"hyperprior={self.hyperprior_family}, scale_factor={self.scale_factor}"
        )
