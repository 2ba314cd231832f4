"""Mixture stochastic output layers: :class:`MixtureNormal` and :class:`MixtureLogistic`
(the discretized logistic mixture of PixelCNN++, Salimans et al. 2017; paper Figure 6).

Shape rules are those of :mod:`.output_base`; a mixture's raw parameters are
three blocks ``[logits | loc | scale_raw]``, each ``(units, K)`` for ``K``
components, with ``scale = softplus(scale_raw) + min_scale``.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.distributions as td
from torch import Tensor

from ..._checks import check_count, check_optional_count
from . import distributions as od
from .base import StochasticOutput
from .logistic import DiscretizedLogisticMixture, Logistic

__all__ = ["MixtureNormal", "MixtureLogistic"]


class _Mixture(StochasticOutput):
    param_names = ("logits", "loc", "scale")
    positive = frozenset({"scale"})

    def __init__(
        self,
        units: int | None,
        num_components: int,
        *,
        in_features: int | None = None,
        event_dims: int | None = None,
        min_scale: float = 1e-3,
        name: str | None = None,
        validate_args: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.num_components = check_count(type(self).__name__, "num_components", num_components)
        super().__init__(
            units,
            in_features=in_features,
            event_dims=event_dims,
            min_scale=min_scale,
            name=name,
            validate_args=validate_args,
            device=device,
            dtype=dtype,
        )

    def _consumes_last_dim(self) -> bool:
        return self.units is None

    def _num_outputs(self, units: int) -> int:
        return 3 * units * self.num_components

    def _split(self, raw: Tensor) -> dict[str, Tensor]:
        blocks = raw.unflatten(-1, (3, self.units, self.num_components)).unbind(-3)  # 3 × (*, n, K)
        return dict(zip(self.param_names, blocks, strict=True))

    def _expected_last_dim(self) -> int | None:
        if self.units is None:
            return 3 * self.num_components
        return super()._expected_last_dim()

    def _from_input(self, x: Tensor) -> dict[str, Tensor]:
        blocks = x.unflatten(-1, (3, self.num_components)).unbind(-2)  # 3 × (*, K)
        return dict(zip(self.param_names, blocks, strict=True))

    def extra_repr(self) -> str:
        return f"num_components={self.num_components}, " + super().extra_repr()


class MixtureNormal(_Mixture):
    """Mixture of ``K`` normals per element: ``Σ_k softmax(logits)_k N(loc_k, scale_k²)``.

    Args:
        units: size of the value's last dimension, through a trainable projection;
            ``None``: the input holds the ``3K`` parameters in its last dimension.
        num_components: ``K >= 1``.
        in_features, event_dims, min_scale, name, validate_args, device, dtype: as in
            :class:`~bayesian_layers.layers.StochasticOutput` (the input size if known,
            the event dimensions, the floor of every scale, the random variable's name,
            the distribution's argument checks, the parameters' factory arguments).

    Shape:
        - Input: ``(*, F)``.
        - With ``units=n``: projection to ``[logits | loc | scale_raw]``, each
          ``(*, n, K)`` (flattened ``n``-major). Value ``(*, n)``; event the last
          ``event_dims`` (default 1); ``log_prob``: ``(*)``.
        - Without ``units``: ``F = 3K`` holds ``[logits | loc | scale_raw]``, each
          ``(*, K)``. Value ``(*)``; ``event_dims`` default 0; ``log_prob``: ``(*)``.

    No ``rsample`` (the component choice is discrete): values are drawn by
    ``sample()`` without gradient; train through ``log_prob``.

    Example:
        >>> import torch
        >>> rv = MixtureNormal(2, num_components=3)(torch.randn(4, 5))
        >>> rv.shape, rv.log_prob(torch.zeros(4, 2)).shape, rv.mean.shape
        (torch.Size([4, 2]), torch.Size([4]), torch.Size([4, 2]))
    """

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        v = validate_args
        return od.MixtureSameFamily(
            od.Categorical(logits=params["logits"], validate_args=v),
            td.Normal(params["loc"], params["scale"], validate_args=v),
            validate_args=v,
        )


class MixtureLogistic(_Mixture):
    """Mixture of ``K`` logistics per element, continuous or discretized (PixelCNN++).

    Continuous (``num_bins=None``): ``Σ_k softmax(logits)_k Logistic(loc_k, scale_k)``,
    a ``MixtureSameFamily`` of :class:`.logistic.Logistic`. Discretized (``num_bins=n``): a
    :class:`.logistic.DiscretizedLogisticMixture` over the ``n`` values ``low + i (high - low)
    / (n - 1)``; each bin has the continuous mixture's mass over ``±`` half a bin,
    and the edge bins take the remaining tail mass, so ``log_prob`` is a log
    probability over bins summing to 1. Images: ``num_bins=256`` with
    ``[low, high] = [-1, 1]`` after ``x = 2v/255 - 1``, or ``low=0, high=255`` on
    the raw values. (PixelCNN++'s linear coupling of colour channels is not
    included: channels are independent given the input.)

    Args:
        units: channels of the value (3 for RGB), through a trainable projection;
            ``None``: the input holds the ``3K`` parameters in its last dimension.
        num_components: ``K >= 1``.
        num_bins: number of discrete values (``>= 2``), or ``None`` for continuous.
        low: the lowest value (centre of the first bin); discretized only.
        high: the highest value (centre of the last bin); discretized only.
        in_features, event_dims, min_scale, name, validate_args, device, dtype: as in
            :class:`~bayesian_layers.layers.StochasticOutput` (the input size if known,
            the event dimensions, the floor of every scale, the random variable's name,
            the distribution's argument checks, the parameters' factory arguments).

    Shape:
        As :class:`MixtureNormal`.

    No ``rsample``: values are drawn by ``sample()`` without gradient.

    Example:
        >>> import torch
        >>> layer = MixtureLogistic(3, num_components=5, num_bins=256)
        >>> rv = layer(torch.randn(2, 8))
        >>> pixels = torch.randint(0, 256, (2, 3))  # RGB values of two pixels
        >>> rv.shape, rv.log_prob(2 * pixels / 255 - 1).shape
        (torch.Size([2, 3]), torch.Size([2]))
    """

    def __init__(
        self,
        units: int | None,
        num_components: int,
        *,
        num_bins: int | None = None,
        low: float = -1.0,
        high: float = 1.0,
        in_features: int | None = None,
        event_dims: int | None = None,
        min_scale: float = 1e-3,
        name: str | None = None,
        validate_args: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        owner = type(self).__name__
        self.num_bins = check_optional_count(owner, "num_bins", num_bins)
        if self.num_bins == 1:
            raise ValueError(f"{owner} expected `num_bins` >= 2 or None, got 1")
        finite = all(
            isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
            for v in (low, high)
        )
        if not finite or not low < high:
            raise ValueError(
                f"{owner} expected finite numbers `low` < `high`, got {low!r}, {high!r}"
            )
        self.low, self.high = float(low), float(high)
        super().__init__(
            units,
            num_components,
            in_features=in_features,
            event_dims=event_dims,
            min_scale=min_scale,
            name=name,
            validate_args=validate_args,
            device=device,
            dtype=dtype,
        )

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        v = validate_args
        logits, loc, scale = params["logits"], params["loc"], params["scale"]
        if self.num_bins is not None:
            return DiscretizedLogisticMixture(
                logits, loc, scale, self.num_bins, self.low, self.high, validate_args=v
            )
        return od.MixtureSameFamily(
            od.Categorical(logits=logits, validate_args=v),
            Logistic(loc, scale, validate_args=v),
            validate_args=v,
        )

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if self.num_bins is not None:
            extra += f", num_bins={self.num_bins}, low={self.low:g}, high={self.high:g}"
        return extra
