"""Private helpers shared by the layer families (no stability promise).

What more than one layer file needs lives here, not in whichever family wrote it
first; package-wide checks live in :mod:`bayesian_layers._checks`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from .._checks import check_count
from ._base import compiled_rng

__all__ = ["check_features", "rademacher", "deprecated_from_torch"]


def check_features(owner: str, name: str, value: object) -> int:
    """A layer size (``in_features``, ``out_channels``, ...): an ``int >= 1``, else a
    ``TypeError``/``ValueError`` naming ``owner`` and ``name``."""
    return check_count(owner, name, value)


def rademacher(shape: torch.Size, like: Tensor) -> Tensor:
    """Random signs ±1 of ``shape`` with ``like``'s dtype and device.

    Eager: eight signs from each random byte through a (256, 8) lookup table
    (:func:`~._base.compiled_rng.table_signs`), about 80x faster on CPU than
    ``bernoulli_``. Under ``torch.compile`` on CPU the same table fills the signs inside
    an opaque op (:func:`~._base.compiled_rng.signs`; a cache filled while tracing would
    be guarded on and force a recompilation); on other devices (and under
    ``torch.export``) they come from ``randint``, which inductor generates well there.
    """
    if torch.compiler.is_compiling():
        if compiled_rng.routes(like):
            return compiled_rng.signs(shape, like)
        bits = torch.randint(0, 2, shape, dtype=like.dtype, device=like.device)
        return bits * 2 - 1
    return compiled_rng.table_signs(shape, like)


def deprecated_from_torch(old: str) -> Any:
    """A classmethod ``old(module, **kwargs)`` that warns ``DeprecationWarning`` and
    calls ``cls.from_torch`` (the one constructor name for "build from a torch layer").

    Example:
        >>> class Layer:
        ...     @classmethod
        ...     def from_torch(cls, module, **kwargs):
        ...         return module
        ...     from_linear = deprecated_from_torch("from_linear")
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     Layer.from_linear(3)
        3
        >>> str(caught[0].message)
        'Layer.from_linear is deprecated; use Layer.from_torch'
    """

    def alias(cls: Any, module: Any, **kwargs: Any) -> Any:
        warnings.warn(
            f"{cls.__name__}.{old} is deprecated; use {cls.__name__}.from_torch",
            DeprecationWarning,
            stacklevel=2,
        )
        return cls.from_torch(module, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = "Deprecated alias of :meth:`from_torch`."
    return classmethod(alias)
