"""INTERIM (deleted once the embedding family registers itself): the registration of
``nn.Embedding``, until :mod:`bayesian_layers.layers.embedding` adds ``from_torch`` and
``@converts``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers.embedding import EmbeddingReparameterization
from ..layers.registry import converts, counterparts


def _from_torch(cls: Any, m: nn.Embedding, **kwargs: Any) -> Any:
    args = (m.num_embeddings, m.embedding_dim, m.padding_idx, m.max_norm, m.norm_type)
    new = cls(
        *args, scale_grad_by_freq=m.scale_grad_by_freq, sparse=m.sparse,
        device=m.weight.device, dtype=m.weight.dtype, **kwargs,
    )  # fmt: skip
    with torch.no_grad():
        new.point("weight").copy_(m.weight)
    return new


if not counterparts(nn.Embedding):
    if not hasattr(EmbeddingReparameterization, "from_torch"):
        EmbeddingReparameterization.from_torch = classmethod(_from_torch)  # type: ignore[attr-defined]
    converts(nn.Embedding, "reparameterization")(EmbeddingReparameterization)
