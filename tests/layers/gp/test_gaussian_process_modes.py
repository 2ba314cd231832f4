"""The exact GP as a distribution over functions: sampling modes (posterior mean,
frozen function, K at once), when its value is drawn, names and tracing, torch.func.

Statistical checks state their family-wise rate α = 1e-3 and the number of checks k.
"""

from __future__ import annotations

import math

import pytest
import torch
from stats_util import z_bonferroni

import bayesian_layers as bl
from bayesian_layers import layers as L

D64 = {"dtype": torch.float64}


def _gp(units: int = 2, noise: float = 0.05, n: int = 12, **kwargs) -> L.GaussianProcess:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 2, generator=gen, **D64) * 4 - 2
    y = torch.stack([torch.sin(2 * x[:, 0]), torch.cos(x.sum(1))], 1)[:, :units]
    kernel = kwargs.pop("covariance_fn", None) or L.Matern52(1.0, [0.8, 1.2], **D64)
    return L.GaussianProcess(
        units,
        covariance_fn=kernel,
        conditional_inputs=x,
        conditional_outputs=y,
        observation_noise=noise,
        **D64,
        **kwargs,
    )


def _inputs(b: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 2, generator=torch.Generator().manual_seed(seed), **D64) * 5 - 2.5


# ------------------------------------------------------------------ sampling modes
def test_gp_is_a_bayesian_layer() -> None:
    gp = _gp()
    assert list(bl.bayesian_modules(torch.nn.Sequential(gp))) == [gp]
    assert gp.losses == [] and bl.losses(gp) == []


def test_posterior_mean_mode_gives_the_mean_function() -> None:
    gp, x = _gp(), _inputs()
    with bl.posterior_mean(gp):
        rv = gp(x)
        assert torch.equal(rv.value, rv.distribution.mean)
        torch.testing.assert_close(gp(x).value, rv.value, rtol=0, atol=0)
    assert not torch.equal(gp(x).value, rv.value)  # back to sampling


def test_frozen_mode_is_one_function_until_resample() -> None:
    gp, x = _gp(), _inputs()
    x_other = _inputs(3, seed=2)
    with bl.frozen_sample(gp):
        first = gp(x).value
        torch.testing.assert_close(gp(x).value, first, rtol=0, atol=0)
        other = gp(x_other).value
        # the same function at the union of the inputs: one call on both sets agrees
        both = gp(torch.cat([x, x_other])).value
        torch.testing.assert_close(both, torch.cat([first, other]), rtol=1e-6, atol=1e-6)
        bl.resample(gp)
        assert not torch.allclose(gp(x).value, first)
    assert not torch.allclose(gp(x).value, gp(x).value)


def test_frozen_draws_are_samples_of_the_posterior() -> None:
    """n = 2000 frozen functions at once (vectorised), each evaluated at x, then at x':
    the draws at x' (conditioned on those at x) have the posterior mean and variance at
    x' (k = 2 × 3 × 2 checks, α = 1e-3; variance within z·v·sqrt(2/n))."""
    gp, x, x_new = _gp(), _inputs(2), _inputs(3, seed=5)
    n = 2000
    torch.manual_seed(0)
    with torch.no_grad(), bl.frozen_sample(gp), bl.vectorized_samples(gp, n):
        first = gp(x.repeat(n, 1)).value.view(n, 2, 2)
        draws = gp(x_new.repeat(n, 1)).value.view(n, 3, 2)
        again = gp(x.repeat(n, 1)).value.view(n, 2, 2)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    dist = gp(x_new).distribution
    z = z_bonferroni(12)
    assert ((draws.mean(0) - dist.mean).abs() <= z * (dist.variance / n).sqrt()).all()
    v = draws.var(0)
    assert ((v - dist.variance).abs() <= z * dist.variance * math.sqrt(2 / n)).all()


def test_vectorized_samples_draw_k_independent_functions() -> None:
    gp, x = _gp(), _inputs(4)
    with torch.no_grad(), bl.vectorized_samples(gp, 3):
        out = gp(x.repeat(3, 1)).value.view(3, 4, 2)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


# ------------------------------------------------------------------- seeding
def test_manual_seed_before_the_call_fixes_the_sample() -> None:
    gp, x = _gp(), _inputs()
    torch.manual_seed(7)
    a = gp(x)
    torch.manual_seed(7)
    b = gp(x)
    torch.randn(100)  # other draws between the call and reading the value
    torch.testing.assert_close(b.value, a.value, rtol=0, atol=0)


# ------------------------------------------------------- conditioning keeps the graph
def test_condition_on_keeps_the_graph_of_learned_features() -> None:
    """A feature network in front of the GP trains: the gradient of the log marginal
    likelihood reaches its weights and equals the one of an explicit multivariate normal."""
    torch.manual_seed(0)
    feat = torch.nn.Linear(3, 2, dtype=torch.float64)
    x, y = torch.randn(10, 3, **D64), torch.randn(10, 1, **D64)
    kernel = L.ExponentiatedQuadratic(**D64)
    gp = L.GaussianProcess(1, covariance_fn=kernel, observation_noise=0.1, **D64)
    gp.condition_on(feat(x), y)
    gp.log_marginal_likelihood().backward()
    assert feat.weight.grad is not None
    got = feat.weight.grad.clone()
    feat.zero_grad()
    h = feat(x)
    cov = kernel(h, h) + 0.1 * torch.eye(10, **D64)
    ref = torch.distributions.MultivariateNormal(torch.zeros(10, **D64), cov).log_prob(y[:, 0])
    ref.backward()
    torch.testing.assert_close(got, feat.weight.grad)
    with torch.no_grad():  # predictions at new features work too
        assert gp(feat(torch.randn(4, 3, **D64))).shape == (4, 1)
    copy = __import__("copy").deepcopy(gp)  # a copy drops the graph
    assert not copy.conditional_inputs.requires_grad


# ----------------------------------------------------------------- marginals only
@pytest.mark.parametrize("chunk_bytes", [None, 200])
def test_predictive_moments_are_the_marginals_without_the_joint(monkeypatch, chunk_bytes) -> None:
    """The marginal path equals the diagonal of the joint posterior, also in chunks of
    a few rows and for batched inputs."""
    if chunk_bytes is not None:  # 200 bytes: one row per chunk
        monkeypatch.setattr(L.gp.exact, "MARGINAL_CHUNK_BYTES", chunk_bytes)
    gp = _gp(covariance_fn=L.Matern32(**D64) + L.WhiteNoise(0.1, **D64))
    x = torch.stack([_inputs(7), _inputs(7, seed=3)])  # (2, 7, 2)
    with torch.no_grad():
        dist = gp(x).distribution
        mean, var = gp.predictive_moments(x)
    assert mean.shape == var.shape == (2, 7, 2)
    torch.testing.assert_close(mean, dist.mean)
    torch.testing.assert_close(var, dist.variance)


# ------------------------------------------------------------------ names, tracing
def test_named_output_is_recorded_conditioned_and_scored() -> None:
    gp, x = _gp(name="f"), _inputs(4)
    with bl.tape() as tape:
        out = gp(x)
    assert list(tape) == ["f"] and tape["f"] is out and out.name == "f"
    value = torch.zeros(4, 2, **D64)
    with bl.condition(f=value):
        assert torch.equal(gp(x).value, value)
    log_joint = bl.make_log_joint_fn(lambda: gp(x))
    with torch.no_grad():
        expected = gp(x).distribution.log_prob(value)
        torch.testing.assert_close(log_joint(f=value), expected)
    with pytest.raises(TypeError, match="GaussianProcess expected `name` to be a str"):
        L.GaussianProcess(1, name=3)


# --------------------------------------------------------------------- torch.func
class _LogMarginalLikelihood(torch.nn.Module):
    def __init__(self, gp: L.GaussianProcess) -> None:
        super().__init__()
        self.gp = gp

    def forward(self) -> torch.Tensor:
        return self.gp.log_marginal_likelihood()


def _grads(gp: L.GaussianProcess, seed: int = 0) -> tuple[dict, tuple]:
    """Gradients of the log marginal likelihood by torch.func.grad and by autograd."""
    wrapper = _LogMarginalLikelihood(gp)
    params = {f"gp.{k}": v.detach() for k, v in gp.named_parameters()}
    torch.manual_seed(seed)
    got = torch.func.grad(lambda p: torch.func.functional_call(wrapper, p, ()))(params)
    torch.manual_seed(seed)
    want = torch.autograd.grad(gp.log_marginal_likelihood(), list(gp.parameters()))
    return got, want


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_torch_func_grad_of_the_log_marginal_likelihood_matches_autograd(solver: str) -> None:
    """Same seed for the CG probes: the two gradients are the same estimate."""
    kernel = L.ExponentiatedQuadratic(1.1, [0.7, 1.3], **D64)
    gp = _gp(covariance_fn=kernel, solver=solver)
    got, want = _grads(gp)
    for (name, g), w in zip(got.items(), want, strict=True):
        torch.testing.assert_close(g, w, msg=name)


@pytest.mark.parametrize("kernel", ["eq", "rational_quadratic"])  # fused EQ; squared distance
def test_torch_func_on_the_fused_kernels(kernel: str) -> None:
    k = (
        L.ExponentiatedQuadratic(1.2, [0.8, 1.5], **D64)
        if kernel == "eq"
        else L.RationalQuadratic(1.0, 0.9, 2.0, **D64)
    )
    x1, x2 = torch.randn(4, 2, **D64), torch.randn(3, 2, **D64)
    weights = torch.randn(4, 3, **D64)

    def f(a: torch.Tensor) -> torch.Tensor:
        return (k(a, x2) * weights).sum()

    a = x1.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(f(a), a)
    torch.testing.assert_close(torch.func.grad(f)(x1), want)
    jac = torch.func.jacrev(lambda a: k(a, x2))(x1)  # (4, 3, 4, 2)
    torch.testing.assert_close((jac * weights[..., None, None]).sum((0, 1)), want)
    batched = torch.func.vmap(lambda a: k(a, x2))(torch.stack([x1, 2 * x1]))
    torch.testing.assert_close(batched, torch.stack([k(x1, x2), k(2 * x1, x2)]))


def test_float32_joint_draw_where_the_data_pin_the_function_down() -> None:
    """float32 rounds ``K_XX - K_Xc (K_cc + σ² I)⁻¹ K_cX`` on the scale of the prior
    (~1e-7 of it); where the posterior variance is ~1e-4 that made the ``B × B``
    covariance indefinite beyond any jitter relative to its own diagonal, and a draw (the
    value of ``gp(x)``, sample or frozen mode) raised ``NotPositiveDefiniteError``."""
    torch.manual_seed(0)
    x = torch.linspace(0, 1, 20)[:, None]
    gp = L.GaussianProcess(
        1, conditional_inputs=x, conditional_outputs=torch.sin(6 * x), observation_noise=1e-3
    )
    xs = torch.rand(20, 1)
    f = gp(xs)
    assert bool(torch.isfinite(f.value).all())
    dist = f.distribution
    # the jitter kept is ~1e-6 of the prior variance: the factor still reproduces the matrix
    tril = dist.scale_tril
    torch.testing.assert_close(tril @ tril.mT, dist.covariance_matrix, atol=1e-5, rtol=0)
    with bl.frozen_sample(gp):
        assert bool(torch.isfinite(gp(xs).value).all())
