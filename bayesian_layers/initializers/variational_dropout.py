"""The weight posterior of sparse variational dropout: :class:`VariationalDropoutNormal`.

Molchanov, Ashukha & Vetrov (2017), "Variational Dropout Sparsifies Deep Neural
Networks": a mean-field normal ``q(w) = N(θ, σ²)`` whose log-variance is the trainable
parameter (their *additive* reparameterisation), so the dropout rate of each weight,
``α = σ² / θ²``, is free and unbounded: ``log α = log σ² - log θ²``. Kingma, Salimans &
Welling (2015) wrote the same posterior as multiplicative noise, ``w = θ (1 + √α ε)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal

from ._util import TRUNC2_STD, check_finite, check_positive
from .base import TrainableInitializer

__all__ = ["VariationalDropoutNormal"]


class VariationalDropoutNormal(TrainableInitializer):
    """Mean-field normal ``N(θ, σ²)`` parameterised by ``θ`` and ``log σ²``.

    The dropout rate of each weight is ``α = σ² / θ²`` (Gaussian dropout with
    multiplicative noise ``N(1, α)``); :meth:`log_alpha` gives
    ``log α = log σ² - log θ²``. A normal family (``is_normal``): the Flipout and local
    reparameterization estimators accept it, and the closed-form KL regularizers read
    its ``(loc, scale)`` with ``scale = exp(log σ² / 2)``.

    Args:
        shape: see :class:`TrainableInitializer`.
        loc_std: ``θ`` starts as a normal truncated at ±2 of its scale with standard
            deviation ``loc_std``; ``None`` (default) starts it like ``nn.Linear``'s
            weight, uniform on ``±1/sqrt(fan_in)``.
        log_sigma2_init: the initial ``log σ²`` of every weight (``-10`` as Molchanov
            et al.: the posterior starts almost a point mass, ``log α ≈ -10 - log θ²``).
        device, dtype: factory arguments for the owned parameters.

    Parameters: ``{prefix}_loc`` (``θ``) and ``{prefix}_log_sigma2`` (``log σ²``).

    Example:
        >>> q = VariationalDropoutNormal((2, 3), log_sigma2_init=-4.0)
        >>> rv = q()
        >>> rv.shape, round(rv.distribution.variance.mean().log().item(), 3)
        (torch.Size([2, 3]), -4.0)
    """

    suffixes = ("loc", "log_sigma2")
    is_normal = True

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        *,
        loc_std: float | None = None,
        log_sigma2_init: float = -10.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        if loc_std is not None:
            check_positive(name, "loc_std", loc_std)
        self.loc_std = loc_std
        self.log_sigma2_init = check_finite(name, "log_sigma2_init", log_sigma2_init)
        super().__init__(shape, device=device, dtype=dtype)

    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        if self.loc_std is None:
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            nn.init.uniform_(params["loc"], -bound, bound)
        else:
            s = self.loc_std / TRUNC2_STD  # widened: N(0, 1) cut at ±2 has std 0.88
            nn.init.trunc_normal_(params["loc"], 0.0, s, -2 * s, 2 * s)
        params["log_sigma2"].fill_(self.log_sigma2_init)

    def loc_scale(self, owner: nn.Module, prefix: str) -> tuple[Tensor, Tensor]:
        p = self.params(owner, prefix)
        return p["loc"], torch.exp(0.5 * p["log_sigma2"])

    def log_alpha(self, owner: nn.Module | None = None, prefix: str = "") -> Tensor:
        """``log α = log σ² - log θ²`` per weight (``+inf`` where ``θ = 0``).

        Shape: the parameter's shape.
        """
        p = self.params(self._own(owner), prefix)
        return p["log_sigma2"] - torch.log(p["loc"].square())

    def distribution(self, owner: nn.Module | None = None, prefix: str = "") -> Distribution:
        loc, scale = self.loc_scale(self._own(owner), prefix)
        return Normal(loc, scale, validate_args=False)

    def noise(self, shape: torch.Size, like: Tensor) -> Tensor:
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        loc, scale = self.loc_scale(owner, prefix)
        return torch.addcmul(loc, scale, noise)  # type: ignore[arg-type]

    def point(self, owner: nn.Module, prefix: str) -> Tensor:
        return self.params(owner, prefix)["loc"]

    def extra_repr(self) -> str:
        return f"loc_std={self.loc_std}, log_sigma2_init={self.log_sigma2_init}"
