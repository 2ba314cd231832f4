"""A family's deterministic op (:class:`WeightOp`) and the estimators' pure math on it
(noise passed in, gradcheck-able). Part of the template :mod:`bayesian_layers.layers.estimators`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..base import BayesianLayer

__all__ = [
    "WeightOp",
    "flipout_output",
    "local_reparameterization_moments",
    "predictive_moments",
    "local_reparameterization_output",
]


class WeightOp:
    """A family's deterministic op ``y = op(x, weight, bias)``, linear in ``(weight, bias)``.

    Subclasses implement ``__call__``; ``batched`` defaults to one call per function
    sample (override it with one fused call), ``add_sample_bias`` to a bias on the last
    dimension, ``sign_shapes`` to signs of the input's and the output's shape.

    Attributes:
        exact_output_noise: the op is ``F.linear``: on a 2-D input, independent
            output-space noise per example has the law of a whole weight draw at each
            example (a weight element meets one input element per output, once per
            example), and the predictive's cheaper forms
            (:mod:`~bayesian_layers.layers.estimators.shared_input`) apply.

    Shape:
        - ``__call__``: ``x`` the family's input, ``weight`` the parameter's shape,
          ``bias`` the bias's shape or None.
        - ``batched``: ``x`` ``(K * B, ...)`` sample-major, ``weight`` ``(K, *shape)``,
          ``bias`` ``(K, *bias_shape)``, ``bias_shape`` or None.

    Example:
        >>> import torch.nn.functional as F
        >>> class Linear(WeightOp):
        ...     def __call__(self, x, weight, bias):
        ...         return F.linear(x, weight, bias)
        >>> Linear().batched(torch.ones(4, 3), torch.ones(2, 5, 3), None, 2).shape
        torch.Size([4, 5])
    """

    exact_output_noise: bool = False

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def batched(self, x: Tensor, weight: Tensor, bias: Tensor | None, k: int) -> Tensor:
        """The op with K weight draws, draw ``i`` applied to block ``i`` of ``x``; a bias
        of shape ``(K, out)`` has one draw per block, a bias ``(out,)`` is shared."""
        biases = [bias] * k if bias is None or bias.dim() == 1 else list(bias)
        return torch.cat([self(xi, weight[i], biases[i]) for i, xi in enumerate(x.chunk(k))])

    def add_sample_bias(self, y: Tensor, bias: Tensor | None, k: int) -> Tensor:
        """``y`` plus a bias with one draw per function sample (bias on the last dim).

        Shape: ``y`` ``(K * B, ..., out)``; ``bias`` ``(K, out)``, ``(out,)`` or None.
        """
        if bias is None:
            return y
        if bias.dim() == 1:
            return y + bias
        yk = y.reshape(k, -1, y.shape[-1])  # (K, M, out)
        return (yk + bias.unsqueeze(1)).reshape(y.shape)

    def sign_shapes(self, x: Tensor, y_shape: torch.Size) -> tuple[torch.Size, torch.Size]:
        """Shapes of Flipout's input and output signs (they broadcast against ``x`` and
        the output): by default one sign per input and per output element."""
        return x.shape, y_shape


def flipout_output(
    op: WeightOp,
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    weight_noise: Tensor,
    sign_in: Tensor,
    sign_out: Tensor,
    bias: Tensor | None,
) -> Tensor:
    """Flipout (Wen et al. 2018) for any op linear in the weight:
    ``op(x, μ, b) + op(x ∘ s_in, σ ∘ ε) ∘ s_out``.

    One shared perturbation ``σ ∘ ε`` decorrelated across examples by signs ±1; each
    output element keeps the marginal of a whole draw ``W ~ N(μ, σ²)``. Noise is
    passed in (gradcheck-able); the signs are cast to the op's output dtype.
    """
    mean = op(x, weight_loc, bias)
    perturbation = op(x * sign_in, weight_scale * weight_noise, None)
    return torch.addcmul(mean, perturbation, sign_out.to(mean.dtype))


def local_reparameterization_moments(
    op: WeightOp,
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    bias_loc: Tensor | None,
    bias_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of ``op(x, W, b)`` under ``W ~ N(μ, σ²)``,
    ``b ~ N(μ_b, σ_b²)`` elementwise: ``op(x, μ, μ_b)`` and ``sqrt(op(x², σ², σ_b²))``.

    Exact for an op linear in the weight in which each weight element meets at most one
    input element per output element (dense, convolution, bilinear).
    """
    mean = op(x, weight_loc, bias_loc)
    b_var = None if bias_scale is None else bias_scale.square()
    var = op(x.square(), weight_scale.square(), b_var)
    return mean, var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()


def predictive_moments(
    layer: BayesianLayer,
    weight: str,
    op: WeightOp,
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    bias_loc: Tensor | None,
    bias_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`local_reparameterization_moments`, computed once per input tensor within
    one :func:`bayesian_layers.predict` call (:attr:`~BayesianLayer.predictive_store`):
    the one-sample chunks of a recorded prefix (``trunk="prefix"``) hand the first
    stochastic layer the same tensor each time. A hit needs the very tensor (held by the
    store, so its memory is not reused meanwhile) at the same in-place version; the
    parameters do not change within the call. Outside ``predict``, or while compiling,
    the moments are computed each time."""
    args = (op, x, weight_loc, weight_scale, bias_loc, bias_scale)
    store = None if torch.compiler.is_compiling() else layer.predictive_store
    if store is None:
        return local_reparameterization_moments(*args)
    key = (id(layer), weight)
    hit = store.get(key)
    if hit is not None and hit[0] is x and hit[1] == x._version:
        return hit[2]
    moments = local_reparameterization_moments(*args)
    store[key] = (x, x._version, moments)
    return moments


def local_reparameterization_output(
    op: WeightOp,
    x: Tensor,
    weight_loc: Tensor,
    weight_scale: Tensor,
    noise: Tensor,
    bias_loc: Tensor | None,
    bias_scale: Tensor | None = None,
) -> Tensor:
    """Local reparameterization (Kingma et al. 2015): ``mean + std ∘ noise`` with the
    moments of :func:`local_reparameterization_moments`, an independent weight draw per
    output element. Noise passed in (gradcheck-able); cast to the op's output dtype.
    """
    mean, std = local_reparameterization_moments(
        op, x, weight_loc, weight_scale, bias_loc, bias_scale
    )
    return torch.addcmul(mean, std, noise.to(mean.dtype))
