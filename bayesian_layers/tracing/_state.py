"""The tracer stack's thread-local state, shared by the tracing modules.

Private: no stability promise. ``_local.stack`` is this thread's tracer stack
(innermost last); the other ``_local`` fields belong to :mod:`._paths` and
:mod:`._handlers`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Tracer = Callable[..., Any]

_local = threading.local()


def _stack() -> list[Tracer]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack
