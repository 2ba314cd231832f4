"""Data parallel training of Bayesian layers: per-rank seeds, the KL split across shards
(:class:`WithKL` inside the forward pass), gradient clipping; the ELBO built on them is in
:mod:`bayesian_layers.distributed.elbo`. Public names: :mod:`bayesian_layers.distributed`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from ..layers.base import BayesianLayer
from ._comm import derive_seed, reduce_from_parallel, world
from ._sharding import TP_ATTR, is_sharded, local_view, param_names

__all__ = [
    "manual_seed",
    "kl_divergence",
    "WithKL",
    "parameter_bytes",
    "clip_grad_norm_",
]


# ---------------------------------------------------------------------- seeds
def _mesh_rank(where: str, mesh: DeviceMesh) -> int:
    """This process's index in ``mesh``, its coordinates flattened (row-major)."""
    if not isinstance(mesh, DeviceMesh):
        raise TypeError(f"{where} expected `mesh` to be a DeviceMesh, got {type(mesh).__name__}")
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        raise ValueError(f"{where} expected a `mesh` that holds this rank, got {mesh}")
    index = 0
    for c, size in zip(coordinate, mesh.shape, strict=True):
        index = index * size + c
    return index


def manual_seed(seed: int, *, rank: int | None = None, mesh: DeviceMesh | None = None) -> int:
    """Seed torch's default generator with a seed derived from ``(seed, data-parallel rank)``.

    Args:
        seed: the one seed of the run.
        rank: the *data-parallel* rank, given directly; or
        mesh: the data-parallel device mesh (e.g. ``mesh["dp"]`` of a 2-d
            ``("dp", "tp")`` mesh): the rank is this process's index in it, so the
            ranks of one tensor-parallel group get the same stream. Without either,
            the global rank (0 without a process group): right for pure data
            parallelism only; a tensor-parallel layer then raises at its first call.

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
    if rank is not None and mesh is not None:
        raise ValueError("manual_seed expected one of `rank` and `mesh`, got both")
    if mesh is not None:
        rank = _mesh_rank("manual_seed", mesh)
    elif rank is None:
        rank = world()[0]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"manual_seed expected `rank` to be an int >= 0, got {rank!r}")
    derived = derive_seed(seed, rank)
    torch.manual_seed(derived)
    return derived


# ----------------------------------------------------------------------- the KL
def _reduction_key(layer: BayesianLayer, name: str) -> tuple[DeviceMesh, tuple[int, ...]] | None:
    """The mesh and mesh dimensions over which ``name``'s parameters are sharded, if any."""
    params = dict(layer.named_parameters(recurse=False))
    for pname in param_names(layer, name):
        p = params.get(pname)
        if isinstance(p, DTensor) and is_sharded(p.placements):
            dims = tuple(i for i, pl in enumerate(p.placements) if is_sharded((pl,)))
            return p.device_mesh, dims
    return None


def _sharded_layer_terms(layer: BayesianLayer) -> list[tuple[Tensor, Any]]:
    """``(term, reduction key)`` for every regularizer term of a layer with DTensor
    parameters, computed from the local shards.

    Under FSDP2 (no tensor-parallel style) the latest draw was made from the whole
    parameters during the forward pass; :meth:`~BayesianLayer.kl_terms` ignores a draw
    that does not fit the local shard, so a Monte Carlo regularizer draws afresh from it.
    """
    with local_view(layer):
        terms = layer.kl_terms()
        return [(term, _reduction_key(layer, name)) for name, term in terms.items()]


def _has_dtensor(module: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in module._parameters.values())


def kl_divergence(model: nn.Module) -> Tensor:
    """The total regularizer (KL) of ``model``, each sharded parameter counted once.

    A layer whose parameters are sharded DTensors (tensor parallelism, or FSDP2
    outside its units' forward passes) computes each term from its local shards
    in their own dtype (float32 under a bf16 ``MixedPrecisionPolicy``); the sharded
    terms are summed and reduced with one all-reduce per mesh dimension (the
    gradient reaches the local shards unchanged). Replicated and plain terms are
    added once. Without sharding it equals ``sum(bl.losses(model))``.
    Regularizers must be sums over elements (true of the closed-form and Monte
    Carlo KLs of mean-field posteriors) with scalar priors.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = bl.layers.LinearFlipout(3, 2)
        >>> torch.equal(bl.distributed.kl_divergence(layer), sum(layer.losses))
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"kl_divergence expected an nn.Module, got {type(model).__name__}")
    return _total(*_collect(model.modules()))


_Terms = tuple[list[Tensor], dict[Any, list[Tensor]]]


def _is_fsdp_sharded(m: nn.Module) -> bool:
    """A Bayesian layer whose parameters are sharded DTensors but not by a Bayesian style."""
    return isinstance(m, BayesianLayer) and not hasattr(m, TP_ATTR) and _has_dtensor(m)


def _collect(modules: Iterable[nn.Module]) -> _Terms:
    """The plain terms and the sharded ones by reduction key, of every module in ``modules``."""
    plain: list[Tensor] = []
    sharded: dict[Any, list[Tensor]] = {}
    for m in modules:
        if not isinstance(getattr(type(m), "losses", None), property):
            continue
        if isinstance(m, BayesianLayer) and (hasattr(m, TP_ATTR) or _has_dtensor(m)):
            for term, key in _sharded_layer_terms(m):
                (plain if key is None else sharded.setdefault(key, [])).append(term)
            continue
        for term in m.losses:  # type: ignore[attr-defined,union-attr]
            if isinstance(term, DTensor):
                raise TypeError(
                    f"kl_divergence cannot reduce the regularizer of {type(m).__name__}, whose "
                    "parameters are sharded DTensors; keep that module unsharded"
                )
            plain.append(term)
    return plain, sharded


def _total(plain: list[Tensor], sharded: dict[Any, list[Tensor]]) -> Tensor:
    """Plain terms added once; sharded ones summed, then reduced over their mesh dimensions."""
    total: Tensor | None = None
    for (mesh, dims), terms in sharded.items():
        part = torch.stack(terms).sum()
        for dim in dims:
            part = reduce_from_parallel(part, mesh.get_group(dim))
        total = part if total is None else total + part
    if plain:
        rest = torch.stack(plain).sum()
        total = rest if total is None else total + rest
    return torch.zeros(()) if total is None else total


class WithKL(nn.Module):
    """Wraps a model so that its forward returns ``(output, KL)``; otherwise it *is* the model.

    The KL is :func:`kl_divergence`'s: layers of FSDP2 units contribute it from
    their float32 shards, taken before the forward pass (when every inner unit is
    sharded, whatever its ``reshard_after_forward`` and mixed precision); the rest
    (tensor-parallel shards, Monte Carlo KLs of this pass's draws) after it.

    The wrapper shares the wrapped model's parameters, buffers and submodules:
    ``named_parameters()`` and ``state_dict()`` keys are the wrapped model's (no
    ``model.`` prefix), so checkpoints load into either. Wrap first, then shard:
    ``fully_shard(block)`` for each block, then ``fully_shard(WithKL(model))``
    (the default ``reshard_after_forward`` works).

    Args:
        model: any module with Bayesian layers (available as ``.model``).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = bl.layers.LinearFlipout(3, 2)
        >>> net = bl.distributed.WithKL(layer)
        >>> out, kl = net(torch.randn(5, 3))
        >>> out.shape, kl.shape, list(net.state_dict()) == list(layer.state_dict())
        (torch.Size([5, 2]), torch.Size([]), True)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"WithKL expected an nn.Module, got {type(model).__name__}")
        self.__dict__["_wrapped"] = model
        # the very tables of the wrapped model: same names, same state_dict keys
        for table in ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules"):
            self.__dict__[table] = model.__dict__[table]
        self.training = model.training

    @property
    def model(self) -> nn.Module:
        """The wrapped model."""
        return self.__dict__["_wrapped"]

    def train(self, mode: bool = True) -> WithKL:
        self.model.train(mode)
        self.training = mode
        return self

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        self.model._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.model._load_from_state_dict(*args, **kwargs)

    def forward(self, *args: object, **kwargs: object) -> tuple[object, Tensor]:
        modules = list(self.model.modules())
        # FSDP2 units are resharded before the forward pass: their KL from the float32 shards
        early = {id(m) for m in modules if _is_fsdp_sharded(m)}
        plain, sharded = _collect(m for m in modules if id(m) in early)
        out = self.model(*args, **kwargs)
        # the rest (tensor-parallel layers, Monte Carlo KLs of this pass's draws) after it
        late_plain, late_sharded = _collect(m for m in modules if id(m) not in early)
        for key, terms in late_sharded.items():
            sharded.setdefault(key, []).extend(terms)
        return out, _total(plain + late_plain, sharded)


# ---------------------------------------------------------------- utilities
@torch.no_grad()
def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for a tensor-parallel model (2-norm); like it,
    ``parameters`` is an iterable of tensors or a single tensor.

    torch's version refuses a mix of DTensor and plain parameters, which a
    model with some parallelised layers has. Here the squares of the local
    shards of sharded gradients are summed over their mesh with one all-reduce
    each, and replicated and plain gradients are counted once.

    Returns:
        The total gradient norm before clipping (a scalar, the same on every rank).
    """
    if isinstance(parameters, Tensor):  # one tensor, not its rows
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    locals_ = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    device = locals_[0].device if locals_ else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=device)
    sharded: dict[DeviceMesh, Tensor] = {}
    for g, local in zip(grads, locals_, strict=True):
        square = local.double().square().sum()
        if isinstance(g, DTensor) and is_sharded(g.placements):
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
