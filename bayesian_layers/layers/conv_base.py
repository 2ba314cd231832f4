"""Shared machinery of the Bayesian (transposed) convolutions in :mod:`.conv`.

One base holds parameters, validation and torch's attributes, and declares the
convolution as the op of the estimator template (:mod:`.estimators`); the public
classes in :mod:`.conv` only choose the dimension, whether the convolution is
transposed, and the estimator.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from ..initializers import TrainableInitializer, fans
from ..regularizers import Regularizer
from ._util import check_features as _check_features
from ._util import deprecated_from_torch
from .base import BayesianLayer
from .estimators import Estimator, WeightOp
from .functional import convolution as K

__all__ = ["BayesianConvNd", "BayesianConv", "BayesianConvTranspose", "ConvOp"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def _ntuple(owner: str, name: str, value: object, n: int, minimum: int) -> tuple[int, ...]:
    """``value`` as ``n`` ints ≥ ``minimum`` (an int is repeated, like torch's ``_pair``)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values: tuple[Any, ...] = (value,) * n
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
    else:
        raise TypeError(
            f"{owner} expected `{name}` to be an int or {n} ints, got {type(value).__name__}"
        )
    if len(values) != n or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values
    ):
        raise TypeError(f"{owner} expected `{name}` to be an int or {n} ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{owner} expected `{name}` >= {minimum}, got {value!r}")
    return tuple(int(v) for v in values)  # numpy integers as Python ints, as torch keeps


class ConvOp(WeightOp):
    """A (transposed) convolution with hyperparameters ``spec`` as the template's op; K
    draws as one grouped convolution.

    Shape: ``x`` ``(N, C_in, *spatial)``; weight and bias as the torch module's;
    output ``(N, C_out, *spatial_out)``.
    """

    def __init__(self, spec: K.ConvSpec) -> None:
        self.spec = spec

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return K.conv(x, weight, bias, self.spec)

    def batched(self, x: Tensor, weight: Tensor, bias: Tensor | None, k: int) -> Tensor:
        return K.batched_conv(x, weight, bias, k, self.spec)

    def add_sample_bias(self, y: Tensor, bias: Tensor | None, k: int) -> Tensor:
        return K.add_sample_bias(y, bias, k)


class BayesianConvNd(BayesianLayer):
    """Base of the Bayesian (transposed) convolutions: see :mod:`.conv` for the public classes.

    Subclasses set the class attributes: ``_dims`` (1, 2, 3), ``_transposed``,
    ``estimator`` (:data:`~.estimators.REPARAMETERIZATION`, ``FLIPOUT`` or
    ``LOCAL_REPARAMETERIZATION``) and ``_torch_class`` (the counterpart).
    """

    _dims: ClassVar[int]
    _transposed: ClassVar[bool]
    estimator: ClassVar[Estimator]
    _torch_class: ClassVar[type[nn.Module]]

    def _setup(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        padding: str | int | Sequence[int],
        dilation: int | Sequence[int],
        output_padding: int | Sequence[int],
        groups: int,
        bias: bool,
        padding_mode: str,
        weight_initializer: str | TrainableInitializer,
        bias_initializer: str | TrainableInitializer,
        weight_regularizer: str | Regularizer | None,
        bias_regularizer: str | Regularizer | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        name, n = type(self).__name__, self._dims
        self.in_channels = _check_features(name, "in_channels", in_channels)
        self.out_channels = _check_features(name, "out_channels", out_channels)
        self.groups = _check_features(name, "groups", groups)
        for arg, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if channels % groups:
                raise ValueError(
                    f"{name} expected `{arg}` divisible by groups={groups}, got {channels}"
                )
        self.kernel_size = _ntuple(name, "kernel_size", kernel_size, n, 1)
        self.stride = _ntuple(name, "stride", stride, n, 1)
        self.dilation = _ntuple(name, "dilation", dilation, n, 1)
        self.padding: str | tuple[int, ...]
        if isinstance(padding, str):
            if self._transposed or padding not in ("same", "valid"):
                allowed = "ints" if self._transposed else "ints, 'same' or 'valid'"
                raise ValueError(f"{name} expected `padding` to be {allowed}, got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(
                    f"{name}: padding='same' is not supported for strided convolutions "
                    f"(stride={self.stride})"
                )
            self.padding = padding
        else:
            self.padding = _ntuple(name, "padding", padding, n, 0)
        self.output_padding = _ntuple(name, "output_padding", output_padding, n, 0)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation, strict=True):
            if op >= max(s, d):
                raise ValueError(
                    f"{name} expected `output_padding` smaller than stride or dilation, got "
                    f"output_padding={self.output_padding}, stride={self.stride}, "
                    f"dilation={self.dilation}"
                )
        modes = ("zeros",) if self._transposed else PADDING_MODES
        if padding_mode not in modes:
            raise ValueError(f"{name} expected `padding_mode` in {modes}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.transposed = self._transposed
        self._reversed_padding_repeated_twice = self._reversed_padding()

        if self._transposed:
            shape = (in_channels, out_channels // groups, *self.kernel_size)
        else:
            shape = (out_channels, in_channels // groups, *self.kernel_size)
        fan_in, fan_out = fans(shape)
        self.add_param(
            "weight", shape, weight_initializer, weight_regularizer, device=device, dtype=dtype
        )
        self.use_bias = bool(bias)
        if self.use_bias:
            self.add_param(
                "bias", (out_channels,), bias_initializer, bias_regularizer,
                fan_in=fan_in, fan_out=fan_out, device=device, dtype=dtype,
            )  # fmt: skip
        else:
            self.register_parameter("bias", None)  # as torch: `layer.bias is None`
        self._spec = K.ConvSpec(
            self.stride, self.padding, self.dilation, self.groups, self.padding_mode,
            tuple(self._reversed_padding_repeated_twice), self._transposed, self.output_padding,
        )  # fmt: skip
        self.estimator.check_posteriors(self)

    def _reversed_padding(self) -> list[int] | tuple[int, ...]:
        """``F.pad``'s argument for non-zero padding modes, exactly as torch computes it."""
        if not isinstance(self.padding, str):
            return tuple(p for p in reversed(self.padding) for _ in range(2))
        out = [0, 0] * self._dims
        if self.padding == "same":
            for i, (d, k) in enumerate(zip(self.dilation, self.kernel_size, strict=True)):
                total = d * (k - 1)
                j = self._dims - 1 - i
                out[2 * j], out[2 * j + 1] = total // 2, total - total // 2
        return out

    # -------------------------------------------------------------- torch API
    @classmethod
    def from_torch(cls, module: nn.Module, **kwargs: Any) -> BayesianConvNd:
        """A Bayesian layer with ``module``'s hyperparameters, posterior means at its weights.

        ``module`` is the torch counterpart (``nn.Conv2d`` for ``Conv2dFlipout``, ...);
        keyword arguments go to the constructor (initializers, regularizers).
        Supports normal and deterministic parameter families.

        Example:
            >>> from torch import nn
            >>> from bayesian_layers.layers import Conv2dFlipout
            >>> Conv2dFlipout.from_torch(nn.Conv2d(3, 8, 3, padding=1)).extra_repr()
            '3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)'
        """
        torch_cls = cls._torch_class
        if not isinstance(module, torch_cls):
            raise TypeError(
                f"{cls.__name__}.from_torch expected nn.{torch_cls.__name__}, "
                f"got {type(module).__name__}"
            )
        weight, bias = module.weight, module.bias
        if isinstance(weight, nn.parameter.UninitializedParameter):
            raise ValueError(f"{cls.__name__}.from_torch got a lazy module not yet initialised")
        args: dict[str, Any] = {
            "stride": module.stride,
            "padding": module.padding,
            "dilation": module.dilation,
            "groups": module.groups,
            "bias": bias is not None,
            "padding_mode": module.padding_mode,
            "device": weight.device,
            "dtype": weight.dtype,
        }
        if cls._transposed:
            args["output_padding"] = module.output_padding
        factory: Any = cls  # the public subclasses take torch's arguments
        layer = factory(
            module.in_channels, module.out_channels, module.kernel_size, **args, **kwargs
        )
        layer.load_point_estimates({"weight": cast(Tensor, weight), "bias": bias})
        return layer

    from_module = deprecated_from_torch("from_module")

    def extra_repr(self) -> str:
        """As ``nn.Conv*``'s (``in, out, kernel_size=..., stride=...`` and non-defaults)."""
        n = len(self.kernel_size)
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        s += f", stride={self.stride}"
        if self.padding != (0,) * n:
            s += f", padding={self.padding}"
        if self.dilation != (1,) * n:
            s += f", dilation={self.dilation}"
        if self.output_padding != (0,) * n:
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if not self.use_bias:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s

    # ---------------------------------------------------------------- forward
    def _check_input(self, x: object) -> tuple[Tensor, bool]:
        """``x`` batched (``(N, C, *S)``), and whether it came unbatched (``(C, *S)``)."""
        name, n, c = type(self).__name__, self._dims, self.in_channels
        x = self.check_input(x)  # a Tensor of the parameters' (or autocast's) dtype
        if x.dim() not in (n + 1, n + 2) or x.shape[-n - 1] != c:
            spatial = _SPATIAL[n]
            raise ValueError(
                f"{name} expected input of shape (N, {c}, {spatial}) or ({c}, {spatial}) "
                f"(in_channels={c}), got {tuple(x.shape)}"
            )
        unbatched = x.dim() == n + 1
        if unbatched and self.num_function_samples > 1:
            raise ValueError(
                f"{name} is drawing {self.num_function_samples} function samples at once and "
                f"expected a batched input (K * B, {c}, {_SPATIAL[n]}), got {tuple(x.shape)}"
            )
        return (x.unsqueeze(0) if unbatched else x), unbatched

    def _output_padding(self, x: Tensor, unbatched: bool, output_size: Sequence[int]) -> tuple:
        """Output padding that gives a transposed convolution ``output_size`` (as torch)."""
        name, n = type(self).__name__, self._dims
        size = [int(s) for s in output_size]
        lead = 1 if unbatched else 2
        if len(size) == lead + n:
            size = size[lead:]
        if len(size) != n:
            raise ValueError(
                f"{name} expected `output_size` of {n} or {lead + n} elements, got {output_size}"
            )
        padding, out = cast(tuple[int, ...], self.padding), []  # transposed: ints only
        for i in range(n):
            low = (
                (x.shape[2 + i] - 1) * self.stride[i]
                - 2 * padding[i]
                + self.dilation[i] * (self.kernel_size[i] - 1)
                + 1
            )
            if not low <= size[i] < low + self.stride[i]:
                raise ValueError(
                    f"{name} got `output_size` {size}; valid sizes for an input of spatial "
                    f"shape {tuple(x.shape[2:])} are from {low} to {low + self.stride[i] - 1} "
                    f"in dimension {i}"
                )
            out.append(size[i] - low)
        return tuple(out)

    def _run(self, x: object, output_size: Sequence[int] | None = None) -> Tensor:
        x, unbatched = self._check_input(x)
        spec = self._spec
        if output_size is not None:
            spec = spec._replace(output_padding=self._output_padding(x, unbatched, output_size))
        bias = "bias" if self.use_bias else None
        y = self.estimator.project(self, x, ConvOp(spec), "weight", bias)
        return y.squeeze(0) if unbatched else y


_Size = int | Sequence[int]


class BayesianConv(BayesianConvNd):
    """The constructor and call of ``nn.Conv{1,2,3}d``."""

    _transposed = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _Size,
        stride: _Size = 1,
        padding: str | _Size = 0,
        dilation: _Size = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        weight_initializer: str | TrainableInitializer = "trainable_normal",
        bias_initializer: str | TrainableInitializer = "zeros",
        weight_regularizer: str | Regularizer | None = "normal_kl_divergence",
        bias_regularizer: str | Regularizer | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._setup(
            in_channels, out_channels, kernel_size, stride, padding, dilation, 0, groups, bias,
            padding_mode, weight_initializer, bias_initializer, weight_regularizer,
            bias_regularizer, device, dtype,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x)


class BayesianConvTranspose(BayesianConvNd):
    """The constructor and call (``output_size=``) of ``nn.ConvTranspose{1,2,3}d``."""

    _transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _Size,
        stride: _Size = 1,
        padding: _Size = 0,
        output_padding: _Size = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: _Size = 1,
        padding_mode: str = "zeros",
        *,
        weight_initializer: str | TrainableInitializer = "trainable_normal",
        bias_initializer: str | TrainableInitializer = "zeros",
        weight_regularizer: str | Regularizer | None = "normal_kl_divergence",
        bias_regularizer: str | Regularizer | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._setup(
            in_channels, out_channels, kernel_size, stride, padding, dilation, output_padding,
            groups, bias, padding_mode, weight_initializer, bias_initializer, weight_regularizer,
            bias_regularizer, device, dtype,
        )  # fmt: skip

    def forward(self, x: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        return self._run(x, output_size)
