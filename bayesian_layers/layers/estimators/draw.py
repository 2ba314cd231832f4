"""Template pieces: the op on posterior means or on whole draws, and one draw of a
projection (:class:`WeightDraw`) that a family applies as often as it needs (attention's
queries, keys and values; an LSTM's time steps).

Part of :mod:`bayesian_layers.layers.estimators`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from .op import WeightOp

if TYPE_CHECKING:
    from ..base import BayesianLayer

__all__ = ["WeightDraw", "mean_projection", "whole_weight_projection"]


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


def mean_projection(
    layer: BayesianLayer, x: Tensor, op: WeightOp, weight: str = "weight", bias: str | None = "bias"
) -> Tensor:
    """The op on the posterior means of ``weight`` and ``bias``."""
    b = None if bias is None else layer.point(bias)
    return op(x, layer.point(weight), b)


def whole_weight_projection(
    layer: BayesianLayer, x: Tensor, op: WeightOp, weight: str = "weight", bias: str | None = "bias"
) -> Tensor:
    """The op on one whole draw of ``weight`` and ``bias`` per function sample (the
    sampling mode decides: fresh, frozen or traced), K draws at once when K > 1."""
    k = layer.check_samples(x)
    w = layer.sample_param(weight)
    b = None if bias is None else layer.sample_param(bias)
    return op(x, w, b) if k == 1 else op.batched(x, w, b, k)
