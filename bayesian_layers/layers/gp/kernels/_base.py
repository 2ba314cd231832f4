"""The covariance-function base class :class:`Kernel`, its algebra (:class:`SumKernel`,
:class:`ProductKernel`, and :class:`ConstantKernel` for ``c * k``), and the
softplus-positive hyperparameters every kernel stores."""

from __future__ import annotations

import numbers
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...._checks import inverse_softplus

__all__ = ["Kernel", "SumKernel", "ProductKernel", "ConstantKernel", "constant_diag"]


def constant_diag(value: Tensor, x: Tensor) -> Tensor:
    """``(*, N)`` diagonal of a kernel whose every ``k(x_i, x_i)`` is the scalar ``value``."""
    return value.expand(x.shape[:-1]).to(torch.result_type(x, value))


def _positive_tensor(owner: str, name: str, value: Any, scalar: bool, **factory: Any) -> Tensor:
    if isinstance(value, Tensor):
        tensor = value.detach().to(**{k: v for k, v in factory.items() if v is not None})
    else:
        tensor = torch.as_tensor(value, **factory)
    if not tensor.is_floating_point():
        tensor = tensor.to(factory.get("dtype") or torch.get_default_dtype())
    if tensor.dim() > (0 if scalar else 1):
        expected = "a scalar" if scalar else "a scalar or 1-d"
        raise ValueError(f"{owner} expected {name} to be {expected}, got {tuple(tensor.shape)}")
    if tensor.device.type != "meta" and not bool((torch.isfinite(tensor) & (tensor > 0)).all()):
        raise ValueError(f"{owner} expected {name} > 0 (finite), got {value}")
    return tensor


class Kernel(nn.Module):
    r"""A covariance function ``k(x, x')``: an ``nn.Module`` with trainable hyperparameters.

    Positive hyperparameters ``h`` are stored unconstrained as ``h_rho``
    (``nn.Parameter``) with ``h = softplus(h_rho)`` read through a property, so any
    optimiser keeps them positive. Kernels compose: ``k1 + k2`` is a
    :class:`SumKernel`, ``k1 * k2`` a :class:`ProductKernel`, and a positive number
    ``c`` gives ``c * k`` (a product with a trainable ``ConstantKernel(c)``).

    Shape:
        - ``forward(x1, x2=None)``: ``x1`` ``(*, N, D)``, ``x2`` ``(*, M, D)`` (batch
          dimensions broadcast; ``None`` means ``x1``) -> ``(*, N, M)``.
        - ``diag(x)``: ``(*, N, D)`` -> ``(*, N)``, ``k(x_i, x_i)`` in O(N D).

    Subclasses implement ``_matrix(x1, x2)`` and ``_diag(x)`` on validated inputs.
    """

    def __init__(self) -> None:
        # No arguments: a subclass takes its hyperparameters and calls ``super().__init__()``.
        super().__init__()

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        """Kernel matrix ``(*, N, M)`` between the rows of ``x1`` and of ``x2``."""
        self._check(x1, "x1")
        if x2 is None:
            x2 = x1
        elif x2 is not x1:
            self._check(x2, "x2")
            if x1.shape[-1] != x2.shape[-1]:
                raise ValueError(
                    f"{type(self).__name__} expected x1 (*, N, D) and x2 (*, M, D) with the same "
                    f"D, got {tuple(x1.shape)} and {tuple(x2.shape)}"
                )
        return self._matrix(x1, x2)

    def diag(self, x: Tensor) -> Tensor:
        """Diagonal ``k(x_i, x_i)`` of ``k(x, x)``, shape ``(*, N)``, in O(N D)."""
        self._check(x, "x")
        return self._diag(x)

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        raise NotImplementedError

    def _diag(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------ helpers
    def _check(self, x: Any, arg: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__} expected {arg} to be a Tensor, got {type(x)}")
        if x.dim() < 2 or not x.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} expected a floating {arg} of shape (*, N, D), "
                f"got {x.dtype} of shape {tuple(x.shape)}"
            )

    def _add_positive(self, name: str, value: Any, *, scalar: bool = False, **factory: Any) -> None:
        """Register ``{name}_rho`` holding ``inverse_softplus(value)``; ``value`` must be > 0."""
        tensor = _positive_tensor(type(self).__name__, name, value, scalar, **factory)
        self.register_parameter(f"{name}_rho", nn.Parameter(inverse_softplus(tensor)))

    def _positive(self, name: str) -> Tensor:
        return F.softplus(getattr(self, f"{name}_rho"))

    def _factory(self) -> dict[str, Any]:
        for p in self.parameters():
            return {"device": p.device, "dtype": p.dtype}
        return {}

    def _as_kernel(self, other: Any) -> Kernel | None:
        if isinstance(other, Kernel):
            return other
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return ConstantKernel(float(other), **self._factory())
        return None

    # ------------------------------------------------------------ algebra
    def __add__(self, other: Any) -> Kernel:
        kernel = self._as_kernel(other)
        if kernel is None:
            return NotImplemented
        return SumKernel(self, kernel)

    def __radd__(self, other: Any) -> Kernel:
        if isinstance(other, numbers.Real) and other == 0:  # sum([k1, k2, ...]) starts at 0
            return self
        kernel = self._as_kernel(other)
        if kernel is None:
            return NotImplemented
        return SumKernel(kernel, self)

    def __mul__(self, other: Any) -> Kernel:
        kernel = self._as_kernel(other)
        if kernel is None:
            return NotImplemented
        return ProductKernel(self, kernel)

    def __rmul__(self, other: Any) -> Kernel:
        kernel = self._as_kernel(other)
        if kernel is None:
            return NotImplemented
        return ProductKernel(kernel, self)


class _Combination(Kernel):
    _op = ""
    kernels: nn.ModuleList

    def __init__(self, *kernels: Kernel) -> None:
        super().__init__()
        flat: list[Kernel] = []
        for k in kernels:
            if not isinstance(k, Kernel):
                raise TypeError(f"{type(self).__name__} expected Kernel terms, got {type(k)}")
            flat.extend(k.terms() if isinstance(k, type(self)) else [k])
        if len(flat) < 2:
            raise ValueError(
                f"{type(self).__name__} expected at least two kernels, got {len(flat)}"
            )
        self.kernels = nn.ModuleList(flat)

    def terms(self) -> list[Kernel]:
        """The summands or factors, in order."""
        return [cast(Kernel, k) for k in self.kernels]

    def extra_repr(self) -> str:
        return f"{self._op!r} of {len(self.kernels)} kernels"


class SumKernel(_Combination):
    """``k(x, x') = Σ_i k_i(x, x')``; built by ``k1 + k2``.

    Args:
        *kernels: two or more :class:`Kernel` terms (nested sums are flattened).

    Example:
        >>> from bayesian_layers.layers import ExponentiatedQuadratic, WhiteNoise
        >>> k = ExponentiatedQuadratic() + WhiteNoise(0.1)
        >>> x = torch.randn(5, 2)
        >>> k(x).shape, k.diag(x).shape
        (torch.Size([5, 5]), torch.Size([5]))
    """

    _op = "+"

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        first, *rest = self.terms()
        out = first(x1, x2)
        for k in rest:
            out = out + k(x1, x2)
        return out

    def _diag(self, x: Tensor) -> Tensor:
        first, *rest = self.terms()
        out = first.diag(x)
        for k in rest:
            out = out + k.diag(x)
        return out


class ProductKernel(_Combination):
    """``k(x, x') = Π_i k_i(x, x')`` (elementwise); built by ``k1 * k2`` or ``c * k``.

    Args:
        *kernels: two or more :class:`Kernel` factors (nested products are flattened).

    Example:
        >>> from bayesian_layers.layers import ExponentiatedQuadratic, Periodic
        >>> k = Periodic(period=1.0) * ExponentiatedQuadratic(length_scale=10.0)
        >>> k(torch.zeros(1, 1), torch.ones(1, 1)).item() > 0.99
        True
    """

    _op = "*"

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        first, *rest = self.terms()
        out = first(x1, x2)
        for k in rest:
            out = out * k(x1, x2)
        return out

    def _diag(self, x: Tensor) -> Tensor:
        first, *rest = self.terms()
        out = first.diag(x)
        for k in rest:
            out = out * k.diag(x)
        return out


class ConstantKernel(Kernel):
    r"""Constant kernel ``k(x, x') = variance`` (a random offset); ``c * k`` builds one.

    Args:
        variance: positive scalar; scikit-learn's ``ConstantKernel(constant_value)``.
        device, dtype: where and in which dtype to create the parameters.

    Example:
        >>> from bayesian_layers.layers import Matern12
        >>> (ConstantKernel(2.0) * Matern12())(torch.zeros(1, 1)).item()
        2.0
    """

    def __init__(
        self,
        variance: float | Tensor = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._add_positive("variance", variance, scalar=True, device=device, dtype=dtype)

    @property
    def variance(self) -> Tensor:
        """Positive scalar tensor."""
        return self._positive("variance")

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        var = self.variance
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        return var.to(torch.result_type(x1, var)).expand(*batch, x1.shape[-2], x2.shape[-2])

    def _diag(self, x: Tensor) -> Tensor:
        return constant_diag(self.variance, x)
