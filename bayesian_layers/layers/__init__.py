"""Layers that are distributions over functions. ``from bayesian_layers import layers``."""

from .base import SAMPLING_MODES, BayesianLayer
from .dropout import MCDropout
from .linear import LinearFlipout, LinearLocalReparameterization, LinearReparameterization

__all__ = [
    "SAMPLING_MODES",
    "BayesianLayer",
    "LinearReparameterization",
    "LinearFlipout",
    "LinearLocalReparameterization",
    "MCDropout",
]
