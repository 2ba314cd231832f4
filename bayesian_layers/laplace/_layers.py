"""Which modules a Laplace fit takes, how, and their parameters (private).

Three kinds of module:

* ``"linear"``: ``nn.Linear`` and the Bayesian linear layers (hooks: exact diagonal, KFAC);
* ``"conv2d"``: ``nn.Conv2d`` and the Bayesian 2-d convolutions (hooks, as linear per patch);
* ``"generic"``: recurrent (``nn.LSTM``, ``nn.LSTMCell``, ``nn.GRUCell``), attention
  (``nn.MultiheadAttention``, its ``out_proj`` included) and embedding (``nn.Embedding``)
  modules and their Bayesian counterparts: per-example Jacobians by ``torch.func``
  (:mod:`._per_example`).

Everything else (BatchNorm, LayerNorm, ``nn.GRU``, activations, ...) is traversed as a
point estimate. ``subset="lora"``: the ``lora_A`` and ``lora_B`` factors of every
:class:`~bayesian_layers.adapters.LoRALinear` (both, as Laplace-LoRA), of kind
``"linear"`` wherever the adapter sits (it calls them as modules), the frozen base a
point estimate.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..layers.attention import MultiheadAttentionFlipout, MultiheadAttentionReparameterization
from ..layers.base import BayesianLayer
from ..layers.conv_base import BayesianConvNd
from ..layers.embedding import EmbeddingReparameterization
from ..layers.linear import BayesianLinear
from ..layers.recurrent import (
    GRUCellFlipout,
    GRUCellReparameterization,
    LSTMCellFlipout,
    LSTMCellReparameterization,
    LSTMFlipout,
    LSTMReparameterization,
)
from ._checks import SUBSETS, check_choice

__all__ = ["GENERIC", "layer_kind", "targets", "lora_targets", "random_params", "point_value"]

_FN = "laplace.fit"

#: The modules whose curvature goes through per-example Jacobians (torch's and ours).
GENERIC: tuple[type[nn.Module], ...] = (
    nn.LSTM,
    nn.LSTMCell,
    nn.GRUCell,
    nn.MultiheadAttention,
    nn.Embedding,
    LSTMReparameterization,
    LSTMFlipout,
    LSTMCellReparameterization,
    LSTMCellFlipout,
    GRUCellReparameterization,
    GRUCellFlipout,
    MultiheadAttentionReparameterization,
    MultiheadAttentionFlipout,
    EmbeddingReparameterization,
)


def layer_kind(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv2d"``, ``"generic"`` or ``None`` (a point estimate)."""
    if isinstance(module, GENERIC):
        return "generic"
    if isinstance(module, (nn.Linear, BayesianLinear)):
        return "linear"
    if isinstance(module, nn.Conv2d) or (
        isinstance(module, BayesianConvNd) and module._dims == 2 and not module._transposed
    ):
        return "conv2d"
    return None


def targets(model: nn.Module, subset: str = "all") -> list[tuple[str, nn.Module, str]]:
    """``(name, module, kind)`` of the layers a fit takes, in model order.

    A linear layer inside a generic module (an attention's ``out_proj``, which the
    attention applies itself, so no hook sees it) is of kind ``"generic"``.
    ``subset="last_layer"``: the last linear layer outside generic modules;
    ``subset="lora"``: the factors of the LoRA adapters (:func:`lora_targets`).
    """
    check_choice(_FN, "subset", subset, SUBSETS)
    if subset == "lora":
        return lora_targets(model)
    found: list[tuple[str, nn.Module, str]] = []
    inside: list[str] = []  # names of the generic modules met so far
    for name, module in model.named_modules():
        kind = layer_kind(module)
        if kind is None:
            continue
        if any(name.startswith(f"{g}.") for g in inside):
            kind = "generic"
        elif kind == "generic":
            inside.append(name)
        found.append((name, module, kind))
    if subset == "last_layer":
        found = [t for t in found if t[2] == "linear"][-1:]
    return found


def lora_targets(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(name, module, "linear")`` of the ``lora_A`` and ``lora_B`` factors of every
    :class:`~bayesian_layers.adapters.LoRALinear` in ``model``, in model order.

    Raises:
        ValueError: a model without adapters, or a factor that is not a dense layer
            (``nn.Linear`` or a Bayesian linear layer; e.g. a rank-1 ensemble ``A``).

    Example:
        >>> from torch import nn
        >>> from bayesian_layers.adapters import lora
        >>> net = lora(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        ...            target="2", rank=2, posterior="laplace")
        >>> [name for name, _, _ in lora_targets(net)]
        ['2.lora_A', '2.lora_B']
    """
    from ..adapters import LoRALinear  # the adapters build on the layers, not on laplace

    found: list[tuple[str, nn.Module, str]] = []
    for name, module in model.named_modules():
        if not isinstance(module, LoRALinear):
            continue
        for part in ("lora_A", "lora_B"):
            factor = getattr(module, part)
            path = f"{name}.{part}" if name else part
            if layer_kind(factor) != "linear":
                raise ValueError(
                    f"{_FN} with subset='lora' expected the adapter factor {path!r} to be "
                    f"nn.Linear or a Bayesian linear layer, got {type(factor).__name__}"
                )
            found.append((path, factor, "linear"))
    if not found:
        raise ValueError(
            f"{_FN} with subset='lora' expected a model with LoRA adapters (bl.lora), got "
            f"none in {type(model).__name__}"
        )
    return found


def random_params(module: nn.Module, kind: str) -> tuple[str, ...]:
    """The parameters of ``module`` in the posterior: a Bayesian layer's random ones;
    for a torch module, ``weight`` and ``bias`` (linear, conv) or all its own parameters
    (generic: e.g. ``weight_ih_l0``, ..., ``in_proj_weight``, ``in_proj_bias``)."""
    if kind == "generic":
        if isinstance(module, BayesianLayer):
            return tuple(n for n, _ in module.named_random_parameters())
        return tuple(n for n, _ in module.named_parameters(recurse=False))
    names = ["weight"] + (["bias"] if point_value(module, "bias") is not None else [])
    if isinstance(module, BayesianLayer):
        random = {n for n, _ in module.named_random_parameters()}
        names = [n for n in names if n in random]
    return tuple(names)


def point_value(module: nn.Module, name: str) -> Tensor | None:
    """The value of ``module``'s parameter ``name`` (a Bayesian layer's posterior mean),
    ``None`` when it has none."""
    if isinstance(module, BayesianLayer):
        declared = dict(module.named_random_parameters(include_deterministic=True))
        return module.point(name) if name in declared else None
    return getattr(module, name, None)
