"""Reversible layers: bijections that carry a distribution from input to output.

- :mod:`.base`: :class:`ReversibleLayer` (``forward``, ``reverse``,
  ``log_det_jacobian``), :class:`Reverse`, and the helpers to compose them.
- :mod:`.flows`: :class:`RealNVP`, :class:`MaskedAutoregressiveFlow`,
  :class:`Permute`, :class:`InvertibleConv1x1`; :mod:`.made` (:class:`MADE`) and
  :mod:`.actnorm` (:class:`ActNorm`) are their building blocks.
- :mod:`.discretize`: :class:`Discretize`, the flow for discrete data.
"""

from .actnorm import ActNorm
from .base import Reverse, ReversibleLayer, reverse_sequential, sequential_log_det_jacobian
from .discretize import Discretize, DiscretizedDistribution
from .flows import InvertibleConv1x1, MaskedAutoregressiveFlow, Permute, RealNVP
from .made import MADE

__all__ = [
    "ReversibleLayer",
    "Reverse",
    "reverse_sequential",
    "sequential_log_det_jacobian",
    "MADE",
    "RealNVP",
    "MaskedAutoregressiveFlow",
    "ActNorm",
    "Permute",
    "InvertibleConv1x1",
    "Discretize",
    "DiscretizedDistribution",
]
