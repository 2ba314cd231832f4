"""Bayesian multi-head attention: drop-in replacements for ``nn.MultiheadAttention``.

The random parameters are the packed input projection ``in_proj_weight``
(``(3 E, E)``, posterior ``N(μ, σ²)``, trainable ``in_proj_weight_loc`` and
``in_proj_weight_rho``) and the output projection, the submodule ``out_proj``
(a :class:`~bayesian_layers.layers.LinearReparameterization` or
:class:`~bayesian_layers.layers.LinearFlipout`, as in torch). Biases are
deterministic zeros by default; ``bias_k``/``bias_v`` (``add_bias_kv=True``) are
plain parameters. ``layer.losses`` holds the input projection's terms and
``layer.out_proj.losses`` the output projection's; ``bl.losses(layer)`` collects both.

* :class:`MultiheadAttentionReparameterization`: one whole draw of every weight
  per call, shared by the batch, then torch's own
  ``F.multi_head_attention_forward`` (masks, dropout, ``need_weights``).
* :class:`MultiheadAttentionFlipout`: the projections use Flipout (Wen et al.
  2018) with random signs per *example* (per sequence in the batch), shared by
  all its positions, so each sequence sees one pseudo-independent function;
  the attention itself follows torch's math step by step.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..initializers import TrainableInitializer
from ..regularizers import Regularizer
from ._util import rademacher as _rademacher
from .base import BayesianLayer
from .functional.attention import attention_core, flipout_project
from .linear import LinearFlipout, LinearReparameterization, _BayesianLinear

__all__ = ["MultiheadAttentionReparameterization", "MultiheadAttentionFlipout"]

_Out = tuple[Tensor, Tensor | None]


def _copy_spec(spec: object) -> object:
    """A private copy of an initializer/regularizer module (strings pass through)."""
    return copy.deepcopy(spec) if isinstance(spec, nn.Module) else spec


class _BayesianMultiheadAttention(BayesianLayer):
    """Parameters, validation, masks and vectorised samples shared by the estimators."""

    _linear_cls: type[_BayesianLinear] = LinearReparameterization

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
        for arg, val in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if not isinstance(val, int) or isinstance(val, bool):
                raise TypeError(f"{name} expected `{arg}` to be an int, got {type(val).__name__}")
            if val <= 0:
                raise ValueError(f"{name} expected `{arg}` > 0, got {val}")
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
        self.add_param(
            "in_proj_weight", (3 * embed_dim, embed_dim), weight_initializer, weight_regularizer,
            fan_in=embed_dim, fan_out=embed_dim, device=device, dtype=dtype,
        )  # fmt: skip
        if self.use_bias:
            self.add_param(
                "in_proj_bias", (3 * embed_dim,), bias_initializer, bias_regularizer,
                fan_in=embed_dim, fan_out=embed_dim, device=device, dtype=dtype,
            )  # fmt: skip
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
            weight_initializer=_copy_spec(weight_initializer),  # type: ignore[arg-type]
            bias_initializer=_copy_spec(bias_initializer),  # type: ignore[arg-type]
            weight_regularizer=_copy_spec(weight_regularizer),  # type: ignore[arg-type]
            bias_regularizer=_copy_spec(bias_regularizer),  # type: ignore[arg-type]
            device=device, dtype=dtype,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
            f"bias={self.use_bias}, batch_first={self.batch_first}"
        )

    def resample(self) -> None:
        """Forget the frozen function sample of both projections."""
        super().resample()
        self.out_proj.resample()

    # ------------------------------------------------------------- validation
    def _check_inputs(
        self, query: object, key: object, value: object
    ) -> tuple[Tensor, Tensor, Tensor]:
        name = type(self).__name__
        q, k, v = (
            self.check_input(t, what)
            for t, what in zip((query, key, value), ("query", "key", "value"), strict=True)
        )
        for what, t in (("query", q), ("key", k), ("value", v)):
            if t.dim() not in (2, 3) or t.shape[-1] != self.embed_dim:
                raise ValueError(
                    f"{name} expected {what} of shape (L, {self.embed_dim}) or 3-d with last "
                    f"dimension embed_dim={self.embed_dim}, got {tuple(t.shape)}"
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
        batch_dim = 0 if self.batch_first else 1
        if q.dim() == 3 and q.shape[batch_dim] != k.shape[batch_dim]:
            raise ValueError(
                f"{name} expected query and key with the same batch size (dim {batch_dim}), "
                f"got {tuple(q.shape)} and {tuple(k.shape)}"
            )
        return q, k, v

    def _check_masks(
        self,
        tgt: int,
        src: int,
        batch: int,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
        is_causal: bool,
    ) -> None:
        name = type(self).__name__
        for what, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            if mask is not None:
                self._check_mask_dtype(what, mask)
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, src):
            raise ValueError(
                f"{name} expected key_padding_mask of shape (N, S) = {(batch, src)}, got "
                f"{tuple(key_padding_mask.shape)}"
            )
        if attn_mask is not None:
            shapes = ((tgt, src), (batch * self.num_heads, tgt, src))
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

    def _check_mask_dtype(self, what: str, mask: object) -> None:
        """A mask is boolean or of the parameters' dtype (or autocast's), as torch's."""
        name = type(self).__name__
        if not isinstance(mask, Tensor):
            raise TypeError(f"{name} expected `{what}` to be a Tensor, got {type(mask).__name__}")
        dtype = self.param_dtype()
        if mask.dtype in (torch.bool, dtype):
            return
        device = mask.device.type
        if torch.is_autocast_enabled(device) and mask.dtype == torch.get_autocast_dtype(device):
            return
        raise TypeError(
            f"{name} expected `{what}` of dtype torch.bool or {dtype}, got {mask.dtype}"
        )

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
        query, key, value = self._check_inputs(query, key, value)
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
        self._check_masks(tgt, key.shape[0], batch, key_padding_mask, attn_mask, is_causal)
        k = self.num_function_samples
        if k > 1 and batch % k:
            raise ValueError(
                f"{type(self).__name__} is drawing {k} function samples at once and expected a "
                f"batch size that is a multiple of {k} (samples folded into the batch, "
                f"sample-major), got {batch}"
            )
        args = (need_weights, average_attn_weights, is_causal)
        draws = self._draw()
        if k == 1:
            out, weights = self._attend(
                query, key, value, key_padding_mask, attn_mask, args, draws, None
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
                parts.append(self._attend(qs, ks, vs, kpm[j], am[j], args, draws, j))
            out = torch.cat([p[0] for p in parts], 1)
            weights = None if parts[0][1] is None else torch.cat([p[1] for p in parts], 0)  # type: ignore[misc]
        if not batched:
            return out.squeeze(1), None if weights is None else weights.squeeze(0)
        return (out.transpose(0, 1) if self.batch_first else out), weights

    def _draw(self) -> dict[str, Tensor | None]:
        raise NotImplementedError

    def _attend(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
        args: tuple[bool, bool, bool],
        draws: dict[str, Tensor | None],
        j: int | None,
    ) -> _Out:
        raise NotImplementedError

    def _whole_draws(self) -> dict[str, Tensor | None]:
        """Whole draws (``"sample"``/``"frozen"``) or posterior means of all four weights."""
        proj = self.out_proj
        return {
            "in_w": self.sample_param("in_proj_weight"),
            "in_b": self.sample_param("in_proj_bias") if self.use_bias else None,
            "out_w": proj.sample_param("weight"),
            "out_b": proj.sample_param("bias") if proj.use_bias else None,
        }

    def _pick(self, draws: dict[str, Tensor | None], j: int | None) -> list[Tensor | None]:
        """The j-th of K draws (parameters without a sample dimension are shared)."""
        dims = {"in_w": 2, "in_b": 1, "out_w": 2, "out_b": 1}
        out = []
        for key, t in draws.items():
            out.append(t[j] if t is not None and j is not None and t.dim() > dims[key] else t)
        return out

    def _torch_attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        attn_mask: Tensor | None,
        args: tuple[bool, bool, bool],
        weights: list[Tensor | None],
    ) -> _Out:
        in_w, in_b, out_w, out_b = weights
        need_weights, average, is_causal = args
        return F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, in_w, in_b, self.bias_k,
            self.bias_v, self.add_zero_attn, self.dropout, out_w, out_b,  # type: ignore[arg-type]
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average, is_causal=is_causal,
        )  # fmt: skip


class MultiheadAttentionReparameterization(_BayesianMultiheadAttention):
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

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.attention import MultiheadAttentionReparameterization
        >>> mha = MultiheadAttentionReparameterization(8, 2, batch_first=True)
        >>> x = torch.randn(3, 5, 8)
        >>> out, w = mha(x, x, x)
        >>> out.shape, w.shape
        (torch.Size([3, 5, 8]), torch.Size([3, 5, 5]))
    """

    _linear_cls = LinearReparameterization

    def _draw(self) -> dict[str, Tensor | None]:
        return self._whole_draws()

    def _attend(self, query, key, value, key_padding_mask, attn_mask, args, draws, j) -> _Out:  # type: ignore[no-untyped-def]
        weights = self._pick(draws, j)
        return self._torch_attention(query, key, value, key_padding_mask, attn_mask, args, weights)


class MultiheadAttentionFlipout(_BayesianMultiheadAttention):
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

    _linear_cls = LinearFlipout

    def __init__(self, embed_dim: int, num_heads: int, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(embed_dim, num_heads, *args, **kwargs)
        init = self._inits["in_proj_weight"]
        if not (init.is_normal or init.is_deterministic):
            raise ValueError(
                f"{type(self).__name__} needs a normal (or deterministic) in_proj_weight "
                f"posterior, got {type(init).__name__}; use MultiheadAttentionReparameterization "
                "for other families"
            )

    def _per_example(self) -> bool:
        return self.per_example_noise()

    def _draw(self) -> dict[str, Tensor | None]:
        if not self._per_example():
            return self._whole_draws()
        proj = self.out_proj
        k = self.num_function_samples
        draws: dict[str, Tensor | None] = {}
        for key, layer, name in (("in", self, "in_proj_weight"), ("out", proj, "weight")):
            init = layer._inits[name]
            if init.is_deterministic:
                draws[f"{key}_w"], draws[f"{key}_delta"] = layer.point(name), None
                continue
            loc, scale = init.loc_scale(layer, name)
            shape = loc.shape if k == 1 else (k,) + loc.shape
            draws[f"{key}_w"] = loc
            draws[f"{key}_delta"] = scale * torch.randn(shape, dtype=loc.dtype, device=loc.device)
        draws["in_b"] = self.sample_param("in_proj_bias") if self.use_bias else None
        draws["out_b"] = proj.sample_param("bias") if proj.use_bias else None
        return draws

    def _attend(self, query, key, value, key_padding_mask, attn_mask, args, draws, j) -> _Out:  # type: ignore[no-untyped-def]
        if not self._per_example():
            picked = self._pick(draws, j)
            return self._torch_attention(
                query, key, value, key_padding_mask, attn_mask, args, picked
            )

        def pick(name: str, dim: int) -> Tensor | None:
            t = draws[name]
            return t[j] if t is not None and j is not None and t.dim() > dim else t

        e, batch = self.embed_dim, query.shape[1]
        in_w, in_delta, in_b = pick("in_w", 2), pick("in_delta", 2), pick("in_b", 1)
        sign_in = _rademacher(torch.Size((batch, e)), query)  # (N, E), one per sequence
        sign_out = _rademacher(torch.Size((batch, 3 * e)), query)  # (N, 3E)
        if query is key and key is value:  # self-attention: one packed projection
            q, k, v = flipout_project(query, in_w, in_delta, in_b, sign_in, sign_out).chunk(3, -1)  # type: ignore[arg-type]
        else:
            rows = [slice(i * e, (i + 1) * e) for i in range(3)]
            q, k, v = (
                flipout_project(
                    x, in_w[r], None if in_delta is None else in_delta[r],  # type: ignore[index]
                    None if in_b is None else in_b[r], sign_in, sign_out[:, r],
                )
                for x, r in zip((query, key, value), rows, strict=True)
            )  # fmt: skip
        out, weights = attention_core(self, q, k, v, key_padding_mask, attn_mask, *args)
        sign_in = _rademacher(torch.Size((batch, e)), query)
        sign_out = _rademacher(torch.Size((batch, e)), query)
        out_w = pick("out_w", 2)
        assert out_w is not None  # the posterior mean or a deterministic weight
        out = flipout_project(out, out_w, pick("out_delta", 2), pick("out_b", 1), sign_in, sign_out)
        return out, weights
