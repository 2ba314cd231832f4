"""The Flipout attention path: projections with per-sequence signs, and torch's
attention steps after them (masks, bias_kv, zero attention, dropout)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from ..attention import _BayesianMultiheadAttention

__all__ = ["flipout_project", "attention_core"]


def flipout_project(
    x: Tensor,
    loc: Tensor,
    delta: Tensor | None,
    bias: Tensor | None,
    sign_in: Tensor,
    sign_out: Tensor,
) -> Tensor:
    """Flipout projection with signs per example: ``x μᵀ + b + ((x ∘ s_in) Δᵀ) ∘ s_out``.

    Shape:
        x: ``(T, N, in)``; loc, delta: ``(out, in)``; sign_in: ``(N, in)``;
        sign_out: ``(N, out)`` (broadcast over the T positions); output ``(T, N, out)``.
    """
    mean = F.linear(x, loc, bias)
    if delta is None:
        return mean
    # under autocast the matmuls run in lower precision: keep the output in their dtype
    return torch.addcmul(mean, F.linear(x * sign_in, delta), sign_out.to(mean.dtype))


def attention_core(
    layer: _BayesianMultiheadAttention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    need_weights: bool,
    average_attn_weights: bool,
    is_causal: bool,
) -> tuple[Tensor, Tensor | None]:
    """Torch's attention after the input projection, before the output projection.

    Follows ``F.multi_head_attention_forward`` (mask canonicalisation, ``bias_k``,
    ``add_zero_attn``, softmax or ``scaled_dot_product_attention``, dropout).

    Shape:
        q: ``(L, N, E)``; k, v: ``(S, N, E)``; output ``(L, N, E)`` and weights
        ``(N, L, S')`` / ``(N, H, L, S')`` or None.
    """
    tgt, bsz, e = q.shape
    h, d = layer.num_heads, layer.head_dim
    key_padding_mask = F._canonical_mask(
        mask=key_padding_mask, mask_name="key_padding_mask",
        other_type=F._none_or_dtype(attn_mask), other_name="attn_mask", target_type=q.dtype,
    )  # fmt: skip
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None
    else:
        attn_mask = F._canonical_mask(
            mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
            target_type=q.dtype, check_other=False,
        )  # fmt: skip
        if key_padding_mask is not None:
            is_causal = False
    if attn_mask is not None and attn_mask.dim() == 2:
        attn_mask = attn_mask.unsqueeze(0)  # (1, L, S)
    if layer.bias_k is not None and layer.bias_v is not None:
        k = torch.cat([k, layer.bias_k.repeat(1, bsz, 1)])  # (S + 1, N, E)
        v = torch.cat([v, layer.bias_v.repeat(1, bsz, 1)])
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
    q = q.reshape(tgt, bsz * h, d).transpose(0, 1)  # (N H, L, D)
    k = k.reshape(k.shape[0], bsz * h, d).transpose(0, 1)  # (N H, S, D)
    v = v.reshape(v.shape[0], bsz * h, d).transpose(0, 1)
    if layer.add_zero_attn:
        zeros = torch.zeros((bsz * h, 1, d), dtype=k.dtype, device=k.device)
        k, v = torch.cat([k, zeros], 1), torch.cat([v, zeros], 1)
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
    src = k.shape[1]
    if key_padding_mask is not None:
        kpm = key_padding_mask.view(bsz, 1, 1, src).expand(-1, h, -1, -1).reshape(bsz * h, 1, src)
        attn_mask = kpm if attn_mask is None else attn_mask + kpm
    dropout_p = layer.dropout if layer.training else 0.0
    if need_weights:
        scores = q * math.sqrt(1.0 / d)
        if attn_mask is not None:
            scores = torch.baddbmm(attn_mask, scores, k.transpose(-2, -1))  # (N H, L, S)
        else:
            scores = torch.bmm(scores, k.transpose(-2, -1))
        weights = F.softmax(scores, dim=-1)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt, bsz, e)  # (L, N, E)
        weights = weights.view(bsz, h, tgt, src)
        return out, weights.mean(dim=1) if average_attn_weights else weights
    if attn_mask is not None:
        if attn_mask.size(0) == 1:
            attn_mask = attn_mask.unsqueeze(0)  # (1, 1, L, S)
        else:
            attn_mask = attn_mask.view(bsz, h, -1, src)
    out = F.scaled_dot_product_attention(
        q.view(bsz, h, tgt, d), k.view(bsz, h, src, d), v.view(bsz, h, src, d),
        attn_mask, dropout_p, is_causal,
    )  # fmt: skip  # (N, H, L, D)
    return out.permute(2, 0, 1, 3).reshape(tgt, bsz, e), None
