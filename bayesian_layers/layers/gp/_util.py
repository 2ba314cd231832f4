"""The input dtype rule and the output random variable shared by the GP layers.

Private: no stability promise (argument checks are in :mod:`bayesian_layers._checks`).
``check_input_dtype`` is the dtype rule of the GP layers (a floating input in the
layer's dtype, or autocast's lower-precision dtype while autocast is on);
``function_output`` builds the returned random variable through
the tracers (so it can be named, recorded and conditioned like ``bl.Normal``) and marks
it as a distribution over function values (epistemic variance).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from ... import tracing as _tracing
from ..._function_space import mark_function_space
from ...random_variables.variable import RandomVariable
from ..base import check_input

__all__ = ["check_input_dtype", "function_output"]


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


def function_output(
    dist: Distribution, value: Tensor | Callable[[], Tensor], name: str | None
) -> RandomVariable:
    """``RandomVariable(dist, value, name)``, through the tracers when one is active, marked
    with :func:`~bayesian_layers._function_space.mark_function_space`. A callable ``value``
    is computed when the value is first read (at once under a tracer)."""
    if _tracing.is_tracing():
        rv = _tracing.variable(dist, name=name, value=value() if callable(value) else value)
    elif callable(value):
        rv = RandomVariable.deferred(dist, value, name=name)
    else:
        rv = RandomVariable(dist, value=value, name=name)
    return mark_function_space(rv)
