"""The base class of the initializer families, :class:`TrainableInitializer`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..random_variables.variable import RandomVariable
from ._util import check_shape as _check_shape
from ._util import fans
from ._util import pname as _pname

__all__ = ["TrainableInitializer"]


class TrainableInitializer(nn.Module):
    """Base class: a recipe for trainable parameters and the distribution they define.

    Subclasses set ``suffixes`` (parameter name suffixes, e.g. ``("loc", "rho")``)
    and implement ``_init_params``, ``distribution``, ``noise`` and ``transform``.

    Args:
        shape: when given, the initializer owns parameters of this shape and
            ``forward()`` returns a random variable; leave ``None`` inside layers.
        device, dtype: factory arguments for the owned parameters.
    """

    suffixes: tuple[str, ...] = ()
    #: True for families whose draws are ``loc + scale * N(0, 1)`` (Flipout and local
    #: reparameterization need this).
    is_normal: bool = False
    #: True for point estimates (no noise at all).
    is_deterministic: bool = False

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.shape = None if shape is None else _check_shape(type(self).__name__, shape)
        if shape is not None:
            self.build(self, "", shape, device=device, dtype=dtype)

    # ---------------------------------------------------------------- building
    def build(
        self,
        owner: nn.Module,
        prefix: str,
        shape: Sequence[int],
        *,
        fan_in: int | None = None,
        fan_out: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Register this family's parameters on ``owner`` as ``{prefix}_{suffix}``."""
        shape = torch.Size(shape)
        f_in, f_out = fans(shape)
        fan_in = f_in if fan_in is None else fan_in
        fan_out = f_out if fan_out is None else fan_out
        params: dict[str, Tensor] = {
            s: nn.Parameter(torch.empty(shape, device=device, dtype=dtype)) for s in self.suffixes
        }
        with torch.no_grad():
            self._init_params(params, fan_in, fan_out)
        for s, p in params.items():
            owner.register_parameter(_pname(prefix, s), p)  # type: ignore[arg-type]

    def params(self, owner: nn.Module, prefix: str) -> dict[str, Tensor]:
        return {s: getattr(owner, _pname(prefix, s)) for s in self.suffixes}

    # ------------------------------------------------------------- interface
    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        raise NotImplementedError

    def distribution(self, owner: nn.Module | None = None, prefix: str = "") -> Distribution:
        """The distribution defined by the current parameters."""
        raise NotImplementedError

    def noise(self, shape: torch.Size, like: Tensor) -> Tensor | None:
        """Standard noise of ``shape`` (``None`` for point estimates)."""
        raise NotImplementedError

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        """A reparameterised draw from the parameters and standard noise."""
        raise NotImplementedError

    def loc_scale(self, owner: nn.Module, prefix: str) -> tuple[Tensor, Tensor]:
        """``(loc, scale)`` of a normal family (draws are ``loc + scale * N(0, 1)``)."""
        raise TypeError(f"{type(self).__name__} is not a normal family")

    def loc_rho(self, owner: nn.Module, prefix: str) -> tuple[Tensor, Tensor]:
        """``(loc, rho)`` of a normal family with ``scale = softplus(rho)``: the raw
        parameters, from which regularizers compute ``log(scale)`` stably."""
        raise TypeError(f"{type(self).__name__} is not a normal family")

    def point(self, owner: nn.Module, prefix: str) -> Tensor:
        """The posterior mean (the location for families without a finite mean)."""
        return self.distribution(owner, prefix).mean

    def forward(self) -> RandomVariable:
        if self.shape is None:
            raise RuntimeError(
                f"{type(self).__name__} was built without `shape`; call it inside a layer "
                "or construct it as e.g. TrainableNormal((3, 4))"
            )
        return RandomVariable(self.distribution(self, ""))

    def _own(self, owner: nn.Module | None) -> nn.Module:
        return self if owner is None else owner
