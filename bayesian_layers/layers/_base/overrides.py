"""Per-thread overrides of a layer's sampling mode and K, pushed by the context managers
of :mod:`bayesian_layers.sampling` (private: no stability promise)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

__all__ = ["push_override", "pop_override", "top_override", "overriding", "PredictiveCall"]


class _Overrides(threading.local):
    """The tables of the calling thread: ``modes`` maps ``id(layer)`` to a list of
    ``(token, mode, frozen_noise)`` entries, ``samples`` to a list of ``(token, K)`` and
    ``predictive`` to a list of ``(token, PredictiveCall)`` (inside
    :func:`bayesian_layers.predict`); the last entry wins. A context
    removes only its own entry at exit, so contexts in different threads (or exiting out
    of order in one thread) never restore each other's state."""

    def __init__(self) -> None:
        # both tables exist in every thread from its first look: a compiled call is
        # then traced against an empty table, as it finds it after any context exits
        # (no recompilation the first time a context is used)
        self.modes: dict[int, list[tuple]] = {}
        self.samples: dict[int, list[tuple]] = {}
        self.predictive: dict[int, list[tuple]] = {}


_OVERRIDES = _Overrides()


class PredictiveCall(NamedTuple):
    """The ``predictive`` override's value: what a layer learns of the
    :func:`bayesian_layers.predict` call it runs in.

    Attributes:
        marginal: only each example's law is asked for (``joint=False``).
        store: a dict that lives for the one call, shared by its Bayesian layers.
    """

    marginal: bool
    store: dict[Any, Any]


def _thread_table(kind: str) -> dict[int, list[tuple]]:
    table: dict[int, list[tuple]] = getattr(_OVERRIDES, kind)  # made per thread in __init__
    return table


def push_override(layers: Iterable[object], kind: str, token: object, value: Any) -> None:
    """Give ``layers`` a ``"modes"``, ``"samples"`` or ``"predictive"`` override in the
    calling thread only.

    A ``"modes"`` entry carries its own frozen-noise store, so a frozen-sample context
    is its own function sample, forgotten when the entry is removed.
    """
    table = _thread_table(kind)
    for layer in layers:
        entry = (token, value, {}) if kind == "modes" else (token, value)
        table.setdefault(id(layer), []).append(entry)


def pop_override(layers: Iterable[object], kind: str, token: object) -> None:
    """Remove the override entries of ``token`` (wherever they are in each stack)."""
    table = _thread_table(kind)
    for layer in layers:
        entries = table.get(id(layer))
        if not entries:
            continue
        entries[:] = [e for e in entries if e[0] is not token]
        if not entries:
            del table[id(layer)]


@contextmanager
def overriding(layers: Sequence[object], kind: str, value: Any) -> Iterator[None]:
    """Context: ``layers`` get a ``kind`` override of ``value`` in the calling thread,
    removed (this context's own entry only) at exit."""
    token = object()
    push_override(layers, kind, token, value)
    try:
        yield
    finally:
        pop_override(layers, kind, token)


def top_override(layer: object, kind: str) -> tuple | None:
    """The innermost ``kind`` override of ``layer`` in the calling thread, if any."""
    entries = _thread_table(kind).get(id(layer))
    return entries[-1] if entries else None
