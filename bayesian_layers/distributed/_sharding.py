"""Shared internals of tensor parallelism: which parameters are sharded, local views of
them, per-shard noise through a noise hook, and the per-call generator fork.

Private to :mod:`bayesian_layers.distributed` (no stability promise); the public styles
are in :mod:`.tensor_parallel` and :mod:`.tensor_parallel_attention`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.placement_types import _StridedShard

from ..layers.base import BayesianLayer, ParameterSpec
from ._comm import derive_seed, device_rng_state, param_device, seed_device, set_device_rng_state

__all__ = [
    "TP_ATTR",
    "LOCAL_SHAPES_ATTR",
    "STREAM_CHECKED_ATTR",
    "IN_CALL_ATTR",
    "is_sharded",
    "local_view",
    "mesh_1d",
    "shard_params",
    "store_local_shapes",
    "param_names",
    "specs",
    "ForkedCall",
]


#: set on every module a Bayesian style has parallelised: ``(style name, mesh)``.
TP_ATTR = "_bayesian_tensor_parallel"


#: the local (per-shard) shapes of a parallelised module's random parameters.
LOCAL_SHAPES_ATTR = TP_ATTR + "_local_shapes"


#: set once a parallelised module has checked that its group shares one random stream.
STREAM_CHECKED_ATTR = TP_ATTR + "_stream_checked"


#: set on a parallelised module during its call: its parameter noise has local shapes.
IN_CALL_ATTR = TP_ATTR + "_in_call"


def is_sharded(placements: tuple[Any, ...] | list[Any]) -> bool:
    """Whether a DTensor with ``placements`` is split over its mesh (strided shards included).

    (``_StridedShard.is_shard()`` is False on some torch versions, hence the type check.)
    """
    return any(isinstance(pl, (Shard, _StridedShard)) for pl in placements)


@contextmanager
def local_view(module: nn.Module) -> Iterator[dict[str, bool]]:
    """Within the context, ``module``'s DTensor parameters read as their local shards.

    The local tensors come from ``to_local()``, so gradients reach the DTensor
    parameters. Yields a dict from parameter name to whether it is sharded.
    Only ``module``'s own parameters, not its submodules'.
    """
    sharded: dict[str, bool] = {}
    for name, p in module._parameters.items():
        if isinstance(p, DTensor):
            sharded[name] = is_sharded(p.placements)
            module.__dict__[name] = p.to_local()
    try:
        yield sharded
    finally:
        for name in sharded:
            module.__dict__.pop(name, None)


def mesh_1d(style: str, mesh: DeviceMesh) -> DeviceMesh:
    if mesh.ndim != 1:
        raise ValueError(f"{style} expected a 1-d device mesh, got {mesh.ndim} dimensions")
    return mesh


def shard_params(module: nn.Module, mesh: DeviceMesh, placement: dict[str, Any]) -> None:
    for name, p in list(module._parameters.items()):
        if p is None or isinstance(p, DTensor):
            continue
        pl = placement.get(name, Replicate())
        dp = distribute_tensor(p.detach(), mesh, [pl])
        module.register_parameter(name, nn.Parameter(dp, requires_grad=p.requires_grad))


def store_local_shapes(module: BayesianLayer) -> None:
    """Record the local shapes of ``module``'s random parameters (fixed once sharded) and
    register the noise hook that draws their noise in those shapes during a call."""
    with local_view(module):
        shapes = {k: module.point(k).shape for k, _ in module.named_random_parameters()}
    module.__dict__[LOCAL_SHAPES_ATTR] = shapes
    module.register_noise_hook(_shard_noise)


def _shard_noise(
    layer: BayesianLayer,
    name: str,
    kind: str,
    shape: torch.Size,
    make: Callable[[torch.Size], Tensor],
) -> Tensor | None:
    """Noise hook of a parallelised layer: during its call, the noise of a random
    parameter (asked for in the parameter's full shape) is drawn in the local shard's
    shape, from the per-shard generator of :class:`ForkedCall`. Other noise (signs,
    output noise) already has the local activations' shape and is left alone."""
    if kind != "parameter" or not layer.__dict__.get(IN_CALL_ATTR):
        return None
    local = layer.__dict__[LOCAL_SHAPES_ATTR].get(name)
    if local is None:
        return None
    return make(shape[: len(shape) - len(local)] + local)


def param_names(layer: BayesianLayer, name: str) -> list[str]:
    """The parameter tensors of ``layer`` that hold the posterior of ``name``."""
    spec = specs(layer).get(name)
    if spec is None:
        return []
    suffixes = spec.initializer.suffixes
    return [f"{name}_{s}" if s else name for s in suffixes]


def specs(layer: BayesianLayer) -> dict[str, ParameterSpec]:
    """Every parameter ``layer`` declares (random and deterministic), by name."""
    return dict(layer.named_random_parameters(include_deterministic=True))


class ForkedCall:
    """Local views, local noise shapes and a per-shard generator for one call.

    Only the generator of the parameters' device is reseeded (and restored after
    the call); the integer that seeds it comes from the default CPU generator,
    which the ranks of a tensor-parallel group keep in step.
    """

    @torch.compiler.disable
    def __init__(self, mesh: DeviceMesh, modules: tuple[BayesianLayer, ...]) -> None:
        base = int(torch.randint(0, 2**62, (1,)).item())
        self.device = param_device(modules)
        _check_one_stream(modules[0], mesh, base, self.device)
        self.attrs: dict[str, Any] = {}
        self.views = [local_view(m) for m in modules]
        for v in self.views:
            v.__enter__()
        self.modules = modules
        for m in modules:  # _shard_noise draws local shapes until restore
            m.__dict__[IN_CALL_ATTR] = True
        self.rng = device_rng_state(self.device)
        seed_device(self.device, derive_seed(base, mesh.get_local_rank()))

    @torch.compiler.disable
    def restore(self) -> None:
        set_device_rng_state(self.device, self.rng)
        for m in self.modules:
            m.__dict__.pop(IN_CALL_ATTR, None)
        for v in self.views:
            v.__exit__(None, None, None)


def _check_one_stream(module: nn.Module, mesh: DeviceMesh, base: int, device: torch.device) -> None:
    """At a layer's first call: every rank of its group drew the same ``base`` (one stream).

    Ranks seeded apart would still give independent shards here, but Bayesian layers
    replicated over the group would draw different noise and drift apart.
    """
    if module.__dict__.get(STREAM_CHECKED_ATTR) or torch.compiler.is_compiling():
        return
    mine = torch.tensor([base], dtype=torch.int64, device=device)
    drawn = [torch.empty_like(mine) for _ in range(mesh.size())]
    dist.all_gather(drawn, mine, group=mesh.get_group())
    if any(not torch.equal(d, mine) for d in drawn):
        style = getattr(module, TP_ATTR)[0]
        raise RuntimeError(
            f"{type(module).__name__} under {style} expected the ranks of its tensor-parallel "
            "group to share one random stream, got differently seeded ranks: Bayesian layers "
            "replicated over the group would draw different noise and drift apart. Seed every "
            "rank with bl.distributed.manual_seed(seed, mesh=dp_mesh), the data-parallel "
            "device mesh (or rank=0 under pure tensor parallelism)"
        )
    module.__dict__[STREAM_CHECKED_ATTR] = True
