"""Bayesian multi-head attention: drop-in replacements for ``nn.MultiheadAttention``.

The random parameters are the packed input projection ``in_proj_weight``
(``(3 E, E)``, posterior ``N(μ, σ²)``, trainable ``in_proj_weight_loc`` and
``in_proj_weight_rho``) and the output projection, the submodule ``out_proj``
(a :class:`~bayesian_layers.layers.LinearReparameterization` or
:class:`~bayesian_layers.layers.LinearFlipout`, as in torch). Biases are
deterministic zeros by default; ``bias_k``/``bias_v`` (``add_bias_kv=True``) are
plain parameters. ``layer.losses`` holds the input projection's terms and
``layer.out_proj.losses`` the output projection's; ``bl.losses(layer)`` collects both.

The estimator is the class attribute ``estimator`` (the strategy objects of
:mod:`bayesian_layers.layers.estimators`); each call takes one draw of each
projection (:meth:`~bayesian_layers.layers.estimators.Estimator.draw`), applied to
queries, keys and values alike:

* :class:`MultiheadAttentionReparameterization`: one whole draw of every weight
  per call, shared by the batch, then torch's own
  ``F.multi_head_attention_forward`` (masks, dropout, ``need_weights``).
* :class:`MultiheadAttentionFlipout`: the projections use Flipout (Wen et al.
  2018) with random signs per *example* (per sequence in the batch), shared by
  all its positions, so each sequence sees one pseudo-independent function;
  the attention itself (:meth:`~MultiheadAttentionReparameterization.attend`)
  follows torch's math step by step.

The shared machinery is :class:`~bayesian_layers.layers.attention.base.BayesianMultiheadAttention`
(input checks in :mod:`bayesian_layers.layers.attention._checks`). Tensor parallelism
splits the heads over processes through the public attribute ``head_shard`` (a
:class:`HeadShard`, set once by :class:`bayesian_layers.distributed.BayesianAttentionParallel`).
"""

from __future__ import annotations

from torch import nn

from ..estimators import FLIPOUT, REPARAMETERIZATION
from ..linear import LinearFlipout, LinearReparameterization
from ..registry import converts
from .base import BayesianMultiheadAttention

__all__ = ["MultiheadAttentionReparameterization", "MultiheadAttentionFlipout"]


@converts(nn.MultiheadAttention, "reparameterization")
class MultiheadAttentionReparameterization(BayesianMultiheadAttention):
    """Multi-head attention with a weight posterior, one whole draw per call.

    Drop-in for ``nn.MultiheadAttention`` (same constructor and call). Every call
    draws ``in_proj_weight`` and ``out_proj.weight`` afresh (training and
    evaluation alike), shares them across the batch and runs torch's
    ``F.multi_head_attention_forward``; ``"mean"`` and ``"frozen"`` sampling
    modes as for the dense layers (set them with ``bl.set_sampling`` or the
    context managers, which reach ``out_proj`` too).

    Args:
        embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn,
        batch_first: as for ``nn.MultiheadAttention``.
        kdim, vdim: only ``None`` or ``embed_dim`` (the packed projection);
            anything else raises ``NotImplementedError``.
        weight_initializer, bias_initializer, weight_regularizer,
        bias_regularizer: as for :class:`~bayesian_layers.layers.LinearReparameterization`,
            applied to both projections.
        device, dtype: factory arguments.

    Shape:
        - query: ``(L, E)``, ``(L, N, E)`` or ``(N, L, E)`` with ``batch_first``.
        - key, value: ``(S, E)``, ``(S, N, E)`` or ``(N, S, E)``.
        - key_padding_mask: ``(N, S)`` or ``(S,)``; attn_mask: ``(L, S)`` or
          ``(N * num_heads, L, S)``; boolean (True = masked) or float (added).
        - Output: ``(attn_output, attn_weights)`` as torch: ``attn_output`` like
          query; ``attn_weights`` ``(N, L, S)`` averaged over heads,
          ``(N, num_heads, L, S)`` otherwise, or None if ``need_weights=False``.

    Attributes:
        in_proj_weight: a :class:`~bayesian_layers.RandomVariable` (``(3E, E)``).
        in_proj_weight_loc, in_proj_weight_rho: its trainable posterior parameters.
        out_proj: the output projection, a Bayesian dense layer.
        head_shard: the :class:`HeadShard` computed under tensor parallelism, or None.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.attention import MultiheadAttentionReparameterization
        >>> mha = MultiheadAttentionReparameterization(8, 2, batch_first=True)
        >>> x = torch.randn(3, 5, 8)
        >>> out, w = mha(x, x, x)
        >>> out.shape, w.shape
        (torch.Size([3, 5, 8]), torch.Size([3, 5, 5]))
    """

    estimator = REPARAMETERIZATION
    _linear_cls = LinearReparameterization


@converts(nn.MultiheadAttention, "flipout")
class MultiheadAttentionFlipout(BayesianMultiheadAttention):
    """Multi-head attention with Flipout projections (Wen et al. 2018).

    Same constructor and call as :class:`MultiheadAttentionReparameterization`
    (the weight posteriors must be normal). In ``"sample"`` mode the input and
    output projections of sequence ``n`` use ``μ + (σ ∘ ε) ∘ (s_out,n s_in,nᵀ)``:
    one shared noise ``ε`` per call and random signs per example, shared by
    all positions of the sequence (so a sequence sees one function, and
    examples in a batch are decorrelated). Random biases get one draw per
    call. ``"frozen"`` and ``"mean"`` modes use whole draws / posterior means.

    Shape:
        As :class:`MultiheadAttentionReparameterization`.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.attention import MultiheadAttentionFlipout
        >>> mha = MultiheadAttentionFlipout(8, 2)
        >>> x = torch.randn(5, 3, 8)
        >>> out, w = mha(x, x, x, need_weights=False)
        >>> out.shape, w
        (torch.Size([5, 3, 8]), None)
    """

    estimator = FLIPOUT
    _linear_cls = LinearFlipout
