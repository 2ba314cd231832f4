"""Mean-field normal families: :class:`TrainableNormal` and its He and Glorot starts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal

from .._checks import inverse_softplus
from ._util import TRUNC2_STD as _TRUNC2_STD
from ._util import check_positive, softplus_scale
from .base import TrainableInitializer

__all__ = ["TrainableNormal", "TrainableHeNormal", "TrainableGlorotNormal"]


class TrainableNormal(TrainableInitializer):
    """Mean-field normal ``N(loc, softplus(rho))``: the default weight posterior.

    Args:
        shape: see :class:`TrainableInitializer`.
        loc_std: ``loc`` starts as a truncated normal (cut at ±2 of its scale,
            widened so its standard deviation is ``loc_std``); ``None`` (default)
            starts it like ``nn.Linear``'s weight, uniform on ``±1/sqrt(fan_in)``.
        scale_init: the initial standard deviation (``rho = softplus⁻¹(scale_init)``).

    Parameters: ``{prefix}_loc`` and ``{prefix}_rho`` (``scale = softplus(rho)``).

    Example:
        >>> q = TrainableNormal((2, 3), scale_init=0.1)
        >>> rv = q()
        >>> rv.shape, round(rv.stddev.mean().item(), 3)
        (torch.Size([2, 3]), 0.1)
    """

    suffixes = ("loc", "rho")
    is_normal = True

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        *,
        loc_std: float | None = None,
        scale_init: float = 1e-2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        if loc_std is not None:
            check_positive(name, "loc_std", loc_std)
        check_positive(name, "scale_init", scale_init)
        self.loc_std = loc_std
        self.scale_init = scale_init
        super().__init__(shape, device=device, dtype=dtype)

    def _loc_std(self, fan_in: int, fan_out: int) -> float | None:
        return self.loc_std

    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        std = self._loc_std(fan_in, fan_out)
        if std is None:
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            nn.init.uniform_(params["loc"], -bound, bound)
        else:
            # A normal truncated at ±2 s has std 0.8796 s: widen s so the std is `std`.
            s = std / _TRUNC2_STD
            nn.init.trunc_normal_(params["loc"], 0.0, s, -2 * s, 2 * s)
        params["rho"].fill_(inverse_softplus(self.scale_init))

    def loc_scale(self, owner: nn.Module, prefix: str) -> tuple[Tensor, Tensor]:
        p = self.params(owner, prefix)
        return p["loc"], softplus_scale(owner, prefix, p["rho"])

    def loc_rho(self, owner: nn.Module, prefix: str) -> tuple[Tensor, Tensor]:
        p = self.params(owner, prefix)
        return p["loc"], p["rho"]

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
        return f"loc_std={self.loc_std}, scale_init={self.scale_init}"


class TrainableHeNormal(TrainableNormal):
    """:class:`TrainableNormal` whose ``loc`` starts He-normal: std ``sqrt(2 / fan_in)``.

    Example:
        >>> TrainableHeNormal((4, 8))().shape
        torch.Size([4, 8])
    """

    def _loc_std(self, fan_in: int, fan_out: int) -> float | None:
        return math.sqrt(2.0 / max(fan_in, 1))


class TrainableGlorotNormal(TrainableNormal):
    """:class:`TrainableNormal` with a Glorot-normal ``loc``: std ``sqrt(2 / (fan_in + fan_out))``.

    Example:
        >>> TrainableGlorotNormal((4, 8))().shape
        torch.Size([4, 8])
    """

    def _loc_std(self, fan_in: int, fan_out: int) -> float | None:
        return math.sqrt(2.0 / max(fan_in + fan_out, 1))
