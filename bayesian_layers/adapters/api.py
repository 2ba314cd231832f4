"""``lora``: add (Bayesian) LoRA adapters to any model; their state dict; merging.

Part of :mod:`bayesian_layers.adapters`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from torch import Tensor, nn

from ._adapter import LoRALinear
from ._attention import AdaptedMultiheadAttention, adapt_attention, sync_encoder_fast_path
from ._targets import find_targets, patterns

__all__ = ["lora", "adapters", "lora_state_dict", "load_lora_state_dict", "merge_lora"]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.MultiheadAttention) and child == "out_proj":
        adapt_attention(parent)  # torch's attention would read out_proj.weight directly
    setattr(parent, child, module)


def _check_model(owner: str, model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner} expected `model` an nn.Module, got {type(model).__name__}")


def freeze_base(model: nn.Module) -> None:
    """``requires_grad=False`` on every parameter outside the adapters' factors."""
    keep = {id(p) for _, a in adapters(model) for f in (a.lora_A, a.lora_B) for p in f.parameters()}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)


def lora(
    model: nn.Module,
    target: str | Iterable[str] | None = ("q_proj", "v_proj"),
    rank: int = 8,
    alpha: float = 16.0,
    posterior: str | None = "flipout",
    dropout: float = 0.0,
    *,
    prior_std: float = 1.0,
    init_std: float | None = None,
    exclude: str | Iterable[str] | None = None,
    **layer_kwargs: Any,
) -> nn.Module:
    """Freeze ``model`` and add low-rank adapters to the layers named by ``target``.

    Every matching ``nn.Linear`` (``nn.MultiheadAttention``'s ``out_proj`` included)
    or ``transformers`` GPT-2 ``Conv1D`` becomes a :class:`LoRALinear` around it,
    whose down projection ``A`` is random under ``posterior`` (see there). All other
    parameters get ``requires_grad=False``. The result trains with
    ``loss = nll + sum(bl.losses(model)) / N`` and predicts with
    :func:`bayesian_layers.predict`. A ``peft`` LoRA model is converted instead: its
    adapters become :class:`LoRALinear` with the same factors, scaling and dropout
    (the posterior mean of ``A`` is peft's ``A``); ``target`` then selects among its
    adapted layers (``None``: all).

    Args:
        model: any module (a ``transformers`` model, a ``peft`` model, your own).
        target: module-name pattern(s): a layer matches when its qualified name equals
            a pattern, ends with ``"." + pattern``, or matches it as a glob
            (``"blocks.*.attn.out_proj"``). ``None`` only for a ``peft`` model.
        rank, alpha, posterior, dropout, prior_std, init_std, **layer_kwargs: as
            :class:`LoRALinear`.
        exclude: pattern(s) of layers to leave alone.

    Returns:
        ``model``, changed in place; each adapter in the training or eval mode of the
        layer it wraps (a model put in eval mode before ``lora`` keeps its adapters'
        dropout off until ``model.train()``).

    Raises:
        ValueError: a pattern matching no adaptable layer, or a bad hyperparameter.
        TypeError: ``target`` not a str or list of str.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> net = bl.lora(net, target=["0", "2"], rank=2, posterior="flipout")
        >>> [n for n, p in net.named_parameters() if p.requires_grad][:2]
        ['0.lora_A.weight_loc', '0.lora_A.weight_rho']
        >>> bl.predict(net, torch.randn(3, 4), num_samples=5).samples.shape
        torch.Size([5, 3, 2])
    """
    _check_model("lora", model)
    options = dict(
        rank=rank, alpha=alpha, posterior=posterior, dropout=dropout, prior_std=prior_std,
        init_std=init_std, **layer_kwargs,
    )  # fmt: skip
    excluded = patterns("exclude", exclude)
    from ._peft import convert_peft, peft_layers  # nothing imported without peft loaded

    if peft_layers(model):
        convert_peft(model, patterns("target", target), excluded, **options)
        freeze_base(model)
        sync_encoder_fast_path(model)
        return model
    pats = patterns("target", target)
    if not pats:
        raise ValueError(
            "lora: target must name at least one layer (target=None is for peft models)"
        )
    made: dict[int, LoRALinear] = {}
    for name, module in find_targets(model, pats, excluded):
        if id(module) not in made:  # in the mode of the layer it wraps (dropout off in eval)
            made[id(module)] = LoRALinear(module, **options).train(module.training)
        _set(model, name, made[id(module)])
    freeze_base(model)
    sync_encoder_fast_path(model)
    return model


def adapters(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """The ``(qualified name, adapter)`` pairs of ``model``'s :class:`LoRALinear` layers."""
    _check_model("adapters", model)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' tensors only (``lora_A`` and ``lora_B`` of every adapter), under
    their keys in ``model.state_dict()``, priors' buffers included: what to save after
    fine-tuning. Plain tensors, so ``torch.load(path, weights_only=True)`` reads them.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> net = bl.lora(torch.nn.Sequential(torch.nn.Linear(4, 2)), target="0", rank=1)
        >>> [k for k in bl.lora_state_dict(net) if "prior" not in k]
        ['0.lora_A.weight_loc', '0.lora_A.weight_rho', '0.lora_B.weight']
    """
    out: dict[str, Tensor] = {}
    for name, adapter in adapters(model):
        for part in ("lora_A", "lora_B"):
            prefix = f"{name}.{part}." if name else f"{part}."
            out.update(getattr(adapter, part).state_dict(prefix=prefix))
    return out


def load_lora_state_dict(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load adapter tensors saved by :func:`lora_state_dict` into ``model`` (built with
    the same :func:`lora` call), checking that the keys are exactly the adapters'.

    Raises:
        KeyError: missing or unexpected adapter keys (named).
    """
    expected = set(lora_state_dict(model))
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected
    if missing or unexpected:
        raise KeyError(
            f"load_lora_state_dict: missing adapter keys {sorted(missing)[:5]}, "
            f"unexpected keys {sorted(unexpected)[:5]}"
        )
    result = model.load_state_dict(state_dict, strict=False)
    assert not result.unexpected_keys


def _untie(model: nn.Module, adapter: LoRALinear, names: list[str]) -> None:
    """Give ``adapter``'s base a weight of its own if ``model`` uses that tensor elsewhere
    too (a language model's output layer tied to its embedding): the update is then added
    to the adapted layer only, not to the other users of the tied weight."""
    weight = adapter.weight
    inside = tuple(f"{n}." for n in names)
    if any(
        p is weight and not n.startswith(inside)
        for n, p in model.named_parameters(remove_duplicate=False)
    ):
        adapter.base.weight = nn.Parameter(weight.detach().clone(), weight.requires_grad)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every adapter by its base layer with the posterior-mean update
    ``s · B E[A]`` added to the weight (in place; returns ``model``): the
    posterior-mean model at the cost of the base model. A base weight tied to another
    part of the model (an output layer tied to the embedding) is untied first, so only
    the adapted layer changes.

    Raises:
        ValueError: a ``"rank1"`` adapter (a mixture of members has no one mean weight).
    """
    _check_model("merge_lora", model)
    every = [  # an adapter shared by several names (a tied layer) is replaced at each
        (n, m) for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, LoRALinear)
    ]
    for name, adapter in every:  # refuse before changing anything
        if name == "":
            raise ValueError("merge_lora: model is itself an adapter; use model.merged()")
        adapter.mean_down()  # a rank-1 adapter (a mixture) raises here
    merged: dict[int, nn.Module] = {}
    for name, adapter in every:
        if id(adapter) not in merged:  # its base weight gets the update once
            _untie(model, adapter, [n for n, a in every if a is adapter])
            merged[id(adapter)] = adapter.merged()
        base = merged[id(adapter)]
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, base)
        if isinstance(parent, AdaptedMultiheadAttention):
            cast(nn.Module, parent).__class__ = nn.MultiheadAttention
    sync_encoder_fast_path(model)
    return model
