"""Post-hoc Laplace (Daxberger et al. 2021, "Laplace Redux"), written into the layers.

``bl.laplace.fit(model, loader, likelihood=..., hessian="diag"|"kron"|"full", subset=...)``
computes the generalised Gauss–Newton curvature around the trained weights
(:mod:`.curvature`) and writes ``N(θ*, (H + τ I)⁻¹)`` into the Bayesian layers
(:mod:`.posterior`); :mod:`.marglik` gives the evidence and the prior precision that
maximises it. Sampling predictions go through :func:`bayesian_layers.predict`; the
linearised predictive (probit for classification) is :func:`glm_predictive`, and
:func:`linearized_samples` draws function samples of the linearised network by
Jacobian-vector products (no Jacobian: a language model's logits at every position).

What is fitted (``subset="all"``): linear and 2-d convolution layers (exact diagonal by
hooks, or KFAC), recurrent layers (``nn.LSTM``, ``nn.LSTMCell``, ``nn.GRUCell``),
multi-head attention and embeddings (their exact diagonal from per-example Jacobians; a
Kronecker fit keeps them diagonal), torch's or already Bayesian; BatchNorm, LayerNorm and
other modules stay point estimates, run in eval mode. ``hessian="full"``: the joint
``P × P`` GGN of all of them (small models), stored as each tensor's rows of a factor of
the covariance (:class:`~bayesian_layers.initializers.full_normal.FullNormal`) with one
noise shared by the layers, so draws, the evidence and the GLM predictive are the joint
posterior's. ``subset="last_layer"``: the last linear layer.

The map: ``curvature`` (GGN diagonal and Kronecker factors by hooks), ``_per_example``
(per-example Jacobians: the generic layers and the full GGN), ``_layers`` (which modules,
which parameters), ``posterior`` (:func:`fit`, :func:`restore`, writing the posterior),
``_joint`` (the shared noise of a full posterior), ``marglik`` (evidence, prior
precision), ``predictive`` (the GLM predictive), ``linearized`` (samples of the
linearised network).
"""

from .curvature import Curvature, LayerCurvature, compute_curvature, supported_layers
from .linearized import linearized_samples
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
    "linearized_samples",
    "supported_layers",
    "Curvature",
    "LayerCurvature",
]
