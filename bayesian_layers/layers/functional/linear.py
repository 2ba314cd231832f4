"""Pure functions for the dense estimators: all noise is passed in.

These hold the math of each estimator so that ``gradcheck`` can test it; the
modules in :mod:`bayesian_layers.layers.linear` hold parameters and draw noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "reparameterization_linear",
    "flipout_linear",
    "local_reparameterization_linear",
    "batched_linear",
    "add_sample_bias",
]


def reparameterization_linear(
    x: Tensor, weight_loc: Tensor, weight_scale: Tensor, weight_noise: Tensor, bias: Tensor | None
) -> Tensor:
    """``x W^T + b`` with one whole weight draw ``W = loc + scale * noise``.

    Shape:
        x: ``(*, in)``; weight_*: ``(out, in)``; bias: ``(out,)``; output ``(*, out)``.
    """
    return F.linear(x, torch.addcmul(weight_loc, weight_scale, weight_noise), bias)


def flipout_linear(
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    weight_noise: Tensor,
    sign_in: Tensor,
    sign_out: Tensor,
    bias: Tensor | None,
) -> Tensor:
    """Flipout (Wen et al. 2018): ``x μ^T + ((x ∘ s_in) (σ ∘ ε)^T) ∘ s_out + b``.

    One shared perturbation ``σ ∘ ε`` is decorrelated across examples by random
    signs ``s_in``, ``s_out`` ∈ {±1}, so each example sees an independent-looking
    weight draw with the same marginal ``N(μ, σ²)``.

    Shape:
        x, sign_in: ``(*, in)``; sign_out: ``(*, out)``; weight_*: ``(out, in)``.
    """
    mean = F.linear(x, weight_loc, bias)
    perturbation = F.linear(x * sign_in, weight_scale * weight_noise)
    # under autocast the matmuls run in lower precision: keep the output in their dtype
    return torch.addcmul(mean, perturbation, sign_out.to(mean.dtype))


def local_reparameterization_linear(
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    noise: Tensor,
    bias_loc: Tensor | None,
    bias_scale: Tensor | None = None,
) -> Tensor:
    """Local reparameterization (Kingma et al. 2015): sample pre-activations directly.

    Under ``W ~ N(μ, σ²)`` elementwise, ``y = x W^T + b`` is normal with mean
    ``x μ^T + μ_b`` and variance ``x² (σ²)^T + σ_b²``; returns
    ``mean + sqrt(variance) ∘ noise``, an independent weight draw per example.

    Shape:
        x: ``(*, in)``; noise: ``(*, out)``; weight_*: ``(out, in)``; bias_*: ``(out,)``.
    """
    mean = F.linear(x, weight_loc, bias_loc)
    b_var = None if bias_scale is None else bias_scale.square()
    var = F.linear(x.square(), weight_scale.square(), b_var)
    std = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
    return torch.addcmul(mean, std, noise.to(mean.dtype))  # autocast: keep the matmul dtype


def batched_linear(x: Tensor, weight: Tensor, bias: Tensor | None, num_samples: int) -> Tensor:
    """``F.linear`` with K weight draws, the K samples folded into ``x``'s first dim.

    Shape:
        x: ``(K * B, *, in)``; weight: ``(K, out, in)``; bias: ``(K, out)``, ``(out,)``
        or None; output ``(K * B, *, out)``.
    """
    lead = x.shape[:-1]
    xk = x.reshape(num_samples, -1, x.shape[-1])  # (K, M, in)
    wt = weight.transpose(-1, -2)  # (K, in, out)
    if bias is None:
        out = torch.bmm(xk, wt)
    else:
        out = torch.baddbmm(bias.unsqueeze(-2) if bias.dim() == 2 else bias, xk, wt)
    return out.reshape(*lead, weight.shape[-2])


def add_sample_bias(y: Tensor, bias: Tensor | None, num_samples: int) -> Tensor:
    """Add a bias with one draw per function sample to ``y`` of shape ``(K * B, *, out)``."""
    if bias is None:
        return y
    if bias.dim() == 1:
        return y + bias
    shape = y.shape
    yk = y.reshape(num_samples, -1, shape[-1])  # (K, M, out)
    return (yk + bias.unsqueeze(1)).reshape(shape)
