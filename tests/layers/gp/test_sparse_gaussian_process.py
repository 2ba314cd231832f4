"""SparseGaussianProcess: exactness at Z = X, the ELBO bound, deep-GP stacking, numerics, errors."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel
from stats_util import z_bonferroni
from torch import nn

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers._checks import inverse_softplus
from bayesian_layers.layers.gp.sparse_variational import (
    gaussian_expected_log_likelihood,
    svgp_kl,
    svgp_predictive_moments,
)

F64 = torch.float64
AMP, LS = 1.3, 0.7


def _svgp(z: torch.Tensor, units: int = 1, **kw) -> layers.SparseGaussianProcess:
    kernel = layers.ExponentiatedQuadratic(AMP, LS, dtype=F64)
    return layers.SparseGaussianProcess(
        units, z.shape[0], inducing_inputs=z, covariance_fn=kernel, mean_fn="zeros",
        jitter=0.0, dtype=F64, **kw,
    )  # fmt: skip


def _set_q(layer: layers.SparseGaussianProcess, loc: torch.Tensor, tril: torch.Tensor) -> None:
    """Write q(u) = N(loc, tril trilᵀ) ((U, M), (U, M, M)) into the layer's parameters."""
    with torch.no_grad():
        layer.inducing_loc.copy_(loc)
        layer.inducing_scale_offdiag.copy_(torch.tril(tril, -1))
        layer.inducing_scale_rho.copy_(inverse_softplus(tril.diagonal(dim1=-2, dim2=-1)))


def _titsias_optimum(layer: layers.SparseGaussianProcess, x, y, noise: float) -> None:
    """Whitened optimal q(v) for a Gaussian likelihood: Σ = (I + AAᵀ/σ²)⁻¹, m = Σ A y / σ²."""
    with torch.no_grad():
        a = torch.linalg.solve_triangular(
            layer.chol_kzz(), layer.covariance_fn(layer.inducing_inputs, x), upper=False
        )  # (M, N)
        eye = torch.eye(a.shape[0], dtype=F64)
        cov = torch.linalg.inv(eye + a @ a.mT / noise)
        loc = cov @ a @ y / noise  # (M, 1)
        _set_q(layer, loc.mT, torch.linalg.cholesky(cov).unsqueeze(0))


def _elbo(layer: layers.SparseGaussianProcess, x, y, noise: float) -> torch.Tensor:
    mean, var = layer.predictive_moments(x)
    return gaussian_expected_log_likelihood(mean, var, y, noise).sum() - layer.losses[0]


def _exact_lml(x, y, noise: float) -> torch.Tensor:
    k = layers.ExponentiatedQuadratic(AMP, LS, dtype=F64)(x, x)
    cov = k + noise * torch.eye(len(x), dtype=F64)
    return torch.distributions.MultivariateNormal(torch.zeros(len(x), dtype=F64), cov).log_prob(
        y.squeeze(-1)
    )


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=F64) * 4 - 2
    y = torch.sin(2 * x[:, :1]) + 0.3 * x[:, 1:] + 0.1 * torch.randn(n, 1, generator=g, dtype=F64)
    return x, y


def test_inducing_at_training_inputs_reproduces_exact_posterior():
    """Z = X with the Titsias-optimal q(u): sklearn's posterior mean/std and the exact LML."""
    x, y = _data(25)
    noise = 0.05
    xs = torch.linspace(-2.5, 2.5, 17, dtype=F64).unsqueeze(-1).repeat(1, 2) * torch.tensor(
        [1.0, -0.5], dtype=F64
    )
    layer = _svgp(x)
    _titsias_optimum(layer, x, y, noise)
    with torch.no_grad():
        mean, var = layer.predictive_moments(xs)
        elbo = _elbo(layer, x, y, noise)
    kernel = ConstantKernel(AMP**2, "fixed") * RBF(LS, "fixed")
    gpr = GaussianProcessRegressor(kernel, alpha=noise, optimizer=None).fit(x.numpy(), y.numpy())
    ref_mean, ref_std = gpr.predict(xs.numpy(), return_std=True)
    np.testing.assert_allclose(mean.squeeze(-1).numpy(), ref_mean.ravel(), atol=1e-6)
    np.testing.assert_allclose(var.sqrt().squeeze(-1).numpy(), ref_std, atol=1e-6)
    assert elbo.item() == pytest.approx(gpr.log_marginal_likelihood_value_, abs=1e-6)


def test_elbo_matches_titsias_bound_and_grows_to_lml():
    """Nested Z: the optimal ELBO equals Titsias' collapsed bound and rises to the LML at M = N."""
    x, y = _data(30, seed=1)
    noise = 0.1
    lml = _exact_lml(x, y, noise).item()
    elbos = []
    for m in (1, 3, 8, 15, 30):
        z = x[:m]
        layer = _svgp(z)
        _titsias_optimum(layer, x, y, noise)
        with torch.no_grad():
            elbo = _elbo(layer, x, y, noise).item()
            kern = layer.covariance_fn
            kzx = kern(z, x)
            qnn = kzx.mT @ torch.linalg.solve(kern(z, z), kzx)
            bound = torch.distributions.MultivariateNormal(
                torch.zeros(len(x), dtype=F64), qnn + noise * torch.eye(len(x), dtype=F64)
            ).log_prob(y.squeeze(-1)) - (kern.diag(x).sum() - qnn.trace()) / (2 * noise)
        assert elbo == pytest.approx(bound.item(), abs=1e-6 * abs(bound.item()))
        elbos.append(elbo)
    assert all(b >= a - 1e-8 for a, b in zip(elbos, elbos[1:], strict=False)), elbos
    assert elbos[-1] == pytest.approx(lml, abs=1e-6)
    assert lml - elbos[0] > 1.0  # one inducing point is a poor summary


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    n=st.integers(2, 8),
    m=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    noise=st.floats(0.05, 1.0),
    loc_scale=st.floats(0.0, 3.0),
)
def test_elbo_never_exceeds_exact_lml(n, m, seed, noise, loc_scale):
    """Any q(u), any Z, any data: ELBO <= log p(y) (Jensen; KL(q(f) || p(f | y)) >= 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=F64)
    y = torch.randn(n, 1, generator=g, dtype=F64)
    layer = _svgp(torch.randn(m, 2, generator=g, dtype=F64) * 1.5, whiten=bool(seed % 2))
    tril = torch.tril(torch.randn(1, m, m, generator=g, dtype=F64) * 0.5, -1)
    tril = tril + torch.diag_embed(torch.rand(1, m, generator=g, dtype=F64) + 0.05)
    _set_q(layer, loc_scale * torch.randn(1, m, generator=g, dtype=F64), tril)
    with torch.no_grad():
        elbo = _elbo(layer, x, y, noise)
    assert elbo.item() <= _exact_lml(x, y, noise).item() + 1e-9


def test_unwhitened_equals_whitened_reparameterisation():
    """q(u) = N(L m, L S Sᵀ Lᵀ) unwhitened is q(v) = N(m, S Sᵀ) whitened: same moments and KL."""
    x, _ = _data(9)
    z = x[:5] + 0.1
    white, plain = _svgp(z, units=2), _svgp(z, units=2, whiten=False)
    loc = torch.randn(2, 5, dtype=F64)
    tril = torch.tril(torch.randn(2, 5, 5, dtype=F64), -1) + torch.diag_embed(
        torch.rand(2, 5, dtype=F64) + 0.2
    )
    chol = white.chol_kzz().detach()
    _set_q(white, loc, tril)
    _set_q(plain, (chol @ loc.mT).mT, chol @ tril)
    with torch.no_grad():
        for a, b in zip(white.predictive_moments(x), plain.predictive_moments(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(white.losses[0], plain.losses[0], rtol=1e-9, atol=1e-10)
        ref = torch.distributions.kl_divergence(
            torch.distributions.MultivariateNormal(loc, scale_tril=tril),
            torch.distributions.MultivariateNormal(
                torch.zeros(5, dtype=F64), torch.eye(5, dtype=F64)
            ),
        ).sum()
    torch.testing.assert_close(white.losses[0], ref)


def test_gradcheck_kl_and_predictive_moments():
    g = torch.Generator().manual_seed(3)
    m, n, u = 4, 5, 2
    z = torch.randn(m, 2, generator=g, dtype=F64)
    x = torch.randn(n, 2, generator=g, dtype=F64)
    kern = layers.ExponentiatedQuadratic(AMP, LS, dtype=F64)
    chol = torch.linalg.cholesky(kern(z, z) + 1e-3 * torch.eye(m, dtype=F64))
    loc = torch.randn(u, m, generator=g, dtype=F64)
    tril = torch.tril(torch.randn(u, m, m, generator=g, dtype=F64), -1) + 2 * torch.eye(
        m, dtype=F64
    )
    inputs = [t.clone().requires_grad_() for t in (kern.diag(x), kern(z, x), chol, loc, tril)]
    for whiten in (True, False):
        assert torch.autograd.gradcheck(
            lambda *a, w=whiten: svgp_predictive_moments(*a, whiten=w), inputs
        )
    assert torch.autograd.gradcheck(svgp_kl, inputs[3:] + [inputs[2]])
    assert torch.autograd.gradcheck(lambda lo, tr: svgp_kl(lo, tr), inputs[3:])
    # and through the layer: inputs and inducing inputs
    layer = _svgp(z.clone())
    _set_q(layer, loc[:1], tril[:1])
    # the layer's whitened KL (from the parts of S) has the gradients of the checked kernel
    params = [layer.inducing_loc, layer.inducing_scale_offdiag, layer.inducing_scale_rho]
    got = torch.autograd.grad(layer.losses[0], params)
    want = torch.autograd.grad(svgp_kl(layer.inducing_loc, layer.inducing_scale_tril), params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    xg = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda xx: torch.cat(layer.predictive_moments(xx), -1), [xg])


def test_deep_gp_stack_consumes_samples_and_collects_every_kl():
    """Flatten + 3 layers (Figure 5): each layer sees the previous layer's sampled value."""
    model = nn.Sequential(
        nn.Flatten(),
        layers.SparseGaussianProcess(6, num_inducing=7),
        layers.SparseGaussianProcess(6, num_inducing=7),
        layers.SparseGaussianProcess(2, num_inducing=7),
    )
    seen, made = [], []
    for layer in model[1:]:
        layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        layer.register_forward_hook(lambda mod, args, out: made.append(out))
    out = model(torch.randn(11, 3, 2))
    assert isinstance(out, bl.RandomVariable) and out.shape == (11, 2)
    assert seen[1] is made[0] and seen[2] is made[1]  # random variables passed along
    for rv in made[:2]:  # a sample, not the mean: the value differs from the mean
        assert not torch.allclose(rv.value, rv.distribution.mean)
    with torch.no_grad(), bl.posterior_mean(model):  # consumed as its value
        torch.testing.assert_close(model[2](made[0]).value, model[2](made[0].value).value)
    terms = bl.losses(model)
    assert len(terms) == 3
    for term, layer in zip(terms, model[1:], strict=True):
        torch.testing.assert_close(term, layer.losses[0])
    # start at the prior (KL 0); after a step on the ELBO every KL is non-negative and finite
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    loss = -out.distribution.log_prob(torch.zeros(11, 2)).mean() + sum(bl.losses(model)) / 11
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    assert all(t.item() >= 0 and math.isfinite(t.item()) for t in bl.losses(model))


def test_value_is_a_draw_from_the_marginal_predictive():
    """Mean and variance of n = 4000 values at 3 points x 2 units (k = 12 checks, α = 1e-3).

    One call on the 3 points repeated n times: rows are independent draws."""
    layer = layers.SparseGaussianProcess(2, 5, in_features=2)
    x = torch.randn(3, 2)
    layer(x)  # first call initialises Z and the mean
    with torch.no_grad():
        draws = layer(x.repeat(4000, 1)).value.reshape(4000, 3, 2)  # (n, 3, 2)
        dist = layer(x).distribution
    z = z_bonferroni(12)
    se_mean = dist.stddev / math.sqrt(4000)
    assert ((draws.mean(0) - dist.mean).abs() < z * se_mean).all()
    se_var = dist.variance * math.sqrt(2 / 3999)  # var of the sample variance of a normal
    assert ((draws.var(0) - dist.variance).abs() < z * se_var).all()
    with bl.posterior_mean(layer):
        torch.testing.assert_close(layer(x).value, dist.mean)


def test_default_mean_is_identity_or_pca_and_zeros_on_request():
    x = torch.randn(50, 3) @ torch.diag(torch.tensor([3.0, 1.0, 0.1]))
    same = layers.SparseGaussianProcess(3, 4)
    same(x)
    torch.testing.assert_close(same.mean_weight, torch.eye(3))
    down = layers.SparseGaussianProcess(1, 4)
    down(x)  # the top principal direction is (close to) the first axis
    assert down.mean_weight.abs()[0, 0] > 0.99
    up = layers.SparseGaussianProcess(5, 4)
    up(x)
    torch.testing.assert_close(up.mean_weight, torch.eye(5, 3))
    zero = layers.SparseGaussianProcess(2, 4, mean_fn=layers.ZeroMean())
    with bl.posterior_mean(zero):  # at the prior q(v) = N(0, I): zero mean everywhere
        torch.testing.assert_close(zero(x).value, torch.zeros(50, 2))


def test_float64_state_dict_and_lazy_optimizer():
    layer = layers.SparseGaussianProcess(2, 6, dtype=F64)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)  # before the lazy first call
    x = torch.randn(8, 3, dtype=F64)
    before = layer(x).value
    assert before.dtype == F64 and all(p.dtype == F64 for p in layer.parameters())
    z0 = layer.inducing_inputs.detach().clone()
    (layer(x).value.sum() + layer.losses[0]).backward()
    opt.step()
    assert not torch.equal(z0, layer.inducing_inputs)  # the optimizer saw the lazy parameter
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    fresh = layers.SparseGaussianProcess(2, 6, dtype=F64)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    with bl.posterior_mean(layer), bl.posterior_mean(fresh):
        torch.testing.assert_close(fresh(x).value, layer(x).value)
    assert bool(fresh.initialized)


def test_bad_input_raises_clear_errors():
    z = torch.randn(4, 3)
    layer = layers.SparseGaussianProcess(2, 4, inducing_inputs=z)
    with pytest.raises(ValueError, match=r"SparseGaussianProcess.*\(\*, 3\).*inducing.*\(5, 2\)"):
        layer(torch.randn(5, 2))
    with pytest.raises(ValueError, match="inducing_inputs.*shape \\(5, D\\), got \\(4, 3\\)"):
        layers.SparseGaussianProcess(2, 5, inducing_inputs=z)
    with pytest.raises(ValueError, match="inducing_inputs.*\\(4, 2\\)"):
        layers.SparseGaussianProcess(2, 4, in_features=2, inducing_inputs=z)
    with pytest.raises(ValueError, match="num_inducing` >= 1, got 0"):
        layers.SparseGaussianProcess(2, 0)
    with pytest.raises(TypeError, match="num_inducing` to be an int"):
        layers.SparseGaussianProcess(2, 2.5)
    with pytest.raises(ValueError, match="units` >= 1"):
        layers.SparseGaussianProcess(0, 3)
    with pytest.raises(ValueError, match="length_scale > 0"):
        layers.SparseGaussianProcess(
            2, 3, covariance_fn=layers.ExponentiatedQuadratic(length_scale=-1.0)
        )
    with pytest.raises(ValueError, match="mean_fn"):
        layers.SparseGaussianProcess(2, 3, mean_fn="identity")
    with pytest.raises(TypeError, match="Tensor input"):
        layer([[1.0, 2.0, 3.0]])
    bad_mean = layers.SparseGaussianProcess(2, 4, inducing_inputs=z, mean_fn=lambda t: t)
    with pytest.raises(ValueError, match="mean_fn returned shape"):
        bad_mean(torch.randn(5, 3))


def test_any_callable_kernel_is_accepted():
    """A plain function (no ``diag``) and a composite kernel take the generic path and
    agree with the default single-call path on the same kernel."""
    x, _ = _data(7)
    z = x[:4] + 0.05
    eq = layers.ExponentiatedQuadratic(AMP, LS, dtype=F64)

    def dense(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return eq(a, b)

    def make(kernel) -> layers.SparseGaussianProcess:
        return layers.SparseGaussianProcess(
            2, 4, inducing_inputs=z, covariance_fn=kernel, mean_fn="zeros", jitter=0.0, dtype=F64
        )

    ref, plain = make(eq), make(dense)  # dense: a callable, not a Kernel
    composite = make(eq + layers.WhiteNoise(0.3, dtype=F64))
    for layer in (plain, composite):
        _set_q(layer, ref.inducing_loc.detach() + 0.3, ref.inducing_scale_tril.detach() * 0.5)
    _set_q(ref, ref.inducing_loc.detach() + 0.3, ref.inducing_scale_tril.detach() * 0.5)
    with torch.no_grad():
        mean, var = ref.predictive_moments(x)
        torch.testing.assert_close(plain.predictive_moments(x), (mean, var))
        # white noise: K_ZZ + 0.3 I, k(x, x) + 0.3, K_ZX unchanged (Z and X differ)
        c_mean, c_var = composite.predictive_moments(x)
    assert not torch.allclose(c_mean, mean) and bool((c_var > 0).all())


def test_empty_batch_gives_an_empty_result_first_call_included():
    layer = layers.SparseGaussianProcess(2, 4)
    out = layer(torch.randn(0, 3))  # first call: nothing to initialise Z from
    assert out.shape == (0, 2) and out.distribution.mean.shape == (0, 2)
    assert not bool(layer.initialized)
    x = torch.randn(6, 3)
    assert layer(x).shape == (6, 2) and bool(layer.initialized)
    assert layer(torch.randn(2, 0, 3)).shape == (2, 0, 2)
    with bl.frozen_sample(layer):
        assert layer(torch.randn(0, 3)).shape == (0, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kl_scale_factor": -1.0}, ValueError, "kl_scale_factor` to be a finite number >= 0"),
        ({"kl_scale_factor": math.inf}, ValueError, "kl_scale_factor"),
        ({"jitter": math.nan}, ValueError, "jitter` to be a finite number >= 0, got nan"),
        ({"jitter": -1e-6}, ValueError, "jitter"),
        ({"inducing_scale_init": math.inf}, ValueError, "inducing_scale_init` to be a finite"),
        ({"inducing_scale_init": 0.0}, ValueError, "inducing_scale_init"),
        ({"inducing_scale_init": "1"}, TypeError, "inducing_scale_init"),
        ({"num_prior_features": 0}, ValueError, "num_prior_features` >= 1"),
        ({"whiten": "yes"}, TypeError, "whiten` to be a bool"),
        ({"name": 3}, TypeError, "name` to be a str or None"),
        ({"inducing_inputs": torch.full((3, 2), math.nan)}, ValueError, "finite.*inducing"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=f"SparseGaussianProcess expected `?{match}"):
        layers.SparseGaussianProcess(2, 3, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.int64])
def test_wrong_input_dtype_raises_type_error(dtype):
    layer = layers.SparseGaussianProcess(2, 4, in_features=3)
    x = torch.ones(5, 3, dtype=dtype)
    with pytest.raises(TypeError, match=f"SparseGaussianProcess expected .*`x`.*got {dtype}"):
        layer(x)
    with pytest.raises(TypeError, match=f"SparseGaussianProcess.*float32.*got {dtype}"):
        layer(bl.RandomVariable(torch.distributions.Normal(x.float(), 1.0), value=x))


def test_named_output_is_traced_recorded_conditioned_and_marked_epistemic():
    from bayesian_layers._function_space import is_function_space

    layer = layers.SparseGaussianProcess(2, 4, name="f")
    x = torch.randn(5, 3)
    out = layer(x)
    assert out.name == "f" and is_function_space(out)
    with bl.tape() as t:
        out = layer(x)
    assert list(t) == ["f"] and t["f"] is out
    fixed = torch.zeros(5, 2)
    with bl.condition(f=fixed):
        torch.testing.assert_close(layer(x).value, fixed)
    assert "name='f'" in repr(layer)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_first_batch_raises_and_leaves_the_layer_uninitialised(bad):
    layer = layers.SparseGaussianProcess(2, 4)
    x = torch.randn(6, 3)
    x[2, 1] = bad
    with pytest.raises(ValueError, match="SparseGaussianProcess expected a finite first batch"):
        layer(x)
    assert not bool(layer.initialized)
    assert layer(torch.randn(6, 3)).shape == (6, 2)  # a later finite batch initialises it
    assert torch.isfinite(layer.inducing_inputs).all()


def test_needed_jitter_is_reported_once_per_layer() -> None:
    """Coinciding inducing inputs and no fixed jitter: K_ZZ is singular, the retry adds
    jitter, and the layer says so once (a second call stays silent)."""
    torch.manual_seed(0)
    z = torch.zeros(4, 2)  # four copies of one point: K_ZZ has rank 1
    layer = layers.SparseGaussianProcess(1, num_inducing=4, inducing_inputs=z, jitter=0.0)
    x = torch.randn(5, 2)
    with pytest.warns(layers.JitterWarning, match=r"SparseGaussianProcess: K_ZZ"):
        out = layer(x)
    assert torch.isfinite(out.distribution.variance).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)  # reported once per layer


def test_output_log_prob_refuses_a_target_that_broadcasts_against_the_batch():
    """The marginal ``q(f)`` of ``(B, 1)`` outputs scored a ``(B,)`` target as ``(B, B)``
    terms, silently (its distribution does not validate arguments)."""
    layer = layers.SparseGaussianProcess(1, 4, in_features=2, dtype=torch.float64)
    f = layer(torch.randn(5, 2, dtype=torch.float64))
    y = torch.randn(5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"MarginalNormal.log_prob .*\(5, 1\).*got \(5,\)"):
        f.log_prob(y)
    assert f.log_prob(y[:, None]).shape == (5, 1)
    assert f.log_prob(torch.zeros(3, 5, 1, dtype=torch.float64)).shape == (3, 5, 1)
