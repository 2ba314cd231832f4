"""UCI regression benchmark: test RMSE and log-likelihood against the published tables.

The standard protocol (Hernández-Lobato & Adams 2015; Gal & Ghahramani 2016): for each
data set and each of its fixed 90/10 train/test splits (20, or 5 for protein), standardise
inputs and target on the training part, train a network with one hidden layer of 50 ReLU
units (100 for protein), and report the test RMSE and the mean per-point test
log-likelihood in the original target units; mean ± standard error over splits. Run with
``make bench-uci`` or directly::

    .venv/bin/python benchmarks/uci.py [--quick] [--data-dir DIR] [--datasets a,b]
        [--splits N] [--methods m1,m2] [--out-dir DIR] [--table PATH] [--validation]
        [--table-only] [--import-table PATH]

Each (data set, method) writes one JSON file under ``--out-dir``; the Markdown table
(``--table``) is rebuilt from every JSON file there, so methods run in separate processes
merge into one table. ``--validation`` scores on the last 10% of each training part
instead of the test part (for choosing defaults without touching the test splits).

Every method is a few lines of the public API and uses the same defaults on every data
set (:data:`DEFAULTS`); see docs/uci.md for what the table shows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "uci-regression"
RESULTS_DIR = REPO / "benchmarks" / "results"

DATASETS = (
    "bostonHousing",
    "concrete",
    "energy",
    "kin8nm",
    "naval-propulsion-plant",
    "power-plant",
    "protein-tertiary-structure",
    "wine-quality-red",
    "yacht",
)
QUICK_DATASETS = ("yacht", "energy")
SHORT_NAMES = {
    "bostonHousing": "boston",
    "naval-propulsion-plant": "naval",
    "power-plant": "power",
    "protein-tertiary-structure": "protein",
    "wine-quality-red": "wine",
}

# Gal & Ghahramani 2016, Table 1 (VI and PBP restate Hernández-Lobato & Adams 2015):
# (RMSE, test log-likelihood) per data set, as in the data directory's README.
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "bostonHousing": {"VI": (4.32, -2.90), "PBP": (3.01, -2.57), "MC dropout": (2.97, -2.46)},
    "concrete": {"VI": (7.19, -3.39), "PBP": (5.67, -3.16), "MC dropout": (5.23, -3.04)},
    "energy": {"VI": (2.65, -2.39), "PBP": (1.80, -2.04), "MC dropout": (1.66, -1.99)},
    "kin8nm": {"VI": (0.10, 0.90), "PBP": (0.10, 0.90), "MC dropout": (0.10, 0.95)},
    "naval-propulsion-plant": {
        "VI": (0.01, 3.73),
        "PBP": (0.01, 3.73),
        "MC dropout": (0.01, 3.80),
    },
    "power-plant": {"VI": (4.33, -2.89), "PBP": (4.12, -2.84), "MC dropout": (4.02, -2.80)},
    "protein-tertiary-structure": {
        "VI": (4.84, -2.99),
        "PBP": (4.73, -2.97),
        "MC dropout": (4.36, -2.89),
    },
    "wine-quality-red": {"VI": (0.65, -0.98), "PBP": (0.64, -0.97), "MC dropout": (0.62, -0.93)},
    "yacht": {"VI": (6.89, -3.43), "PBP": (1.02, -1.63), "MC dropout": (1.11, -1.55)},
}
PUBLISHED_COLUMNS = ("VI", "PBP", "MC dropout")


@dataclass(frozen=True)
class Defaults:
    """The hyperparameters, identical for every data set and split.

    Not knobs: the noise is ``layers.Normal()``'s trainable scale, which starts at 1 in
    standardised units; biases are deterministic (zeros-initialised, no prior); the
    VI posterior means start like ``nn.Linear``'s weights (uniform on ±1/sqrt(fan_in)).
    """

    hidden: int = 50  # hidden ReLU units (``hidden_protein`` for protein)
    hidden_protein: int = 100
    steps: int = 600  # Adam steps per split (neural networks)
    gp_steps: int = 1000  # Adam steps per split (sparse and deep GP; ARD kernels)
    batch_size: int = 512  # min(batch_size, N_train) examples per step
    lr: float = 1e-2  # Adam learning rate over the first half of the steps
    final_lr_fraction: float = 0.1  # then linear decay to lr * this at the last step
    posterior_scale_init: float = 1e-3  # VI: initial weight posterior standard deviation
    prior_scale: float = 1.0  # N(0, prior_scale²) prior on every weight
    dropout: float = 0.05  # MC dropout rate after the hidden layer
    dropout_input: float = 0.0  # MC dropout rate on the inputs
    test_samples: int = 100  # function samples for the predictive at test time
    num_inducing: int = 50  # GPs: inducing points per layer (initialised from the first batch)
    deep_gp_width: int = 30  # deep GP: inner layer width min(D, this)
    quick_steps: int = 400  # --quick
    quick_splits: int = 3  # --quick
    ensemble_size: int = 4  # rank-1: members (test_samples must be a multiple of it)
    deep_ensemble_size: int = 5  # deep ensemble: members (Lakshminarayanan et al.: 5)
    laplace_marglik_steps: int = 100  # Adam steps (lr 0.1, from 1) on log τ: the evidence
    swag_steps: int = 300  # SGD steps from the MAP network (half the training budget)
    swag_batch_size: int = 64  # min(this, N_train) examples per SGD step
    swag_lr: float = 0.01  # SGD learning rate on σ² × the MAP objective (σ: trained noise)
    swag_momentum: float = 0.9
    swag_rank: int = 20  # iterates collected (one every swag_steps // swag_rank steps)
    ivon_lr: float = 0.1  # IVON's learning rate (rescaled by h0 + δ, as ivon-opt does)
    ivon_hess_init: float = 10.0  # IVON's initial Hessian h0
    ivon_beta2: float = 0.999  # IVON's Hessian momentum


DEFAULTS = Defaults()


# --------------------------------------------------------------------------------------
# Data and protocol pieces
# --------------------------------------------------------------------------------------


@dataclass
class Split:
    """One standardised train/test split; ``y_mean``/``y_std`` undo the target scaling."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray  # original units
    y_mean: float
    y_std: float


def load_dataset(data_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``(X (n, d), y (n,), n_splits)`` of one data set in the standard layout."""
    folder = Path(data_dir) / name
    if not folder.is_dir():
        raise ValueError(f"uci: no data set {name!r} under {data_dir}")
    data = np.loadtxt(folder / "data.txt")
    features = np.loadtxt(folder / "index_features.txt", dtype=int).reshape(-1)
    target = int(np.loadtxt(folder / "index_target.txt", dtype=int))
    n_splits = int(np.loadtxt(folder / "n_splits.txt"))
    return data[:, features], data[:, target], n_splits


def split_indices(data_dir: Path, name: str, i: int) -> tuple[np.ndarray, np.ndarray]:
    """0-based ``(train, test)`` row indices of split ``i``."""
    folder = Path(data_dir) / name
    if not (folder / f"index_train_{i}.txt").is_file():
        raise ValueError(f"uci: {name} has no split {i} under {data_dir} (use --splits)")
    train = np.loadtxt(folder / f"index_train_{i}.txt", dtype=int).reshape(-1)
    test = np.loadtxt(folder / f"index_test_{i}.txt", dtype=int).reshape(-1)
    return train, test


def standardise(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Split:
    """Scale inputs and target by the training part's mean and std (constant columns: 1)."""
    x_mean, x_std = x_train.mean(0), x_train.std(0)
    x_std = np.where(x_std > 0, x_std, 1.0)
    y_mean, y_std = float(y_train.mean()), float(y_train.std())
    if not y_std > 0:
        raise ValueError("uci: the training target is constant; cannot standardise it")
    return Split(
        x_train=(x_train - x_mean) / x_std,
        y_train=(y_train - y_mean) / y_std,
        x_test=(x_test - x_mean) / x_std,
        y_test=np.asarray(y_test, dtype=np.float64),
        y_mean=y_mean,
        y_std=y_std,
    )


def make_split(
    x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, *, validation: bool
) -> Split:
    """The standardised split; with ``validation`` the last 10% of ``train`` is the test."""
    if validation:
        n_val = max(1, len(train) // 10)
        train, test = train[:-n_val], train[-n_val:]
    return standardise(x[train], y[train], x[test], y[test])


def predictive_scores(
    loc: np.ndarray, scale: np.ndarray, y: np.ndarray, y_mean: float, y_std: float
) -> tuple[float, float]:
    """``(RMSE, mean per-point log-likelihood)`` in the original target units.

    ``loc``, ``scale``: ``(K, n)`` Gaussian predictive components in standardised units (K
    function samples, equally weighted; K = 1 for a point estimate); ``y``: ``(n,)`` in
    original units. The RMSE is that of the predictive mean; the log-likelihood of a point
    is ``log (1/K) Σ_k N(y | loc_k, scale_k²)`` in original units, which is the standardised
    value minus ``log(y_std)``.
    """
    loc = np.asarray(loc, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    if loc.ndim != 2 or loc.shape != scale.shape or loc.shape[1] != len(y):
        raise ValueError(
            f"predictive_scores expected loc and scale of shape (K, {len(y)}), "
            f"got {loc.shape} and {scale.shape}"
        )
    z = (np.asarray(y, dtype=np.float64) - y_mean) / y_std
    mean = loc.mean(0) * y_std + y_mean
    rmse = float(np.sqrt(np.mean((mean - y) ** 2)))
    log_pdf = -0.5 * ((z - loc) / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi)
    top = log_pdf.max(0)
    ll = top + np.log(np.mean(np.exp(log_pdf - top), axis=0)) - math.log(y_std)
    return rmse, float(ll.mean())


def train_mean_baseline(split: Split) -> tuple[float, float]:
    """Scores of predicting ``N(train mean, train std²)`` for every test point."""
    n = len(split.y_test)
    return predictive_scores(np.zeros((1, n)), np.ones((1, n)), split.y_test, split.y_mean,
                             split.y_std)  # fmt: skip


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample std with ddof=1 over sqrt(n); 0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_se expected at least one value")
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), se


# --------------------------------------------------------------------------------------
# Methods: each builds a model whose output is a layers.Normal random variable, and says
# which extra per-example loss it adds to the mean negative log-likelihood.
# --------------------------------------------------------------------------------------


def _normal_nll(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Mean negative log-likelihood of a model whose output is a ``layers.Normal`` variable."""
    return -model(x).distribution.log_prob(y).mean()


def _normal_predictive(model: nn.Module, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(K, n)`` means and stds of K function samples, drawn in one vectorised call."""
    with bl.vectorized_samples(model, k):
        dist = model(x.repeat(k, 1)).distribution
    return dist.mean.reshape(k, -1), dist.stddev.expand_as(dist.mean).reshape(k, -1)


@dataclass
class Method:
    build: Callable[[int, int, Defaults], nn.Module]
    penalty: Callable[[nn.Module, int, Defaults], Tensor | float]  # per-example, added
    sampled: bool  # whether prediction averages K function samples
    nll: Callable[[nn.Module, Tensor, Tensor], Tensor] = _normal_nll
    predictive: Callable[[nn.Module, Tensor, int], tuple[Tensor, Tensor]] = _normal_predictive
    # per-split extras recorded in the JSON after scoring: (model, split, d) -> {key: value}
    extras: Callable[[nn.Module, Split, Defaults], dict] | None = None
    # how the model is trained: (model, method, split, steps, d) -> None; None: Adam (train)
    trainer: Callable[..., None] | None = None
    # after training, a post-hoc posterior: (trained model, split, d) -> model to predict with
    posthoc: Callable[[nn.Module, Split, Defaults], nn.Module] | None = None


def _posterior(d: Defaults) -> dict:
    return {
        "weight_initializer": bl.initializers.TrainableNormal(scale_init=d.posterior_scale_init),
        "weight_regularizer": bl.regularizers.NormalKLDivergence(0.0, d.prior_scale),
    }


def _empirical_bayes_posterior(d: Defaults) -> dict:
    """The posterior of :func:`_posterior` under the empirical-Bayes prior: one prior scale
    per weight tensor, its closed-form type-II maximum-likelihood value."""
    return {**_posterior(d), "weight_regularizer": "empirical_bayes_normal_kl_divergence"}


def _vi(layer_cls: type, posterior: Callable[[Defaults], dict] = _posterior) -> Method:
    def build(d_in: int, hidden: int, d: Defaults) -> nn.Module:
        return nn.Sequential(
            layer_cls(d_in, hidden, **posterior(d)),
            nn.ReLU(),
            layer_cls(hidden, 1, **posterior(d)),
            layers.Normal(),  # learned homoscedastic noise
        )

    return Method(build, _kl_per_example, sampled=True)


def _l2_prior(model: nn.Module, n: int, d: Defaults) -> Tensor:
    """MAP under the same N(0, prior_scale²) weight prior, per example."""
    sq = sum(m.weight.square().sum() for m in model.modules() if isinstance(m, nn.Linear))
    return sq / (2 * d.prior_scale**2 * n)


def _deterministic(d_in: int, hidden: int, d: Defaults) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 1), layers.Normal())


def _mc_dropout(d_in: int, hidden: int, d: Defaults) -> nn.Module:
    return nn.Sequential(
        layers.MCDropout(d.dropout_input),
        nn.Linear(d_in, hidden),
        nn.ReLU(),
        layers.MCDropout(d.dropout),
        nn.Linear(hidden, 1),
        layers.Normal(),
    )


class GPRegression(nn.Module):
    """A stack of ``layers.SparseGaussianProcess`` with a ``layers.Normal`` noise on top.

    ``forward`` returns the last layer's marginal ``q(f(x))`` and the noise std. In a deep
    GP each row propagates its own sample of the inner layers (doubly stochastic).
    """

    def __init__(self, gp: nn.Module) -> None:
        super().__init__()
        self.gp = gp
        self.noise = layers.Normal()  # learned homoscedastic noise, starts at 1

    def forward(self, x: Tensor) -> tuple[torch.distributions.Normal, Tensor]:
        f = self.gp(x).distribution
        return f, self.noise(f.mean).distribution.stddev


def _gp_nll(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Minus the closed-form expected Gaussian log-likelihood under ``q(f(x))``."""
    f, noise = model(x)
    return -gaussian_expected_log_likelihood(f.mean, f.variance, y, noise.square()).mean()


def _gp_predictive(model: nn.Module, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Rows repeated K times: independent inner-layer samples, each a Gaussian component."""
    f, noise = model(x.repeat(k, 1))
    scale = (f.variance + noise.square()).sqrt()
    return f.mean.reshape(k, -1), scale.reshape(k, -1)


def _ard(d_in: int) -> nn.Module:
    """Exponentiated-quadratic kernel with one length scale per input (all starting at 1)."""
    return layers.ExponentiatedQuadratic(length_scale=torch.ones(d_in))


def _sparse_gp(d_in: int, hidden: int, d: Defaults) -> nn.Module:
    return GPRegression(
        layers.SparseGaussianProcess(1, num_inducing=d.num_inducing, covariance_fn=_ard(d_in))
    )


def _deep_gp(d_in: int, hidden: int, d: Defaults) -> nn.Module:
    width = min(d_in, d.deep_gp_width)
    return GPRegression(nn.Sequential(
        layers.SparseGaussianProcess(width, num_inducing=d.num_inducing, covariance_fn=_ard(d_in)),
        layers.SparseGaussianProcess(1, num_inducing=d.num_inducing, covariance_fn=_ard(width)),
    ))  # fmt: skip


def _kl_per_example(model: nn.Module, n: int, d: Defaults) -> Tensor:
    return torch.stack(bl.losses(model)).sum() / n  # full ELBO: KL / N per example


def _rank1(d_in: int, hidden: int, d: Defaults) -> nn.Module:
    """Rank-1 network: the shared weights are point estimates (the layer's ``nn.Linear``
    start), the factors ``r``, ``s`` of each of the ``ensemble_size`` members normal with
    the layer's default N(1, 1) priors; biases per member, deterministic."""
    from bayesian_layers.layers.rank1 import LinearRank1

    e = d.ensemble_size
    return nn.Sequential(
        LinearRank1(d_in, hidden, ensemble_size=e),
        nn.ReLU(),
        LinearRank1(hidden, 1, ensemble_size=e),
        layers.Normal(),
    )


def _ensemble_size(model: nn.Module) -> int:
    sizes = {m.ensemble_size for m in model.modules() if hasattr(m, "ensemble_size")}
    if len(sizes) != 1:
        raise ValueError(f"uci: expected one ensemble_size in the rank-1 model, got {sizes}")
    return int(sizes.pop())


def _member_nll(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Mean NLL with the batch split across the members, as the rank-1 layers do.

    The rows are shuffled (so on the full-batch sets, boston and yacht, each member sees
    a fresh random quarter every step rather than a fixed block of the file order) and
    the last ``len(x) mod ensemble_size`` of them are dropped: each member gets
    ``len(x) // ensemble_size`` rows. ``train`` itself drops the incomplete last batch
    of an epoch, so no batch smaller than ``batch_size`` reaches this.
    """
    e = _ensemble_size(model)
    n = len(x) - len(x) % e
    if n == 0:
        raise ValueError(f"uci: a batch of {len(x)} rows cannot feed {e} members")
    idx = torch.randperm(len(x))[:n]
    return _normal_nll(model, x[idx], y[idx])


def _kl_and_l2_per_example(model: nn.Module, n: int, d: Defaults) -> Tensor:
    """Rank-1: the factors' KL / N (the members' average) plus the MAP term of the same
    N(0, prior_scale²) prior on the shared point-estimate weights, per example."""
    sq = sum(
        m.point("weight").square().sum() for m in model.modules() if hasattr(m, "ensemble_size")
    )
    return _kl_per_example(model, n, d) + sq / (2 * d.prior_scale**2 * n)


def _predict_members(model: nn.Module, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(K, n)`` Gaussian components from ``bl.predict``: sample ``k`` is member ``k mod
    E`` with its own draw of the factors (``K`` a multiple of ``E``)."""
    pred = bl.predict(model, x, num_samples=k)
    return pred.output_mean.reshape(k, -1), pred.output_variance.sqrt().reshape(k, -1)


def _variational_dropout(d_in: int, hidden: int, d: Defaults) -> nn.Module:
    """Sparse variational dropout: ``VariationalDropoutNormal`` posteriors (``θ`` started
    like ``nn.Linear``'s weight, ``log σ² = -10``) under the log-uniform prior (the
    layer's defaults); threshold ``log α > 3`` for the sparsity."""
    return nn.Sequential(
        layers.LinearVariationalDropout(d_in, hidden),
        nn.ReLU(),
        layers.LinearVariationalDropout(hidden, 1),
        layers.Normal(),
    )


@torch.no_grad()
def _sparsity_extras(model: nn.Module, split: Split, d: Defaults) -> dict:
    """The sparsity reached (``log α > threshold``) and the scores of the thresholded
    posterior-mean network (one Gaussian per point), which is what the sparsity buys."""
    report = layers.variational_dropout_sparsity(model)
    x = torch.as_tensor(split.x_test, dtype=torch.float32)
    with bl.posterior_mean(model):
        dist = model(x).distribution
    loc = dist.mean.reshape(1, -1).double().numpy()
    scale = dist.stddev.expand_as(dist.mean).reshape(1, -1).double().numpy()
    rmse, ll = predictive_scores(loc, scale, split.y_test, split.y_mean, split.y_std)
    return {
        "sparsity": report.fraction,
        "sparsity_per_layer": report.per_layer,
        "pruned_weights": report.pruned,
        "total_weights": report.total,
        "sparse_mean_rmse": rmse,
        "sparse_mean_ll": ll,
    }


METHODS: dict[str, Method] = {
    "deterministic": Method(_deterministic, _l2_prior, sampled=False),
    "mc_dropout": Method(_mc_dropout, _l2_prior, sampled=True),
    "vi_reparameterization": _vi(layers.LinearReparameterization),
    "vi_flipout": _vi(layers.LinearFlipout),
    "vi_local_reparameterization": _vi(layers.LinearLocalReparameterization),
    "vi_flipout_empirical_bayes": _vi(layers.LinearFlipout, _empirical_bayes_posterior),
    "rank1": Method(_rank1, _kl_and_l2_per_example, True, _member_nll, _predict_members),
    "variational_dropout": Method(
        _variational_dropout, _kl_per_example, sampled=True, extras=_sparsity_extras
    ),
}
#: methods run only when named with ``--methods``: measurements behind a choice of
#: defaults, not rows of the table (docs/training.md: the empirical-Bayes prior collapses
#: to the prior on the small sets, so it is no default)
EXPERIMENTS = ("vi_flipout_empirical_bayes",)
NN_METHODS = tuple(m for m in METHODS if m not in EXPERIMENTS)
if hasattr(layers, "SparseGaussianProcess"):
    from bayesian_layers.layers.gp.sparse_variational import gaussian_expected_log_likelihood

    METHODS["sparse_gp"] = Method(_sparse_gp, _kl_per_example, False, _gp_nll, _gp_predictive)
    METHODS["deep_gp"] = Method(_deep_gp, _kl_per_example, True, _gp_nll, _gp_predictive)
GP_METHODS = ("sparse_gp", "deep_gp")


# --------------------------------------------------------------------------------------
# Posteriors from elsewhere than the KL term (issue 19): post-hoc Laplace and SWAG on the
# trained deterministic network, the IVON optimizer, and a deep ensemble.
# --------------------------------------------------------------------------------------


class NoisyNet(nn.Module):
    """A Bayesian network of the means followed by the trained homoscedastic noise layer:
    ``forward(x) = noise(net(x))``, a ``layers.Normal`` random variable.

    Args:
        net: maps ``(B, D)`` inputs to ``(B, 1)`` means (e.g. returned by
            ``bl.laplace.fit``).
        noise: the trained ``layers.Normal()`` (its scale is a point estimate).
    """

    def __init__(self, net: nn.Module, noise: nn.Module) -> None:
        super().__init__()
        self.net, self.noise = net, noise

    def forward(self, x: Tensor):  # -> a layers.Normal random variable
        return self.noise(self.net(x))

    def noise_scale(self) -> float:
        """The noise standard deviation in standardised units."""
        with torch.no_grad():
            return float(self.noise(torch.zeros(1, 1)).distribution.stddev.reshape(()))


def _training_loader(split: Split, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    x = torch.as_tensor(split.x_train, dtype=torch.float32)
    y = torch.as_tensor(split.y_train, dtype=torch.float32).unsqueeze(-1)
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


def _laplace(model: nn.Module, split: Split, d: Defaults) -> nn.Module:
    """Post-hoc Kronecker-factored Laplace over every layer (weights and biases) of the
    trained deterministic network, GGN curvature with the Gaussian likelihood at the
    network's trained noise σ, one scalar prior precision τ maximising the evidence."""
    net, noise = model[:-1], model[-1]
    sigma = NoisyNet(net, noise).noise_scale()
    loader = _training_loader(split, d.batch_size)
    post = bl.laplace.fit(net, loader, "regression", hessian="kron", subset="all",
                          sigma_noise=sigma)  # fmt: skip
    bl.laplace.optimize_prior_precision(post, n_steps=d.laplace_marglik_steps)
    return NoisyNet(post, noise)


def _laplace_predictive(model: nn.Module, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The linearised (GLM) predictive, one Gaussian per point: ``f`` ~ N(f(x; θ*),
    J Σ Jᵀ) plus the noise, variance ``J Σ Jᵀ + σ²``; ``(1, n)`` means and stds."""
    mean, cov = bl.laplace.glm_predictive(model.net, x, likelihood="regression")
    var = cov.reshape(-1) + model.noise_scale() ** 2
    return mean.reshape(1, -1), var.sqrt().reshape(1, -1)


def _laplace_extras(model: nn.Module, split: Split, d: Defaults) -> dict:
    curv = model.net.laplace_curvature
    return {"prior_precision": float(curv.prior_precision), "noise_scale": model.noise_scale()}


def _weight_sq(model: nn.Module) -> Tensor:
    """``Σ ‖W‖²`` over the weights (not biases) of the linear layers, plain or Bayesian
    (their posterior means)."""
    terms = [m.point("weight").square().sum() for m in model.modules()
             if isinstance(m, bl.layers.BayesianLayer)]  # fmt: skip
    terms += [m.weight.square().sum() for m in model.modules() if isinstance(m, nn.Linear)]
    return torch.stack(terms).sum()


def _swag(model: nn.Module, split: Split, d: Defaults) -> nn.Module:
    """SWAG (diagonal + low rank) from the trained deterministic network: its linear
    layers converted in place to reparameterization layers (means = the trained weights
    and biases), the noise frozen at its trained value σ, then ``swag_steps`` SGD steps on
    σ² × (mean NLL + ‖W‖² / (2 N)) (the MAP objective on the squared-error scale, so one
    learning rate suits every data set), an iterate every ``swag_steps / swag_rank``."""
    noise = model[-1]
    sigma2 = NoisyNet(model[:-1], noise).noise_scale() ** 2
    noise.requires_grad_(False)
    post = bl.to_bayesian(model, "reparameterization", bias_initializer="trainable_normal")
    x = torch.as_tensor(split.x_train, dtype=torch.float32)
    y = torch.as_tensor(split.y_train, dtype=torch.float32).unsqueeze(-1)
    n = len(x)
    batch = min(d.swag_batch_size, n)
    per_epoch = n // batch
    order = torch.cat([torch.randperm(n)[: per_epoch * batch]
                       for _ in range(-(-d.swag_steps // per_epoch))])  # fmt: skip
    loader = [(x[i], y[i]) for i in order.split(batch)[: d.swag_steps]]

    def loss_fn(out, target: Tensor) -> Tensor:
        nll = -out.distribution.log_prob(target).mean()
        return sigma2 * (nll + _weight_sq(post) / (2 * d.prior_scale**2 * n))

    bl.swag.collect(
        post, loader, loss_fn, lr=d.swag_lr, epochs=1, momentum=d.swag_momentum,
        collect_every=d.swag_steps // d.swag_rank, collect_unit="step", max_rank=d.swag_rank,
    )  # fmt: skip
    return post


def _swag_predictive(model: nn.Module, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """K joint draws from SWAG (one low-rank noise shared by all layers per draw)."""
    with bl.swag.joint_low_rank(model):
        return _normal_predictive(model, x, k)


def _swag_extras(model: nn.Module, split: Split, d: Defaults) -> dict:
    ranks = {m.weight_initializer.deviations.shape[0] for m in model.modules()
             if isinstance(m, bl.layers.BayesianLayer)}  # fmt: skip
    return {"swag_rank": max(ranks)}


def _converted(d_in: int, hidden: int, d: Defaults) -> nn.Module:
    """The deterministic network (same initial weights for the same seed) with its linear
    layers converted to reparameterization layers, biases random."""
    return bl.to_bayesian(_deterministic(d_in, hidden, d), "reparameterization",
                          bias_initializer="trainable_normal")  # fmt: skip


def _train_ivon(model: nn.Module, method: Method, split: Split, steps: int, d: Defaults) -> None:
    """``bl.optim.IVON`` (ess = N, one draw per step) on the mean NLL alone, the N(0,
    prior_scale²) prior as its weight decay δ = 1 / (prior_scale² N), with the MAP row's
    batches, step count and learning-rate schedule; then its posterior
    ``N(m, 1 / (N (h + δ)))`` is written into the layers. IVON trains every parameter but
    the layers' scales: the weight and bias means and the noise's raw scale."""
    n = len(split.x_train)
    with torch.no_grad():  # materialise the noise layer's lazy scale parameter
        model(torch.as_tensor(split.x_train[:1], dtype=torch.float32))
    opt = bl.optim.IVON(
        bl.optim.ivon_parameters(model), lr=d.ivon_lr, ess=n, hess_init=d.ivon_hess_init,
        beta2=d.ivon_beta2, weight_decay=1.0 / (d.prior_scale**2 * n),
    )  # fmt: skip
    model.train()
    with bl.posterior_mean(model):
        for lr_factor, xb, yb in _batches(split, steps, d):
            for group in opt.param_groups:
                group["lr"] = d.ivon_lr * lr_factor
            with opt.sampled_params(train=True):
                opt.zero_grad(set_to_none=True)
                method.nll(model, xb, yb).backward()
            opt.step()
    opt.write_posterior(model)


class _Member(nn.Module):
    """One deep-ensemble member: the deterministic network and its own homoscedastic
    noise, ``scale = softplus(scale_rho) + 1e-3`` starting at 1 as ``layers.Normal()``'s.
    Output ``(B, 2)``: ``[loc | scale]`` (``bl.Ensemble`` members return a tensor)."""

    min_scale = 1e-3

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        rho = math.log(math.expm1(1.0 - self.min_scale))
        self.scale_rho = nn.Parameter(torch.full((1,), rho))

    def forward(self, x: Tensor) -> Tensor:
        loc = self.net(x)
        scale = nn.functional.softplus(self.scale_rho) + self.min_scale
        return torch.cat([loc, scale.expand_as(loc)], dim=-1)


def _deep_ensemble(d_in: int, hidden: int, d: Defaults) -> nn.Module:
    from bayesian_layers.ensemble import Ensemble

    return Ensemble(lambda: _Member(d_in, hidden), d.deep_ensemble_size)


def _ensemble_nll(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The sum over members of each member's mean NLL (so Adam on it takes each member's
    own step, see ``bl.Ensemble``)."""
    out = model(x)  # (n, B, 2)
    dist = torch.distributions.Normal(out[..., :1], out[..., 1:])
    return -dist.log_prob(y).mean(dim=(1, 2)).sum()


def _ensemble_l2(model: nn.Module, n: int, d: Defaults) -> Tensor:
    """Each member's MAP term ``‖W_i‖² / (2 prior_scale² N)``, summed over the members."""
    sq = sum(p.square().sum() for name, p in model.members.named_parameters()
             if name.endswith("weight"))  # fmt: skip
    return sq / (2 * d.prior_scale**2 * n)


def _ensemble_predictive(model: nn.Module, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The equal-weight mixture of the members' Gaussians, ``(n_members, n)`` means and
    stds (``k`` is not used: each member is one function sample)."""
    samples = bl.predict(model, x, num_samples=model.ensemble_size).samples  # (n, B, 2)
    return samples[..., 0], samples[..., 1]


METHODS["laplace"] = Method(_deterministic, _l2_prior, False, predictive=_laplace_predictive,
                            extras=_laplace_extras, posthoc=_laplace)  # fmt: skip
METHODS["swag"] = Method(_deterministic, _l2_prior, True, predictive=_swag_predictive,
                         extras=_swag_extras, posthoc=_swag)  # fmt: skip
METHODS["ivon"] = Method(_converted, lambda model, n, d: 0.0, True, trainer=_train_ivon)
METHODS["deep_ensemble"] = Method(_deep_ensemble, _ensemble_l2, True, _ensemble_nll,
                                  _ensemble_predictive)  # fmt: skip
POSTERIOR_METHODS = ("laplace", "swag", "ivon", "deep_ensemble")
METHOD_LABELS = {
    "deterministic": "deterministic (MAP)",
    "mc_dropout": "MC dropout",
    "vi_reparameterization": "VI reparam.",
    "vi_flipout": "VI Flipout",
    "vi_local_reparameterization": "VI local reparam.",
    "vi_flipout_empirical_bayes": "VI Flipout, empirical-Bayes prior",
    "rank1": "rank-1 (4 members)",
    "variational_dropout": "variational dropout",
    "sparse_gp": "sparse GP",
    "deep_gp": "deep GP (2 layers)",
    "laplace": "Laplace (KFAC, GLM)",
    "swag": "SWAG",
    "ivon": "IVON",
    "deep_ensemble": "deep ensemble (5)",
}
VI_METHODS = ("vi_reparameterization", "vi_flipout", "vi_local_reparameterization")


# --------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------


def _batches(split: Split, steps: int, d: Defaults) -> Iterator[tuple[float, Tensor, Tensor]]:
    """``(lr_factor, x, y)`` for each of ``steps`` steps: minibatches of ``min(batch_size,
    N)`` without replacement (the incomplete last batch of an epoch dropped); the learning
    rate is ``lr_factor`` times the base one: 1 over the first half of the steps, then a
    linear decay to ``final_lr_fraction`` at the last."""
    x = torch.as_tensor(split.x_train, dtype=torch.float32)
    y = torch.as_tensor(split.y_train, dtype=torch.float32).unsqueeze(-1)
    n = len(x)
    batch = min(d.batch_size, n)
    half = steps // 2
    perm, pos = torch.randperm(n), 0
    for step in range(steps):
        factor = 1.0
        if step >= half:  # linear decay to final_lr_fraction over the second half
            frac = (step - half) / max(1, steps - half)
            factor = 1 - (1 - d.final_lr_fraction) * frac
        if batch == n:
            yield factor, x, y
            continue
        if pos + batch > n:
            perm, pos = torch.randperm(n), 0
        idx = perm[pos : pos + batch]
        pos += batch
        yield factor, x[idx], y[idx]


def train(model: nn.Module, method: Method, split: Split, steps: int, d: Defaults) -> None:
    """Adam on mean NLL + the method's per-example penalty; minibatches without replacement."""
    n = len(split.x_train)
    opt = torch.optim.Adam(model.parameters(), lr=d.lr)
    model.train()
    for factor, xb, yb in _batches(split, steps, d):
        for group in opt.param_groups:
            group["lr"] = d.lr * factor
        loss = method.nll(model, xb, yb) + method.penalty(model, n, d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def predict(model: nn.Module, method: Method, x_test: np.ndarray, d: Defaults):
    """``(loc, scale)`` of shape ``(K, n)`` in standardised units."""
    x = torch.as_tensor(x_test, dtype=torch.float32)
    model.eval()
    k = d.test_samples if method.sampled else 1
    loc, scale = method.predictive(model, x, k)
    return loc.double().numpy(), scale.double().numpy()


def fit_split(name: str, method_name: str, split: Split, steps: int, seed: int, d: Defaults):
    """Train one model on ``split`` and score it: ``(model, rmse, ll, seconds, cpu)``."""
    torch.manual_seed(seed)
    method = METHODS[method_name]
    hidden = d.hidden_protein if name == "protein-tertiary-structure" else d.hidden
    model = method.build(split.x_train.shape[1], hidden, d)
    t0, c0 = time.perf_counter(), time.process_time()
    (method.trainer or train)(model, method, split, steps, d)
    if method.posthoc is not None:  # a post-hoc posterior: its cost counts as training
        model = method.posthoc(model, split, d)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    loc, scale = predict(model, method, split.x_test, d)
    rmse, ll = predictive_scores(loc, scale, split.y_test, split.y_mean, split.y_std)
    return model, rmse, ll, seconds, cpu


def run_split(name: str, method_name: str, split: Split, steps: int, seed: int, d: Defaults):
    """``(rmse, ll, seconds, cpu)`` of one trained model (see :func:`fit_split`)."""
    return fit_split(name, method_name, split, steps, seed, d)[1:]


# --------------------------------------------------------------------------------------
# Results and the table
# --------------------------------------------------------------------------------------


def _fmt(mean: float, se: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def _digits(name: str, metric: str) -> int:
    if name == "naval-propulsion-plant" and metric == "rmse":
        return 4
    return 3 if name in ("kin8nm", "naval-propulsion-plant") else 2


def load_results(out_dir: Path) -> dict[tuple[str, str], dict]:
    results = {}
    for path in sorted(Path(out_dir).glob("*.json")):
        r = json.loads(path.read_text())
        results[(r["dataset"], r["method"])] = r
    return results


def _n_splits(r: dict) -> int:
    return int(r["n_splits"]) if "summary" in r else len(r["rmse"])


def _scores(r: dict) -> dict[str, tuple[float, float]]:
    """``{"rmse": (mean, se), "ll": (mean, se)}`` of a per-split or a summary record."""
    if "summary" in r:
        return {k: (float(r["summary"][k][0]), float(r["summary"][k][1])) for k in ("rmse", "ll")}
    return {"rmse": mean_se(r["rmse"]), "ll": mean_se(r["ll"])}


def records_from_table(text: str, source: str) -> dict[tuple[str, str], dict]:
    """Summary records (mean ± SE as printed, split count, the method's total CPU minutes)
    of every row of a table written by :func:`build_table`.

    For rows whose per-split JSON files are gone: written into ``--out-dir`` by
    ``--import-table``, they put those rows back in a rebuilt table (the per-split JSON of
    a later run of the method replaces them). ``source`` says where the numbers came from.
    """
    labels = {label: m for m, label in METHOD_LABELS.items()}
    short = {v: k for k, v in SHORT_NAMES.items()}
    records: dict[tuple[str, str], dict] = {}
    metric, head = None, None
    cpu: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("## "):
            metric = {"## RMSE": "rmse", "## Test log-likelihood": "ll"}.get(line.strip())
            head = None
        elif line.startswith("Training CPU time"):
            for part in line.split(":", 1)[1].strip().rstrip(".").split(", "):
                label, minutes = part.rsplit(" ", 2)[0], part.rsplit(" ", 2)[1]
                if label in labels:
                    cpu[labels[label]] = float(minutes)
        elif metric and line.startswith("| data set |"):
            head = [c.strip() for c in line.strip().strip("|").split("|")]
        elif metric and head and line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            name = short.get(cells[0], cells[0])
            for label, cell in zip(head[2:], cells[2:], strict=True):
                if label not in labels or "±" not in cell:
                    continue  # a published column or a missing cell
                mean, rest = cell.split("±")
                se, *note = rest.split()
                n = int(note[0].strip("(")) if note else int(cells[1])
                rec = records.setdefault((name, labels[label]), {
                    "dataset": name, "method": labels[label], "summary": {},
                    "n_splits": n, "reconstructed_from": source,
                })  # fmt: skip
                rec["summary"][metric] = [float(mean), float(se)]
    for (_, m), rec in records.items():
        if set(rec["summary"]) != {"rmse", "ll"}:
            raise ValueError(f"records_from_table: {rec['dataset']} / {m} lacks a metric")
        if m in cpu:
            rec["method_cpu_minutes"] = cpu[m]
    return records


def build_table(results: dict[tuple[str, str], dict], *, validation: bool = False) -> str:
    """Markdown: an RMSE table and a log-likelihood table, ours beside the published."""
    datasets = [n for n in DATASETS if any(k[0] == n for k in results)]
    order = list(METHOD_LABELS)
    methods = sorted({k[1] for k in results}, key=lambda m: order.index(m) if m in order else 99)
    part = "validation (last 10% of each training part)" if validation else "test"
    lines = [
        "# UCI regression benchmark",
        "",
        f"Mean ± standard error over splits of the {part} RMSE (lower is better) and mean",
        "per-point log-likelihood (higher is better), original target units. Published",
        "columns: Gal & Ghahramani 2016, Table 1 (VI = Graves 2011 and PBP restated from",
        "Hernández-Lobato & Adams 2015). Written by benchmarks/uci.py; see docs/uci.md.",
        "",
    ]
    scores: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for key, r in results.items():
        scores[key] = _scores(r)
    for metric, title, col in (("rmse", "RMSE", 0), ("ll", "Test log-likelihood", 1)):
        lines += [f"## {title}", ""]
        head = ["data set", "splits"] + [METHOD_LABELS.get(m, m) for m in methods]
        head += [f"published {c}" for c in PUBLISHED_COLUMNS]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for name in datasets:
            ns = {m: _n_splits(results[(name, m)]) for m in methods if (name, m) in results}
            full = max(ns.values())
            row = [SHORT_NAMES.get(name, name), str(full)]
            for m in methods:
                s = scores.get((name, m))
                cell = _fmt(*s[metric], _digits(name, metric)) if s else "-"
                if s and ns[m] != full:  # a row run on fewer splits says so
                    cell += f" ({ns[m]} of {full} splits)"
                row.append(cell)
            row += [f"{PUBLISHED[name][c][col]:.2f}" for c in PUBLISHED_COLUMNS]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    rounded = {key for key, r in results.items() if "summary" in r}
    lines += summary_lines(scores, datasets, methods, rounded)
    times = []
    for m in methods:
        rs = [r for k, r in results.items() if k[1] == m]
        cpu = sum(sum(r.get("cpu_seconds", r["seconds"])) for r in rs if "summary" not in r)
        # summary records carry their method's total (all sets) once, not per set
        cpu += 60 * max((r.get("method_cpu_minutes", 0.0) for r in rs if "summary" in r),
                        default=0.0)  # fmt: skip
        times.append(f"{METHOD_LABELS.get(m, m)} {cpu / 60:.1f} min")
    lines += ["", "Training CPU time (sum over data sets and splits, one thread): "
              + ", ".join(times) + ".", ""]  # fmt: skip
    lines += sparsity_lines(results, datasets)
    return "\n".join(lines)


def sparsity_lines(results: dict[tuple[str, str], dict], datasets: list[str]) -> list[str]:
    """Mean over splits of the variational dropout sparsity (``log α > 3``), per data set,
    and the test log-likelihood of the thresholded posterior-mean network."""
    cells = []
    for name in datasets:
        r = results.get((name, "variational_dropout"))
        if r and r.get("sparsity"):
            cell = f"{SHORT_NAMES.get(name, name)} {100 * np.mean(r['sparsity']):.0f}%"
            if "sparse_mean_ll" in r:
                cell += f" (LL {_fmt(*mean_se(r['sparse_mean_ll']), _digits(name, 'll'))})"
            cells.append(cell)
    if not cells:
        return []
    return ["Variational dropout: fraction of weights with log α > 3, mean over splits (in",
            "brackets the test log-likelihood of the posterior-mean network with those weights",
            "set to zero): " + "; ".join(cells) + ".", ""]  # fmt: skip


def summary_lines(
    scores: dict, datasets: list[str], methods: list[str], rounded: set | frozenset = frozenset()
) -> list[str]:
    """How many data sets our VI rows beat published VI (LL), and reach published MC dropout.

    ``rounded``: keys whose scores are the table's rounded figures (summary records); a
    tie with the target there counts as short of it, since rounding may have made it.
    """
    vi = [m for m in methods if m in VI_METHODS]
    lines = ["## Against the published log-likelihoods", ""]
    if vi:
        wins = [
            n
            for n in datasets
            if all((n, m) in scores and scores[(n, m)]["ll"][0] > PUBLISHED[n]["VI"][1] for m in vi)
        ]
        lines.append(
            f"- Every one of our VI rows ({len(vi)}) beats published VI on {len(wins)} of "
            f"{len(datasets)} sets: {', '.join(SHORT_NAMES.get(n, n) for n in wins) or 'none'}."
        )
    close = []
    for n in datasets:
        target = PUBLISHED[n]["MC dropout"][1]
        hits = [m for m in methods if (n, m) in scores and _reaches(
                    sum(scores[(n, m)]["ll"]), target, strict=(n, m) in rounded)]  # fmt: skip
        if hits:
            close.append(f"{SHORT_NAMES.get(n, n)} ({', '.join(METHOD_LABELS[m] for m in hits)})")
    lines.append(
        f"- At least one of our methods is within one SE of, or better than, published MC "
        f"dropout on {len(close)} of {len(datasets)} sets: {'; '.join(close) or 'none'}."
    )
    return lines


def _reaches(value: float, target: float, *, strict: bool) -> bool:
    return value > target + 1e-9 if strict else value >= target


def run(args: argparse.Namespace) -> None:
    d = DEFAULTS
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.import_table is not None:
        source = str(args.import_table)
        for (name, m), rec in records_from_table(Path(source).read_text(), source).items():
            path = out_dir / f"{name}.{m}.json"
            if not path.exists():  # never replaces a run's per-split record
                path.write_text(json.dumps(rec, indent=1))
    for name in [] if args.table_only or args.import_table else args.datasets:
        x, y, n_splits = load_dataset(args.data_dir, name)
        splits = range(min(n_splits, args.splits)) if args.splits else range(n_splits)
        for method_name in args.methods:
            steps = args.steps or (
                d.quick_steps
                if args.quick
                else d.gp_steps
                if method_name in GP_METHODS
                else d.steps
            )
            record = {
                "dataset": name, "method": method_name, "splits": [], "rmse": [], "ll": [],
                "seconds": [], "cpu_seconds": [], "baseline_rmse": [], "baseline_ll": [],
                "steps": steps,
                "validation": args.validation, "defaults": asdict(d),
                "torch": torch.__version__, "threads": torch.get_num_threads(),
            }  # fmt: skip
            for i in splits:
                train_idx, test_idx = split_indices(args.data_dir, name, i)
                split = make_split(x, y, train_idx, test_idx, validation=args.validation)
                model, rmse, ll, seconds, cpu = fit_split(name, method_name, split, steps,
                                                          seed=i, d=d)  # fmt: skip
                extras = METHODS[method_name].extras
                for key, value in (extras(model, split, d) if extras else {}).items():
                    record.setdefault(key, []).append(value)
                base_rmse, base_ll = train_mean_baseline(split)
                for key, value in (("splits", i), ("rmse", rmse), ("ll", ll),
                                   ("seconds", seconds), ("cpu_seconds", cpu),
                                   ("baseline_rmse", base_rmse),
                                   ("baseline_ll", base_ll)):  # fmt: skip
                    record[key].append(value)
                print(f"{name:28s} {method_name:28s} split {i:2d}: rmse {rmse:.4f} "
                      f"ll {ll:+.4f} ({seconds:.1f} s, cpu {cpu:.1f} s)", flush=True)  # fmt: skip
            if not all(math.isfinite(v) for v in record["rmse"] + record["ll"]):
                raise RuntimeError(f"uci: non-finite scores for {name} / {method_name}")
            (out_dir / f"{name}.{method_name}.json").write_text(json.dumps(record, indent=1))
            r_m, r_se = mean_se(record["rmse"])
            l_m, l_se = mean_se(record["ll"])
            print(f"== {name} {method_name}: rmse {r_m:.4f} ± {r_se:.4f}, "
                  f"ll {l_m:.4f} ± {l_se:.4f}", flush=True)  # fmt: skip
    table = build_table(load_results(out_dir), validation=args.validation)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(table)
    print(f"table: {args.table}")


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad}; choose from {list(allowed)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"data directory (default {DEFAULT_DATA_DIR})")  # fmt: skip
    p.add_argument("--datasets", default=None, help="comma-separated (default: all nine)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated from {list(METHODS)} (default: all; "
                        "--quick: the networks)")  # fmt: skip
    p.add_argument("--splits", type=int, default=None, help="use the first N splits")
    p.add_argument("--steps", type=int, default=None, help="override the number of Adam steps")
    p.add_argument("--quick", action="store_true",
                   help="yacht and energy, 3 splits, 400 steps (smoke test)")  # fmt: skip
    p.add_argument(
        "--validation",
        action="store_true",
        help="score on the last 10%% of each training part, not the test part",
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="per-(data set, method) JSON (default results/uci, uci_quick, uci_val)",
    )
    p.add_argument("--table", type=Path, default=None, help="Markdown table path")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--table-only", action="store_true",
                   help="only rebuild the table from the JSON files in --out-dir")  # fmt: skip
    p.add_argument("--import-table", type=Path, default=None,
                   help="write summary JSONs (mean ± SE as printed) of the rows of this "
                        "table whose JSON is missing from --out-dir, then rebuild the "
                        "table; runs nothing")  # fmt: skip
    args = p.parse_args(argv)
    if args.data_dir is None:
        args.data_dir = DEFAULT_DATA_DIR
    if not Path(args.data_dir).is_dir():
        p.error(f"--data-dir {args.data_dir} does not exist")
    all_sets = DATASETS if not args.quick else QUICK_DATASETS
    try:
        args.datasets = _names(args.datasets, DATASETS, "data set") if args.datasets else all_sets
        default_methods = (
            NN_METHODS if args.quick else tuple(m for m in METHODS if m not in EXPERIMENTS)
        )
        args.methods = (
            _names(args.methods, list(METHODS), "method") if args.methods else list(default_methods)
        )
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if args.quick and args.splits is None:
        args.splits = DEFAULTS.quick_splits
    if args.splits is not None and args.splits < 1:
        p.error(f"--splits expected >= 1, got {args.splits}")
    tag = "uci_val" if args.validation else ("uci_quick" if args.quick else "uci")
    if args.out_dir is None:
        args.out_dir = RESULTS_DIR / tag
    if args.table is None:
        args.table = RESULTS_DIR / f"{tag}.md"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    run(args)
    print(f"wall time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
