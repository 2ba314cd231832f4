"""The shared base of the Bayesian multi-head attention layers (the public classes are
in :mod:`bayesian_layers.layers.attention`).

:class:`BayesianMultiheadAttention` holds the parameters, checks the inputs
(:mod:`bayesian_layers.layers.attention._checks`), takes one draw of each projection
per call under the subclass's ``estimator``
(:meth:`~bayesian_layers.layers.estimators.Estimator.draw`), folds K function samples
into the batch and runs either torch's fused ``F.multi_head_attention_forward`` on
whole weights or the projections with signs per sequence around :meth:`attend`.
:class:`HeadShard` is the public extension point of tensor parallelism: the share of
the heads one process computes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._checks import check_count
from ...initializers import TrainableInitializer
from ...regularizers import Regularizer
from ..base import BayesianLayer
from ..estimators import REPARAMETERIZATION, Estimator, WeightDraw
from ..functional.attention import attention_core, flipout_project
from ..linear import LinearReparameterization
from ._checks import check_masks, check_qkv

__all__ = ["BayesianMultiheadAttention", "HeadShard"]

_Out = tuple[Tensor, Tensor | None]


def _copy_spec(spec: object) -> object:
    """A private copy of an initializer/regularizer module (strings pass through)."""
    return copy.deepcopy(spec) if isinstance(spec, nn.Module) else spec


@dataclass(frozen=True)
class HeadShard:
    """The share of a multi-head attention layer's heads that one process computes.

    Set ``layer.head_shard`` to it (tensor parallelism does, once) and give the layer
    the shards of its parameters for those heads at call time: the rows of the packed
    input projection that compute their queries, keys and values, the columns of
    ``out_proj``'s weight and of ``bias_k``/``bias_v``. A call then projects to the
    shard's heads, attends over them (a 3-d ``attn_mask`` is sliced to them), applies
    the shard's columns of the output projection, passes the partial output to
    ``reduce`` (the sum over the shards), then adds ``out_proj``'s bias once. Attention
    weights come back averaged over all heads (the shards' averages, reduced); per-head
    weights raise ``NotImplementedError``.

    Attributes:
        index: this shard's position, ``0 <= index < count``.
        count: the number of shards (it divides ``num_heads``).
        reduce: sums a tensor over the shards (one all-reduce).

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.attention import HeadShard
        >>> HeadShard(0, 1, reduce=lambda t: t).count
        1
    """

    index: int
    count: int
    reduce: Callable[[Tensor], Tensor]


class BayesianMultiheadAttention(BayesianLayer):
    """Abstract base of the Bayesian multi-head attention layers: parameters,
    validation, masks, draws and vectorised samples; a subclass sets ``estimator``
    (and ``_linear_cls``, the output projection's class)."""

    estimator: Estimator = REPARAMETERIZATION
    _linear_cls: ClassVar[Callable[..., BayesianLayer]] = LinearReparameterization

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        *,
        weight_initializer: str | TrainableInitializer = "trainable_normal",
        bias_initializer: str | TrainableInitializer = "zeros",
        weight_regularizer: str | Regularizer | None = "normal_kl_divergence",
        bias_regularizer: str | Regularizer | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        embed_dim = check_count(name, "embed_dim", embed_dim)  # numpy integers too
        num_heads = check_count(name, "num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(
                f"{name} expected `embed_dim` divisible by `num_heads`, got {embed_dim} and "
                f"{num_heads}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"{name} expected `dropout` in [0, 1), got {dropout}")
        for arg, dim in (("kdim", kdim), ("vdim", vdim)):
            if dim is not None and dim != embed_dim:
                raise NotImplementedError(
                    f"{name} supports only kdim == vdim == embed_dim (the packed input "
                    f"projection), got {arg}={dim} with embed_dim={embed_dim}"
                )
        self.embed_dim = embed_dim
        self.kdim = self.vdim = embed_dim
        self._qkv_same_embed_dim = True
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.add_zero_attn = bool(add_zero_attn)
        self.use_bias = bool(bias)
        #: the heads this process computes under tensor parallelism (None: all).
        self.head_shard: HeadShard | None = None
        self.add_param(
            "in_proj_weight", (3 * embed_dim, embed_dim), weight_initializer, weight_regularizer,
            fan_in=embed_dim, fan_out=embed_dim, device=device, dtype=dtype,
        )  # fmt: skip
        if self.use_bias:
            self.add_param(
                "in_proj_bias", (3 * embed_dim,), bias_initializer, bias_regularizer,
                fan_in=embed_dim, fan_out=embed_dim, device=device, dtype=dtype,
            )  # fmt: skip
        self.estimator.check_posteriors(self, "in_proj_weight", "in_proj_bias")
        self.bias_k: nn.Parameter | None = None
        self.bias_v: nn.Parameter | None = None
        if add_bias_kv:
            shape = (1, 1, embed_dim)
            self.bias_k = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
            self.bias_v = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)
        self.out_proj = self._linear_cls(
            embed_dim, embed_dim, bias=bias,
            weight_initializer=_copy_spec(weight_initializer),
            bias_initializer=_copy_spec(bias_initializer),
            weight_regularizer=_copy_spec(weight_regularizer),
            bias_regularizer=_copy_spec(bias_regularizer),
            device=device, dtype=dtype,
        )  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("head_shard", None)  # layers pickled before head shards
        super().__setstate__(state)

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, **kwargs: Any) -> Any:
        """A Bayesian attention layer whose posterior means start at ``module``'s
        weights (``bias_k``/``bias_v`` copied); keyword arguments go to the constructor.

        Raises:
            TypeError: ``module`` is not an ``nn.MultiheadAttention``.

        Example:
            >>> from torch import nn
            >>> from bayesian_layers.layers.attention import MultiheadAttentionFlipout
            >>> MultiheadAttentionFlipout.from_torch(nn.MultiheadAttention(8, 2)).num_heads
            2
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(
                f"{cls.__name__}.from_torch expected nn.MultiheadAttention, got {type(module)}"
            )
        like = module.out_proj.weight
        new = cls(
            module.embed_dim, module.num_heads, module.dropout, module.in_proj_bias is not None,
            module.bias_k is not None, module.add_zero_attn, module.kdim, module.vdim,
            module.batch_first, device=like.device, dtype=like.dtype, **kwargs,
        )  # fmt: skip
        new.load_point_estimates(
            {"in_proj_weight": module.in_proj_weight, "in_proj_bias": module.in_proj_bias}
        )
        new.out_proj.load_point_estimates(
            {"weight": module.out_proj.weight, "bias": module.out_proj.bias}
        )
        with torch.no_grad():
            for mine, theirs in ((new.bias_k, module.bias_k), (new.bias_v, module.bias_v)):
                if mine is not None and theirs is not None:
                    mine.copy_(theirs)
        return new

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
            f"bias={self.use_bias}, batch_first={self.batch_first}"
        )

    def resample(self) -> None:
        """Forget the frozen function sample of both projections."""
        super().resample()
        self.out_proj.resample()

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> _Out:
        same_kv, same_qk = key is value, query is key
        query, key, value = check_qkv(self, query, key, value)
        batched = query.dim() == 3
        if not batched:  # (L, E) -> (L, 1, E)
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:  # (N, L, E) -> (L, N, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if same_kv:
            value = key
            if same_qk:
                query = key
        tgt, batch, _ = query.shape
        check_masks(self, tgt, key.shape[0], batch, key_padding_mask, attn_mask, is_causal)
        if self.head_shard is not None and need_weights and not average_attn_weights:
            raise NotImplementedError(
                f"{type(self).__name__} with its heads split over {self.head_shard.count} "
                "shards returns attention weights averaged over heads only "
                "(average_attn_weights=True)"
            )
        k = self.num_function_samples
        if k > 1 and batch % k:
            raise ValueError(
                f"{type(self).__name__} is drawing {k} function samples at once and expected a "
                f"batch size that is a multiple of {k} (samples folded into the batch, "
                f"sample-major), got {batch}"
            )
        args = (need_weights, average_attn_weights, is_causal)
        in_bias, out_bias = ("in_proj_bias", "bias") if self.use_bias else (None, None)
        in_draw = self.estimator.draw(self, "in_proj_weight", in_bias)
        out_draw = self.estimator.draw(self.out_proj, "weight", out_bias)
        if k == 1:
            out, weights = self._call(
                query, key, value, key_padding_mask, attn_mask, args, in_draw, out_draw
            )
        else:
            # K function samples: the batch holds K sample-major blocks, one call each.
            kpm = [None] * k if key_padding_mask is None else list(key_padding_mask.chunk(k, 0))
            am = (
                [attn_mask] * k
                if attn_mask is None or attn_mask.dim() == 2
                else list(attn_mask.chunk(k, 0))
            )
            parts = []
            for j in range(k):
                qs, ks, vs = (t.chunk(k, 1)[j] for t in (query, key, value))
                if same_kv:
                    vs = ks
                    if same_qk:
                        qs = ks
                draws = in_draw.sample(j), out_draw.sample(j)
                parts.append(self._call(qs, ks, vs, kpm[j], am[j], args, *draws))
            out = torch.cat([p[0] for p in parts], 1)
            weights = None if parts[0][1] is None else torch.cat([p[1] for p in parts], 0)  # type: ignore[misc]
        if not batched:
            return out.squeeze(1), None if weights is None else weights.squeeze(0)
        return (out.transpose(0, 1) if self.batch_first else out), weights

    def _call(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
        args: tuple[bool, bool, bool],
        in_draw: WeightDraw,
        out_draw: WeightDraw,
    ) -> _Out:
        """One function sample: torch's fused path on whole weights, else projections
        with signs per sequence around :meth:`attend`. Shape: ``(L, N, E)`` layout."""
        need_weights, average, is_causal = args
        shard = self.head_shard
        if shard is None and not (in_draw.per_example or out_draw.per_example):
            return F.multi_head_attention_forward(
                query, key, value, self.embed_dim, self.num_heads, in_draw.weight,
                in_draw.bias, self.bias_k, self.bias_v, self.add_zero_attn, self.dropout,
                out_draw.weight, out_draw.bias, training=self.training,  # type: ignore[arg-type]
                key_padding_mask=key_padding_mask, need_weights=need_weights,
                attn_mask=attn_mask, average_attn_weights=average, is_causal=is_causal,
            )  # fmt: skip
        batch, rows = query.shape[1], in_draw.weight.shape[-2] // 3  # rows: E (or a shard's)
        sign_in = sign_out = None
        if in_draw.per_example:  # signs per sequence, shared by its positions
            sign_in = self.noise(
                "in_proj_weight_sign_in", (batch, query.shape[-1]), query, kind="sign"
            )
            sign_out = self.noise("in_proj_weight_sign_out", (batch, 3 * rows), query, kind="sign")
        if query is key and key is value:  # self-attention: one packed projection
            q, k, v = flipout_project(query, *_parts(in_draw), sign_in, sign_out).chunk(3, -1)
        else:
            q, k, v = (
                flipout_project(
                    x, *_parts(in_draw.rows(i * rows, (i + 1) * rows)), sign_in,
                    None if sign_out is None else sign_out[:, i * rows : (i + 1) * rows],
                )
                for i, x in enumerate((query, key, value))
            )  # fmt: skip
        heads = rows // self.head_dim
        if shard is not None and attn_mask is not None and attn_mask.dim() == 3:
            full = attn_mask.view(batch, self.num_heads, *attn_mask.shape[1:])  # (N, H, L, S)
            local = full[:, shard.index * heads : (shard.index + 1) * heads]
            attn_mask = local.reshape(-1, *attn_mask.shape[1:])  # (N h, L, S)
        out, weights = self.attend(
            q, k, v, key_padding_mask, attn_mask, need_weights=need_weights,
            average_attn_weights=average, is_causal=is_causal,
        )  # fmt: skip
        sign_in = sign_out = None
        if out_draw.per_example:
            proj = self.out_proj
            sign_in = proj.noise("weight_sign_in", (batch, rows), out, kind="sign")
            sign_out = proj.noise("weight_sign_out", (batch, self.embed_dim), out, kind="sign")
        bias = out_draw.bias
        out = flipout_project(
            out, out_draw.weight, out_draw.delta, bias if shard is None else None, sign_in,
            sign_out,
        )  # fmt: skip
        if shard is not None:
            out = shard.reduce(out)  # (L, N, E), summed over the shards' heads
            if bias is not None:
                out = out + bias
            if weights is not None:
                weights = shard.reduce(weights * (heads / self.num_heads))
        return out, weights

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        *,
        need_weights: bool = True,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> _Out:
        """Attention of projected queries, keys and values: the step between the input
        and the output projection, over the heads they hold (``E' / head_dim``; all
        heads, or a :class:`HeadShard`'s), with this layer's ``bias_k``/``bias_v``,
        ``add_zero_attn`` and dropout (in training), as ``nn.MultiheadAttention``.

        Args:
            q, k, v: projected queries, keys and values.
            key_padding_mask, attn_mask: as :meth:`forward`; ``attn_mask`` 3-d holds
                ``(N * heads, L, S)`` for the heads of ``q``.
            need_weights, average_attn_weights, is_causal: as :meth:`forward`.

        Shape:
            q: ``(L, N, E')``; k, v: ``(S, N, E')``; output ``(L, N, E')`` and the
            weights ``(N, L, S)`` (``(N, heads, L, S)`` unaveraged) or None.

        Example:
            >>> import torch
            >>> from bayesian_layers.layers import MultiheadAttentionFlipout
            >>> mha = MultiheadAttentionFlipout(8, 2)
            >>> q = torch.randn(5, 3, 8)  # (L, N, E), already projected
            >>> out, w = mha.attend(q, q, q)
            >>> out.shape, w.shape
            (torch.Size([5, 3, 8]), torch.Size([3, 5, 5]))
        """
        return attention_core(
            q, k, v, q.shape[-1] // self.head_dim, key_padding_mask, attn_mask,
            bias_k=self.bias_k, bias_v=self.bias_v, add_zero_attn=self.add_zero_attn,
            dropout_p=self.dropout if self.training else 0.0, need_weights=need_weights,
            average_attn_weights=average_attn_weights, is_causal=is_causal,
        )  # fmt: skip


def _parts(draw: WeightDraw) -> tuple[Tensor, Tensor | None, Tensor | None]:
    return draw.weight, draw.delta, draw.bias
