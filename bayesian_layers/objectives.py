"""Collecting regularizers from a model and the ELBO convention."""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor, nn

__all__ = ["losses", "elbo_loss"]


def losses(module: nn.Module) -> list[Tensor]:
    """Every regularizer term of every submodule of ``module`` (itself included).

    Any module whose class defines a ``losses`` property contributes; a module
    that appears several times in the tree is counted once.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = bl.layers.LinearReparameterization(3, 2)
        >>> model = torch.nn.Sequential(layer, torch.nn.ReLU(), layer)
        >>> len(bl.losses(model))
        1
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"losses expected an nn.Module, got {type(module).__name__}")
    out: list[Tensor] = []
    for m in module.modules():  # modules() visits each module once
        if isinstance(getattr(type(m), "losses", None), property):
            _refuse_sharded(m)
            out.extend(m.losses)  # type: ignore[arg-type]
    return out


def _refuse_sharded(module: nn.Module) -> None:
    """A module with sharded (DTensor) parameters has per-shard terms: name the fix."""
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    if dtensor is not None and any(isinstance(p, dtensor) for p in module.parameters(False)):
        raise TypeError(
            f"losses found sharded (DTensor) parameters on {type(module).__name__} (FSDP2 "
            "or tensor parallelism), whose terms cannot join a plain loss; use "
            "bl.distributed.kl_divergence(model), which reduces the KL over the shards, "
            "or wrap the model in bl.distributed.WithKL"
        )


def elbo_loss(
    nll_mean: Tensor, model: nn.Module, num_examples: int, *, kl_weight: float = 1.0
) -> Tensor:
    """The negative ELBO per example: ``nll_mean + kl_weight * sum(losses(model)) / num_examples``.

    ``nll_mean`` is the mini-batch mean negative log-likelihood; dividing the KL by
    the training-set size makes the sum over an epoch's batches the full
    negative ELBO divided by N. ``kl_weight < 1`` tempers the KL (a "cold"
    posterior), which often helps small data sets where full-KL variational
    Bayes is underconfident.

    :func:`bayesian_layers.distributed.elbo_loss` takes the same arguments, plus
    keywords for data and tensor parallelism (and ``global_batch_size`` for a sum of
    per-example NLLs).
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, int):
        raise TypeError(
            f"elbo_loss expected `num_examples` to be an int, got "
            f"{type(num_examples).__name__} {num_examples!r}"
        )
    if num_examples <= 0:
        raise ValueError(
            f"elbo_loss expected `num_examples` to be a positive int, got {num_examples!r}"
        )
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)):
        raise TypeError(
            f"elbo_loss expected `kl_weight` to be a number, got {type(kl_weight).__name__}"
        )
    if not (math.isfinite(kl_weight) and kl_weight >= 0):
        raise ValueError(
            f"elbo_loss expected `kl_weight` to be a finite non-negative number, got {kl_weight!r}"
        )
    terms = losses(model)
    if not terms:
        return nll_mean
    return nll_mean + (kl_weight / num_examples) * torch.stack(terms).sum()
