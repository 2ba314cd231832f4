"""Monte Carlo dropout: uncertainty over pre-activation units (Gal & Ghahramani 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import BayesianLayer

__all__ = ["MCDropout"]


class MCDropout(BayesianLayer):
    """Dropout that stays on at evaluation: each call is a function sample.

    Unlike ``nn.Dropout``, ``model.eval()`` does not switch it off. The sampling
    modes apply: ``"mean"`` is the identity (the usual deterministic
    approximation), ``"frozen"`` keeps one mask over the non-batch dimensions
    (one function: the same units dropped for every example) until
    :meth:`resample`. It has no parameters and no losses (for the Gal &
    Ghahramani objective, use weight decay on the neighbouring layers).

    Args:
        p: probability of an element being zeroed, in ``[0, 1)``.

    Shape:
        - Input: ``(*)``, any shape.
        - Output: same shape as the input.

    Example:
        >>> import torch
        >>> from bayesian_layers import layers
        >>> drop = layers.MCDropout(0.5).eval()
        >>> bool((drop(torch.ones(1000)) == 0).any())
        True
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"MCDropout expected `p` to be a float, got {type(p).__name__}")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"MCDropout expected `p` in [0, 1), got {p}")
        self.p = float(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        x = self.check_input(x, floating=False)  # any floating dtype: no parameters
        if not x.is_floating_point():
            raise TypeError(f"MCDropout expected `input` of a floating-point dtype, got {x.dtype}")
        if self.sampling == "mean" or self.p == 0.0:
            return x
        if self.sampling != "frozen":
            return F.dropout(x, self.p, training=True)
        k = self._check_samples(x)
        shape = (k, 1) + tuple(x.shape[1:]) if k > 1 else tuple(x.shape[1:])
        mask = self._frozen_noise.get("mask")
        if mask is None or mask.shape != shape or mask.dtype != x.dtype:
            keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
            mask = keep / (1 - self.p)
            self._frozen_noise["mask"] = mask
        if k == 1:
            return x * mask
        return (x.reshape((k, -1) + tuple(x.shape[1:])) * mask).reshape(x.shape)
