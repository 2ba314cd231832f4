"""Edward2-style random-variable constructors, one per ``torch.distributions`` class.

Each constructor takes the torch distribution's own arguments (same names, same
order, same defaults, ``validate_args`` included) and returns a
:class:`~bayesian_layers.RandomVariable` holding that distribution and one value
of it. Three keyword-only arguments are common to all of them:

- ``name``: a name for the variable (used by tracing and in the ``repr``);
- ``value``: an observed or fixed value, of shape
  ``sample_shape + batch_shape + event_shape``; drawn (``rsample`` when the
  distribution has it) when omitted;
- ``sample_shape``: leading shape of the drawn value.

A random variable passed as a parameter acts as its value, so variables build
hierarchical models directly: ``Normal(loc=Normal(0.0, 1.0), scale=0.1)``. A random
variable passed where a *distribution* is expected (``base_distribution`` of
:func:`Independent` and :func:`TransformedDistribution`, the two distributions of
:func:`MixtureSameFamily`) stands for its distribution.

Nine names are also output layers in :mod:`bayesian_layers.layers`: ``Normal``,
``LogNormal``, ``StudentT``, ``Laplace``, ``Bernoulli``, ``Categorical``,
``OneHotCategorical``, ``Poisson`` and ``NegativeBinomial``. ``bl.Normal(loc, scale)``
is a random variable built from parameters; ``bl.layers.Normal(units)`` is a layer
that maps features to those parameters and returns such a random variable.

The map of this package:

- :mod:`.variable`: :class:`~bayesian_layers.RandomVariable`, a distribution paired
  with one value that acts as a tensor;
- :mod:`.continuous`: on the real line or an interval (``Normal``, ``Beta``, ...);
- :mod:`.positive`: on the positive half-line (``Gamma``, ``LogNormal``, ...);
- :mod:`.discrete`: counts and classes, and their relaxations (``Bernoulli``, ...);
- :mod:`.multivariate`: random vectors and matrices (``MultivariateNormal``, ...);
- :mod:`.composite`: built from other distributions (``Independent``, ...).
"""

from __future__ import annotations

from .composite import Independent, MixtureSameFamily, TransformedDistribution
from .continuous import (
    Beta,
    Cauchy,
    ContinuousBernoulli,
    Deterministic,
    Gumbel,
    Kumaraswamy,
    Laplace,
    Normal,
    StudentT,
    Uniform,
    VonMises,
)
from .discrete import (
    Bernoulli,
    Binomial,
    Categorical,
    Geometric,
    Multinomial,
    NegativeBinomial,
    OneHotCategorical,
    OneHotCategoricalStraightThrough,
    Poisson,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
)
from .multivariate import (
    Dirichlet,
    LKJCholesky,
    LogisticNormal,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Wishart,
)
from .positive import (
    Chi2,
    Exponential,
    FisherSnedecor,
    Gamma,
    GeneralizedPareto,
    HalfCauchy,
    HalfNormal,
    InverseGamma,
    LogNormal,
    Pareto,
    Weibull,
)
from .variable import RandomVariable as RandomVariable

__all__ = [
    "Bernoulli",
    "Beta",
    "Binomial",
    "Categorical",
    "Cauchy",
    "Chi2",
    "ContinuousBernoulli",
    "Deterministic",
    "Dirichlet",
    "Exponential",
    "FisherSnedecor",
    "Gamma",
    "GeneralizedPareto",
    "Geometric",
    "Gumbel",
    "HalfCauchy",
    "HalfNormal",
    "Independent",
    "InverseGamma",
    "Kumaraswamy",
    "LKJCholesky",
    "Laplace",
    "LogNormal",
    "LogisticNormal",
    "LowRankMultivariateNormal",
    "MixtureSameFamily",
    "Multinomial",
    "MultivariateNormal",
    "NegativeBinomial",
    "Normal",
    "OneHotCategorical",
    "OneHotCategoricalStraightThrough",
    "Pareto",
    "Poisson",
    "RelaxedBernoulli",
    "RelaxedOneHotCategorical",
    "StudentT",
    "TransformedDistribution",
    "Uniform",
    "VonMises",
    "Weibull",
    "Wishart",
]

# The constructors' public home is this module (their repr, pickles, the API docs);
# the files that define them are private to the package.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
