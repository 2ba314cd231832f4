"""``bl.predict(..., joint=False)``: a first whole-draw dense layer (reparameterization,
Kronecker Laplace) draws each example's output from its exact law at the trunk's output,
checked against closed forms (the posterior's covariance formed densely); the examples
of one sample become independent; every other estimator and family is unchanged."""

from __future__ import annotations

import pytest
import torch
from stats_util import z_bonferroni
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers.initializers import KroneckerNormal
from bayesian_layers.layers.estimators import strategies

K = 20_000


def _x(rows: int = 4) -> Tensor:
    x = torch.randn(rows, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[-1] = x[0]  # a repeated example: equal in every joint sample
    return x


def _check_moments(y: Tensor, mean: Tensor, cov: Tensor, checks: int) -> None:
    """``y`` ``(K, B, O)`` against per-example ``mean`` ``(B, O)`` and ``cov`` ``(B, O, O)``,
    to ``z_bonferroni(checks)`` Monte Carlo standard errors (Gaussian fourth moments)."""
    z = z_bonferroni(checks)
    var = torch.diagonal(cov, dim1=1, dim2=2)  # (B, O)
    assert ((y.mean(0) - mean).abs() <= z * (var / K).sqrt()).all()
    c = y - mean
    emp = torch.einsum("kbo,kbp->bop", c, c) / K
    se = ((cov.square() + var[:, :, None] * var[:, None, :]) / K).sqrt()
    assert ((emp - cov).abs() <= z * se).all()


def _independent_across_examples(y: Tensor, a: int, b: int) -> None:
    """The correlation of examples ``a`` and ``b`` in each output is 0 to
    ``z_bonferroni(outputs)`` standard errors (``1/sqrt(K)``)."""
    ya, yb = y[:, a] - y[:, a].mean(0), y[:, b] - y[:, b].mean(0)
    corr = (ya * yb).mean(0) / (ya.std(0) * yb.std(0))
    assert (corr.abs() <= z_bonferroni(corr.numel()) / K**0.5).all()


def _reparameterization_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 12, dtype=torch.float64),
        nn.Tanh(),
        layers.LinearReparameterization(
            12, 3, bias_initializer="trainable_normal", dtype=torch.float64
        ),
    )
    with torch.no_grad():
        model[2].weight_rho.fill_(-0.5)
        model[2].bias_rho.fill_(-1.0)
    return model


def test_reparameterization_marginal_samples_keep_each_examples_law(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``joint=False``: mean ``h μᵀ + μ_b`` and diagonal covariance ``h² σ²ᵀ + σ_b²`` per
    example (the law of a whole draw), through the output-space form; the repeated example
    is then independent of its twin, while the default keeps them equal."""
    model = _reparameterization_model()
    calls: list[int] = []
    real = strategies.marginal_samples
    monkeypatch.setattr(strategies, "marginal_samples", lambda *a: calls.append(1) or real(*a))
    x = _x()
    torch.manual_seed(1)
    y = bl.predict(model, x, K, joint=False).samples  # (K, B, 3)
    assert calls
    h = model[:2](x).detach()
    loc, scale = model[2].posterior_loc_scale("weight")
    b_loc, b_scale = model[2].posterior_loc_scale("bias")
    mean = h @ loc.T + b_loc
    var = h.square() @ scale.square().T + b_scale.square()
    _check_moments(y, mean.detach(), torch.diag_embed(var).detach(), 2 * 4 * 9)
    _independent_across_examples(y, 0, 3)
    calls.clear()
    joint = bl.predict(model, x, 64).samples
    assert not calls  # the default keeps whole draws: function samples
    torch.testing.assert_close(joint[:, 3], joint[:, 0], rtol=1e-12, atol=1e-12)


def _kron_model() -> nn.Module:
    """A last-layer Kronecker Laplace posterior of a small regression network."""
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(2)
    data = torch.randn(64, 5, dtype=torch.float64, generator=g)
    loader = [(data, torch.randn(64, 3, dtype=torch.float64, generator=g))]
    post = bl.laplace.fit(
        twin, loader, "regression", hessian="kron", subset="last_layer", prior_precision=0.5
    )
    return post.eval()


def _kron_cov(init: KroneckerNormal) -> Tensor:
    """The dense covariance of ``vec(W)`` (row-major): ``(Q_G ⊗ Q_A) diag(1/Λ) (…)ᵀ``."""
    q = torch.kron(init.eigvecs_g, init.eigvecs_a)
    lam = torch.outer(init.eigvals_g, init.eigvals_a) + init.prior_precision
    return q @ torch.diag(lam.reciprocal().reshape(-1)) @ q.T


@pytest.mark.parametrize("bias_basis", ["shared", "own"])
def test_kronecker_marginal_samples_keep_each_examples_law(bias_basis: str) -> None:
    """``joint=False`` on a Kronecker Laplace head: per example, mean ``M h + m_b`` and the
    full output covariance ``(I ⊗ hᵀ) Σ_W (I ⊗ h) + Σ_b`` of the dense posterior; the
    default's whole draws agree, and keep the repeated example equal to its twin. The fit
    shares ``G`` between weight and bias (one draw in its basis); a bias with a basis of
    its own is drawn per example apart."""
    post = _kron_model()
    head = post[2]
    w_init = head.parameter_spec("weight").initializer
    b_init = head.parameter_spec("bias").initializer
    assert isinstance(w_init, KroneckerNormal) and isinstance(b_init, KroneckerNormal)
    assert torch.equal(w_init.eigvecs_g, b_init.eigvecs_g)  # as laplace.fit writes them
    if bias_basis == "own":
        g = torch.Generator().manual_seed(5)
        rotation = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=g))[0]
        b_init.eigvecs_g.copy_(rotation)
    x = _x()
    h = post[:2](x).detach()
    o = head.out_features
    eye = torch.eye(o, dtype=h.dtype)
    rows = torch.stack([torch.kron(eye, hb[None]) for hb in h])  # (B, O, O·I)
    cov = rows @ _kron_cov(w_init) @ rows.transpose(1, 2) + _kron_cov(b_init)
    mean = h @ head.weight_loc.T + head.bias_loc.reshape(-1)
    torch.manual_seed(1)
    y = bl.predict(post, x, K, joint=False).samples
    _check_moments(y, mean.detach(), cov.detach(), 2 * 4 * 9)
    _independent_across_examples(y, 0, 3)
    torch.manual_seed(2)
    joint = bl.predict(post, x, K).samples  # whole draws: the same per-example law
    _check_moments(joint, mean.detach(), cov.detach(), 2 * 4 * 9)
    torch.testing.assert_close(joint[:, 3], joint[:, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [layers.LinearFlipout, layers.LinearLocalReparameterization])
def test_other_estimators_are_unchanged(cls: type[nn.Module]) -> None:
    """Flipout and local reparameterization are per-example already: for a fixed seed
    ``joint=False`` gives the default's samples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), cls(12, 3), nn.ReLU(), cls(3, 2))
    x = torch.randn(6, 5)
    torch.manual_seed(1)
    a = bl.predict(model, x, 16).samples
    torch.manual_seed(1)
    b = bl.predict(model, x, 16, joint=False).samples
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_other_posterior_families_keep_whole_draws() -> None:
    """A full-covariance Laplace head has no output-space form here: ``joint=False``
    draws whole weights, the default's samples for a fixed seed."""
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    loader = [(torch.randn(32, 5, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64))]
    post = bl.laplace.fit(twin, loader, "regression", hessian="full", subset="last_layer").eval()
    x = _x()
    torch.manual_seed(1)
    a = bl.predict(post, x, 16).samples
    torch.manual_seed(1)
    b = bl.predict(post, x, 16, joint=False).samples
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(b[:, 3], b[:, 0], rtol=1e-12, atol=1e-12)


def test_joint_must_be_a_bool() -> None:
    model = _reparameterization_model()
    with pytest.raises(TypeError, match="predict expected `joint` a bool, got str"):
        bl.predict(model, _x(), 4, joint="no")  # type: ignore[arg-type]


def test_marginal_form_only_inside_predict() -> None:
    """Outside ``predict(..., joint=False)`` (training, plain calls, the default
    predictive) the layer says it is not in a marginal predictive."""
    model = _reparameterization_model()
    seen: list[bool] = []
    model[2].register_forward_pre_hook(lambda m, a: seen.append(m.marginal_predictive))
    model(_x())
    bl.predict(model, _x(), 4, trunk=None)
    bl.predict(model, _x(), 4, trunk=None, joint=False)
    assert seen == [False, False, True]
