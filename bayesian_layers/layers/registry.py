"""Which Bayesian layer stands in for which torch layer, under which estimator.

A layer family registers its classes next to their definitions with
:func:`converts`; :func:`bayesian_layers.to_bayesian` reads only this registry
(no class is found by its module's name). A user's own layer joins the same way:

.. code-block:: python

    @converts(MyTorchLayer, "reparameterization")
    class MyBayesianLayer(BayesianLayer):
        @classmethod
        def from_torch(cls, module, **kwargs): ...

Example:
    >>> from torch import nn
    >>> from bayesian_layers.layers import registry
    >>> sorted(registry.counterparts(nn.Linear))
    ['flipout', 'local_reparameterization', 'reparameterization', 'variational_dropout']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeVar

from torch import nn

__all__ = ["converts", "counterparts", "registered_torch_classes", "unregister", "ESTIMATORS"]

#: The names a Bayesian class may register under, one spelling each: the three weight
#: estimators every family may offer, then whole families that stand in for a torch layer
#: (``"variational_dropout"``: :mod:`~bayesian_layers.layers.variational_dropout`, for
#: ``nn.Linear`` and ``nn.Conv2d``); :data:`bayesian_layers.convert.ESTIMATORS` is this
#: tuple.
ESTIMATORS = ("reparameterization", "flipout", "local_reparameterization", "variational_dropout")

_REGISTRY: dict[type[nn.Module], dict[str, type[nn.Module]]] = {}

C = TypeVar("C", bound=type)


def _check_module_class(value: object, what: str) -> None:
    if not (isinstance(value, type) and issubclass(value, nn.Module)):
        raise TypeError(f"converts expected {what} to be an nn.Module class, got {value!r}")


def converts(torch_cls: type[nn.Module], estimator: str) -> Callable[[C], C]:
    """Class decorator: the decorated Bayesian layer replaces ``torch_cls`` under
    ``estimator`` in :func:`~bayesian_layers.to_bayesian`.

    The class must be an ``nn.Module`` offering the classmethod
    ``from_torch(module, **kwargs)``, which builds it from a ``torch_cls`` instance
    (posterior means at the module's weights, same device, dtype and hyperparameters).
    Registering the same class again (a module reload) is a no-op.

    Args:
        torch_cls: the deterministic torch layer class replaced.
        estimator: one of :data:`ESTIMATORS`.

    Raises:
        TypeError: ``torch_cls`` or the decorated class is not an ``nn.Module`` class,
            or the decorated class has no ``from_torch``.
        ValueError: ``estimator`` is unknown, or another class already holds the slot.

    Example:
        >>> from torch import nn
        >>> @converts(nn.Linear, "flipout")
        ... class NotAModule:
        ...     pass
        Traceback (most recent call last):
        ...
        TypeError: converts expected the decorated class to be an nn.Module class, ...
    """
    _check_module_class(torch_cls, "`torch_cls`")
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"converts expected an estimator in {ESTIMATORS}, got {estimator!r}")

    def register(cls: C) -> C:
        _check_module_class(cls, "the decorated class")
        if not callable(getattr(cls, "from_torch", None)):
            raise TypeError(f"converts: {cls.__name__} has no from_torch(module, **kwargs)")
        slot = _REGISTRY.setdefault(torch_cls, {})
        held = slot.get(estimator)
        same = held is not None and (held.__module__, held.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if held is not None and not same:
            raise ValueError(
                f"converts: nn.{torch_cls.__name__} under {estimator!r} is already "
                f"{held.__qualname__}, cannot also be {cls.__qualname__}; "
                "unregister it first"
            )
        slot[estimator] = cls
        return cls

    return register


def unregister(
    torch_cls: type[nn.Module], estimator: str | None = None
) -> dict[str, type[nn.Module]]:
    """Remove the counterparts of ``torch_cls`` (all, or the one under ``estimator``)
    and return what was removed, estimator -> class (empty when nothing was held).
    Re-register a removed class with ``converts(torch_cls, estimator)(cls)``.

    Example:
        >>> from torch import nn
        >>> class Toy(nn.Module): ...
        >>> class BayesianToy(nn.Module):
        ...     @classmethod
        ...     def from_torch(cls, module):
        ...         return cls()
        >>> _ = converts(Toy, "reparameterization")(BayesianToy)
        >>> counterparts(Toy)["reparameterization"] is BayesianToy
        True
        >>> list(unregister(Toy)), Toy in registered_torch_classes()
        (['reparameterization'], False)
    """
    slot = _REGISTRY.get(torch_cls, {})
    names = list(slot) if estimator is None else [estimator] if estimator in slot else []
    removed = {name: slot.pop(name) for name in names}
    if torch_cls in _REGISTRY and not slot:
        del _REGISTRY[torch_cls]
    return removed


def counterparts(torch_cls: type[nn.Module]) -> Mapping[str, type[nn.Module]]:
    """Estimator name -> Bayesian class registered for exactly ``torch_cls`` (empty
    when there is none); a read-only view."""
    return MappingProxyType(_REGISTRY.get(torch_cls, {}))


def registered_torch_classes() -> tuple[type[nn.Module], ...]:
    """The torch classes with at least one Bayesian counterpart, in registration order."""
    return tuple(_REGISTRY)
