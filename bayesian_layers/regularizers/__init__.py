"""Penalties on weight random variables (the KL term of the ELBO).

A regularizer is a module called on a weight :class:`~bayesian_layers.RandomVariable`
(or a distribution) that returns a scalar. Prior hyperparameters are buffers, so
they live in ``state_dict()``. Every regularizer multiplies its result by
``scale_factor``.

Which value a Monte Carlo regularizer uses: the random variable's value, which a
layer sets to its most recent whole-weight draw (or a fresh draw for estimators
that never draw whole weights). Closed-form ones ignore the value.

The map: :mod:`.base` (:class:`Regularizer`), :mod:`.kl` (the KL divergences),
:mod:`._fused` (the fused normal KL); below, the aliases layers accept as
``weight_regularizer="..."``.
"""

from __future__ import annotations

from ._fused import softplus_normal_kl_scalar_prior as softplus_normal_kl_scalar_prior
from .base import Regularizer
from .base import monte_carlo_kl as monte_carlo_kl
from .empirical_bayes import EmpiricalBayesNormalKLDivergence
from .hierarchical import HierarchicalNormalKLDivergence, LearnedScaleNormalKLDivergence
from .kl import (
    HalfCauchyKLDivergence,
    LogUniformKLDivergence,
    MonteCarloKLDivergence,
    NormalKLDivergence,
)
from .noise_contrastive import NoiseContrastivePrior

__all__ = [
    "Regularizer",
    "NormalKLDivergence",
    "LogUniformKLDivergence",
    "HalfCauchyKLDivergence",
    "MonteCarloKLDivergence",
    "LearnedScaleNormalKLDivergence",
    "EmpiricalBayesNormalKLDivergence",
    "HierarchicalNormalKLDivergence",
    "NoiseContrastivePrior",
    "get_regularizer",
    "REGULARIZERS",
]


#: The string aliases a layer's ``weight_regularizer=`` / ``bias_regularizer=`` accept:
#: alias -> regularizer class.
REGULARIZERS: dict[str, type[Regularizer]] = {
    "normal_kl_divergence": NormalKLDivergence,
    "log_uniform_kl_divergence": LogUniformKLDivergence,
    "half_cauchy_kl_divergence": HalfCauchyKLDivergence,
    "learned_scale_normal_kl_divergence": LearnedScaleNormalKLDivergence,
    "empirical_bayes_normal_kl_divergence": EmpiricalBayesNormalKLDivergence,
    "hierarchical_normal_kl_divergence": HierarchicalNormalKLDivergence,
}


def get_regularizer(spec: str | Regularizer | None, *, owner: str = "layer") -> Regularizer | None:
    """Resolve a string alias, a regularizer class or instance, or ``None``.

    Raises:
        ValueError: unknown alias (the message lists the known ones).
        TypeError: anything else.
    """
    if spec is None or isinstance(spec, Regularizer):
        return spec
    if isinstance(spec, type) and issubclass(spec, Regularizer):
        return spec()
    if isinstance(spec, str):
        cls = REGULARIZERS.get(spec)
        if cls is None:
            raise ValueError(
                f"{owner}: unknown regularizer {spec!r}; expected one of {sorted(REGULARIZERS)}, "
                "None, or a Regularizer instance"
            )
        return cls()
    raise TypeError(
        f"{owner} expected a regularizer name, Regularizer or None, got {type(spec).__name__}"
    )
