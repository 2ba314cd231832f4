"""What the distributions over ``num_bins`` equally spaced values share: the grid, rounding
onto it, moments and entropy from the bin probabilities, and the log mass of one bin of a
location-scale density with open edge bins (``DiscretizedDistribution``,
``DiscretizedLogisticMixture``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["BinnedMoments", "location_scale_bin_log_mass"]


class BinnedMoments:
    """Mixin for a ``torch.distributions.Distribution`` on the values ``low + i · w``,
    ``w = (high - low) / (num_bins - 1)``, ``i = 0..num_bins - 1``.

    The class sets ``low``, ``high``, ``num_bins`` and defines ``bin_centers``
    ``(num_bins,)`` and ``bin_probs()`` ``(*batch, num_bins)``; the mixin gives
    ``bin_width``, rounding to a bin index, and ``mean``, ``variance`` and ``entropy``
    by enumerating the bins (O(batch · num_bins)).
    """

    low: float
    high: float
    num_bins: int

    @property
    def bin_centers(self) -> Tensor:
        raise NotImplementedError

    def bin_probs(self) -> Tensor:
        raise NotImplementedError

    @property
    def bin_width(self) -> float:
        return (self.high - self.low) / (self.num_bins - 1)

    def _bin_index(self, value: Tensor) -> Tensor:
        """Float index of the nearest bin centre, clamped to ``[0, num_bins - 1]``."""
        return ((value - self.low) / self.bin_width).round().clamp(0, self.num_bins - 1)

    @property
    def mean(self) -> Tensor:
        return (self.bin_probs() * self.bin_centers).sum(-1)

    @property
    def variance(self) -> Tensor:
        p, c = self.bin_probs(), self.bin_centers
        mean = (p * c).sum(-1, keepdim=True)
        return (p * (c - mean).square()).sum(-1)

    def entropy(self) -> Tensor:
        p = self.bin_probs()
        return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1)


def location_scale_bin_log_mass(
    idx: Tensor,
    low: float,
    width: float,
    num_bins: int,
    loc: Tensor,
    scale: Tensor,
    log_cdf: Callable[[Tensor], Tensor],
    log_cdf_diff: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """``log P(bin idx)`` of a symmetric location-scale density with standard log-CDF
    ``log_cdf``; the first and last bins take the tails (``(-∞, c + w/2]``, ``[c - w/2,
    ∞)``). ``log_cdf_diff(a, b) = log(F(b) - F(a))`` computed without cancellation.

    Shape:
        idx: float bin indices, broadcasting with ``loc`` and ``scale``.
    """
    center = low + idx * width
    z_lo = (center - width / 2 - loc) / scale
    z_up = (center + width / 2 - loc) / scale
    return torch.where(
        idx == 0,
        log_cdf(z_up),
        torch.where(idx == num_bins - 1, log_cdf(-z_lo), log_cdf_diff(z_lo, z_up)),
    )
