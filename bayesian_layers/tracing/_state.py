"""The tracer stack's thread-local state, shared by the tracing modules.

Private: no stability promise. ``thread_state.stack`` is this thread's tracer stack
(innermost last); the other ``thread_state`` fields belong to :mod:`._paths` and
:mod:`._handlers`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

#: A tracer: inside :func:`~bayesian_layers.tracing.trace`, every traceable call
#: ``f(*args, **kwargs)`` (a random-variable constructor, a layer's weight) becomes
#: ``tracer(f, *args, **kwargs)``, which returns what the call returns.
Tracer = Callable[..., Any]

thread_state = threading.local()


def tracer_stack() -> list[Tracer]:
    stack = getattr(thread_state, "stack", None)
    if stack is None:
        stack = thread_state.stack = []
    return stack
