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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..initializers import TrainableInitializer
from ..regularizers import Regularizer
from ._util import check_features as _check_features
from ._util import rademacher as _rademacher
from .base import BayesianLayer
from .functional.linear import (
    add_sample_bias,
    batched_linear,
    flipout_linear,
    local_reparameterization_linear,
)

__all__ = ["LinearReparameterization", "LinearFlipout", "LinearLocalReparameterization"]


class _BayesianLinear(BayesianLayer):
    """Parameters, validation and the whole-weight path shared by the dense estimators."""

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

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs: object) -> _BayesianLinear:
        """A Bayesian layer whose posterior means start at ``linear``'s weights.

        Keyword arguments go to the constructor (initializers, regularizers, ...).
        Supports normal and deterministic parameter families.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{cls.__name__}.from_linear expected nn.Linear, got {type(linear)}")
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            **kwargs,  # type: ignore[arg-type]
        )
        layer.load_point_estimates({"weight": linear.weight, "bias": linear.bias})
        return layer

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.use_bias}"
        )

    def _check_input(self, x: object) -> Tensor:
        x = self.check_input(x)  # a Tensor of the parameters' (or autocast's) dtype
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expected input of shape (*, {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        return x

    def _bias_sample(self) -> Tensor | None:
        return self.sample_param("bias") if self.use_bias else None

    def _whole_weight_forward(self, x: Tensor) -> Tensor:
        k = self._check_samples(x)
        weight = self.sample_param("weight")
        bias = self._bias_sample()
        if k == 1:
            return F.linear(x, weight, bias)
        return batched_linear(x, weight, bias, k)

    def _mean_forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.point("weight"), self.point("bias") if self.use_bias else None)

    def _normal_weight(self) -> tuple[Tensor, Tensor | None]:
        init = self._inits["weight"]
        if init.is_deterministic:
            return self.point("weight"), None
        return init.loc_scale(self, "weight")

    def _require_normal(self, *names: str) -> None:
        for name in names:
            init = self._inits.get(name)
            if init is not None and not (init.is_normal or init.is_deterministic):
                raise ValueError(
                    f"{type(self).__name__} needs a normal (or deterministic) {name} "
                    f"posterior, got {type(init).__name__}; use LinearReparameterization "
                    "for other families"
                )


class LinearReparameterization(_BayesianLinear):
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

    def forward(self, x: Tensor) -> Tensor:
        x = self._check_input(x)
        if self.sampling == "mean":
            return self._mean_forward(x)
        return self._whole_weight_forward(x)


class LinearFlipout(_BayesianLinear):
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

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self._require_normal("weight")

    def forward(self, x: Tensor) -> Tensor:
        x = self._check_input(x)
        if self.sampling == "mean":
            return self._mean_forward(x)
        loc, scale = self._normal_weight()
        if not self.per_example_noise() or scale is None:  # frozen or traced: whole weights
            return self._whole_weight_forward(x)
        k = self._check_samples(x)
        bias = self._bias_sample()
        sign_in = _rademacher(x.shape, x)
        sign_out = _rademacher(x.shape[:-1] + (self.out_features,), x)
        if k == 1:
            noise = torch.randn(loc.shape, dtype=loc.dtype, device=loc.device)
            return flipout_linear(x, loc, scale, noise, sign_in, sign_out, bias)
        noise = torch.randn((k,) + loc.shape, dtype=loc.dtype, device=loc.device)
        perturbation = batched_linear(x * sign_in, scale * noise, None, k)
        mean = F.linear(x, loc)
        return add_sample_bias(torch.addcmul(mean, perturbation, sign_out.to(mean.dtype)), bias, k)


class LinearLocalReparameterization(_BayesianLinear):
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

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self._require_normal("weight", "bias")

    def forward(self, x: Tensor) -> Tensor:
        x = self._check_input(x)
        if self.sampling == "mean":
            return self._mean_forward(x)
        loc, scale = self._normal_weight()
        if not self.per_example_noise() or scale is None:  # frozen or traced: whole weights
            return self._whole_weight_forward(x)
        self._check_samples(x)
        bias_loc, bias_scale = None, None
        if self.use_bias:
            init = self._inits["bias"]
            if init.is_deterministic:
                bias_loc = self.point("bias")
            else:
                bias_loc, bias_scale = init.loc_scale(self, "bias")
        # noise in the parameter dtype: float32 under autocast, cast after the matmuls
        noise = torch.randn(x.shape[:-1] + (self.out_features,), dtype=loc.dtype, device=x.device)
        return local_reparameterization_linear(x, loc, scale, noise, bias_loc, bias_scale)
