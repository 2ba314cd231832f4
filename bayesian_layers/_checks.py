"""Private helpers shared across the package: argument checks and small numerics.

No stability promise: not part of the public API. Every helper that more than one
module needs lives here (layers' own shared helpers: :mod:`bayesian_layers.layers._util`).
"""

from __future__ import annotations

import math
import numbers
from numbers import Real
from typing import overload

import torch
from torch import Tensor
from torch.nn.parameter import UninitializedTensorMixin  # type: ignore[attr-defined]

__all__ = [
    "check_count",
    "check_optional_count",
    "check_real",
    "check_name",
    "is_lazy",
    "inverse_softplus",
]

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
    # any integer type, as torch's layers take (a size from numpy: np.prod(shape))
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner} expected `{name}` to be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{owner} expected `{name}` >= 1, got {value}")
    return int(value)


def check_optional_count(owner: str, name: str, value: object) -> int | None:
    """``None``, or ``value`` checked by :func:`check_count`."""
    return None if value is None else check_count(owner, name, value)


def check_real(
    owner: str, name: str, value: object, *, lower: float = 0.0, strict: bool = False
) -> float:
    """``float(value)`` if it is a finite real number ``>= lower`` (``> lower`` when
    ``strict``); else ``TypeError`` (not a number) or ``ValueError``, naming ``owner`` and
    the argument ``name``.

    Example:
        >>> check_real("ActNorm", "eps", 1e-6, strict=True)
        1e-06
        >>> check_real("ActNorm", "eps", 0.0, strict=True)
        Traceback (most recent call last):
        ...
        ValueError: ActNorm expected `eps` to be a finite number > 0, got 0.0
    """
    bound = f"{'>' if strict else '>='} {lower:g}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{owner} expected `{name}` to be a finite number {bound}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < lower or (strict and number == lower):
        raise ValueError(f"{owner} expected `{name}` to be a finite number {bound}, got {value!r}")
    return number


def check_name(owner: str, name: object) -> str | None:
    """``name`` if it is a ``str`` or ``None`` (the name of an output random variable);
    else ``TypeError`` naming ``owner``."""
    if name is not None and not isinstance(name, str):
        raise TypeError(f"{owner} expected `name` to be a str or None, got {name!r}")
    return name


def is_lazy(value: object) -> bool:
    """Whether ``value`` is a lazy (uninitialised) parameter or buffer.

    An ``isinstance`` test, not ``torch.nn.parameter.is_lazy``: ``torch.compile`` traces it.
    """
    return isinstance(value, UninitializedTensorMixin)


@overload
def inverse_softplus(value: float) -> float: ...
@overload
def inverse_softplus(value: Tensor) -> Tensor: ...
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
