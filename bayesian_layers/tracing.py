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
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .random_variable import RandomVariable

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

Tracer = Callable[..., Any]
F = TypeVar("F", bound=Callable[..., Any])

_local = threading.local()
_lock = threading.Lock()
_active = 0  # trace contexts open in any thread: the layers' fast path reads this first
_hooks: list[Any] = []


def _stack() -> list[Tracer]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def is_tracing() -> bool:
    """True when a tracer is active in this thread (one global read when none is)."""
    return _active != 0 and bool(getattr(_local, "stack", None))


# ------------------------------------------------------------------ module paths
# ``_local.frames``: the modules whose calls are open in the trace, outermost first;
# ``_local.frame_names``: the paths of every module under ``frames[0]``;
# ``_local.drawn``: traced weight name -> (layer, param), for the outermost trace.
def _reset_frames() -> None:
    _local.frames = []
    _local.frame_names = {}
    _local.drawn = {}


def _enter_module(module: nn.Module, args: Any) -> None:
    if not getattr(_local, "stack", None):
        return
    frames = getattr(_local, "frames", None)
    if not frames:  # the outermost module called in the trace names every module below it
        _local.frame_names = {m: n for n, m in module.named_modules()}
        frames = _local.frames = []
    frames.append(module)


def _exit_module(module: nn.Module, args: Any, output: Any) -> None:
    frames = getattr(_local, "frames", None)
    if frames and frames[-1] is module:
        frames.pop()


def _relative_path(module: nn.Module) -> str | None:
    """``module``'s path in the innermost :func:`module_names` root holding it, else
    under the outermost module called in the trace; None when neither holds it."""
    for names in reversed(getattr(_local, "roots", ())):
        prefix = names.get(module)
        if prefix is not None:
            return prefix
    if getattr(_local, "frames", None):
        return _local.frame_names.get(module)
    return None


def module_path(module: nn.Module, param: str) -> str:
    """``param``'s traced name: the :func:`name_scope` prefixes, then the path of
    ``module`` (see :func:`module_names`), then ``param``, joined by dots.

    Within one trace a name belongs to one ``(module, param)``: a different layer's
    draw reaching a name already drawn raises ``ValueError`` (two random variables
    would be recorded and conditioned as one).
    """
    parts = list(getattr(_local, "scopes", ()))
    prefix = _relative_path(module)
    if prefix:
        parts.append(prefix)
    parts.append(param)
    name = ".".join(parts)
    drawn = getattr(_local, "drawn", None)
    if drawn is not None and getattr(_local, "stack", None):
        owner, owner_param = drawn.setdefault(name, (module, param))
        if owner is not module or owner_param != param:
            raise ValueError(
                f"{type(module).__name__} draws its {param!r} under the traced name {name!r}, "
                f"which another layer ({type(owner).__name__}, its {owner_param!r}) already "
                "drew in this trace: two random variables cannot share a name. Call the "
                'modules inside `with bl.tracing.name_scope("encoder"):`-style blocks, '
                "from one parent module, or under `bl.tracing.module_names(parent)`"
            )
    return name


@contextmanager
def name_scope(prefix: str) -> Iterator[None]:
    """Context: the traced names of layer weights drawn inside start with ``prefix.``.

    For programs that call several top-level modules whose module paths coincide
    (two ``nn.Sequential`` models both name their first weight ``"0.weight"``).
    Scopes nest (``"outer.inner.0.weight"``) and are thread-local; names given to
    random variables explicitly (``bl.Normal(..., name="z")``) are left as given.

    Args:
        prefix: a non-empty name, dots allowed inside (``"vae.encoder"``).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> enc = torch.nn.Sequential(bl.layers.LinearReparameterization(3, 2))
        >>> dec = torch.nn.Sequential(bl.layers.LinearReparameterization(2, 3))
        >>> with bl.tape() as t:
        ...     with bl.tracing.name_scope("enc"):
        ...         h = enc(torch.randn(1, 3))
        ...     with bl.tracing.name_scope("dec"):
        ...         _ = dec(h)
        >>> list(t)
        ['enc.0.weight', 'dec.0.weight']
    """
    if not isinstance(prefix, str):
        raise TypeError(
            f"name_scope expected `prefix` to be a non-empty str, got {type(prefix).__name__}"
        )
    if not prefix or prefix.startswith(".") or prefix.endswith("."):
        raise ValueError(
            "name_scope expected `prefix` to be a non-empty name without leading or "
            f"trailing dots, got {prefix!r}"
        )
    scopes = getattr(_local, "scopes", None)
    if scopes is None:
        scopes = _local.scopes = []
    saved = list(scopes)
    scopes.append(prefix)
    try:
        yield
    finally:
        scopes[:] = saved


@contextmanager
def module_names(root: nn.Module, prefix: str = "") -> Iterator[None]:
    """Context: name layer weights by their path in ``root`` (plus ``prefix``).

    For programs that call several top-level modules (an encoder, then a decoder),
    whose weights would otherwise each be named from their own root
    (``"0.weight"`` twice).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> model = torch.nn.ModuleDict({
        ...     "encoder": torch.nn.Sequential(bl.layers.LinearReparameterization(3, 2)),
        ...     "decoder": torch.nn.Sequential(bl.layers.LinearReparameterization(2, 3))})
        >>> with bl.tracing.module_names(model), bl.tape() as t:
        ...     _ = model["decoder"](model["encoder"](torch.randn(1, 3)))
        >>> list(t)
        ['encoder.0.weight', 'decoder.0.weight']
    """
    if not isinstance(root, nn.Module):
        raise TypeError(f"module_names expected an nn.Module, got {type(root).__name__}")
    roots = getattr(_local, "roots", None)
    if roots is None:
        roots = _local.roots = []
    head = f"{prefix}." if prefix else ""
    names = {m: (head + n if n else prefix) for n, m in root.named_modules()}
    saved = list(roots)
    roots.append(names)
    try:
        yield
    finally:
        roots[:] = saved


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


@traceable
def variable(
    distribution: Distribution,
    *,
    name: str | None = None,
    value: Tensor | None = None,
    sample_shape: torch.Size | tuple[int, ...] = (),
) -> RandomVariable:
    """A traceable ``RandomVariable(distribution, value, sample_shape, name)`` for any
    distribution (the ``bl.Normal``-style constructors are traceable already)."""
    return RandomVariable(distribution, value=value, sample_shape=sample_shape, name=name)


class LayerParameter(RandomVariable):
    """A whole draw of a layer's parameter, as a random variable (what tracers see).

    Its distribution is the layer's current posterior ``q``; ``layer`` and ``param``
    say whose parameter it is. Program inference (:func:`bayesian_layers.program_elbo`)
    scores these through the layers' ``losses`` (the KL), not by their log-density.

    Shape:
        the parameter's shape, with a leading K inside
        :func:`~bayesian_layers.vectorized_samples`.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = bl.layers.LinearFlipout(3, 2)
        >>> with bl.tape() as t:
        ...     _ = layer(torch.randn(4, 3))
        >>> w = t["weight"]
        >>> type(w).__name__, w.layer is layer, w.param, w.shape
        ('LayerParameter', True, 'weight', torch.Size([2, 3]))
    """

    layer: nn.Module
    param: str


@traceable
def layer_parameter(
    layer: nn.Module,
    param: str,
    *,
    name: str,
    value: Tensor | None = None,
    noise: Tensor | None = None,
) -> LayerParameter:
    """The random variable of one draw of ``layer``'s parameter ``param``.

    Layers call this (through the tracers) for each whole weight draw while a tracer
    is active. Without ``value`` it draws from ``noise`` (standard noise the layer
    has drawn already) or, without that, as the layer's sampling mode says (fresh, or
    the frozen sample); a given ``value`` must have the parameter's shape (used for
    all K function samples in vectorised mode) or ``(K, *shape)``.
    """
    distribution, value, sample_shape = layer.param_draw(  # type: ignore[operator]
        param, value, noise=noise
    )
    rv = LayerParameter(distribution, value=value, sample_shape=sample_shape, name=name)
    rv.layer = layer
    rv.param = param
    return rv


# --------------------------------------------------------------------- tracers
def mean_weights(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Tracer: every layer weight takes its posterior mean (what ``"mean"`` mode uses).

    Other random variables pass unchanged. ``with bl.trace(bl.tracing.mean_weights):
    model(x)`` equals ``with bl.posterior_mean(model): model(x)``.
    """
    if f is layer_parameter:
        layer, param = args[0], args[1]
        kwargs["value"] = layer.point(param)
    return f(*args, **kwargs)


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


def _collect_values(owner: str, positional: tuple, named: dict[str, Any]) -> dict[str, Any]:
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
    conditioner = _Conditioner(_collect_values("condition", variables, values))
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


class _Conditioner:
    """Tracer: a call named like a key of ``fixed`` gets that value, unless a
    :func:`_shield` opened inside this tracer holds the name.

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
def _shield(names: frozenset[str] | None, owner: str, hint: str = "") -> Iterator[None]:
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
