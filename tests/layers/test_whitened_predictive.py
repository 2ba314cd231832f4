"""whitened_predictive_moments: the fused forward and closed-form backward of the whitened
SVGP marginals equal autograd through the plain formulas (svgp_predictive_moments)."""

from __future__ import annotations

import pytest
import torch

from bayesian_layers import layers
from bayesian_layers.layers.gp_numerics import NotPositiveDefiniteError, cholesky_with_jitter
from bayesian_layers.layers.sparse_gp_kernels import (
    svgp_predictive_moments,
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
    tril = 0.3 * torch.randn(units, m, m, generator=g, dtype=dtype).tril(-1) + diag.diag_embed()
    with torch.no_grad():
        return kern.diag(x), kern(z, z), kern(z, x), loc, tril


def _reference(kxx, kzz, kzx, loc, tril, jitter):
    eye = torch.eye(kzz.shape[-1], dtype=kzz.dtype)
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
    [(True,) * 5, (False, True, True, False, False), (False, False, False, True, True)],
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
    kxx, kzz, kzx, loc, tril = _problem(5, 4, 2)
    inputs = [t.clone().requires_grad_() for t in (kxx, kzz, kzx, loc, tril)]

    def fn(kxx, kzz, kzx, loc, tril):  # K_ZZ symmetric and S lower, as the layer passes them
        return whitened_predictive_moments(
            kxx, 0.5 * (kzz + kzz.mT), kzx, loc, tril.tril(), jitter=1e-3
        )

    assert torch.autograd.gradcheck(fn, inputs)


def test_extra_jitter_when_the_factorisation_fails():
    # duplicated inducing inputs: K_ZZ is singular, cholesky_with_jitter adds more jitter
    kxx, kzz, kzx, loc, tril = _problem(6, 5, 1)
    kzz = kzz[:3, :3].repeat(2, 2)  # K_ZZ of [z1, z2, z3, z1, z2, z3]: rank 3
    kzx = kzx[:3].repeat(2, 1)
    assert int(torch.linalg.cholesky_ex(kzz)[1]) != 0
    got = whitened_predictive_moments(kxx, kzz, kzx, loc, tril)
    want = _reference(kxx, kzz, kzx, loc, tril, 0.0)  # the same jitter retries
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
    kxx, kzz, kzx, loc, tril = _problem(4, 3, 1)
    with pytest.raises(NotPositiveDefiniteError, match="MyLayer"):
        whitened_predictive_moments(kxx, -kzz, kzx, loc, tril, layer="MyLayer")


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
