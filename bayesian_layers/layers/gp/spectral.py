"""Spectral sampling of stationary covariance functions: random Fourier features.

Bochner's theorem writes a stationary kernel as ``k(x, x') = amplitude² · E_ω[cos(ωᵀ(x -
x')/ℓ)]`` with ``ω`` drawn from its spectral density; ``M`` fixed draws give features
``φ(x) = amplitude · √(2/M) · cos(ωᵀ x/ℓ + b)`` with ``E[φ(x)ᵀ φ(x')] = k(x, x')``
(Rahimi & Recht 2007). Used by :class:`~.random_features.RandomFourierFeatures` and by
the frozen (pathwise) function draws of :class:`~.sparse.SparseGaussianProcess`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .kernels import (
    ExponentiatedQuadratic,
    Matern12,
    Matern32,
    Matern52,
    RationalQuadratic,
    StationaryKernel,
)

__all__ = [
    "SPECTRAL_KERNELS",
    "sample_spectral_frequencies",
    "fourier_features",
    "has_spectral_sampler",
    "draw_fourier_prior",
]

#: Kernels with a spectral sampler, by the name ``RandomFourierFeatures`` accepts.
SPECTRAL_KERNELS: dict[str, type[StationaryKernel]] = {
    "exponentiated_quadratic": ExponentiatedQuadratic,
    "matern12": Matern12,
    "matern32": Matern32,
    "matern52": Matern52,
    "rational_quadratic": RationalQuadratic,
}
_MATERN_NU = {Matern12: 0.5, Matern32: 1.5, Matern52: 2.5}


def has_spectral_sampler(kernel: object) -> bool:
    """Whether :func:`sample_spectral_frequencies` can draw frequencies for ``kernel``."""
    return type(kernel) in SPECTRAL_KERNELS.values()


def fourier_features(
    x: Tensor, frequencies: Tensor, phases: Tensor, amplitude: Tensor, length_scale: Tensor
) -> Tensor:
    """``φ(x) = amplitude · √(2/M) · cos((x/ℓ) ω + b)`` with ``E[φ(x)ᵀ φ(x')] = k(x, x')``.

    Shape:
        x: ``(*, N, D)``; frequencies ``ω``: ``(*, D, M)`` (unit length scale);
        phases ``b``: ``(*, 1, M)`` or ``(M,)``; amplitude: scalar; length_scale: ``()``
        or ``(D,)``; returns ``(*, N, M)``.
    """
    proj = (x / length_scale) @ frequencies + phases  # (*, N, M)
    return amplitude * math.sqrt(2.0 / frequencies.shape[-1]) * torch.cos(proj)


def draw_fourier_prior(
    kernel: StationaryKernel,
    num_functions: int,
    in_features: int,
    num_features: int,
    units: int,
    **factory: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    """Random features of ``K = num_functions`` independent prior draws ``f₀ ~ GP(0, k)``.

    Returns frequencies ``(K, D, L)``, phases ``(K, 1, L)`` and weights ``(K, L, U)``
    (``L = num_features``) for ``f₀(x) = φ(x) w`` with :func:`fourier_features`; the
    frequencies are drawn at unit length scale, so the kernel's current ``amplitude``
    and ``length_scale`` apply at evaluation. Averaged over the draw, ``f₀`` has mean 0 and
    covariance exactly ``k`` for any ``L``; it is Gaussian as ``L`` grows.
    """
    k, d, m = num_functions, in_features, num_features
    freq = sample_spectral_frequencies(kernel, d, k * m, **factory)  # independent columns
    phases = 2 * math.pi * torch.rand(k, 1, m, **factory)
    return freq.reshape(d, k, m).transpose(0, 1), phases, torch.randn(k, m, units, **factory)


def sample_spectral_frequencies(
    kernel: StationaryKernel, in_features: int, num_features: int, **factory
) -> Tensor:
    """``(in_features, num_features)`` draws from the unit-length-scale spectral density.

    Exponentiated quadratic: ``N(0, I)``. Matérn-ν: multivariate Student-t with
    ``2ν`` degrees of freedom, ``z · √(2ν / g)`` with ``g ~ χ²(2ν)``. Rational
    quadratic (shape ``α``, read now): ``z · √τ`` with ``τ ~ Gamma(α, rate α)``, the
    scale mixture of squared exponentials it is.
    """
    z = torch.randn(in_features, num_features, **factory)
    kind = type(kernel)
    if kind is ExponentiatedQuadratic:
        return z
    if kind in _MATERN_NU:
        nu = _MATERN_NU[kind]
        g = torch.distributions.Chi2(torch.tensor(2 * nu, **factory)).sample((num_features,))
        return z * torch.sqrt(2 * nu / g)
    if kind is RationalQuadratic:
        alpha = kernel.alpha.detach().to(**factory)  # type: ignore[operator]
        tau = torch.distributions.Gamma(alpha, alpha).sample((num_features,))
        return z * tau.sqrt()
    names = ", ".join(k.__name__ for k in SPECTRAL_KERNELS.values())
    raise TypeError(f"RandomFourierFeatures supports {names} kernels, got {kind.__name__}")
