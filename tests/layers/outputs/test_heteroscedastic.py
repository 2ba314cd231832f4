"""Tests for the heteroscedastic classification outputs (``layers/outputs/heteroscedastic.py``).

1. Convergence to closed forms: with one logit difference ``u ~ N(m, s²)`` (the
   sigmoid layer with one label, or the 2-class softmax, whose class-1 probability is
   ``sigmoid(u_1 - u_0)``), the MC mean equals ``E[sigmoid(u)]`` by
   ``scipy.integrate.quad`` within 5 MC standard errors (the standard error from the
   quadrature's second moment; k = 8 checks, so the family-wise false-failure rate is
   ``8 · P(|Z| > 5) ≈ 5e-6``; n = 200 000 draws each), and the probit approximation
   ``sigmoid(m / sqrt(1 + π s² / 8))`` within 0.02 of both.
2. Zero noise (factors 0, diagonal scale ``softplus(-200) ≈ 0``, ``min_scale=0``): plain
   ``softmax(μ / τ)`` / ``sigmoid(μ / τ)``.
3. Temperature: scaling ``μ``, ``V`` and ``d`` by ``τ`` at temperature ``τ`` gives the
   probabilities at temperature 1 (same noise), and a huge ``τ`` gives uniform classes.
4. ``log_prob`` and ``probs`` against a numpy reference from the same noise (the
   documented draw order), including logits 300 apart where a plain mean of softmaxes
   underflows to ``log 0``.
5. The covariance ``V Vᵀ + diag(d²)`` from the projection (numpy) against
   ``logit_distribution`` exactly and the sample covariance of ``logit_samples``: every
   element within 5 standard errors ``sqrt((Σ_ii Σ_jj + Σ_ij²) / n)``, n = 40 000
   (k = 30 checks: family-wise rate ≈ 2e-5).
6. ``gradcheck`` in float64 of the pure math (noise fixed) and of the layer under a
   fixed generator.
7. Fresh noise in training and evaluation; bad constructor arguments and inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special
from torch import Tensor, nn

from bayesian_layers._checks import inverse_softplus
from bayesian_layers.layers.outputs.heteroscedastic import (
    HeteroscedasticBernoulli,
    HeteroscedasticCategorical,
    low_rank_logit_samples,
    mc_log_mean_softmax,
    mc_mean_sigmoid_logits,
)

F64 = torch.float64
LAYERS = (HeteroscedasticCategorical, HeteroscedasticBernoulli)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _set(layer: nn.Module, weight: Tensor | None = None, bias: Tensor | None = None) -> None:
    proj = layer.projection
    assert isinstance(proj, nn.Linear)
    with torch.no_grad():
        if weight is not None:
            proj.weight.copy_(weight)
        if bias is not None:
            proj.bias.copy_(bias)


def _decode(layer: nn.Module, x: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``μ (*, C)``, ``V (*, C, R)``, ``d (*, C)`` in numpy from the documented layout,
    the projection read from the layer's weights (not through its code)."""
    c, r = layer.units, layer.num_factors
    w = layer.projection.weight.detach().numpy()
    raw = x.detach().numpy() @ w.T + layer.projection.bias.detach().numpy()
    if layer.parameter_efficient:
        shared = layer.shared_loadings.detach().numpy()  # (C, R)
        factor = raw[..., c : 2 * c, None] * shared
    else:
        factor = raw[..., c : c + c * r].reshape(*raw.shape[:-1], c, r)
    d = np.logaddexp(0.0, raw[..., -c:]) + layer.min_scale
    return raw[..., :c], factor, d


def _reference(layer: nn.Module, x: Tensor, seed: int, num_samples: int) -> np.ndarray:
    """``(S, *, C)`` logit draws in numpy, in the documented draw order (ε_R, then ε_C)."""
    loc, factor, d = _decode(layer, x)
    gen, batch = _gen(seed), tuple(x.shape[:-1])
    eps_r = torch.randn((num_samples, *batch, layer.num_factors), generator=gen, dtype=x.dtype)
    eps_c = torch.randn((num_samples, *batch, layer.units), generator=gen, dtype=x.dtype)
    return loc + np.einsum("...cr,s...r->s...c", factor, eps_r.numpy()) + d * eps_c.numpy()


def _covariance(layer: nn.Module, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    loc, v, d = _decode(layer, x)
    eye = np.eye(layer.units)
    return loc, v @ np.swapaxes(v, -1, -2) + np.einsum("...i,ij->...ij", d**2, eye)


# ------------------------------------------------------------ 1. closed forms
def _sigmoid_gaussian_moments(m: float, s: float) -> tuple[float, float]:
    """``E[sigmoid(u)]`` and ``E[sigmoid(u)²]`` for ``u ~ N(m, s²)`` by quadrature."""

    def moment(k: int) -> float:
        def f(z: float) -> float:
            return float(special.expit(m + s * z) ** k * math.exp(-0.5 * z * z))

        return integrate.quad(f, -np.inf, np.inf, epsabs=1e-12)[0] / math.sqrt(2 * math.pi)

    return moment(1), moment(2)


def _check_against_quadrature(mc: Tensor, ms: list[tuple[float, float]], n: int) -> None:
    for p, (m, s) in zip(mc.tolist(), ms, strict=True):
        exact, second = _sigmoid_gaussian_moments(m, s)
        se = math.sqrt((second - exact**2) / n)
        assert abs(p - exact) < 5 * se, (m, s, p, exact, se)
        probit = float(special.expit(m / math.sqrt(1 + math.pi * s * s / 8)))
        assert abs(exact - probit) < 0.02 and abs(p - probit) < 0.02 + 5 * se


SETTINGS = [(0.0, 1.0), (1.5, 0.5), (-1.0, 2.0), (2.0, 3.0)]
N_CLOSED = 200_000


def test_sigmoid_mc_mean_converges_to_the_gaussian_integral() -> None:
    """One label, diagonal noise only: the input sets ``m`` (weight row 0) and the raw
    scale (weight row 1), so every example has its own ``(m, s)``."""
    layer = HeteroscedasticBernoulli(
        1, in_features=2, num_factors=0, num_mc_samples=N_CLOSED, min_scale=0.0, dtype=F64
    )
    _set(layer, torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64))
    x = torch.tensor([[m, inverse_softplus(s)] for m, s in SETTINGS], dtype=F64)
    rv = layer(x, generator=_gen(0))
    _check_against_quadrature(rv.distribution.probs[:, 0], SETTINGS, N_CLOSED)


def test_two_class_softmax_converges_with_correlated_noise() -> None:
    """Two classes with rank-1 plus diagonal noise: ``P(y=1) = E[sigmoid(u_1 - u_0)]``
    with ``u_1 - u_0 ~ N(μ_1 - μ_0, (V_1 - V_0)² + d_0² + d_1²)``."""
    layer = HeteroscedasticCategorical(
        2, in_features=1, num_factors=1, num_mc_samples=N_CLOSED, dtype=F64
    )
    # rows: μ_0, μ_1, V_0, V_1, raw d_0, raw d_1 (each example scales them by its x)
    weight = torch.tensor([[0.2], [1.0], [0.8], [-0.3], [0.5], [-1.0]], dtype=F64)
    _set(layer, weight, torch.zeros(6, dtype=F64))
    x = torch.tensor([[0.5], [1.0], [-2.0], [3.0]], dtype=F64)
    probs = layer(x, generator=_gen(1)).distribution.probs[:, 1]
    ms = []
    for xi in x[:, 0].tolist():
        mu, v, d = weight[:2, 0] * xi, weight[2:4, 0] * xi, weight[4:, 0] * xi
        d = torch.nn.functional.softplus(d) + layer.min_scale
        s2 = (v[1] - v[0]) ** 2 + (d**2).sum()
        ms.append((float(mu[1] - mu[0]), math.sqrt(float(s2))))
    _check_against_quadrature(probs, ms, N_CLOSED)


# ------------------------------------------------------------- 2. zero noise
def _silenced(cls: type, units: int, in_features: int, **kwargs: object) -> nn.Module:
    layer = cls(units, in_features=in_features, min_scale=0.0, dtype=F64, **kwargs)
    with torch.no_grad():
        w, b = layer.projection.weight, layer.projection.bias
        w[units:].zero_()  # factors and diagonal independent of the input
        b[units:-units].zero_()  # V = 0
        b[-units:].fill_(-200.0)  # d = softplus(-200) ≈ 1e-87
    return layer


@pytest.mark.parametrize("temperature", [1.0, 0.3, 4.0])
@pytest.mark.parametrize("num_factors", [0, 3])
def test_zero_noise_is_the_plain_softmax_and_sigmoid(num_factors: int, temperature: float) -> None:
    x = torch.randn(6, 5, generator=_gen(2), dtype=F64)
    kwargs = {"num_factors": num_factors, "temperature": temperature, "num_mc_samples": 7}
    cat = _silenced(HeteroscedasticCategorical, 4, 5, **kwargs)
    loc = cat.projection(x)[:, :4]
    torch.testing.assert_close(
        cat(x).distribution.probs, torch.softmax(loc / temperature, -1), rtol=1e-12, atol=1e-14
    )
    ber = _silenced(HeteroscedasticBernoulli, 3, 5, **kwargs)
    loc = ber.projection(x)[:, :3]
    torch.testing.assert_close(
        ber(x).distribution.probs, torch.sigmoid(loc / temperature), rtol=1e-12, atol=1e-14
    )


# ------------------------------------------------------------ 3. temperature
@pytest.mark.parametrize("cls", LAYERS)
def test_temperature_divides_the_logit_draws(cls: type) -> None:
    """At temperature τ with ``μ, V, d`` all scaled by τ, the same noise gives the
    probabilities of temperature 1: the draws are ``(μ + V ε_R + d ε_C) / τ``."""
    tau, x = 2.5, torch.randn(5, 3, generator=_gen(3), dtype=F64)
    base = cls(4, in_features=3, num_factors=2, num_mc_samples=50, dtype=F64)
    hot = cls(4, in_features=3, num_factors=2, num_mc_samples=50, temperature=tau, dtype=F64)
    w, b = base.projection.weight.detach().clone(), base.projection.bias.detach().clone()
    w[-4:] = 0.0  # the diagonal scale constant across examples, so it scales by τ exactly
    _set(base, w, b)
    d = torch.nn.functional.softplus(b[-4:]) + base.min_scale
    hot_b = torch.cat([tau * b[:-4], inverse_softplus(tau * d - hot.min_scale)])
    _set(hot, tau * w, hot_b)
    p = base(x, generator=_gen(4)).distribution.probs
    torch.testing.assert_close(hot(x, generator=_gen(4)).distribution.probs, p)


def test_huge_temperature_gives_uniform_classes() -> None:
    layer = HeteroscedasticCategorical(5, in_features=3, temperature=1e12, dtype=F64)
    probs = layer(torch.randn(4, 3, dtype=F64)).distribution.probs
    torch.testing.assert_close(probs, torch.full_like(probs, 0.2))


# ------------------------------------------------------- 4. log_prob and probs
@pytest.mark.parametrize(("temperature", "efficient"), [(1.0, False), (0.5, False), (0.5, True)])
def test_categorical_log_prob_is_the_log_mean_probability(
    temperature: float, efficient: bool
) -> None:
    layer = HeteroscedasticCategorical(
        6,
        in_features=4,
        num_factors=3,
        num_mc_samples=300,
        temperature=temperature,
        parameter_efficient=efficient,
        dtype=F64,
    )
    x = torch.randn(2, 5, 4, generator=_gen(5), dtype=F64)  # two batch dims
    y = torch.randint(0, 6, (2, 5), generator=_gen(6))
    rv = layer(x, generator=_gen(7))
    probs = special.softmax(_reference(layer, x, 7, 300) / temperature, axis=-1).mean(0)
    np.testing.assert_allclose(rv.distribution.probs.detach().numpy(), probs, rtol=1e-12)
    expected = np.log(np.take_along_axis(probs, y.numpy()[..., None], -1)[..., 0])
    np.testing.assert_allclose(rv.log_prob(y).detach().numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("efficient", [False, True])
def test_bernoulli_log_prob_is_the_log_mean_probability(efficient: bool) -> None:
    layer = HeteroscedasticBernoulli(
        4,
        in_features=3,
        num_factors=2,
        num_mc_samples=300,
        parameter_efficient=efficient,
        dtype=F64,
    )
    x = torch.randn(5, 3, generator=_gen(8), dtype=F64)
    y = torch.randint(0, 2, (5, 4), generator=_gen(9)).to(F64)
    rv = layer(x, generator=_gen(10))
    p = special.expit(_reference(layer, x, 10, 300)).mean(0)
    np.testing.assert_allclose(rv.distribution.probs.detach().numpy(), p, rtol=1e-12)
    expected = (y.numpy() * np.log(p) + (1 - y.numpy()) * np.log1p(-p)).sum(-1)
    np.testing.assert_allclose(rv.log_prob(y).detach().numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("cls", LAYERS)
def test_far_apart_logits_keep_a_finite_exact_log_prob(cls: type) -> None:
    """Logits 300 apart in float32: ``mean(softmax)`` underflows to 0 for the unlikely
    class; the layer's ``logsumexp`` over samples matches the float64 reference."""
    layer = cls(2, in_features=1, num_factors=1, num_mc_samples=64)
    _set(layer, torch.zeros(6, 1), torch.tensor([150.0, -150.0, 1.0, -1.0, 0.5, 0.5]))
    x = torch.ones(3, 1)
    rv = layer(x, generator=_gen(11))
    u = _reference(layer, x, 11, 64).astype(np.float64)  # the same float32 noise, widened
    if cls is HeteroscedasticCategorical:
        y = torch.ones(3, dtype=torch.long)
        log_p = special.logsumexp(special.log_softmax(u, -1), 0) - math.log(64)
        expected = log_p[:, 1]
    else:
        y = torch.tensor([[0.0, 1.0]]).expand(3, 2)  # both labels on their unlikely side
        log_p = special.logsumexp(-np.logaddexp(0.0, -u), 0) - math.log(64)
        log_q = special.logsumexp(-np.logaddexp(0.0, u), 0) - math.log(64)
        expected = log_q[:, 0] + log_p[:, 1]
    got = rv.log_prob(y).detach()
    assert torch.isfinite(got).all() and float(got.max()) < -250
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-5)


# ---------------------------------------------------------------- 5. covariance
@pytest.mark.parametrize("efficient", [False, True])
def test_covariance_matches_the_logit_draws(efficient: bool) -> None:
    layer = HeteroscedasticCategorical(
        4, in_features=3, num_factors=2, parameter_efficient=efficient, dtype=F64
    )
    x = torch.randn(3, 3, generator=_gen(12), dtype=F64)
    loc, cov = _covariance(layer, x)
    dist = layer.logit_distribution(x)
    np.testing.assert_allclose(dist.covariance_matrix.detach().numpy(), cov, rtol=1e-12)
    np.testing.assert_allclose(dist.loc.detach().numpy(), loc, rtol=1e-12)
    n = 40_000
    u = layer.logit_samples(x, n, generator=_gen(13)).detach().numpy()  # (n, 3, 4)
    assert u.shape == (n, 3, 4)
    centred = u - loc
    sample_cov = np.einsum("sbi,sbj->bij", centred, centred) / n
    diag = np.diagonal(cov, axis1=-2, axis2=-1)
    se = np.sqrt((diag[..., :, None] * diag[..., None, :] + cov**2) / n)
    assert (np.abs(sample_cov - cov) < 5 * se).all()
    assert (np.abs(centred.mean(0)) < 5 * np.sqrt(diag / n)).all()


# ------------------------------------------------------------------ 6. gradcheck
def _pure(loc: Tensor, factor: Tensor, d: Tensor, eps_r: Tensor, eps_c: Tensor) -> Tensor:
    u = low_rank_logit_samples(loc, factor, d, eps_r, eps_c)
    return torch.cat([mc_log_mean_softmax(u, 0.7), mc_mean_sigmoid_logits(u, 1.3)], -1)


def test_gradcheck_of_the_pure_math() -> None:
    g = _gen(14)
    loc = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    factor = torch.randn(3, 4, 2, generator=g, dtype=F64, requires_grad=True)
    d = torch.rand(3, 4, generator=g, dtype=F64).add(0.1).requires_grad_()
    eps_r, eps_c = torch.randn(5, 3, 2, generator=g, dtype=F64), torch.randn(5, 3, 4, dtype=F64)
    assert torch.autograd.gradcheck(lambda *a: _pure(*a, eps_r, eps_c), (loc, factor, d))


@pytest.mark.parametrize("efficient", [False, True])
@pytest.mark.parametrize("cls", LAYERS)
def test_gradcheck_of_the_layer_under_a_fixed_generator(cls: type, efficient: bool) -> None:
    layer = cls(
        3,
        in_features=2,
        num_factors=2,
        num_mc_samples=6,
        parameter_efficient=efficient,
        dtype=F64,
    )
    x = torch.randn(4, 2, generator=_gen(15), dtype=F64, requires_grad=True)
    y = (
        torch.tensor([0, 2, 1, 1])
        if cls is HeteroscedasticCategorical
        else torch.ones(4, 3, dtype=F64)
    )

    assert torch.autograd.gradcheck(lambda x: layer(x, generator=_gen(16)).log_prob(y), (x,))
    out = layer(x, generator=_gen(16)).log_prob(y).sum()
    grads = torch.autograd.grad(out, list(layer.parameters()))
    assert all(torch.isfinite(gr).all() and gr.abs().sum() > 0 for gr in grads)


# ------------------------------------------------------------- 7. sampling, errors
@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("training", [True, False])
def test_fresh_noise_in_training_and_evaluation(cls: type, training: bool) -> None:
    layer = cls(3, in_features=2, num_mc_samples=8).train(training)
    x = torch.randn(4, 2)
    a, b = (layer(x).distribution.probs for _ in range(2))
    assert not torch.equal(a, b)
    a, b = (layer(x, generator=_gen(17)).distribution.probs for _ in range(2))
    assert torch.equal(a, b)
    assert layer._generator is None  # the call's generator is not kept


def test_parameter_efficient_shares_one_loading_matrix() -> None:
    """``D·3C + 3C + C·R`` parameters instead of ``(D + 1)·C(R + 2)``; ``V(h)``'s rows
    are ``s_c(h)`` times the rows of ``A``, so ``V`` has rank ``min(R, C)`` still."""
    dense = HeteroscedasticCategorical(10, in_features=64, num_factors=5)
    lean = HeteroscedasticCategorical(10, in_features=64, num_factors=5, parameter_efficient=True)
    count = [sum(p.numel() for p in m.parameters()) for m in (dense, lean)]
    assert count == [65 * 10 * 7, 65 * 30 + 10 * 5]
    assert lean.logit_distribution(torch.randn(3, 64)).cov_factor.shape == (3, 10, 5)
    assert "parameter_efficient=True" in repr(lean)


def test_lazy_construction_and_repr() -> None:
    layer = HeteroscedasticBernoulli(3, num_factors=2)
    assert layer(torch.randn(4, 7)).shape == (4, 3)
    assert layer.projection.weight.shape == (3 * 4, 7)
    assert "num_factors=2" in repr(layer) and "num_mc_samples=1000" in repr(layer)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((None,), {}, ValueError, "`units`"),
        ((0,), {}, ValueError, "`units` >= 1"),
        ((True,), {}, TypeError, "`units`"),
        ((2,), {"num_factors": -1}, ValueError, "`num_factors` >= 0"),
        ((2,), {"num_factors": 1.5}, TypeError, "`num_factors`"),
        ((2,), {"num_factors": True}, TypeError, "`num_factors`"),
        ((2,), {"temperature": 0.0}, ValueError, "`temperature`.*> 0"),
        ((2,), {"temperature": float("nan")}, ValueError, "`temperature`"),
        ((2,), {"temperature": float("inf")}, ValueError, "`temperature`"),
        ((2,), {"temperature": "hot"}, TypeError, "`temperature`"),
        ((2,), {"num_mc_samples": 0}, ValueError, "`num_mc_samples` >= 1"),
        ((2,), {"num_mc_samples": 2.0}, TypeError, "`num_mc_samples`"),
        ((2,), {"parameter_efficient": "yes"}, TypeError, "`parameter_efficient`"),
    ],
)
def test_bad_constructor_arguments(
    cls: type, args: tuple, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=f"{cls.__name__} expected {match}|{cls.__name__}.*{match}"):
        cls(*args, in_features=3, **kwargs)


@pytest.mark.parametrize("cls", LAYERS)
def test_bad_inputs(cls: type) -> None:
    name = cls.__name__
    layer = cls(2, in_features=3, num_mc_samples=4)
    with pytest.raises(ValueError, match=rf"{name} expected input of shape \(\*, 3\).*\(4, 5\)"):
        layer(torch.randn(4, 5))
    with pytest.raises(TypeError, match=f"{name} expected `input` of a floating-point"):
        layer(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=f"{name} expected `input` of dtype torch.float32"):
        layer(torch.randn(4, 3, dtype=F64))
    with pytest.raises(TypeError, match=f"{name} expected `generator` to be a torch.Generator"):
        layer(torch.randn(4, 3), generator=0)
    with pytest.raises(ValueError, match=f"{name} expected `num_samples` >= 1"):
        layer.logit_samples(torch.randn(4, 3), 0)
    with pytest.raises(ValueError, match="expected a target of shape"):
        target = (
            torch.zeros(4, 1, dtype=torch.long)
            if cls is HeteroscedasticCategorical
            else torch.zeros(4)
        )
        layer(torch.randn(4, 3)).log_prob(target)
    assert layer._generator is None
