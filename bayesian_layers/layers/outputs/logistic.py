"""Logistic distributions for the stochastic output layers.

* :class:`Logistic`: the logistic distribution, ``SigmoidTransform().inv`` of a
  uniform then an affine map, with a closed-form, tail-stable ``log_prob``.
* :class:`DiscretizedLogisticMixture`: the PixelCNN++ likelihood (Salimans et al.
  2017) over ``num_bins`` equally spaced values in ``[low, high]``.
* :func:`log_sigmoid_diff`: ``log(σ(b) - σ(a))`` without cancellation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributions as td
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from ._util import Size, log1mexp, no_rsample
from .binned import BinnedMoments, location_scale_bin_log_mass
from .distributions import check_target_shape

__all__ = ["Logistic", "DiscretizedLogisticMixture", "log_sigmoid_diff"]


class Logistic(td.TransformedDistribution):
    """The logistic distribution: ``loc + scale · logit(U)``, ``U ~ Uniform(0, 1)``.

    Built as ``SigmoidTransform().inv`` then ``AffineTransform(loc, scale)`` of a
    uniform, with closed forms for ``log_prob`` (stable in the tails, where the
    transformed uniform density underflows), ``cdf``, ``icdf``, moments and entropy:
    ``log p(x) = -z - 2 softplus(-z) - log(scale)``, ``z = (x - loc) / scale``; mean
    ``loc``; variance ``scale² π² / 3``; entropy ``log(scale) + 2``.

    Example:
        >>> Logistic(torch.tensor([0.0]), torch.tensor([1.0])).log_prob(torch.zeros(1))
        tensor([-1.3863])
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(
        self, loc: Tensor | float, scale: Tensor | float, validate_args: bool | None = None
    ) -> None:
        loc, scale = broadcast_all(loc, scale)
        base = td.Uniform(torch.zeros_like(loc), torch.ones_like(loc), validate_args=False)
        transforms = [td.SigmoidTransform().inv, td.AffineTransform(loc, scale)]
        super().__init__(base, transforms, validate_args=validate_args)

    def expand(self, batch_shape: Size, _instance: Any = None) -> Logistic:  # type: ignore[override]
        new = self._get_checked_instance(Logistic, _instance)
        return super().expand(batch_shape, _instance=new)  # type: ignore[return-value]

    @property
    def loc(self) -> Tensor:
        return self.transforms[-1].loc  # type: ignore[attr-defined,no-any-return]

    @property
    def scale(self) -> Tensor:
        return self.transforms[-1].scale  # type: ignore[attr-defined,no-any-return]

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = (value - self.loc) / self.scale
        return -z - 2 * F.softplus(-z) - self.scale.log()

    def cdf(self, value: Tensor) -> Tensor:
        return torch.sigmoid((value - self.loc) / self.scale)

    def icdf(self, value: Tensor) -> Tensor:
        return self.loc + self.scale * torch.logit(value)

    @property
    def mean(self) -> Tensor:
        return self.loc.expand(self.batch_shape)

    @property
    def mode(self) -> Tensor:
        return self.mean

    @property
    def variance(self) -> Tensor:
        return (self.scale.square() * (math.pi**2 / 3)).expand(self.batch_shape)

    def entropy(self) -> Tensor:
        return (self.scale.log() + 2).expand(self.batch_shape)


def log_sigmoid_diff(a: Tensor, b: Tensor) -> Tensor:
    """``log(sigmoid(b) - sigmoid(a))`` for ``a < b``, without cancellation.

    Uses ``sigmoid(b) - sigmoid(a) = sigmoid(b) · sigmoid(-a) · (1 - exp(a - b))``: three
    terms that are each accurate in log space (``logsigmoid`` and
    :func:`._util.log1mexp`), for any interval, wide or narrow, in either tail (a
    difference of two rounded ``logsigmoid`` values would lose about ``eps / (b - a)`` of
    relative precision: all of it for the narrow bins of a wide logistic).

    Example:
        >>> a = torch.zeros(1)
        >>> round(log_sigmoid_diff(a, a + 2**-20).item(), 4)  # log(σ'(0) 2⁻²⁰) = -log 4 - 20 log 2
        -15.2492
    """
    return F.logsigmoid(b) + F.logsigmoid(-a) + log1mexp(a - b)


class DiscretizedLogisticMixture(BinnedMoments, td.Distribution):
    """A mixture of ``K`` logistics discretized to ``num_bins`` values in ``[low, high]``.

    The values are the bin centres ``c_i = low + i·w``, ``w = (high - low) /
    (num_bins - 1)``; bin ``i`` covers ``[c_i - w/2, c_i + w/2]``, and the edge bins
    take the remaining tail mass: bin 0 covers ``(-∞, c_0 + w/2]``, the last bin
    ``[c_{n-1} - w/2, ∞)`` (PixelCNN++, Salimans et al. 2017). Per component
    ``P(i) = σ((c_i + w/2 - loc)/scale) - σ((c_i - w/2 - loc)/scale)``, computed in
    log space without cancellation; the mixture weights are ``softmax(logits)``.
    Images in ``{0, ..., 255}`` fit as ``num_bins=256`` with ``low=-1, high=1`` after
    ``x = 2v/255 - 1`` (PixelCNN++'s convention), or directly with ``low=0, high=255``.

    ``log_prob`` checks (when validating) that values lie on the grid, to ``w/1000``,
    and refuses targets that broadcast against the batch
    (:func:`.output_distributions.check_target_shape`).
    ``sample`` draws from the continuous mixture and rounds to the nearest bin
    centre, clamped to ``[low, high]``: exactly the bin probabilities. ``mean``,
    ``variance``, ``entropy`` and :meth:`bin_probs` enumerate the bins:
    O(batch · K · num_bins).

    Args:
        logits: mixture logits ``(*batch, K)``.
        loc: component locations ``(*batch, K)``.
        scale: component scales ``(*batch, K)``, positive.
        num_bins: number of values, at least 2.
        low: the lowest value (centre of the first bin).
        high: the highest value (centre of the last bin).
        validate_args: check arguments and values (torch's default when ``None``).

    Example:
        >>> d = DiscretizedLogisticMixture(torch.zeros(2), torch.tensor([-0.5, 0.5]),
        ...                                torch.full((2,), 0.1), num_bins=5)
        >>> d.bin_centers
        tensor([-1.0000, -0.5000,  0.0000,  0.5000,  1.0000])
        >>> round(float(d.bin_probs().sum()), 6)
        1.0
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "loc": constraints.real_vector,
        "scale": constraints.independent(constraints.positive, 1),
    }
    has_rsample = False

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        scale: Tensor,
        num_bins: int = 256,
        low: float = -1.0,
        high: float = 1.0,
        validate_args: bool | None = None,
    ) -> None:
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
            raise ValueError(
                f"DiscretizedLogisticMixture expected `num_bins` to be an int >= 2, "
                f"got {num_bins!r}"
            )
        if not float(low) < float(high):
            raise ValueError(
                f"DiscretizedLogisticMixture expected `low` < `high`, got {low!r} and {high!r}"
            )
        logits, loc, scale = broadcast_all(logits, loc, scale)
        if logits.dim() == 0:
            raise ValueError(
                "DiscretizedLogisticMixture expected parameters of shape (*batch, K), got a scalar"
            )
        self.logits, self.loc, self.scale = logits, loc, scale
        self.num_bins, self.low, self.high = num_bins, float(low), float(high)
        super().__init__(batch_shape=logits.shape[:-1], validate_args=validate_args)

    def expand(  # type: ignore[override]
        self, batch_shape: Size, _instance: Any = None
    ) -> DiscretizedLogisticMixture:
        new = self._get_checked_instance(DiscretizedLogisticMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + self.logits.shape[-1:]
        new.logits, new.loc = self.logits.expand(shape), self.loc.expand(shape)
        new.scale = self.scale.expand(shape)
        new.num_bins, new.low, new.high = self.num_bins, self.low, self.high
        super(DiscretizedLogisticMixture, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.interval(self.low, self.high)

    @property
    def bin_centers(self) -> Tensor:
        """The ``num_bins`` values, ``low + i · bin_width``."""
        i = torch.arange(self.num_bins, dtype=self.loc.dtype, device=self.loc.device)
        return self.low + i * self.bin_width

    def _check_on_grid(self, value: Tensor) -> None:
        if not isinstance(value, Tensor):
            raise TypeError(
                f"DiscretizedLogisticMixture.log_prob expected a Tensor, got {type(value).__name__}"
            )
        w = self.bin_width
        off = (value - (self.low + self._bin_index(value) * w)).abs() > 1e-3 * w
        off = off | (value < self.low - 1e-3 * w) | (value > self.high + 1e-3 * w)
        if off.any():
            raise ValueError(
                f"DiscretizedLogisticMixture.log_prob expected values on the grid "
                f"{self.low} + i * {w:.6g}, i = 0..{self.num_bins - 1}, got "
                f"{value[off].flatten()[0].item()!r}"
            )

    def _component_log_mass(self, value: Tensor) -> Tensor:
        idx = self._bin_index(value).unsqueeze(-1)  # (*sample, *batch, 1)
        grid = (self.low, self.bin_width, self.num_bins)
        return location_scale_bin_log_mass(
            idx, *grid, self.loc, self.scale, F.logsigmoid, log_sigmoid_diff
        )  # (*, K)

    def log_prob(self, value: Tensor) -> Tensor:
        check_target_shape(self, value)
        if self._validate_args:
            self._check_on_grid(value)
        log_weights = self.logits.log_softmax(-1)
        return torch.logsumexp(log_weights + self._component_log_mass(value), dim=-1)

    def bin_probs(self) -> Tensor:
        """Probabilities of the bins, ``(*batch, num_bins)``."""
        centers = self.bin_centers.reshape((-1,) + (1,) * len(self.batch_shape))
        centers = centers.expand((self.num_bins,) + self.batch_shape)
        log_weights = self.logits.log_softmax(-1)
        log_p = torch.logsumexp(log_weights + self._component_log_mass(centers), dim=-1)
        return log_p.movedim(0, -1).exp()

    def sample(self, sample_shape: Size = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            # the logits are checked already (and torch's check fails on an empty batch)
            categorical = td.Categorical(logits=self.logits, validate_args=False)
            k = categorical.sample(torch.Size(sample_shape))
            k = k.unsqueeze(-1)  # (*sample, *batch, 1)
            full = shape + self.logits.shape[-1:]
            loc = self.loc.expand(full).gather(-1, k).squeeze(-1)
            scale = self.scale.expand(full).gather(-1, k).squeeze(-1)
            finfo = torch.finfo(loc.dtype)
            u = torch.rand(shape, dtype=loc.dtype, device=loc.device).clamp(
                finfo.tiny, 1 - finfo.eps
            )
            x = loc + scale * (u.log() - (-u).log1p())
            return self.low + self._bin_index(x) * self.bin_width

    def rsample(self, sample_shape: Size = ()) -> Tensor:
        raise no_rsample(self, "its values are discrete")
