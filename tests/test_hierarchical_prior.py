"""Learned-scale and hierarchical normal priors (bayesian_layers/regularizers/hierarchical.py).

Statistical checks compare a closed form with a Monte Carlo mean at 5 standard errors
(two-sided tail 5.7e-7 per check; k <= 8 checks here, family-wise failure rate < 1e-5).
Fixed seeds, so each run is deterministic anyway.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import HalfCauchy, LogNormal, Normal, kl_divergence

import bayesian_layers as bl
from bayesian_layers.distributions import Deterministic
from bayesian_layers.regularizers.hierarchical import (
    HierarchicalNormalKLDivergence,
    LearnedScaleNormalKLDivergence,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # One intra-op thread: these tensors are tiny and thread hand-off dominates otherwise.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


Z = 5.0  # standard errors


def _posterior(shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> Normal:
    g = torch.Generator().manual_seed(1)
    loc = torch.randn(shape, generator=g, dtype=dtype)
    scale = 0.2 + torch.rand(shape, generator=g, dtype=dtype)
    return Normal(loc, scale)


def _set_scale_posterior(reg: HierarchicalNormalKLDivergence, m: float, v: float) -> None:
    with torch.no_grad():
        reg.prior_scale_loc.fill_(m)
        reg.prior_scale_rho.fill_(math.log(math.expm1(v)))


# ----------------------------------------------------------------- learned scale
@pytest.mark.parametrize("scale_shape", [(), (4, 1)])
def test_learned_scale_kl_equals_torch_and_gradient_reaches_it_through_losses(
    scale_shape: tuple[int, ...],
) -> None:
    reg = LearnedScaleNormalKLDivergence(scale=torch.full(scale_shape, 0.7))
    layer = bl.layers.LinearReparameterization(3, 4, weight_regularizer=reg)
    assert any(p is reg.prior_scale_rho for p in layer.parameters())
    (term,) = bl.losses(layer)
    q = layer.weight.distribution
    s = reg.prior_scale
    expected = kl_divergence(Normal(q.mean, q.stddev), Normal(0.0, s)).sum()
    torch.testing.assert_close(term, expected)
    term.backward()
    grad = reg.prior_scale_rho.grad
    assert grad is not None and bool(torch.isfinite(grad).all())
    # d/ds sum(log s + M / (2 s²)) = n/s - sum(M)/s³ over the elements sharing s; ds/drho
    second = (q.mean.square() + q.stddev.square()).detach()
    if scale_shape:
        n, total = second.shape[1], second.sum(1, keepdim=True)
    else:
        n, total = second.numel(), second.sum()
    s = s.detach()
    analytic = (n / s - total / s**3) * torch.sigmoid(reg.prior_scale_rho.detach())
    torch.testing.assert_close(grad, analytic)


@pytest.mark.parametrize("scale_shape", [(), (5, 1)])
def test_learned_scale_optimum_is_type_two_maximum_likelihood(
    scale_shape: tuple[int, ...],
) -> None:
    """Minimising the KL over the prior variance gives mean((μ - loc)² + σ²)."""
    q = _posterior((5, 20))
    reg = LearnedScaleNormalKLDivergence(loc=0.3, scale=torch.ones(scale_shape)).double()
    opt = torch.optim.LBFGS(
        reg.parameters(),
        max_iter=200,
        tolerance_grad=1e-12,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = reg(q)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    second = (q.loc - 0.3).square() + q.scale.square()
    expected = second.mean(1, keepdim=True) if scale_shape else second.mean()
    torch.testing.assert_close(reg.prior_scale.detach().square(), expected, rtol=1e-6, atol=0)


def test_learned_scale_is_trained_by_an_optimizer_over_model_parameters() -> None:
    reg = LearnedScaleNormalKLDivergence(scale=5.0)
    model = torch.nn.Sequential(bl.layers.LinearReparameterization(3, 2, weight_regularizer=reg))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = reg.prior_scale.item()
    for _ in range(5):
        opt.zero_grad()
        sum(bl.losses(model)).backward()
        opt.step()
    assert reg.prior_scale.item() < before  # a scale of 5 is far above the posterior's


def test_learned_scale_point_estimate_is_negative_log_prior() -> None:
    reg = LearnedScaleNormalKLDivergence(scale=0.5)
    w = torch.randn(3, 2)
    expected = -Normal(0.0, reg.prior_scale).log_prob(w).sum()
    torch.testing.assert_close(reg(Deterministic(w)), expected)


# ------------------------------------------------------------------ hierarchical
@pytest.mark.parametrize(("m", "v"), [(0.0, 0.1), (-0.7, 0.6)])
def test_hierarchical_expected_kl_against_monte_carlo_over_scale_draws(m: float, v: float) -> None:
    q = _posterior((4, 6))
    reg = HierarchicalNormalKLDivergence(loc=0.2, scale=torch.ones(4, 1)).double()
    _set_scale_posterior(reg, m, v)
    closed = reg.expected_conditional_kl(q.loc, q.scale, q.scale.log()).detach()
    n = 40_000
    tau = reg.scale_posterior().sample((n,))  # (n, 4, 1)
    draws = kl_divergence(q, Normal(torch.tensor(0.2, dtype=torch.float64), tau)).sum((-2, -1))
    se = draws.std() / math.sqrt(n)
    assert abs(float(draws.mean() - closed)) < Z * float(se), (float(draws.mean()), float(closed))


@pytest.mark.parametrize(("m", "v", "b"), [(0.0, 0.1, 1.0), (-1.0, 1.5, 0.3), (2.0, 0.5, 1.0)])
def test_half_cauchy_hyperprior_kl_against_monte_carlo(m: float, v: float, b: float) -> None:
    reg = HierarchicalNormalKLDivergence(hyperprior=HalfCauchy(b)).double()
    _set_scale_posterior(reg, m, v)
    closed = reg.hyperprior_kl().detach()
    n = 200_000
    with torch.no_grad():
        q = reg.scale_posterior()
        tau = q.sample((n,))
        draws = q.log_prob(tau) - HalfCauchy(torch.tensor(b, dtype=torch.float64)).log_prob(tau)
    se = draws.std() / math.sqrt(n)
    assert abs(float(draws.mean() - closed)) < Z * float(se), (float(draws.mean()), float(closed))


def test_log_normal_hyperprior_kl_equals_torch() -> None:
    reg = HierarchicalNormalKLDivergence(
        scale=torch.ones(3, 1), hyperprior=LogNormal(-0.5, 2.0)
    ).double()
    _set_scale_posterior(reg, 0.3, 0.4)
    expected = kl_divergence(reg.scale_posterior(), LogNormal(-0.5, 2.0)).sum()
    torch.testing.assert_close(reg.hyperprior_kl().float(), expected.float())


def test_hierarchical_total_through_losses_and_gradients() -> None:
    reg = HierarchicalNormalKLDivergence(scale=torch.full((2, 1), 0.5))
    layer = bl.layers.LinearFlipout(3, 2, weight_regularizer=reg)
    (term,) = bl.losses(layer)
    q = layer.weight.distribution
    expected = reg.expected_conditional_kl(q.mean, q.stddev, q.stddev.log()) + reg.hyperprior_kl()
    torch.testing.assert_close(term, expected)
    term.backward()
    for p in (reg.prior_scale_loc, reg.prior_scale_rho, layer.weight_loc, layer.weight_rho):
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
        assert bool((p.grad != 0).any())


def test_hierarchical_gradcheck() -> None:
    reg = HierarchicalNormalKLDivergence(scale=torch.full((2, 1), 0.8)).double()
    loc = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    rho = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    m = torch.randn(2, 1, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 1, dtype=torch.float64, requires_grad=True)

    def penalty(loc, rho, m, r):  # type: ignore[no-untyped-def]
        params = {"prior_scale_loc": m, "prior_scale_rho": r}
        return torch.func.functional_call(reg, params, (loc, rho), {}, strict=False)

    reg.forward = reg.softplus_normal_penalty  # type: ignore[method-assign]
    assert torch.autograd.gradcheck(penalty, (loc, rho, m, r))


def test_hierarchical_point_estimate_is_expected_negative_log_prior() -> None:
    reg = HierarchicalNormalKLDivergence(scale=0.6).double()
    _set_scale_posterior(reg, -0.4, 0.5)
    w = torch.randn(3, 4, dtype=torch.float64)
    got = (reg(Deterministic(w)) - reg.hyperprior_kl()).detach()
    tau = reg.scale_posterior().sample((100_000,))  # (n,)
    draws = -Normal(0.0, tau.unsqueeze(-1).unsqueeze(-1)).log_prob(w).sum((-2, -1))
    se = draws.std() / math.sqrt(draws.numel())
    assert abs(float(draws.mean() - got)) < Z * float(se)


# ---------------------------------------------------------------- state and errors
@pytest.mark.parametrize(
    "make",
    [
        lambda: LearnedScaleNormalKLDivergence(scale=torch.ones(2, 1)),
        lambda: HierarchicalNormalKLDivergence(scale=torch.ones(2, 1)),
        lambda: HierarchicalNormalKLDivergence(hyperprior=LogNormal(0.0, 2.0)),
    ],
)
def test_state_dict_round_trip_with_weights_only(make) -> None:  # type: ignore[no-untyped-def]
    layer = bl.layers.LinearReparameterization(3, 2, weight_regularizer=make())
    with torch.no_grad():
        for p in layer.weight_regularizer.parameters():
            p.add_(0.3)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert any(k.startswith("weight_regularizer.prior_scale") for k in state)
    fresh = bl.layers.LinearReparameterization(3, 2, weight_regularizer=make())
    fresh.load_state_dict(state)
    torch.testing.assert_close(bl.losses(fresh)[0], bl.losses(layer)[0])


def test_bad_input_raises_naming_the_regularizer() -> None:
    for cls in (LearnedScaleNormalKLDivergence, HierarchicalNormalKLDivergence):
        name = cls.__name__
        with pytest.raises(ValueError, match=f"{name}.*`scale`.*> 0"):
            cls(scale=0.0)
        with pytest.raises(ValueError, match=f"{name}.*`scale`.*finite"):
            cls(scale=float("nan"))
        with pytest.raises(TypeError, match=f"{name}.*`scale`.*number or tensor"):
            cls(scale="wide")  # type: ignore[arg-type]
        reg = cls(scale=torch.ones(3, 1))
        with pytest.raises(ValueError, match=rf"{name}.*\(3, 1\).*\(2, 3\)"):
            reg(Normal(torch.zeros(2, 3), torch.ones(2, 3)))
        with pytest.raises(ValueError, match=rf"{name}.*\(3, 1\).*\(2, 3\)"):
            bl.losses(
                bl.layers.LinearReparameterization(
                    3, 2, weight_regularizer=cls(scale=torch.ones(3, 1))
                )
            )
        with pytest.raises(TypeError, match=f"{name}.*Normal.*LogNormal"):
            reg(LogNormal(torch.zeros(3, 2), torch.ones(3, 2)))
    h = HierarchicalNormalKLDivergence
    with pytest.raises(TypeError, match="HierarchicalNormalKLDivergence.*hyperprior.*Normal"):
        h(hyperprior=Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="HierarchicalNormalKLDivergence.*hyperprior_scale.*3"):
        h(scale=torch.ones(2, 1), hyperprior=HalfCauchy(torch.ones(3)))
    with pytest.raises(ValueError, match="HierarchicalNormalKLDivergence.*log_scale_std"):
        h(log_scale_std=-1.0)
    with pytest.raises(ValueError, match="quadrature_points.*1"):
        h(quadrature_points=1)
    with pytest.raises(TypeError, match="quadrature_points"):
        h(quadrature_points=8.0)  # type: ignore[arg-type]


def test_float64_and_scale_factor() -> None:
    reg = HierarchicalNormalKLDivergence(scale_factor=0.5)
    layer = bl.layers.LinearReparameterization(3, 2, weight_regularizer=reg, dtype=torch.float64)
    assert reg.prior_scale_loc.dtype == torch.float64
    q = layer.weight.distribution
    full = reg.expected_conditional_kl(q.mean, q.stddev, q.stddev.log()) + reg.hyperprior_kl()
    torch.testing.assert_close(layer.losses[0], 0.5 * full)
    assert F.softplus(reg.prior_scale_rho).item() == pytest.approx(0.1)
