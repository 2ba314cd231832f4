"""The fused SVGP functions (whitened marginals, whitened KL, Gaussian expected
log-likelihood): values and closed-form gradients equal autograd through the plain
formulas (svgp_predictive_moments, svgp_kl, the written-out expectation); gradcheck."""

from __future__ import annotations

import pytest
import torch

from bayesian_layers import layers
from bayesian_layers.layers.gp.linalg import NotPositiveDefiniteError, cholesky_with_jitter
from bayesian_layers.layers.gp.sparse_variational import (
    gaussian_expected_log_likelihood,
    svgp_kl,
    svgp_predictive_moments,
    whitened_kl,
    whitened_predictive_moments,
)

F64 = torch.float64


def _problem(m: int, n: int, units: int, dtype: torch.dtype = F64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    kern = layers.ExponentiatedQuadratic(1.3, 0.9, dtype=dtype)
    z = torch.randn(m, 3, generator=g, dtype=dtype)
    x = torch.randn(n, 3, generator=g, dtype=dtype)
    loc = torch.randn(units, m, generator=g, dtype=dtype)
    diag = 0.5 + torch.rand(units, m, generator=g, dtype=dtype)
    offdiag = 0.3 * torch.randn(units, m, m, generator=g, dtype=dtype)  # upper part unused
    with torch.no_grad():
        return kern.diag(x), kern(z, z), kern(z, x), loc, offdiag, diag


def _reference(kxx, kzz, kzx, loc, offdiag, diag, jitter):
    eye = torch.eye(kzz.shape[-1], dtype=kzz.dtype)
    tril = offdiag.tril(-1) + diag.diag_embed()
    chol = cholesky_with_jitter(kzz + jitter * eye, layer="Reference")
    return svgp_predictive_moments(kxx, kzx, chol, loc, tril, whiten=True)


def _vjp(fn, inputs, grads):
    leaves = [t.detach().clone().requires_grad_(need) for t, need in inputs]
    mean, var = fn(*leaves)
    total = (mean * grads[0]).sum() + (var * grads[1]).sum()
    wanted = [t for t in leaves if t.requires_grad]
    return (mean, var), torch.autograd.grad(total, wanted)


@pytest.mark.parametrize("units", [1, 3])
@pytest.mark.parametrize(
    "needs",
    [(True,) * 6, (False, True, True, False, False, False), (False,) * 3 + (True,) * 3],
    ids=["all", "kernel-only", "q-only"],
)
def test_values_and_gradients_equal_autograd_through_the_formulas(units, needs):
    problem = _problem(7, 9, units)
    g = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(9, units, generator=g, dtype=F64) for _ in range(2)]
    jitter = 1e-4
    inputs = list(zip(problem, needs, strict=True))

    def fused(*a):
        return whitened_predictive_moments(*a, jitter=jitter)

    got, got_grads = _vjp(fused, inputs, cotangents)
    want, want_grads = _vjp(lambda *a: _reference(*a, jitter), inputs, cotangents)
    for a, b in zip(got + got_grads, want + want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_gradcheck_float64():
    inputs = [t.clone().requires_grad_() for t in _problem(5, 4, 2)]

    def fn(kxx, kzz, kzx, *q):  # K_ZZ symmetric, as the layer passes it
        return whitened_predictive_moments(kxx, 0.5 * (kzz + kzz.mT), kzx, *q, jitter=1e-3)

    assert torch.autograd.gradcheck(fn, inputs)


def test_extra_jitter_when_the_factorisation_fails():
    # duplicated inducing inputs: K_ZZ is singular, cholesky_with_jitter adds more jitter
    kxx, kzz, kzx, *q = _problem(6, 5, 1)
    kzz = kzz[:3, :3].repeat(2, 2)  # K_ZZ of [z1, z2, z3, z1, z2, z3]: rank 3
    kzx = kzx[:3].repeat(2, 1)
    assert int(torch.linalg.cholesky_ex(kzz)[1]) != 0
    got = whitened_predictive_moments(kxx, kzz, kzx, *q)
    want = _reference(kxx, kzz, kzx, *q, 0.0)  # the same jitter retries
    for a, b in zip(got, want, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_float32_agrees_with_float64():
    # well-conditioned K_ZZ (eigenvalues above 1e-3): the explicit inverse costs no accuracy
    p64 = _problem(32, 50, 2)
    eye = torch.eye(32, dtype=F64)
    p64 = (p64[0], p64[1] + 1e-3 * eye, *p64[2:])
    want = whitened_predictive_moments(*p64)
    got = whitened_predictive_moments(*(t.float() for t in p64))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2e-5)


def test_not_positive_definite_names_the_layer():
    kxx, kzz, kzx, *q = _problem(4, 3, 1)
    with pytest.raises(NotPositiveDefiniteError, match="MyLayer"):
        whitened_predictive_moments(kxx, -kzz, kzx, *q, layer="MyLayer")


def test_layer_parameter_gradients_equal_the_unfused_formulas():
    torch.manual_seed(0)
    layer = layers.SparseGaussianProcess(2, 6, in_features=3, dtype=F64, jitter=1e-5)
    x = torch.randn(8, 3, dtype=F64)
    layer(x)  # data-dependent initialisation
    with torch.no_grad():
        layer.inducing_loc.normal_()
        layer.inducing_scale_offdiag.normal_(std=0.3)
    params = [p for p in layer.parameters() if p.requires_grad]
    mean, var = layer.predictive_moments(x)
    got = torch.autograd.grad(mean.sin().sum() + var.sum(), params)

    z, kern = layer.inducing_inputs, layer.covariance_fn
    chol = torch.linalg.cholesky(kern(z, z) + 1e-5 * torch.eye(6, dtype=F64))
    m, v = svgp_predictive_moments(
        kern.diag(x), kern(z, x), chol, layer.inducing_loc, layer.inducing_scale_tril
    )
    m = m + torch.nn.functional.linear(x, layer.mean_weight, layer.mean_bias)
    want = torch.autograd.grad(m.sin().sum() + v.sum(), params)
    torch.testing.assert_close(mean, m.detach())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_whitened_kl_equals_svgp_kl_with_gradients():
    _, _, _, loc, offdiag, diag = _problem(6, 1, 3)
    leaves = [t.clone().requires_grad_() for t in (loc, offdiag, diag)]
    got = whitened_kl(*leaves)
    want = svgp_kl(leaves[0], leaves[1].tril(-1) + leaves[2].diag_embed())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(whitened_kl, leaves)
    # zero at the prior
    prior = whitened_kl(torch.zeros(2, 4), torch.randn(2, 4, 4).triu(), torch.ones(2, 4))
    assert float(prior) == 0.0


@pytest.mark.parametrize("noise_shape", [(), (1, 2)])
def test_gaussian_expected_log_likelihood_closed_form_and_gradients(noise_shape):
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(5, 2, generator=g, dtype=F64, requires_grad=True)
    var = torch.rand(5, 2, generator=g, dtype=F64).add(0.1).requires_grad_()
    target = torch.randn(5, 1, generator=g, dtype=F64, requires_grad=True)  # broadcast
    noise = torch.rand(noise_shape, generator=g, dtype=F64).add(0.2).requires_grad_()
    inputs = (mean, var, target, noise)
    got = gaussian_expected_log_likelihood(*inputs)
    # written out: E log N(y | f, σ²) = log N(y | μ, σ²) - v / (2σ²)
    want = torch.distributions.Normal(mean, noise.sqrt()).log_prob(target) - var / (2 * noise)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    cot = torch.randn(5, 2, generator=g, dtype=F64)
    for a, b in zip(
        torch.autograd.grad((got * cot).sum(), inputs),
        torch.autograd.grad((want * cot).sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(gaussian_expected_log_likelihood, inputs)


def test_gaussian_expected_log_likelihood_matches_monte_carlo():
    g = torch.Generator().manual_seed(3)
    mean, var, y, noise = 0.4, 0.7, -0.2, 0.3
    f = mean + var**0.5 * torch.randn(400_000, generator=g, dtype=F64)
    samples = torch.distributions.Normal(f, noise**0.5).log_prob(torch.tensor(y, dtype=F64))
    closed = gaussian_expected_log_likelihood(
        torch.tensor(mean, dtype=F64), torch.tensor(var, dtype=F64), torch.tensor(y, dtype=F64),
        noise,
    )  # fmt: skip
    se = samples.std() / samples.numel() ** 0.5
    assert abs(float(closed - samples.mean())) < 5 * float(se)


def test_torch_func_grad_and_jacrev_equal_autograd():
    """``torch.func.grad`` / ``jacrev`` through the three fused functions (setup_context form)
    give the ordinary autograd gradients."""
    kxx, kzz, kzx, loc, offdiag, diag = _problem(5, 4, 2)
    kzz = 0.5 * (kzz + kzz.mT)
    target = torch.randn(4, 2, dtype=F64)

    def loss(loc, offdiag, diag, kzx):
        mean, var = whitened_predictive_moments(kxx, kzz, kzx, loc, offdiag, diag, jitter=1e-4)
        ell = gaussian_expected_log_likelihood(mean, var, target, 0.3)
        return whitened_kl(loc, offdiag, diag) - ell.sum()

    args = (loc, offdiag, diag, kzx)
    got = torch.func.grad(loss, argnums=(0, 1, 2, 3))(*args)
    leaves = [t.clone().requires_grad_() for t in args]
    want = torch.autograd.grad(loss(*leaves), leaves)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    batched = torch.func.vmap(whitened_kl)(
        loc.expand(3, 2, 5) * torch.arange(3.0, dtype=F64)[:, None, None],
        offdiag.expand(3, 2, 5, 5),
        diag.expand(3, 2, 5),
    )
    for i in range(3):
        torch.testing.assert_close(batched[i], whitened_kl(loc * i, offdiag, diag))
    jac = torch.func.jacrev(lambda k: whitened_predictive_moments(
        kxx, kzz, k, loc, offdiag, diag, jitter=1e-4)[1])(kzx)  # fmt: skip  # (N, U, M, N)
    for i in range(4):
        for u in range(2):
            leaf = kzx.clone().requires_grad_()
            _, var = whitened_predictive_moments(kxx, kzz, leaf, loc, offdiag, diag, jitter=1e-4)
            (row,) = torch.autograd.grad(var[i, u], leaf)
            torch.testing.assert_close(jac[i, u], row, rtol=1e-10, atol=1e-12)


def test_torch_func_grad_through_the_layer_with_functional_call():
    """The layer's own fused functions under ``torch.func`` (a plain-torch kernel, so only
    this module's autograd Functions are involved)."""
    torch.manual_seed(0)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 1.5 * torch.exp(-0.5 * (a.unsqueeze(-2) - b.unsqueeze(-3)).square().sum(-1))

    layer = layers.SparseGaussianProcess(2, 5, in_features=3, covariance_fn=kernel, dtype=F64)
    x = torch.randn(7, 3, dtype=F64)
    layer(x)  # data-dependent initialisation
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def objective(p):
        out = torch.func.functional_call(layer, p, (x,))
        d = out.distribution
        return (d.mean.sin() + d.variance).sum()

    got = torch.func.grad(objective)(params)
    out = layer(x).distribution
    want = torch.autograd.grad((out.mean.sin() + out.variance).sum(), list(layer.parameters()))
    for (name, _), b in zip(layer.named_parameters(), want, strict=True):
        torch.testing.assert_close(got[name], b, rtol=1e-9, atol=1e-11)
