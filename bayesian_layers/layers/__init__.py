"""Layers that are distributions over functions. ``from bayesian_layers import layers``.

The package is laid out by family; this module re-exports every public layer.

- uncertainty over weights: :mod:`.linear`, :mod:`.conv`, :mod:`.recurrent`,
  :mod:`.attention`, :mod:`.embedding` on the base :class:`BayesianLayer`
  (:mod:`.base`) and the shared estimator template (:mod:`.estimators`);
- rank-1 factors and BatchEnsemble members: :mod:`.rank1`, :mod:`.batch_ensemble`
  (their template in :mod:`.estimators.rank1`);
- over pre-activations: :mod:`.dropout` (:class:`MCDropout`), :mod:`.variational_dropout`;
- spectral normalisation (SNGP): :mod:`.spectral_norm`;
- over outputs: :mod:`.outputs` (stochastic output layers);
- over the function itself: :mod:`.gp` (Gaussian processes, kernels, means);
- reversible layers: :mod:`.reversible`;
- point processes: :mod:`.point_process`;
- pure compute routines of every estimator: :mod:`.functional`.
"""

import warnings as _warnings

from . import functional as functional
from . import gp as gp
from . import outputs as outputs
from . import reversible as reversible
from .attention import MultiheadAttentionFlipout, MultiheadAttentionReparameterization
from .base import SAMPLING_MODES, BayesianLayer, ParameterSpec
from .batch_ensemble import Conv2dBatchEnsemble, LinearBatchEnsemble
from .bilinear import (
    BilinearFlipout,
    BilinearLocalReparameterization,
    BilinearReparameterization,
)
from .conv import (
    Conv1dFlipout,
    Conv1dReparameterization,
    Conv2dFlipout,
    Conv2dLocalReparameterization,
    Conv2dReparameterization,
    Conv3dFlipout,
    Conv3dReparameterization,
    ConvTranspose1dFlipout,
    ConvTranspose1dReparameterization,
    ConvTranspose2dFlipout,
    ConvTranspose2dReparameterization,
    ConvTranspose3dFlipout,
    ConvTranspose3dReparameterization,
)
from .dropout import MCDropout
from .embedding import EmbeddingReparameterization
from .gp import (
    ConstantKernel,
    ConstantMean,
    ExponentiatedQuadratic,
    GaussianLikelihood,
    GaussianProcess,
    JitterWarning,
    Kernel,
    LinearKernel,
    LinearMean,
    Matern12,
    Matern32,
    Matern52,
    NotPositiveDefiniteError,
    Periodic,
    ProductKernel,
    RandomFourierFeatures,
    RationalQuadratic,
    SNGPHead,
    SparseGaussianProcess,
    StationaryKernel,
    SumKernel,
    WhiteNoise,
    ZeroMean,
    mean_field_logits,
)
from .linear import LinearFlipout, LinearLocalReparameterization, LinearReparameterization
from .outputs import (
    Bernoulli,
    Categorical,
    HeteroscedasticBernoulli,
    HeteroscedasticCategorical,
    Laplace,
    LogNormal,
    MixtureLogistic,
    MixtureNormal,
    MultivariateNormalTriL,
    NegativeBinomial,
    Normal,
    OneHotCategorical,
    Poisson,
    StochasticOutput,
    StudentT,
)
from .point_process import PointSetVariable, PoissonProcess, PoissonProcessDistribution
from .rank1 import Conv2dRank1, LinearRank1
from .recurrent import (
    GRUCellFlipout,
    GRUCellReparameterization,
    LSTMCellFlipout,
    LSTMCellReparameterization,
    LSTMFlipout,
    LSTMReparameterization,
)
from .reversible import (
    MADE,
    ActNorm,
    Discretize,
    DiscretizedDistribution,
    InvertibleConv1x1,
    MaskedAutoregressiveFlow,
    Permute,
    RealNVP,
    Reverse,
    ReversibleLayer,
    reverse_sequential,
    sequential_log_det_jacobian,
)
from .spectral_norm import (
    SpectralNormalization,
    is_spectral_normalized,
    spectral_normalization,
)
from .variational_dropout import (
    Conv2dVariationalDropout,
    LinearVariationalDropout,
    SparsityReport,
    variational_dropout_sparsity,
)

__all__ = [
    "SAMPLING_MODES",
    "BayesianLayer",
    "ParameterSpec",
    "LinearReparameterization",
    "LinearFlipout",
    "LinearLocalReparameterization",
    "BilinearReparameterization",
    "BilinearFlipout",
    "BilinearLocalReparameterization",
    "MCDropout",
    "ReversibleLayer",
    "Discretize",
    "DiscretizedDistribution",
    "Reverse",
    "reverse_sequential",
    "sequential_log_det_jacobian",
    "MADE",
    "RealNVP",
    "MaskedAutoregressiveFlow",
    "ActNorm",
    "Permute",
    "InvertibleConv1x1",
    "MultiheadAttentionReparameterization",
    "MultiheadAttentionFlipout",
    "EmbeddingReparameterization",
    "Conv1dReparameterization",
    "Conv2dReparameterization",
    "Conv3dReparameterization",
    "Conv1dFlipout",
    "Conv2dFlipout",
    "Conv3dFlipout",
    "Conv2dLocalReparameterization",
    "ConvTranspose1dReparameterization",
    "ConvTranspose2dReparameterization",
    "ConvTranspose3dReparameterization",
    "ConvTranspose1dFlipout",
    "ConvTranspose2dFlipout",
    "ConvTranspose3dFlipout",
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
    "HeteroscedasticCategorical",
    "HeteroscedasticBernoulli",
    "LinearRank1",
    "Conv2dRank1",
    "LinearBatchEnsemble",
    "Conv2dBatchEnsemble",
    "LinearVariationalDropout",
    "Conv2dVariationalDropout",
    "SparsityReport",
    "variational_dropout_sparsity",
    "PoissonProcess",
    "PoissonProcessDistribution",
    "PointSetVariable",
    "GaussianProcess",
    "SparseGaussianProcess",
    "GaussianLikelihood",
    "RandomFourierFeatures",
    "SNGPHead",
    "mean_field_logits",
    "SpectralNormalization",
    "spectral_normalization",
    "is_spectral_normalized",
    "NotPositiveDefiniteError",
    "JitterWarning",
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
]

#: names that moved: old name -> (module, new name); reading one warns once per use.
_MOVED = {
    "Zeros": ("gp", "ZeroMean"),
    "Constant": ("gp", "ConstantMean"),
    "MultivariateNormalColumns": ("gp", "MultivariateNormalColumns"),
    "cholesky_with_jitter": ("gp", "cholesky_with_jitter"),
}


def __getattr__(name: str) -> object:
    if name in _MOVED:
        module, new = _MOVED[name]
        _warnings.warn(
            f"bayesian_layers.layers.{name} is deprecated; use "
            f"bayesian_layers.layers.{module}.{new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(globals()[module], new)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
