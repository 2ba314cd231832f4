"""LoRA on the output projection of ``nn.MultiheadAttention``.

Torch's attention reads ``out_proj.weight`` and ``out_proj.bias`` instead of calling
``out_proj``, so an adapter put there would be skipped. :class:`AdaptedMultiheadAttention`
runs torch's own forward with an identity output projection (exact in floating
point: each output is one product with 1 plus zeros) and then calls the adapted
``out_proj``. Part of :mod:`bayesian_layers.adapters`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._adapter import LoRALinear

__all__ = ["AdaptedMultiheadAttention", "adapt_attention", "sync_encoder_fast_path"]

#: torch's flags that choose the fused encoder paths, with the value that turns each off
_FAST_PATH_FLAGS = (
    (nn.TransformerEncoderLayer, "activation_relu_or_gelu", 0),
    (nn.TransformerEncoder, "use_nested_tensor", False),
)


class _IdentityProjection(nn.Module):
    """Stands in for ``out_proj`` inside torch's forward: weight ``I``, bias ``0``."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias


class AdaptedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose ``out_proj`` is called as a module (an adapter).

    Made by :func:`adapt_attention` from an existing attention (its class is swapped:
    parameters, buffers and hooks stay). Same arguments, shapes and outputs as
    ``nn.MultiheadAttention``.

    Example:
        >>> import torch
        >>> mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        >>> x = torch.randn(2, 5, 8)
        >>> ref = mha(x, x, x)[0]
        >>> adapted = adapt_attention(mha)
        >>> torch.allclose(adapted(x, x, x)[0], ref, atol=1e-6)
        True
    """

    def _identity(self, ref: Tensor) -> _IdentityProjection:
        e = self.embed_dim
        eye = torch.eye(e, dtype=ref.dtype, device=ref.device)
        return _IdentityProjection(eye, torch.zeros(e, dtype=ref.dtype, device=ref.device))

    def forward(self, query: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        adapter = self._modules["out_proj"]
        assert adapter is not None
        self._modules["out_proj"] = self._identity(query)
        try:
            heads, weights = super().forward(query, *args, **kwargs)
        finally:
            self._modules["out_proj"] = adapter
        return adapter(heads), weights


def adapt_attention(mha: nn.MultiheadAttention) -> AdaptedMultiheadAttention:
    """Make ``mha`` call its ``out_proj`` as a module (in place; returns it)."""
    if not isinstance(mha, AdaptedMultiheadAttention):
        mha.__class__ = AdaptedMultiheadAttention
    return mha  # type: ignore[return-value]


def sync_encoder_fast_path(model: nn.Module) -> None:
    """Keep torch's fused encoder paths off every ``nn.TransformerEncoderLayer`` and
    ``nn.TransformerEncoder`` of ``model`` that holds a :class:`LoRALinear` (and give
    them back to one that no longer does).

    In eval mode torch runs such a layer as one fused op on ``linear1.weight``,
    ``self_attn.out_proj.weight``, ... (and an encoder given a padding mask on nested
    tensors into it): an adapter's ``weight`` is its base layer's, so the adapters would
    be skipped without a word. The flags read only to choose those paths (the layer's
    ``activation_relu_or_gelu``, the encoder's ``use_nested_tensor``) are turned off
    meanwhile, their values kept on the module; the module path computes the same.
    """
    for module in model.modules():
        for cls, flag, off in _FAST_PATH_FLAGS:
            if not isinstance(module, cls):
                continue
            adapted = any(isinstance(m, LoRALinear) for m in module.modules())
            saved = f"_lora_saved_{flag}"
            if adapted and saved not in module.__dict__:
                module.__dict__[saved] = getattr(module, flag)
                setattr(module, flag, off)
            elif not adapted and saved in module.__dict__:
                setattr(module, flag, module.__dict__.pop(saved))
