"""Private helpers shared by the reversible layers (no stability promise): the input
check every reversible layer runs and the renaming of errors raised by a wrapped
network. Package-wide argument checks live in :mod:`bayesian_layers._checks`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..base import check_input

__all__ = ["call_naming", "check_real_input"]

T = TypeVar("T")


def call_naming(owner: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``; a ``ValueError``/``TypeError`` raised inside (by a wrapped layer or
    network) is re-raised with ``owner`` in front, so the message names the layer called."""
    try:
        return fn(*args)
    except (ValueError, TypeError) as err:
        if str(err).startswith(owner):
            raise
        try:
            renamed = type(err)(f"{owner}: {err}")
        except Exception:  # an exception type with another constructor
            renamed = (ValueError if isinstance(err, ValueError) else TypeError)(f"{owner}: {err}")
        raise renamed from err


def check_real_input(
    layer: nn.Module, x: Any, min_dim: int, dtype: torch.dtype | None = None
) -> Tensor:
    """Validate a reversible layer's input: a floating tensor with at least ``min_dim`` dims.

    ``dtype`` is the layer's parameter dtype (``None``: any floating dtype); under
    autocast the autocast dtype is accepted too (:func:`~.base.check_input`).
    """
    owner = type(layer).__name__
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner} expected `input` to be a Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        expected = dtype if dtype is not None else "a floating-point dtype"
        raise TypeError(f"{owner} expected `input` of dtype {expected}, got {x.dtype}")
    check_input(x, owner, "input", dtype=dtype)
    if x.dim() < min_dim:
        raise ValueError(
            f"{owner} expected `input` with at least {min_dim} dims, got shape {tuple(x.shape)}"
        )
    return x
