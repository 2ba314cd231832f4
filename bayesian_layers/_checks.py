"""Private helpers shared across the package: argument checks and small numerics.

No stability promise: not part of the public API. Every helper that more than one
module needs lives here (layers' own shared helpers: :mod:`bayesian_layers.layers._util`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_count", "check_optional_count", "inverse_softplus"]

_SOFTPLUS_THRESHOLD = 20.0  # torch's default: softplus(x) = x above it


def check_count(owner: str, name: str, value: object) -> int:
    """``value`` if it is an ``int >= 1``; else ``TypeError`` (not an int) or
    ``ValueError`` (< 1), naming ``owner`` and the argument ``name``.

    Example:
        >>> check_count("Linear", "in_features", 3)
        3
        >>> check_count("Linear", "in_features", 0)
        Traceback (most recent call last):
        ...
        ValueError: Linear expected `in_features` >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner} expected `{name}` to be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{owner} expected `{name}` >= 1, got {value}")
    return value


def check_optional_count(owner: str, name: str, value: object) -> int | None:
    """``None``, or ``value`` checked by :func:`check_count`."""
    return None if value is None else check_count(owner, name, value)


def inverse_softplus(value: float | Tensor) -> float | Tensor:
    """``x`` with ``softplus(x) == value`` (to rounding) for positive ``value``.

    Takes a float (returns a float) or a tensor (returns a tensor, exact above
    torch's softplus threshold 20, where ``softplus(x) = x``).

    Example:
        >>> round(inverse_softplus(math.log(2.0)), 12)
        0.0
    """
    if isinstance(value, Tensor):
        return torch.where(value > _SOFTPLUS_THRESHOLD, value, torch.expm1(value).log())
    return value + math.log(-math.expm1(-value))
