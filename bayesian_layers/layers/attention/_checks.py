"""Input checks of the Bayesian multi-head attention layers: query, key and value
shapes, mask shapes and dtypes, with messages that name the layer, the argument, what
was expected and what came (as ``nn.MultiheadAttention``'s rules, stated)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import BayesianLayer

__all__ = ["check_qkv", "check_masks"]


def check_qkv(
    layer: BayesianLayer, query: object, key: object, value: object
) -> tuple[Tensor, Tensor, Tensor]:
    """Tensors of the layer's dtype, 2-d (unbatched) or 3-d, last dimension
    ``embed_dim``, equal ranks, key and value of one shape, one batch size."""
    name = type(layer).__name__
    q, k, v = (
        layer.check_input(t, what)
        for t, what in zip((query, key, value), ("query", "key", "value"), strict=True)
    )
    for what, t in (("query", q), ("key", k), ("value", v)):
        if t.dim() not in (2, 3) or t.shape[-1] != layer.embed_dim:
            raise ValueError(
                f"{name} expected {what} of shape (L, {layer.embed_dim}) or 3-d with last "
                f"dimension embed_dim={layer.embed_dim}, got {tuple(t.shape)}"
            )
    if not q.dim() == k.dim() == v.dim():
        raise ValueError(
            f"{name} expected query, key and value of equal rank, got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(
            f"{name} expected key and value of equal shape, got {tuple(k.shape)} and "
            f"{tuple(v.shape)}"
        )
    batch_dim = 0 if layer.batch_first else 1
    if q.dim() == 3 and q.shape[batch_dim] != k.shape[batch_dim]:
        raise ValueError(
            f"{name} expected query and key with the same batch size (dim {batch_dim}), "
            f"got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    return q, k, v


def check_masks(
    layer: BayesianLayer,
    tgt: int,
    src: int,
    batch: int,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    is_causal: bool,
) -> None:
    """Mask dtypes (:func:`check_mask_dtype`) and shapes: ``key_padding_mask``
    ``(N, S)``; ``attn_mask`` ``(L, S)`` or ``(N * num_heads, L, S)``; ``is_causal``
    only as a hint with a mask (as torch)."""
    name = type(layer).__name__
    for what, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
        if mask is not None:
            check_mask_dtype(layer, what, mask)
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, src):
        raise ValueError(
            f"{name} expected key_padding_mask of shape (N, S) = {(batch, src)}, got "
            f"{tuple(key_padding_mask.shape)}"
        )
    if attn_mask is not None:
        shapes = ((tgt, src), (batch * layer.num_heads, tgt, src))
        if tuple(attn_mask.shape) not in shapes:
            raise ValueError(
                f"{name} expected attn_mask of shape (L, S) = {shapes[0]} or "
                f"(N * num_heads, L, S) = {shapes[1]}, got {tuple(attn_mask.shape)}"
            )
    if is_causal and attn_mask is None:
        raise ValueError(
            f"{name} needs attn_mask with the is_causal hint (as torch does); build one "
            "with nn.Transformer.generate_square_subsequent_mask(L)"
        )


def check_mask_dtype(layer: BayesianLayer, what: str, mask: object) -> None:
    """A mask is boolean or of the parameters' dtype (or autocast's), as torch's."""
    name = type(layer).__name__
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} expected `{what}` to be a Tensor, got {type(mask).__name__}")
    dtype = layer.param_dtype()
    if mask.dtype in (torch.bool, dtype):
        return
    device = mask.device.type
    if torch.is_autocast_enabled(device) and mask.dtype == torch.get_autocast_dtype(device):
        return
    raise TypeError(f"{name} expected `{what}` of dtype torch.bool or {dtype}, got {mask.dtype}")
