"""Bayesian bilinear layers: drop-in replacements for ``nn.Bilinear``.

``y_k = x1ᵀ W_k x2 + b_k`` is linear in ``(W, b)``, and each weight element
``W_kij`` meets one input product ``x1_i x2_j`` per output element, so the whole
estimator template (:mod:`.estimators`) applies unchanged: under ``W ~ N(μ, σ²)``
elementwise, ``y ~ N(bilinear(x1, x2, μ, μ_b), bilinear(x1², x2², σ², σ_b²))``.
The family's op reads the two inputs concatenated along the features,
``x = [x1, x2]``: squaring ``x`` squares both, and Flipout's input signs flip both
(one sign per feature of each input, per example).

This file is the worked example of adding a family: an op, a base class with the
parameters, the input check and ``from_torch``, and one three-line class per
estimator.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..initializers import TrainableInitializer
from ..regularizers import Regularizer
from ._util import check_features as _check_features
from .base import BayesianLayer
from .estimators import FLIPOUT, LOCAL_REPARAMETERIZATION, REPARAMETERIZATION, Estimator, WeightOp
from .registry import converts

__all__ = [
    "BilinearOp",
    "BayesianBilinear",
    "BilinearReparameterization",
    "BilinearFlipout",
    "BilinearLocalReparameterization",
]


class BilinearOp(WeightOp):
    """``F.bilinear`` on ``x = [x1, x2]`` (features concatenated) as the template's op.

    Shape: ``x`` ``(*, in1 + in2)``; weight ``(out, in1, in2)`` (``(K, out, in1, in2)``
    batched); bias ``(out,)``; output ``(*, out)``.
    """

    def __init__(self, in1_features: int) -> None:
        self.in1 = in1_features

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.bilinear(x[..., : self.in1], x[..., self.in1 :], weight, bias)

    def batched(self, x: Tensor, weight: Tensor, bias: Tensor | None, k: int) -> Tensor:
        xk = x.reshape(k, -1, x.shape[-1])  # (K, M, in1 + in2)
        x1, x2 = xk[..., : self.in1], xk[..., self.in1 :]
        y = torch.einsum("kmi,koij,kmj->kmo", x1, weight, x2)  # (K, M, out)
        y = y.reshape(*x.shape[:-1], weight.shape[1])  # (K * B, *, out)
        return self.add_sample_bias(y, bias, k)


class BayesianBilinear(BayesianLayer):
    """Base of the bilinear layers: parameters, the input check and ``from_torch``; a
    subclass sets ``estimator``. See :class:`BilinearReparameterization`."""

    estimator: ClassVar[Estimator]

    def __init__(
        self,
        in1_features: int,
        in2_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight_initializer: str | TrainableInitializer = "trainable_normal",
        bias_initializer: str | TrainableInitializer = "zeros",
        weight_regularizer: str | Regularizer | None = "normal_kl_divergence",
        bias_regularizer: str | Regularizer | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.in1_features = _check_features(name, "in1_features", in1_features)
        self.in2_features = _check_features(name, "in2_features", in2_features)
        self.out_features = _check_features(name, "out_features", out_features)
        shape = (out_features, in1_features, in2_features)
        self.add_param(
            "weight", shape, weight_initializer, weight_regularizer, device=device, dtype=dtype
        )
        self.use_bias = bool(bias)
        if self.use_bias:
            self.add_param(
                "bias", (out_features,), bias_initializer, bias_regularizer,
                fan_in=in1_features * in2_features, fan_out=out_features,
                device=device, dtype=dtype,
            )  # fmt: skip
        else:
            self.register_parameter("bias", None)  # as nn.Bilinear: `layer.bias is None`
        self.estimator.check_posteriors(self)

    @classmethod
    def from_torch(cls, module: nn.Bilinear, **kwargs: Any) -> BayesianBilinear:
        """A Bayesian layer whose posterior means start at ``module``'s weights; keyword
        arguments go to the constructor (normal or deterministic families).

        Example:
            >>> from torch import nn
            >>> layer = BilinearFlipout.from_torch(nn.Bilinear(3, 4, 2))
            >>> layer.extra_repr()
            'in1_features=3, in2_features=4, out_features=2, bias=True'
        """
        if not isinstance(module, nn.Bilinear):
            raise TypeError(
                f"{cls.__name__}.from_torch expected nn.Bilinear, got {type(module).__name__}"
            )
        layer = cls(
            module.in1_features, module.in2_features, module.out_features,
            bias=module.bias is not None, device=module.weight.device,
            dtype=module.weight.dtype, **kwargs,
        )  # fmt: skip
        layer.load_point_estimates({"weight": module.weight, "bias": module.bias})
        return layer

    def extra_repr(self) -> str:
        return (
            f"in1_features={self.in1_features}, in2_features={self.in2_features}, "
            f"out_features={self.out_features}, bias={self.use_bias}"
        )

    def forward(self, input1: Tensor, input2: Tensor) -> Tensor:
        x1 = self.check_input(input1, "input1")
        x2 = self.check_input(input2, "input2")
        if (
            x1.dim() == 0
            or x1.shape[-1] != self.in1_features
            or x2.shape[-1:] != (self.in2_features,)
            or x1.shape[:-1] != x2.shape[:-1]
        ):
            raise ValueError(
                f"{type(self).__name__} expected inputs of shapes (*, {self.in1_features}) "
                f"and (*, {self.in2_features}) with the same leading dims, got "
                f"{tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        x = torch.cat([x1, x2], dim=-1)  # (*, in1 + in2)
        bias = "bias" if self.use_bias else None
        return self.estimator.project(self, x, BilinearOp(self.in1_features), "weight", bias)


@converts(nn.Bilinear, "reparameterization")
class BilinearReparameterization(BayesianBilinear):
    """Bilinear layer with a weight posterior, one whole weight draw per call.

    Drop-in for ``nn.Bilinear``: ``y_k = x1ᵀ W_k x2 + b_k`` with ``W ~ q(W)`` drawn
    afresh at every call and shared by the batch (an exact function sample).

    Args:
        in1_features, in2_features: sizes of each sample of the two inputs.
        out_features: size of each output sample.
        bias: whether to add a bias (deterministic zeros-initialised by default).
        weight_initializer, bias_initializer, weight_regularizer, bias_regularizer,
            device, dtype: as :class:`~bayesian_layers.layers.LinearReparameterization`.

    Shape:
        - Input1: ``(*, in1_features)``; Input2: ``(*, in2_features)``, the same ``*``.
        - Output: ``(*, out_features)``.
        - ``weight``: ``(out_features, in1_features, in2_features)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers import BilinearReparameterization
        >>> layer = BilinearReparameterization(3, 4, 2)
        >>> layer(torch.randn(5, 3), torch.randn(5, 4)).shape
        torch.Size([5, 2])
    """

    estimator = REPARAMETERIZATION


@converts(nn.Bilinear, "flipout")
class BilinearFlipout(BayesianBilinear):
    """Bilinear layer with the Flipout estimator (Wen et al. 2018).

    Same constructor as :class:`BilinearReparameterization` (normal weight posterior):
    ``bilinear(x1, x2, μ, b) + bilinear(x1 ∘ s1, x2 ∘ s2, σ ∘ ε) ∘ s_out`` with one
    ``ε`` per call and random signs per example; each output has a whole draw's
    marginal. About twice the cost of ``nn.Bilinear``.

    Shape:
        - Input1: ``(*, in1_features)``; Input2: ``(*, in2_features)``.
        - Output: ``(*, out_features)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers import BilinearFlipout
        >>> BilinearFlipout(3, 4, 2)(torch.randn(5, 3), torch.randn(5, 4)).shape
        torch.Size([5, 2])
    """

    estimator = FLIPOUT


@converts(nn.Bilinear, "local_reparameterization")
class BilinearLocalReparameterization(BayesianBilinear):
    """Bilinear layer with the local reparameterization estimator (Kingma et al. 2015).

    Same constructor as :class:`BilinearReparameterization` (normal or deterministic
    weight and bias posteriors). Samples every output from its exact marginal
    ``N(bilinear(x1, x2, μ, μ_b), bilinear(x1², x2², σ², σ_b²))``, independently per
    example: exact, since the layer is linear in ``W`` and each ``W_kij`` meets one
    product ``x1_i x2_j``.

    Shape:
        - Input1: ``(*, in1_features)``; Input2: ``(*, in2_features)``.
        - Output: ``(*, out_features)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers import BilinearLocalReparameterization
        >>> BilinearLocalReparameterization(3, 4, 2)(torch.randn(3), torch.randn(4)).shape
        torch.Size([2])
    """

    estimator = LOCAL_REPARAMETERIZATION
