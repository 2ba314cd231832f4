"""SWAG: a Gaussian posterior from the SGD iterates (Maddox et al., 2019, "A Simple
Baseline for Bayesian Uncertainty in Deep Learning"), written into the Bayesian layers.

:func:`collect` runs SGD from the trained weights (the layers' means, in
``bl.posterior_mean`` mode), collects the iterates' moments and last deviations
(:class:`SWAGMoments`) and writes ``N(θ_SWA, ½ (Σ_diag + D Dᵀ / (K - 1)))`` into the
layers: ``loc``/``rho`` of their normal posteriors plus ``D`` in the
:class:`~bayesian_layers.initializers.swag_normal.SWAGNormal` family. Then ``bl.predict``,
sampling modes and ``state_dict`` work as for any posterior; :func:`joint_low_rank`
shares the low-rank noise across layers as the paper does, :func:`update_bn` and
:func:`predict` refresh BatchNorm statistics per draw, :func:`prepare` readies a fresh
model to load a saved SWAG ``state_dict``.

The map: :mod:`._moments` (the running moments), :mod:`._targets` (which tensors are
trained), :mod:`._collect` (the SGD run), :mod:`._write` (into the layers),
:mod:`._predict` (BatchNorm, joint noise, predictive).
"""

from ._collect import collect
from ._moments import SWAGMoments
from ._predict import joint_low_rank, predict, update_bn
from ._write import prepare, write_posterior

__all__ = [
    "SWAGMoments",
    "collect",
    "joint_low_rank",
    "predict",
    "prepare",
    "update_bn",
    "write_posterior",
]
