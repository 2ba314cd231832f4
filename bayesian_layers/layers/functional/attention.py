"""Pure functions for multi-head attention: projections with signs per sequence
(Flipout), and torch's attention steps between the input and output projections
(masks, ``bias_k``/``bias_v``, zero attention, dropout). Noise and signs are passed
in; the modules in :mod:`bayesian_layers.layers.attention` hold parameters and draws.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["flipout_project", "attention_core"]


def flipout_project(
    x: Tensor,
    loc: Tensor,
    delta: Tensor | None,
    bias: Tensor | None,
    sign_in: Tensor | None,
    sign_out: Tensor | None,
) -> Tensor:
    """Flipout projection with signs per example: ``x μᵀ + b + ((x ∘ s_in) Δᵀ) ∘ s_out``.

    ``delta`` None: the plain projection ``x μᵀ + b`` (the signs are not used).

    Shape:
        x: ``(T, N, in)``; loc, delta: ``(out, in)``; sign_in: ``(N, in)``;
        sign_out: ``(N, out)`` (broadcast over the T positions); output ``(T, N, out)``.
    """
    mean = F.linear(x, loc, bias)
    if delta is None:
        return mean
    if sign_in is None or sign_out is None:
        raise ValueError("flipout_project expected sign_in and sign_out with a perturbation")
    # under autocast the matmuls run in lower precision: keep the output in their dtype
    return torch.addcmul(mean, F.linear(x * sign_in, delta), sign_out.to(mean.dtype))


def attention_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    num_heads: int,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    *,
    bias_k: Tensor | None = None,
    bias_v: Tensor | None = None,
    add_zero_attn: bool = False,
    dropout_p: float = 0.0,
    need_weights: bool = True,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Torch's attention after the input projection, before the output projection.

    Follows ``F.multi_head_attention_forward`` (mask canonicalisation, ``bias_k``,
    ``add_zero_attn``, softmax or ``scaled_dot_product_attention``, dropout) over
    ``num_heads`` heads of width ``E / num_heads``.

    Args:
        q, k, v: projected queries, keys and values.
        num_heads: the heads ``q``, ``k`` and ``v`` hold.
        key_padding_mask, attn_mask: as ``nn.MultiheadAttention`` (boolean: True
            masks; float: added), already checked.
        bias_k, bias_v: ``(1, 1, E)`` key and value appended to every sequence, or None.
        add_zero_attn: append a zero key and value.
        dropout_p: dropout on the attention weights (0 outside training).
        need_weights, average_attn_weights, is_causal: as ``nn.MultiheadAttention``.

    Shape:
        q: ``(L, N, E)``; k, v: ``(S, N, E)``; output ``(L, N, E)`` and weights
        ``(N, L, S')`` / ``(N, H, L, S')`` or None.

    Example:
        >>> q = torch.randn(3, 2, 4)
        >>> out, w = attention_core(q, q, q, 2)
        >>> out.shape, w.shape
        (torch.Size([3, 2, 4]), torch.Size([2, 3, 3]))
    """
    tgt, bsz, e = q.shape
    h, d = num_heads, e // num_heads
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
    if bias_k is not None and bias_v is not None:
        k = torch.cat([k, bias_k.repeat(1, bsz, 1)])  # (S + 1, N, E)
        v = torch.cat([v, bias_v.repeat(1, bsz, 1)])
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
    q = q.reshape(tgt, bsz * h, d).transpose(0, 1)  # (N H, L, D)
    k = k.reshape(k.shape[0], bsz * h, d).transpose(0, 1)  # (N H, S, D)
    v = v.reshape(v.shape[0], bsz * h, d).transpose(0, 1)
    if add_zero_attn:
        zeros = torch.zeros((bsz * h, 1, d), dtype=k.dtype, device=k.device)
        k, v = torch.cat([k, zeros], 1), torch.cat([v, zeros], 1)
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
    src = k.shape[1]
    if key_padding_mask is not None:
        kpm = key_padding_mask.view(bsz, 1, 1, src).expand(-1, h, -1, -1).reshape(bsz * h, 1, src)
        attn_mask = kpm if attn_mask is None else attn_mask + kpm
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
