"""Post-hoc Laplace (Daxberger et al. 2021, "Laplace Redux"), written into the layers.

``bl.laplace.fit(model, loader, likelihood=..., hessian="diag"|"kron", subset=...)``
computes the generalised Gauss–Newton curvature per layer around the trained weights
(:mod:`.curvature`), writes ``N(θ*, (H + τ I)⁻¹)`` into the Bayesian layers
(:mod:`.posterior`); :mod:`.marglik` gives the evidence and the prior precision that
maximises it. Sampling predictions go through :func:`bayesian_layers.predict`; the
linearised predictive (probit for classification) is :func:`glm_predictive`.

The map: ``curvature`` (GGN diagonal and Kronecker factors by hooks), ``posterior``
(:func:`fit`, writing the posterior), ``marglik`` (evidence, prior precision),
``predictive`` (the GLM
predictive).
"""

from .curvature import Curvature, LayerCurvature, compute_curvature, supported_layers
from .marglik import log_marginal_likelihood, optimize_prior_precision
from .posterior import fit, restore, write_posterior
from .predictive import glm_predictive

__all__ = [
    "fit",
    "restore",
    "compute_curvature",
    "write_posterior",
    "log_marginal_likelihood",
    "optimize_prior_precision",
    "glm_predictive",
    "supported_layers",
    "Curvature",
    "LayerCurvature",
]
