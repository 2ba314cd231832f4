"""Head-parallel tensor parallelism for the Bayesian multi-head attention layers, and a
plan for whole transformer blocks (:func:`transformer_plan`).

See :mod:`bayesian_layers.distributed.tensor_parallel` for storage, noise and the KL.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard
from torch.distributed.tensor.parallel import ParallelStyle
from torch.distributed.tensor.placement_types import _StridedShard

from ..layers._util import rademacher as _rademacher
from ..layers.attention import _BayesianMultiheadAttention
from ..layers.functional.attention import attention_core, flipout_project
from ..layers.linear import _BayesianLinear
from .tensor_parallel import (
    TP_ATTR,
    BayesianColwiseParallel,
    BayesianRowwiseParallel,
    _CopyToParallel,
    _ForkedCall,
    _mesh_1d,
    _param_names,
    _shard_params,
    _store_local_shapes,
    reduce_from_parallel,
)

__all__ = ["BayesianAttentionParallel", "transformer_plan"]


class BayesianAttentionParallel(ParallelStyle):
    """Head-parallel tensor parallelism for a Bayesian multi-head attention layer.

    Rank ``r`` of ``N`` holds the heads ``[r H/N, (r+1) H/N)``: the rows of the
    packed input projection (``in_proj_weight_loc``/``_rho`` and ``in_proj_bias``,
    ``(3E, E)``) that compute their queries, keys and values (a strided shard of
    each of the three blocks, so ``full_tensor()`` gives the single-process
    layout), the matching columns of ``out_proj``'s weights and of ``bias_k``/
    ``bias_v``; ``out_proj``'s bias is replicated and must be deterministic. A
    call projects the replicated input to the local heads, attends over them,
    applies the local columns of the output projection and sums the partial
    outputs with one all-reduce (one more backward, for the input's gradient).
    Noise is drawn per shard as in :class:`BayesianColwiseParallel`.

    Works for :class:`~bayesian_layers.layers.MultiheadAttentionReparameterization`
    and :class:`~bayesian_layers.layers.MultiheadAttentionFlipout` in every
    sampling mode, with masks and dropout; ``num_heads`` must be divisible by
    ``N``. Attention weights (``need_weights=True``) are returned averaged over
    all heads; per-head weights raise ``NotImplementedError``.

    Shape:
        As the layer: inputs and output replicated on every rank.
    """

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        style = type(self).__name__
        if not isinstance(module, _BayesianMultiheadAttention):
            raise TypeError(
                f"{style} expected a Bayesian multi-head attention layer, got "
                f"{type(module).__name__}"
            )
        mesh = _mesh_1d(style, device_mesh)
        n = mesh.size()
        if module.num_heads % n:
            raise ValueError(
                f"{style} expected num_heads divisible by {n} ranks, got {module.num_heads}"
            )
        proj = module.out_proj
        init = proj._inits.get("bias")
        if init is not None and not init.is_deterministic:
            raise NotImplementedError(
                f"{style} supports only a deterministic out_proj bias, got a "
                f"{type(init).__name__} bias posterior"
            )
        packed = _StridedShard(0, split_factor=3)  # q, k and v rows of the local heads
        placement: dict[str, Any] = {
            name: packed for name in module._parameters if name.startswith("in_proj")
        }
        placement.update({"bias_k": Shard(2), "bias_v": Shard(2)})
        _shard_params(module, mesh, placement)
        _shard_params(proj, mesh, {p: Shard(1) for p in _param_names(proj, "weight")})
        for m in (module, proj):
            _store_local_shapes(m)
            setattr(m, TP_ATTR, (style, mesh))
        module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        module.register_forward_hook(self._post_hook, always_call=True)
        return module

    def _pre_hook(
        self, module: _BayesianMultiheadAttention, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        _, mesh = getattr(module, TP_ATTR)
        saved = _ForkedCall(mesh, (module, module.out_proj))
        module.__dict__[TP_ATTR + "_saved"] = saved
        module.__dict__["_attend"] = partial(_head_parallel_attend, module, mesh)
        # identity (self-attention) survives: one wrapped tensor per input object
        wrapped: dict[int, Tensor] = {}

        def wrap(x: object) -> object:
            if not isinstance(x, Tensor):
                return x
            if id(x) not in wrapped:
                wrapped[id(x)] = _CopyToParallel.apply(x, mesh.get_group())
            return wrapped[id(x)]

        args = tuple(wrap(a) if i < 3 else a for i, a in enumerate(args))
        kwargs = {k: wrap(v) if k in ("query", "key", "value") else v for k, v in kwargs.items()}
        return args, kwargs

    def _post_hook(self, module: _BayesianMultiheadAttention, args: tuple, out: Any) -> Any:
        module.__dict__.pop("_attend", None)
        saved = module.__dict__.pop(TP_ATTR + "_saved", None)
        if saved is not None:
            saved.restore()
        return out


class _LocalHeads:
    """The attributes ``attention_core`` reads, for the local heads (a plain class, which
    ``torch.compile`` traces; a ``SimpleNamespace`` breaks the graph)."""

    def __init__(self, module: _BayesianMultiheadAttention, heads: int) -> None:
        self.num_heads, self.head_dim = heads, module.head_dim
        self.dropout, self.training = module.dropout, module.training
        self.bias_k, self.bias_v = module.bias_k, module.bias_v
        self.add_zero_attn = module.add_zero_attn


_BASE_DIMS = {"in_w": 2, "in_delta": 2, "in_b": 1, "out_w": 2, "out_delta": 2, "out_b": 1}


def _head_parallel_attend(
    module: _BayesianMultiheadAttention,
    mesh: DeviceMesh,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None,
    attn_mask: Tensor | None,
    args: tuple[bool, bool, bool],
    draws: dict[str, Tensor | None],
    j: int | None,
) -> tuple[Tensor, Tensor | None]:
    """The layer's ``_attend`` over the local heads, then the all-reduced output projection.

    Shape:
        query: ``(L, N, E)``; key, value: ``(S, N, E)``; output ``(L, N, E)``.
    """
    need_weights, average, is_causal = args
    if need_weights and not average:
        raise NotImplementedError(
            f"{type(module).__name__} under {BayesianAttentionParallel.__name__} returns "
            "attention weights averaged over heads only (average_attn_weights=True)"
        )
    n, rank = mesh.size(), mesh.get_local_rank()
    w = {
        k: (t[j] if t is not None and j is not None and t.dim() > _BASE_DIMS[k] else t)
        for k in _BASE_DIMS
        for t in [draws.get(k)]
    }
    e, heads = module.embed_dim // n, module.num_heads // n
    batch = query.shape[1]
    per_example = w["in_delta"] is not None or w["out_delta"] is not None
    sign_in = _rademacher(torch.Size((batch, module.embed_dim)), query) if per_example else query
    sign_out = _rademacher(torch.Size((batch, 3 * e)), query) if per_example else query
    if query is key and key is value:  # self-attention: one packed projection
        proj = flipout_project(query, w["in_w"], w["in_delta"], w["in_b"], sign_in, sign_out)  # type: ignore[arg-type]
        q, k, v = proj.chunk(3, -1)  # (L, N, E / n) each
    else:
        rows = [slice(i * e, (i + 1) * e) for i in range(3)]
        q, k, v = (
            flipout_project(
                x, w["in_w"][r],  # type: ignore[index]
                None if w["in_delta"] is None else w["in_delta"][r],
                None if w["in_b"] is None else w["in_b"][r],
                sign_in, sign_out[:, r] if per_example else sign_out,
            )
            for x, r in zip((query, key, value), rows, strict=True)
        )  # fmt: skip
    if attn_mask is not None and attn_mask.dim() == 3:  # (N H, L, S): the local heads
        full = attn_mask.view(batch, module.num_heads, *attn_mask.shape[1:])
        attn_mask = full[:, rank * heads : (rank + 1) * heads].reshape(-1, *attn_mask.shape[1:])
    local = _LocalHeads(module, heads)
    out, weights = attention_core(local, q, k, v, key_padding_mask, attn_mask, *args)  # type: ignore[arg-type]
    if per_example:
        sign_in = _rademacher(torch.Size((batch, e)), query)
        sign_out = _rademacher(torch.Size((batch, module.embed_dim)), query)
    out = flipout_project(out, w["out_w"], w["out_delta"], None, sign_in, sign_out)  # type: ignore[arg-type]
    out = reduce_from_parallel(out, mesh.get_group())  # (L, N, E), summed over the heads
    if w["out_b"] is not None:
        out = out + w["out_b"]
    if weights is not None:
        weights = reduce_from_parallel(weights, mesh.get_group()) / n
    return out, weights


# ------------------------------------------------------------------ the plan
def _patterns(kind: str, paths: object) -> tuple[str, ...]:
    if isinstance(paths, str):
        return (paths,)
    if not isinstance(paths, Sequence) or not all(isinstance(p, str) for p in paths):
        raise TypeError(f"transformer_plan expected `{kind}` to be a tuple of str, got {paths!r}")
    return tuple(paths)


def _dense_layers(block: nn.Module) -> dict[str, _BayesianLinear]:
    """The Bayesian dense layers of ``block`` by relative path, outside its attention layers."""
    attention = [n for n, m in block.named_modules() if isinstance(m, _BayesianMultiheadAttention)]
    return {
        n: m
        for n, m in block.named_modules()
        if isinstance(m, _BayesianLinear) and not any(n.startswith(f"{a}.") for a in attention)
    }


def _match(
    dense: dict[str, _BayesianLinear], patterns: tuple[str, ...], used: set[str]
) -> dict[str, _BayesianLinear]:
    out = {}
    for pattern in patterns:
        hits = {n: m for n, m in dense.items() if fnmatchcase(n, pattern)}
        used.update([pattern] if hits else [])
        out.update(hits)
    return out


def _check_pairs(
    block: str, col: dict[str, _BayesianLinear], row: dict[str, _BayesianLinear]
) -> None:
    """Every column-wise layer needs a row-wise one that takes its sharded output, and back."""
    both = sorted(col.keys() & row.keys())
    if both:
        raise ValueError(
            f"transformer_plan matched {both} in block {block!r} as both colwise and rowwise"
        )
    outs = sorted(m.out_features for m in col.values())
    ins = sorted(m.in_features for m in row.values())
    for size in set(outs) | set(ins):
        if outs.count(size) == ins.count(size):
            continue
        lonely, kind, partner, attr = (
            (col, "column-wise", "row-wise", "out_features")
            if outs.count(size) > ins.count(size)
            else (row, "row-wise", "column-wise", "in_features")
        )
        name = next(n for n, m in lonely.items() if getattr(m, attr) == size)
        raise ValueError(
            f"transformer_plan found the {kind} layer {name!r} ({attr}={size}) in block "
            f"{block!r} without a {partner} partner of matching size: a column-wise layer "
            "returns a shard of its features, which only a row-wise layer takes"
        )


def transformer_plan(
    model: nn.Module,
    *,
    colwise: Sequence[str] = ("ff.0",),
    rowwise: Sequence[str] = ("ff.2",),
) -> dict[str, ParallelStyle]:
    """A tensor-parallel plan for every transformer block of ``model``.

    Every Bayesian attention layer gets :class:`BayesianAttentionParallel`; in each
    block (a module that holds one), the Bayesian dense layers whose relative
    paths match ``colwise`` get :class:`BayesianColwiseParallel` and those
    matching ``rowwise`` :class:`BayesianRowwiseParallel` (the feed-forward pair).
    Paths may be shell-style patterns (``"mlp.fc*"``, ``"experts.*.w1"``).

    Args:
        model: the model; its attention layers mark the blocks.
        colwise: relative paths or patterns of the first feed-forward layers.
        rowwise: relative paths or patterns of the second ones.

    Returns:
        ``{module path: style}`` for ``parallelize_module(model, mesh, plan)``.

    Raises:
        ValueError: no Bayesian attention layer; a path or pattern that matches no
            Bayesian dense layer in any block (the message lists the block's);
            a layer matched as both; a column-wise layer without a row-wise layer
            of matching size in its block, or the reverse.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> class Block(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.attn = bl.layers.MultiheadAttentionFlipout(8, 2)
        ...         self.fc1 = bl.layers.LinearFlipout(8, 32)
        ...         self.fc2 = bl.layers.LinearFlipout(32, 8)
        >>> model = torch.nn.Sequential(Block(), Block())
        >>> plan = bl.distributed.transformer_plan(model, colwise=("fc1",), rowwise=("fc2",))
        >>> sorted(plan)[:3]
        ['0.attn', '0.fc1', '0.fc2']
    """
    col_patterns, row_patterns = _patterns("colwise", colwise), _patterns("rowwise", rowwise)
    plan: dict[str, ParallelStyle] = {}
    blocks: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if isinstance(m, _BayesianMultiheadAttention):
            plan[name] = BayesianAttentionParallel()
            block = name.rpartition(".")[0]
            blocks.setdefault(block, model.get_submodule(block) if block else model)
    if not plan:
        raise ValueError("transformer_plan found no Bayesian attention layer in the model")
    used: set[str] = set()
    seen: dict[str, None] = {}
    matched = {}
    for block, parent in blocks.items():
        dense = _dense_layers(parent)
        seen.update(dict.fromkeys(dense))
        matched[block] = _match(dense, col_patterns, used), _match(dense, row_patterns, used)
    for kind, patterns in (("colwise", col_patterns), ("rowwise", row_patterns)):
        for pattern in patterns:
            if pattern not in used:
                raise ValueError(
                    f"transformer_plan expected every `{kind}` path to match a Bayesian dense "
                    f"layer of a block, got {pattern!r}, which matches none; the blocks' "
                    f"dense layers are {list(seen)}"
                )
    for block, (col, row) in matched.items():
        _check_pairs(block, col, row)
        prefix = f"{block}." if block else ""
        plan.update({prefix + n: BayesianColwiseParallel() for n in col})
        plan.update({prefix + n: BayesianRowwiseParallel() for n in row})
    return plan
