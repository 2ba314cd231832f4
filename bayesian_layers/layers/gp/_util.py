"""Input checks and output random variables shared by the sparse and random-feature GP layers.

Private: no stability promise. ``check_input_dtype`` is the dtype rule of the GP
layers (a floating input in the layer's dtype, or autocast's lower-precision dtype
while autocast is on); ``function_output`` builds the returned random variable through
the tracers (so it can be named, recorded and conditioned like ``bl.Normal``) and marks
it as a distribution over function values (epistemic variance).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from ... import tracing as _tracing
from ..._function_space import mark_function_space
from ...random_variable import RandomVariable
from ..base import check_input

__all__ = ["check_count", "check_real", "check_input_dtype", "check_name", "function_output"]


def check_count(owner: str, name: str, value: object) -> int:
    """``value`` if it is an ``int >= 1``; else ``TypeError``/``ValueError`` naming it."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{owner} expected `{name}` to be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{owner} expected `{name}` >= 1, got {value}")
    return value


def check_real(
    owner: str, name: str, value: object, *, lower: float = 0.0, strict: bool = False
) -> float:
    """``float(value)`` if it is a finite real number ``>= lower`` (``> lower`` when
    ``strict``); else ``TypeError``/``ValueError`` naming the argument."""
    bound = f"{'>' if strict else '>='} {lower:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner} expected `{name}` to be a finite number {bound}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < lower or (strict and number == lower):
        raise ValueError(f"{owner} expected `{name}` to be a finite number {bound}, got {value!r}")
    return number


def check_input_dtype(owner: str, x: Tensor, dtype: torch.dtype) -> None:
    """Raise ``TypeError`` unless ``x`` is in ``dtype`` or, under autocast on ``x``'s
    device, in autocast's dtype (the rule of :func:`~.base.check_input`; the layer then
    computes in ``dtype``), with a message that says how to convert."""
    try:
        check_input(x, owner, "x", dtype=dtype)
    except TypeError:
        raise TypeError(
            f"{owner} expected input `x` of dtype {dtype} (the layer's dtype; convert the "
            f"input or the layer with .to(...)), got {x.dtype}"
        ) from None


def check_name(owner: str, name: object) -> str | None:
    """``name`` if it is a ``str`` or ``None``; else ``TypeError``."""
    if name is not None and not isinstance(name, str):
        raise TypeError(f"{owner} expected `name` to be a str or None, got {type(name).__name__}")
    return name


def function_output(dist: Distribution, value: Tensor, name: str | None) -> RandomVariable:
    """``RandomVariable(dist, value, name)``, through the tracers when one is active, marked
    with :func:`~bayesian_layers._function_space.mark_function_space`."""
    if _tracing._active and _tracing.is_tracing():
        rv = _tracing.variable(dist, name=name, value=value)
    else:
        rv = RandomVariable(dist, value=value, name=name)
    return mark_function_space(rv)
