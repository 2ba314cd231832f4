"""Bayesian dense layers: drop-in replacements for ``nn.Linear``.

The three estimators share one parameterisation and differ only in how a
forward pass integrates over the weight posterior ``q(W) = N(μ, σ²)``:

* :class:`LinearReparameterization`: one whole weight draw per call, shared by
  the batch (Kingma & Welling 2014; Blundell et al. 2015).
* :class:`LinearFlipout`: one draw decorrelated across examples by random signs
  (Wen et al. 2018); lower-variance gradients, about twice the matmul cost.
* :class:`LinearLocalReparameterization`: pre-activations sampled per example
  (Kingma et al. 2015); lowest variance, never draws whole weights.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..initializers import TrainableInitializer
from ..regularizers import Regularizer
from ._util import check_features as _check_features
from ._util import deprecated_from_torch
from .base import BayesianLayer
from .estimators import FLIPOUT, LOCAL_REPARAMETERIZATION, REPARAMETERIZATION, Estimator, WeightOp
from .functional.linear import add_sample_bias, batched_linear
from .registry import converts

__all__ = [
    "BayesianLinear",
    "LinearOp",
    "LinearReparameterization",
    "LinearFlipout",
    "LinearLocalReparameterization",
]


class LinearOp(WeightOp):
    """``F.linear`` as the template's op; K draws as one batched matmul.

    Shape: ``x`` ``(*, in)``, weight ``(out, in)``, bias ``(out,)``; output ``(*, out)``.
    """

    exact_output_noise = True

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def batched(self, x: Tensor, weight: Tensor, bias: Tensor | None, k: int) -> Tensor:
        return batched_linear(x, weight, bias, k)

    def add_sample_bias(self, y: Tensor, bias: Tensor | None, k: int) -> Tensor:
        return add_sample_bias(y, bias, k)


LINEAR = LinearOp()


class BayesianLinear(BayesianLayer):
    """Base of the dense layers: parameters, validation, ``from_torch`` and the forward
    pass of :mod:`.estimators`; a subclass only sets ``estimator``."""

    estimator: ClassVar[Estimator]

    def __init__(
        self,
        in_features: int,
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
        self.in_features = _check_features(name, "in_features", in_features)
        self.out_features = _check_features(name, "out_features", out_features)
        self.add_param(
            "weight", (out_features, in_features), weight_initializer, weight_regularizer,
            device=device, dtype=dtype,
        )  # fmt: skip
        self.use_bias = bool(bias)
        if not self.use_bias:
            self.register_parameter("bias", None)  # as nn.Linear: `layer.bias is None`
        else:
            self.add_param(
                "bias", (out_features,), bias_initializer, bias_regularizer,
                fan_in=in_features, fan_out=out_features, device=device, dtype=dtype,
            )  # fmt: skip
        self.estimator.check_posteriors(self)

    @classmethod
    def from_torch(cls, module: nn.Linear, **kwargs: object) -> BayesianLinear:
        """A Bayesian layer whose posterior means start at ``module``'s weights.

        Keyword arguments go to the constructor (initializers, regularizers, ...).
        Supports normal and deterministic parameter families.

        Example:
            >>> from torch import nn
            >>> from bayesian_layers.layers import LinearFlipout
            >>> layer = LinearFlipout.from_torch(nn.Linear(3, 2))
            >>> layer.in_features, layer.out_features
            (3, 2)
        """
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{cls.__name__}.from_torch expected nn.Linear, got {type(module)}")
        layer = cls(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            device=module.weight.device,
            dtype=module.weight.dtype,
            **kwargs,  # type: ignore[arg-type]
        )
        layer.load_point_estimates({"weight": module.weight, "bias": module.bias})
        return layer

    from_linear = deprecated_from_torch("from_linear")

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.use_bias}"
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.check_input(x)  # a Tensor of the parameters' (or autocast's) dtype
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expected input of shape (*, {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        # `use_bias` is read per call: row-wise tensor parallelism adds the bias itself
        return self.estimator.project(self, x, LINEAR, "weight", "bias" if self.use_bias else None)

    def shared_input_samples(self, x: Tensor, k: int) -> Tensor | None:
        """K function samples at one input ``x`` shared by all of them, sample-major
        ``(K * B, out)``, in the estimator's cheaper form
        (:meth:`~bayesian_layers.layers.estimators.Estimator.shared_input`); ``None``
        where it has none. Called by :func:`bayesian_layers.predict` inside
        :func:`bayesian_layers.vectorized_samples` for the first stochastic layer."""
        x = self.check_input(x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            return None  # the folded call raises the layer's own error
        bias = "bias" if self.use_bias else None
        return self.estimator.shared_input(self, x, LINEAR, "weight", bias, k)

    def draws_at_shared_input(self, x: Tensor) -> bool:
        """Whether :meth:`shared_input_samples` draws at ``x`` (it draws nothing here)."""
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            return False
        return self.estimator.shared_input_applies(self, x, LINEAR, "weight")


#: the former private name (other modules import it until they move to BayesianLinear)


@converts(nn.Linear, "reparameterization")
class LinearReparameterization(BayesianLinear):
    """Dense layer with a weight posterior, one whole weight draw per call.

    Drop-in for ``nn.Linear``: ``y = x W^T + b`` with ``W ~ q(W)`` drawn afresh at
    every call (training and evaluation alike) and shared by the batch.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: whether to add a bias (deterministic zeros-initialised by default).
        weight_initializer: the weight posterior: a name (``"trainable_normal"``,
            ``"trainable_he_normal"``, ``"trainable_log_normal"``, ...) or a
            :class:`~bayesian_layers.initializers.TrainableInitializer`.
        bias_initializer: the bias posterior; ``"zeros"`` keeps a deterministic
            ``nn.Parameter`` bias.
        weight_regularizer: penalty on the weight (KL to ``N(0, 1)`` by default),
            a name, a :class:`~bayesian_layers.regularizers.Regularizer` or None.
        bias_regularizer: penalty on the bias (None by default).
        device, dtype: factory arguments.

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.

    Attributes:
        weight: a :class:`~bayesian_layers.RandomVariable`: ``.distribution`` is
            ``q(W)``, the value the latest draw.
        weight_loc, weight_rho: the trainable posterior mean and pre-softplus scale.
        losses: ``[KL(q(W) || p(W))]`` (closed form), plus the bias term if any.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from bayesian_layers import layers
        >>> layer = layers.LinearReparameterization(3, 2)
        >>> layer(torch.randn(5, 3)).shape
        torch.Size([5, 2])
        >>> [kl.shape for kl in layer.losses]
        [torch.Size([])]
    """

    estimator = REPARAMETERIZATION


@converts(nn.Linear, "flipout")
class LinearFlipout(BayesianLinear):
    """Dense layer with the Flipout estimator (Wen et al. 2018).

    Same constructor as :class:`LinearReparameterization` (the weight posterior
    must be normal). Each example in a batch sees a pseudo-independent weight
    draw ``μ + (σ ∘ ε) ∘ (s_out s_inᵀ)`` with random signs, which decorrelates
    the gradients within a batch; about twice the matmul cost of ``nn.Linear``.
    A random bias gets one draw per call. In ``"frozen"`` sampling mode it uses
    one whole weight draw, so the frozen function is one function.

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.

    Example:
        >>> from bayesian_layers import layers
        >>> import torch
        >>> layers.LinearFlipout(3, 2)(torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    estimator = FLIPOUT


@converts(nn.Linear, "local_reparameterization")
class LinearLocalReparameterization(BayesianLinear):
    """Dense layer with the local reparameterization estimator (Kingma et al. 2015).

    Same constructor as :class:`LinearReparameterization` (weight and bias
    posteriors must be normal or deterministic). Samples each pre-activation
    ``y ~ N(x μᵀ + μ_b, x² (σ²)ᵀ + σ_b²)`` independently per example: exactly an
    independent weight draw per example, with the lowest gradient variance of
    the three estimators, at twice the matmul cost. It never draws a whole
    weight: ``layer.weight``'s value is the posterior mean, except in
    ``"frozen"`` mode, which draws one whole weight so the function is fixed.

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.

    Example:
        >>> from bayesian_layers import layers
        >>> import torch
        >>> layers.LinearLocalReparameterization(3, 2)(torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    estimator = LOCAL_REPARAMETERIZATION
