"""Layers that are distributions over functions. ``from bayesian_layers import layers``."""

from .base import SAMPLING_MODES, BayesianLayer
from .dropout import MCDropout
from .linear import LinearFlipout, LinearLocalReparameterization, LinearReparameterization
from .mixtures import MixtureLogistic, MixtureNormal
from .recurrent import (
    GRUCellFlipout,
    GRUCellReparameterization,
    LSTMCellFlipout,
    LSTMCellReparameterization,
    LSTMFlipout,
    LSTMReparameterization,
)
from .stochastic_output import (
    Bernoulli,
    Categorical,
    Laplace,
    LogNormal,
    MultivariateNormalTriL,
    NegativeBinomial,
    Normal,
    OneHotCategorical,
    Poisson,
    StochasticOutput,
    StudentT,
)

__all__ = [
    "SAMPLING_MODES",
    "BayesianLayer",
    "LinearReparameterization",
    "LinearFlipout",
    "LinearLocalReparameterization",
    "MCDropout",
    "LSTMCellReparameterization",
    "LSTMCellFlipout",
    "GRUCellReparameterization",
    "GRUCellFlipout",
    "LSTMReparameterization",
    "LSTMFlipout",
    "StochasticOutput",
    "Normal",
    "LogNormal",
    "StudentT",
    "Laplace",
    "Bernoulli",
    "Categorical",
    "OneHotCategorical",
    "Poisson",
    "NegativeBinomial",
    "MixtureNormal",
    "MixtureLogistic",
    "MultivariateNormalTriL",
]
