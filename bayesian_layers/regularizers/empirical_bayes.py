"""A normal prior whose variance is its type-II maximum-likelihood value, in closed form.

:class:`EmpiricalBayesNormalKLDivergence` is ``KL(q || N(loc, s²))`` with ``s²`` set, at
every evaluation, to the value that minimises that KL: for a mean-field normal posterior
``q = N(μ, σ²)`` over ``n`` elements that share ``s``,

.. math:: s^2 = \\frac1n \\sum_i \\left[(\\mu_i - \\text{loc})^2 + \\sigma_i^2\\right],
    \\qquad \\mathrm{KL} = \\frac n2 \\log s^2 - \\sum_i \\log \\sigma_i \\;\\ge 0.

It is the empirical-Bayes prior of one layer (MacKay's evidence framework for a
Gaussian prior against a mean-field posterior): the prior follows the scale the
weights need instead of a fixed ``N(0, 1)``, which for a layer with a few hundred
inputs is tens of times wider than its weights, so the fixed prior's KL drowns the
likelihood on small data. Because ``s²`` is the minimiser, the gradient of the KL
with respect to ``μ`` and ``σ`` equals that of the fixed-prior KL at ``s`` (the
envelope theorem): training with it is training with the best prior of each step.
:class:`~bayesian_layers.regularizers.LearnedScaleNormalKLDivergence` reaches the same
optimum by gradient descent on a prior-scale parameter.

For unsharded weights: under FSDP2 or tensor parallelism a local shard's mean is not
the weight's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Normal

from ..distributions import Deterministic
from ..random_variables.variable import RandomVariable
from .base import NormalClosedForm, _float_buffer

__all__ = ["EmpiricalBayesNormalKLDivergence"]


class EmpiricalBayesNormalKLDivergence(NormalClosedForm):
    """``KL(q || N(loc, s²))`` with ``s² = mean((μ - loc)² + σ²)``, one ``s`` per weight tensor.

    The closed-form type-II maximum-likelihood prior variance (module docstring):
    ``KL = n/2 · log s² - Σ log σ``, which is ``>= 0`` (Jensen) and zero only when every
    ``μ = loc`` and every ``σ`` is equal. A point estimate (``Deterministic``) gets the
    negative log density of its values under ``N(loc, mean((w - loc)²))``.

    Select it with ``weight_regularizer="empirical_bayes_normal_kl_divergence"``, or
    ``NormalKLDivergence(scale="empirical_bayes")``.

    Args:
        loc: prior mean, a fixed buffer (scalar or broadcastable tensor).
        scale_factor: multiplies the result.

    Attributes:
        prior_scale: buffer ``()``: ``s`` of the most recent evaluation (``nan`` before
            the first); read it to see the prior each layer chose.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> reg = EmpiricalBayesNormalKLDivergence()
        >>> layer = bl.layers.LinearReparameterization(64, 10, weight_regularizer=reg)
        >>> kl = sum(bl.losses(layer))
        >>> bool(kl >= 0), round(float(reg.prior_scale) * 8, 1)  # ≈ 1/sqrt(64) at init
        (True, 0.6)
    """

    prior_loc: Tensor
    prior_scale: Tensor

    def __init__(self, loc: float | Tensor = 0.0, scale_factor: float = 1.0) -> None:
        super().__init__(scale_factor)
        self.register_buffer("prior_loc", _float_buffer(type(self).__name__, "loc", loc))
        self.register_buffer("prior_scale", torch.tensor(math.nan))

    def prior(self) -> Normal:
        """``N(loc, s²)`` with the ``s`` of the most recent evaluation."""
        return Normal(self.prior_loc, self.prior_scale, validate_args=False)

    def penalty(self, rv: RandomVariable) -> Tensor:
        q = rv.distribution
        if isinstance(q, Deterministic):
            d2 = (q.loc - self.prior_loc).square()
            var = self._record(d2.mean())
            n = d2.numel()
            return 0.5 * n * (torch.log(2 * math.pi * var) + 1)
        if type(q) is Normal:
            return self._kl(q.loc, q.scale, q.scale.log())
        raise TypeError(
            f"{type(self).__name__} expected a Normal (or Deterministic) weight distribution, "
            f"got {type(q).__name__}"
        )

    def _kl(self, loc: Tensor, scale: Tensor, log_scale: Tensor) -> Tensor:
        loc, scale = torch.broadcast_tensors(loc, scale)
        second_moment = (loc - self.prior_loc).square() + scale.square()
        var = self._record(second_moment.mean())
        n = second_moment.numel()
        return 0.5 * n * var.log() - log_scale.expand_as(loc).sum()

    def _record(self, var: Tensor) -> Tensor:
        if not torch.compiler.is_compiling() and self.prior_scale.device.type != "meta":
            with torch.no_grad():
                self.prior_scale.copy_(var.detach().sqrt())
        return var

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}"
