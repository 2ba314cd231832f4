"""Turn a deterministic network into a Bayesian one: swap its layers in place.

:func:`to_bayesian` replaces every supported torch layer (``nn.Linear``,
``nn.Conv{1,2,3}d``, ``nn.ConvTranspose{1,2,3}d``, ``nn.LSTM``, ``nn.LSTMCell``,
``nn.GRUCell``, ``nn.MultiheadAttention``, ``nn.Embedding``) by its Bayesian
counterpart (DESIGN.md §3), whose posterior means start at the layer's weights
and biases. With ``pretrained_scale=s`` the posterior standard deviations start
at ``s·|w|`` (MOPED, Krishnan et al. 2020), so the trained network's function is
the posterior mean and samples stay close to it.

The mapping is one table (``_FAMILIES``): a family whose Bayesian class is not
defined in :mod:`bayesian_layers.layers` (or its family submodule) is skipped and
reported, unless ``include`` asks for one of its layers, which raises. Modules with
parameters of their own and no counterpart (``nn.GRU``, ``nn.LayerNorm``, ...) are
left as they are and listed in the report's ``unsupported``; a call that converts
nothing warns. Estimator names have one spelling, :data:`ESTIMATORS`. A class is
built by its ``from_linear``/``from_module``/``from_lstm``/... classmethod, or, where
it has none, from the torch layer's constructor arguments and parameters as
listed in the table.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from .initializers import TrainableGlorotNormal, TrainableHeNormal, TrainableNormal
from .layers.base import BayesianLayer

__all__ = [
    "to_bayesian",
    "canonical_estimator",
    "ConversionReport",
    "SwappedLayer",
    "SkippedLayer",
    "UnsupportedLayer",
    "PretrainedNormal",
    "ESTIMATORS",
]

#: The estimator names, one spelling each, used by :func:`to_bayesian`, the CLI and
#: the examples.
ESTIMATORS = ("reparameterization", "flipout", "local_reparameterization")
_REP, _FLIP, _LOCAL = ESTIMATORS
#: Class-name suffix of each estimator (``layers.Linear<suffix>``).
_SUFFIX = {_REP: "Reparameterization", _FLIP: "Flipout", _LOCAL: "LocalReparameterization"}
#: Older spellings, accepted with a DeprecationWarning: the class suffixes and "local".
_DEPRECATED = {**{suffix: name for name, suffix in _SUFFIX.items()}, "local": _LOCAL}
#: Smallest posterior standard deviation ``pretrained_scale`` sets (a zero weight gets it).
MIN_SCALE = 1e-12


@dataclass(frozen=True)
class _Family:
    """One torch layer type, the stem of its Bayesian names and how to build them."""

    torch_cls: type[nn.Module]
    stem: str  # Bayesian class = stem + estimator suffix
    module: str  # submodule of bayesian_layers.layers defining the classes
    estimators: tuple[str, ...]  # estimators with a counterpart in the contract
    constructors: tuple[str, ...]  # classmethods taking (torch_layer, **kwargs), tried in order
    #: Fallback when the class has none of ``constructors``: the constructor's
    #: arguments read off the torch layer, and the parameters to copy (same names).
    arguments: Callable[[Any], tuple[tuple, dict]] | None = None
    copies: tuple[str, ...] = ()


_CONV = (_REP, _FLIP)


def _attention_arguments(m: nn.MultiheadAttention) -> tuple[tuple, dict]:
    bias = m.in_proj_bias is not None
    kv = m.bias_k is not None
    return (m.embed_dim, m.num_heads, m.dropout, bias, kv, m.add_zero_attn), {
        "kdim": m.kdim,
        "vdim": m.vdim,
        "batch_first": m.batch_first,
    }


def _embedding_arguments(m: nn.Embedding) -> tuple[tuple, dict]:
    args = (m.num_embeddings, m.embedding_dim, m.padding_idx, m.max_norm, m.norm_type)
    return args, {"scale_grad_by_freq": m.scale_grad_by_freq, "sparse": m.sparse}


_FAMILIES: tuple[_Family, ...] = (
    _Family(nn.Linear, "Linear", "linear", (_REP, _FLIP, _LOCAL), ("from_linear",)),
    _Family(nn.Conv1d, "Conv1d", "conv", _CONV, ("from_module",)),
    _Family(nn.Conv2d, "Conv2d", "conv", (_REP, _FLIP, _LOCAL), ("from_module",)),
    _Family(nn.Conv3d, "Conv3d", "conv", _CONV, ("from_module",)),
    _Family(nn.ConvTranspose1d, "ConvTranspose1d", "conv", _CONV, ("from_module",)),
    _Family(nn.ConvTranspose2d, "ConvTranspose2d", "conv", _CONV, ("from_module",)),
    _Family(nn.ConvTranspose3d, "ConvTranspose3d", "conv", _CONV, ("from_module",)),
    _Family(nn.LSTM, "LSTM", "recurrent", _CONV, ("from_lstm",)),
    _Family(nn.LSTMCell, "LSTMCell", "recurrent", _CONV, ("from_lstm_cell",)),
    _Family(nn.GRUCell, "GRUCell", "recurrent", _CONV, ("from_gru_cell",)),
    _Family(
        nn.MultiheadAttention,
        "MultiheadAttention",
        "attention",
        _CONV,
        ("from_multihead_attention", "from_module", "from_torch"),
        _attention_arguments,
        ("in_proj_weight", "in_proj_bias", "bias_k", "bias_v", "out_proj.weight", "out_proj.bias"),
    ),  # fmt: skip
    _Family(
        nn.Embedding,
        "Embedding",
        "embedding",
        (_REP,),
        ("from_embedding", "from_module", "from_torch"),
        _embedding_arguments,
        ("weight",),
    ),  # fmt: skip
)
_BY_TYPE = {f.torch_cls: f for f in _FAMILIES}


@dataclass(frozen=True)
class SwappedLayer:
    """One replaced layer: qualified ``name`` (``""`` for the module passed in), torch
    ``source`` type, Bayesian ``target`` type and the ``estimator`` it uses (the
    requested one or its fallback)."""

    name: str
    source: str
    target: str
    estimator: str


@dataclass(frozen=True)
class SkippedLayer:
    """A convertible-looking layer left as it was, and why."""

    name: str
    type: str
    reason: str


@dataclass(frozen=True)
class UnsupportedLayer:
    """A module with parameters of its own that no Bayesian layer replaces (``nn.GRU``,
    ``nn.LayerNorm``, a subclass of ``nn.Linear`` with its own forward, ...): it is left
    as it is, a point estimate."""

    name: str
    type: str
    reason: str


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`to_bayesian` did: ``swapped`` and ``skipped`` layers, and the
    ``unsupported`` modules it left as they are, each in module order.

    ``len(report)`` and iteration go over the swapped layers; ``str(report)`` is a table.
    """

    swapped: tuple[SwappedLayer, ...]
    skipped: tuple[SkippedLayer, ...]
    unsupported: tuple[UnsupportedLayer, ...] = ()

    def __len__(self) -> int:
        return len(self.swapped)

    def __iter__(self) -> Iterator[SwappedLayer]:
        return iter(self.swapped)

    def __str__(self) -> str:
        head = f"{len(self.swapped)} layer(s) swapped, {len(self.skipped)} skipped"
        if self.unsupported:
            head += f", {len(self.unsupported)} unsupported left as they are"
        lines = [head]
        lines += [
            f"  {s.name or '<root>'}: {s.source} -> {s.target} ({s.estimator})"
            for s in self.swapped
        ]
        lines += [f"  {s.name or '<root>'}: {s.type} kept ({s.reason})" for s in self.skipped]
        lines += [
            f"  {u.name or '<root>'}: {u.type} left as it is ({u.reason})" for u in self.unsupported
        ]
        return "\n".join(lines)


def canonical_estimator(estimator: str) -> str:
    """The canonical spelling (one of :data:`ESTIMATORS`) of an estimator name.

    Older spellings (the class suffixes ``"Flipout"``, ``"Reparameterization"``,
    ``"LocalReparameterization"``, and ``"local"``) still work, with a
    ``DeprecationWarning``; anything else raises.

    Raises:
        TypeError: ``estimator`` is not a string.
        ValueError: it is none of the canonical or deprecated spellings.

    Example:
        >>> canonical_estimator("flipout")
        'flipout'
    """
    if not isinstance(estimator, str):
        raise TypeError(
            f"to_bayesian expected `estimator` to be one of {ESTIMATORS}, got {estimator!r}"
        )
    if estimator in ESTIMATORS:
        return estimator
    canonical = _DEPRECATED.get(estimator)
    if canonical is None:
        raise ValueError(f"to_bayesian expected `estimator` in {ESTIMATORS}, got {estimator!r}")
    warnings.warn(
        f"estimator {estimator!r} is deprecated; use {canonical!r} (one of {ESTIMATORS})",
        DeprecationWarning,
        stacklevel=3,
    )
    return canonical


def _unsupported_reason(module: nn.Module) -> str | None:
    """Why a module with parameters of its own is left alone (None: it has none)."""
    if next(module.parameters(recurse=False), None) is None:
        return None
    for cls in type(module).__mro__[1:]:
        if cls in _BY_TYPE:
            return f"subclass of nn.{cls.__name__} with its own forward"
    return "no Bayesian counterpart"


def _family(module: nn.Module) -> _Family | None:
    """The family of a torch layer: its class or a subclass that keeps torch's forward."""
    for cls in type(module).__mro__:
        family = _BY_TYPE.get(cls)
        if family is not None:
            return family if type(module).forward is family.torch_cls.forward else None
    return None


def _bayesian_class(family: _Family, estimator: str) -> tuple[type | None, str]:
    """The Bayesian class for ``estimator`` (or its fallback) and the estimator it uses.

    Rule: a family without a counterpart for ``estimator`` in the contract uses
    ``"reparameterization"``, which every family has. ``None`` when that class is
    not defined (yet) in :mod:`bayesian_layers.layers`.
    """
    used = estimator if estimator in family.estimators else _REP
    name = family.stem + _SUFFIX[used]
    layers = importlib.import_module(f"{__package__}.layers")
    cls = getattr(layers, name, None)
    if cls is None:
        modname = f"{__package__}.layers.{family.module}"
        try:
            cls = getattr(importlib.import_module(modname), name, None)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
    return cls, used


@dataclass
class _Entry:
    name: str
    module: nn.Module
    family: _Family | None
    bayesian: bool


def _scan(root: nn.Module) -> list[_Entry]:
    """Every module reachable from ``root`` once, by first qualified name; never
    inside a torch layer of a family (``nn.MultiheadAttention.out_proj``) or a
    Bayesian layer."""
    seen: set[int] = set()
    out: list[_Entry] = []

    def visit(module: nn.Module, name: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        family = None if isinstance(module, BayesianLayer) else _family(module)
        out.append(_Entry(name, module, family, isinstance(module, BayesianLayer)))
        if family is None and not isinstance(module, BayesianLayer):
            for key, child in module._modules.items():
                if child is not None:
                    visit(child, f"{name}.{key}" if name else key)

    visit(root, "")
    return out


def _selected(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` or one of its ancestors matches a pattern (a subtree rule)."""
    parts = name.split(".") if name else []
    candidates = [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatchcase(c, p) for c in candidates for p in patterns)


def _patterns(value: str | Iterable[str] | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    patterns = (value,) if isinstance(value, str) else tuple(value)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"to_bayesian expected `{what}` patterns to be str, got {p!r}")
    return patterns


def _describe(entries: Sequence[_Entry], limit: int = 8) -> str:
    shown = [f"{e.name or '<root>'} ({type(e.module).__name__})" for e in entries[:limit]]
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(shown) + more


def _check_patterns(
    entries: list[_Entry], include: tuple[str, ...] | None, exclude: tuple[str, ...] | None
) -> None:
    supported = ", ".join(f"nn.{f.torch_cls.__name__}" for f in _FAMILIES)
    for what, patterns in (("include", include), ("exclude", exclude)):
        for p in patterns or ():
            if not any(fnmatchcase(e.name, p) for e in entries):
                raise ValueError(
                    f"to_bayesian: {what} pattern {p!r} matches no module; module names "
                    f"look like: {_describe(entries[1:] or entries)}"
                )
    for p in include or ():
        chosen = [e for e in entries if _selected(e.name, (p,))]
        if not any(e.family is not None or e.bayesian for e in chosen):
            raise ValueError(
                f"to_bayesian: include pattern {p!r} selects no layer it can convert: "
                f"{_describe(chosen)}; supported types: {supported} (subclasses only when "
                "they keep torch's forward)"
            )


class PretrainedNormal(TrainableNormal):
    """A normal posterior whose scale follows its mean (MOPED, Krishnan et al. 2020).

    ``scale = max(pretrained_scale·|loc|, 1e-12)`` elementwise when the parameters are
    set: :func:`to_bayesian` with ``pretrained_scale=`` puts it in place of the layer's
    normal initializer after copying the trained weights into ``loc``, so the layer's
    ``repr`` shows the configuration in effect. A layer built with it directly starts
    ``loc`` as :class:`~bayesian_layers.initializers.TrainableNormal` does. Draws,
    KL and parameters (``loc``, ``rho``) are those of ``TrainableNormal``.

    Args:
        pretrained_scale: the ratio ``s`` of standard deviation to ``|loc|``.

    Example:
        >>> from bayesian_layers import layers
        >>> layer = layers.LinearReparameterization(
        ...     3, 2, weight_initializer=PretrainedNormal(0.1)
        ... )
        >>> bool((layer.weight.distribution.stddev <= 0.1 * layer.weight_loc.abs() + 1e-6).all())
        True
    """

    def __init__(self, pretrained_scale: float) -> None:
        super().__init__(scale_init=pretrained_scale)
        self.pretrained_scale = float(pretrained_scale)

    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        super()._init_params(params, fan_in, fan_out)
        _moped_rho(params["loc"], params["rho"], self.pretrained_scale)

    def extra_repr(self) -> str:
        return f"pretrained_scale={self.pretrained_scale}"


#: Initializers whose parameters and law a PretrainedNormal reproduces exactly (they
#: differ only in how ``loc`` starts, and conversion overwrites ``loc``).
_REPLACEABLE = (TrainableNormal, TrainableHeNormal, TrainableGlorotNormal, PretrainedNormal)


def _moped_rho(loc: Tensor, rho: Tensor, scale: float) -> None:
    """``rho`` such that ``softplus(rho) = max(scale·|loc|, MIN_SCALE)``, in place."""
    floor = max(MIN_SCALE, torch.finfo(rho.dtype).tiny)
    with torch.no_grad():
        target = (loc.detach().double().abs() * scale).clamp_min(floor)
        rho.copy_(target + torch.log(-torch.expm1(-target)))  # inverse softplus


def _moped(layer: nn.Module, scale: float) -> None:
    """Set every normal posterior's ``rho`` (nested Bayesian layers included) so that
    ``softplus(rho) = max(scale·|loc|, MIN_SCALE)`` elementwise, and record it in
    the layer's initializer (a :class:`PretrainedNormal`, shown by ``repr``)."""
    for sub in layer.modules():
        if not isinstance(sub, BayesianLayer):
            continue
        for pname, init in list(sub._inits.items()):
            if init.is_deterministic:
                continue
            params = init.params(sub, pname)
            if not init.is_normal or "loc" not in params or "rho" not in params:
                raise ValueError(
                    f"to_bayesian(pretrained_scale=...) needs normal (loc, rho) posteriors, got "
                    f"{type(init).__name__} for {type(sub).__name__}.{pname}"
                )
            _moped_rho(params["loc"], params["rho"], scale)
            if type(init) in _REPLACEABLE:
                recorded = PretrainedNormal(scale)
                sub._inits[pname] = recorded
                setattr(sub, f"{pname}_initializer", recorded)


def _generic(module: nn.Module, family: _Family, cls: type, kwargs: dict) -> nn.Module:
    """Build ``cls`` from the table's constructor arguments and copy the parameters."""
    if family.arguments is None:
        raise ValueError(
            f"to_bayesian: {cls.__name__} offers none of {family.constructors} to build it "
            f"from nn.{family.torch_cls.__name__}"
        )
    like = next(module.parameters())
    args, extra = family.arguments(module)
    new = cls(*args, **extra, device=like.device, dtype=like.dtype, **kwargs)
    with torch.no_grad():
        for dotted in family.copies:
            src = _lookup(module, dotted)
            if src is None:
                continue
            owner_name, _, pname = dotted.rpartition(".")
            owner = new.get_submodule(owner_name)
            if isinstance(owner, BayesianLayer) and pname in owner._inits:
                init = owner._inits[pname]
                if not (init.is_normal or init.is_deterministic):
                    raise ValueError(
                        f"to_bayesian: copying torch weights into {cls.__name__} needs normal or "
                        f"deterministic posteriors, got {type(init).__name__} for {dotted}"
                    )
                owner.point(pname).copy_(src)
            else:
                dst = _lookup(new, dotted)
                if dst is None:
                    raise ValueError(f"to_bayesian: {cls.__name__} has no {dotted} to copy into")
                dst.copy_(src)
    return new


def _lookup(module: nn.Module, dotted: str) -> Tensor | None:
    owner_name, _, pname = dotted.rpartition(".")
    value = getattr(module.get_submodule(owner_name), pname, None)
    return value if isinstance(value, Tensor) else None


def _build(module: nn.Module, family: _Family, cls: type, name: str, kwargs: dict) -> nn.Module:
    for p in module.parameters(recurse=False):
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"to_bayesian: {name or '<root>'!r} ({type(module).__name__}) is a lazy module "
                "not yet initialised; run one forward pass before converting"
            )
    factory = next((getattr(cls, a) for a in family.constructors if hasattr(cls, a)), None)
    if factory is None:
        new = _generic(module, family, cls, kwargs)
    else:
        new = factory(module, **kwargs)
    return new.train(module.training)


@overload
def to_bayesian(
    module: nn.Module,
    estimator: str = ...,
    *,
    include: str | Iterable[str] | None = ...,
    exclude: str | Iterable[str] | None = ...,
    pretrained_scale: float | None = ...,
    return_report: Literal[False] = ...,
    **layer_kwargs: Any,
) -> nn.Module: ...
@overload
def to_bayesian(
    module: nn.Module,
    estimator: str = ...,
    *,
    include: str | Iterable[str] | None = ...,
    exclude: str | Iterable[str] | None = ...,
    pretrained_scale: float | None = ...,
    return_report: Literal[True],
    **layer_kwargs: Any,
) -> tuple[nn.Module, ConversionReport]: ...
def to_bayesian(
    module: nn.Module,
    estimator: str = "reparameterization",
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    pretrained_scale: float | None = None,
    return_report: bool = False,
    **layer_kwargs: Any,
) -> nn.Module | tuple[nn.Module, ConversionReport]:
    """Swap the deterministic layers of ``module`` for Bayesian ones, in place.

    Each selected torch layer is replaced by its Bayesian counterpart, built by
    the counterpart's ``from_linear``/``from_module``/``from_lstm``/... constructor:
    same hyperparameters, device, dtype and train/eval mode; posterior means (and
    biases) start at the layer's weights. A module used at several places is
    replaced by one Bayesian layer everywhere. Bayesian layers already present are
    left alone, so converting twice changes nothing. Hooks registered on a
    replaced layer are not carried over, and a parameter shared by two layers (tied
    embeddings) becomes two separate posteriors.

    Estimator rule: where the contract has no counterpart for ``estimator`` (local
    reparameterization exists for ``nn.Linear`` and ``nn.Conv2d`` only; flipout
    for all but ``nn.Embedding``), the layer uses ``"reparameterization"``, and the
    report's ``estimator`` field says so.

    Args:
        module: any module; a torch layer passed directly is replaced and returned.
        estimator: one of :data:`ESTIMATORS`: ``"reparameterization"``, ``"flipout"``
            or ``"local_reparameterization"`` (older spellings such as ``"Flipout"``
            work with a ``DeprecationWarning``; see :func:`canonical_estimator`).
        include: glob pattern(s) (:func:`fnmatch.fnmatchcase`) on qualified module
            names (``"features.*"``, ``"fc"``); a layer is converted when its name or
            an ancestor's matches. ``None``: every supported layer. A pattern that
            matches no module, or that selects no supported layer (``"features.1"``
            naming a ``ReLU``), or a selected layer whose Bayesian class is not
            available, raises ``ValueError``.
        exclude: glob pattern(s) removing subtrees; wins over ``include``. A pattern
            that matches no module raises ``ValueError`` (a typo would otherwise
            convert the layer it meant to keep).
        pretrained_scale: MOPED (Krishnan et al. 2020): every normal posterior's
            standard deviation starts at ``max(s·|w|, 1e-12)`` elementwise
            (``rho = softplus⁻¹(...)``), so sampled networks stay close to the
            trained one. ``None``: the initializer's default scale.
        return_report: also return a :class:`ConversionReport`: the swapped and
            skipped layers, and the ``unsupported`` modules (with their paths) left
            as they are.
        **layer_kwargs: constructor keywords for every new layer
            (``weight_initializer=``, ``weight_regularizer=``, ...).

    Returns:
        ``module`` (or its replacement when it is itself converted), and the report
        when ``return_report=True``.

    Warns:
        UserWarning: nothing was converted (and ``module`` holds no Bayesian layer
            yet, so converting twice stays silent); the message lists what was
            left as it is and why.

    Example:
        >>> import torch
        >>> from torch import Tensor, nn
        >>> from bayesian_layers.convert import to_bayesian
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> net, report = to_bayesian(net, "flipout", exclude="2", return_report=True)
        >>> [type(m).__name__ for m in net]
        ['LinearFlipout', 'ReLU', 'Linear']
        >>> [s.name for s in report]
        ['0']
    """
    estimator = canonical_estimator(estimator)
    if not isinstance(module, nn.Module):
        raise TypeError(f"to_bayesian expected an nn.Module, got {type(module).__name__}")
    if pretrained_scale is not None:
        if isinstance(pretrained_scale, bool) or not isinstance(pretrained_scale, int | float):
            raise TypeError(
                f"to_bayesian expected `pretrained_scale` to be a float, got {pretrained_scale!r}"
            )
        if not pretrained_scale > 0 or pretrained_scale == float("inf"):
            raise ValueError(
                f"to_bayesian expected a finite `pretrained_scale` > 0, got {pretrained_scale}"
            )
    for key in ("device", "dtype"):
        if key in layer_kwargs:
            raise TypeError(f"to_bayesian: `{key}` follows each converted layer; do not pass it")
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")

    entries = _scan(module)
    _check_patterns(entries, inc, exc)
    plan: dict[int, tuple[_Entry, _Family, type, str]] = {}  # id -> (entry, family, class, est.)
    swapped: list[SwappedLayer] = []
    skipped: list[SkippedLayer] = []
    unsupported: list[UnsupportedLayer] = []
    for e in entries:
        kind = type(e.module).__name__
        requested = inc is None or _selected(e.name, inc)
        if not requested:
            continue
        excluded = exc is not None and _selected(e.name, exc)
        if e.family is None and not e.bayesian:
            reason = None if excluded else _unsupported_reason(e.module)
            if reason is not None:
                unsupported.append(UnsupportedLayer(e.name, kind, reason))
            continue
        if excluded:
            skipped.append(SkippedLayer(e.name, kind, "excluded"))
            continue
        if e.bayesian:
            skipped.append(SkippedLayer(e.name, kind, "already Bayesian"))
            continue
        family = e.family
        if family is None:
            continue
        cls, used = _bayesian_class(family, estimator)
        missing = f"{family.stem}{_SUFFIX[used]}"
        if cls is None:
            if inc is not None:
                raise ValueError(
                    f"to_bayesian: {e.name or '<root>'!r} ({kind}) was requested by `include`, "
                    f"but bayesian_layers.layers.{missing} is not available"
                )
            skipped.append(SkippedLayer(e.name, kind, f"layers.{missing} is not available"))
            continue
        plan[id(e.module)] = (e, family, cls, used)

    built: dict[int, nn.Module] = {}
    for ident, (e, family, cls, used) in plan.items():
        old, name = e.module, e.name
        new = _build(old, family, cls, name, layer_kwargs)
        if pretrained_scale is not None:
            _moped(new, float(pretrained_scale))
        built[ident] = new
        swapped.append(SwappedLayer(name, type(old).__name__, type(new).__name__, used))

    for e in entries:  # rewire every reference (a module used twice is replaced twice)
        for k, child in e.module._modules.items():
            if child is not None and id(child) in built:
                e.module._modules[k] = built[id(child)]
    result = built.get(id(module), module)
    report = ConversionReport(tuple(swapped), tuple(skipped), tuple(unsupported))
    if not swapped and not any(e.bayesian for e in entries):
        _warn_nothing_converted(report)
    if return_report:
        return result, report
    return result


def _listing(items: Sequence[UnsupportedLayer | SkippedLayer], limit: int = 8) -> str:
    shown = [f"{i.name or '<root>'} ({i.type}: {i.reason})" for i in items[:limit]]
    more = [f"... ({len(items) - limit} more)"] if len(items) > limit else []
    return ", ".join(shown + more)


def _warn_nothing_converted(report: ConversionReport) -> None:
    parts = []
    if report.unsupported:
        parts.append(f"left as they are: {_listing(report.unsupported)}")
    if report.skipped:
        parts.append(f"skipped: {_listing(report.skipped)}")
    supported = ", ".join(f"nn.{f.torch_cls.__name__}" for f in _FAMILIES)
    warnings.warn(
        f"to_bayesian converted no layer; {'; '.join(parts) or 'the module has no layers'}. "
        f"Supported types: {supported}",
        UserWarning,
        stacklevel=3,
    )
