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

from .distributions import Deterministic
from .initializers import LOG_SOFTPLUS_CUT, check_non_negative, log_softplus
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


def _float_buffer(owner: str, name: str, value: float | Tensor) -> Tensor:
    """A finite floating-point copy of ``value`` (never an alias of the caller's tensor)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(
            f"{owner} expected `{name}` to be a number or tensor, got {type(value).__name__} "
            f"{value!r}"
        )
    t = torch.as_tensor(value).detach().clone()
    t = t if t.is_floating_point() else t.to(torch.get_default_dtype())
    if t.device.type != "meta" and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{owner} expected `{name}` to be finite, got {value!r}")
    return t


def _positive_buffer(owner: str, name: str, value: float | Tensor) -> Tensor:
    t = _float_buffer(owner, name, value)
    if t.device.type != "meta" and not bool((t > 0).all()):
        raise ValueError(f"{owner} expected `{name}` to be finite and > 0, got {value!r}")
    return t


def _clamped_softplus(rho: Tensor) -> tuple[Tensor, Tensor]:
    """``(rho_c, softplus(rho_c))`` with ``rho_c = max(rho, LOG_SOFTPLUS_CUT)``.

    Below the cut ``log softplus(rho) = rho - exp(rho)/2 + ...``, so
    ``log softplus(rho_c) + (rho - rho_c)`` is ``log softplus(rho)`` to within
    ``exp(cut)/2 < 5e-14``, and ``sigmoid(rho_c) / softplus(rho_c)`` its derivative to
    within the same; ``softplus(rho_c)²`` stands for ``softplus(rho)² < exp(2 cut)``.
    Only clamps and smooth functions: no comparisons or ``where`` (slow on CPU).
    """
    rho_c = rho.clamp(min=LOG_SOFTPLUS_CUT)
    return rho_c, F.softplus(rho_c)


class _NormalKLScalarPrior(torch.autograd.Function):
    """``sum KL(N(μ, softplus(ρ)) || N(μ_p, σ_p))`` for a scalar prior, analytic derivatives.

    Forward: ``(‖σ‖² + ‖μ - μ_p‖²) / (2σ_p²) - Σ log σ + n (log σ_p - 1/2)`` with
    ``σ = softplus(ρ)``, ``ρ`` clamped below at
    :data:`~bayesian_layers.initializers.LOG_SOFTPLUS_CUT` and ``log σ`` continued
    linearly (``log σ ≈ ρ``) below it, where ``σ`` may underflow: finite for every
    finite ``ρ``, off by at most ``exp(-30)/2`` per element in ``log σ`` and
    ``exp(-60)/(2σ_p²)`` in ``σ²/(2σ_p²)``. Backward: ``∂/∂μ = (μ - μ_p)/σ_p²``,
    ``∂/∂ρ = sigmoid(ρ) (σ/σ_p² - 1/σ)`` (``→ -1`` as ``ρ → -∞``); the prior is a
    constant. A first backward reuses the forward's ``σ``; with ``create_graph`` the
    backward is rebuilt from differentiable ops (double backward works). ``jvp``
    gives forward mode and ``vmap`` uses the generated rule, so every ``torch.func``
    transform applies.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(loc: Tensor, rho: Tensor, p_loc: Tensor, p_scale: Tensor):  # type: ignore[override]
        centred = (loc - p_loc).reshape(-1)
        rho_c, scale = _clamped_softplus(rho)
        flat_scale = scale.reshape(-1)
        quad = torch.dot(flat_scale, flat_scale) + torch.dot(centred, centred)
        log_scale_sum = scale.log().sum() + (rho - rho_c).sum()
        log_p_scale = torch.log(p_scale)
        kl = 0.5 * quad * torch.exp(-2 * log_p_scale) - log_scale_sum
        return kl + loc.numel() * (log_p_scale - 0.5), scale

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        loc, rho, p_loc, p_scale = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(loc, rho, p_loc, p_scale, output[1])
        ctx.save_for_forward(loc, rho, p_loc, p_scale)

    @staticmethod
    def _partials(
        loc: Tensor, rho: Tensor, p_loc: Tensor, p_scale: Tensor, scale: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        inv_var = 1.0 / (p_scale * p_scale)
        d_loc = (loc - p_loc) * inv_var
        rho_c = rho.clamp(min=LOG_SOFTPLUS_CUT)
        if scale is None:
            scale = F.softplus(rho_c)
        d_rho = torch.sigmoid(rho_c) * (scale * inv_var - 1.0 / scale)
        return d_loc, d_rho

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_scale: Tensor | None = None):  # type: ignore[override]
        loc, rho, p_loc, p_scale, scale = ctx.saved_tensors
        # Under create_graph the saved σ (no graph) would cut the second derivative.
        kept = None if torch.is_grad_enabled() else scale
        d_loc, d_rho = _NormalKLScalarPrior._partials(loc, rho, p_loc, p_scale, kept)
        grad_loc = d_loc * grad if ctx.needs_input_grad[0] else None
        grad_rho = d_rho * grad if ctx.needs_input_grad[1] else None
        return grad_loc, grad_rho, None, None

    @staticmethod
    def jvp(ctx, t_loc, t_rho, t_p_loc, t_p_scale):  # type: ignore[override]
        d_loc, d_rho = _NormalKLScalarPrior._partials(*ctx.saved_tensors)
        out = torch.zeros((), dtype=d_loc.dtype, device=d_loc.device)
        if t_loc is not None:
            out = out + (d_loc * t_loc).sum()
        if t_rho is not None:
            out = out + (d_rho * t_rho).sum()
        return out, None


def softplus_normal_kl_scalar_prior(
    loc: Tensor, rho: Tensor, prior_loc: Tensor, prior_scale: Tensor
) -> Tensor:
    """``sum KL(N(loc, softplus(rho)) || N(prior_loc, prior_scale))`` for 0-d priors.

    ``loc`` and ``rho`` have the same shape. Fused: a few passes over the
    parameters forward and backward instead of autograd's dozen; finite value
    and gradient for every finite ``rho`` (the gradient tends to ``-1`` as
    ``rho → -inf``, where ``-log σ ≈ -rho``).
    """
    return _NormalKLScalarPrior.apply(loc, rho, prior_loc, prior_scale)[0]


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
        self.scale_factor = check_non_negative(type(self).__name__, "scale_factor", scale_factor)

    def penalty(self, rv: RandomVariable) -> Tensor:
        raise NotImplementedError

    def normal_penalty(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        """The scaled penalty of ``N(loc, scale)`` straight from its parameters, or ``None``.

        Layers call this first for normal posteriors: it skips building a
        distribution and a random variable on the training hot path.
        """
        return None

    def softplus_normal_penalty(self, loc: Tensor, rho: Tensor) -> Tensor | None:
        """The scaled penalty of ``N(loc, softplus(rho))`` from the raw parameters, or ``None``.

        Layers call this for normal posteriors; a regularizer that needs
        ``log(scale)`` overrides it to use :func:`~bayesian_layers.initializers.log_softplus`,
        which stays finite where ``softplus(rho)`` underflows. The default defers
        to :meth:`normal_penalty`.
        """
        return self.normal_penalty(loc, F.softplus(rho))

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
        self.register_buffer("prior_loc", _float_buffer(type(self).__name__, "loc", loc))
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
