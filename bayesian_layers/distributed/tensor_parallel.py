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

from typing import Any

from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.parallel import ParallelStyle

from ..layers.linear import BayesianLinear
from ._comm import (
    CopyToParallel as _CopyToParallel,
)
from ._comm import (
    derive_seed,
    reduce_from_parallel,
)
from ._sharding import (
    TP_ATTR,
    ForkedCall,
    local_view,
    mesh_1d,
    param_names,
    shard_params,
    specs,
    store_local_shapes,
)

__all__ = [
    "BayesianColwiseParallel",
    "BayesianRowwiseParallel",
    "derive_seed",
    "local_view",
]


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
        mesh = mesh_1d(style, device_mesh)
        n = mesh.size()
        size = module.out_features if self._dim == 0 else module.in_features
        what = "out_features" if self._dim == 0 else "in_features"
        if size % n:
            raise ValueError(f"{style} expected {what} divisible by {n} ranks, got {size}")
        placement = {p: Shard(self._dim) for p in param_names(module, "weight")}
        self._check_bias(module, placement)
        shard_params(module, mesh, placement)
        store_local_shapes(module)
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
        saved = ForkedCall(mesh, (module,))
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
        placement.update({p: Shard(0) for p in param_names(module, "bias")})

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
        spec = specs(module).get("bias")
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
