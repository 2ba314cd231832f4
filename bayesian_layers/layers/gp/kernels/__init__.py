"""Covariance functions ("kernels": in this package the word means nothing else).

- :mod:`._base`: :class:`Kernel` (the base class: ``k(x1, x2)``, ``diag``, and the
  algebra ``k1 + k2``, ``k1 * k2``, ``c * k``), :class:`SumKernel`,
  :class:`ProductKernel` and :class:`ConstantKernel`.
- :mod:`.stationary`: :class:`StationaryKernel` and its families
  (:class:`ExponentiatedQuadratic`, :class:`Matern12`, :class:`Matern32`,
  :class:`Matern52`, :class:`RationalQuadratic`) and :class:`Periodic`.
- :mod:`.dot_product`: :class:`LinearKernel`.
- :mod:`.white_noise`: :class:`WhiteNoise`.
- :mod:`._distance`: the distance math (:func:`squared_distance`,
  :func:`exponentiated_quadratic`, :func:`distance`) with closed-form backwards.
"""

from ._base import ConstantKernel, Kernel, ProductKernel, SumKernel
from ._distance import distance, exponentiated_quadratic, squared_distance
from .dot_product import LinearKernel
from .stationary import (
    ExponentiatedQuadratic,
    Matern12,
    Matern32,
    Matern52,
    Periodic,
    RationalQuadratic,
    StationaryKernel,
)
from .white_noise import WhiteNoise

__all__ = [
    "Kernel",
    "SumKernel",
    "ProductKernel",
    "StationaryKernel",
    "ExponentiatedQuadratic",
    "Matern12",
    "Matern32",
    "Matern52",
    "RationalQuadratic",
    "Periodic",
    "LinearKernel",
    "WhiteNoise",
    "ConstantKernel",
    "squared_distance",
    "exponentiated_quadratic",
    "distance",
]
