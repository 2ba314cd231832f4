"""The swap: :func:`to_bayesian` finds each selected layer's Bayesian class in the
converter registry and builds it with ``from_torch``."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Literal, overload

from torch import nn
from torch.nn.utils import parametrize

from ..adapters import POSTERIORS, adapters, freeze_base
from ..adapters._peft import convert_peft, peft_layers
from ..adapters._targets import matches
from ..adapters._targets import patterns as adapter_patterns
from ..layers.registry import ESTIMATORS, counterparts
from ._pretrained import apply_pretrained_scale
from ._report import (
    ConversionReport,
    SkippedLayer,
    SwappedLayer,
    UnsupportedLayer,
    warn_nothing_converted,
)
from ._select import (
    Entry,
    check_patterns,
    patterns,
    scan,
    selected,
    supported_types,
    torch_name,
    unsupported_reason,
)

__all__ = ["to_bayesian", "canonical_estimator", "ESTIMATORS"]

_REP = "reparameterization"
#: Older spellings, accepted with a DeprecationWarning: the class-name suffixes
#: (``"LocalReparameterization"``) and ``"local"``, of the three weight estimators only
#: (``"variational_dropout"`` never had another spelling).
_DEPRECATED = {
    **{"".join(w.capitalize() for w in name.split("_")): name for name in ESTIMATORS[:3]},
    "local": "local_reparameterization",
}


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


def _counterpart(torch_cls: type[nn.Module], estimator: str) -> tuple[type[nn.Module] | None, str]:
    """The registered class for ``estimator``, or for ``"reparameterization"`` when the
    registry holds none for it (the fallback rule), and the estimator it uses."""
    found = counterparts(torch_cls)
    used = estimator if estimator in found else _REP
    return found.get(used), used


def _missing(torch_cls: type[nn.Module], estimator: str) -> str:
    asked = repr(estimator) if estimator == _REP else f"{estimator!r} or {_REP!r}"
    return f"no Bayesian class registered for {torch_name(torch_cls)} under {asked}"


def _build(module: nn.Module, cls: type[nn.Module], name: str, kwargs: dict[str, Any]) -> nn.Module:
    for p in module.parameters(recurse=False):
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"to_bayesian: {name or '<root>'!r} ({type(module).__name__}) is a lazy module "
                "not yet initialised; run one forward pass before converting"
            )
    try:
        new = cls.from_torch(module, **kwargs)  # type: ignore[attr-defined]  # checked by converts
    except (ValueError, NotImplementedError) as err:
        # a configuration the Bayesian class does not take (an LSTM's proj_size, attention
        # with kdim != embed_dim, a sparse embedding): say which module, and the way out
        where = f"{name or '<root>'!r} ({type(module).__name__})"
        hint = f"; exclude={name!r} leaves it as it is" if name else ""
        raise type(err)(f"to_bayesian: {where} cannot become {cls.__name__}: {err}{hint}") from err
    if not isinstance(new, nn.Module):
        raise TypeError(
            f"to_bayesian: {cls.__qualname__}.from_torch returned {type(new).__name__}, "
            "not an nn.Module"
        )
    return new.train(module.training)


def _check_arguments(
    module: nn.Module, pretrained_scale: float | None, layer_kwargs: dict[str, Any]
) -> None:
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


def _adapters_to_bayesian(
    module: nn.Module,
    estimator: str,
    include: str | Iterable[str] | None,
    exclude: str | Iterable[str] | None,
    pretrained_scale: float | None,
    layer_kwargs: dict[str, Any],
) -> ConversionReport:
    """A model with LoRA adapters (``peft``'s or :class:`~bayesian_layers.LoRALinear`):
    only the adapters' ``A`` factors become Bayesian, as ``lora(module, target=include,
    posterior=estimator, exclude=exclude)`` makes a ``peft`` model's; the rest stays."""
    if estimator not in POSTERIORS:
        raise ValueError(
            f"to_bayesian: LoRA adapters take an estimator in "
            f"{sorted(map(str, POSTERIORS))}, got {estimator!r}"
        )
    if pretrained_scale is not None:
        raise ValueError(
            "to_bayesian: pretrained_scale does not apply to LoRA adapters "
            "(their posterior standard deviation starts at init_std=)"
        )
    kinds = {n: type(m).__name__ for n, m in peft_layers(module)}
    kinds.update({n: "LoRALinear" for n, _ in adapters(module)})
    before = {n: a.lora_A for n, a in adapters(module)}
    inc, exc = adapter_patterns("include", include), adapter_patterns("exclude", exclude)
    convert_peft(module, inc, exc, posterior=estimator, plain=True, **layer_kwargs)
    freeze_base(module)
    swapped, skipped = [], []
    for n, a in adapters(module):
        if before.get(n) is a.lora_A:
            if not (inc and not matches(n, inc)):
                why = "excluded" if exc and matches(n, exc) else "already Bayesian"
                skipped.append(SkippedLayer(n, kinds[n], why))
        else:
            swapped.append(SwappedLayer(n, kinds[n], type(a.lora_A).__name__, estimator))
    return ConversionReport(tuple(swapped), tuple(skipped), ())


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

    Each selected torch layer is replaced by the Bayesian class registered for its
    type and ``estimator`` (:mod:`bayesian_layers.layers.registry`), built by that
    class's ``from_torch``: same hyperparameters, device, dtype and train/eval mode;
    posterior means (and biases) start at the layer's weights. A subclass of a
    registered torch class converts when it keeps that class's forward. A module
    used at several places is replaced by one Bayesian layer everywhere. Bayesian
    layers already present are left alone, so converting twice changes nothing.
    Hooks registered on a replaced layer are not carried over, and a parameter
    shared by two layers (tied embeddings) becomes two separate posteriors.

    Estimator rule: where the registry holds no counterpart for ``estimator``
    (:func:`~bayesian_layers.layers.registry.counterparts`: local reparameterization
    exists for ``nn.Linear``, ``nn.Bilinear`` and ``nn.Conv2d`` only; flipout for all
    but ``nn.Embedding``; variational dropout for ``nn.Linear`` and ``nn.Conv2d``), the
    layer uses ``"reparameterization"``, and the report's ``estimator`` field says so.
    A registered torch class with no class under either is skipped, and named in the
    report's ``skipped``.

    A model with LoRA adapters (a ``peft`` LoRA model, or one :func:`bayesian_layers.lora`
    adapted) converts only its adapters: each point-estimate ``A`` factor becomes the
    Bayesian dense layer of ``estimator`` with its posterior mean at that ``A``, as
    :func:`bayesian_layers.lora` does to a ``peft`` model with ``posterior=estimator``
    (``include`` and ``exclude`` then select adapters as its ``target`` and ``exclude``
    do); adapters already Bayesian are skipped, and the rest of the model stays frozen.

    Args:
        module: any module; a torch layer passed directly is replaced and returned.
        estimator: one of :data:`ESTIMATORS`: ``"reparameterization"``, ``"flipout"``,
            ``"local_reparameterization"`` (older spellings such as ``"Flipout"``
            work with a ``DeprecationWarning``; see :func:`canonical_estimator`), or
            ``"variational_dropout"``: sparse variational dropout
            (:class:`~bayesian_layers.layers.LinearVariationalDropout`,
            ``Conv2dVariationalDropout``), ``θ`` at the weights and ``log σ²`` at its
            start (-10); ``pretrained_scale`` does not apply to it.
        include: glob pattern(s) (:func:`fnmatch.fnmatchcase`) on qualified module
            names (``"features.*"``, ``"fc"``); a layer is converted when its name or
            an ancestor's matches. ``None``: every supported layer. A pattern that
            matches no module, or that selects no supported layer (``"features.1"``
            naming a ``ReLU``), or a selected layer with no Bayesian class
            registered, raises ``ValueError``.
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
            (``weight_initializer=``, ``weight_regularizer=``, ...), passed to
            ``from_torch``.

    Returns:
        ``module`` (or its replacement when it is itself converted), and the report
        when ``return_report=True``.

    Raises:
        ValueError: a layer to convert holds parametrizations (spectral or weight
            norm), which its Bayesian counterpart would drop; ``exclude`` it, or remove
            them first. Nothing is changed then.

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
    _check_arguments(module, pretrained_scale, layer_kwargs)
    if peft_layers(module) or adapters(module):
        report = _adapters_to_bayesian(
            module, estimator, include, exclude, pretrained_scale, layer_kwargs
        )
        return (module, report) if return_report else module
    inc, exc = patterns(include, "include"), patterns(exclude, "exclude")

    entries = scan(module)
    check_patterns(entries, inc, exc)
    plan: dict[int, tuple[Entry, type[nn.Module], str]] = {}  # id -> (entry, class, estimator used)
    skipped: list[SkippedLayer] = []
    unsupported: list[UnsupportedLayer] = []
    for e in entries:
        kind = type(e.module).__name__
        if inc is not None and not selected(e.name, inc):
            continue
        excluded = exc is not None and selected(e.name, exc)
        if e.torch_cls is None and not e.bayesian:
            reason = None if excluded else unsupported_reason(e.module)
            if reason is not None:
                unsupported.append(UnsupportedLayer(e.name, kind, reason))
            continue
        if excluded:
            skipped.append(SkippedLayer(e.name, kind, "excluded"))
            continue
        if e.torch_cls is None:  # already Bayesian
            skipped.append(SkippedLayer(e.name, kind, "already Bayesian"))
            continue
        cls, used = _counterpart(e.torch_cls, estimator)
        if cls is None:
            missing = _missing(e.torch_cls, estimator)
            if inc is not None:
                raise ValueError(
                    f"to_bayesian: {e.name or '<root>'!r} ({kind}) was requested by `include`, "
                    f"but there is {missing}"
                )
            skipped.append(SkippedLayer(e.name, kind, missing))
            continue
        if parametrize.is_parametrized(e.module):  # spectral or weight norm, say
            lists: nn.ModuleDict = getattr(e.module, "parametrizations")  # noqa: B009
            held = "; ".join(
                f"{name}: {', '.join(type(f).__name__ for f in fns.children())}"
                for name, fns in lists.items()
            )
            raise ValueError(
                f"to_bayesian: {e.name or '<root>'!r} ({kind}) holds parametrizations "
                f"({held}) that {cls.__name__} would drop silently; exclude={e.name!r} keeps "
                "it as it is, or remove them first "
                "(torch.nn.utils.parametrize.remove_parametrizations)"
            )
        plan[id(e.module)] = (e, cls, used)

    built: dict[int, nn.Module] = {}
    swapped: list[SwappedLayer] = []
    for ident, (e, cls, used) in plan.items():
        new = _build(e.module, cls, e.name, layer_kwargs)
        if pretrained_scale is not None:
            apply_pretrained_scale(new, float(pretrained_scale))
        built[ident] = new
        swapped.append(SwappedLayer(e.name, type(e.module).__name__, type(new).__name__, used))

    for e in entries:  # rewire every reference (a module used twice is replaced twice)
        for k, child in e.module._modules.items():
            if child is not None and id(child) in built:
                e.module._modules[k] = built[id(child)]
    result = built.get(id(module), module)
    report = ConversionReport(tuple(swapped), tuple(skipped), tuple(unsupported))
    if not swapped and not any(e.bayesian for e in entries):
        warn_nothing_converted(report, supported_types())
    if return_report:
        return result, report
    return result
