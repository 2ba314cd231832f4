"""Sparse variational dropout: dense and 2-d convolution layers whose weights learn their
own dropout rates, and the report of the sparsity they reach.

Kingma, Salimans & Welling (2015) read Gaussian dropout as variational inference with
the posterior ``q(w) = N(θ, α θ²)`` per weight and the log-uniform prior
``p(|w|) ∝ 1/|w|``, trained by local reparameterization. Molchanov, Ashukha & Vetrov
(2017) let every weight have its own, unbounded ``α``: with ``log σ²`` as the trainable
parameter (the additive reparameterisation, :class:`VariationalDropoutNormal`),
``log α = log σ² - log θ²``, and the KL to the log-uniform prior in their approximation
(:class:`~bayesian_layers.regularizers.LogUniformKLDivergence`) pushes ``α`` of the
weights the data do not need to infinity. A weight with ``log α`` above a threshold
(3 by default: ``α > 20``, a dropout rate ``α / (1 + α) > 0.95``) is noise; it is set
to zero in the posterior-mean network, which is then sparse.

Design: a posterior family (:class:`VariationalDropoutNormal`, normal) with the
library's local reparameterization estimator, extended in one place: in ``"mean"``
sampling mode the op runs on the thresholded means ``θ ∘ [log α ≤ threshold]``. In
``"sample"`` and ``"frozen"`` modes (training, ``bl.predict``'s samples) the layer uses
its whole posterior, like every Bayesian layer (``model.eval()`` does not change it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..initializers import TrainableInitializer
from ..initializers.variational_dropout import VariationalDropoutNormal
from ..regularizers import Regularizer
from .base import BayesianLayer
from .conv_base import BayesianConv
from .estimators import LocalReparameterization, WeightOp
from .linear import BayesianLinear
from .registry import converts

__all__ = [
    "LinearVariationalDropout",
    "Conv2dVariationalDropout",
    "SparsityReport",
    "variational_dropout_sparsity",
]


def _check_threshold(owner: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{owner} expected `threshold` (on log α) to be a number, got "
            f"{type(value).__name__} {value!r}"
        )
    if math.isnan(value):
        raise ValueError(f"{owner} expected `threshold` (on log α) to be a number, got nan")
    return float(value)


class _ThresholdedLocalReparameterization(LocalReparameterization):
    """Local reparameterization, whose ``"mean"`` mode runs the op on the thresholded
    posterior means :meth:`_VariationalDropout.sparse_weight`."""

    def __reduce__(self) -> str:  # the module-level instance, also after unpickling
        return "_THRESHOLDED"

    def project(
        self,
        layer: BayesianLayer,
        x: Tensor,
        op: WeightOp,
        weight: str = "weight",
        bias: str | None = "bias",
    ) -> Tensor:
        if layer.sampling == "mean" and isinstance(layer, _VariationalDropout):
            b = None if bias is None else layer.point(bias)
            return op(x, layer.sparse_weight(), b)
        return super().project(layer, x, op, weight, bias)


_THRESHOLDED = _ThresholdedLocalReparameterization()


class _VariationalDropout(BayesianLayer):
    """What the variational dropout layers add to their family: ``log α``, the
    thresholded weight and the sparsity."""

    threshold: float

    @property
    def log_alpha(self) -> Tensor:
        """``log α = log σ² - log θ²`` of every weight (``+inf`` where ``θ = 0``;
        ``-inf`` everywhere for a point-estimate weight).

        Shape: the weight's.
        """
        init = self.parameter_spec("weight").initializer
        if isinstance(init, VariationalDropoutNormal):
            return init.log_alpha(self, "weight")
        loc, scale = self.posterior_loc_scale("weight")
        if scale is None:
            return torch.full_like(loc, -math.inf)
        return 2 * torch.log(scale) - torch.log(loc.square())

    def _threshold(self, threshold: float | None) -> float:
        name = f"{type(self).__name__}.sparsity"
        return self.threshold if threshold is None else _check_threshold(name, threshold)

    def weight_mask(self, threshold: float | None = None) -> Tensor:
        """The weights kept: ``log α <= threshold`` (the layer's by default); a bool
        tensor of the weight's shape."""
        return self.log_alpha.detach() <= self._threshold(threshold)

    def sparse_weight(self, threshold: float | None = None) -> Tensor:
        """The posterior mean with the weights of ``log α > threshold`` set to zero: the
        weight of the ``"mean"`` sampling mode (differentiable in the kept ``θ``)."""
        theta = self.point("weight")
        return theta.masked_fill(~self.weight_mask(threshold), 0.0)

    def sparsity_counts(self, threshold: float | None = None) -> tuple[int, int]:
        """``(pruned, total)``: the number of weights with ``log α > threshold`` and of
        all weights (the bias is not counted)."""
        mask = self.weight_mask(threshold)
        return int(mask.numel() - mask.sum()), mask.numel()

    def sparsity(self, threshold: float | None = None) -> float:
        """The fraction of weights with ``log α > threshold`` (the layer's by default),
        the weights the ``"mean"`` mode sets to zero.

        Example:
            >>> layer = LinearVariationalDropout(4, 2)
            >>> layer.sparsity()  # log α ≈ -10 + log(4) at the start: nothing pruned
            0.0
            >>> layer.sparsity(threshold=-100.0)
            1.0
        """
        pruned, total = self.sparsity_counts(threshold)
        return pruned / total


@converts(nn.Linear, "variational_dropout")
class LinearVariationalDropout(_VariationalDropout, BayesianLinear):
    """Dense layer with sparse variational dropout (Kingma et al. 2015; Molchanov et al.
    2017). Drop-in for ``nn.Linear``.

    Each weight has the posterior ``N(θ, σ²)`` with its own dropout rate
    ``α = σ²/θ²``. A forward pass samples every pre-activation from its exact marginal
    (local reparameterization): ``y ~ N(x θᵀ + b, x² (σ²)ᵀ)``. ``losses`` holds the
    KL to the log-uniform prior (Molchanov et al.'s approximation), which drives
    ``α → ∞`` for the weights the data do not need. In ``"mean"`` sampling mode the
    layer computes ``x (θ ∘ m)ᵀ + b`` with ``m = [log α <= threshold]``: the sparse
    network of the paper's evaluation. ``"sample"`` and ``"frozen"`` modes draw from
    the whole posterior, in training and evaluation alike (``model.eval()`` changes
    nothing, as for every Bayesian layer); :meth:`sparsity` reports the pruned fraction.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: whether to add a bias.
        threshold: weights with ``log α > threshold`` are zero in ``"mean"`` sampling
            mode (3 as Molchanov et al.; ``math.inf`` keeps every weight).
        weight_initializer: the weight posterior; ``None`` (default) is a fresh
            :class:`VariationalDropoutNormal` (``log σ²`` starts at -10).
        bias_initializer, bias_regularizer: as
            :class:`~bayesian_layers.layers.LinearReparameterization` (a deterministic
            zeros-initialised bias by default).
        weight_regularizer: the KL to the log-uniform prior in Molchanov et al.'s
            approximation (``"log_uniform_kl_divergence"``) by default.
        device, dtype: factory arguments.

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.

    Attributes:
        weight: a :class:`~bayesian_layers.RandomVariable`, ``.distribution`` the
            posterior ``N(θ, σ²)``.
        weight_loc, weight_log_sigma2: the trainable ``θ`` and ``log σ²``.
        log_alpha: ``log α = log σ² - log θ²`` per weight.
        losses: ``[KL(q(W) || log-uniform)]`` (approximate, closed form).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = LinearVariationalDropout(3, 2)
        >>> layer(torch.randn(5, 3)).shape
        torch.Size([5, 2])
        >>> with torch.no_grad():
        ...     layer.weight_log_sigma2[0, 0] = 10.0  # α = e^10 / θ²: pruned
        >>> layer.sparsity()
        0.16666666666666666
        >>> with bl.posterior_mean(layer), torch.no_grad():
        ...     y = layer(torch.eye(3))  # column 0 of W: the pruned weight is zero
        ...     float(y[0, 0]), float(y[0, 1]) == float(layer.weight_loc[1, 0])
        (0.0, True)
    """

    estimator = _THRESHOLDED

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        threshold: float = 3.0,
        weight_initializer: str | TrainableInitializer | None = None,
        bias_initializer: str | TrainableInitializer = "zeros",
        weight_regularizer: str | Regularizer | None = "log_uniform_kl_divergence",
        bias_regularizer: str | Regularizer | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        threshold = _check_threshold(type(self).__name__, threshold)
        super().__init__(
            in_features, out_features, bias,
            weight_initializer=(
                VariationalDropoutNormal() if weight_initializer is None else weight_initializer
            ),
            bias_initializer=bias_initializer, weight_regularizer=weight_regularizer,
            bias_regularizer=bias_regularizer, device=device, dtype=dtype,
        )  # fmt: skip
        self.threshold = threshold

    @classmethod
    def from_torch(cls, module: nn.Linear, **kwargs: Any) -> LinearVariationalDropout:
        """A variational dropout layer with ``module``'s sizes, device and dtype: ``θ`` (the
        posterior mean) is ``module``'s weight, the bias ``module``'s bias, and ``log σ²``
        starts where the weight initializer starts it (-10 by default).
        :func:`bayesian_layers.to_bayesian` with ``"variational_dropout"`` calls it.

        Keyword arguments go to the constructor (``threshold``, ``weight_initializer``,
        ...). In ``"mean"`` mode a weight with ``log α = log σ² - log θ² > threshold`` is
        zero: with the defaults, every ``|θ| < exp((-10 - 3) / 2) ≈ 1.5e-3``. Pass
        ``threshold=math.inf`` for the torch layer's function exactly.

        Example:
            >>> import math, torch, bayesian_layers as bl
            >>> torch_layer = nn.Linear(3, 2)
            >>> layer = LinearVariationalDropout.from_torch(torch_layer, threshold=math.inf)
            >>> x = torch.randn(4, 3)
            >>> with bl.posterior_mean(layer), torch.no_grad():
            ...     torch.equal(layer(x), torch_layer(x))
            True
            >>> layer.weight_log_sigma2.detach().unique().tolist()
            [-10.0]
        """
        return cast(LinearVariationalDropout, super().from_torch(module, **kwargs))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, threshold={self.threshold}"


@converts(nn.Conv2d, "variational_dropout")
class Conv2dVariationalDropout(_VariationalDropout, BayesianConv):
    """2-d convolution with sparse variational dropout (Kingma et al. 2015; Molchanov
    et al. 2017). Drop-in for ``nn.Conv2d``.

    As :class:`LinearVariationalDropout` with a convolution for the op: each output
    element is drawn from ``N(conv(x, θ) + b, conv(x², σ²))`` (local
    reparameterization), and ``"mean"`` mode runs ``conv(x, θ ∘ m) + b``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            bias, padding_mode: as ``nn.Conv2d``.
        threshold: weights with ``log α > threshold`` are zero in ``"mean"`` sampling
            mode (3 as Molchanov et al.; ``math.inf`` keeps every weight).
        weight_initializer: the weight posterior; ``None`` (default) is a fresh
            :class:`VariationalDropoutNormal` (``log σ²`` starts at -10).
        bias_initializer, bias_regularizer: as
            :class:`LinearVariationalDropout` (a deterministic
            zeros-initialised bias by default).
        weight_regularizer: the KL to the log-uniform prior in Molchanov et al.'s
            approximation (``"log_uniform_kl_divergence"``) by default.
        device, dtype: factory arguments.

    Shape:
        - Input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``.
        - Output: ``(N, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``, as
          ``nn.Conv2d``.

    Example:
        >>> import torch
        >>> layer = Conv2dVariationalDropout(3, 8, 3, padding=1)
        >>> layer(torch.randn(2, 3, 6, 6)).shape
        torch.Size([2, 8, 6, 6])
        >>> layer.log_alpha.shape, round(layer.sparsity(), 1)  # few weights start pruned
        (torch.Size([8, 3, 3, 3]), 0.0)
    """

    _dims, _torch_class, estimator = 2, nn.Conv2d, _THRESHOLDED

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        threshold: float = 3.0,
        weight_initializer: str | TrainableInitializer | None = None,
        bias_initializer: str | TrainableInitializer = "zeros",
        weight_regularizer: str | Regularizer | None = "log_uniform_kl_divergence",
        bias_regularizer: str | Regularizer | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        threshold = _check_threshold(type(self).__name__, threshold)
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode,
            weight_initializer=(
                VariationalDropoutNormal() if weight_initializer is None else weight_initializer
            ),
            bias_initializer=bias_initializer, weight_regularizer=weight_regularizer,
            bias_regularizer=bias_regularizer, device=device, dtype=dtype,
        )  # fmt: skip
        self.threshold = threshold

    @classmethod
    def from_torch(cls, module: nn.Module, **kwargs: Any) -> Conv2dVariationalDropout:
        """As :meth:`LinearVariationalDropout.from_torch`, for ``nn.Conv2d`` (its
        hyperparameters too): ``θ`` is the convolution's weight, ``log σ²`` at -10.

        Example:
            >>> import math, torch, bayesian_layers as bl
            >>> conv = nn.Conv2d(3, 4, 3, padding=1)
            >>> layer = Conv2dVariationalDropout.from_torch(conv, threshold=math.inf)
            >>> x = torch.randn(2, 3, 5, 5)
            >>> with bl.posterior_mean(layer), torch.no_grad():
            ...     torch.equal(layer(x), conv(x))
            True
        """
        return cast(Conv2dVariationalDropout, super().from_torch(module, **kwargs))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, threshold={self.threshold}"


@dataclass(frozen=True)
class SparsityReport:
    """The sparsity a model's variational dropout layers reached.

    Attributes:
        counts: module path (``""`` for the model itself) -> ``(pruned, total)``
            weights of that layer, in module order.
    """

    counts: dict[str, tuple[int, int]]

    @property
    def per_layer(self) -> dict[str, float]:
        """Module path -> the fraction of the layer's weights pruned."""
        return {path: pruned / total for path, (pruned, total) in self.counts.items()}

    @property
    def pruned(self) -> int:
        """Weights pruned in all the layers."""
        return sum(p for p, _ in self.counts.values())

    @property
    def total(self) -> int:
        """Weights of all the layers."""
        return sum(t for _, t in self.counts.values())

    @property
    def fraction(self) -> float:
        """The fraction of all the layers' weights pruned (each weight counts once)."""
        return self.pruned / self.total


def variational_dropout_sparsity(
    model: nn.Module, threshold: float | None = None
) -> SparsityReport:
    """The weights with ``log α > threshold`` in every variational dropout layer of
    ``model`` (:class:`LinearVariationalDropout`, :class:`Conv2dVariationalDropout`).

    Args:
        model: any module (the layer itself, an ``nn.Sequential``, ...).
        threshold: the ``log α`` threshold; ``None`` (default) uses each layer's own.

    Returns:
        A :class:`SparsityReport`: ``(pruned, total)`` per layer, ``.per_layer``
        fractions and the overall ``.fraction``.

    Raises:
        ValueError: ``model`` holds no variational dropout layer.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(LinearVariationalDropout(4, 3), nn.ReLU(),
        ...                       LinearVariationalDropout(3, 1))
        >>> report = variational_dropout_sparsity(model, threshold=-100.0)
        >>> report.counts, report.fraction
        ({'0': (12, 12), '2': (3, 3)}, 1.0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"variational_dropout_sparsity expected an nn.Module, got {type(model).__name__}"
        )
    counts: dict[str, tuple[int, int]] = {}
    for path, module in model.named_modules():
        if isinstance(module, _VariationalDropout):
            counts[path] = module.sparsity_counts(threshold)
    if not counts:
        raise ValueError(
            "variational_dropout_sparsity found no variational dropout layer "
            f"(LinearVariationalDropout, Conv2dVariationalDropout) in {type(model).__name__}"
        )
    return SparsityReport(counts)
