"""Tensor (model) parallel styles for the Bayesian dense layers (attention: in
:mod:`bayesian_layers.distributed.tensor_parallel_attention`).

Use them with torch's own ``parallelize_module``::

    from torch.distributed.tensor.parallel import parallelize_module
    plan = {"ff.0": BayesianColwiseParallel(), "ff.2": BayesianRowwiseParallel(),
            "attn": BayesianAttentionParallel()}
    parallelize_module(model, mesh, plan)

Storage. Every trainable tensor of a parallelised layer becomes a ``DTensor``
parameter: column-wise layers shard ``weight_loc``, ``weight_rho`` and the bias
on the output dimension (``Shard(0)``), row-wise layers shard the weights on the
input dimension (``Shard(1)``) and replicate the bias. Optimisers, gradient
clipping and ``state_dict()`` see ordinary DTensors; ``full_tensor()`` gathers
the single-process layout.

Compute. A column-wise layer multiplies the replicated input by its local rows
and returns its local slice of the output features; the row-wise layer that
follows takes that slice, multiplies by its local columns and sums the partial
outputs with one all-reduce, then adds the bias once (the Megatron pattern:
one all-reduce forward and one backward per pair). The attention style is
head-parallel: each rank projects to, attends over and projects out of its
own heads, with one all-reduce of the output.

Noise. On a CPU mesh torch's DTensor RNG tracker is off, so drawing noise from
the shared generator for a local shard would give every shard the *same*
noise. A parallelised layer therefore forks the generator for its call:
it draws one integer from the default generator (which keeps the ranks of a
tensor-parallel group in step) and seeds its local draws with a seed derived
from that integer and the shard index. Shards get independent noise, the run
is reproducible from one seed (for a given number of shards), and the
generator state after the call is the same on every rank. Ranks of a
tensor-parallel group must therefore start from the same seed
(:func:`bayesian_layers.distributed.manual_seed` with ``mesh=`` the data-parallel
mesh); a parallelised layer checks it at its first call (one all-gather of the
drawn integer) and raises ``RuntimeError`` otherwise. The layer's draws go through
its public noise hook (:meth:`~bayesian_layers.layers.base.BayesianLayer.register_noise_hook`):
during a call, the noise of a random parameter, asked for in the parameter's full
shape, is drawn in the local shard's shape; signs and output noise already have the
local activations' shapes.

The KL. :func:`bayesian_layers.distributed.kl_divergence` computes every
layer's regularizer on its local shards, sums them and reduces once.
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
from torch.distributed.tensor.parallel import ParallelStyle
from torch.distributed.tensor.placement_types import _StridedShard

from ..layers.base import BayesianLayer, ParameterSpec
from ..layers.linear import BayesianLinear
from ._comm import (
    CopyToParallel as _CopyToParallel,
)
from ._comm import (
    _get_rng_state,
    _set_rng_state,
    derive_seed,
    reduce_from_parallel,
)
from ._comm import (
    param_device as _param_device,
)
from ._comm import (
    seed_device as _seed_device,
)

__all__ = [
    "BayesianColwiseParallel",
    "BayesianRowwiseParallel",
    "derive_seed",
    "local_view",
]

#: set on every module a Bayesian style has parallelised: ``(style name, mesh)``.
TP_ATTR = "_bayesian_tensor_parallel"
#: the local (per-shard) shapes of a parallelised module's random parameters.
LOCAL_SHAPES_ATTR = TP_ATTR + "_local_shapes"
#: set once a parallelised module has checked that its group shares one random stream.
STREAM_CHECKED_ATTR = TP_ATTR + "_stream_checked"
#: set on a parallelised module during its call: its parameter noise has local shapes.
IN_CALL_ATTR = TP_ATTR + "_in_call"


def _is_sharded(placements: tuple[Any, ...] | list[Any]) -> bool:
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
            sharded[name] = _is_sharded(p.placements)
            module.__dict__[name] = p.to_local()
    try:
        yield sharded
    finally:
        for name in sharded:
            module.__dict__.pop(name, None)


def _mesh_1d(style: str, mesh: DeviceMesh) -> DeviceMesh:
    if mesh.ndim != 1:
        raise ValueError(f"{style} expected a 1-d device mesh, got {mesh.ndim} dimensions")
    return mesh


def _shard_params(module: nn.Module, mesh: DeviceMesh, placement: dict[str, Any]) -> None:
    for name, p in list(module._parameters.items()):
        if p is None or isinstance(p, DTensor):
            continue
        pl = placement.get(name, Replicate())
        dp = distribute_tensor(p.detach(), mesh, [pl])
        module.register_parameter(name, nn.Parameter(dp, requires_grad=p.requires_grad))


def _store_local_shapes(module: BayesianLayer) -> None:
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
    shape, from the per-shard generator of :class:`_ForkedCall`. Other noise (signs,
    output noise) already has the local activations' shape and is left alone."""
    if kind != "parameter" or not layer.__dict__.get(IN_CALL_ATTR):
        return None
    local = layer.__dict__[LOCAL_SHAPES_ATTR].get(name)
    if local is None:
        return None
    return make(shape[: len(shape) - len(local)] + local)


def _param_names(layer: BayesianLayer, name: str) -> list[str]:
    """The parameter tensors of ``layer`` that hold the posterior of ``name``."""
    spec = _specs(layer).get(name)
    if spec is None:
        return []
    suffixes = spec.initializer.suffixes
    return [f"{name}_{s}" if s else name for s in suffixes]


def _specs(layer: BayesianLayer) -> dict[str, ParameterSpec]:
    """Every parameter ``layer`` declares (random and deterministic), by name."""
    return dict(layer.named_random_parameters(include_deterministic=True))


class _BayesianLinearParallel(ParallelStyle):
    """Shared machinery of the column- and row-wise styles for the Bayesian dense layers."""

    _dim: int = 0  # weight dimension sharded

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        style = type(self).__name__
        if not isinstance(module, BayesianLinear):
            raise TypeError(
                f"{style} expected a Bayesian dense layer (LinearReparameterization, "
                f"LinearFlipout, LinearLocalReparameterization), got {type(module).__name__}"
            )
        mesh = _mesh_1d(style, device_mesh)
        n = mesh.size()
        size = module.out_features if self._dim == 0 else module.in_features
        what = "out_features" if self._dim == 0 else "in_features"
        if size % n:
            raise ValueError(f"{style} expected {what} divisible by {n} ranks, got {size}")
        placement = {p: Shard(self._dim) for p in _param_names(module, "weight")}
        self._check_bias(module, placement)
        _shard_params(module, mesh, placement)
        _store_local_shapes(module)
        setattr(module, TP_ATTR, (style, mesh))
        module.register_forward_pre_hook(self._pre_hook)
        module.register_forward_hook(self._post_hook, always_call=True)
        return module

    def _check_bias(self, module: BayesianLinear, placement: dict[str, Any]) -> None:
        raise NotImplementedError

    def _pre_hook(self, module: BayesianLinear, args: tuple) -> tuple:
        raise NotImplementedError

    def _post_hook(self, module: BayesianLinear, args: tuple, out: Tensor) -> Tensor:
        raise NotImplementedError

    def _enter(self, module: BayesianLinear, mesh: DeviceMesh, **attrs: Any) -> None:
        """Local shards, local sizes ``attrs`` and a per-shard generator for this call."""
        saved = _ForkedCall(mesh, (module,))
        saved.attrs = {k: module.__dict__[k] for k in attrs}
        module.__dict__.update(attrs)
        module.__dict__[TP_ATTR + "_saved"] = saved

    def _restore(self, module: BayesianLinear) -> None:
        saved = module.__dict__.pop(TP_ATTR + "_saved", None)
        if saved is not None:
            module.__dict__.update(saved.attrs)
            saved.restore()


class BayesianColwiseParallel(_BayesianLinearParallel):
    """Column-wise tensor parallelism for a Bayesian dense layer.

    Shards ``weight_loc``, ``weight_rho`` and the bias (deterministic or random)
    on the output dimension: rank ``r`` of ``N`` holds output features
    ``[r out/N, (r+1) out/N)``. The input is replicated (its gradient is summed
    over the group backward); the output is the local slice of the features,
    ``(*, out_features / N)``, as the following :class:`BayesianRowwiseParallel`
    layer expects.

    Works for :class:`~bayesian_layers.layers.LinearReparameterization`,
    :class:`~bayesian_layers.layers.LinearFlipout` and
    :class:`~bayesian_layers.layers.LinearLocalReparameterization`; anything else
    raises ``TypeError``. Noise is independent across shards (see the module
    docstring); posterior-mean outputs equal the single-process layer's.

    Shape:
        - Input: ``(*, in_features)``, the same on every rank.
        - Output: ``(*, out_features / N)``.
    """

    _dim = 0

    def _check_bias(self, module: BayesianLinear, placement: dict[str, Any]) -> None:
        placement.update({p: Shard(0) for p in _param_names(module, "bias")})

    def _pre_hook(self, module: BayesianLinear, args: tuple) -> tuple:
        _, mesh = getattr(module, TP_ATTR)
        self._enter(module, mesh, out_features=module.out_features // mesh.size())
        x = args[0]
        return (_CopyToParallel.apply(x, mesh.get_group()), *args[1:])

    def _post_hook(self, module: BayesianLinear, args: tuple, out: Tensor) -> Tensor:
        self._restore(module)
        return out


class BayesianRowwiseParallel(_BayesianLinearParallel):
    """Row-wise tensor parallelism for a Bayesian dense layer.

    Shards ``weight_loc`` and ``weight_rho`` on the input dimension (rank ``r``
    holds input features ``[r in/N, (r+1) in/N)``) and replicates the bias, which
    must be deterministic (a random bias would need one draw shared by the
    group; it raises ``NotImplementedError``). The input is the local slice of
    the features, e.g. a :class:`BayesianColwiseParallel` layer's output; the
    partial products are summed with one all-reduce and the bias is added once.
    With independent noise per shard the sum has exactly the single-process
    output distribution for every estimator (local reparameterization: the
    partial variances add up).

    Shape:
        - Input: ``(*, in_features / N)``.
        - Output: ``(*, out_features)``, the same on every rank.
    """

    _dim = 1

    def _check_bias(self, module: BayesianLinear, placement: dict[str, Any]) -> None:
        spec = _specs(module).get("bias")
        if spec is not None and spec.is_random:
            raise NotImplementedError(
                f"{type(self).__name__} supports only a deterministic bias on "
                f"{type(module).__name__}, got a {type(spec.initializer).__name__} bias posterior"
            )

    def _pre_hook(self, module: BayesianLinear, args: tuple) -> tuple:
        _, mesh = getattr(module, TP_ATTR)
        n = mesh.size()
        x = args[0]
        local_in = module.in_features // n
        if isinstance(x, Tensor) and (x.dim() == 0 or x.shape[-1] != local_in):
            raise ValueError(
                f"{type(module).__name__} (row-wise over {n} ranks) expected the local input "
                f"slice of shape (*, {local_in}), got {tuple(x.shape)}"
            )
        # the bias is added once, after the reduction
        self._enter(module, mesh, in_features=local_in, use_bias=False)
        return args

    def _post_hook(self, module: BayesianLinear, args: tuple, out: Tensor) -> Tensor:
        _, mesh = getattr(module, TP_ATTR)
        self._restore(module)
        if out is None:  # the forward raised; its error propagates
            return out
        out = reduce_from_parallel(out, mesh.get_group())
        bias = module._parameters.get("bias")
        if module.use_bias and bias is not None:
            out = out + (bias.to_local() if isinstance(bias, DTensor) else bias)
        return out


class _ForkedCall:
    """Local views, local noise shapes and a per-shard generator for one call.

    Only the generator of the parameters' device is reseeded (and restored after
    the call); the integer that seeds it comes from the default CPU generator,
    which the ranks of a tensor-parallel group keep in step.
    """

    @torch.compiler.disable
    def __init__(self, mesh: DeviceMesh, modules: tuple[BayesianLayer, ...]) -> None:
        base = int(torch.randint(0, 2**62, (1,)).item())
        self.device = _param_device(modules)
        _check_one_stream(modules[0], mesh, base, self.device)
        self.attrs: dict[str, Any] = {}
        self.views = [local_view(m) for m in modules]
        for v in self.views:
            v.__enter__()
        self.modules = modules
        for m in modules:  # _shard_noise draws local shapes until restore
            m.__dict__[IN_CALL_ATTR] = True
        self.rng = _get_rng_state(self.device)
        _seed_device(self.device, derive_seed(base, mesh.get_local_rank()))

    @torch.compiler.disable
    def restore(self) -> None:
        _set_rng_state(self.device, self.rng)
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
