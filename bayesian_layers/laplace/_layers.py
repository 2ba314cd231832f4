"""Which modules a Laplace fit takes, how, and their parameters (private).

Three kinds of module:

* ``"linear"``: ``nn.Linear`` and the Bayesian linear layers (hooks: exact diagonal, KFAC);
* ``"conv2d"``: ``nn.Conv2d`` and the Bayesian 2-d convolutions (hooks, as linear per patch);
* ``"generic"``: recurrent (``nn.LSTM``, ``nn.LSTMCell``, ``nn.GRUCell``), attention
  (``nn.MultiheadAttention``, its ``out_proj`` included) and embedding (``nn.Embedding``)
  modules and their Bayesian counterparts: per-example Jacobians by ``torch.func``
  (:mod:`._per_example`).

Everything else (BatchNorm, LayerNorm, ``nn.GRU``, activations, ...) is traversed as a
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

__all__ = ["GENERIC", "layer_kind", "targets", "random_params", "point_value"]

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
    ``subset="last_layer"``: the last linear layer outside generic modules.
    """
    check_choice(_FN, "subset", subset, SUBSETS)
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
