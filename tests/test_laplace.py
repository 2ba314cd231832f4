"""Post-hoc Laplace: GGN curvature against brute force, KFAC posterior draws against the
closed form, evidence and prior precision against laplace-torch, BatchNorm/LSTM models,
state round trip and bad inputs (float64 throughout)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from laplace_models import LeNet5BN
from torch import nn
from torch.func import functional_call, jacrev

import bayesian_layers as bl
from bayesian_layers import laplace as bll
from bayesian_layers.initializers.kron_normal import KroneckerNormal
from bayesian_layers.laplace.curvature import compute_curvature
from bayesian_layers.laplace.posterior import kron_eigen

DT = torch.float64


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)


def _cnn() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3),
    ).to(DT)
    with torch.no_grad():  # running statistics away from (0, 1): eval mode must use them
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def _data(likelihood: str, shape: tuple[int, ...], n: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=DT)
    if likelihood == "classification":
        y = torch.randint(0, 3, (n,), generator=g)
    else:
        y = torch.randn(n, 3, generator=g, dtype=DT)
    return x, y, [(x[:6], y[:6]), (x[6:], y[6:])]


def _lambda(f: torch.Tensor, likelihood: str, sigma: float) -> torch.Tensor:
    if likelihood == "regression":
        return torch.eye(f.shape[-1], dtype=DT) / sigma**2
    p = f.softmax(-1)
    return torch.diag(p) - torch.outer(p, p)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_diag_ggn_equals_jacobian_brute_force(arch: str, likelihood: str) -> None:
    """diag(Σ_n J_nᵀ Λ_n J_n) with J from torch.func.jacrev, BatchNorm in eval mode."""
    torch.manual_seed(0)
    net = _mlp() if arch == "mlp" else _cnn()
    net.eval()
    x, _, loader = _data(likelihood, (3,) if arch == "mlp" else (2, 4, 4))
    sigma = 0.7
    curv = compute_curvature(net, loader, likelihood=likelihood, hessian="diag", sigma_noise=sigma)
    params = {k: v.detach() for k, v in net.named_parameters() if "1." not in k or arch == "mlp"}
    names = [f"{lc.name}.{p}" for lc, p in curv.groups()]

    def f(p: dict, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(net, {**params, **p}, (xi[None],))[0]

    ref = {n: torch.zeros_like(params[n]) for n in names}
    for xi in x:
        jac = jacrev(f)({n: params[n] for n in names}, xi)
        lam = _lambda(f({}, xi), likelihood, sigma)
        for n in names:
            j = jac[n].reshape(3, -1)  # (C, P)
            ref[n] += torch.einsum("cp,cd,dp->p", j, lam, j).reshape(ref[n].shape)
    assert len(names) == 4
    for lc, p in curv.groups():
        torch.testing.assert_close(lc.diag[p], ref[f"{lc.name}.{p}"], rtol=1e-10, atol=1e-12)


def test_kron_factors_equal_direct_computation() -> None:
    """A = mean of [a; 1][a; 1]ᵀ, G = Σ_n J_zᵀ Λ J_z for the pre-activation z of each layer."""
    torch.manual_seed(1)
    net = _mlp()
    x, _, loader = _data("classification", (3,))
    curv = compute_curvature(net, loader, hessian="kron")
    w1, b1, w2, b2 = (p.detach() for p in net.parameters())
    z1 = x @ w1.T + b1
    h = torch.tanh(z1)
    f = h @ w2.T + b2
    lam = torch.stack([_lambda(fi, "classification", 1.0) for fi in f])  # (N, C, C)
    j1 = w2[None] * (1 - h.square())[:, None, :]  # (N, C, 5): df/dz1
    g1 = torch.einsum("nci,ncd,ndj->ij", j1, lam, j1)
    g2 = lam.sum(0)
    a1 = torch.cat([x, torch.ones(10, 1, dtype=DT)], 1)
    a2 = torch.cat([h, torch.ones(10, 1, dtype=DT)], 1)
    for lc, a, g in zip(curv.layers, (a1, a2), (g1, g2), strict=True):
        torch.testing.assert_close(lc.A, a.T @ a / 10, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(lc.G, g, rtol=1e-10, atol=1e-12)


def test_kron_posterior_samples_match_closed_form_covariance() -> None:
    """Cov(vec W) of n draws vs (G ⊗ A + τ I)⁻¹; each of k = 21 distinct entries within
    5 standard errors sqrt((Σ_ii Σ_jj + Σ_ij²) / n), n = 20000 (family-wise α ≈ 1e-5)."""
    torch.manual_seed(2)
    layer = bl.layers.LinearReparameterization(3, 2, bias=False, dtype=DT)
    ma, mg = torch.randn(3, 3, dtype=DT), torch.randn(2, 2, dtype=DT)
    a, g, tau = ma @ ma.T, mg @ mg.T, 0.5
    la, qa = torch.linalg.eigh(a)
    lg, qg = torch.linalg.eigh(g)
    q = KroneckerNormal(2, 3, dtype=DT)
    q.set_factors(lg, qg, la, qa, tau)
    layer.set_initializer("weight", q)
    cov = torch.linalg.inv(torch.kron(g, a) + tau * torch.eye(6, dtype=DT))
    n = 20000
    with bl.vectorized_samples(layer, n):
        w = layer.sample_param("weight").reshape(n, 6) - layer.weight_loc.reshape(1, 6)
    emp = w.T @ w / n
    se = ((cov.diag()[:, None] * cov.diag()[None, :] + cov.square()) / n).sqrt()
    assert ((emp - cov).abs() < 5 * se).all()
    # the distribution's marginal variance, log density and KL agree with the full form
    dist = layer.posterior("weight")
    torch.testing.assert_close(dist.variance.reshape(-1), cov.diag())
    value = torch.randn(2, 3, dtype=DT)
    mvn = torch.distributions.MultivariateNormal(layer.weight_loc.reshape(-1), cov)
    torch.testing.assert_close(dist.log_prob(value), mvn.log_prob(value.reshape(-1)))
    prior = torch.distributions.MultivariateNormal(torch.zeros(6, dtype=DT), torch.eye(6, dtype=DT))
    torch.testing.assert_close(sum(layer.losses), torch.distributions.kl_divergence(mvn, prior))


@pytest.mark.parametrize("hessian", ["diag", "kron"])
def test_posterior_written_into_layers(hessian: str) -> None:
    torch.manual_seed(3)
    net = _mlp()
    _, _, loader = _data("classification", (3,))
    post = bll.fit(net, loader, hessian=hessian, prior_precision=2.0)
    assert post is not net and isinstance(net[0], nn.Linear)  # the input is left alone
    torch.testing.assert_close(post[0].point("weight"), net[0].weight)
    curv = post.laplace_curvature
    for lc, p in curv.groups():
        if hessian == "diag":
            expect = (lc.diag[p] + 2.0).rsqrt()
        else:
            expect = lc.module.posterior(p).variance.sqrt()
            assert type(lc.module.parameter_spec(p).initializer) is KroneckerNormal
        scale = torch.nn.functional.softplus(getattr(lc.module, f"{p}_rho"))
        torch.testing.assert_close(scale, expect)
    x = torch.randn(4, 3, dtype=DT)
    with bl.posterior_mean(post):
        torch.testing.assert_close(post(x), net(x))
    pred = bl.predict(post, x, 8)
    assert torch.isfinite(pred.samples).all() and pred.samples.std(0).min() > 0


def test_optimized_prior_precision_is_a_stationary_point() -> None:
    torch.manual_seed(4)
    _, _, loader = _data("classification", (3,))
    post = bll.fit(_mlp(), loader, hessian="kron")
    tau = bll.optimize_prior_precision(post, n_steps=300)
    t = tau.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(bll.log_marginal_likelihood(post, t), t)
    assert abs(grad.item()) * tau.item() < 1e-3
    taus = bll.optimize_prior_precision(post, structure="layerwise", n_steps=300)
    assert taus.shape == (4,)
    assert bll.log_marginal_likelihood(post, taus) >= bll.log_marginal_likelihood(post, tau) - 1e-9


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("hessian", ["diag", "kron"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_against_laplace_torch(arch: str, hessian: str, likelihood: str) -> None:
    """Curvature, log evidence and the marglik-optimised prior precision equal
    laplace-torch's (all weights) to float64 tolerance."""
    laplace = pytest.importorskip("laplace")
    torch.manual_seed(5)
    net = (
        nn.Sequential(
            nn.Conv2d(1, 2, 3),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(18, 4),
            nn.Tanh(),
            nn.Linear(4, 3),
        ).to(DT)
        if arch == "cnn"
        else _mlp()
    )
    x, y, _ = _data(likelihood, (3,) if arch == "mlp" else (1, 5, 5), n=20)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    sigma = 0.7 if likelihood == "regression" else 1.0
    ref = laplace.Laplace(
        net, likelihood, subset_of_weights="all", hessian_structure=hessian, sigma_noise=sigma
    )
    ref.fit(loader)
    post = bll.fit(net, loader, likelihood, hessian, sigma_noise=sigma)
    curv = post.laplace_curvature
    if hessian == "diag":
        ours = torch.cat([lc.diag[p].reshape(-1) for lc, p in curv.groups()])
        torch.testing.assert_close(ours, (ref.H * ref._H_factor).to(DT))
    else:  # the spectrum of every Kronecker block (weight: G ⊗ A, bias: G)
        for i, (lc, p) in enumerate(curv.groups()):
            lg, _, la, _ = kron_eigen(lc, p)
            theirs = ref.H.eigenvalues[i]
            prod = theirs[0] if len(theirs) == 1 else torch.outer(theirs[0], theirs[1])
            torch.testing.assert_close(
                torch.outer(lg, la).reshape(-1).sort().values,
                (prod.reshape(-1) * ref._H_factor).clamp_min(0).sort().values.to(DT),
                rtol=1e-7,
                atol=1e-10,
            )
    xt = torch.randn(4, *x.shape[1:], dtype=DT)  # the linearised predictive at τ = 1
    expect_pred = ref(xt, pred_type="glm", link_approx="probit")
    ours_pred = bll.glm_predictive(post, xt, likelihood)
    if likelihood == "classification":
        torch.testing.assert_close(ours_pred, expect_pred.to(DT))
    else:
        torch.testing.assert_close(ours_pred[0], expect_pred[0].to(DT))
        torch.testing.assert_close(ours_pred[1], expect_pred[1].to(DT))
    for tau in (0.5, 3.0):
        expect = ref.log_marginal_likelihood(torch.tensor(tau, dtype=DT))
        torch.testing.assert_close(bll.log_marginal_likelihood(post, tau), expect.to(DT))
    with warnings.catch_warnings():  # its reminder that the probit link is its default
        warnings.simplefilter("ignore", UserWarning)
        ref.optimize_prior_precision(method="marglik")
    ours_tau = bll.optimize_prior_precision(post)
    torch.testing.assert_close(ours_tau, ref.prior_precision.reshape(()).to(DT))


@pytest.mark.parametrize("hessian", ["diag", "kron"])
def test_glm_predictive_equals_dense_jacobian_covariance(hessian: str) -> None:
    """J Σ Jᵀ with J from jacrev on the torch model and Σ the dense covariance of every
    block (weight: (G ⊗ A + τ I)⁻¹ as built from the layer's buffers; diag: σ²)."""
    torch.manual_seed(9)
    net = _mlp()
    _, _, loader = _data("regression", (3,))
    post = bll.fit(net, loader, "regression", hessian, prior_precision=1.5, sigma_noise=0.5)
    xt = torch.randn(4, 3, dtype=DT)
    mean, cov = bll.glm_predictive(post, xt, "regression")
    names = [n for n, _ in net.named_parameters()]
    params = {n: p.detach() for n, p in net.named_parameters()}
    jac = jacrev(lambda p: functional_call(net, p, (xt,)))(params)
    expect = torch.zeros(4, 3, 3, dtype=DT)
    for n in names:
        layer, pname = post[int(n.split(".")[0])], n.split(".")[1]
        init = layer.parameter_spec(pname).initializer
        if hessian == "kron":
            qg, qa = init.eigvecs_g, init.eigvecs_a
            lam = torch.outer(init.eigvals_g, init.eigvals_a).reshape(-1) + init.prior_precision
            q = torch.kron(qg, qa)
            sigma = q @ torch.diag(lam.reciprocal()) @ q.T
        else:
            sigma = torch.diag(layer.posterior(pname).variance.reshape(-1))
        j = jac[n].reshape(4, 3, -1)
        expect += j @ sigma @ j.transpose(1, 2)
    torch.testing.assert_close(mean, net(xt))
    torch.testing.assert_close(cov, expect)
    probs = bll.glm_predictive(post, xt)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, dtype=DT))
    kappa = (1 + torch.pi / 8 * expect.diagonal(dim1=1, dim2=2)).rsqrt()
    torch.testing.assert_close(probs, torch.softmax(kappa * net(xt), -1))


def test_fit_in_place_on_a_bayesian_model() -> None:
    """A Bayesian model is fitted in place at its means; its point-estimate biases stay
    point estimates (the weight block then uses A without the bias column)."""
    torch.manual_seed(10)
    model = bl.to_bayesian(_mlp())
    _, _, loader = _data("classification", (3,))
    post = bll.fit(model, loader, hessian="kron")
    assert post is model
    assert [p for _, p in post.laplace_curvature.groups()] == ["weight", "weight"]
    assert type(model[0].bias_initializer).__name__ == "TrainableDeterministic"
    assert model[0].weight_initializer.eigvals_a.shape == (3,)


class _LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        return self.out(h[:, -1])


@pytest.mark.parametrize(
    ("make", "shape", "subset", "hessian", "fitted"),
    [
        (LeNet5BN, (1, 28, 28), "all", "kron", 5),
        (LeNet5BN, (1, 28, 28), "last_layer", "diag", 1),
        (_LSTMClassifier, (7, 4), "last_layer", "kron", 1),
        (_LSTMClassifier, (7, 4), "all", "diag", 2),
    ],
)
def test_batchnorm_and_lstm_models_fit(make, shape, subset, hessian, fitted) -> None:  # noqa: ANN001
    """Where laplace-torch fails (its issues #18, #143, #210): BatchNorm stays a point
    estimate, the LSTM (subset "all") and the linear layers get a posterior, predictions
    stay finite."""
    torch.manual_seed(6)
    net = make().to(DT)
    x = torch.randn(4, *shape, dtype=DT)
    y = torch.randint(0, 10 if make is LeNet5BN else 3, (4,))
    post = bll.fit(net, [(x[:2], y[:2]), (x[2:], y[2:])], hessian=hessian, subset=subset)
    assert len(post.laplace_curvature.layers) == fitted
    assert sum(isinstance(m, bl.layers.base.BayesianLayer) for m in post.modules()) == fitted
    pred = bl.predict(post, x[:3], 4, vectorized=False)
    assert torch.isfinite(pred.samples).all()
    assert torch.isfinite(bll.log_marginal_likelihood(post))


def test_kron_state_dict_round_trip_with_weights_only_load() -> None:
    torch.manual_seed(7)
    net = _mlp()
    _, _, loader = _data("classification", (3,))
    post = bll.fit(net, loader, hessian="kron", prior_precision=0.5)
    buf = io.BytesIO()
    torch.save(post.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = bll.restore(_mlp(), state)
    assert type(fresh[2].bias_initializer) is KroneckerNormal
    x = torch.randn(5, 3, dtype=DT)
    torch.manual_seed(8)
    a = post(x)
    torch.manual_seed(8)
    torch.testing.assert_close(fresh(x), a)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"likelihood": "poisson"}, "likelihood"),
        ({"hessian": "lowrank"}, "hessian"),
        ({"subset": "first_layer"}, "subset"),
        ({"sigma_noise": 0.0}, "sigma_noise"),
        ({"prior_precision": -1.0}, "prior_precision"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, argument: str) -> None:
    _, _, loader = _data("classification", (3,))
    with pytest.raises(ValueError, match=rf"laplace\.fit expected `{argument}`.*got"):
        bll.fit(_mlp(), loader, **kwargs)


def test_class_indices_of_any_integer_dtype_and_out_of_range() -> None:
    """int32 labels give the int64 labels' fit (cross_entropy takes int64 only); a label
    outside [0, C) raises a ValueError naming laplace.fit, not torch's IndexError."""
    torch.manual_seed(0)
    net = _mlp()
    _, y, loader = _data("classification", (3,))
    want = bll.log_marginal_likelihood(bll.fit(net, loader))
    narrow = [(x, y.to(torch.int32)) for x, y in loader]
    torch.testing.assert_close(bll.log_marginal_likelihood(bll.fit(net, narrow)), want)
    bad = [(x, torch.full_like(y, 3)) for x, y in loader]
    with pytest.raises(ValueError, match=r"laplace\.fit expected class indices in \[0, 2\]"):
        bll.fit(net, bad)


def test_loader_batches_that_are_not_pairs_raise_naming_laplace_fit() -> None:
    x, y, _ = _data("classification", (3,))
    for loader, got in [
        ((x, y), r"a Tensor of shape \(10, 3\) \(one \(x, y\) pair\? pass \[\(x, y\)\]\)"),
        ([(x, y, x)], "a tuple of 3 items"),
        ([{"x": x, "y": y}], "a dict"),
    ]:
        with pytest.raises(TypeError, match=rf"laplace\.fit expected `loader` to yield .*{got}"):
            bll.fit(_mlp(), loader)


def test_diag_fit_over_a_swag_posterior_is_the_laplace_one() -> None:
    """A diagonal Laplace fit in place over a SWAG (low-rank) posterior has scale
    (h + τ)^(-1/2) and no SWAG deviations, and its GLM predictive runs."""
    torch.manual_seed(0)
    model = bl.to_bayesian(_mlp(), "reparameterization")
    x, y, loader = _data("regression", (3,))
    bl.swag.collect(model, loader, nn.functional.mse_loss, lr=0.05, epochs=3, max_rank=2)
    post = bll.fit(model, loader, "regression", hessian="diag", prior_precision=2.0)
    for lc in post.laplace_curvature.layers:
        want = (lc.diag["weight"] + 2.0).rsqrt()
        torch.testing.assert_close(lc.module.posterior("weight").stddev, want)
    assert bll.glm_predictive(post, x, "regression")[1].shape == (10, 3, 3)


def test_flipout_model_takes_diag_and_refuses_kron() -> None:
    model = bl.to_bayesian(_mlp(), "flipout")
    _, _, loader = _data("classification", (3,))
    with pytest.raises(ValueError, match=r"laplace\.fit with hessian='kron'.*LinearFlipout"):
        bll.fit(model, loader, hessian="kron")
    post = bll.fit(model, loader, hessian="diag", subset="last_layer")
    assert post is model and len(post.laplace_curvature.layers) == 1


def test_empty_loader_and_unfitted_model_raise() -> None:
    with pytest.raises(ValueError, match=r"laplace\.fit expected a `loader`"):
        bll.fit(_mlp(), [])
    with pytest.raises(ValueError, match=r"laplace\.log_marginal_likelihood"):
        bll.log_marginal_likelihood(_mlp())
    with pytest.raises(ValueError, match="structure"):
        bll.optimize_prior_precision(
            bll.fit(_mlp(), _data("classification", (3,))[2]), structure="diag"
        )
    for lr in (0.0, -0.1, float("nan")):  # 0: no step at all, silently the initial τ
        with pytest.raises(ValueError, match=r"optimize_prior_precision expected `lr` a finite"):
            bll.optimize_prior_precision(bll.fit(_mlp(), _data("classification", (3,))[2]), lr=lr)
    with pytest.raises(ValueError, match="out_dim"):
        KroneckerNormal(0, 3)
    with pytest.raises(ValueError, match=r"laplace\.glm_predictive expected a model with random"):
        bll.glm_predictive(_mlp(), torch.randn(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="likelihood"):
        bll.glm_predictive(_mlp(), torch.randn(2, 3, dtype=DT), "poisson")
    with pytest.raises(ValueError, match="eigvals_g"):
        KroneckerNormal(2, 3).set_factors(
            torch.ones(3), torch.eye(2), torch.ones(3), torch.eye(3), 1.0
        )


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's note
@pytest.mark.parametrize("kernel", [3, 4])  # symmetric and torch's asymmetric split
def test_same_padding_curvature_equals_explicit_padding(kernel: int) -> None:
    torch.manual_seed(0)
    same = nn.Sequential(nn.Conv2d(2, 3, kernel, padding="same"), nn.Flatten(),
                         nn.Linear(3 * 36, 4)).double()  # fmt: skip
    total = kernel - 1
    pad = nn.ZeroPad2d((total // 2, total - total // 2) * 2)  # (left, right, top, bottom)
    explicit = nn.Sequential(pad, nn.Conv2d(2, 3, kernel), nn.Flatten(),
                             nn.Linear(3 * 36, 4)).double()  # fmt: skip
    explicit[1].load_state_dict(same[0].state_dict())
    explicit[3].load_state_dict(same[2].state_dict())
    data = [(torch.randn(5, 2, 6, 6, dtype=torch.float64), torch.randint(0, 4, (5,)))]
    torch.testing.assert_close(same(data[0][0]), explicit(data[0][0]))
    for hessian in ("diag", "kron"):
        a = bl.laplace.fit(same, data, hessian=hessian)
        b = bl.laplace.fit(explicit, data, hessian=hessian)
        lml_a = bl.laplace.log_marginal_likelihood(a, 1.0)
        lml_b = bl.laplace.log_marginal_likelihood(b, 1.0)
        torch.testing.assert_close(lml_a, lml_b, rtol=1e-10, atol=1e-10)


def test_curvature_restores_requires_grad_even_when_it_raises() -> None:
    """The curvature forward turns the parameters' gradients off (the probes carry the
    graph); every flag comes back as it was, after success and after an error."""
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    net[0].bias.requires_grad_(False)  # a mixed model: the flags must come back as they were
    flags = [p.requires_grad for p in net.parameters()]
    data = [(torch.randn(5, 3), torch.randint(0, 2, (5,)))]
    compute_curvature(net, data, hessian="diag")
    assert [p.requires_grad for p in net.parameters()] == flags
    bad = [(torch.randn(5, 3), torch.randn(5, 3))]  # regression targets of the wrong shape
    with pytest.raises(ValueError, match="expected regression targets"):
        compute_curvature(net, bad, likelihood="regression")
    assert [p.requires_grad for p in net.parameters()] == flags


@pytest.mark.parametrize("bias", [True, False])
def test_linear_diagonal_equals_per_example_brute_force(bias: bool) -> None:
    """The linear layers' GGN diagonal, Σ_n Σ_c (S_nᵀ J_n)_c², against per-example
    Jacobians from torch.func and Λ = diag(p) - p pᵀ written out, float64."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 5, bias=bias), nn.Tanh(), nn.Linear(5, 3, bias=bias))
    net = net.double()
    x = torch.randn(7, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (7,))
    curv = compute_curvature(net, [(x, y)], hessian="diag")
    params = {k: v.detach() for k, v in net.named_parameters()}
    want = {k: torch.zeros_like(v) for k, v in params.items()}
    for n in range(len(x)):
        jac = jacrev(lambda p, n=n: functional_call(net, p, (x[n : n + 1],))[0])(params)
        prob = torch.softmax(net(x[n : n + 1])[0], -1).detach()
        lam = torch.diag(prob) - torch.outer(prob, prob)
        for k, j in jac.items():
            jf = j.reshape(3, -1)  # (C, P)
            want[k] += torch.einsum("cp,cd,dp->p", jf, lam, jf).reshape(want[k].shape)
    for lc in curv.layers:
        for name in lc.params:
            torch.testing.assert_close(
                lc.diag[name], want[f"{lc.name}.{name}"], rtol=1e-10, atol=1e-12
            )
