"""A Gaussian observation model for GP layers: ``y = f(x) + ε`` with learnable noise.

The sparse and random-feature GP layers return the distribution of the latent
function values ``f``; regression adds observation noise. :class:`GaussianLikelihood`
holds that noise and gives the two things training and prediction need: the
variational expectation ``E_q(f)[log N(y | f, σ²)]`` in closed form (the data term of
the sparse-GP ELBO) and the predictive distribution of ``y``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from ... import tracing as _tracing
from ..._checks import check_count, check_name, check_real, inverse_softplus
from ...random_variables.variable import RandomVariable
from ..outputs.distributions import Normal
from .sparse_variational import gaussian_expected_log_likelihood

__all__ = ["GaussianLikelihood"]


class GaussianLikelihood(nn.Module):
    r"""``y = f + ε``, ``ε ~ N(0, σ²)`` independently per output unit, ``σ²`` learnable.

    ``noise_variance = softplus(noise_rho) + min_noise_variance`` has one entry per unit.

    Args:
        units: number of outputs (the last dimension of ``f`` and ``y``).
        noise_variance: initial ``σ²`` (finite, > ``min_noise_variance``).
        min_noise_variance: lower bound on ``σ²`` (finite, >= 0), for stability.
        learn_noise: train ``σ²`` (a parameter) or keep it fixed (a buffer).
        name: name of the random variable :meth:`forward` returns (for the tracers).
        device, dtype: factory arguments.

    Shape:
        - ``f``: ``(*, units)`` random variable (any distribution with a mean and a
          variance; a tensor counts as a point mass).
        - ``y``: ``(*, units)``, the same shape as ``f``.

    Attributes:
        noise_rho: ``(units,)`` raw noise parameter.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from bayesian_layers import layers
        >>> gp, lik = layers.SparseGaussianProcess(1, 8), layers.GaussianLikelihood(1)
        >>> x, y = torch.randn(32, 2), torch.randn(32, 1)
        >>> f = gp(x)
        >>> loss = bl.elbo_loss(-lik.expected_log_likelihood(f, y).sum(-1).mean(), gp, 32)
        >>> y_rv = lik(f)  # the predictive distribution of y
        >>> y_rv.shape, bool((y_rv.distribution.variance > f.distribution.variance).all())
        (torch.Size([32, 1]), True)
    """

    def __init__(
        self,
        units: int = 1,
        *,
        noise_variance: float = 0.1,
        min_noise_variance: float = 1e-6,
        learn_noise: bool = True,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        units = check_count(owner, "units", units)
        floor = check_real(owner, "min_noise_variance", min_noise_variance)
        init = check_real(owner, "noise_variance", noise_variance, lower=floor, strict=True)
        if not isinstance(learn_noise, bool):
            raise TypeError(f"{owner} expected `learn_noise` to be a bool, got {learn_noise!r}")
        self.units = units
        self.min_noise_variance = floor
        self.name = check_name(owner, name)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        rho = inverse_softplus(torch.tensor(init - floor, dtype=torch.float64))
        rho = torch.full((units,), float(rho), **factory)
        if learn_noise:
            self.noise_rho = nn.Parameter(rho)
        else:
            self.register_buffer("noise_rho", rho)

    @property
    def noise_variance(self) -> Tensor:
        """``(units,)`` observation-noise variance ``σ²``."""
        return F.softplus(self.noise_rho) + self.min_noise_variance

    def extra_repr(self) -> str:
        text = f"units={self.units}, min_noise_variance={self.min_noise_variance:g}"
        return text if self.name is None else f"{text}, name={self.name!r}"

    def _moments(self, f: object, what: str) -> tuple[Tensor, Tensor]:
        """Mean and variance ``(*, units)`` of ``f`` (a random variable, distribution or tensor)."""
        owner = type(self).__name__
        if isinstance(f, RandomVariable):
            f = f.distribution
        if isinstance(f, Distribution):
            mean, var = f.mean, f.variance
        elif isinstance(f, Tensor):
            mean, var = f, torch.zeros_like(f)
        else:
            raise TypeError(
                f"{owner}.{what} expected `f` to be a RandomVariable, Distribution or Tensor, "
                f"got {type(f).__name__}"
            )
        if not mean.is_floating_point() or mean.dim() == 0 or mean.shape[-1] != self.units:
            raise ValueError(
                f"{owner}.{what} expected `f` of shape (*, {self.units}) (floating), got "
                f"{mean.dtype} {tuple(mean.shape)}"
            )
        return mean, var

    def expected_log_likelihood(
        self, f: RandomVariable | Distribution | Tensor, y: Tensor
    ) -> Tensor:
        r"""``E_{q(f)}[log N(y | f, σ²)]`` per element, in closed form.

        ``= -½ log(2π σ²) - ((y - μ)² + v) / (2 σ²)`` with ``μ``, ``v`` the mean and
        variance of ``q(f)`` (exact for any ``q`` with those moments). For the ELBO sum it
        over units and average over examples: ``bl.elbo_loss(-ell.sum(-1).mean(), model, N)``.

        Shape:
            f: ``(*, units)``; y: the same shape; returns ``(*, units)``.
        """
        mean, var = self._moments(f, "expected_log_likelihood")
        owner = type(self).__name__
        if not isinstance(y, Tensor) or y.shape != mean.shape:
            raise ValueError(
                f"{owner}.expected_log_likelihood expected `y` of the shape of `f`, "
                f"{tuple(mean.shape)}, got {tuple(getattr(y, 'shape', ()))}"
            )
        noise = self.noise_variance.to(mean.dtype)
        return gaussian_expected_log_likelihood(mean, var, y.to(mean.dtype), noise)

    def forward(self, f: RandomVariable | Distribution | Tensor) -> RandomVariable:
        """The predictive ``y``: ``Normal(μ, √(v + σ²))``; its value is ``f``'s value (sample)
        plus noise. Its ``log_prob`` refuses a target that would broadcast against the batch
        (a ``(B,)`` target for ``(B, 1)`` values), as the stochastic output layers do.

        Shape:
            f: ``(*, units)``; returns a random variable of shape ``(*, units)``.
        """
        mean, var = self._moments(f, "forward")
        noise = self.noise_variance.to(mean.dtype)
        dist = Normal(mean, (var + noise).sqrt(), validate_args=False)
        base = f.value if isinstance(f, RandomVariable) else mean
        value = base + noise.sqrt() * torch.randn_like(mean)
        if _tracing.is_tracing():
            return _tracing.variable(dist, name=self.name, value=value)
        return RandomVariable(dist, value=value, name=self.name)
