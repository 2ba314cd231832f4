"""Training Bayesian layers with ``torch.distributed``: the ELBO, seeds, the KL, plans.

Use as ``bl.distributed.X``. The engine is torch's own: ``DistributedDataParallel``,
FSDP2 (``torch.distributed.fsdp.fully_shard``) and DTensor tensor parallelism
(``parallelize_module`` with the styles of :mod:`bayesian_layers.tensor_parallel`,
re-exported here).

**The distributed ELBO.** With ``R`` data-parallel ranks, rank ``r`` holding
``b_r`` of a global batch of ``B`` examples and a training set of ``N`` examples,
the per-example negative ELBO of the step is
``sum_r nll_sum_r / B + KL / N``. DDP and FSDP2 *average* gradients over the
ranks, and under both every rank holds the whole KL (DDP keeps full
replicas; FSDP2 gathers the full parameters for the forward pass). So rank
``r`` minimises ``R nll_sum_r / B + KL / N``: the average of the ``R`` identical
KL gradients is the KL gradient once, and the average of the ``R`` likelihood
terms is the global mean. :func:`elbo_loss` returns exactly that. Under FSDP2
compute the KL inside the forward pass (:class:`WithKL`), where the parameters
are whole. Under tensor parallelism the KL of the sharded layers is summed over
the shards with one all-reduce (:func:`kl_divergence`), and the ranks of a
group see the same batch: pass ``data_parallel_size=1``.

**Seeds.** :func:`manual_seed` seeds torch's default generator from
``(seed, rank)``: data-parallel ranks draw independent noise, the run is
reproducible from one seed, and ranks of one tensor-parallel group (same
data-parallel rank) share their stream, as the tensor-parallel styles need.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ParallelStyle

from .layers.attention import _BayesianMultiheadAttention
from .layers.base import BayesianLayer
from .tensor_parallel import (
    TP_ATTR,
    BayesianColwiseParallel,
    BayesianRowwiseParallel,
    _is_sharded,
    _param_names,
    derive_seed,
    local_view,
    reduce_from_parallel,
)
from .tensor_parallel_attention import BayesianAttentionParallel

__all__ = [
    "manual_seed",
    "elbo_loss",
    "kl_divergence",
    "WithKL",
    "transformer_plan",
    "parameter_bytes",
    "clip_grad_norm_",
    "BayesianColwiseParallel",
    "BayesianRowwiseParallel",
    "BayesianAttentionParallel",
]


def _default_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def manual_seed(seed: int, *, rank: int | None = None) -> int:
    """Seed torch's default generator with a seed derived from ``(seed, rank)``.

    Args:
        seed: the one seed of the run.
        rank: the *data-parallel* rank (default: the global rank, or 0 without a
            process group). Ranks of one tensor-parallel group must pass the
            same value, e.g. ``rank=0`` for pure tensor parallelism.

    Returns:
        The derived seed (a 63-bit int), e.g. for a single-process reference.

    Example:
        >>> import bayesian_layers as bl
        >>> s0 = bl.distributed.manual_seed(7, rank=0)
        >>> s0 == bl.distributed.manual_seed(7, rank=0) != bl.distributed.manual_seed(7, rank=1)
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"manual_seed expected an int `seed`, got {type(seed).__name__}")
    rank = _default_rank() if rank is None else rank
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"manual_seed expected `rank` to be an int >= 0, got {rank!r}")
    derived = derive_seed(seed, rank)
    torch.manual_seed(derived)
    return derived


def kl_divergence(model: nn.Module) -> Tensor:
    """The total regularizer (KL) of ``model``, counted once across tensor-parallel shards.

    Layers parallelised by the Bayesian styles compute each term on their local
    shards; the sharded terms of all layers are summed and reduced with one
    all-reduce (its gradient passes through unchanged), replicated terms are
    added once. Without tensor parallelism it equals ``sum(bl.losses(model))``.
    Regularizers must be sums over elements (true of the closed-form and
    Monte Carlo KLs of mean-field posteriors).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"kl_divergence expected an nn.Module, got {type(model).__name__}")
    replicated: list[Tensor] = []
    sharded: dict[object, list[Tensor]] = {}
    tp_layers = [m for m in model.modules() if isinstance(m, BayesianLayer) and hasattr(m, TP_ATTR)]
    tp_ids = {id(m) for m in tp_layers}
    for m in model.modules():
        if id(m) in tp_ids or not isinstance(getattr(type(m), "losses", None), property):
            continue
        replicated.extend(m.losses)  # type: ignore[arg-type]
    for layer in tp_layers:
        _, mesh = getattr(layer, TP_ATTR)
        with local_view(layer) as placed:
            inits = layer._inits
            try:
                for name in list(inits):
                    layer._inits = {name: inits[name]}
                    terms = layer.losses
                    if not terms:
                        continue
                    is_sharded = any(placed.get(p, False) for p in _param_names(layer, name))
                    target = sharded.setdefault(mesh, []) if is_sharded else replicated
                    target.extend(terms)
            finally:
                layer._inits = inits
    total: Tensor | None = None
    for mesh, terms in sharded.items():
        part = reduce_from_parallel(torch.stack(terms).sum(), mesh.get_group())  # type: ignore[attr-defined]
        total = part if total is None else total + part
    if replicated:
        rest = torch.stack(replicated).sum()
        total = rest if total is None else total + rest
    if total is None:
        return torch.zeros(())
    return total


def elbo_loss(
    nll_sum: Tensor,
    num_examples: int,
    *,
    global_batch_size: int,
    model: nn.Module | None = None,
    kl: Tensor | None = None,
    data_parallel_size: int | None = None,
    kl_weight: float = 1.0,
) -> Tensor:
    """This rank's loss whose data-parallel-averaged gradient is the global negative ELBO's.

    Returns ``data_parallel_size * nll_sum / global_batch_size + kl_weight * KL / num_examples``
    (see the module docstring for the derivation). With one process it is the
    usual ``nll_mean + KL / N`` of :func:`bayesian_layers.elbo_loss`.

    Args:
        nll_sum: the negative log-likelihood *summed* over this rank's examples.
        num_examples: the size of the whole training set, ``N``.
        global_batch_size: examples in this step over all data-parallel ranks, ``B``.
        model: the model whose KL to add (via :func:`kl_divergence`); or
        kl: the KL already computed (e.g. returned by :class:`WithKL` under FSDP2).
        data_parallel_size: ranks that average gradients (default: the world
            size); 1 for pure tensor parallelism.
        kl_weight: tempers the KL (1 is the ELBO).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = bl.layers.LinearReparameterization(3, 1)
        >>> nll = layer(torch.randn(4, 3)).square().sum()
        >>> loss = bl.distributed.elbo_loss(nll, 1000, global_batch_size=4, model=layer)
        >>> torch.allclose(loss, nll / 4 + sum(layer.losses) / 1000)
        True
    """
    if num_examples <= 0 or global_batch_size <= 0:
        raise ValueError(
            f"elbo_loss expected `num_examples` and `global_batch_size` > 0, got "
            f"{num_examples} and {global_batch_size}"
        )
    if (model is None) == (kl is None):
        raise ValueError("elbo_loss expected exactly one of `model` and `kl`")
    if data_parallel_size is None:
        data_parallel_size = dist.get_world_size() if dist.is_initialized() else 1
    if data_parallel_size < 1:
        raise ValueError(f"elbo_loss expected `data_parallel_size` >= 1, got {data_parallel_size}")
    if kl is None:
        kl = kl_divergence(model)  # type: ignore[arg-type]
    return data_parallel_size * nll_sum / global_batch_size + (kl_weight / num_examples) * kl


class WithKL(nn.Module):
    """Wraps a model so that its forward returns ``(output, KL)``.

    The KL is :func:`kl_divergence`'s: tensor-parallel shards are counted once.

    Under FSDP2 the parameters are whole only inside the forward pass, so the KL
    must be computed there; under DDP it is equivalent to computing it after.
    Wrap first, then shard: ``fully_shard(WithKL(model))``; inner FSDP units need
    ``reshard_after_forward=False`` so that their parameters are still whole
    when the wrapper takes the KL at the end of the forward pass.

    Args:
        model: any module with Bayesian layers.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> net = bl.distributed.WithKL(bl.layers.LinearFlipout(3, 2))
        >>> out, kl = net(torch.randn(5, 3))
        >>> out.shape, kl.shape
        (torch.Size([5, 2]), torch.Size([]))
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"WithKL expected an nn.Module, got {type(model).__name__}")
        self.model = model

    def forward(self, *args: object, **kwargs: object) -> tuple[object, Tensor]:
        out = self.model(*args, **kwargs)
        return out, kl_divergence(self.model)


def transformer_plan(
    model: nn.Module,
    *,
    colwise: tuple[str, ...] = ("ff.0",),
    rowwise: tuple[str, ...] = ("ff.2",),
) -> dict[str, ParallelStyle]:
    """A tensor-parallel plan for every transformer block of ``model``.

    Every Bayesian attention layer gets :class:`BayesianAttentionParallel`; in each
    module that holds one, the dense layers at the relative paths ``colwise``
    get :class:`BayesianColwiseParallel` and those at ``rowwise``
    :class:`BayesianRowwiseParallel` (the feed-forward pair).

    Returns:
        ``{module path: style}`` for ``parallelize_module(model, mesh, plan)``.
    """
    plan: dict[str, ParallelStyle] = {}
    names = {m: n for n, m in model.named_modules()}
    for name, m in model.named_modules():
        if not isinstance(m, _BayesianMultiheadAttention):
            continue
        plan[name] = BayesianAttentionParallel()
        block = name.rpartition(".")[0]
        parent = model.get_submodule(block) if block else model
        for rel, style in [(c, BayesianColwiseParallel) for c in colwise] + [
            (r, BayesianRowwiseParallel) for r in rowwise
        ]:
            try:
                sub = parent.get_submodule(rel)
            except AttributeError:
                continue
            plan[names[sub]] = style()
    if not plan:
        raise ValueError("transformer_plan found no Bayesian attention layer in the model")
    return plan


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for a tensor-parallel model (2-norm).

    torch's version refuses a mix of DTensor and plain parameters, which a
    model with some parallelised layers has. Here the squares of the local
    shards of sharded gradients are summed over their mesh with one all-reduce
    each, and replicated and plain gradients are counted once.

    Returns:
        The total gradient norm before clipping (a scalar, the same on every rank).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    locals_ = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    device = locals_[0].device if locals_ else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=device)
    sharded: dict[DeviceMesh, Tensor] = {}
    for g, local in zip(grads, locals_, strict=True):
        square = local.double().square().sum()
        if isinstance(g, DTensor) and _is_sharded(g.placements):
            mesh = g.device_mesh
            sharded[mesh] = sharded[mesh] + square if mesh in sharded else square
        else:
            total += square
    for group_mesh, part in sharded.items():
        dist.all_reduce(part, group=group_mesh.get_group())
        total += part
    norm = total.sqrt()
    # as torch's clip_grad_norm_: a clamped factor, no host synchronisation
    factor = (float(max_norm) / (norm + 1e-6)).clamp(max=1.0)
    for local in locals_:
        local.mul_(factor.to(local.device, local.dtype))
    return norm.float()


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters held by this rank (local shards of DTensors)."""
    total = 0
    for p in model.parameters():
        t = p.to_local() if hasattr(p, "to_local") else p
        total += t.numel() * t.element_size()
    return total
