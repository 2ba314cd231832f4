"""Tests for the stochastic output layers (``layers/output_base.py``,
``layers/stochastic_output.py``, ``layers/mixtures.py``) and their distributions
(``layers/output_distributions.py``, ``layers/logistic.py``).

1. A registry with one line per layer; every contract test is parametrised over it,
   in both parameterisations (the input holds the parameters; a ``units`` projection).
2. ``log_prob``, ``mean`` and ``variance`` against scipy.stats (or a numpy closed
   form) in float64, the parameters decoded from the documented layout.
3. Goodness of fit of the layer's own draws against the family (KS for continuous
   values, chi-square for discrete ones): k = ``len(GOF_CASES)`` = 13 tests, each at
   level ALPHA / k (ALPHA = 1e-3 family-wise), n = 50 000 draws each, fixed seeds.
   Power: the KS critical distance is then ≈ 0.010, below the 0.0175 that a 10%
   error in a Laplace scale (the least visible of our families) produces.
4. The discretized logistic mixture against ``scipy.integrate.quad`` bin by bin.
5. Gradients, ``rsample`` errors, bad input, shapes, ``state_dict``, composition
   (``nn.Sequential``, the Figure 7 encoder → decoder) and KL against a scalar prior.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, special, stats
from stats_util import ALPHA
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers._checks import inverse_softplus
from bayesian_layers.layers.outputs import distributions as od
from bayesian_layers.layers.outputs import logistic as lg
from bayesian_layers.layers.outputs.mixtures import MixtureLogistic, MixtureNormal
from bayesian_layers.layers.outputs.stochastic import (
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

Params = dict[str, np.ndarray]

# ------------------------------------------------------------------- references
# Each returns (log_prob with the family's own event reduced, mean, variance) given
# the constrained parameters and values (numpy, float64).


def _elementwise(make: Callable[[Params], Any]) -> Callable[..., tuple]:
    def reference(p: Params, v: np.ndarray) -> tuple:
        d = make(p)
        logp = d.logpdf(v) if hasattr(d, "logpdf") else d.logpmf(v)
        return logp, d.mean(), d.var()

    return reference


def _student_t(p: Params, v: np.ndarray) -> tuple:
    logp, mean, var = _elementwise(SCIPY["StudentT"])(p, v)
    # the mean is undefined for df <= 1: torch says NaN, scipy says inf
    return logp, np.where(p["df"] > 1, mean, np.nan), var


def _categorical(p: Params, v: np.ndarray) -> tuple:
    log_probs = special.log_softmax(p["logits"], -1)
    log_probs = np.broadcast_to(log_probs, v.shape + log_probs.shape[-1:])
    return np.take_along_axis(log_probs, v[..., None].astype(int), -1)[..., 0], None, None


def _one_hot(p: Params, v: np.ndarray) -> tuple:
    probs = special.softmax(p["logits"], -1)
    return (v * special.log_softmax(p["logits"], -1)).sum(-1), probs, probs * (1 - probs)


def _mvn(p: Params, v: np.ndarray) -> tuple:
    cov = p["scale_tril"] @ np.swapaxes(p["scale_tril"], -1, -2)  # (B, D, D)
    logp = np.stack(
        [stats.multivariate_normal(p["loc"][b], cov[b]).logpdf(v[:, b]) for b in range(len(cov))],
        axis=-1,
    )
    return logp, p["loc"], np.diagonal(cov, axis1=-2, axis2=-1)


def _mixture(component: Any) -> Callable[..., tuple]:
    def reference(p: Params, v: np.ndarray) -> tuple:
        d = component(p["loc"], p["scale"])
        log_w = special.log_softmax(p["logits"], -1)
        logp = special.logsumexp(log_w + d.logpdf(v[..., None]), axis=-1)
        w = np.exp(log_w)
        mean = (w * d.mean()).sum(-1)
        return logp, mean, (w * (d.var() + d.mean() ** 2)).sum(-1) - mean**2

    return reference


def discretized_bin_probs(p: Params, num_bins: int, low: float, high: float) -> np.ndarray:
    """Bin probabilities ``(*, num_bins)`` from logistic cdf/sf differences (no cancellation)."""
    w = (high - low) / (num_bins - 1)
    c = low + w * np.arange(num_bins)  # (n,)
    loc, scale = p["loc"][..., None, :], p["scale"][..., None, :]  # (*, 1, K)
    lo, up = (c - w / 2)[:, None], (c + w / 2)[:, None]  # (n, 1)
    d = stats.logistic(loc, scale)
    mass = np.where(c[:, None] > loc, d.sf(lo) - d.sf(up), d.cdf(up) - d.cdf(lo))
    mass = np.where(np.arange(num_bins)[:, None] == 0, d.cdf(up), mass)
    mass = np.where(np.arange(num_bins)[:, None] == num_bins - 1, d.sf(lo), mass)
    weights = special.softmax(p["logits"], -1)[..., None, :]
    return (weights * mass).sum(-1)


def _discretized(num_bins: int, low: float = -1.0, high: float = 1.0) -> Callable[..., tuple]:
    def reference(p: Params, v: np.ndarray) -> tuple:
        probs = discretized_bin_probs(p, num_bins, low, high)  # (*, n)
        idx = np.rint((v - low) / (high - low) * (num_bins - 1)).astype(int)
        probs_v = np.broadcast_to(probs, v.shape + probs.shape[-1:])
        logp = np.log(np.take_along_axis(probs_v, idx[..., None], -1))[..., 0]
        c = np.linspace(low, high, num_bins)
        mean = (probs * c).sum(-1)
        return logp, mean, (probs * c**2).sum(-1) - mean**2

    return reference


#: scipy's frozen distribution of each elementwise family, from its parameters
SCIPY: dict[str, Callable[[Params], Any]] = {
    "Normal": lambda p: stats.norm(p["loc"], p["scale"]),
    "LogNormal": lambda p: stats.lognorm(s=p["scale"], scale=np.exp(p["loc"])),
    "StudentT": lambda p: stats.t(p["df"], p["loc"], p["scale"]),
    "Laplace": lambda p: stats.laplace(p["loc"], p["scale"]),
    "Bernoulli": lambda p: stats.bernoulli(special.expit(p["logits"])),
    "Poisson": lambda p: stats.poisson(np.exp(p["log_rate"])),
    # torch counts successes (probability sigmoid(logits)) before total_count failures
    "NegativeBinomial": lambda p: stats.nbinom(p["total_count"], special.expit(-p["logits"])),
}


# --------------------------------------------------------------------- registry
class Spec(NamedTuple):
    id: str
    make: Callable[..., StochasticOutput]  # make(units, **kwargs)
    names: tuple[str, ...]  # raw parameter blocks, in projection order
    positive: frozenset[str]
    reference: Callable[..., tuple]
    rsample: bool
    kind: str = "elementwise"  # or "categorical", "vector" (MVN), "mixture"


K = 3  # mixture components
SPECS = [
    Spec("Normal", Normal, ("loc", "scale"), frozenset({"scale"}),
         _elementwise(SCIPY["Normal"]), True),
    Spec("LogNormal", LogNormal, ("loc", "scale"), frozenset({"scale"}),
         _elementwise(SCIPY["LogNormal"]), True),
    Spec("StudentT", StudentT, ("loc", "scale", "df"), frozenset({"scale", "df"}),
         _student_t, True),
    Spec("Laplace", Laplace, ("loc", "scale"), frozenset({"scale"}),
         _elementwise(SCIPY["Laplace"]), True),
    Spec("Bernoulli", Bernoulli, ("logits",), frozenset(),
         _elementwise(SCIPY["Bernoulli"]), False),
    Spec("Categorical", Categorical, ("logits",), frozenset(), _categorical, False, "categorical"),
    Spec("OneHotCategorical", OneHotCategorical, ("logits",), frozenset(), _one_hot, False,
         "vector"),
    Spec("Poisson", Poisson, ("log_rate",), frozenset(),
         _elementwise(SCIPY["Poisson"]), False),
    Spec("NegativeBinomial", NegativeBinomial, ("logits", "total_count"),
         frozenset({"total_count"}),
         _elementwise(SCIPY["NegativeBinomial"]), False),
    Spec("MultivariateNormalTriL", MultivariateNormalTriL, ("loc", "scale_tril"), frozenset(),
         _mvn, True, "vector"),
    Spec("MixtureNormal", lambda units, **kw: MixtureNormal(units, K, **kw),
         ("logits", "loc", "scale"), frozenset({"scale"}), _mixture(stats.norm), False, "mixture"),
    Spec("MixtureLogistic", lambda units, **kw: MixtureLogistic(units, K, **kw),
         ("logits", "loc", "scale"), frozenset({"scale"}), _mixture(stats.logistic), False,
         "mixture"),
    Spec("MixtureLogistic256", lambda units, **kw: MixtureLogistic(units, K, num_bins=256, **kw),
         ("logits", "loc", "scale"), frozenset({"scale"}), _discretized(256), False, "mixture"),
]  # fmt: skip
parametrize_specs = pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
parametrize_modes = pytest.mark.parametrize("units", [None, 3], ids=["input_params", "units"])

IN, UNITS, D = 5, 3, 4  # projection input size, units, features when the input holds params


def input_size(spec: Spec, units: int | None) -> int:
    if units is not None:
        return IN
    return 3 * K if spec.kind == "mixture" else D


def build(spec: Spec, units: int | None, **kwargs: Any) -> StochasticOutput:
    """A float64 layer with eager parameters set to generic random values."""
    layer = spec.make(units, in_features=input_size(spec, units), dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.7)
    return layer


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def documented_params(spec: Spec, layer: StochasticOutput, x: Tensor) -> Params:
    """The distribution parameters, decoded from the layout the docstrings state."""
    xn = x.detach().numpy()
    floor = layer.min_scale
    if layer.units is not None:
        assert isinstance(layer.projection, nn.Linear)
        w, b = layer.projection.weight.detach().numpy(), layer.projection.bias.detach().numpy()
        raw_out = xn @ w.T + b
        n = layer.units
        if spec.kind == "mixture":
            blocks = raw_out.reshape(*xn.shape[:-1], 3, n, K)
            raw = {name: blocks[..., i, :, :] for i, name in enumerate(spec.names)}
        elif spec.kind == "vector" and spec.id.startswith("Multivariate"):
            tril = np.zeros(xn.shape[:-1] + (n, n))
            tril[(..., *np.tril_indices(n))] = raw_out[..., n:]
            raw = {"loc": raw_out[..., :n], "scale_tril": tril}
        else:
            blocks = raw_out.reshape(*xn.shape[:-1], len(spec.names), n)
            raw = {name: blocks[..., i, :] for i, name in enumerate(spec.names)}
    elif spec.kind == "mixture":
        blocks = xn.reshape(*xn.shape[:-1], 3, K)
        raw = {name: blocks[..., i, :] for i, name in enumerate(spec.names)}
    elif spec.id.startswith("Multivariate"):
        tril = layer.scale_tril_unconstrained.detach().numpy()
        raw = {"loc": xn, "scale_tril": np.broadcast_to(tril, xn.shape + tril.shape[-1:])}
    else:  # per-feature parameters, broadcast to the batch
        raw = {spec.names[0]: xn}
        for name in spec.names[1:]:
            raw[name] = np.broadcast_to(getattr(layer, f"{name}_rho").detach().numpy(), xn.shape)
    params = {k: softplus(v) + floor if k in spec.positive else v for k, v in raw.items()}
    if "scale_tril" in params:
        t = params["scale_tril"]
        diag = softplus(np.diagonal(t, axis1=-2, axis2=-1)) + floor
        params["scale_tril"] = np.tril(t, -1) + diag[..., None] * np.eye(t.shape[-1])
    return params


def intrinsic(spec: Spec) -> int:
    return 1 if spec.kind == "vector" else 0


# ===================================================== log_prob, mean, variance
@parametrize_specs
@parametrize_modes
@torch.no_grad()
def test_log_prob_mean_variance_match_scipy(spec: Spec, units: int | None) -> None:
    layer = build(spec, units)
    x = torch.randn(6, input_size(spec, units), dtype=torch.float64)
    rv = layer(x)
    values = rv.distribution.sample((2,))  # (2, *batch, *event)
    params = documented_params(spec, layer, x)
    logp, mean, var = spec.reference(params, values.numpy())
    extra = layer.event_dims - intrinsic(spec)
    if extra:
        logp = logp.sum(tuple(range(-extra, 0)))
    np.testing.assert_allclose(rv.log_prob(values).numpy(), logp, rtol=1e-9, atol=1e-9)
    if mean is None:  # Categorical: torch's mean and variance are NaN by definition
        assert torch.isnan(rv.mean).all()
        return
    np.testing.assert_allclose(rv.mean.numpy(), np.broadcast_to(mean, rv.shape), rtol=1e-9)
    np.testing.assert_allclose(rv.variance.numpy(), np.broadcast_to(var, rv.shape), rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_logistic_distribution_matches_scipy_in_the_tails(dtype: torch.dtype) -> None:
    loc, scale = torch.tensor([0.3, -1.0], dtype=dtype), torch.tensor([0.5, 2.0], dtype=dtype)
    d = lg.Logistic(loc, scale)
    ref = stats.logistic(loc.double().numpy(), scale.double().numpy())
    x = torch.tensor([[-300.0, 0.1], [40.0, 400.0], [0.0, 1.0]], dtype=dtype)
    tol = {"rtol": 1e-12, "atol": 0} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    np.testing.assert_allclose(d.log_prob(x).double().numpy(), ref.logpdf(x.double()), **tol)
    np.testing.assert_allclose(d.cdf(x[2:]).double().numpy(), ref.cdf(x[2:].double()), **tol)
    q = torch.tensor([0.1, 0.9], dtype=dtype)
    np.testing.assert_allclose(d.icdf(q).double().numpy(), ref.ppf(q.double()), **tol)
    np.testing.assert_allclose(d.entropy().double().numpy(), ref.entropy(), **tol)
    np.testing.assert_allclose(d.variance.double().numpy(), ref.var(), **tol)
    assert d.expand((4, 2)).mean.shape == (4, 2)


# ============================================================ goodness of fit
N_GOF = 50_000


def _chisquare_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square GOF, adjacent cells merged until each expects >= 5 draws."""
    assert abs(probs.sum() - 1) < 1e-9, probs.sum()
    expected = probs / probs.sum() * counts.sum()
    obs_cells, exp_cells, o, e = [], [], 0.0, 0.0
    for c, x in zip(counts, expected, strict=True):
        o, e = o + c, e + x
        if e >= 5:
            obs_cells.append(o)
            exp_cells.append(e)
            o, e = 0.0, 0.0
    obs_cells[-1] += o
    exp_cells[-1] += e
    return float(stats.chisquare(obs_cells, exp_cells).pvalue)


def _probs_over(rv: bl.RandomVariable, support: Tensor) -> np.ndarray:
    """P(value = s) for each s in ``support`` (values of one example), from log_prob."""
    batch_dims = len(rv.distribution.batch_shape)
    s = support.reshape((len(support),) + (1,) * batch_dims + support.shape[1:])
    return rv.log_prob(s)[:, 0].exp().double().numpy()


GOF_CASES = [s.id for s in SPECS]


@pytest.mark.parametrize("case", GOF_CASES)
@torch.no_grad()
def test_draws_fit_the_distribution(case: str) -> None:
    """The layer's values for ``N_GOF`` identical inputs against the family: KS for
    continuous families (scipy's cdf, whose density test 2 matched to ``log_prob``;
    for the multivariate normal, the squared Mahalanobis distance against chi²(D)),
    chi-square for discrete ones with cell probabilities ``exp(log_prob)`` (cells
    merged until each expects >= 5 draws; a tail cell for unbounded counts). Each
    test at level ALPHA / len(GOF_CASES), n = N_GOF.
    """
    spec = next(s for s in SPECS if s.id == case)
    level = ALPHA / len(GOF_CASES)
    torch.manual_seed(1)
    width = {"categorical": 4, "vector": 3, "mixture": 3 * K}.get(spec.kind, 1)
    x1 = torch.randn(1, width, dtype=torch.float64)
    if spec.kind == "mixture":  # spread the components: logits, locs, scale_raw
        x1 = torch.tensor([[0.3, -0.2, 0.0, -0.6, 0.1, 0.7, -1.5, -2.0, -1.0]], dtype=torch.float64)
    layer = spec.make(None, dtype=torch.float64)
    layer(x1)  # materialise, then give the per-feature parameters generic values
    for p in layer.parameters():
        p.add_(0.3 * torch.randn_like(p))
    x = x1.expand(N_GOF, width)
    torch.manual_seed(2)
    value = layer(x).value
    one = layer(x1)  # the same distribution, one example: for the cell probabilities
    params = {k: v[0] for k, v in documented_params(spec, layer, x1).items()}
    if case.endswith("256"):
        centers = torch.linspace(-1, 1, 256, dtype=torch.float64)
        idx = torch.round((value + 1) * 127.5).long()
        counts = np.bincount(idx.numpy(), minlength=256)
        p_value = _chisquare_pvalue(counts, _probs_over(one, centers))
    elif spec.kind == "mixture":
        comp = (stats.norm if case == "MixtureNormal" else stats.logistic)(
            params["loc"], params["scale"]
        )
        w = special.softmax(params["logits"])
        p_value = stats.kstest(value.numpy(), lambda t: (w * comp.cdf(t[:, None])).sum(-1)).pvalue
    elif case == "MultivariateNormalTriL":
        white = np.linalg.solve(params["scale_tril"], (value.numpy() - params["loc"]).T)
        p_value = stats.kstest((white**2).sum(0), stats.chi2(width).cdf).pvalue
    elif spec.rsample:  # the continuous elementwise families
        frozen = SCIPY[case](params)
        p_value = stats.kstest(value[:, 0].numpy(), frozen.cdf).pvalue
    else:
        if spec.kind == "categorical":
            support = torch.arange(width)
            observed = value.long()
        elif spec.kind == "vector":  # one-hot
            support = torch.eye(width, dtype=torch.float64)
            observed = value.argmax(-1)
        else:  # Bernoulli, Poisson, NegativeBinomial: values of the one feature
            top = 1 if case == "Bernoulli" else int(value.max()) + 1
            support = torch.arange(top + 1, dtype=torch.float64)[:, None]
            observed = value[:, 0].long()
        probs = _probs_over(one, support)
        counts = np.bincount(observed.numpy(), minlength=len(support))
        if spec.kind == "elementwise" and case != "Bernoulli":  # unbounded counts: a tail cell
            probs, counts = np.append(probs, max(0.0, 1 - probs.sum())), np.append(counts, 0)
        p_value = _chisquare_pvalue(counts, probs)
    assert p_value > level, (case, p_value)


# ================================================ discretized logistic mixture
DISC_PARAMS = [
    # logits, locs, scales: one inside, one past the upper edge (heavy last bin), one narrow
    ([0.2, -0.5, 1.0], [0.1, 1.4, -0.93], [0.3, 0.2, 0.004]),
    ([0.0, 0.0, 0.0], [-1.2, 0.0, 0.98], [0.05, 1.5, 0.01]),
]


@pytest.mark.parametrize("param_set", range(len(DISC_PARAMS)))
def test_discretized_bins_match_quad_of_the_continuous_density(param_set: int) -> None:
    logits, locs, scales = (torch.tensor(v, dtype=torch.float64) for v in DISC_PARAMS[param_set])
    n = 256
    d = lg.DiscretizedLogisticMixture(logits, locs, scales, num_bins=n)
    probs = d.bin_probs().numpy()
    assert probs.shape == (n,)
    assert abs(probs.sum() - 1) < 1e-12
    w = special.softmax(logits.numpy())
    comp = stats.logistic(locs.numpy(), scales.numpy())

    def pdf(t: float) -> float:
        return float((w * comp.pdf(t)).sum())

    width = 2 / (n - 1)
    centers = np.linspace(-1, 1, n)
    quad = np.empty(n)
    for i, c in enumerate(centers):
        lo = -np.inf if i == 0 else c - width / 2
        hi = np.inf if i == n - 1 else c + width / 2
        points = [p for p in locs.numpy() if lo < p < hi] or None
        if np.isinf(lo) or np.isinf(hi):
            quad[i] = integrate.quad(pdf, lo, hi, epsabs=1e-14, epsrel=1e-11)[0]
        else:
            quad[i] = integrate.quad(pdf, lo, hi, epsabs=1e-14, epsrel=1e-11, points=points)[0]
    np.testing.assert_allclose(probs, quad, rtol=1e-8, atol=1e-13)
    assert probs[0] == pytest.approx(quad[0], rel=1e-9) and probs[-1] == pytest.approx(quad[-1])
    # log_prob at the centres is the log of the same probabilities
    np.testing.assert_allclose(d.log_prob(torch.from_numpy(centers)).exp().numpy(), probs)


def test_discretized_probabilities_sum_to_one_in_float32_and_stay_finite() -> None:
    torch.manual_seed(3)
    shape = (64, 3, K)
    logits = 3 * torch.randn(shape)
    locs = (3 * torch.randn(shape)).requires_grad_()  # many far outside [-1, 1]
    scales = torch.exp(torch.empty(shape).uniform_(-7, 2)).requires_grad_()  # 1e-3 .. 7
    d = lg.DiscretizedLogisticMixture(logits, locs, scales, num_bins=256)
    probs = d.bin_probs()
    assert probs.dtype == torch.float32
    assert (probs.sum(-1) - 1).abs().max() < 1e-5
    lp = d.log_prob(d.bin_centers.reshape(256, 1, 1).expand(256, 64, 3))
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(locs.grad).all() and torch.isfinite(scales.grad).all()


def test_discretized_samples_round_to_the_nearest_bin_centre() -> None:
    w = 2 / 255
    c = -1 + 100 * w
    locs = torch.tensor([[c + 0.4 * w], [c + 0.6 * w], [-3.0], [3.0]], dtype=torch.float64)
    d = lg.DiscretizedLogisticMixture(torch.zeros(4, 1), locs, torch.full((4, 1), 1e-6))
    samples = d.sample((100,))
    expected = torch.tensor([c, c + w, -1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(samples, expected.expand(100, 4), rtol=0, atol=1e-12)


def test_log_sigmoid_diff_is_accurate_and_differentiable() -> None:
    pairs = [(30.0, 30.01), (-40.0, -39.99), (-5.0, 5.0), (100.0, 100.5), (-3.0, -2.9999)]

    def exact(a: float, b: float) -> float:
        with mpmath.workdps(50):
            sig = lambda t: 1 / (1 + mpmath.exp(-mpmath.mpf(t)))  # noqa: E731
            return float(mpmath.log(sig(b) - sig(a)))

    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        a = torch.tensor([p[0] for p in pairs], dtype=dtype)
        b = torch.tensor([p[1] for p in pairs], dtype=dtype)
        got = lg.log_sigmoid_diff(a, b).double().numpy()
        ref = [exact(float(s), float(t)) for s, t in zip(a, b, strict=True)]
        np.testing.assert_allclose(got, ref, rtol=rtol)
    a = torch.randn(6, dtype=torch.float64, requires_grad=True)
    gap = torch.rand(6, dtype=torch.float64).add(0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda s, g: lg.log_sigmoid_diff(s, s + g), (a, gap))


def test_log_sigmoid_diff_keeps_its_precision_on_narrow_intervals() -> None:
    """The difference of two rounded ``logsigmoid`` values lost about ``eps / (b - a)`` of
    relative precision: in float32, 0.26 nats at ``b - a = 2⁻²⁰`` (a bin 2/255 wide under a
    scale of 8e3) and the log mass of a scale-1e6 logistic off by 68 nats; the gradient
    must stay finite there."""

    def exact(a: float, b: float) -> float:
        with mpmath.workdps(50):
            sig = lambda t: 1 / (1 + mpmath.exp(-mpmath.mpf(t)))  # noqa: E731
            return float(mpmath.log(sig(b) - sig(a)))

    a = torch.arange(-80, 81, 8, dtype=torch.float32) / 16  # a + width exact in float32
    for width in (2.0**-20, 2.0**-12, 2.0**-4):
        lo, hi = a.clone().requires_grad_(), (a + width).requires_grad_()
        got = lg.log_sigmoid_diff(lo, hi)
        ref = [exact(s, t) for s, t in zip(a.tolist(), (a + width).tolist(), strict=True)]
        np.testing.assert_allclose(got.detach().double().numpy(), ref, rtol=0, atol=2e-5)
        got.sum().backward()
        assert torch.isfinite(lo.grad).all() and torch.isfinite(hi.grad).all()
    wide = lg.DiscretizedLogisticMixture(torch.zeros(1), torch.zeros(1), torch.full((1,), 1e6))
    centre, w = 2 * 100 / 255 - 1, 2 / 255
    assert abs(float(wide.log_prob(torch.tensor(centre))) - exact(-w / 2e6, w / 2e6)) < 1e-4


def test_discretized_grid_and_arguments_are_checked() -> None:
    d = lg.DiscretizedLogisticMixture(torch.zeros(2, K), torch.zeros(2, K), torch.ones(2, K))
    with pytest.raises(ValueError, match=r"on the grid -1\.0 \+ i \* 0\.00784.*got 0\.001"):
        d.log_prob(torch.tensor([0.001, 0.0]))
    with pytest.raises(ValueError, match="on the grid"):
        d.log_prob(torch.tensor([1.5, 0.0]))
    with pytest.raises(ValueError, match="`num_bins` to be an int >= 2, got 1"):
        lg.DiscretizedLogisticMixture(torch.zeros(K), torch.zeros(K), torch.ones(K), num_bins=1)
    with pytest.raises(ValueError, match="`low` < `high`"):
        lg.DiscretizedLogisticMixture(torch.zeros(K), torch.zeros(K), torch.ones(K), low=1.0)
    raw = lg.DiscretizedLogisticMixture(
        torch.zeros(K), torch.zeros(K), torch.ones(K), num_bins=256, low=0.0, high=255.0
    )
    assert raw.bin_width == 1.0 and float(raw.sample((50,)).frac().abs().max()) == 0.0


# ==================================================================== gradients
@parametrize_specs
@parametrize_modes
def test_gradients_reach_every_parameter(spec: Spec, units: int | None) -> None:
    """Through the value (``rsample``) where the family has it, else through ``log_prob``."""
    layer = build(spec, units)
    x = torch.randn(8, input_size(spec, units), dtype=torch.float64, requires_grad=True)
    rv = layer(x)
    if spec.rsample:
        assert rv.value.requires_grad
        (rv.value * torch.randn_like(rv.value)).sum().backward()
    else:  # values carry no gradient: they come from sample()
        assert not rv.value.requires_grad
        rv.log_prob(rv.value).sum().backward()
    named = dict(layer.named_parameters()) | {"input": x}
    for name, p in named.items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@parametrize_specs
def test_rsample_without_reparameterisation_raises_a_clear_error(spec: Spec) -> None:
    rv = build(spec, None)(torch.randn(2, input_size(spec, None), dtype=torch.float64))
    assert rv.distribution.has_rsample is spec.rsample
    if spec.rsample:
        assert rv.distribution.rsample().requires_grad
        return
    with pytest.raises(NotImplementedError, match=r"has no reparameterised sample.*\.sample\(\)"):
        rv.distribution.rsample()


# ==================================================================== bad input
@parametrize_specs
@parametrize_modes
def test_wrong_input_size_raises(spec: Spec, units: int | None) -> None:
    layer = build(spec, units)
    size = input_size(spec, units)
    name = type(layer).__name__
    pattern = rf"{name} expected input of shape \(\*, {size}\).*\(2, {size + 1}\)"
    with pytest.raises(ValueError, match=pattern):
        layer(torch.randn(2, size + 1, dtype=torch.float64))
    pattern = rf"{name} expected `input` of a floating-point dtype.*, got torch.int64"
    with pytest.raises(TypeError, match=pattern):
        layer(torch.ones(2, size, dtype=torch.long))
    with pytest.raises(TypeError, match=f"{name} expected a Tensor input, got list"):
        layer([[0.0] * size])


def test_lazy_layer_checks_inputs_after_its_first_call() -> None:
    layer = Normal()
    layer(torch.randn(3, 4))
    assert layer.scale_rho.shape == (4,)
    with pytest.raises(ValueError, match=r"Normal expected input of shape \(\*, 4\).*got \(3, 5\)"):
        layer(torch.randn(3, 5))
    projected = Bernoulli(2)
    projected(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"\(\*, 4\) \(in_features\), got \(3, 6\)"):
        projected(torch.randn(3, 6))


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: MixtureNormal(2, 0), ValueError, "MixtureNormal expected `num_components` >= 1"),
        (lambda: MixtureLogistic(2, 1.5), TypeError, "`num_components` to be an int, got float"),
        (lambda: Normal(0), ValueError, "Normal expected `units` >= 1, got 0"),
        (lambda: Categorical(2.0), TypeError, "Categorical expected `units` to be an int"),
        (lambda: Normal(min_scale=-1.0), ValueError, "`min_scale` to be a finite number >= 0"),
        (lambda: OneHotCategorical(event_dims=0), ValueError, r"`event_dims` >= 1 .*got 0"),
        (lambda: MixtureLogistic(2, 3, num_bins=1), ValueError, "`num_bins` >= 2 or None"),
        (lambda: MixtureLogistic(2, 3, low=1.0, high=0.0), ValueError, "numbers `low` < `high`"),
    ],
    ids=["components0", "components_float", "units0", "units_float", "min_scale",
         "event_dims", "num_bins", "low_high"],
)  # fmt: skip
def test_bad_hyperparameters_raise(make: Callable[[], Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make()


def test_event_dims_larger_than_the_value_raises() -> None:
    with pytest.raises(ValueError, match=r"Normal has event_dims=3 but its value has only 2"):
        Normal(event_dims=3)(torch.randn(2, 4))


def test_categorical_log_prob_rejects_non_integer_and_out_of_range_targets() -> None:
    rv = Categorical(5)(torch.randn(3, 4))
    pattern = r"Categorical.log_prob expected integer class indices in \[0, 5\).*0\.5"
    with pytest.raises(ValueError, match=pattern):
        rv.log_prob(torch.tensor([0.0, 0.5, 2.0]))
    with pytest.raises(ValueError, match="support"):
        rv.log_prob(torch.tensor([0, 5, 1]))
    # integer-valued floats are class indices
    torch.testing.assert_close(
        rv.log_prob(torch.tensor([0.0, 4.0, 2.0])), rv.log_prob(torch.tensor([0, 4, 2]))
    )


# ====================================================================== shapes
@parametrize_specs
@parametrize_modes
@pytest.mark.parametrize("batch", [(), (5,), (2, 3)], ids=str)
def test_shapes(spec: Spec, units: int | None, batch: tuple[int, ...]) -> None:
    layer = spec.make(units)  # lazy
    size = input_size(spec, units)
    rv = layer(torch.randn(*batch, size))
    consumes = spec.kind == "categorical" or (spec.kind == "mixture" and units is None)
    features = () if consumes else ((units or size),)
    assert rv.shape == batch + features
    assert rv.log_prob(rv.value).shape == batch
    if units is not None:
        per_unit = {"Multivariate": None, "Mixture": 3 * K}
        count = next((v for k, v in per_unit.items() if spec.id.startswith(k)), len(spec.names))
        expected = units + units * (units + 1) // 2 if count is None else count * units
        assert isinstance(layer.projection, nn.Linear)
        assert layer.projection.out_features == expected
        assert layer.projection.in_features == size


def test_event_dims_choose_what_log_prob_reduces() -> None:
    x = torch.randn(2, 3, 4, 5)
    assert Normal(event_dims=0)(x).log_prob(x).shape == (2, 3, 4, 5)
    assert Normal(event_dims=3)(x).log_prob(x).shape == (2,)
    assert Categorical(event_dims=2)(x).log_prob(torch.zeros(2, 3, 4)).shape == (2,)
    assert MultivariateNormalTriL(event_dims=2)(x).log_prob(x).shape == (2, 3)
    assert isinstance(Normal(event_dims=0)(x).distribution, torch.distributions.Normal)


# ======================================================================= state
@parametrize_specs
@parametrize_modes
def test_state_dict_round_trip_with_weights_only(spec: Spec, units: int | None) -> None:
    size = input_size(spec, units)
    src = spec.make(units)
    x = torch.randn(4, size)
    src(x)  # materialise the lazy parameters
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.5 * torch.randn_like(p))
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    dst = spec.make(units)  # fresh and lazy: loading sizes its parameters
    dst.load_state_dict(torch.load(buffer, weights_only=True))
    torch.manual_seed(7)
    expected = src(x)
    torch.manual_seed(7)
    got = dst(x)
    torch.testing.assert_close(got.value, expected.value, rtol=0, atol=0)
    torch.testing.assert_close(got.log_prob(expected.value), expected.log_prob(expected.value))


def test_in_features_builds_eagerly_with_device_and_dtype() -> None:
    layer = MixtureLogistic(3, 2, in_features=8, device="meta", dtype=torch.float64)
    assert [(p.device.type, p.dtype, tuple(p.shape)) for p in layer.parameters()] == [
        ("meta", torch.float64, (18, 8)),
        ("meta", torch.float64, (18,)),
    ]
    normal = Normal(in_features=6, dtype=torch.float64)
    assert normal.scale_rho.shape == (6,) and normal.scale_rho.dtype == torch.float64
    scale = F.softplus(normal.scale_rho) + normal.min_scale
    torch.testing.assert_close(scale, torch.ones(6, dtype=torch.float64))


# ================================================================= composition
def test_last_layer_of_sequential_gives_the_likelihood() -> None:
    """Footnote 3: ``model(x).distribution.log_prob(y)`` replaces a squared error."""
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), Normal(units=1, name="y"))
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    rv = model(x)
    assert isinstance(rv, bl.RandomVariable) and rv.name == "y"
    nll = -rv.distribution.log_prob(y)
    assert nll.shape == (32,)
    mid = model[:2](x)
    proj = model[2].projection
    loc, scale_raw = F.linear(mid, proj.weight, proj.bias).unbind(-1)
    ref = torch.distributions.Normal(loc, F.softplus(scale_raw) + 1e-3).log_prob(y[:, 0])
    torch.testing.assert_close(-nll, ref)
    nll.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_figure7_encoder_decoder_with_gradients_through_the_code() -> None:
    """An encoder ending in ``Normal`` feeds a decoder ending in ``Categorical``; the
    reconstruction term alone sends gradients into the encoder through ``rsample``."""
    levels = 17
    encoder = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1),
        Normal(name="latent_code", event_dims=3),
    )  # fmt: skip
    decoder = nn.Sequential(
        nn.ConvTranspose2d(4, 8, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, levels, 3, padding=1), nn.Unflatten(1, (1, levels)),
        Rearrange(), Categorical(name="image"),
    )  # fmt: skip
    features = torch.randint(0, levels, (6, 1, 8, 8))
    encoding = encoder(features.float() / (levels - 1))
    assert encoding.shape == (6, 4, 4, 4) and encoding.name == "latent_code"
    nll = -decoder(encoding).distribution.log_prob(features).sum((1, 2, 3))
    kl = encoding.kl_divergence(bl.Normal(0.0, 1.0))
    assert nll.shape == kl.shape == (6,)
    base = encoding.distribution.base_dist
    ref_kl = torch.distributions.kl_divergence(base, torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(kl, ref_kl.sum((1, 2, 3)))
    torch.testing.assert_close(encoding.distribution.kl_divergence(bl.Normal(0.0, 1.0)), kl)
    nll.mean().backward(retain_graph=True)
    for name, p in list(encoder.named_parameters()) + list(decoder.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    (nll + kl).mean().backward()


class Rearrange(nn.Module):
    """(B, C, L, H, W) logits → (B, C, H, W, L) for a Categorical over the last dim."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 1, 3, 4, 2)


def test_monte_carlo_predictive_over_a_bayesian_model_with_a_stochastic_output() -> None:
    model = nn.Sequential(bl.layers.LinearFlipout(3, 8), nn.ReLU(), Normal(units=2))
    x = torch.randn(5, 3)
    pred = bl.predict(model, x, num_samples=4)
    assert pred.samples.shape == (4, 5, 2)
    loop = bl.predict(model, x, num_samples=4, vectorized=False)
    assert loop.samples.shape == (4, 5, 2)


def test_random_variable_input_acts_as_its_value_with_gradients() -> None:
    first, second = Normal(3), Normal()
    x = torch.randn(4, 2)
    z = first(x)
    out = second(z)
    torch.testing.assert_close(out.distribution.loc, z.value)
    out.value.sum().backward()
    assert first.projection.weight.grad is not None
    assert first.projection.weight.grad.abs().sum() > 0


# ================================================================ KL divergence
def test_kl_against_priors() -> None:
    rv = Normal(3)(torch.randn(5, 2))
    base = rv.distribution.base_dist
    tn = torch.distributions
    scalar = tn.kl_divergence(base, tn.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(rv.kl_divergence(bl.Normal(0.0, 1.0)), scalar)
    # per-feature prior, a matching Independent prior, and the distribution method
    prior = tn.Normal(torch.zeros(3), torch.full((3,), 2.0))
    expected = tn.kl_divergence(base, prior).sum(-1)
    torch.testing.assert_close(rv.kl_divergence(prior), expected)
    torch.testing.assert_close(rv.kl_divergence(tn.Independent(prior, 1)), expected)
    torch.testing.assert_close(rv.distribution.kl_divergence(bl.Normal(0.0, 2.0)), expected)
    # against itself: zero; between two layers' outputs (IndependentEvents on both sides)
    torch.testing.assert_close(rv.kl_divergence(rv), torch.zeros(5))
    other = Normal(3)(torch.randn(5, 2))
    torch.testing.assert_close(
        rv.kl_divergence(other), tn.kl_divergence(base, other.distribution.base_dist).sum(-1)
    )
    with pytest.raises(NotImplementedError, match="must reinterpret at most 1 dims"):
        rv.kl_divergence(tn.Independent(tn.Normal(torch.zeros(5, 3), 1.0), 2))
    with pytest.raises(TypeError, match="expected a RandomVariable or Distribution, got float"):
        rv.distribution.kl_divergence(1.0)  # type: ignore[arg-type]


def test_independent_events_reads_the_base_family() -> None:
    rv = Bernoulli()(torch.zeros(2, 3))
    assert isinstance(rv.distribution, od.IndependentEvents)
    torch.testing.assert_close(rv.distribution.probs, torch.full((2, 3), 0.5))
    with pytest.raises(AttributeError, match="and its base Bernoulli.*'loc'"):
        rv.distribution.loc  # noqa: B018
    assert rv.distribution.expand((4, 2)).batch_shape == (4, 2)
    assert math.isclose(float(rv.log_prob(torch.ones(2, 3))[0]), 3 * math.log(0.5), rel_tol=1e-6)


# ============================================ targets that would broadcast the batch
def _column_layer(spec: Spec, units: int | None) -> tuple[StochasticOutput, Tensor]:
    """A layer whose value is ``(B, 1)`` (``units=1``) or ``(B,)`` (class/mixture
    parameters in the input), and an input of B = 4 examples."""
    layer = build(spec, units)
    return layer, torch.randn(4, input_size(spec, units), dtype=torch.float64)


COLUMN_MODES = [
    (spec, units)
    for spec in SPECS
    for units in ([1, None] if spec.kind in ("categorical", "mixture") else [1])
]


@pytest.mark.parametrize(
    ("spec", "units"), COLUMN_MODES, ids=[f"{s.id}-{u}" for s, u in COLUMN_MODES]
)
@torch.no_grad()
def test_a_target_that_would_broadcast_against_the_batch_is_refused(
    spec: Spec, units: int | None
) -> None:
    """``(B,)`` targets for ``(B, 1)`` values and ``(B, 1)`` targets for ``(B,)`` values
    broadcast to ``(B, B)``: every output layer refuses them, naming both shapes."""
    layer, x = _column_layer(spec, units)
    rv = layer(x)
    y = rv.distribution.sample()  # (B, 1) or (B,)
    wrong = y.squeeze(-1) if y.shape[-1] == 1 and y.dim() > 1 else y.unsqueeze(-1)
    expected = tuple(y.shape)
    pattern = (
        rf"target of shape .*{re.escape(str(expected))}.*got {re.escape(str(tuple(wrong.shape)))}"
    )
    for log_prob in (rv.log_prob, rv.distribution.log_prob):
        with pytest.raises(ValueError, match=pattern):
            log_prob(wrong)
    # the right shape, with sample dimensions, and one target for every example still work
    assert rv.log_prob(y).shape == (4,)
    assert rv.log_prob(torch.stack([y, y])).shape == (2, 4)
    torch.testing.assert_close(rv.log_prob(y[:1]), rv.log_prob(y[:1].expand_as(y)))


def test_a_column_target_for_a_one_unit_normal_is_refused_not_summed_over_the_batch() -> None:
    """The reported case: ``Normal(units=1)`` with a ``(B,)`` target gave the sum of a
    ``(B, B)`` broadcast (mean -104.7 where -2.10 is right)."""
    torch.manual_seed(0)
    rv = Normal(units=1)(torch.randn(32, 3))
    y = torch.randn(32)
    with pytest.raises(ValueError, match=r"y\.unsqueeze\(-1\)"):
        rv.log_prob(y)
    good = rv.log_prob(y.unsqueeze(-1))
    d = rv.distribution.base_dist
    ref = stats.norm(d.loc[:, 0].detach().numpy(), d.scale[:, 0].detach().numpy()).logpdf(y)
    np.testing.assert_allclose(good.detach().numpy(), ref, rtol=1e-5)
    labels = torch.randint(0, 4, (32, 1))
    with pytest.raises(ValueError, match=r"labels\.squeeze\(-1\)|\.squeeze\(-1\)"):
        Categorical(4)(torch.randn(32, 3)).log_prob(labels)


# ============================================================== empty batches
@parametrize_specs
@parametrize_modes
def test_an_empty_batch_gives_an_empty_result(spec: Spec, units: int | None) -> None:
    layer = build(spec, units)
    rv = layer(torch.randn(0, input_size(spec, units), dtype=torch.float64))
    full = layer(torch.randn(2, input_size(spec, units), dtype=torch.float64))
    assert rv.shape == (0,) + full.shape[1:]
    lp = rv.log_prob(rv.value)
    assert lp.shape == (0,) and lp.dtype == full.log_prob(full.value).dtype
    assert rv.mean.shape == rv.shape and rv.sample((3,)).shape == (3, *rv.shape)


# ======================================================= hyperparameters and dtypes
@parametrize_specs
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, "0.1", True], ids=str)
def test_min_scale_must_be_a_finite_non_negative_number(spec: Spec, bad: Any) -> None:
    with pytest.raises(
        (ValueError, TypeError), match=rf"expected `min_scale` .*got {re.escape(repr(bad))}"
    ):
        spec.make(2, min_scale=bad)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Normal(min_scale=1.0), ValueError, r"`min_scale` below 1.*per-feature.*got 1.0"),
        (lambda: StudentT(min_scale=2.0), ValueError, r"`min_scale` below 1.*got 2.0"),
        (lambda: MultivariateNormalTriL(min_scale=1.5), ValueError, "`min_scale` below 1"),
        (lambda: Normal(2, dtype=torch.int64), TypeError, r"expected `dtype` .*float.*int64"),
        (lambda: Poisson(validate_args="yes"), TypeError, r"Poisson expected `validate_args`.*yes"),
        (lambda: MixtureLogistic(2, 3, num_bins=8, low=float("nan")), ValueError, "`low` < `high`"),
        (lambda: MixtureLogistic(2, 3, num_bins=8, high=float("inf")), ValueError, "finite"),
        (lambda: Normal(event_dims=-1), ValueError, r"`event_dims` >= 0"),
    ],
    ids=["min_scale_init", "min_scale_df", "min_scale_tril", "dtype", "validate_args",
         "low_nan", "high_inf", "event_dims"],
)  # fmt: skip
def test_hyperparameters_that_would_make_nan_later_raise(
    make: Callable[[], Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        make()


@parametrize_specs
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_an_input_of_another_dtype_than_the_parameters_raises(
    spec: Spec, dtype: torch.dtype
) -> None:
    name = type(spec.make(None)).__name__
    for layer in (spec.make(2, in_features=IN), spec.make(2)):  # eager and lazy projection
        pattern = rf"{name} expected `input` of dtype torch.float32.*got {dtype}"
        with pytest.raises(TypeError, match=pattern):
            layer(torch.randn(3, IN, dtype=dtype))
    with pytest.raises(
        TypeError, match=rf"{name} expected `input` of a floating-point dtype.*int64"
    ):
        spec.make(2)(torch.ones(3, IN, dtype=torch.long))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast decides the dtypes itself
        assert spec.make(2)(torch.randn(3, IN)).shape[0] == 3


# ================================================================ names and tracing
@parametrize_specs
@torch.no_grad()
def test_a_named_output_is_conditioned_recorded_and_scored(spec: Spec) -> None:
    layer = build(spec, 2, name="y")
    x = torch.randn(3, IN, dtype=torch.float64)
    given = layer(x).distribution.sample()
    with bl.condition({"y": given}):
        rv = layer(x)
    assert rv.name == "y" and torch.equal(rv.value, given)
    with bl.tape() as tape:
        out = layer(x)
    assert list(tape) == ["y"] and tape["y"] is out

    def program(inputs: Tensor) -> bl.RandomVariable:
        return layer(inputs)

    log_joint = bl.make_log_joint_fn(program)(x, y=given)
    torch.testing.assert_close(log_joint, layer(x).log_prob(given).sum())
    unnamed = build(spec, 2)
    with bl.tape() as tape:
        unnamed(x)
    assert not tape


# ============================================================ counts at large rates
def _poisson_cell_pvalue(draws: np.ndarray, rate: float) -> float:
    """Chi-square of the draws in cells λ + √λ·[-3, -2.5, ..., 3] (plus the two tails),
    cell probabilities from scipy's Poisson cdf."""
    edges = np.floor(rate + math.sqrt(rate) * np.arange(-3.0, 3.01, 0.5))
    cdf = stats.poisson(rate).cdf(edges)
    probs = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    counts = np.bincount(np.searchsorted(edges, draws, side="left"), minlength=len(probs))
    return _chisquare_pvalue(counts, probs)


# rates just under and over the switch to the approximation, over CUDA's 32-bit counts,
# and past torch's int64 overflow (log-rate 45); k = 4 tests at level ALPHA / 4, n = 20 000
LARGE_RATES = [0.99 * 2**30, 1.01 * 2**30, 2.0**33, math.exp(45.0)]


@pytest.mark.parametrize("rate", LARGE_RATES, ids=lambda r: f"{r:.3g}")
@torch.no_grad()
def test_poisson_counts_at_large_rates_follow_the_poisson_law(rate: float) -> None:
    torch.manual_seed(5)
    layer = Poisson(dtype=torch.float64)
    draws = layer(torch.full((20_000, 1), math.log(rate), dtype=torch.float64)).value[:, 0]
    assert bool((draws >= 0).all()) and bool(torch.isfinite(draws).all())
    assert bool((draws == draws.round()).all())
    exact_rate = math.exp(math.log(rate))  # the layer's rate, to the last bit
    assert _poisson_cell_pvalue(draws.numpy(), exact_rate) > ALPHA / len(LARGE_RATES)


@torch.no_grad()
def test_negative_binomial_counts_at_large_rates_are_correct() -> None:
    """Gamma(total_count=1)-mixed Poisson at mean e^45: a geometric law, P(X >= m q) →
    exp(-q) for the mean m; checked at q = 1 with n = 20 000 (5 standard errors)."""
    torch.manual_seed(6)
    layer = NegativeBinomial(in_features=1, dtype=torch.float64, min_scale=0.0)
    with torch.no_grad():
        layer.total_count_rho.fill_(inverse_softplus(1.0))
    rv = layer(torch.full((20_000, 1), 45.0, dtype=torch.float64))
    draws, mean = rv.value[:, 0], math.exp(45.0)
    assert bool((draws >= 0).all()) and bool(torch.isfinite(draws).all())
    tail = float((draws >= mean).double().mean())
    p = math.exp(-1.0)
    assert abs(tail - p) < 5 * math.sqrt(p * (1 - p) / 20_000), tail


@torch.no_grad()
def test_negative_binomial_mean_follows_torch_convention() -> None:
    """Mean ``total_count · p / (1 - p)`` with ``p = sigmoid(logits)`` (successes before
    ``total_count`` failures): the layer's mean in closed form, and the mean of 40 000
    draws within 5 standard errors (variance ``mean / (1 - p)``)."""
    torch.manual_seed(7)
    layer = NegativeBinomial(in_features=2, dtype=torch.float64)
    with torch.no_grad():
        layer.total_count_rho.copy_(torch.tensor([0.8, 2.0], dtype=torch.float64))
    logits = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    rv = layer(logits)
    total_count = F.softplus(layer.total_count_rho) + layer.min_scale
    p = torch.sigmoid(logits)
    mean = total_count * p / (1 - p)
    torch.testing.assert_close(rv.distribution.mean, mean)
    torch.testing.assert_close(rv.mean, mean)
    ref = stats.nbinom(total_count.numpy(), 1 - p.numpy())  # scipy counts failures: 1 - p
    np.testing.assert_allclose(mean.numpy(), ref.mean(), rtol=1e-12)
    n = 40_000
    draws = layer(logits.expand(n, 2)).value
    se = (mean / (1 - p) / n).sqrt()
    assert bool(((draws.mean(0) - mean).abs() < 5 * se).all()), (draws.mean(0), mean)


@parametrize_specs
def test_a_non_finite_input_raises_naming_the_layer_or_gives_a_result(spec: Spec) -> None:
    layer = build(spec, None)
    x = torch.randn(4, input_size(spec, None), dtype=torch.float64)
    x[1, 0] = float("nan")
    try:
        rv = layer(x)
    except ValueError as error:
        assert str(error).startswith(f"{type(layer).__name__} got distribution parameters")
    else:
        assert rv.shape[0] == 4


@pytest.mark.parametrize("units", [None, 2], ids=["input_params", "units"])
def test_a_failed_first_call_leaves_a_lazy_layer_unbuilt(units: int | None) -> None:
    layer = Normal(units)
    x = torch.randn(3, 4)
    x[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"Normal got a non-finite input .*stays unbuilt"):
        layer(x)
    assert all(isinstance(p, nn.UninitializedParameter) for p in layer.parameters())
    assert layer(torch.randn(3, 4)).shape == (3, units or 4)
