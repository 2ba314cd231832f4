"""Prior mean functions for the Gaussian-process layers.

A mean function maps inputs ``(*, N, D)`` to ``(*, N, units)`` or to a
broadcastable ``(*, N, 1)``. Any callable with that signature works as a
``mean_fn``; these are the common ones, as ``nn.Module``s.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ZeroMean", "ConstantMean", "LinearMean"]


def _check(owner: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner} expected a Tensor input, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{owner} expected input of shape (*, N, D), got {tuple(x.shape)}")
    return x


class ZeroMean(nn.Module):
    """The zero mean ``m(x) = 0``.

    Shape:
        ``(*, N, D)`` -> ``(*, N, 1)`` (broadcasts against any number of units).

    Example:
        >>> ZeroMean()(torch.randn(4, 3)).shape
        torch.Size([4, 1])
    """

    def __init__(self) -> None:
        # No arguments and no parameters; explicit so its signature is ``ZeroMean()``.
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        x = _check("ZeroMean", x)
        return x.new_zeros(x.shape[:-1] + (1,))


class ConstantMean(nn.Module):
    """A constant mean ``m(x) = value`` (one per unit if ``value`` is 1-d).

    Args:
        value: scalar, or a ``(units,)`` tensor of per-unit constants.
        trainable: learn the constant (an ``nn.Parameter``) or keep it fixed (a buffer).
        device, dtype: where and in which dtype to create it.

    Shape:
        ``(*, N, D)`` -> ``(*, N, 1)`` for a scalar value, ``(*, N, units)`` otherwise.

    Example:
        >>> ConstantMean(2.0)(torch.randn(3, 5)).flatten().tolist()
        [2.0, 2.0, 2.0]
    """

    def __init__(
        self,
        value: float | Tensor = 0.0,
        trainable: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        tensor = torch.as_tensor(value, device=device, dtype=dtype or torch.get_default_dtype())
        if tensor.dim() > 1:
            raise ValueError(
                f"ConstantMean expected a scalar or 1-d value, got {tuple(tensor.shape)}"
            )
        if tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"ConstantMean expected `value` to be finite, got {value!r}")
        tensor = tensor.detach().clone()
        if trainable:
            self.value = nn.Parameter(tensor)
        else:
            self.register_buffer("value", tensor)

    def forward(self, x: Tensor) -> Tensor:
        x = _check("ConstantMean", x)
        value = self.value.reshape(-1)  # (1,) or (units,)
        return value.expand(x.shape[:-1] + value.shape)


class LinearMean(nn.Module):
    """A linear mean ``m(x) = x Wᵀ + b``, e.g. the identity mean of deep-GP inner layers.

    Args:
        in_features: input dimension D.
        out_features: number of units.
        bias: learn an additive bias ``b`` (initialised at zero).
        init: ``"zeros"`` (default) or ``"identity"``: ``W`` the ``out × in``
            identity (for ``in != out`` the first ``min(in, out)`` coordinates pass
            through, the rest are zero).
        trainable: learn ``W`` and ``b``, or keep them fixed (buffers).
        device, dtype: where and in which dtype to create them.

    Shape:
        ``(*, N, in_features)`` -> ``(*, N, out_features)``.

    Attributes:
        weight: ``(out_features, in_features)``.
        bias: ``(out_features,)`` or ``None``.

    Example:
        >>> m = LinearMean(3, 3, init="identity")
        >>> x = torch.randn(5, 3)
        >>> torch.equal(m(x), x)
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        init: str = "zeros",
        trainable: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LinearMean expected a positive int {name}, got {value!r}")
        if init not in ("zeros", "identity"):
            raise ValueError(f"LinearMean expected init 'zeros' or 'identity', got {init!r}")
        self.in_features = in_features
        self.out_features = out_features
        dtype = dtype or torch.get_default_dtype()
        if init == "identity":
            weight = torch.eye(out_features, in_features, device=device, dtype=dtype)
        else:
            weight = torch.zeros(out_features, in_features, device=device, dtype=dtype)
        b = torch.zeros(out_features, device=device, dtype=dtype) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(b) if b is not None else None
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", b)

    def forward(self, x: Tensor) -> Tensor:
        x = _check("LinearMean", x)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"LinearMean expected input of shape (*, N, {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


_RENAMED = {"Zeros": "ZeroMean", "Constant": "ConstantMean"}


def __getattr__(name: str) -> object:
    # the mean functions' names before they said "Mean" (old code and pickles)
    if name in _RENAMED:
        import warnings

        warnings.warn(
            f"{__name__}.{name} is deprecated; use {_RENAMED[name]}",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
