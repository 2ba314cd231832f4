"""The empirical-Bayes normal prior: closed form, envelope gradients, selection by name."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import optimize, stats
from torch.distributions import Normal

import bayesian_layers as bl
from bayesian_layers.distributions import Deterministic
from bayesian_layers.regularizers import (
    EmpiricalBayesNormalKLDivergence,
    LearnedScaleNormalKLDivergence,
    NormalKLDivergence,
    get_regularizer,
)


def _posterior(seed: int = 0, shape: tuple[int, ...] = (5, 7)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    loc = 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)
    scale = 0.05 + 0.2 * torch.rand(shape, generator=g, dtype=torch.float64)
    return loc, scale


def test_equals_the_fixed_prior_kl_at_the_minimising_scale_found_by_scipy():
    loc, scale = _posterior()
    eb = EmpiricalBayesNormalKLDivergence(loc=0.1).double()
    value = float(eb(Normal(loc, scale)))

    def kl_at(log_s: float) -> float:
        prior = Normal(eb.prior_loc, math.exp(log_s))
        return float(torch.distributions.kl_divergence(Normal(loc, scale), prior).sum())

    best = optimize.minimize_scalar(kl_at, bracket=(-3.0, 0.0), tol=1e-12)
    assert value == pytest.approx(best.fun, rel=1e-10, abs=1e-10)
    assert float(eb.prior_scale) == pytest.approx(math.exp(best.x), rel=1e-6)
    assert value >= 0


def test_zero_only_at_the_prior_family_and_positive_otherwise():
    eb = EmpiricalBayesNormalKLDivergence()
    flat = Normal(torch.zeros(4, 3), torch.full((4, 3), 0.37))
    assert abs(float(eb(flat))) < 1e-5
    assert float(eb(Normal(torch.full((4, 3), 0.01), torch.full((4, 3), 0.37)))) > 0


def test_gradient_is_the_fixed_prior_gradient_at_that_scale_envelope_theorem():
    loc, scale = _posterior(1)
    loc.requires_grad_(True)
    scale.requires_grad_(True)
    eb = EmpiricalBayesNormalKLDivergence().double()
    g_eb = torch.autograd.grad(eb(Normal(loc, scale)), (loc, scale))
    fixed = NormalKLDivergence(scale=eb.prior_scale.clone()).double()
    g_fixed = torch.autograd.grad(fixed(Normal(loc, scale)), (loc, scale))
    for a, b in zip(g_eb, g_fixed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_gradcheck_float64_through_the_softplus_path():
    eb = EmpiricalBayesNormalKLDivergence().double()
    loc, scale = _posterior(2, (3, 4))
    rho = torch.log(torch.expm1(scale))
    loc.requires_grad_(True)
    rho.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m, r: eb.softplus_normal_penalty(m, r), (loc, rho))


def test_point_estimate_is_the_negative_log_density_under_the_fitted_normal():
    w = _posterior(3)[0]
    eb = EmpiricalBayesNormalKLDivergence()
    value = float(eb(Deterministic(w)))
    s = float(w.square().mean().sqrt())
    expected = -stats.norm(0.0, s).logpdf(w.numpy()).sum()
    assert value == pytest.approx(expected, rel=1e-10)


def test_layer_prior_scale_tracks_the_weights_and_state_dict_round_trips():
    torch.manual_seed(0)
    layer = bl.layers.LinearFlipout(
        64, 10, weight_regularizer="empirical_bayes_normal_kl_divergence"
    )
    assert math.isnan(float(layer.weight_regularizer.prior_scale))
    sum(bl.losses(layer)).backward()
    q = layer.weight.distribution
    with torch.no_grad():
        expected = float((q.loc.square() + q.scale.square()).mean().sqrt())
    assert float(layer.weight_regularizer.prior_scale) == pytest.approx(expected, rel=1e-5)
    fresh = bl.layers.LinearFlipout(
        64, 10, weight_regularizer=NormalKLDivergence(scale="empirical_bayes")
    )
    fresh.load_state_dict(layer.state_dict())
    fitted = layer.weight_regularizer.prior_scale
    assert float(fresh.weight_regularizer.prior_scale) == float(fitted)


def test_selection_by_name_and_by_scale_string():
    assert isinstance(
        get_regularizer("empirical_bayes_normal_kl_divergence"), EmpiricalBayesNormalKLDivergence
    )
    eb = NormalKLDivergence(0.5, scale="empirical_bayes", scale_factor=0.25)
    assert isinstance(eb, EmpiricalBayesNormalKLDivergence)
    assert float(eb.prior_loc) == 0.5 and eb.scale_factor == 0.25
    learned = NormalKLDivergence(scale="learned")
    assert isinstance(learned, LearnedScaleNormalKLDivergence)
    assert float(learned.prior_scale.detach()) == pytest.approx(1.0)
    plain = NormalKLDivergence(scale=0.5)
    assert type(plain) is NormalKLDivergence and float(plain.prior_scale) == 0.5


def test_bad_inputs_name_the_class_and_the_argument():
    with pytest.raises(TypeError, match="NormalKLDivergence expected `scale`.*'empirical'"):
        NormalKLDivergence(scale="empirical")
    with pytest.raises(TypeError, match="EmpiricalBayesNormalKLDivergence expected a Normal"):
        EmpiricalBayesNormalKLDivergence()(torch.distributions.Laplace(torch.zeros(2), 1.0))
    with pytest.raises(ValueError, match="scale_factor"):
        EmpiricalBayesNormalKLDivergence(scale_factor=-1.0)
