"""Pretrained posteriors (MOPED, Krishnan et al. 2020): standard deviations that
follow the trained weights, set through the layers' public seam."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..initializers import TrainableGlorotNormal, TrainableHeNormal, TrainableNormal
from ..layers.base import BayesianLayer

__all__ = ["PretrainedNormal", "MIN_SCALE", "apply_pretrained_scale"]

#: Smallest posterior standard deviation ``pretrained_scale`` sets (a zero weight gets it).
MIN_SCALE = 1e-12


class PretrainedNormal(TrainableNormal):
    """A normal posterior whose scale follows its mean (MOPED, Krishnan et al. 2020).

    ``scale = max(pretrained_scale·|loc|, 1e-12)`` elementwise when the parameters are
    set: :func:`~bayesian_layers.convert.to_bayesian` with ``pretrained_scale=`` puts it
    in place of the layer's normal initializer after copying the trained weights into
    ``loc``, so the layer's ``repr`` shows the configuration in effect. A layer built
    with it directly starts ``loc`` as
    :class:`~bayesian_layers.initializers.TrainableNormal` does. Draws, KL and
    parameters (``loc``, ``rho``) are those of ``TrainableNormal``.

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
        _set_rho(params["loc"], params["rho"], self.pretrained_scale)

    def extra_repr(self) -> str:
        return f"pretrained_scale={self.pretrained_scale}"


#: Initializers whose parameters and law a PretrainedNormal reproduces exactly (they
#: differ only in how ``loc`` starts, and conversion overwrites ``loc``).
_REPLACEABLE = (TrainableNormal, TrainableHeNormal, TrainableGlorotNormal, PretrainedNormal)


def _set_rho(loc: Tensor, rho: Tensor, scale: float) -> None:
    """``rho`` such that ``softplus(rho) = max(scale·|loc|, MIN_SCALE)``, in place."""
    floor = max(MIN_SCALE, torch.finfo(rho.dtype).tiny)
    with torch.no_grad():
        target = (loc.detach().double().abs() * scale).clamp_min(floor)
        rho.copy_(target + torch.log(-torch.expm1(-target)))  # inverse softplus


def apply_pretrained_scale(module: nn.Module, scale: float) -> None:
    """Set every normal posterior of the Bayesian layers in ``module`` (nested ones
    included) to ``softplus(rho) = max(scale·|loc|, MIN_SCALE)`` elementwise, and
    record it as the parameter's initializer (a :class:`PretrainedNormal`, shown by
    ``repr``) where that keeps the law.

    Raises:
        ValueError: a random parameter's posterior is not a normal ``(loc, rho)`` one.
    """
    for layer in module.modules():
        if not isinstance(layer, BayesianLayer):
            continue
        for name, spec in list(layer.named_random_parameters()):
            init = spec.initializer
            params = init.params(layer, name)
            if not init.is_normal or "rho" not in params:
                raise ValueError(
                    f"to_bayesian(pretrained_scale=...) needs normal (loc, rho) posteriors, got "
                    f"{type(init).__name__} for {type(layer).__name__}.{name}"
                )
            loc, _ = layer.posterior_loc_scale(name)
            _set_rho(loc, params["rho"], scale)
            if type(init) in _REPLACEABLE:
                layer.set_initializer(name, PretrainedNormal(scale))
