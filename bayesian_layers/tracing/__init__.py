"""Tracing: intercept every random-variable construction in a program.

A *program* is any Python callable that builds random variables: with the
constructors of :mod:`bayesian_layers.random_variables` (``bl.Normal(...)``), by
calling Bayesian layers (each whole weight draw is a random variable named by its
module path, ``"encoder.0.weight"``), or with a :func:`traceable` function of your
own. Inside ``with trace(tracer):`` every such construction ``f(*args, **kwargs)``
becomes ``tracer(f, *args, **kwargs)``; the tracer may change the arguments (for
example set ``kwargs["value"]``), call ``f``, and return a random variable.

Nesting order: tracers form a thread-local stack and the *innermost* (most
recently entered) runs first; while a tracer runs it is taken off the stack, so
the ``f`` it calls goes to the next tracer out, and the outermost tracer's ``f``
builds the variable. ``with tape() as t, condition(z=0.0):`` therefore records the
conditioned value; and when two tracers set the same argument, the outer one, acting
last before construction, wins (``with condition(...), trace(mean_weights):`` keeps
the conditioned weights). Each context restores the stack as it found it on exit, also
when the program raises.

Layer weights are named by their module path relative to the outermost module
called inside the trace (``model(x)`` names the weights of ``model.encoder[0]``
``"encoder.0.weight"``; a layer called on its own names them ``"weight"``), after
the prefixes of any :func:`name_scope` around the call. The names come from
``named_modules()`` of that outermost module, found with global module hooks that
exist only while some thread traces. One name means one random variable: a layer
drawing again (called twice, or a cell per sequence) reuses its name, but if two
*different* layers reach the same name in one trace (``dec(enc(x))`` with two
``nn.Sequential`` models, both ``"0.weight"``) the second draw raises ``ValueError``;
call them in ``name_scope("enc")`` / ``name_scope("dec")`` blocks, from one parent
module, or inside :func:`module_names`. While a tracer is active every layer draws
whole weights, one per call (Flipout and local reparameterization draw a whole
weight too, so the tracer sees one random variable per weight); layers in
``"mean"`` sampling mode draw nothing and are not traced. Cells of recurrent layers
trace their weights once per sequence, at the draw. With no tracer active nothing
changes: layers check one counter. ``EmbeddingReparameterization`` is not traced
(it draws the rows it looks up, never a whole table).

Layers that *return* random variables under a ``name=`` (stochastic outputs, GP
layers, point processes) reach the tracers by building them with :func:`variable`
(any distribution) or a :func:`traceable` function: the one hook, as
``bl.Normal``'s constructors use; their names are taken as given (no scope).

A :func:`condition` warns when it exits if a name it was given reached no random
variable during the whole context (a misspelling); values given explicitly to a
:func:`~bayesian_layers.make_log_joint_fn` function win over a surrounding
``condition``.

Example:
    >>> import torch, bayesian_layers as bl
    >>> def program():
    ...     z = bl.Normal(0.0, 1.0, name="z")
    ...     return bl.Normal(z, 0.5, name="x")
    >>> with bl.tape() as t, bl.condition(z=torch.tensor(1.0)):
    ...     x = program()
    >>> list(t), float(t["z"])
    (['z', 'x'], 1.0)
    >>> log_joint = bl.make_log_joint_fn(program)
    >>> round(float(log_joint(z=torch.tensor(0.0), x=torch.tensor(0.0))), 4)
    -1.1447
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from torch import nn

from ._paths import (
    enter_module as _enter_module,
)
from ._paths import (
    exit_module as _exit_module,
)
from ._paths import (
    module_names,
    module_path,  # noqa: F401 - the layers call `tracing.module_path`
    name_scope,
)
from ._paths import (
    reset_frames as _reset_frames,
)
from ._state import Tracer
from ._state import thread_state as _local
from ._state import tracer_stack as _stack

__all__ = [
    "trace",
    "traceable",
    "tape",
    "condition",
    "is_tracing",
    "module_names",
    "name_scope",
    "mean_weights",
    "layer_parameter",
    "variable",
    "LayerParameter",
    "Tracer",
]


F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
# Trace contexts open in any thread: the layers' fast path reads `tracing._active` first,
# so it lives here (rebound by `_activate`/`_deactivate`), not in a submodule.
_active = 0
# The global module hooks that name layer weights, present while any trace is open.
_hooks: list[Any] = []


def is_tracing() -> bool:
    """True when a tracer is active in this thread (one global read when none is)."""
    return _active != 0 and bool(getattr(_local, "stack", None))


def _activate() -> None:
    global _active
    with _lock:
        if _active == 0:
            reg = nn.modules.module
            _hooks.append(reg.register_module_forward_pre_hook(_enter_module))
            _hooks.append(reg.register_module_forward_hook(_exit_module, always_call=True))
        _active += 1


def _deactivate() -> None:
    global _active
    with _lock:
        _active -= 1
        if _active == 0:
            while _hooks:
                _hooks.pop().remove()


# ------------------------------------------------------------------------ core
@contextmanager
def trace(tracer: Tracer) -> Iterator[None]:
    """Context: route every traceable call ``f(*args, **kwargs)`` through ``tracer``.

    Args:
        tracer: ``tracer(f, *args, **kwargs)`` returns what the call returns; it may
            change the arguments, call ``f`` (the next tracer out, or the real
            constructor), or return something else.

    The innermost tracer runs first; the stack is thread-local and restored on exit,
    exceptions included.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> def double_scale(f, *args, **kwargs):
        ...     kwargs["scale"] = 2 * kwargs["scale"]
        ...     return f(*args, **kwargs)
        >>> with bl.trace(double_scale):
        ...     bl.Normal(loc=0.0, scale=1.5).stddev
        tensor(3.)
    """
    if not callable(tracer):
        raise TypeError(f"trace expected a callable tracer, got {type(tracer).__name__}")
    stack = _stack()
    saved = list(stack)
    if not saved:
        _reset_frames()  # a fresh outermost trace: no module call is open yet
    _activate()
    stack.append(tracer)
    try:
        yield
    finally:
        stack[:] = saved
        if not saved:
            _reset_frames()
        _deactivate()


def _dispatch(f: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """Call the innermost tracer on ``f``, with that tracer off the stack meanwhile."""
    stack = _local.stack
    tracer = stack.pop()
    try:
        return tracer(f, *args, **kwargs)
    finally:
        stack.append(tracer)


def traceable(fn: F) -> F:
    """Make ``fn`` visible to tracers: under :func:`trace` its calls go through the tracers.

    Example:
        >>> import bayesian_layers as bl
        >>> @bl.traceable
        ... def coin(p, *, name=None, value=None):
        ...     return bl.Bernoulli(probs=p, name=name, value=value)
        >>> with bl.tape() as t:
        ...     _ = coin(0.5, name="c")
        >>> list(t)
        ['c']
    """

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if _active and getattr(_local, "stack", None):
            return _dispatch(wrapped, args, kwargs)
        return fn(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


# Built on `trace` and `traceable` above, so imported once they exist.
from ._handlers import condition, tape  # noqa: E402
from ._variables import LayerParameter, layer_parameter, mean_weights, variable  # noqa: E402
