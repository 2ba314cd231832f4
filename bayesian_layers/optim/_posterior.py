"""Between a variational optimizer's state and the Bayesian layers: which parameters
it trains (the posterior means) and writing its posterior into the layers' scales."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .._checks import inverse_softplus
from .._model_parts import prior_parameter_ids
from ..initializers import TrainableNormal
from ..initializers.swag_normal import SWAGNormal
from ..layers.base import BayesianLayer

if TYPE_CHECKING:
    from .ivon import IVON

__all__ = ["ivon_parameters", "write_posterior"]


def _random_normals(model: nn.Module) -> Iterator[tuple[str, BayesianLayer, str, Tensor, Tensor]]:
    """``(path, layer, name, loc, rho)`` of every random parameter of the Bayesian layers
    in ``model``; ``ValueError`` for one whose posterior is not ``N(loc, softplus(rho))``."""
    for prefix, layer in model.named_modules():
        if not isinstance(layer, BayesianLayer):
            continue
        for name, spec in layer.named_random_parameters():
            init = spec.initializer
            softplus_normal = (
                isinstance(init, TrainableNormal)
                and init.suffixes == ("loc", "rho")
                and type(init).loc_scale is TrainableNormal.loc_scale
            )
            path = f"{prefix}.{name}" if prefix else name
            if not softplus_normal:
                raise ValueError(
                    f"IVON expected normal posteriors N(loc, softplus(rho)) in the Bayesian "
                    f"layers, got {type(init).__name__} for {path!r} "
                    f"({type(layer).__name__})"
                )
            params = init.params(layer, name)
            yield path, layer, name, params["loc"], params["rho"]


def ivon_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` that IVON trains: every parameter but the scales.

    From each Bayesian layer: the posterior means (``weight_loc``, ``bias_loc``) and the
    point estimates (a deterministic ``bias``); not the ``*_rho`` scales (written from
    IVON's Hessian by :func:`write_posterior`) nor the regularizers' prior
    hyperparameters (IVON's prior is its weight decay). From other modules (BatchNorm,
    ``nn.Linear``, ...): every parameter. Each parameter once, in ``model.parameters()``
    order.

    Raises:
        ValueError: a Bayesian layer's random parameter is not ``N(loc, softplus(rho))``.

    Example:
        >>> import bayesian_layers as bl
        >>> model = bl.layers.LinearReparameterization(3, 2, bias_initializer="trainable_normal")
        >>> [n for n, p in model.named_parameters()
        ...  if any(p is q for q in bl.optim.ivon_parameters(model))]
        ['weight_loc', 'bias_loc']
    """
    excluded: set[int] = set()
    for _, _, _, _, rho in _random_normals(model):
        excluded.add(id(rho))
    excluded |= prior_parameter_ids(model)
    return [p for p in model.parameters() if id(p) not in excluded]


@torch.no_grad()
def write_posterior(model: nn.Module, optimizer: IVON) -> list[str]:
    """Write IVON's posterior ``N(m, σ²)``, ``σ = 1/sqrt(ess·(h + δ))``, into ``model``.

    For each random parameter of the Bayesian layers whose ``loc`` is not frozen
    (``requires_grad``): its ``loc`` is the mean ``m`` that ``optimizer`` trains (left
    as it is) and its ``rho`` becomes ``softplus⁻¹(σ)``
    (shape of the parameter), so ``layer.posterior_loc_scale(name) == (m, σ)``; a
    :class:`~bayesian_layers.initializers.swag_normal.SWAGNormal` family left by an earlier
    SWAG fit becomes a ``TrainableNormal`` (its low-rank part is not IVON's). Point
    estimates and non-Bayesian modules keep their values. The model then predicts with
    the IVON posterior (``bl.predict``), reports its KL to the layers' priors
    (``bl.losses``) and saves it in ``state_dict``.

    Args:
        model: the module whose means ``optimizer`` trains (see :func:`ivon_parameters`).
        optimizer: an :class:`~bayesian_layers.optim.IVON` instance.

    Returns:
        The names of the written parameters (module path + parameter name).

    Raises:
        ValueError: a random parameter's ``loc`` is not trained by ``optimizer``, or its
            posterior is not ``N(loc, softplus(rho))``.
        RuntimeError: called inside ``optimizer.sampled_params()`` (the means hold a
            draw there).
    """
    if optimizer._inside:
        raise RuntimeError(
            "IVON.write_posterior: called inside sampled_params (the "
            "parameters hold a draw there, not the means)"
        )
    # a mean frozen from the start (requires_grad=False, no step) is not trained: its
    # layer keeps its scale; one frozen after training keeps its posterior
    targets = [t for t in _random_normals(model) if optimizer.trained(t[3])]
    scales = {}
    for path, _, _, loc, _ in targets:  # check all before writing any
        try:
            scales[path] = optimizer.posterior_scale(loc)
        except ValueError:
            raise ValueError(
                f"IVON.write_posterior expected the optimizer to train the mean of "
                f"{path!r}, got a model whose {path}_loc it does not train (build it with "
                f"bl.optim.ivon_parameters(model))"
            ) from None
    for path, layer, name, _, rho in targets:
        rho.copy_(inverse_softplus(scales[path].to(rho.dtype)))
        if isinstance(layer.parameter_spec(name).initializer, SWAGNormal):
            # an earlier SWAG fit's deviations would stay in the law: back to N(m, σ²)
            layer.set_initializer(name, "trainable_normal")
    return [path for path, *_ in targets]
