"""Stochastic output layers: a layer that returns a random variable over its output.

- :mod:`.base`: :class:`StochasticOutput`, the template (named parameters from the
  input, a distribution, ``log_prob`` on targets).
- :mod:`.stochastic`: the standard families (:class:`Normal`, :class:`Bernoulli`,
  :class:`Categorical`, ...). Each has a namesake in ``bayesian_layers``: there,
  ``bl.Normal(loc, scale)`` *is* a random variable built from parameters; here,
  ``layers.Normal(units)`` is a layer that *returns* one from its input.
- :mod:`.mixtures`: :class:`MixtureNormal`, :class:`MixtureLogistic`.
- :mod:`.distributions`, :mod:`.logistic`, :mod:`.binned`: the distributions these
  layers return (event-shaped wrappers of ``torch.distributions``, the logistic and
  discretized logistic mixture, binned moments).
"""

from .base import StochasticOutput
from .heteroscedastic import HeteroscedasticBernoulli, HeteroscedasticCategorical
from .mixtures import MixtureLogistic, MixtureNormal
from .stochastic import (
    Bernoulli,
    Categorical,
    Laplace,
    LogNormal,
    MultivariateNormalTriL,
    NegativeBinomial,
    Normal,
    OneHotCategorical,
    Poisson,
    StudentT,
)

__all__ = [
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
    "HeteroscedasticCategorical",
    "HeteroscedasticBernoulli",
]
