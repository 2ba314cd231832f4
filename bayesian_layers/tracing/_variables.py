"""Traced random variables: :func:`variable` for any distribution, and the whole-weight
draws of layers (:func:`layer_parameter`, :class:`LayerParameter`, :func:`mean_weights`).

Private: the public names are re-exported by :mod:`bayesian_layers.tracing`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..random_variables.variable import RandomVariable
from . import traceable


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
