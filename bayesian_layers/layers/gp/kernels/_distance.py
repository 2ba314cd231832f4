"""Distance math of the stationary covariance functions: squared distances by one
matrix product and the fused exponentiated quadratic, each with a closed-form backward.

Pure functions of tensors (no modules); ``torch.func`` (grad, jacrev, vmap) applies.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..linalg import full_precision

__all__ = ["squared_distance", "exponentiated_quadratic", "distance"]


def _centred(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    shift = x1.detach().mean(dim=-2, keepdim=True)  # (*, 1, D); distances do not move
    return x1 - shift, x2 - shift


def _half_sq_norms(a: Tensor, b: Tensor) -> Tensor:
    """``-½|a_i|² - ½|b_j|²`` as ``(*, N, M)``."""
    return (-0.5 * a.pow(2).sum(-1))[..., :, None] + (-0.5 * b.pow(2).sum(-1))[..., None, :]


def _distance_grads(h: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of ``Σ h_ij · (-½|a_i - b_j|²)`` in ``a`` and ``b`` (summed to their shapes)."""
    grad_a = h @ b - h.sum(-1, keepdim=True) * a  # (*, N, D)
    grad_b = h.mT @ a - h.sum(-2).unsqueeze(-1) * b  # (*, M, D)
    return grad_a.sum_to_size(a.shape), grad_b.sum_to_size(b.shape)


class _SquaredDistance(torch.autograd.Function):
    """``|a_i - b_j|²`` by one matrix product; backward by two (no broadcast reductions).

    In the ``setup_context`` form, so ``torch.func`` (grad, jacrev, vmap) applies."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        neg_half = _half_sq_norms(a, b).add_(a @ b.mT)  # -½|a - b|²
        return neg_half.clamp_max_(0.0).mul_(-2.0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        a, b = ctx.saved_tensors
        return _distance_grads(-2.0 * grad, a, b)


def _augmented(
    x1: Tensor, x2: Tensor, amp: Tensor, length_scale: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``[a, -½|a|² + log amp², 1]`` and ``[b, 1, -½|b|²]`` for ``a, b = x/ℓ - shift``,
    and the shift."""
    a, b = (x1, x2) if length_scale is None else (x1 / length_scale, x2 / length_scale)
    shift = a.mean(dim=-2, keepdim=True)  # (*, 1, D); distances do not move
    a, b = a - shift, b - shift
    log_amp2 = amp.log().mul(2.0)
    one_a, one_b = a.new_ones(a.shape[:-1] + (1,)), b.new_ones(b.shape[:-1] + (1,))
    norm_a = a.square().sum(-1, keepdim=True).mul(-0.5).add(log_amp2)
    norm_b = b.square().sum(-1, keepdim=True).mul(-0.5)
    a_aug = torch.cat([a, norm_a, one_a], -1)  # (*, N, D + 2)
    b_aug = torch.cat([b, one_b, norm_b], -1)  # (*, M, D + 2)
    return a_aug, b_aug, shift


class _ExponentiatedQuadratic(torch.autograd.Function):
    """``amp² · exp(-½|x1_i/ℓ - x2_j/ℓ|²)`` fused: one matrix product and two elementwise
    passes forward (the squared norms and ``log amp²`` ride in two extra columns of the
    product), one elementwise pass and two products back (the augmented inputs are
    rebuilt there, O((N + M) D)). In the ``setup_context`` form, so ``torch.func``
    (grad, jacrev, vmap) applies."""

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        x1: Tensor, x2: Tensor, amp: Tensor, length_scale: Tensor | None
    ) -> Tensor:
        a_aug, b_aug, _ = _augmented(x1, x2, amp, length_scale)
        log_amp2 = amp.log().mul(2.0)
        return (a_aug @ b_aug.mT).clamp_max_(log_amp2).exp_()  # log amp² - ½|a - b|² ≤ log amp²

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x1, x2, amp, length_scale = inputs
        ctx.save_for_backward(x1, x2, amp, length_scale, output)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x1, x2, amp, length_scale, out = ctx.saved_tensors
        a_aug, b_aug, shift = _augmented(x1, x2, amp, length_scale)
        d = a_aug.shape[-1] - 2
        h = grad * out  # (*, N, M)
        ha = h @ b_aug  # (*, N, D + 2): [h b, row sums of h, h norm_b]
        hb = h.mT @ a_aug  # (*, M, D + 2): [hᵀ a, hᵀ norm_a, column sums of h]
        a, b = a_aug[..., :d], b_aug[..., :d]
        grad_a = ha[..., :d] - ha[..., d : d + 1] * a  # ∂/∂a of Σ h (-½|a - b|²)
        grad_b = hb[..., :d] - hb[..., d + 1 :] * b
        grad_amp = (ha[..., d].sum() * 2.0 / amp).reshape(amp.shape)
        grad_x1, grad_x2, grad_ls = grad_a, grad_b, None
        if length_scale is not None:
            grad_x1, grad_x2 = grad_a / length_scale, grad_b / length_scale
            if ctx.needs_input_grad[3]:  # a = x1/ℓ - shift: ∂a/∂ℓ = -(a + shift)/ℓ
                per_dim = (grad_a * (a + shift)).flatten(0, -2).sum(0)
                per_dim = per_dim + (grad_b * (b + shift)).flatten(0, -2).sum(0)
                grad_ls = (-per_dim / length_scale).sum_to_size(length_scale.shape)
        return grad_x1, grad_x2, grad_amp, grad_ls


def squared_distance(x1: Tensor, x2: Tensor) -> Tensor:
    """Squared Euclidean distances ``(*, N, M)`` between rows of ``(*, N, D)`` and ``(*, M, D)``.

    Uses one matrix product (fast for large N, M) on inputs centred at the mean of
    ``x1`` (which removes most of the cancellation of the ``|a|² + |b|² - 2a·b``
    expansion), clamped at zero; a closed-form backward (first order only).
    """
    a, b = _centred(x1, x2)
    with full_precision(a.device):
        return _SquaredDistance.apply(a, b)


def exponentiated_quadratic(
    x1: Tensor, x2: Tensor, amplitude: Tensor, length_scale: Tensor | None = None
) -> Tensor:
    """``amplitude² · exp(-½|x1_i/ℓ - x2_j/ℓ|²)``, ``(*, N, M)``, fused forward and backward.

    ``length_scale`` ``ℓ`` is a scalar or ``(D,)`` tensor (``None``: 1). Inputs are
    centred at the mean of ``x1/ℓ`` (which removes most of the cancellation of the
    ``|a|² + |b|² - 2a·b`` expansion) and the exponent is clamped at ``log amplitude²``;
    first-order gradients only.

    Example:
        >>> x = torch.tensor([[0.0], [1.0]])
        >>> exponentiated_quadratic(x, x, torch.tensor(2.0))[0].tolist()  # 4 exp(-1/2)
        [4.0, 2.4261226654052734]
    """
    tensors = [x1, x2, amplitude] + ([] if length_scale is None else [length_scale])
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    if any(t.dtype != dtype for t in tensors):
        x1, x2, amplitude = x1.to(dtype), x2.to(dtype), amplitude.to(dtype)
        length_scale = None if length_scale is None else length_scale.to(dtype)
    if x1.shape[:-2] != x2.shape[:-2]:  # broadcast the batch dimensions up front
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        x1, x2 = x1.expand(batch + x1.shape[-2:]), x2.expand(batch + x2.shape[-2:])
    with full_precision(x1.device):
        return _ExponentiatedQuadratic.apply(x1, x2, amplitude, length_scale)


def distance(x1: Tensor, x2: Tensor) -> Tensor:
    """Euclidean distances ``(*, N, M)`` computed directly from differences.

    Exact zero on coincident points (no ``sqrt`` of a rounding error), with a zero
    (sub)gradient there instead of the NaN of ``sqrt(0)``'s derivative.
    """
    return torch.cdist(x1, x2, compute_mode="donot_use_mm_for_euclid_dist")
