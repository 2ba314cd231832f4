"""Tests for ``layers/gp_iterative.py``: the pivoted Cholesky preconditioner and the
conjugate-gradient / Lanczos estimate of the GP log marginal likelihood.

The estimate is stochastic only through its probes. With a full-rank preconditioner it
is exact (deterministic); otherwise its value and gradient are unbiased: their means
over n = 40 seeds (fixed) must lie within z · sd / sqrt(n) of the Cholesky values,
with z the Bonferroni quantile for the k = 1 + 3 simultaneous checks at family-wise
α = 1e-3 (``stats_util.ALPHA``).
"""

from __future__ import annotations

import pytest
import torch
from stats_util import z_bonferroni

from bayesian_layers import layers as L
from bayesian_layers.layers.gp.iterative import (
    gaussian_log_marginal_likelihood_cg,
    pivoted_cholesky,
)
from bayesian_layers.layers.gp.linalg import gaussian_log_marginal_likelihood

D64 = {"dtype": torch.float64}


def _problem(n: int = 120):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 3, generator=g, **D64)
    y = (torch.sin(4 * x[:, :1]) + 0.1 * torch.randn(n, 1, generator=g, **D64)).repeat(1, 2)
    kernel = L.ExponentiatedQuadratic(1.0, [0.4, 0.6, 0.8], **D64)
    return x, y, kernel


def test_pivoted_cholesky():
    a = torch.randn(30, 4, **D64)
    low = pivoted_cholesky(a @ a.mT, 10)
    assert low.shape == (30, 4)  # stops at the numerical rank
    torch.testing.assert_close(low @ low.mT, a @ a.mT)
    x, _, kernel = _problem(60)
    k = kernel(x).detach()
    errors = [(k - (f := pivoted_cholesky(k, r)) @ f.mT).diagonal().sum() for r in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2] >= -1e-10


def test_full_rank_preconditioner_is_exact():
    """With P = K the log-determinant is log|P| and CG converges at once."""
    x, y, kernel = _problem()
    noise = torch.tensor(0.05, **D64)
    kf = kernel(x).detach()
    exact = gaussian_log_marginal_likelihood(kf + noise * torch.eye(len(x), **D64), y, layer="T")
    cg = gaussian_log_marginal_likelihood_cg(
        kf, noise, y, preconditioner_rank=len(x), tolerance=1e-10
    )  # exact up to the pivoted Cholesky's truncation at 1e-8 x trace
    torch.testing.assert_close(cg, exact, rtol=1e-6, atol=0)


def test_value_and_gradient_unbiased():
    x, y, kernel = _problem()
    noise_rho = torch.tensor(-2.0, **D64, requires_grad=True)
    params = [kernel.amplitude_rho, kernel.length_scale_rho, noise_rho]

    def lml(cg: bool) -> torch.Tensor:
        kf = kernel(x)
        noise = torch.nn.functional.softplus(noise_rho)
        if cg:
            return gaussian_log_marginal_likelihood_cg(
                kf,
                noise,
                y,
                num_probes=4,
                preconditioner_rank=5,
                tolerance=1e-10,
                max_iterations=120,
            )
        return gaussian_log_marginal_likelihood(kf + noise * torch.eye(len(x), **D64), y, layer="T")

    exact = lml(False)
    exact_grads = torch.autograd.grad(exact, params)
    exact_vec = torch.cat([exact.reshape(1), *[g.reshape(-1)[:1] for g in exact_grads]])
    samples = []
    for seed in range(40):
        torch.manual_seed(seed)
        value = lml(True)
        grads = torch.autograd.grad(value, params)
        samples.append(torch.cat([value.reshape(1), *[g.reshape(-1)[:1] for g in grads]]))
    s = torch.stack(samples)  # (n, 4): value, d/d amplitude, d/d length_scale[0], d/d noise
    z = z_bonferroni(4)
    half_width = z * s.std(0) / len(s) ** 0.5
    assert ((s.mean(0) - exact_vec).abs() <= half_width).all(), (s.mean(0), exact_vec, half_width)
    assert (s.std(0) > 0).all()  # the check has teeth: the estimates do vary


def test_gaussian_process_cg_solver_trains():
    x, y, kernel = _problem(60)
    gp = L.GaussianProcess(
        2, covariance_fn=kernel, conditional_inputs=x, conditional_outputs=y,
        observation_noise=0.5, solver="cg", **D64,
    )  # fmt: skip
    exact = L.GaussianProcess(
        2, covariance_fn=kernel, conditional_inputs=x, conditional_outputs=y, **D64
    )  # shares the kernel; its own noise is not used below

    def exact_lml() -> float:
        with torch.no_grad():
            exact.observation_noise_rho.copy_(gp.observation_noise_rho)
            return exact.log_marginal_likelihood().item()

    start = exact_lml()
    opt = torch.optim.Adam(gp.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        (-gp.log_marginal_likelihood()).backward()
        opt.step()
    assert exact_lml() > start + 10.0


def test_bad_options():
    with pytest.raises(ValueError, match="solver 'cholesky' or 'cg', got 'lu'"):
        L.GaussianProcess(1, solver="lu")
    with pytest.raises(ValueError, match=r"solver_options among .* got \['probes'\]"):
        L.GaussianProcess(1, solver="cg", solver_options={"probes": 3})
    with pytest.raises(ValueError, match="num_probes >= 1"):
        gaussian_log_marginal_likelihood_cg(
            torch.eye(2), torch.tensor(1.0), torch.ones(2, 1), num_probes=0
        )


def test_cg_on_duplicated_inputs_in_float32_is_a_number_not_nan():
    """Duplicated inputs and noise 1e-6 in float32: the Woodbury preconditioner loses
    positive definiteness to rounding and CG used to return NaN. Now the value is
    finite and within 5 standard errors of the exact float64 value (the CG estimate's
    standard deviation at this size, measured over 20 seeds in float64: 0.49)."""
    torch.manual_seed(0)
    x = torch.rand(50, 2, dtype=torch.float64)
    x = torch.cat([x, x])
    y = torch.sin(x.sum(1, keepdim=True))

    def gp(solver: str, dtype: torch.dtype) -> L.GaussianProcess:
        return L.GaussianProcess(
            1, conditional_inputs=x.to(dtype), conditional_outputs=y.to(dtype),
            observation_noise=1e-6, solver=solver, dtype=dtype,
        )  # fmt: skip

    exact = gp("cholesky", torch.float64).log_marginal_likelihood()
    layer = gp("cg", torch.float32)
    value = layer.log_marginal_likelihood()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert abs(value.item() - exact.item()) <= 5 * 0.49
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
