"""Frozen function draws of :class:`~.sparse.SparseGaussianProcess` by pathwise
conditioning (Wilson et al. 2020): the standard draws a frozen function keeps until
``resample``, and the prior draws ``f₀`` (random Fourier features of the kernel) they
define. The conditioning itself is
:func:`~bayesian_layers.layers.gp.sparse_variational.pathwise_conditional`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor

from .kernels import StationaryKernel
from .spectral import draw_fourier_prior, fourier_features, has_spectral_sampler

__all__ = ["frozen_draws", "prior_paths"]


def frozen_draws(
    store: dict[str, Any],
    kernel: object,
    num_functions: int,
    units: int,
    num_inducing: int,
    num_features: int,
    like: Tensor,
    noise: Callable[[str, torch.Size], Tensor] | None = None,
) -> dict[str, Tensor]:
    """The standard draws of ``K = num_functions`` frozen functions, kept in ``store``
    (made on first use, or again when ``K``, dtype or device changed): ``"u"``
    ``(K, U, M)`` for ``q(u)``, the prior's random features (``"freq"`` ``(K, D, L)``,
    ``"phase"`` ``(K, 1, L)``, ``"weight"`` ``(K, L, U)``; only when ``kernel`` has a
    spectral sampler) and ``"jitter"`` ``(K, M, U)``. ``like``: ``(M, D)`` inducing
    inputs (dtype, device and ``D``). ``noise(name, shape)`` makes the standard normal
    ``"u"`` and ``"jitter"`` (a layer passes its :meth:`~.base.BayesianLayer.noise`);
    default ``torch.randn``. None depends on the batch."""
    k = num_functions
    u = store.get("u")
    if u is not None and u.shape[0] == k and u.dtype == like.dtype and u.device == like.device:
        return store
    factory: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
    store.clear()
    if noise is None:

        def noise(name: str, shape: torch.Size) -> Tensor:
            return torch.randn(shape, **factory)

    store["u"] = noise("u", torch.Size((k, units, num_inducing)))
    store["jitter"] = noise("jitter", torch.Size((k, num_inducing, units)))
    if has_spectral_sampler(kernel):
        stationary = cast(StationaryKernel, kernel)  # every spectral kernel is one
        d = like.shape[-1]
        prior = draw_fourier_prior(stationary, k, d, num_features, units, **factory)
        store.update(zip(("freq", "phase", "weight"), prior, strict=True))
    return store


def prior_paths(
    kernel: object, x: Tensor, z: Tensor, draws: dict[str, Tensor], units: int
) -> tuple[Tensor, Tensor]:
    """Prior function draws ``f₀`` at ``x`` ``(K, B, D)`` and ``z`` ``(M, D)``: ``(K, B, U)``,
    ``(K, M, U)``; zeros when the draws hold no random features (no spectral sampler)."""
    k = x.shape[0]
    if "freq" not in draws:
        return x.new_zeros(k, x.shape[1], units), z.new_zeros(k, z.shape[0], units)
    freq, phase = draws["freq"], draws["phase"]
    amp, ls = kernel.amplitude, kernel.length_scale  # type: ignore[attr-defined]
    phi = fourier_features(torch.cat([z.expand(k, *z.shape), x], 1), freq, phase, amp, ls)
    paths = phi @ draws["weight"]  # (K, M + B, U)
    return paths[:, z.shape[0] :], paths[:, : z.shape[0]]
