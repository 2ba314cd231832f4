"""The distributed ELBO: one formula for DDP, FSDP2 and tensor parallelism, the mean
and the sum forms. Public names: :mod:`bayesian_layers.distributed`."""

from __future__ import annotations

import warnings
from functools import partial
from numbers import Integral
from typing import Any

from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from ..objectives import (
    NumExamples,
    _batch_size,
    _check_scaling,
    _count,
    _kl_weight,
    _resolve_num_examples,
)
from . import _comm
from .data_parallel import kl_divergence
from .tensor_parallel import TP_ATTR

__all__ = ["elbo_loss"]


def _mesh_ranks(mesh: DeviceMesh) -> set[int]:
    return set(mesh.mesh.flatten().tolist())


def _tp_meshes(model: nn.Module | None) -> list[DeviceMesh]:
    if model is None:
        return []
    meshes = {id(m): getattr(m, TP_ATTR)[1] for m in model.modules() if hasattr(m, TP_ATTR)}
    return list({id(mesh): mesh for mesh in meshes.values()}.values())


def _data_parallel_size(
    model: nn.Module | None, dp_mesh: DeviceMesh | None, size: int | None
) -> int:
    """The data-parallel size from ``dp_mesh``, ``size`` or the world, checked against TP."""
    rank, world = _comm.world()
    tp = _tp_meshes(model)
    if dp_mesh is not None:
        if not isinstance(dp_mesh, DeviceMesh):
            raise TypeError(
                f"elbo_loss expected `dp_mesh` to be a DeviceMesh, got {type(dp_mesh).__name__}"
            )
        if size is not None and size != dp_mesh.size():
            raise ValueError(
                f"elbo_loss got data_parallel_size={size} and a dp_mesh of {dp_mesh.size()} ranks"
            )
        for mesh in tp:
            shared = _mesh_ranks(dp_mesh) & _mesh_ranks(mesh)
            if shared != {rank}:
                raise ValueError(
                    "elbo_loss expected a `dp_mesh` that shares only this rank with the "
                    f"model's tensor-parallel mesh, got one sharing ranks {sorted(shared)}; "
                    'pass the data-parallel sub-mesh, e.g. mesh["dp"] of a ("dp", "tp") mesh'
                )
        return dp_mesh.size()
    tp_size = max((mesh.size() for mesh in tp), default=1)
    if size is not None:
        _count("data_parallel_size", size, 1)
        if size * tp_size > world:
            raise ValueError(
                f"elbo_loss expected `data_parallel_size` <= {world // tp_size} (the model is "
                f"tensor-parallel over {tp_size} of {world} ranks), got {size}; pure tensor "
                "parallelism has data_parallel_size=1 (or pass dp_mesh=)"
            )
        return size
    return max(1, world // tp_size)


def _parse_order(
    first: Any, second: Any, keywords: dict[str, Any], global_batch_size: int | None
) -> tuple[bool, nn.Module | None, Any]:
    """``(sum form?, model, num_examples)`` from elbo_loss's positional and keyword forms
    (``num_examples`` as given: an int, a loader or a data set).

    The arguments are :func:`bayesian_layers.elbo_loss`'s, ``(nll, model,
    num_examples)``; ``global_batch_size`` selects the sum form. The older sum-form
    order ``(nll_sum, num_examples, global_batch_size=B, model=m)`` still works and
    warns ``DeprecationWarning``.
    """
    unknown = set(keywords) - {"model", "num_examples"}
    if unknown:
        raise TypeError(f"elbo_loss got unexpected keyword arguments {sorted(unknown)}")
    model, n = keywords.get("model"), keywords.get("num_examples")
    if isinstance(first, Integral) and not isinstance(first, bool):  # the older order
        if second is not None or n is not None:
            raise TypeError("elbo_loss got `num_examples` twice")
        if global_batch_size is None:
            raise TypeError(
                "elbo_loss(nll_sum, num_examples, ...) (the older sum-form order) expected "
                "`global_batch_size`, the examples of the step over all data-parallel ranks"
            )
        warnings.warn(
            "elbo_loss(nll_sum, num_examples, global_batch_size=B, model=m) is deprecated; "
            "pass the arguments of bl.elbo_loss: "
            "elbo_loss(nll_sum, model, num_examples, global_batch_size=B)",
            DeprecationWarning,
            stacklevel=3,
        )
        return True, model, _count("num_examples", first, 1)
    if first is not None and model is not None:
        raise TypeError("elbo_loss got `model` twice")
    if second is not None and n is not None:
        raise TypeError("elbo_loss got `num_examples` twice")
    model = first if first is not None else model
    n = second if second is not None else n
    if n is None:
        raise TypeError("elbo_loss expected `num_examples`, the size of the training set")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(
            f"elbo_loss expected `model` to be an nn.Module, got {type(model).__name__}"
        )
    return global_batch_size is not None, model, n


def elbo_loss(
    nll: Tensor,
    model: nn.Module | None = None,
    num_examples: NumExamples | None = None,
    /,
    *,
    kl: Tensor | None = None,
    dp_mesh: DeviceMesh | None = None,
    data_parallel_size: int | None = None,
    global_batch_size: int | None = None,
    accumulation_steps: int = 1,
    kl_weight: float = 1.0,
    per_rank: bool | None = None,
    batch_size: int | None = None,
    **keywords: Any,
) -> Tensor:
    """This rank's loss whose data-parallel-averaged gradient is the global negative ELBO's.

    The arguments of :func:`bayesian_layers.elbo_loss`, ``(nll, model, num_examples)``,
    plus keywords for data and tensor parallelism.

    **Mean form**, as :func:`bayesian_layers.elbo_loss`:
    ``elbo_loss(nll_mean, model, num_examples)`` returns
    ``(nll_mean + kl_weight * KL / num_examples) / accumulation_steps`` with the
    KL of :func:`kl_divergence` (sharded layers counted once). ``nll_mean`` is the
    mean over this rank's examples of this (micro-)batch; data-parallel ranks
    must hold equally many. The same call serves DDP, FSDP2 and tensor
    parallelism (see the module docstring).

    **Sum form**, for unequal local batches:
    ``elbo_loss(nll_sum, model, num_examples, global_batch_size=B)`` (selected by
    ``global_batch_size``; the older order ``elbo_loss(nll_sum, num_examples,
    global_batch_size=B, model=model)`` warns ``DeprecationWarning``) returns
    ``D * nll_sum / B + kl_weight * KL / (num_examples * accumulation_steps)``
    with ``B`` the examples of the whole optimiser step (all ranks, all
    micro-batches) and ``D`` the data-parallel size: from ``dp_mesh``, else
    ``data_parallel_size``, else the world size over the model's tensor-parallel
    size. A ``dp_mesh`` that shares ranks with the tensor-parallel mesh, or a
    ``data_parallel_size`` that does not fit beside it, raises ``ValueError``.

    **The training-set size** ``N`` is read as :func:`bayesian_layers.elbo_loss` reads
    it: an int, or the training ``DataLoader`` (``len(loader.dataset)``: with a
    ``DistributedSampler`` that is already the global ``N``, never multiplied), or the
    training data set. Data this rank reads without a ``DistributedSampler`` is
    ambiguous across ranks, and ``per_rank`` settles it: ``True``, each rank holds an
    equal shard and ``N = D * len(...)`` (``D`` as in the sum form; also for an int
    ``num_examples``, then the size of this rank's shard); ``False``, every rank reads the
    whole training set and ``N = len(...)``; ``None`` (default), ``N = len(...)`` and,
    with ``D > 1``, one :class:`~bayesian_layers.objectives.KLScalingWarning` asking to
    choose. ``per_rank=True`` with a ``DistributedSampler`` raises ``ValueError``. The
    plausibility checks of :func:`bayesian_layers.elbo_loss` run here too (``N``
    against ``batch_size``, else ``global_batch_size``, else the loader's batch size;
    the KL against the data term), once per model and ``N``, never while
    ``torch.compile`` traces.

    Args:
        nll: ``nll_mean`` (mean form) or ``nll_sum`` (sum form).
        model: the model whose KL to add (may be given by keyword); or
        num_examples: the size of the whole training set, ``N`` (may be given by
            keyword): an int > 0, the training ``DataLoader``, or the training data set.
        kl: the KL already computed (e.g. returned by :class:`WithKL`), instead of ``model``.
        dp_mesh: the data-parallel device mesh (checked against ``model``'s
            tensor-parallel mesh; the sum form's ``D``).
        data_parallel_size: ``D`` given as a number.
        global_batch_size: the sum form's ``B``.
        accumulation_steps: micro-batches accumulated per optimiser step (``backward``
            on each micro-batch's loss): the KL is counted once per step.
        kl_weight: tempers the KL (1 is the ELBO); finite and >= 0.
        per_rank: whether ``num_examples`` counts this rank's shard only (see above).
        batch_size: a batch size for the ``N >= batch size`` check.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = bl.layers.LinearReparameterization(3, 1)
        >>> nll_mean = layer(torch.randn(4, 3)).square().mean()
        >>> loss = bl.distributed.elbo_loss(nll_mean, layer, 1000)
        >>> torch.allclose(loss, bl.elbo_loss(nll_mean, layer, 1000))
        True
        >>> from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
        >>> data = TensorDataset(torch.randn(1000, 3))
        >>> sampler = DistributedSampler(data, num_replicas=4, rank=0)  # 250 per rank
        >>> loader = DataLoader(data, batch_size=50, sampler=sampler)
        >>> torch.equal(bl.distributed.elbo_loss(nll_mean, layer, loader), loss)  # N = 1000
        True
    """
    sum_form, model, given = _parse_order(model, num_examples, keywords, global_batch_size)
    if (model is None) == (kl is None):
        raise ValueError("elbo_loss expected exactly one of `model` and `kl`")
    weight = _kl_weight(kl_weight)
    steps = _count("accumulation_steps", accumulation_steps, 1)
    if kl is None:
        kl = kl_divergence(model)  # type: ignore[arg-type]
    elif isinstance(kl, DTensor):
        raise TypeError(
            "elbo_loss expected a plain tensor `kl`, got a DTensor (a KL of sharded "
            "parameters); compute it with bl.distributed.kl_divergence(model) or WithKL"
        )
    found = _resolve_num_examples(given)
    if per_rank is not None and not isinstance(per_rank, bool):
        raise TypeError(f"elbo_loss expected `per_rank` to be a bool, got {per_rank!r}")
    if per_rank and found.origin == "global":
        raise ValueError(
            "elbo_loss got per_rank=True and a DataLoader with a DistributedSampler, whose "
            "dataset is already the whole training set; drop per_rank"
        )
    check_batch = _batch_size(batch_size)
    size = None
    if sum_form or per_rank or dp_mesh is not None or data_parallel_size is not None:
        size = _data_parallel_size(model, dp_mesh, data_parallel_size)  # (also a check)
    n = found.n * size if per_rank and size is not None else found.n
    if sum_form:
        batch = _count("global_batch_size", global_batch_size, 1)
        data = (size or 1) * nll / batch  # size is set: the sum form always asks for D
        check_batch = check_batch if check_batch is not None else batch
    else:
        data = nll / steps if steps > 1 else nll
    _check_scaling(
        model,
        found._replace(n=n),
        data if sum_form else nll,
        kl,
        batch_size=check_batch,
        # the ranks for an ambiguous N: walked from the model only when a check runs
        data_parallel=size if size is not None else partial(_data_parallel_size, model, None, None),
        ambiguous=per_rank is None,
        fix="pass per_rank=True (shards) or per_rank=False (every rank reads all the "
        "data), or the global N as an int",
    )
    return data + (weight / (n * steps)) * kl
