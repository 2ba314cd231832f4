"""Bayesian multi-head attention: drop-in replacements for ``nn.MultiheadAttention``.

- :mod:`.multihead`: :class:`MultiheadAttentionReparameterization`,
  :class:`MultiheadAttentionFlipout` (one draw of each projection per call).
- :mod:`.base`: :class:`BayesianMultiheadAttention`, the shared parameters, the
  public :meth:`~BayesianMultiheadAttention.attend` step and :class:`HeadShard`,
  the extension points of tensor parallelism; :mod:`._checks`: input checks.

The math (noise passed in) is in :mod:`bayesian_layers.layers.functional.attention`.
"""

from .base import BayesianMultiheadAttention, HeadShard
from .multihead import MultiheadAttentionFlipout, MultiheadAttentionReparameterization

__all__ = [
    "MultiheadAttentionReparameterization",
    "MultiheadAttentionFlipout",
    "BayesianMultiheadAttention",
    "HeadShard",
]
