"""Which tensors SWAG trains and collects, and the checks on a model (private)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .._model_parts import prior_parameter_ids
from ..initializers import TrainableNormal
from ..layers.base import BayesianLayer

__all__ = ["RandomNormal", "random_normals", "trained_parameters"]


@dataclass(frozen=True)
class RandomNormal:
    """One random parameter of a Bayesian layer with a ``N(loc, softplus(rho))`` posterior.

    Attributes:
        path: module path + parameter name (``"0.weight"``).
        layer, name: the layer and the parameter's name on it.
        loc_key: the name of its ``loc`` in ``model.named_parameters()``.
        loc, rho: the raw parameters.
    """

    path: str
    layer: BayesianLayer
    name: str
    loc_key: str
    loc: Tensor
    rho: Tensor


def random_normals(model: nn.Module, fn: str) -> list[RandomNormal]:
    """Every random parameter of the Bayesian layers in ``model``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: there is none, or one whose posterior is not ``N(loc, softplus(rho))``
            (message starts with ``fn``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn} expected `model` an nn.Module, got {type(model).__name__}")
    out = []
    for prefix, layer in model.named_modules():
        if not isinstance(layer, BayesianLayer):
            continue
        for name, spec in layer.named_random_parameters():
            init = spec.initializer
            path = f"{prefix}.{name}" if prefix else name
            if not (
                isinstance(init, TrainableNormal)
                and init.suffixes == ("loc", "rho")
                and type(init).loc_scale is TrainableNormal.loc_scale
            ):
                raise ValueError(
                    f"{fn} expected normal posteriors N(loc, softplus(rho)) in the Bayesian "
                    f"layers, got {type(init).__name__} for {path!r} ({type(layer).__name__})"
                )
            params = init.params(layer, name)
            loc_key = f"{prefix}.{name}_loc" if prefix else f"{name}_loc"
            out.append(RandomNormal(path, layer, name, loc_key, params["loc"], params["rho"]))
    if not out:
        raise ValueError(
            f"{fn} expected `model` with Bayesian layers (random parameters with a normal "
            f"posterior to write SWAG's into), got a {type(model).__name__} with none; "
            "build it from bayesian_layers.layers or convert it with bl.to_bayesian"
        )
    return out


def trained_parameters(model: nn.Module, targets: list[RandomNormal]) -> dict[str, nn.Parameter]:
    """The parameters SWAG trains and averages, by ``named_parameters`` name: every
    parameter that requires grad except the posterior scales (``*_rho``) and the
    regularizers' prior hyperparameters; so the Bayesian layers' means, their point
    estimates (a deterministic ``bias``) and every parameter of other modules (BatchNorm's
    affine, a plain ``nn.Linear``)."""
    excluded = {id(t.rho) for t in targets} | prior_parameter_ids(model)
    return {k: p for k, p in model.named_parameters() if p.requires_grad and id(p) not in excluded}
