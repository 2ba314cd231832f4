"""Which random variables describe uncertainty about the function itself.

A Gaussian-process layer (exact, sparse, random features) returns a random variable
whose distribution is over function values: its variance is epistemic, not noise.
The layer marks its output with :func:`mark_function_space`; ``bl.predict`` reads the
mark with :func:`is_function_space` and reports that variance as epistemic.
"""

from __future__ import annotations

from typing import Any

from .random_variables.variable import RandomVariable

__all__ = ["mark_function_space", "is_function_space"]

_FLAG = "_function_space"


def mark_function_space(rv: RandomVariable) -> RandomVariable:
    """Mark ``rv`` as a distribution over function values (returns ``rv``)."""
    rv.__dict__[_FLAG] = True
    return rv


def is_function_space(obj: Any) -> bool:
    """Whether ``obj`` is a random variable marked by :func:`mark_function_space`."""
    return isinstance(obj, RandomVariable) and bool(obj.__dict__.get(_FLAG, False))
