"""Initialisation of :class:`~.sparse.SparseGaussianProcess`: checked inducing inputs,
lazy parameters, inducing rows drawn from the first batch, and the linear mean's
starting map."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["check_inducing_inputs", "inducing_rows", "linear_mean_init", "zeros_or_lazy"]


def zeros_or_lazy(shape: tuple[int, int | None], **factory: Any) -> nn.Parameter:
    """A ``(rows, D)`` parameter of zeros, or a lazy one while ``D`` is ``None`` (unknown
    until the first call)."""
    if shape[1] is None:
        return nn.UninitializedParameter(**factory)  # type: ignore[return-value]
    return nn.Parameter(torch.zeros(shape, **factory))  # type: ignore[arg-type]


def check_inducing_inputs(owner: str, z: object, num_inducing: int, in_features: int | None) -> int:
    """The ``D`` of given inducing inputs ``(num_inducing, D)``; ``ValueError`` naming
    ``owner`` unless ``z`` is a finite floating tensor of that shape."""
    if not isinstance(z, Tensor) or z.dim() != 2:
        raise ValueError(
            f"{owner} expected `inducing_inputs` of shape (num_inducing, in_features), "
            f"got {getattr(z, 'shape', type(z).__name__)}"
        )
    m, d = z.shape
    if m != num_inducing or (in_features is not None and d != in_features):
        raise ValueError(
            f"{owner} expected `inducing_inputs` of shape ({num_inducing}, "
            f"{in_features if in_features is not None else 'D'}), got {(m, d)}"
        )
    if not z.is_floating_point() or not bool(torch.isfinite(z).all()):
        raise ValueError(f"{owner} expected finite floating `inducing_inputs`, got {z!r}")
    return d


def inducing_rows(x: Tensor, num_inducing: int) -> Tensor:
    """``(num_inducing, D)`` inducing inputs from a batch ``x`` ``(N, D)``: a random subset
    of its rows, and jittered copies of them when the batch has fewer than ``num_inducing``."""
    n, m = x.shape[0], num_inducing
    rows = x[torch.randperm(n, device=x.device)[: min(n, m)]]
    if n < m:  # jittered copies of the batch fill the rest
        extra = x[torch.randint(n, (m - n,), device=x.device)]
        spread = x.std(0, keepdim=True) if n > 1 else torch.ones_like(x[:1])
        extra = extra + 0.1 * spread.nan_to_num(1.0) * torch.randn_like(extra)
        rows = torch.cat([rows, extra])
    return rows


def linear_mean_init(x: Tensor, units: int) -> Tensor:
    """``(units, D)``: identity when ``D == units``; else the top principal directions of
    ``x`` (``units < D``) or the identity padded with zero rows (``units > D``)."""
    d = x.shape[-1]
    eye = torch.eye(units, d, dtype=x.dtype, device=x.device)
    if units >= d or x.shape[0] < 2:
        return eye
    centred = x - x.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # (min(N, D), D)
    if vh.shape[0] < units:
        return eye
    return vh[:units]
