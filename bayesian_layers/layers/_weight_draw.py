"""One draw of a projection's weight and bias, applied as often as a family needs it.

The weight-estimator template (:mod:`bayesian_layers.layers.estimators`) draws at
every ``project`` call. Families that apply one draw several times (the packed input
projection of attention to queries, keys and values; an LSTM sequence at every time
step) take the draw once with :func:`draw_weight` and apply it with
:func:`~bayesian_layers.layers.functional.attention.flipout_project` (signs per
example) or the whole-weight kernels. The dispatch follows ``Estimator.project``:
posterior means in ``"mean"`` mode; Flipout's posterior mean and shared perturbation
``Δ = σ ∘ ε`` when per-example noise is allowed and the weight is random; one whole
draw per function sample otherwise. All noise comes from ``layer.noise`` and
``layer.sample_param``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .estimators import FLIPOUT, Estimator

if TYPE_CHECKING:
    from .base import BayesianLayer

__all__ = ["WeightDraw", "draw_weight"]


@dataclass(frozen=True)
class WeightDraw:
    """A whole weight (``delta`` None), or Flipout's posterior mean ``weight`` and its
    perturbation ``delta = σ ∘ ε``; and the bias (a draw, a point estimate or None).

    Shape:
        weight, delta: ``(out, in)``, with a leading K in vectorised mode (a posterior
        mean never has one); bias: ``(out,)`` or ``(K, out)``.
    """

    weight: Tensor
    delta: Tensor | None
    bias: Tensor | None

    @property
    def per_example(self) -> bool:
        """Whether it is applied with signs per example (Flipout)."""
        return self.delta is not None

    def sample(self, j: int | None) -> WeightDraw:
        """The ``j``-th of K function samples (tensors without a K dimension are shared;
        ``j`` None: this draw)."""
        if j is None:
            return self

        def pick(t: Tensor | None, dims: int) -> Tensor | None:
            return t[j] if t is not None and t.dim() > dims else t

        return WeightDraw(pick(self.weight, 2), pick(self.delta, 2), pick(self.bias, 1))  # type: ignore[arg-type]

    def rows(self, start: int, stop: int) -> WeightDraw:
        """Output rows ``[start, stop)`` (one block of a packed projection)."""
        r = slice(start, stop)
        return WeightDraw(
            self.weight[..., r, :],
            None if self.delta is None else self.delta[..., r, :],
            None if self.bias is None else self.bias[..., r],
        )


def draw_weight(
    layer: BayesianLayer, estimator: Estimator, weight: str, bias: str | None
) -> WeightDraw:
    """One draw of ``layer``'s ``weight`` and ``bias`` under ``estimator``
    (reparameterization or Flipout) and the layer's sampling mode.

    Args:
        layer: the layer holding the parameters.
        estimator: the family's estimator; Flipout gives ``(μ, Δ)`` in ``"sample"``
            mode for a random weight, every other case a whole weight.
        weight, bias: the parameters' names (``bias`` None: no bias).
    """
    b = None if bias is None else layer.sample_param(bias)  # a point in "mean" mode
    if layer.sampling == "mean":
        return WeightDraw(layer.point(weight), None, b)
    if estimator is FLIPOUT and layer.per_example_noise():
        loc, scale = layer.posterior_loc_scale(weight)
        if scale is not None:
            k = layer.num_function_samples
            shape = loc.shape if k == 1 else torch.Size((k, *loc.shape))
            return WeightDraw(loc, scale * layer.noise(weight, shape, loc), b)
    return WeightDraw(layer.sample_param(weight), None, b)
