"""The running moments of SWA iterates: :class:`SWAGMoments` (pure accumulation)."""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

__all__ = ["SWAGMoments"]


class SWAGMoments:
    r"""First and second moments of the collected iterates, and their last deviations.

    After ``n`` snapshots ``θ_1, ..., θ_n`` of each named tensor (kept in float64):

    .. math::
        \bar\theta_n = \tfrac1n \textstyle\sum_i \theta_i, \qquad
        \overline{\theta^2}_n = \tfrac1n \textstyle\sum_i \theta_i^2, \qquad
        \Sigma_{\text{diag}} = \max(\overline{\theta^2}_n - \bar\theta_n^2,\ 0)

    updated online (``θ̄_n = θ̄_{n-1} + (θ_n - θ̄_{n-1}) / n``), and the deviations
    ``θ_i - θ̄_i`` from the running mean *including* ``θ_i`` (as the reference code), the
    last ``max_rank`` of them kept.

    Args:
        max_rank: how many deviations to keep (``≥ 1``).

    Attributes:
        num_snapshots: ``n``.
        mean: name -> ``θ̄_n`` (the SWA solution), shape of the tensor.
        sq_mean: name -> ``mean(θ²)``.

    Example:
        >>> m = SWAGMoments(max_rank=2)
        >>> for v in (1.0, 2.0, 6.0):
        ...     m.update({"w": torch.tensor([v])})
        >>> m.mean["w"].item(), m.variance["w"].item(), m.deviations["w"].flatten().tolist()
        (3.0, 4.666666666666666, [0.5, 3.0])
    """

    def __init__(self, max_rank: int) -> None:
        self.max_rank = max_rank
        self.num_snapshots = 0
        self.mean: dict[str, Tensor] = {}
        self.sq_mean: dict[str, Tensor] = {}
        self._deviations: dict[str, deque[Tensor]] = {}

    @torch.no_grad()
    def update(self, tensors: dict[str, Tensor]) -> None:
        """Add one snapshot: ``tensors`` maps names to the current iterate's values
        (the same names and shapes at every call)."""
        self.num_snapshots += 1
        n = self.num_snapshots
        for name, value in tensors.items():
            v = value.detach().to(torch.float64)
            if n == 1:
                self.mean[name] = v.clone()
                self.sq_mean[name] = v.square()
                self._deviations[name] = deque(maxlen=self.max_rank)
            else:
                self.mean[name] += (v - self.mean[name]) / n
                self.sq_mean[name] += (v.square() - self.sq_mean[name]) / n
            self._deviations[name].append(v - self.mean[name])

    @property
    def variance(self) -> dict[str, Tensor]:
        """name -> ``Σ_diag = max(mean(θ²) - θ̄², 0)`` (float64, shape of the tensor)."""
        return {k: (self.sq_mean[k] - self.mean[k].square()).clamp_min(0.0) for k in self.mean}

    @property
    def rank(self) -> int:
        """K, the number of deviations kept: ``min(num_snapshots, max_rank)``."""
        return min(self.num_snapshots, self.max_rank)

    @property
    def deviations(self) -> dict[str, Tensor]:
        """name -> ``D`` of shape ``(K, *shape)``, oldest first (float64)."""
        return {k: torch.stack(list(d)) for k, d in self._deviations.items()}
