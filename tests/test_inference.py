"""program_elbo: exact at the true posterior, unbiased elsewhere, layer KLs, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from stats_util import ALPHA, z_bonferroni
from torch import nn

import bayesian_layers as bl
from bayesian_layers import layers

F64 = torch.float64
X = torch.tensor([0.8, 1.9, 0.4, 1.1], dtype=F64)


def model():
    """z ~ N(0, 1); x_i ~ N(z, 1), i = 1..4."""
    z = bl.Normal(torch.tensor(0.0, dtype=F64), 1.0, name="z")
    return bl.Normal(z, 1.0, sample_shape=(len(X),), name="x")


def make_posterior(loc, scale):
    def posterior():
        return bl.Normal(loc, scale, name="z")

    return posterior


def closed_form_elbo(m: float, s: float) -> float:
    n = len(X)
    expected_loglik = -0.5 * n * math.log(2 * math.pi) - 0.5 * float(
        ((X - m) ** 2).sum() + n * s**2
    )
    expected_logprior = -0.5 * math.log(2 * math.pi) - 0.5 * (m**2 + s**2)
    entropy = 0.5 * math.log(2 * math.pi * math.e * s**2)
    return expected_loglik + expected_logprior + entropy


def test_elbo_at_the_exact_posterior_is_the_log_evidence():
    """Conjugate model: at q = p(z | x) the ELBO has zero variance and equals log p(x),
    with p(x) = N(0, I + 11ᵀ) (scipy)."""
    n = len(X)
    m, s = float(X.sum()) / (n + 1), 1 / math.sqrt(n + 1)
    posterior = make_posterior(torch.tensor(m, dtype=F64), torch.tensor(s, dtype=F64))
    evidence = stats.multivariate_normal(np.zeros(n), np.eye(n) + np.ones((n, n))).logpdf(X)
    for _ in range(3):
        elbo = bl.program_elbo(model, posterior, observed={"x": X})
        assert float(elbo) == pytest.approx(evidence, rel=1e-12)


def test_elbo_is_unbiased_elsewhere():
    """num_samples = 1000 draws at q = N(0.3, 0.8²): the per-draw mean is within
    z(1 - α/2) sd/sqrt(1000) of the closed-form ELBO (α = 1e-3, one check)."""
    loc, scale = torch.tensor(0.3, dtype=F64), torch.tensor(0.8, dtype=F64)
    posterior = make_posterior(loc, scale)
    draws = torch.stack([bl.program_elbo(model, posterior, observed={"x": X}) for _ in range(1000)])
    half_width = z_bonferroni(1) * float(draws.std()) / math.sqrt(len(draws))
    assert abs(float(draws.mean()) - closed_form_elbo(0.3, 0.8)) < half_width


def test_elbo_gradients_are_unbiased():
    """1000 single-draw gradients at q = N(0.3, 0.8²): their means are within
    z(1 - α/4) sd/sqrt(1000) of the closed-form ELBO's gradient,
    ∂/∂m = Σx - (n + 1) m and ∂/∂s = 1/s - (n + 1) s (two checks)."""
    n, m, s = len(X), 0.3, 0.8
    loc = torch.tensor(m, dtype=F64, requires_grad=True)
    scale = torch.tensor(s, dtype=F64, requires_grad=True)
    posterior = make_posterior(loc, scale)
    torch.manual_seed(0)
    grads = torch.stack(
        [
            torch.stack(
                torch.autograd.grad(
                    bl.program_elbo(model, posterior, observed={"x": X}), [loc, scale]
                )
            )
            for _ in range(1000)
        ]
    )
    expected = torch.tensor([float(X.sum()) - (n + 1) * m, 1 / s - (n + 1) * s], dtype=F64)
    half_width = z_bonferroni(2) * grads.std(dim=0) / math.sqrt(len(grads))
    assert (grads.mean(dim=0) - expected).abs().lt(half_width).all()


def test_maximising_the_elbo_finds_the_posterior():
    """Fit q = N(m, s²) by L-BFGS on program_elbo with K = 256 draws z_k = m + s ε_k,
    the same ε at every step (common random numbers). The maximiser of that objective
    puts the draws' mean at the posterior mean μ = Σx / (n + 1) and their variance
    (divisor K) at the posterior variance 1 / (n + 1): ∂/∂m = (n + 1)(μ - z̄) and, there,
    ∂/∂s = (1 - (n + 1) var(z)) / s, so |gradient| < 1e-8 leaves both within 1e-8.
    Hence m - μ = -s ε̄ = -sqrt(1 / (n + 1)) T / sqrt(K - 1) with T ~ Student t(K - 1),
    and K (1 / (n + 1)) / s² ~ χ²(K - 1): two exact checks at level α / 2 each."""
    n, num, seed = len(X), 256, 0
    mu, var = float(X.sum()) / (n + 1), 1 / (n + 1)
    loc = torch.zeros((), dtype=F64, requires_grad=True)
    rho = torch.zeros((), dtype=F64, requires_grad=True)
    posterior = lambda: bl.Normal(loc, nn.functional.softplus(rho), name="z")  # noqa: E731
    opt = torch.optim.LBFGS(
        [loc, rho],
        max_iter=100,
        tolerance_grad=1e-10,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            loss = -bl.program_elbo(model, posterior, observed={"x": X}, num_samples=num)
        loss.backward()
        return loss

    opt.step(closure)
    closure()
    assert max(abs(float(loc.grad)), abs(float(rho.grad))) < 1e-8
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        draws = []
        for _ in range(num):
            with bl.tape() as q:
                posterior()
            draws.append(q["z"].value)
    z = torch.stack(draws)
    assert abs(float(z.mean()) - mu) < 1e-8
    assert abs(float(z.var(unbiased=False)) - var) < 1e-8

    m, s = float(loc.detach()), float(nn.functional.softplus(rho.detach()))
    t_bound = stats.t(num - 1).ppf(1 - ALPHA / 4) * math.sqrt(var / (num - 1))
    assert abs(m - mu) < t_bound
    chi2 = stats.chi2(num - 1)
    assert chi2.ppf(ALPHA / 4) < num * var / s**2 < chi2.ppf(1 - ALPHA / 4)


class Figure9Posterior(nn.Module):
    """The posterior program of Figure 9: returns the sparse-GP intensity."""

    def __init__(self):
        super().__init__()
        self.rate = nn.Sequential(
            layers.SparseGaussianProcess(1, num_inducing=4, in_features=1, dtype=F64),
            nn.Softplus(),
        )

    def forward(self):
        return self.rate


def figure9_model(rate):
    return layers.PoissonProcess(rate, [(0.0, 1.0)], name="events")()


def test_layer_kls_enter_through_losses_and_weights_are_not_scored():
    """A posterior module holding a sparse GP (Figure 9): with the function at its mean the
    ELBO is exactly log p(events | rate) - KL(q(u) || p(u)), the KL taken from bl.losses of
    the posterior by default; a Bayesian weight of a posterior is scored by its KL only."""
    posterior = Figure9Posterior()
    events = torch.tensor([[0.2], [0.5], [0.6]], dtype=F64)
    posterior.rate(events)  # the first call initialises the inducing inputs from data
    with torch.no_grad():
        posterior.rate[0].inducing_loc.fill_(0.5)  # away from the prior: KL > 0
    with bl.posterior_mean(posterior):
        elbo = bl.program_elbo(
            figure9_model, posterior, observed={"events": events}, pass_posterior=True
        )
        log_lik = layers.PoissonProcess(posterior.rate, [(0.0, 1.0)])(events).log_prob(events)
    kl = posterior.rate[0].losses[0]
    assert float(kl.detach()) > 0
    torch.testing.assert_close(elbo, log_lik - kl)
    elbo.backward()
    assert posterior.rate[0].inducing_loc.grad.abs().sum() > 0

    # a posterior with a Bayesian weight: its draw is on the tape but scored by KL only
    net = layers.LinearReparameterization(1, 1, dtype=F64)

    def weighted_posterior():
        shift = net(torch.ones(1, 1, dtype=F64))[0, 0]
        return bl.Normal(shift, 1.0, name="z")

    torch.manual_seed(1)
    got = bl.program_elbo(model, weighted_posterior, observed={"x": X}, kl_modules=net)
    torch.manual_seed(1)
    with bl.tape() as q:
        weighted_posterior()
    joint = bl.make_log_joint_fn(model)(x=X, z=q["z"].value)
    expected = joint - q["z"].log_prob(q["z"].value) - net.losses[0]
    assert list(q) == ["weight", "z"]
    torch.testing.assert_close(got, expected)


def test_overlapping_kl_modules_count_each_kl_once():
    """kl_modules=[net, net[0]] names one layer twice: its KL enters once."""
    net = nn.Sequential(layers.LinearReparameterization(1, 1, dtype=F64))
    posterior = make_posterior(torch.tensor(0.3, dtype=F64), 0.8)
    kl = net[0].losses[0]
    assert float(kl.detach()) > 0
    elbos = []
    for kl_modules in ([], net, [net, net[0]]):
        torch.manual_seed(2)
        elbos.append(bl.program_elbo(model, posterior, observed={"x": X}, kl_modules=kl_modules))
    assert torch.equal(elbos[2], elbos[1])
    assert torch.equal(elbos[1], elbos[0] - kl)


def test_mixed_precision_terms_add_up_in_the_wider_dtype():
    """A float32 and a float64 variable: the joint and the ELBO keep float64, the float32
    terms promoted (not the sum cast to the first term's dtype)."""

    def mixed():
        bl.Normal(torch.tensor(0.0), 1.0, name="a")
        return bl.Normal(torch.tensor(0.0, dtype=F64), 1.0, name="b")

    a, b = torch.tensor(0.1), torch.tensor(1 / 3, dtype=F64)
    log_a = torch.distributions.Normal(0.0, 1.0).log_prob(a)
    log_b = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), 1.0).log_prob(b)
    joint = bl.make_log_joint_fn(mixed)(a=a, b=b)
    assert joint.dtype == F64
    assert torch.equal(joint, log_a.to(F64) + log_b)

    # a float32 program whose posterior holds a float64 layer: its KL is not truncated
    net = layers.LinearReparameterization(1, 1, dtype=F64)
    kl = net.losses[0]
    posterior = make_posterior(torch.tensor(0.3), 0.8)
    model32 = lambda: bl.Normal(bl.Normal(0.0, 1.0, name="z"), 1.0, name="x")  # noqa: E731
    torch.manual_seed(2)
    elbo = bl.program_elbo(model32, posterior, observed={"x": a}, kl_modules=net)
    torch.manual_seed(2)
    without_kl = bl.program_elbo(model32, posterior, observed={"x": a}, kl_modules=[])
    assert without_kl.dtype == torch.float32 and elbo.dtype == F64
    assert torch.equal(elbo, without_kl.to(F64) - kl)


def test_program_elbo_rejects_mismatched_programs():
    posterior = make_posterior(torch.tensor(0.0, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="no random variable named \\['y'\\]"):
        bl.program_elbo(model, posterior, observed={"x": X, "y": X})

    def stray():
        bl.Normal(0.0, 1.0, name="stray")
        return posterior()

    with pytest.raises(ValueError, match="'stray'"):
        bl.program_elbo(model, stray, observed={"x": X})
    with pytest.raises(ValueError, match="both observed and drawn"):
        bl.program_elbo(model, posterior, observed={"z": 0.0, "x": X})
    with pytest.raises(ValueError, match="num_samples"):
        bl.program_elbo(model, posterior, observed={"x": X}, num_samples=0)
    with pytest.raises(TypeError, match="`posterior` to be callable"):
        bl.program_elbo(model, None, observed={"x": X})


def test_model_latents_the_posterior_never_draws_are_prior_draws():
    """z ~ N(0, 1), x | z ~ N(z, 1), x = 1, and a posterior that draws nothing: z is drawn
    from its prior and scored by neither side, so the ELBO is the one with q = prior,
    E[log N(1; z, 1)] = -log(2π)/2 - (1 + 1)/2 = -1.919 per element. Each draw's term has
    variance Var((1 - z)²)/4 = 6/4; n = 20000 elements in one call, one check at α."""
    n = 20000

    def prior_model():
        z = bl.Normal(torch.zeros(n, dtype=F64), 1.0, name="z")
        return bl.Normal(z, 1.0, name="x")

    ones = torch.ones(n, dtype=F64)
    torch.manual_seed(0)
    elbo = bl.program_elbo(prior_model, lambda: None, observed={"x": ones})
    expected = n * (-0.5 * math.log(2 * math.pi) - 1.0)
    assert abs(float(elbo) - expected) < z_bonferroni(1) * math.sqrt(1.5 * n)
    torch.manual_seed(0)  # the same draw of z: the ELBO is log p(x | z) alone
    with bl.tape() as t, bl.condition(x=ones):
        prior_model()
    torch.testing.assert_close(elbo, t["x"].log_prob(ones).sum(), rtol=1e-12, atol=0)


def test_a_surrounding_condition_cannot_change_the_estimate():
    """The ELBO averages over q with the observations given: a surrounding condition
    naming a latent or an observation raises; one naming something else warns at exit."""
    posterior = make_posterior(torch.tensor(0.0, dtype=F64), 0.5)
    for name in ("z", "x"):
        with pytest.raises(ValueError, match=f"program_elbo.*'{name}'.*surrounding"):
            with bl.condition({name: torch.tensor(3.0, dtype=F64)}):
                bl.program_elbo(model, posterior, observed={"x": X})
    torch.manual_seed(3)
    expected = bl.program_elbo(model, posterior, observed={"x": X})
    torch.manual_seed(3)
    with pytest.warns(UserWarning, match=r"\['y'\]"), bl.condition(y=0.0):
        got = bl.program_elbo(model, posterior, observed={"x": X})
    assert torch.equal(got, expected)
