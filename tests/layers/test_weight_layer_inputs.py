"""Bad input to the weight layers beyond the contract suite (``tests/contract``, where
every layer's argument dtypes, wrong widths and ranks, and empty batches are checked):
an embedding's non-integer or empty index tensors, MCDropout's dtypes, and attention
masks of a wrong dtype (also under autocast)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bayesian_layers import layers


def _seq(t: int, b: int, f: int, dt: torch.dtype) -> Tensor:
    return torch.randn(t, b, f, dtype=dt)


# ------------------------------------------------------------------ embedding, dropout
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool], ids=str)
def test_embedding_rejects_non_integer_indices(dtype: torch.dtype) -> None:
    layer = layers.EmbeddingReparameterization(5, 3)
    with pytest.raises(
        TypeError, match=rf"EmbeddingReparameterization expected `input` .*integer.*{dtype}"
    ):
        layer(torch.zeros(2, dtype=dtype))


@pytest.mark.parametrize("shape", [(0,), (0, 4), (2, 0)], ids=str)
def test_embedding_empty_index_tensor(shape: tuple[int, ...]) -> None:
    layer = layers.EmbeddingReparameterization(5, 3)
    idx = torch.zeros(shape, dtype=torch.long)
    assert layer(idx).shape == nn.Embedding(5, 3)(idx).shape


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool], ids=str)
def test_mc_dropout_rejects_non_floating_input(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=rf"MCDropout expected `input` .*floating.*{dtype}"):
        layers.MCDropout(0.5)(torch.ones(3, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_mc_dropout_keeps_any_floating_dtype(dtype: torch.dtype) -> None:
    out = layers.MCDropout(0.5)(torch.ones(4, 3, dtype=dtype))
    assert out.dtype == dtype and out.shape == (4, 3)


# ---------------------------------------------------------------------- attention masks
ATTENTION = ["MultiheadAttentionReparameterization", "MultiheadAttentionFlipout"]


@pytest.mark.parametrize("mask", ["attn_mask", "key_padding_mask"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.int64], ids=str)
@pytest.mark.parametrize("name", ATTENTION)
def test_attention_mask_of_a_wrong_dtype_raises(name: str, dtype: torch.dtype, mask: str) -> None:
    layer = getattr(layers, name)(4, 2)
    q = _seq(5, 2, 4, torch.float32)
    shape = (5, 5) if mask == "attn_mask" else (2, 5)
    for ok in (torch.bool, torch.float32):  # torch's two kinds of mask
        layer(q, q, q, **{mask: torch.zeros(shape, dtype=ok)})
    expected = rf"{name} expected `{mask}` of dtype torch.bool or torch.float32.*got {dtype}"
    with pytest.raises(TypeError, match=expected):
        layer(q, q, q, **{mask: torch.zeros(shape, dtype=dtype)})


@pytest.mark.parametrize("name", ATTENTION)
def test_attention_float_mask_under_autocast(name: str) -> None:
    layer = getattr(layers, name)(4, 2)
    q = _seq(5, 2, 4, torch.bfloat16)
    causal = torch.triu(torch.full((5, 5), float("-inf")), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(q, q, q, attn_mask=causal)
        out_bf16, _ = layer(q, q, q, attn_mask=causal.bfloat16())
    assert torch.isfinite(out.float()).all() and torch.isfinite(out_bf16.float()).all()
