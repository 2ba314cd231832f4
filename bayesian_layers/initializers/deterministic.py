"""Point estimates: :class:`TrainableDeterministic`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..distributions import Deterministic
from .base import TrainableInitializer

__all__ = ["TrainableDeterministic"]


class TrainableDeterministic(TrainableInitializer):
    """A point estimate: one parameter named ``{prefix}`` itself (``weight``, ``bias``).

    Args:
        shape: see :class:`TrainableInitializer` (standalone, the parameter is ``loc``).
        init: ``"default"`` (uniform on ``±1/sqrt(fan_in)``, as ``nn.Linear``),
            ``"zeros"`` or ``"ones"``.

    Example:
        >>> TrainableDeterministic((2,), init="zeros")().value.tolist()
        [0.0, 0.0]
    """

    suffixes = ("",)
    is_deterministic = True
    _INITS = ("default", "zeros", "ones")

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        *,
        init: str = "default",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(init, str) or init not in self._INITS:
            raise ValueError(
                f"{type(self).__name__} expected `init` in {self._INITS}, got {init!r}"
            )
        self.init = init
        super().__init__(shape, device=device, dtype=dtype)

    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        p = params[""]
        if self.init == "zeros":
            p.zero_()
        elif self.init == "ones":
            p.fill_(1.0)
        else:
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            nn.init.uniform_(p, -bound, bound)

    def params(self, owner: nn.Module, prefix: str) -> dict[str, Tensor]:
        return {"": getattr(owner, prefix or "loc")}

    def build(self, owner, prefix, shape, **kwargs) -> None:  # type: ignore[override]
        super().build(owner, prefix or "loc", shape, **kwargs)

    def distribution(self, owner: nn.Module | None = None, prefix: str = "") -> Distribution:
        return Deterministic(self.params(self._own(owner), prefix)[""])

    def noise(self, shape: torch.Size, like: Tensor) -> None:
        return None

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        return self.params(owner, prefix)[""]

    def point(self, owner: nn.Module, prefix: str) -> Tensor:
        return self.params(owner, prefix)[""]

    def extra_repr(self) -> str:
        return f"init={self.init!r}"
