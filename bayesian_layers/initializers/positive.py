"""Families for positive weights: :class:`TrainableLogNormal`, :class:`TrainableHalfCauchy`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    AffineTransform,
    Distribution,
    HalfCauchy,
    LogNormal,
    TransformedDistribution,
)

from .._checks import inverse_softplus
from ._util import check_finite, check_positive
from .base import TrainableInitializer

__all__ = ["TrainableLogNormal", "TrainableHalfCauchy"]


class TrainableLogNormal(TrainableInitializer):
    """Log-normal ``exp(N(loc, softplus(rho)))`` for positive weights (e.g. scales).

    Args:
        shape: see :class:`TrainableInitializer`.
        loc_init: initial ``loc`` (the log of the median); ``None`` starts at
            ``log(1/sqrt(fan_in))`` so draws have the magnitude of a default init.
        scale_init: initial standard deviation of the log.

    Example:
        >>> bool((TrainableLogNormal((3,))().value > 0).all())
        True
    """

    suffixes = ("loc", "rho")

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        *,
        loc_init: float | None = None,
        scale_init: float = 1e-2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_positive(type(self).__name__, "scale_init", scale_init)
        if loc_init is not None:
            check_finite(type(self).__name__, "loc_init", loc_init)
        self.loc_init = loc_init
        self.scale_init = scale_init
        super().__init__(shape, device=device, dtype=dtype)

    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        loc = -0.5 * math.log(max(fan_in, 1)) if self.loc_init is None else self.loc_init
        nn.init.trunc_normal_(params["loc"], loc, 0.1, loc - 0.2, loc + 0.2)
        params["rho"].fill_(inverse_softplus(self.scale_init))

    def distribution(self, owner: nn.Module | None = None, prefix: str = "") -> Distribution:
        p = self.params(self._own(owner), prefix)
        return LogNormal(p["loc"], F.softplus(p["rho"]), validate_args=False)

    def noise(self, shape: torch.Size, like: Tensor) -> Tensor:
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        p = self.params(owner, prefix)
        return torch.exp(torch.addcmul(p["loc"], F.softplus(p["rho"]), noise))  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return f"loc_init={self.loc_init}, scale_init={self.scale_init}"


class TrainableHalfCauchy(TrainableInitializer):
    """Half-Cauchy shifted to ``loc`` with scale ``softplus(rho)``: support ``[loc, inf)``.

    Its mean is infinite; the posterior-mean mode uses ``loc`` (the mode).

    Args:
        shape: see :class:`TrainableInitializer`.
        loc_init: initial location.
        scale_init: initial scale.

    Example:
        >>> q = TrainableHalfCauchy((3,), loc_init=1.0)
        >>> bool((q().value >= 1.0).all())
        True
    """

    suffixes = ("loc", "rho")

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        *,
        loc_init: float = 0.0,
        scale_init: float = 1e-2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_positive(type(self).__name__, "scale_init", scale_init)
        check_finite(type(self).__name__, "loc_init", loc_init)
        self.loc_init = loc_init
        self.scale_init = scale_init
        super().__init__(shape, device=device, dtype=dtype)

    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        params["loc"].fill_(self.loc_init)
        params["rho"].fill_(inverse_softplus(self.scale_init))

    def distribution(self, owner: nn.Module | None = None, prefix: str = "") -> Distribution:
        p = self.params(self._own(owner), prefix)
        base = HalfCauchy(F.softplus(p["rho"]), validate_args=False)
        return TransformedDistribution(base, [AffineTransform(p["loc"], 1.0)], validate_args=False)

    def noise(self, shape: torch.Size, like: Tensor) -> Tensor:
        # |Cauchy(0, 1)| = tan(pi/2 * U), U ~ Uniform(0, 1)
        u = torch.rand(shape, dtype=like.dtype, device=like.device)
        return torch.tan(0.5 * math.pi * u)

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        p = self.params(owner, prefix)
        return torch.addcmul(p["loc"], F.softplus(p["rho"]), noise)  # type: ignore[arg-type]

    def point(self, owner: nn.Module, prefix: str) -> Tensor:
        return self.params(owner, prefix)["loc"]

    def extra_repr(self) -> str:
        return f"loc_init={self.loc_init}, scale_init={self.scale_init}"
