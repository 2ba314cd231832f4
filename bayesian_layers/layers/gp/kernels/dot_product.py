r"""The linear (dot-product) covariance function."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._base import Kernel

__all__ = ["LinearKernel"]


class LinearKernel(Kernel):
    r"""Linear (dot-product) kernel ``variance · (x - shift) · (x' - shift)``.

    A Bayesian linear function through ``shift``; add a :class:`ConstantKernel` for
    an offset (scikit-learn's ``DotProduct(sigma_0)`` is
    ``LinearKernel(1.0) + ConstantKernel(sigma_0²)``).

    Args:
        variance: positive scalar, the prior variance of the slope.
        shift: real scalar or ``(D,)`` tensor (trainable, unconstrained).
        device, dtype: where and in which dtype to create the parameters.

    Example:
        >>> k = LinearKernel(variance=2.0, shift=1.0)
        >>> k(torch.tensor([[3.0]]), torch.tensor([[2.0]])).item()  # 2 * 2 * 1
        4.0
    """

    def __init__(
        self,
        variance: float | Tensor = 1.0,
        shift: float | Tensor = 0.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._add_positive("variance", variance, scalar=True, device=device, dtype=dtype)
        shift_t = torch.as_tensor(shift, device=device, dtype=dtype or torch.get_default_dtype())
        if shift_t.dim() > 1:
            raise ValueError(
                f"LinearKernel expected shift scalar or 1-d, got {tuple(shift_t.shape)}"
            )
        self.shift = nn.Parameter(shift_t.clone())

    @property
    def variance(self) -> Tensor:
        """Positive scalar tensor."""
        return self._positive("variance")

    def _shifted(self, x: Tensor) -> Tensor:
        if self.shift.dim() == 1 and self.shift.shape[0] != x.shape[-1]:
            raise ValueError(
                f"LinearKernel has {self.shift.shape[0]} shifts but got inputs with "
                f"D = {x.shape[-1]} (shape {tuple(x.shape)})"
            )
        return x - self.shift

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.variance * (self._shifted(x1) @ self._shifted(x2).mT)

    def _diag(self, x: Tensor) -> Tensor:
        return self.variance * self._shifted(x).pow(2).sum(-1)
