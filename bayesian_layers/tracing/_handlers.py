"""Tracers that record and fix values: :func:`tape`, :func:`condition`, and the shields
that let inference code keep a surrounding ``condition`` off its own names.

Private: the public names are re-exported by :mod:`bayesian_layers.tracing`.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from ..random_variables.variable import RandomVariable
from . import trace
from ._state import thread_state as _local
from ._state import tracer_stack as _stack


@contextmanager
def tape() -> Iterator[OrderedDict[str, RandomVariable]]:
    """Context yielding an ordered dict: every named random variable created inside.

    Keys are names in order of first creation; a name created again (a layer
    called twice) keeps its place and holds the latest variable. Unnamed variables
    are not recorded.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = bl.layers.LinearReparameterization(3, 2)
        >>> model = torch.nn.Sequential(layer, torch.nn.ReLU())
        >>> with bl.tape() as t:
        ...     _ = model(torch.randn(4, 3))
        >>> list(t), t["0.weight"].shape
        (['0.weight'], torch.Size([2, 3]))
    """
    record: OrderedDict[str, RandomVariable] = OrderedDict()

    def recorder(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        rv = f(*args, **kwargs)
        name = getattr(rv, "name", None) if isinstance(rv, RandomVariable) else None
        if name is not None:
            record[name] = rv
        return rv

    with trace(recorder):
        yield record


def _as_value(name: str, value: Any) -> Any:
    if isinstance(value, RandomVariable):
        return value.value
    if isinstance(value, (Tensor, int, float, list, tuple)):
        return value
    raise TypeError(
        f"condition expected a tensor, number or RandomVariable for {name!r}, "
        f"got {type(value).__name__}"
    )


def collect_values(owner: str, positional: tuple, named: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in positional:
        if isinstance(item, RandomVariable):
            if item.name is None:
                raise ValueError(
                    f"{owner} got a RandomVariable without a name ({item!r}); give it "
                    "name=... or pass it as a keyword: condition(z=rv)"
                )
            values[item.name] = item.value
        elif isinstance(item, Mapping):
            for key, val in item.items():
                if not isinstance(key, str):
                    raise TypeError(f"{owner} expected str names, got {type(key).__name__}")
                values[key] = _as_value(key, val)
        else:
            raise TypeError(
                f"{owner} expected named RandomVariables or a mapping of names to values "
                f"as positional arguments, got {type(item).__name__}"
            )
    for key, val in named.items():
        values[key] = _as_value(key, val)
    return values


@contextmanager
def condition(*variables: RandomVariable | Mapping[str, Any], **values: Any) -> Iterator[None]:
    """Context: random variables with these names take these values.

    Args:
        variables: named random variables (each fixes its name to its value) or
            mappings ``{name: value}`` (names like ``"encoder.0.weight"`` that are not
            Python identifiers go here).
        values: ``name=value`` pairs (tensors, numbers or random variables).

    Layer weights are conditioned by module path: ``condition({"0.weight": w})``
    substitutes ``w`` for every draw of that weight. The context may wrap many
    calls; when it exits normally it warns (``UserWarning``, once) about the names
    that no random variable took during the whole context, listing the names it
    saw: a misspelt name does nothing, and so does a name whose value an inner call
    gives explicitly (:func:`~bayesian_layers.make_log_joint_fn` arguments win).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> with bl.condition(z=torch.tensor(2.0)):
        ...     float(bl.Normal(0.0, 1.0, name="z"))
        2.0
    """
    conditioner = Conditioner(collect_values("condition", variables, values))
    with trace(conditioner):
        yield
    unused = sorted(set(conditioner.fixed) - conditioner.used)
    if unused:
        warnings.warn(
            f"condition: no random variable took the value given for {unused} (the names "
            f"seen were {sorted(conditioner.seen)}); check the spelling, or whether an "
            "explicit value given inside won",
            UserWarning,
            stacklevel=3,
        )


class Conditioner:
    """Tracer: a call named like a key of ``fixed`` gets that value, unless a
    :func:`shield` opened inside this tracer holds the name.

    ``seen`` collects every name passing through, ``used`` the names it set.
    """

    def __init__(self, fixed: Mapping[str, Any]) -> None:
        self.fixed = fixed
        self.seen: set[str] = set()
        self.used: set[str] = set()

    def __call__(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        name = kwargs.get("name")
        if name is not None:
            self.seen.add(name)
            if name in self.fixed and not _shielded(name):
                kwargs["value"] = self.fixed[name]
                self.used.add(name)
        return f(*args, **kwargs)


# ``_local.shields``: (stack depth, names or None for all, owner, hint), innermost last.
@contextmanager
def shield(names: frozenset[str] | None, owner: str, hint: str = "") -> Iterator[None]:
    """Context: conditioners already on the tracer stack leave ``names`` alone.

    Tracers entered inside are not affected. ``names=None`` shields every name, and a
    surrounding conditioner that tries to set one raises ``ValueError`` (from
    ``owner``, with ``hint``) instead of being skipped.
    """
    shields = getattr(_local, "shields", None)
    if shields is None:
        shields = _local.shields = []
    saved = list(shields)
    shields.append((len(_stack()), names, owner, hint))
    try:
        yield
    finally:
        shields[:] = saved


def _shielded(name: str) -> bool:
    """Whether the running conditioner must leave ``name`` alone (raises for a shield
    of every name). While a tracer runs it is off the stack, so the stack's length
    is its depth."""
    shields = getattr(_local, "shields", None)
    if not shields:
        return False
    depth = len(_stack())
    for level, names, owner, hint in shields:
        if depth < level and (names is None or name in names):
            if names is None:
                raise ValueError(
                    f"{owner} sets {name!r} itself, but a surrounding `condition` gives it "
                    f"a value too; {hint}"
                )
            return True
    return False
