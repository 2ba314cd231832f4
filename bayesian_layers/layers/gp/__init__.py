"""Gaussian-process layers: uncertainty over the function itself.

- :mod:`.exact`: :class:`GaussianProcess`, the exact GP posterior (Cholesky or
  conjugate gradients); its conditioning data and posterior math are in the private
  base class of :mod:`._exact_posterior`.
- :mod:`.sparse`: :class:`SparseGaussianProcess`, whitened SVGP (stacks into deep GPs);
  :mod:`.sparse_variational` holds its pure math (posterior moments, KL, expected
  log-likelihood), :mod:`.inducing` its first-call initialisation and
  :mod:`.pathwise` the draws of its frozen functions.
- :mod:`.random_features`: :class:`RandomFourierFeatures` (variational or Laplace);
  :mod:`.spectral` draws frequencies from a kernel's spectral density.
- :mod:`.kernels`: covariance functions (the only "kernels" in the package) and
  their algebra (``+``, ``*``).
- :mod:`.means`: mean functions :class:`ZeroMean`, :class:`ConstantMean`,
  :class:`LinearMean`.
- :mod:`.likelihood`: :class:`GaussianLikelihood`.
- :mod:`.distribution`: :class:`MultivariateNormalColumns`, the GP layers' output.
- :mod:`.linalg`, :mod:`.iterative`: Cholesky with jitter, marginal likelihoods,
  pivoted Cholesky and conjugate gradients.
"""

from .distribution import MultivariateNormalColumns
from .exact import GaussianProcess
from .kernels import (
    ConstantKernel,
    ExponentiatedQuadratic,
    Kernel,
    LinearKernel,
    Matern12,
    Matern32,
    Matern52,
    Periodic,
    ProductKernel,
    RationalQuadratic,
    StationaryKernel,
    SumKernel,
    WhiteNoise,
)
from .likelihood import GaussianLikelihood
from .linalg import JitterWarning, NotPositiveDefiniteError, cholesky_with_jitter
from .means import ConstantMean, LinearMean, ZeroMean
from .random_features import RandomFourierFeatures
from .sngp_head import SNGPHead, mean_field_logits
from .sparse import SparseGaussianProcess

__all__ = [
    "GaussianProcess",
    "SparseGaussianProcess",
    "RandomFourierFeatures",
    "SNGPHead",
    "mean_field_logits",
    "GaussianLikelihood",
    "MultivariateNormalColumns",
    "Kernel",
    "SumKernel",
    "ProductKernel",
    "StationaryKernel",
    "ExponentiatedQuadratic",
    "Matern12",
    "Matern32",
    "Matern52",
    "RationalQuadratic",
    "Periodic",
    "LinearKernel",
    "WhiteNoise",
    "ConstantKernel",
    "ZeroMean",
    "ConstantMean",
    "LinearMean",
    "cholesky_with_jitter",
    "NotPositiveDefiniteError",
    "JitterWarning",
]
