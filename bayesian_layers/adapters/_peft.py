"""Converting a ``peft`` LoRA model's adapters into :class:`LoRALinear` (part of
:mod:`bayesian_layers.adapters`).

A ``peft`` ``lora.Linear`` computes ``base(x) + s · B A dropout(x)`` with ``A``
``(rank, in)``, ``B`` ``(out, rank)`` and ``s = lora_alpha / r`` (``/ sqrt(r)`` with
rsLoRA). The converted :class:`LoRALinear` keeps the same base layer (``nn.Linear``
or GPT-2's ``Conv1D``), the same ``B``, scaling and dropout, and puts ``A`` under the
requested posterior with its mean at ``peft``'s ``A``; so at
:func:`bayesian_layers.posterior_mean` the converted model computes what the ``peft``
model computed. ``peft`` is never imported here: its layers are recognised by their
class, which exists only once the user has imported ``peft``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..layers.base import BayesianLayer
from ._adapter import POSTERIORS, LoRALinear
from ._targets import matches
from .api import adapters

__all__ = [
    "convert_peft",
    "is_peft_layer",
    "peft_layers",
    "from_peft_layer",
    "from_plain_adapter",
]


def is_peft_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a ``peft`` LoRA layer (any kind: linear, embedding, conv).

    Checked against ``peft``'s ``LoraLayer`` class when ``peft`` has been imported (a
    model cannot hold ``peft`` layers otherwise); nothing is imported here.

    Example:
        >>> from torch import nn
        >>> is_peft_layer(nn.Linear(2, 2))
        False
    """
    if "peft" not in sys.modules:
        return False
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # a broken or foreign "peft" module
        return False
    return isinstance(module, LoraLayer)


def peft_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``(qualified name, layer)`` pairs of ``model``'s ``peft`` LoRA layers."""
    return [(n, m) for n, m in model.named_modules() if is_peft_layer(m)]


def _layer_error(name: str, module: nn.Module, problem: str) -> ValueError:
    return ValueError(f"lora: peft layer {name or '<root>'!r} ({type(module).__name__}) {problem}")


def _single_adapter(name: str, module: Any) -> str:
    """The name of the one adapter that ``module`` holds and uses, or a ValueError."""
    held = list(module.lora_A.keys())
    active = [a for a in module.active_adapters if a in module.lora_A]
    if len(held) != 1 or active != held:
        raise _layer_error(
            name, module,
            f"holds adapters {held} with {active} active; LoRALinear holds one adapter: keep "
            "one with peft_model.delete_adapter(name) or set_adapter(name) before converting",
        )  # fmt: skip
    adapter = held[0]
    if module.disable_adapters:
        raise _layer_error(name, module, "has its adapters disabled; enable them first")
    if module.merged:
        raise _layer_error(name, module, "is merged; call peft_model.unmerge_adapter() first")
    if adapter in getattr(module, "lora_variant", {}) or module.use_dora.get(adapter, False):
        raise _layer_error(name, module, "is a LoRA variant (DoRA, ...); only plain LoRA converts")
    if module.lora_bias.get(adapter, False):
        raise _layer_error(name, module, "has lora_bias=True; LoRALinear's B has no bias")
    return adapter


def from_peft_layer(
    module: nn.Module,
    posterior: str | None = "flipout",
    *,
    prior_std: float = 1.0,
    init_std: float | None = None,
    name: str = "",
    **layer_kwargs: Any,
) -> LoRALinear:
    """A :class:`LoRALinear` with ``peft`` layer ``module``'s base, factors, scaling and
    dropout; ``A``'s posterior mean is ``peft``'s ``A``, its standard deviation
    ``init_std``.

    The factors are copied (cast to the base layer's dtype, as :class:`LoRALinear`
    computes in it); the base layer is shared, not copied, and frozen.

    Args:
        module: a ``peft`` ``lora.Linear`` over ``nn.Linear`` or a GPT-2 ``Conv1D``,
            holding one plain LoRA adapter (no DoRA or other variant, no
            ``lora_bias``), not merged.
        posterior, prior_std, init_std, **layer_kwargs: as :class:`LoRALinear`.
        name: the layer's qualified name, for error messages.

    Raises:
        TypeError: ``module`` is not a ``peft`` ``lora.Linear`` (an embedding or
            convolution adapter, a quantized layer).
        ValueError: several or no active adapters, a variant, ``lora_bias``, a merged
            or disabled adapter, or a bad hyperparameter.
    """
    from peft.tuners.lora import Linear as PeftLinear  # only reached with a peft layer

    if type(module) is not PeftLinear:
        raise TypeError(
            f"lora: peft layer {name or '<root>'!r} is a {type(module).__module__}."
            f"{type(module).__name__}; only peft's lora.Linear (over nn.Linear or a "
            "transformers Conv1D) converts to LoRALinear"
        )
    peft = cast(Any, module)
    adapter = _single_adapter(name, peft)
    drop = peft.lora_dropout[adapter]
    return _rebuilt(
        peft.base_layer, peft.lora_A[adapter].weight, peft.lora_B[adapter].weight,
        float(peft.scaling[adapter]), drop, module.training, posterior,
        prior_std=prior_std, init_std=init_std, **layer_kwargs,
    )  # fmt: skip


def from_plain_adapter(
    adapter: LoRALinear,
    posterior: str | None = "flipout",
    *,
    prior_std: float = 1.0,
    init_std: float | None = None,
    **layer_kwargs: Any,
) -> LoRALinear:
    """A :class:`LoRALinear` with ``adapter``'s base, ``B``, scaling and dropout whose
    ``A`` has ``posterior``, its mean at ``adapter``'s point-estimate ``A``.

    Args:
        adapter: a :class:`LoRALinear` whose ``A`` is a point estimate (made with
            ``posterior=None`` or ``"laplace"``).
        posterior, prior_std, init_std, **layer_kwargs: as :class:`LoRALinear`.

    Raises:
        ValueError: ``adapter``'s ``A`` is already random.

    Example:
        >>> import torch
        >>> plain = LoRALinear(torch.nn.Linear(4, 3), rank=2, posterior=None)
        >>> bayes = from_plain_adapter(plain, "flipout")
        >>> torch.equal(bayes.mean_down(), plain.lora_A.weight), bayes.base is plain.base
        (True, True)
    """
    down = adapter.lora_A
    if isinstance(down, BayesianLayer):
        raise ValueError(f"from_plain_adapter: A is already a {type(down).__name__}")
    return _rebuilt(
        adapter.base, cast(Tensor, down.weight), adapter.lora_B.weight, adapter.scaling,
        adapter.lora_dropout, adapter.training, posterior,
        prior_std=prior_std, init_std=init_std, **layer_kwargs,
    )  # fmt: skip


def _rebuilt(
    base: nn.Module,
    down: Tensor,
    up: Tensor,
    scaling: float,
    drop: nn.Module,
    training: bool,
    posterior: str | None,
    **options: Any,
) -> LoRALinear:
    """A :class:`LoRALinear` over ``base`` with factors ``down`` ``(rank, in)`` (the mean
    of ``A``) and ``up`` ``(out, rank)``, this ``scaling`` and ``drop``'s probability."""
    rank = int(down.shape[0])
    p = float(drop.p) if isinstance(drop, nn.Dropout) else 0.0
    new = LoRALinear(
        base, rank=rank, alpha=scaling * rank, posterior=posterior, dropout=p, **options
    )
    new.scaling = scaling  # exactly the source's (alpha / r, or alpha / sqrt(r) with rsLoRA)
    with torch.no_grad():
        a = new.lora_A
        if isinstance(a, BayesianLayer):
            a.load_point_estimates({"weight": down})
        else:
            cast(Tensor, a.weight).copy_(down)
        new.lora_B.weight.copy_(up)
    return new.train(training)


def convert_peft(
    model: nn.Module,
    target: Sequence[str] = (),
    exclude: Sequence[str] = (),
    *,
    posterior: str | None = "flipout",
    prior_std: float = 1.0,
    init_std: float | None = None,
    rank: object = None,
    alpha: object = None,
    dropout: object = None,
    plain: bool = False,
    **layer_kwargs: Any,
) -> list[tuple[str, LoRALinear]]:
    """Replace ``model``'s ``peft`` LoRA layers by :class:`LoRALinear`, in place.

    Called by :func:`~bayesian_layers.adapters.lora` on a ``peft`` model (and by
    :func:`~bayesian_layers.to_bayesian`). The ``PeftModel`` wrapper stays; its
    forward runs the converted layers. ``rank``, ``alpha`` and ``dropout`` are those
    of each ``peft`` adapter: the arguments are accepted and ignored.

    Args:
        model: a model holding ``peft`` LoRA layers (a ``PeftModel`` or the model
            inside it).
        target: name patterns (as :func:`~bayesian_layers.adapters.lora`) of the
            ``peft`` layers to convert; empty: all of them. Layers left out keep
            their ``peft`` adapters.
        exclude: name patterns of ``peft`` layers to leave as they are.
        posterior, prior_std, init_std, **layer_kwargs: as :class:`LoRALinear`.
        plain: also give the :class:`LoRALinear` adapters whose ``A`` is a point
            estimate this ``posterior`` (:func:`from_plain_adapter`; what
            :func:`~bayesian_layers.to_bayesian` does to an adapted model).

    Returns:
        The ``(qualified name, adapter)`` pairs made.

    Raises:
        ValueError: a ``target`` pattern naming no ``peft`` layer, ``model`` itself a
            ``peft`` layer, or a layer :func:`from_peft_layer` refuses.
        TypeError: a ``peft`` layer that is not a ``lora.Linear``.

    Example:
        >>> from torch import nn
        >>> convert_peft(nn.Sequential(nn.Linear(2, 2)))  # no peft layers: nothing to do
        []
    """
    del rank, alpha, dropout  # the peft adapters' own
    if posterior not in POSTERIORS:
        raise ValueError(
            f"lora: posterior must be one of {sorted(map(str, POSTERIORS))}, got {posterior!r}"
        )
    found = peft_layers(model)
    known = [n for n, _ in found]  # what a pattern may name
    if plain:
        ours = adapters(model)
        known += [n for n, _ in ours]  # a Bayesian one is named, then left as it is
        found += [(n, a) for n, a in ours if not isinstance(a.lora_A, BayesianLayer)]
    what = "peft LoRA layer" + (" or LoRALinear" if plain else "")
    for pat in target:
        if not any(matches(n, (pat,)) for n in known):
            raise ValueError(
                f"lora: target {pat!r} names no {what} of the model (they are "
                f"{known[:4]}...); use target=None to convert all of them"
            )
    chosen = [
        (n, m)
        for n, m in found
        if (not target or matches(n, target)) and not (exclude and matches(n, exclude))
    ]
    made: dict[int, LoRALinear] = {}
    for name, module in chosen:  # build every adapter first: a refusal leaves model as it was
        if not name:
            raise ValueError(
                f"lora: model is itself a {type(module).__name__}; convert the model that "
                "holds it (or use from_peft_layer / from_plain_adapter)"
            )
        if id(module) in made:
            continue
        options = dict(prior_std=prior_std, init_std=init_std, **layer_kwargs)
        if isinstance(module, LoRALinear):
            made[id(module)] = from_plain_adapter(module, posterior, **options)
        else:
            made[id(module)] = from_peft_layer(module, posterior, name=name, **options)
    out: list[tuple[str, LoRALinear]] = []
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, made[id(module)])
        out.append((name, made[id(module)]))
    return out
