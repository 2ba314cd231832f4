"""Which Bayesian layer stands in for which torch layer, under which estimator.

A layer family registers its classes next to their definitions with
:func:`converts`; :func:`bayesian_layers.to_bayesian` reads only this registry
(no class is found by its module's name).

Example:
    >>> from torch import nn
    >>> from bayesian_layers.layers import registry
    >>> sorted(registry.counterparts(nn.Linear))
    ['flipout', 'local_reparameterization', 'reparameterization']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeVar

from torch import nn

__all__ = ["converts", "counterparts", "registered_torch_classes", "ESTIMATORS"]

#: the weight estimators a family may offer (others come with later families).
ESTIMATORS = ("reparameterization", "flipout", "local_reparameterization")

_REGISTRY: dict[type[nn.Module], dict[str, type[nn.Module]]] = {}

C = TypeVar("C", bound=type)


def converts(torch_cls: type[nn.Module], estimator: str) -> Callable[[C], C]:
    """Class decorator: the decorated Bayesian layer replaces ``torch_cls`` under
    ``estimator``. The class must offer ``from_torch(module, **kwargs)``.

    Raises:
        TypeError: ``torch_cls`` is not an ``nn.Module`` class, or the decorated class
            has no ``from_torch``.
        ValueError: ``estimator`` is unknown, or another class already holds the slot.
    """
    if not (isinstance(torch_cls, type) and issubclass(torch_cls, nn.Module)):
        raise TypeError(f"converts expected an nn.Module class, got {torch_cls!r}")
    if not isinstance(estimator, str) or not estimator:
        raise ValueError(f"converts expected an estimator name, got {estimator!r}")

    def register(cls: C) -> C:
        if not callable(getattr(cls, "from_torch", None)):
            raise TypeError(f"converts: {cls.__name__} has no from_torch(module, **kwargs)")
        slot = _REGISTRY.setdefault(torch_cls, {})
        held = slot.get(estimator)
        if held is not None and held.__qualname__ != cls.__qualname__:  # reloads re-register
            raise ValueError(
                f"converts: nn.{torch_cls.__name__} under {estimator!r} is already "
                f"{held.__name__}, cannot also be {cls.__name__}"
            )
        slot[estimator] = cls
        return cls

    return register


def counterparts(torch_cls: type[nn.Module]) -> Mapping[str, type[nn.Module]]:
    """Estimator name -> Bayesian class registered for exactly ``torch_cls`` (empty
    when there is none)."""
    return MappingProxyType(_REGISTRY.get(torch_cls, {}))


def registered_torch_classes() -> tuple[type[nn.Module], ...]:
    """The torch classes with at least one Bayesian counterpart, in registration order."""
    return tuple(_REGISTRY)
