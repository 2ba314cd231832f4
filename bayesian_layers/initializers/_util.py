"""Helpers of the initializer families: fans, argument checks, stable ``log(softplus)``.

Private: the names that other modules use are re-exported by
:mod:`bayesian_layers.initializers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of shape ``(out, in, *kernel)``; ``(n, n)`` for 1-d."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def pname(prefix: str, suffix: str) -> str:
    if not suffix:
        return prefix
    return f"{prefix}_{suffix}" if prefix else suffix


def _check_number(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{owner} expected `{name}` to be a number, got {type(value).__name__} {value!r}"
        )
    return float(value)


def check_finite(owner: str, name: str, value: object) -> float:
    """``value`` as a float; ``TypeError`` for a non-number, ``ValueError`` for NaN or ±inf."""
    v = _check_number(owner, name, value)
    if not math.isfinite(v):
        raise ValueError(f"{owner} expected `{name}` to be a finite number, got {value!r}")
    return v


def check_positive(owner: str, name: str, value: object) -> float:
    """``value`` as a float; ``TypeError`` if not a number, ``ValueError`` unless finite, > 0."""
    v = _check_number(owner, name, value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{owner} expected `{name}` to be a finite positive number, got {value!r}")
    return v


def check_non_negative(owner: str, name: str, value: object) -> float:
    """``value`` as a float; ``TypeError`` if not a number, ``ValueError`` unless finite, >= 0."""
    v = _check_number(owner, name, value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(
            f"{owner} expected `{name}` to be a finite non-negative number, got {value!r}"
        )
    return v


def check_shape(owner: str, shape: Sequence[int]) -> torch.Size:
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in dims):
        raise ValueError(
            f"{owner} expected `shape` to be a sequence of non-negative ints, got {shape!r}"
        )
    return torch.Size(dims)


#: Below this ``rho``, ``log(softplus(rho)) = rho + log1p(-exp(rho)/2 + ...)`` equals
#: ``rho`` to within ``exp(rho)/2 < 5e-14`` (relative error < 2e-15); above it
#: ``softplus(rho)`` is a normal float in float32 and float64, so its log is accurate.
LOG_SOFTPLUS_CUT = -30.0


def log_softplus(rho: Tensor) -> Tensor:
    """``log(softplus(rho))``, finite with a finite gradient for every finite ``rho``.

    ``softplus(rho)`` underflows to 0 in float32 below ``rho ≈ -104`` (and is
    subnormal below ``≈ -87``), where ``log`` would give ``-inf`` and its gradient
    ``inf``. Since ``softplus(rho) = exp(rho) (1 - exp(rho)/2 + ...)``, the logarithm
    is ``rho`` below :data:`LOG_SOFTPLUS_CUT`; each branch only sees inputs where it
    is finite, so the gradient (``sigmoid(rho) / softplus(rho)``, ``→ 1``) has no
    NaN from the branch not taken.

    Example:
        >>> log_softplus(torch.tensor([-200.0, 0.0])).tolist()
        [-200.0, -0.3665129...]
    """
    low = rho < LOG_SOFTPLUS_CUT
    return torch.where(low, rho, torch.log(F.softplus(rho.clamp(min=LOG_SOFTPLUS_CUT))))


def softplus_scale(owner: nn.Module, prefix: str, rho: Tensor) -> Tensor:
    """``softplus(rho)``: the scale of a softplus-parameterised family.

    Computed afresh at every call, so each forward pass and each ``losses`` query
    owns its graph: two losses, gradient accumulation over several forward passes,
    threads sharing one model and ``torch.func`` transforms all work as with
    ``nn.Linear``. (``owner`` and ``prefix`` are kept for subclasses that want to
    know whose scale they compute.)
    """
    return F.softplus(rho)


#: Standard deviation of a standard normal truncated to [-2, 2].
TRUNC2_STD = 0.87962566103423978
