"""Head-parallel tensor parallelism for the Bayesian multi-head attention layers, and a
plan for whole transformer blocks (:func:`transformer_plan`).

See :mod:`bayesian_layers.distributed.tensor_parallel` for storage, noise and the KL.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from functools import partial
from typing import Any

from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard
from torch.distributed.tensor.parallel import ParallelStyle
from torch.distributed.tensor.placement_types import _StridedShard

from ..layers.attention.base import BayesianMultiheadAttention, HeadShard
from ..layers.registry import counterparts
from ._comm import CopyToParallel, reduce_from_parallel
from ._sharding import (
    TP_ATTR,
    ForkedCall,
    mesh_1d,
    param_names,
    shard_params,
    store_local_shapes,
)
from .tensor_parallel import BayesianColwiseParallel, BayesianRowwiseParallel

__all__ = ["BayesianAttentionParallel", "transformer_plan"]


def _is_dense(module: nn.Module) -> bool:
    """A Bayesian counterpart of ``nn.Linear`` (any estimator)."""
    return isinstance(module, tuple(counterparts(nn.Linear).values()))


class BayesianAttentionParallel(ParallelStyle):
    """Head-parallel tensor parallelism for a Bayesian multi-head attention layer.

    Rank ``r`` of ``N`` holds the heads ``[r H/N, (r+1) H/N)``: the rows of the
    packed input projection (``in_proj_weight_loc``/``_rho`` and ``in_proj_bias``,
    ``(3E, E)``) that compute their queries, keys and values (a strided shard of
    each of the three blocks, so ``full_tensor()`` gives the single-process
    layout), the matching columns of ``out_proj``'s weights and of ``bias_k``/
    ``bias_v``; ``out_proj``'s bias is replicated and must be deterministic. The
    layer computes its shard of the heads through its public ``head_shard``
    (:class:`~bayesian_layers.layers.attention.HeadShard`, set here once): a call
    projects the replicated input to the local heads, attends over them, applies
    the local columns of the output projection and sums the partial outputs with
    one all-reduce (one more backward, for the input's gradient). Noise is drawn
    per shard as in :class:`BayesianColwiseParallel`.

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
        if not isinstance(module, BayesianMultiheadAttention):
            raise TypeError(
                f"{style} expected a Bayesian multi-head attention layer, got "
                f"{type(module).__name__}"
            )
        mesh = mesh_1d(style, device_mesh)
        n = mesh.size()
        if module.num_heads % n:
            raise ValueError(
                f"{style} expected num_heads divisible by {n} ranks, got {module.num_heads}"
            )
        proj = module.out_proj
        bias = dict(proj.named_random_parameters()).get("bias")
        if bias is not None:
            raise NotImplementedError(
                f"{style} supports only a deterministic out_proj bias, got a "
                f"{type(bias.initializer).__name__} bias posterior"
            )
        packed = _StridedShard(0, split_factor=3)  # q, k and v rows of the local heads
        placement: dict[str, Any] = {
            name: packed
            for name, _ in module.named_parameters(recurse=False)
            if name.startswith("in_proj")
        }
        placement.update({"bias_k": Shard(2), "bias_v": Shard(2)})
        shard_params(module, mesh, placement)
        shard_params(proj, mesh, {p: Shard(1) for p in param_names(proj, "weight")})
        for m in (module, proj):
            store_local_shapes(m)
            setattr(m, TP_ATTR, (style, mesh))
        reduce = partial(reduce_from_parallel, group=mesh.get_group())
        module.head_shard = HeadShard(mesh.get_local_rank(), n, reduce)
        module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        module.register_forward_hook(self._post_hook, always_call=True)
        return module

    def _pre_hook(
        self, module: BayesianMultiheadAttention, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        _, mesh = getattr(module, TP_ATTR)
        saved = ForkedCall(mesh, (module, module.out_proj))
        module.__dict__[TP_ATTR + "_saved"] = saved
        # identity (self-attention) survives: one wrapped tensor per input object
        wrapped: dict[int, Tensor] = {}

        def wrap(x: object) -> object:
            if not isinstance(x, Tensor):
                return x
            if id(x) not in wrapped:
                wrapped[id(x)] = CopyToParallel.apply(x, mesh.get_group())
            return wrapped[id(x)]

        args = tuple(wrap(a) if i < 3 else a for i, a in enumerate(args))
        kwargs = {k: wrap(v) if k in ("query", "key", "value") else v for k, v in kwargs.items()}
        return args, kwargs

    def _post_hook(self, module: BayesianMultiheadAttention, args: tuple, out: Any) -> Any:
        saved = module.__dict__.pop(TP_ATTR + "_saved", None)
        if saved is not None:
            saved.restore()
        return out


# ------------------------------------------------------------------ the plan
def _patterns(kind: str, paths: object) -> tuple[str, ...]:
    if isinstance(paths, str):
        return (paths,)
    if not isinstance(paths, Sequence) or not all(isinstance(p, str) for p in paths):
        raise TypeError(f"transformer_plan expected `{kind}` to be a tuple of str, got {paths!r}")
    return tuple(paths)


def _dense_layers(block: nn.Module) -> dict[str, Any]:
    """The Bayesian dense layers of ``block`` by relative path, outside its attention layers."""
    attention = [n for n, m in block.named_modules() if isinstance(m, BayesianMultiheadAttention)]
    return {
        n: m
        for n, m in block.named_modules()
        if _is_dense(m) and not any(n.startswith(f"{a}.") for a in attention)
    }


def _match(dense: dict[str, Any], patterns: tuple[str, ...], used: set[str]) -> dict[str, Any]:
    out = {}
    for pattern in patterns:
        hits = {n: m for n, m in dense.items() if fnmatchcase(n, pattern)}
        used.update([pattern] if hits else [])
        out.update(hits)
    return out


def _check_pairs(block: str, col: dict[str, Any], row: dict[str, Any]) -> None:
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
    blocks: dict[str, Any] = {}
    for name, m in model.named_modules():
        if isinstance(m, BayesianMultiheadAttention):
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
