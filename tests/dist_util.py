"""Shared pieces of the distributed tests: a loopback port and the small Bayesian MLP."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bayesian_layers import layers


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for the gloo rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo(rank: int, port: int, world: int) -> None:
    """Join a ``world``-rank gloo group on the loopback ``port``, one intra-op thread."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def mlp() -> nn.Sequential:
    """4 -> 8 (Flipout) -> ReLU -> 3 (reparameterization), the same initial weights each call."""
    torch.manual_seed(0)
    return nn.Sequential(
        layers.LinearFlipout(4, 8), nn.ReLU(), layers.LinearReparameterization(8, 3)
    )


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fixed inputs ``(n, 4)`` and class labels ``(n,)`` in 0..2."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def spawn_results(worker: Callable[..., None], world: int) -> list[dict[str, Any]]:
    """Run ``worker(rank, port, outdir)`` on ``world`` processes; each saves its result
    dict as ``outdir/rank{rank}.pt``. Returns the dicts, rank order."""
    with tempfile.TemporaryDirectory() as outdir:
        mp.spawn(worker, args=(free_port(), outdir), nprocs=world, join=True)
        return [torch.load(Path(outdir) / f"rank{r}.pt", weights_only=False) for r in range(world)]
