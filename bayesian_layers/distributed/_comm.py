"""Collectives and generators of the tensor-parallel styles (private): the autograd
all-reduces of the Megatron pattern, seed derivation, per-device generator state."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

__all__ = [
    "derive_seed",
    "reduce_from_parallel",
    "CopyToParallel",
    "param_device",
    "device_rng_state",
    "set_device_rng_state",
    "seed_device",
    "world",
]


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys`` (independent streams per key)."""
    state = np.random.SeedSequence([int(seed) % 2**63, *(int(k) for k in keys)])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


class CopyToParallel(torch.autograd.Function):
    """Identity forward; all-reduce (sum) of the gradient backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromParallel(torch.autograd.Function):
    """All-reduce (sum) forward; identity backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def reduce_from_parallel(x: Tensor, group: Any) -> Tensor:
    """Sum ``x`` over ``group`` (one all-reduce); the gradient passes through unchanged."""
    return _ReduceFromParallel.apply(x, group)


def param_device(modules: tuple[nn.Module, ...]) -> torch.device:
    """The device of the first parameter of ``modules`` (CPU when there is none)."""
    for m in modules:
        for p in m.parameters(recurse=False):
            return p.to_local().device if isinstance(p, DTensor) else p.device
    return torch.device("cpu")


def device_rng_state(device: torch.device) -> Tensor:
    """The state of the default generator of ``device``."""
    if device.type == "cpu":
        return torch.get_rng_state()
    return torch.get_device_module(device.type).get_rng_state(device)


def set_device_rng_state(device: torch.device, state: Tensor) -> None:
    """Restore the default generator of ``device`` to ``state``."""
    if device.type == "cpu":
        torch.set_rng_state(state)
    else:
        torch.get_device_module(device.type).set_rng_state(state, device)


def seed_device(device: torch.device, seed: int) -> None:
    """Seed the default generator of ``device`` only (``torch.manual_seed`` seeds all)."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
        return
    module = torch.get_device_module(device.type)
    with module.device(device):
        module.manual_seed(seed)


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
