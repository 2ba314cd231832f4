"""Monte Carlo dropout: uncertainty over pre-activation units (Gal & Ghahramani 2016)."""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import compiled_rng
from .base import BayesianLayer

__all__ = ["MCDropout"]


class MCDropout(BayesianLayer):
    """Dropout that stays on at evaluation: each call is a function sample.

    Unlike ``nn.Dropout``, ``model.eval()`` does not switch it off. The sampling
    modes apply: ``"mean"`` is the identity (the usual deterministic
    approximation), ``"frozen"`` keeps one mask over the non-batch dimensions
    (one function: the same units dropped for every example) until
    :meth:`resample`. With a noise hook registered, a sampled mask's uniforms come from
    ``noise("mask", shape, like, kind="uniform")`` (kept where ``u >= p``). It has no
    parameters and no losses (for the Gal & Ghahramani objective, use weight decay on
    the neighbouring layers).

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
        if isinstance(p, bool) or not isinstance(p, Real):
            raise TypeError(f"MCDropout expected `p` to be a float, got {type(p).__name__}")
        rate = float(p)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"MCDropout expected `p` in [0, 1), got {p}")
        self.p: float = rate

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        x = self.check_input(x, floating=False)  # any floating dtype: no parameters
        if not x.is_floating_point():
            raise TypeError(f"MCDropout expected `input` of a floating-point dtype, got {x.dtype}")
        if self.sampling == "mean" or self.p == 0.0:
            return x
        if self.sampling != "frozen":
            if not self.has_noise_hooks:  # the fused kernel; same law as the mask below
                if compiled_rng.routes(x):  # one float mask by the eager generator (CPU)
                    return x * compiled_rng.dropout_mask(x, self.p)
                return F.dropout(x, self.p, training=True)
            # a hook sees (or sets) the mask's uniforms: kept where u >= p
            # uniforms in float32 at least: a bf16 uniform is too coarse to compare with p
            like = (
                x
                if x.dtype in (torch.float32, torch.float64)
                else x.new_empty((), dtype=torch.float32)
            )
            u = self.noise("mask", x.shape, like, kind="uniform")
            return x * (u >= self.p).to(x.dtype) / (1 - self.p)
        k = self.check_samples(x)
        shape = (k, 1) + tuple(x.shape[1:]) if k > 1 else tuple(x.shape[1:])
        seed = self.frozen_state.get("mask_seed")
        if seed is None:  # frozen state dropped by hand: draw it here
            self.draw_frozen()
            seed = self.frozen_state["mask_seed"]
        keep = _hashed_uniform(shape, seed.to(x.device)) >= self.p  # type: ignore[union-attr]
        mask = keep.to(x.dtype) / (1 - self.p)
        if k == 1:
            return x * mask
        return (x.reshape((k, -1) + tuple(x.shape[1:])) * mask).reshape(x.shape)

    def draw_frozen(self) -> None:
        """The frozen mask is a function of one random seed and the mask's shape, drawn
        when ``"frozen"`` mode starts or at :meth:`resample`: inputs of any shape get a
        mask, and a compiled frozen call only reads the seed (one graph)."""
        super().draw_frozen()
        if self.frozen_state.get("mask_seed") is None:
            self.frozen_state["mask_seed"] = torch.randint(0, 2**31 - 1, (), dtype=torch.int64)


_MASK32 = 0xFFFFFFFF


def _mul32(h: Tensor, c: int) -> Tensor:
    """``h * c mod 2³²`` for ``0 <= h < 2³²`` without int64 overflow (16-bit halves)."""
    low, high = c & 0xFFFF, c >> 16
    return (h * low + (((h * high) & 0xFFFF) << 16)) & _MASK32


def _hashed_uniform(shape: tuple[int, ...], seed: Tensor) -> Tensor:
    """Uniforms in ``[0, 1)`` of ``shape``: a 32-bit integer hash (murmur3's finaliser)
    of each element's index offset by ``seed``, its top 24 bits scaled to ``[0, 1)``.

    Shape: ``seed`` is a 0-d int64 tensor; the result has ``shape`` (float32).
    """
    index = torch.arange(math.prod(shape), device=seed.device, dtype=torch.int64)
    h = (_mul32(index & _MASK32, 0x9E3779B1) + seed) & _MASK32  # spread the indices
    h = _mul32(h ^ (h >> 16), 0x85EBCA6B)
    h = _mul32(h ^ (h >> 13), 0xC2B2AE35)
    h = h ^ (h >> 16)
    return ((h >> 8).to(torch.float32) * 2.0**-24).view(shape)
