"""Pure functions for the convolution estimators: all noise is passed in.

These hold the math of each estimator so that ``gradcheck`` can test it; the
modules in :mod:`bayesian_layers.layers.conv` hold parameters and draw noise.
A convolution's hyperparameters travel as one :class:`ConvSpec`.

A convolution is linear in its weight, and each weight element meets at most one
input element per output element, so under ``W ~ N(μ, σ²)`` elementwise
``conv(x, W) ~ N(conv(x, μ), conv(x², σ²))``: the same algebra as the dense
kernels in :mod:`bayesian_layers.layers.functional.linear`, with ``conv`` in place
of ``F.linear`` (transposed convolutions alike). Noise and signs are cast to the
convolution's output dtype, so under autocast the result has torch's dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ConvSpec",
    "conv",
    "output_shape",
    "reparameterization_conv",
    "flipout_conv",
    "local_reparameterization_conv",
    "batched_conv",
    "add_sample_bias",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class ConvSpec(NamedTuple):
    """Hyperparameters of a (transposed) convolution, as the torch modules hold them.

    Attributes:
        stride, dilation: one int per spatial dimension.
        padding: one int per spatial dimension, or ``"same"``/``"valid"``.
        groups: blocked connections from input to output channels.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        reversed_padding: the ``F.pad`` argument for non-zero padding modes
            (``nn.Conv*._reversed_padding_repeated_twice``).
        transposed: a transposed convolution (``F.conv_transpose*``).
        output_padding: extra size on one side of a transposed convolution's output.
    """

    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1
    padding_mode: str = "zeros"
    reversed_padding: tuple[int, ...] = ()
    transposed: bool = False
    output_padding: tuple[int, ...] = ()


def conv(x: Tensor, weight: Tensor, bias: Tensor | None, spec: ConvSpec) -> Tensor:
    """The convolution torch's module with hyperparameters ``spec`` computes.

    Shape:
        x: ``(N, C_in, *spatial)`` (or unbatched ``(C_in, *spatial)``); weight
        ``(C_out, C_in / groups, *kernel)``, transposed ``(C_in, C_out / groups, *kernel)``;
        bias ``(C_out,)``; output ``(N, C_out, *spatial_out)``.
    """
    dims = len(spec.stride)
    padding: Any = spec.padding
    if spec.transposed:
        return _CONV_TRANSPOSE[dims](
            x, weight, bias, spec.stride, padding, spec.output_padding, spec.groups,
            spec.dilation,
        )  # fmt: skip
    if spec.padding_mode != "zeros":
        x = F.pad(x, spec.reversed_padding, mode=spec.padding_mode)
        padding = 0
    return _CONV[dims](x, weight, bias, spec.stride, padding, spec.dilation, spec.groups)


def output_shape(
    x_shape: torch.Size, out_channels: int, kernel_size: tuple[int, ...], spec: ConvSpec
) -> torch.Size:
    """Shape of ``conv(x, weight, bias, spec)`` for a batched ``x`` of shape ``x_shape``."""
    dims = len(spec.stride)
    padding = (0,) * dims if isinstance(spec.padding, str) else spec.padding
    spatial = []
    for i, (size, k, s, d, p) in enumerate(
        zip(x_shape[2:], kernel_size, spec.stride, spec.dilation, padding, strict=True)
    ):
        if spec.transposed:
            spatial.append((size - 1) * s - 2 * p + d * (k - 1) + spec.output_padding[i] + 1)
        elif spec.padding == "same":
            spatial.append(size)
        else:
            spatial.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
    return torch.Size((x_shape[0], out_channels, *spatial))


def reparameterization_conv(
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    weight_noise: Tensor,
    bias: Tensor | None,
    spec: ConvSpec,
) -> Tensor:
    """``conv(x, W) + b`` with one whole weight draw ``W = loc + scale * noise``.

    Shape:
        x: ``(N, C_in, *spatial)``; weight_*: the weight's shape; bias ``(C_out,)``.
    """
    return conv(x, torch.addcmul(weight_loc, weight_scale, weight_noise), bias, spec)


def flipout_conv(
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    weight_noise: Tensor,
    sign_in: Tensor,
    sign_out: Tensor,
    bias: Tensor | None,
    spec: ConvSpec,
) -> Tensor:
    """Flipout (Wen et al. 2018): ``conv(x, μ) + b + conv(x ∘ s_in, σ ∘ ε) ∘ s_out``.

    The signs ``s_in`` ∈ {±1} have the input's shape and ``s_out`` the output's:
    independent per example, channel and position. Every output element is
    ``N(conv(x, μ) + b, conv(x², σ²))`` as under a whole weight draw, while two
    examples (and two positions of one example) see pseudo-independent weights.

    Shape:
        x, sign_in: ``(N, C_in, *spatial)``; sign_out: ``(N, C_out, *spatial_out)``.
    """
    mean = conv(x, weight_loc, bias, spec)
    perturbation = conv(x * sign_in, weight_scale * weight_noise, None, spec)
    return torch.addcmul(mean, perturbation, sign_out.to(mean.dtype))  # (to: autocast)


def local_reparameterization_conv(
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    noise: Tensor,
    bias_loc: Tensor | None,
    bias_scale: Tensor | None,
    spec: ConvSpec,
) -> Tensor:
    """Local reparameterization (Kingma et al. 2015): sample each output directly.

    Returns ``conv(x, μ) + μ_b + sqrt(conv(x², σ²) + σ_b²) ∘ noise``: an independent
    weight draw per output element. Padding modes commute with squaring, so
    ``conv(x², ·)`` pads ``x²`` exactly as the layer pads ``x``.

    Shape:
        x: ``(N, C_in, *spatial)``; noise: ``(N, C_out, *spatial_out)``; bias_*: ``(C_out,)``.
    """
    mean = conv(x, weight_loc, bias_loc, spec)
    b_var = None if bias_scale is None else bias_scale.square()
    var = conv(x.square(), weight_scale.square(), b_var, spec)
    std = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
    return torch.addcmul(mean, std, noise.to(mean.dtype))  # (to: autocast)


def batched_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, num_samples: int, spec: ConvSpec
) -> Tensor:
    """``conv`` with K weight draws in one grouped call, the K samples folded into x's batch.

    Folds the samples into the channels, ``(K * B, C, *S) -> (B, K * C, *S)``, and runs
    one convolution with ``groups = K * spec.groups`` and the K weights stacked along
    their first dimension.

    Shape:
        x: ``(K * B, C_in, *spatial)``; weight: ``(K, *weight_shape)``; bias:
        ``(K, C_out)``, ``(C_out,)`` or None; output ``(K * B, C_out, *spatial_out)``.
    """
    k = num_samples
    batch, spatial = x.shape[0] // k, x.shape[2:]
    xk = x.reshape(k, batch, -1, *spatial).transpose(0, 1)  # (B, K, C_in, *S)
    xk = xk.reshape(batch, -1, *spatial)  # (B, K * C_in, *S)
    w = weight.reshape(-1, *weight.shape[2:])  # (K * weight.shape[1], *weight.shape[2:])
    if bias is not None:
        bias = bias.repeat(k) if bias.dim() == 1 else bias.reshape(-1)  # (K * C_out,)
    y = conv(xk, w, bias, spec._replace(groups=spec.groups * k))  # (B, K * C_out, *S')
    out_spatial = y.shape[2:]
    y = y.reshape(batch, k, -1, *out_spatial).transpose(0, 1)  # (K, B, C_out, *S')
    return y.reshape(k * batch, -1, *out_spatial)


def add_sample_bias(y: Tensor, bias: Tensor | None, num_samples: int) -> Tensor:
    """Add a channel bias with one draw per function sample to ``y`` ``(K * B, C, *S)``.

    Shape:
        bias: ``(K, C)``, ``(C,)`` or None.
    """
    if bias is None:
        return y
    bias = bias.to(y.dtype)  # under autocast y may be lower precision, as torch's conv bias
    trailing = (1,) * (y.dim() - 2)
    if bias.dim() == 1:
        return y + bias.view(-1, *trailing)
    shape = y.shape
    yk = y.reshape(num_samples, -1, *shape[1:])  # (K, B, C, *S)
    return (yk + bias.view(num_samples, 1, -1, *trailing)).reshape(shape)
