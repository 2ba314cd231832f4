"""SparseGaussianProcess in ``"frozen"`` mode: one function sample by pathwise conditioning.

The frozen function is ``f(x) = m(x) + f₀(x) + K_xZ K_ZZ⁻¹ (u - f₀(Z))`` with ``u ~ q(u)``
and a random-Fourier-feature prior draw ``f₀``: a function of ``x`` alone (permutations,
duplicates, repeated calls agree), redrawn by ``bl.resample``, and over resamples its
mean and covariance are exactly the layer's marginal predictive ones.
"""

from __future__ import annotations

import math

import pytest
import torch
from stats_util import z_bonferroni

import bayesian_layers as bl
from bayesian_layers import layers

F64 = torch.float64


def _layer(kernel=None, whiten: bool = True, jitter: float = 1e-6, **kw):
    torch.manual_seed(0)
    kernel = kernel if kernel is not None else layers.Matern52(1.2, 0.8, dtype=F64)
    layer = layers.SparseGaussianProcess(
        2, 6, in_features=2, covariance_fn=kernel, whiten=whiten, jitter=jitter, dtype=F64, **kw
    )
    layer(torch.randn(30, 2, dtype=F64))  # data-dependent initialisation
    with torch.no_grad():  # away from the prior: a visible mean and a shrunk variance
        layer.inducing_loc.normal_()
        layer.inducing_scale_offdiag.normal_(std=0.2)
        layer.inducing_scale_rho.fill_(-1.0)
    return layer


@pytest.mark.parametrize(
    "kernel", [None, layers.LinearKernel(dtype=F64)], ids=["matern52", "linear-kernel"]
)
def test_frozen_layer_is_one_function_of_its_input(kernel):
    layer = _layer(kernel)
    x = torch.randn(9, 2, dtype=F64)
    perm = torch.randperm(9)
    with torch.no_grad(), bl.frozen_sample(layer):
        f = layer(x).value
        torch.testing.assert_close(layer(x[perm]).value, f[perm], rtol=0, atol=1e-12)
        twice = layer(torch.cat([x, x[:1]])).value  # a row twice in one batch
        torch.testing.assert_close(twice[-1], twice[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(layer(x[:1]).value, f[:1], rtol=0, atol=1e-12)  # B = 1
        torch.testing.assert_close(layer(x).value, f, rtol=0, atol=1e-12)
        bl.resample(layer)
        assert not torch.allclose(layer(x).value, f)


@pytest.mark.parametrize("whiten", [True, False])
def test_frozen_functions_have_the_marginal_predictive_moments(whiten):
    """R = 4000 frozen functions (drawn at once with ``vectorized_samples``) at 3 points
    x 2 units: mean and variance within z · SE of the layer's marginals (k = 12 checks,
    α = 1e-3; the variance's SE from the sample fourth moment). Exact for any number of
    prior features (the frequencies are redrawn with each function), so 16 suffice."""
    layer = _layer(whiten=whiten, jitter=1e-3, num_prior_features=16)  # jitter that matters
    x = torch.randn(3, 2, dtype=F64)
    r = 4000
    with torch.no_grad():
        dist = layer(x).distribution
        with bl.frozen_sample(layer), bl.vectorized_samples(layer, r):
            f = layer(x.repeat(r, 1)).value.reshape(r, 3, 2)
    z = z_bonferroni(12)
    centred = f - f.mean(0)
    var = centred.square().mean(0)
    se_var = ((centred**4).mean(0) - var.square()).sqrt() / math.sqrt(r)
    assert ((f.mean(0) - dist.mean).abs() < z * dist.stddev / math.sqrt(r)).all()
    assert ((var - dist.variance).abs() < z * se_var).all(), (var, dist.variance)


def test_frozen_function_gets_gradients_and_posterior_mean_is_unchanged():
    layer = _layer()
    x = torch.randn(5, 2, dtype=F64)
    with bl.frozen_sample(layer):
        layer(x).value.sum().backward()
    for p in (layer.inducing_loc, layer.inducing_scale_rho, layer.inducing_inputs):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    with torch.no_grad(), bl.posterior_mean(layer):
        torch.testing.assert_close(layer(x).value, layer(x).distribution.mean)
