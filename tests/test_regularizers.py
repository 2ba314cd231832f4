"""Tests for ``bayesian_layers.regularizers``: closed forms against torch and Monte
Carlo, Monte Carlo estimators against numerical integration, priors in state_dict."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from stats_util import z_bonferroni
from torch.distributions import (
    AffineTransform,
    Distribution,
    HalfCauchy,
    Laplace,
    LogNormal,
    Normal,
    StudentT,
    TransformedDistribution,
    kl_divergence,
)

import bayesian_layers as bl
from bayesian_layers.regularizers import (
    REGULARIZERS,
    HalfCauchyKLDivergence,
    LogUniformKLDivergence,
    MonteCarloKLDivergence,
    NormalKLDivergence,
    Regularizer,
    get_regularizer,
    softplus_normal_kl_scalar_prior,
)


def shifted_half_cauchy(loc: float, scale: float) -> Distribution:
    base = HalfCauchy(torch.tensor(scale, dtype=torch.float64))
    return TransformedDistribution(base, [AffineTransform(torch.tensor(loc).double(), 1.0)])


def mc_average(
    reg: Regularizer, q: Distribution, groups: int = 200, per_group: int = 500
) -> tuple[float, float]:
    """The regularizer's single-value estimate averaged over many draws of q.

    Each call sees ``per_group`` draws (a value with ``sample_shape=(per_group,)``,
    which the regularizer sums); returns the mean per-draw estimate and its
    standard error from the spread of the ``groups`` group means.
    """
    estimates = []
    for _ in range(groups):
        value = q.sample((per_group,))
        rv = bl.RandomVariable(q, value=value, sample_shape=(per_group,))
        estimates.append(float(reg(rv)) / per_group)
    est = np.asarray(estimates)
    return float(est.mean()), float(est.std(ddof=1) / math.sqrt(groups))


# ============================================================ NormalKLDivergence
@pytest.mark.parametrize(
    "prior",
    [
        (0.0, 1.0),
        (0.3, 2.5),
        (torch.tensor([[0.5], [-1.0]]), torch.tensor([[0.5], [2.0]])),  # (out, 1) broadcast
        (torch.randn(2, 3), torch.rand(2, 3) + 0.5),  # elementwise
        (torch.tensor([0.2]), torch.tensor([1.5])),  # one element: the scalar fast path
    ],
    ids=["standard", "scalar", "per_row", "elementwise", "one_element"],
)
def test_normal_kl_closed_form_equals_torch(prior: tuple) -> None:
    loc, scale = torch.randn(2, 3), torch.rand(2, 3) + 0.1
    q = Normal(loc, scale)
    reg = NormalKLDivergence(*prior)
    expected = kl_divergence(q, Normal(*[torch.as_tensor(p) for p in prior])).sum()
    torch.testing.assert_close(reg(q), expected)
    torch.testing.assert_close(reg(bl.RandomVariable(q)), expected)  # a random variable too
    torch.testing.assert_close(reg.normal_kl(loc, scale), expected)


@pytest.mark.parametrize("prior", [(0.0, 1.0), (torch.tensor([0.5, -1.0, 0.0]), 2.0)])
def test_normal_kl_closed_form_equals_monte_carlo(prior: tuple) -> None:
    """Closed form vs the mean of log q(w) - log p(w) over M = 100 000 draws (float64).

    One check: half-width z(1 - α/2)·sd/√M, with the sample sd of the per-draw sums.
    """
    q = Normal(torch.tensor([0.3, -0.2, 1.0]).double(), torch.tensor([0.5, 1.2, 0.8]).double())
    reg = NormalKLDivergence(*prior).double()
    p = reg.prior()
    w = q.sample((100_000,))
    per_draw = (q.log_prob(w) - p.log_prob(w)).sum(-1)
    half_width = z_bonferroni(1) * per_draw.std() / math.sqrt(len(per_draw))
    assert abs(float(per_draw.mean() - reg(q))) <= float(half_width)


def test_normal_kl_other_families() -> None:
    reg = NormalKLDivergence(0.5, 2.0)
    point = bl.DeterministicDistribution(torch.tensor([0.0, 1.0, -3.0]))
    # a point estimate: MAP, the negative log prior density
    torch.testing.assert_close(reg(point), -Normal(0.5, 2.0).log_prob(point.loc).sum())
    laplace = Laplace(torch.zeros(3), torch.ones(3))  # a registered closed form
    torch.testing.assert_close(reg(laplace), kl_divergence(laplace, Normal(0.5, 2.0)).sum())
    lognormal = LogNormal(torch.zeros(3), torch.ones(3))  # none registered: Monte Carlo
    rv = bl.RandomVariable(lognormal)
    expected = (lognormal.log_prob(rv.value) - Normal(0.5, 2.0).log_prob(rv.value)).sum()
    torch.testing.assert_close(reg(rv), expected)


def _kl_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    loc = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    rho = torch.randn(3, 4, dtype=torch.float64).requires_grad_()
    return loc, rho, torch.tensor(0.3, dtype=torch.float64), torch.tensor(1.7).double()


def test_fused_scalar_prior_kl_value_and_gradcheck() -> None:
    """The custom autograd function behind the scalar-prior closed form: value equals
    torch's KL of ``N(loc, softplus(rho))``, and ``gradcheck`` (float64) passes; the
    general (tensor prior) path too."""
    loc, rho, p_loc, p_scale = _kl_inputs()
    expected = kl_divergence(Normal(loc, F.softplus(rho)), Normal(p_loc, p_scale)).sum()
    fused = softplus_normal_kl_scalar_prior(loc, rho, p_loc, p_scale)
    torch.testing.assert_close(fused, expected)
    assert torch.autograd.gradcheck(
        lambda a, b: softplus_normal_kl_scalar_prior(a, b, p_loc, p_scale), (loc, rho)
    )
    tensor_prior = NormalKLDivergence(torch.full((3, 1), 0.3), torch.full((4,), 1.7)).double()
    for kl in (tensor_prior.softplus_normal_kl, tensor_prior.normal_kl):
        args = (loc, rho) if kl == tensor_prior.softplus_normal_kl else (loc, F.softplus(rho))
        assert torch.autograd.gradcheck(kl, args)
        assert torch.autograd.gradgradcheck(kl, args)
    # float32 parameters against the float32 default-dtype prior buffers
    reg = NormalKLDivergence(0.3, 1.7)
    loc32, rho32 = loc.detach().float(), rho.detach().float()
    torch.testing.assert_close(reg.softplus_normal_kl(loc32, rho32), expected.float())
    torch.testing.assert_close(reg.normal_kl(loc32, F.softplus(rho32)), expected.float())


def test_fused_scalar_prior_kl_second_derivatives_and_forward_mode() -> None:
    """Second derivatives are right (gradgradcheck), and forward mode (jvp, as
    ``torch.func.jacfwd`` uses) equals reverse mode."""
    loc, rho, p_loc, p_scale = _kl_inputs()

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return softplus_normal_kl_scalar_prior(a, b, p_loc, p_scale)

    assert torch.autograd.gradgradcheck(fn, (loc, rho))
    rev = torch.func.jacrev(fn, argnums=(0, 1))(loc.detach(), rho.detach())
    with warnings.catch_warnings():  # torch's forward-AD setup scripts its decompositions
        warnings.simplefilter("ignore", DeprecationWarning)
        fwd = torch.func.jacfwd(fn, argnums=(0, 1))(loc.detach(), rho.detach())
    for r, f in zip(rev, fwd, strict=True):
        torch.testing.assert_close(r, f)


#: rho values spanning softplus's float32 underflow (below ≈ -104) and its
#: subnormal range (below ≈ -87), the linear regime and the origin.
EXTREME_RHO = (-200.0, -105.0, -90.0, -50.0, 0.0, 20.0)


def _softplus_kl_reference(loc: float, rho: float, p_loc: float, p_scale: float):
    """Value and d/d(rho) of ``KL(N(loc, softplus(rho)) || N(p_loc, p_scale))`` in
    mpmath at 50 digits: the independent reference."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    r = mp.mpf(rho)
    s = mp.log1p(mp.exp(r))
    sig = 1 / (1 + mp.exp(-r))
    kl = mp.log(p_scale / s) + (s**2 + (loc - p_loc) ** 2) / (2 * p_scale**2) - mp.mpf(1) / 2
    d_rho = sig * s / p_scale**2 - sig / s
    return float(kl), float(d_rho)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prior", ["scalar", "tensor"])
def test_softplus_kl_is_finite_and_exact_for_extreme_rho(dtype: torch.dtype, prior: str) -> None:
    """Value and gradient of the KL at rho in EXTREME_RHO equal mpmath's (float32: the
    KL's gradient was -inf below -89 and the KL inf below -104)."""
    loc = torch.full((len(EXTREME_RHO),), 0.25, dtype=dtype, requires_grad=True)
    rho = torch.tensor(EXTREME_RHO, dtype=dtype, requires_grad=True)
    p = (0.125, 1.5) if prior == "scalar" else (torch.full((6,), 0.125), torch.full((6,), 1.5))
    reg = NormalKLDivergence(*p).to(dtype)
    total = reg.softplus_normal_kl(loc, rho)
    total.backward()
    refs = [_softplus_kl_reference(0.25, r, 0.125, 1.5) for r in EXTREME_RHO]
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.isfinite(total) and torch.isfinite(rho.grad).all()
    torch.testing.assert_close(total.item(), sum(v for v, _ in refs), rtol=rtol, atol=0.0)
    expected_grad = torch.tensor([g for _, g in refs], dtype=torch.float64)
    torch.testing.assert_close(rho.grad.double(), expected_grad, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("rho", EXTREME_RHO)
def test_layer_losses_finite_for_extreme_rho(rho: float) -> None:
    """The KL a float32 layer reports, and its gradient, for a very small posterior scale."""
    layer = bl.layers.LinearReparameterization(2, 3)
    with torch.no_grad():
        layer.weight_loc.fill_(0.25)
        layer.weight_rho.fill_(rho)
    kl = sum(layer.losses)
    kl.backward()
    value, grad = _softplus_kl_reference(0.25, rho, 0.0, 1.0)
    torch.testing.assert_close(kl.item(), 6 * value, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(
        layer.weight_rho.grad, torch.full((3, 2), grad), rtol=1e-5, atol=1e-6
    )


def test_log_uniform_kl_finite_for_extreme_rho() -> None:
    reg = LogUniformKLDivergence()
    loc = torch.full((6,), 0.5, requires_grad=True)
    rho = torch.tensor(EXTREME_RHO, requires_grad=True)
    reg.softplus_normal_penalty(loc, rho).backward()
    assert torch.isfinite(rho.grad).all() and torch.isfinite(loc.grad).all()
    with torch.no_grad():
        mid = reg.softplus_normal_penalty(loc[3:], rho[3:])
        torch.testing.assert_close(mid, reg.log_uniform_kl(loc[3:], F.softplus(rho[3:])))


def test_normal_kl_is_zero_at_the_prior() -> None:
    assert float(NormalKLDivergence(0.5, 2.0)(Normal(torch.full((4,), 0.5), 2.0))) == 0.0


finite = st.floats(-5, 5, allow_nan=False)
positive = st.floats(0.05, 5, allow_nan=False)


@settings(derandomize=True, max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(finite, positive, finite, positive), min_size=1, max_size=6),
    st.booleans(),
)
def test_normal_kl_is_nonnegative(params: list[tuple[float, ...]], scalar_prior: bool) -> None:
    loc, scale, p_loc, p_scale = (
        torch.tensor(c, dtype=torch.float64) for c in zip(*params, strict=True)
    )
    prior = (p_loc[0].item(), p_scale[0].item()) if scalar_prior else (p_loc, p_scale)
    reg = NormalKLDivergence(*prior).double()
    kl = reg(Normal(loc, scale))
    assert kl >= -1e-12
    expected = kl_divergence(Normal(loc, scale), reg.prior()).sum()
    torch.testing.assert_close(kl, expected, rtol=1e-9, atol=1e-9)


# ======================================================== LogUniformKLDivergence
def molchanov_kl(loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Molchanov, Ashukha & Vetrov (2017), eq. 14, written from the paper:
    -KL ≈ k1·σ(k2 + k3·log α) - ½·log(1 + 1/α) - k1, α = σ²/μ²."""
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    log_alpha = np.log(scale**2 / loc**2)
    neg_kl = k1 / (1 + np.exp(-(k2 + k3 * log_alpha))) - 0.5 * np.log1p(np.exp(-log_alpha)) - k1
    return -neg_kl


def exact_log_uniform_kl(log_alpha: float) -> float:
    """The KL to the (improper) log-uniform prior by quadrature, normalised to 0 as α → ∞:
    KL = E_{ε~N(1, α)} log|ε| - ½·log α + (γ + log 2)/2 (Molchanov et al. 2017, §4.2)."""
    s = math.exp(0.5 * log_alpha)

    def integrand(e: float) -> float:
        return math.log(abs(e)) * stats.norm.pdf(e, 1.0, s)

    e_log = integrate.quad(integrand, -np.inf, 0.0, limit=200)[0]
    e_log += integrate.quad(integrand, 0.0, np.inf, limit=200)[0]
    return e_log - 0.5 * log_alpha + 0.5 * (np.euler_gamma + math.log(2))


def test_log_uniform_kl_matches_the_paper_formula() -> None:
    loc = torch.tensor([1.0, -0.5, 2.0, 0.1, -3.0], dtype=torch.float64)
    scale = torch.tensor([0.1, 0.5, 4.0, 1.0, 0.01], dtype=torch.float64)
    q = Normal(loc, scale)
    expected = molchanov_kl(loc.numpy(), scale.numpy()).sum()
    assert float(LogUniformKLDivergence()(q)) == pytest.approx(expected, rel=1e-9)
    assert float(LogUniformKLDivergence(scale_factor=0.5)(q)) == pytest.approx(expected / 2)


@pytest.mark.parametrize("log_alpha", [-6.0, -3.5, -2.0, 0.0, 1.0, 3.0, 6.0])
def test_log_uniform_kl_approximates_the_exact_kl(log_alpha: float) -> None:
    """The paper's fit is within 0.01 nats of the quadrature value for every α
    (its largest error, 0.0094, is near log α = -3.5)."""
    loc = torch.tensor([1.0], dtype=torch.float64)
    scale = loc * math.exp(0.5 * log_alpha)
    value = float(LogUniformKLDivergence()(Normal(loc, scale)))
    assert value == pytest.approx(exact_log_uniform_kl(log_alpha), abs=0.01)


def test_log_uniform_kl_limits_and_errors() -> None:
    # α → ∞: KL → 0 from above; loc = 0 is finite (the library's 1e-16 guard)
    big = float(LogUniformKLDivergence()(Normal(torch.tensor([1e-3]), torch.tensor([10.0]))))
    assert 0 <= big < 1e-6
    assert torch.isfinite(LogUniformKLDivergence()(Normal(torch.zeros(2), torch.ones(2))))
    # small α: KL ≈ ½·log(1/α) + k1 - k1·σ(k2 + k3 log α) grows like -½ log α
    small = float(LogUniformKLDivergence()(Normal(torch.tensor([1.0]), torch.tensor([1e-4]))))
    assert small == pytest.approx(0.5 * math.log(1e8), abs=0.7)
    with pytest.raises(TypeError, match="Normal"):
        LogUniformKLDivergence()(Laplace(torch.zeros(2), 1.0))


@settings(derandomize=True, max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-10, 10), st.floats(1e-3, 10)), min_size=1, max_size=6))
def test_log_uniform_kl_is_nonnegative(params: list[tuple[float, float]]) -> None:
    loc, scale = (torch.tensor(c, dtype=torch.float64) for c in zip(*params, strict=True))
    assert LogUniformKLDivergence()(Normal(loc, scale)) >= 0


# ================================================= Monte Carlo regularizers
def half_cauchy_kl(s1: float, s2: float) -> float:
    """KL(HalfCauchy(s1) || HalfCauchy(s2)) = KL between the Cauchys (symmetry)
    = log((s1 + s2)² / (4 s1 s2)) (Chyzak & Nielsen 2019)."""
    return math.log((s1 + s2) ** 2 / (4 * s1 * s2))


def numeric_kl(
    q_pdf: Callable, p_logpdf: Callable, q_logpdf: Callable, lo: float, hi: float = np.inf
) -> float:
    """``∫ q (log q - log p)`` over ``[lo, hi]`` by quadrature (0 where q underflows)."""

    def integrand(w: float) -> float:
        density = q_pdf(w)
        return 0.0 if density == 0 else density * (q_logpdf(w) - p_logpdf(w))

    return integrate.quad(integrand, lo, hi, limit=400)[0]


def test_half_cauchy_kl_closed_form_reference() -> None:
    """The reference itself, against quadrature."""
    numeric = numeric_kl(
        lambda w: stats.halfcauchy.pdf(w, scale=0.5),
        lambda w: stats.halfcauchy.logpdf(w, scale=2.0),
        lambda w: stats.halfcauchy.logpdf(w, scale=0.5),
        0.0,
    )
    assert half_cauchy_kl(0.5, 2.0) == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize(
    "case", ["half_cauchy_posterior", "log_normal_posterior", "normal_vs_normal", "laplace"]
)
def test_monte_carlo_regularizers_average_to_the_kl(case: str) -> None:
    """The single-value estimate, averaged over 100 000 draws of q (200 groups of 500),
    equals the true KL; half-width z(1 - α/2)·SE with SE from the group means (k = 1
    per test, α = 1e-3)."""
    if case == "half_cauchy_posterior":
        reg = HalfCauchyKLDivergence(loc=1.0, scale=2.0).double()
        q = shifted_half_cauchy(1.0, 0.5)
        true = half_cauchy_kl(0.5, 2.0)
    elif case == "log_normal_posterior":
        reg = HalfCauchyKLDivergence(loc=0.0, scale=1.5).double()
        q = LogNormal(torch.tensor(-0.5).double(), torch.tensor(0.4).double())
        true = numeric_kl(
            lambda w: stats.lognorm.pdf(w, 0.4, scale=math.exp(-0.5)),
            lambda w: stats.halfcauchy.logpdf(w, scale=1.5),
            lambda w: stats.lognorm.logpdf(w, 0.4, scale=math.exp(-0.5)),
            0.0,
        )
    elif case == "normal_vs_normal":
        reg = MonteCarloKLDivergence(Normal(torch.tensor(0.5), torch.tensor(2.0))).double()
        q = Normal(torch.tensor(-0.3).double(), torch.tensor(0.7).double())
        true = float(NormalKLDivergence(0.5, 2.0).double()(q))
    else:
        reg = MonteCarloKLDivergence(Laplace(torch.tensor(0.2), torch.tensor(1.5))).double()
        q = Normal(torch.tensor(0.4).double(), torch.tensor(0.6).double())
        true = numeric_kl(
            lambda w: stats.norm.pdf(w, 0.4, 0.6),
            lambda w: stats.laplace.logpdf(w, 0.2, 1.5),
            lambda w: stats.norm.logpdf(w, 0.4, 0.6),
            0.4 - 20 * 0.6,
            0.4 + 20 * 0.6,
        )
    mean, se = mc_average(reg, q)
    assert abs(mean - true) <= z_bonferroni(1) * se, (mean, true, se)
    assert se < 0.05 * abs(true) + 1e-3  # the test has power: SE small against the KL


def test_half_cauchy_kl_rejects_values_outside_the_support() -> None:
    q = Normal(torch.zeros(3), 1.0)
    rv = bl.RandomVariable(q, value=torch.tensor([0.5, -0.1, 2.0]))
    with pytest.raises(ValueError, match="support"):
        HalfCauchyKLDivergence(loc=0.0)(rv)


def test_monte_carlo_kl_rejects_non_distributions() -> None:
    with pytest.raises(TypeError, match="Distribution"):
        MonteCarloKLDivergence("laplace")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RandomVariable or Distribution"):
        NormalKLDivergence()(torch.zeros(3))  # type: ignore[arg-type]


# ================================================================ common contract
@pytest.mark.parametrize("cls", [NormalKLDivergence, HalfCauchyKLDivergence])
@pytest.mark.parametrize(
    "scale", [0.0, -1.0, math.inf, math.nan, torch.tensor([1.0, 0.0])], ids=str
)
def test_non_positive_prior_scale_raises(cls: type, scale: object) -> None:
    with pytest.raises(ValueError, match=f"{cls.__name__}.*scale"):
        cls(0.0, scale)


def test_a_prior_tensor_must_broadcast_to_the_parameter_without_growing_it() -> None:
    """A prior of shape (2, 1, 3) on a (2, 3) weight would sum the KL over two copies of
    the weight (twice torch's KL); one of shape (5,) would fail only at ``losses``. The
    layer refuses both at construction; per-unit and per-input priors are the KL of
    torch.distributions, a leading 1 is harmless."""
    torch.manual_seed(0)
    for shape in ((2, 1), (3,), (1, 2, 3)):
        reg = NormalKLDivergence(scale=torch.full(shape, 2.0))
        layer = bl.layers.LinearReparameterization(3, 2, weight_regularizer=reg)
        expected = kl_divergence(layer.posterior("weight"), Normal(0.0, 2.0)).sum()
        torch.testing.assert_close(sum(bl.losses(layer)), expected)
    bad = [
        NormalKLDivergence(scale=torch.full((2, 1, 3), 2.0)),
        NormalKLDivergence(loc=torch.zeros(5)),
        MonteCarloKLDivergence(Laplace(torch.zeros(4, 1, 1), 1.0)),
    ]
    for reg in bad:
        with pytest.raises(ValueError, match=r"LinearFlipout\(weight_regularizer\).*\(2, 3\)"):
            bl.layers.LinearFlipout(3, 2, weight_regularizer=reg)


@pytest.mark.parametrize(
    "make",
    [
        NormalKLDivergence,
        LogUniformKLDivergence,
        HalfCauchyKLDivergence,
        lambda **kw: MonteCarloKLDivergence(Laplace(0.0, 1.0), **kw),
    ],
    ids=["normal", "log_uniform", "half_cauchy", "monte_carlo"],
)
def test_scale_factor_multiplies(make: Callable[..., Regularizer]) -> None:
    q = LogNormal(torch.randn(4), torch.rand(4) + 0.1)
    if make is NormalKLDivergence or make is LogUniformKLDivergence:
        q = Normal(torch.randn(4), torch.rand(4) + 0.1)
    rv = bl.RandomVariable(q)
    unscaled = make()(rv)
    torch.testing.assert_close(make(scale_factor=2.5)(rv), 2.5 * unscaled)
    assert float(make(scale_factor=0.0)(rv)) == 0.0
    for bad, error in ((-1.0, ValueError), (math.inf, ValueError), ("1", TypeError)):
        with pytest.raises(error, match="scale_factor"):
            make(scale_factor=bad)


def test_regularizer_buffers_in_state_dict_and_restored() -> None:
    cases = [
        (NormalKLDivergence(0.5, 2.0), NormalKLDivergence(), {"prior_loc", "prior_scale"}),
        (HalfCauchyKLDivergence(0.5, 2.0), HalfCauchyKLDivergence(), {"prior_loc", "prior_scale"}),
        (
            MonteCarloKLDivergence(StudentT(3.0, 0.5, 2.0)),
            MonteCarloKLDivergence(StudentT(10.0, 0.0, 1.0)),
            {"prior_df", "prior_loc", "prior_scale"},
        ),
        (LogUniformKLDivergence(), LogUniformKLDivergence(), set()),
    ]
    q = LogNormal(torch.randn(3), torch.ones(3))
    value = q.sample() + 0.5  # inside every prior's support
    for src, dst, keys in cases:
        state = src.state_dict()
        assert set(state) == keys
        if not keys:
            continue
        dst.load_state_dict(state)
        for key in keys:
            torch.testing.assert_close(getattr(dst, key), getattr(src, key))
        rv = bl.RandomVariable(q, value=value)
        torch.testing.assert_close(dst(rv), src(rv))


@pytest.mark.parametrize("cls", [NormalKLDivergence, HalfCauchyKLDivergence])
def test_prior_buffers_are_copies_of_the_arguments(cls: type) -> None:
    loc, scale = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])
    reg = cls(loc, scale)
    loc.add_(5.0)
    scale.add_(5.0)
    torch.testing.assert_close(reg.prior_loc, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(reg.prior_scale, torch.tensor([1.0, 2.0]))


def test_get_regularizer_resolves_and_rejects() -> None:
    assert set(REGULARIZERS) == {
        "normal_kl_divergence",
        "log_uniform_kl_divergence",
        "half_cauchy_kl_divergence",
        "learned_scale_normal_kl_divergence",
        "hierarchical_normal_kl_divergence",
        "empirical_bayes_normal_kl_divergence",
    }
    for name, cls in REGULARIZERS.items():
        assert type(get_regularizer(name)) is cls
    assert get_regularizer(None) is None
    reg = NormalKLDivergence(0.5)
    assert get_regularizer(reg) is reg
    assert type(get_regularizer(LogUniformKLDivergence)) is LogUniformKLDivergence
    with pytest.raises(ValueError) as info:
        get_regularizer("normal_kl", owner="MyLayer(weight_regularizer)")
    message = str(info.value)
    assert "MyLayer(weight_regularizer)" in message and "'normal_kl'" in message
    assert all(name in message for name in REGULARIZERS)
    for bad in (3, torch.zeros(1), Normal(0.0, 1.0)):
        with pytest.raises(TypeError, match="regularizer"):
            get_regularizer(bad)  # type: ignore[arg-type]


def test_unknown_regularizer_name_in_a_layer() -> None:
    with pytest.raises(ValueError, match="LinearFlipout.*weight_regularizer.*normal_kl_divergence"):
        bl.layers.LinearFlipout(3, 2, weight_regularizer="gaussian")
