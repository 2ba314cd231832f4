"""GaussianLikelihood: the closed-form expected log-likelihood against Monte Carlo and its
optimum, the predictive distribution of y, state, errors."""

from __future__ import annotations

import io
import math

import pytest
import torch
from stats_util import z_bonferroni

import bayesian_layers as bl
from bayesian_layers import layers

F64 = torch.float64


def _f(n: int = 4, units: int = 2, seed: int = 0) -> bl.RandomVariable:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, units, generator=g, dtype=F64)
    var = torch.rand(n, units, generator=g, dtype=F64) + 0.2
    return bl.RandomVariable(torch.distributions.Normal(mean, var.sqrt()))


def test_expected_log_likelihood_matches_monte_carlo_over_f():
    """n = 100000 draws of f per element, 4 x 2 elements (k = 8 checks, α = 1e-3)."""
    lik = layers.GaussianLikelihood(2, noise_variance=0.3, dtype=F64)
    with torch.no_grad():
        lik.noise_rho[1] += 1.0  # different noise per unit
    f = _f()
    y = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    got = lik.expected_log_likelihood(f, y)
    torch.manual_seed(2)
    draws = f.distribution.sample((100_000,))  # (n, 4, 2)
    noise = lik.noise_variance.detach()
    logp = torch.distributions.Normal(draws, noise.sqrt()).log_prob(y)
    se = logp.std(0) / math.sqrt(logp.shape[0])
    assert ((got.detach() - logp.mean(0)).abs() < z_bonferroni(8) * se).all()
    # the same from the moments alone, and from the distribution or a point mass
    torch.testing.assert_close(lik.expected_log_likelihood(f.distribution, y), got)
    point = torch.distributions.Normal(f.distribution.mean, noise.sqrt()).log_prob(y)
    torch.testing.assert_close(lik.expected_log_likelihood(f.distribution.mean, y), point)


def test_noise_gradient_vanishes_at_the_closed_form_optimum():
    """d ELL / d σ² = 0 at σ² = mean((y - μ)² + v) (per unit, summed over examples)."""
    f = _f(n=50, units=1)
    y = torch.randn(50, 1, dtype=F64)
    mean, var = f.distribution.mean, f.distribution.variance
    best = ((y - mean).square() + var).mean()
    lik = layers.GaussianLikelihood(1, noise_variance=float(best), min_noise_variance=0.0,
                                    dtype=F64)  # fmt: skip
    lik.expected_log_likelihood(f, y).sum().backward()
    assert abs(lik.noise_rho.grad.item()) < 1e-10
    torch.testing.assert_close(lik.noise_variance.detach(), best.reshape(1))


def test_predictive_y_adds_the_noise_to_f():
    """Variance v + σ²; the value is f's sample plus noise: over n = 20000 rows (f drawn
    per row), mean and variance within z · SE (k = 4 checks, α = 1e-3)."""
    lik = layers.GaussianLikelihood(2, noise_variance=0.5, dtype=F64, name="y")
    f = _f(n=1)
    y = lik(f)
    torch.testing.assert_close(y.distribution.variance, f.distribution.variance + 0.5)
    torch.testing.assert_close(y.distribution.mean, f.distribution.mean)
    assert y.name == "y"
    torch.manual_seed(3)
    n = 20_000
    many = torch.distributions.Normal(f.distribution.mean.expand(n, 2), f.distribution.stddev)
    values = lik(bl.RandomVariable(many)).value  # (n, 2): f's sample plus noise per row
    z = z_bonferroni(4)
    total = y.distribution.variance
    assert ((values.mean(0) - y.distribution.mean).abs() < z * (total / n).sqrt()).all()
    assert ((values.var(0) - total).abs() < z * total * math.sqrt(2 / (n - 1))).all()
    with bl.condition(y=torch.zeros(1, 2, dtype=F64)):
        torch.testing.assert_close(lik(f).value, torch.zeros(1, 2, dtype=F64))


def test_elbo_with_a_sparse_gp_reaches_every_parameter_and_state_round_trips():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 40).unsqueeze(-1)
    y = torch.sin(2 * x) + 0.3 * torch.randn(40, 1)
    gp, lik = layers.SparseGaussianProcess(1, 10), layers.GaussianLikelihood(1)
    loss = bl.elbo_loss(-lik.expected_log_likelihood(gp(x), y).sum(-1).mean(), gp, 40)
    loss.backward()
    for p in (lik.noise_rho, gp.inducing_loc, gp.mean_weight):  # at q = p, Z has none
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    buf = io.BytesIO()
    torch.save(lik.state_dict(), buf)
    buf.seek(0)
    fresh = layers.GaussianLikelihood(1)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(fresh.noise_variance, lik.noise_variance)
    fixed = layers.GaussianLikelihood(1, learn_noise=False)
    assert list(fixed.parameters()) == [] and "noise_rho" in fixed.state_dict()


def test_bad_input_raises_clear_errors():
    lik = layers.GaussianLikelihood(2)
    f = bl.RandomVariable(torch.distributions.Normal(torch.zeros(5, 2), 1.0))
    with pytest.raises(ValueError, match=r"expected_log_likelihood expected `y`.*\(5, 2\).*\(5,\)"):
        lik.expected_log_likelihood(f, torch.zeros(5))
    with pytest.raises(
        ValueError, match=r"GaussianLikelihood.forward expected `f` of shape \(\*, 2\)"
    ):
        lik(torch.zeros(5, 3))
    with pytest.raises(TypeError, match="GaussianLikelihood.forward expected `f`.*list"):
        lik([1.0, 2.0])
    for kwargs, error, match in [
        ({"noise_variance": -1.0}, ValueError, "noise_variance` to be a finite number > 1e-06"),
        ({"noise_variance": math.nan}, ValueError, "noise_variance"),
        (
            {"min_noise_variance": -1.0},
            ValueError,
            "min_noise_variance` to be a finite number >= 0",
        ),
        ({"learn_noise": 1}, TypeError, "learn_noise` to be a bool"),
        ({"name": 2}, TypeError, "name` to be a str or None"),
    ]:
        with pytest.raises(error, match=f"GaussianLikelihood expected `{match}"):
            layers.GaussianLikelihood(1, **kwargs)
    with pytest.raises(ValueError, match="GaussianLikelihood expected `units` >= 1, got 0"):
        layers.GaussianLikelihood(0)


def test_predictive_log_prob_refuses_a_target_that_broadcasts_against_the_batch():
    """A ``(B,)`` target for ``(B, 1)`` predictions gave ``(B, B)`` log densities (every
    example scored against every target), silently averaged by ``.mean()``."""
    lik = layers.GaussianLikelihood(1, noise_variance=0.3, dtype=F64)
    y_rv = lik(_f(n=4, units=1))
    y = torch.randn(4, dtype=F64)
    with pytest.raises(ValueError, match=r"log_prob expected a target of shape \(4, 1\)"):
        y_rv.log_prob(y)
    expected = torch.distributions.Normal(y_rv.distribution.loc, y_rv.distribution.scale)
    torch.testing.assert_close(y_rv.log_prob(y[:, None]), expected.log_prob(y[:, None]))
