"""The distributed ELBO: one formula for DDP, FSDP2 and tensor parallelism, the mean
and the sum forms. Public names: :mod:`bayesian_layers.distributed`."""

from __future__ import annotations

import math
import warnings
from numbers import Integral
from typing import Any

from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

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


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"elbo_loss expected `{name}` to be an int >= {minimum}, got {value!r}")
    return int(value)


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
) -> tuple[bool, nn.Module | None, int]:
    """``(sum form?, model, num_examples)`` from elbo_loss's positional and keyword forms.

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
    return global_batch_size is not None, model, _count("num_examples", n, 1)


def _kl_weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"elbo_loss expected a real `kl_weight`, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"elbo_loss expected `kl_weight` to be finite and >= 0, got {value!r}")
    return float(value)


def elbo_loss(
    nll: Tensor,
    model: nn.Module | None = None,
    num_examples: int | None = None,
    /,
    *,
    kl: Tensor | None = None,
    dp_mesh: DeviceMesh | None = None,
    data_parallel_size: int | None = None,
    global_batch_size: int | None = None,
    accumulation_steps: int = 1,
    kl_weight: float = 1.0,
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

    Args:
        nll: ``nll_mean`` (mean form) or ``nll_sum`` (sum form).
        model: the model whose KL to add (may be given by keyword); or
        num_examples: the size of the whole training set, ``N`` (may be given by keyword).
        kl: the KL already computed (e.g. returned by :class:`WithKL`), instead of ``model``.
        dp_mesh: the data-parallel device mesh (checked against ``model``'s
            tensor-parallel mesh; the sum form's ``D``).
        data_parallel_size: ``D`` given as a number.
        global_batch_size: the sum form's ``B``.
        accumulation_steps: micro-batches accumulated per optimiser step (``backward``
            on each micro-batch's loss): the KL is counted once per step.
        kl_weight: tempers the KL (1 is the ELBO); finite and >= 0.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = bl.layers.LinearReparameterization(3, 1)
        >>> nll_mean = layer(torch.randn(4, 3)).square().mean()
        >>> loss = bl.distributed.elbo_loss(nll_mean, layer, 1000)
        >>> torch.allclose(loss, bl.elbo_loss(nll_mean, layer, 1000))
        True
    """
    sum_form, model, n = _parse_order(model, num_examples, keywords, global_batch_size)
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
    if sum_form:
        batch = _count("global_batch_size", global_batch_size, 1)
        size = _data_parallel_size(model, dp_mesh, data_parallel_size)
        data = size * nll / batch
    else:
        if dp_mesh is not None or data_parallel_size is not None:
            _data_parallel_size(model, dp_mesh, data_parallel_size)  # consistency only
        data = nll / steps if steps > 1 else nll
    return data + (weight / (n * steps)) * kl
