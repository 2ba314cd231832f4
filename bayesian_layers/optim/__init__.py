"""Optimizers that fit a posterior beside training, and write it into the layers.

:class:`IVON` (Shen et al., 2024) trains the posterior means of the Bayesian layers
(:func:`ivon_parameters`) with its own diagonal Hessian estimate;
:meth:`IVON.write_posterior` (or :func:`write_posterior`) stores
``N(m, 1/(ess·(h + δ)))`` in the layers, after which ``bl.predict``, ``bl.losses`` and
``state_dict`` work as for a model trained with the KL term.
"""

from ._posterior import ivon_parameters, write_posterior
from .ivon import IVON

__all__ = ["IVON", "ivon_parameters", "write_posterior"]
