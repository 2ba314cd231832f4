"""Layers that are distributions over functions. ``from bayesian_layers import layers``."""

from .attention import MultiheadAttentionFlipout, MultiheadAttentionReparameterization
from .base import SAMPLING_MODES, BayesianLayer
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
from .discretize import Discretize, DiscretizedDistribution
from .dropout import MCDropout
from .embedding import EmbeddingReparameterization
from .flows import MADE, ActNorm, InvertibleConv1x1, MaskedAutoregressiveFlow, Permute, RealNVP
from .gaussian_likelihood import GaussianLikelihood
from .gaussian_process import GaussianProcess
from .gp_distribution import MultivariateNormalColumns
from .gp_numerics import JitterWarning, NotPositiveDefiniteError, cholesky_with_jitter
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
from .linear import LinearFlipout, LinearLocalReparameterization, LinearReparameterization
from .mean_functions import Constant, LinearMean, Zeros
from .mixtures import MixtureLogistic, MixtureNormal
from .point_process import PointSetVariable, PoissonProcess, PoissonProcessDistribution
from .random_fourier_features import RandomFourierFeatures
from .recurrent import (
    GRUCellFlipout,
    GRUCellReparameterization,
    LSTMCellFlipout,
    LSTMCellReparameterization,
    LSTMFlipout,
    LSTMReparameterization,
)
from .reversible import Reverse, ReversibleLayer, reverse_sequential, sequential_log_det_jacobian
from .sparse_gaussian_process import SparseGaussianProcess
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
    "PoissonProcess",
    "PoissonProcessDistribution",
    "PointSetVariable",
    "GaussianProcess",
    "SparseGaussianProcess",
    "GaussianLikelihood",
    "RandomFourierFeatures",
    "MultivariateNormalColumns",
    "cholesky_with_jitter",
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
    "Zeros",
    "Constant",
    "LinearMean",
]
