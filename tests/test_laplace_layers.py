"""Laplace beyond linear and conv layers: recurrent, attention and embedding curvature
against per-example autograd Jacobians, a LeNet-5 with BatchNorm, and the full-covariance
posterior (``hessian="full"``) against dense float64 algebra, laplace-torch's
FullLaplace, Monte Carlo draws and a state round trip (float64 throughout)."""

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
from bayesian_layers.initializers.full_normal import FullNormal
from bayesian_layers.laplace.curvature import compute_curvature
from bayesian_layers.laplace.posterior import group_precisions

DT = torch.float64


class _LSTMNet(nn.Module):
    """Embedding -> LSTM (batch first) -> last hidden state -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.lstm = nn.LSTM(4, 5, batch_first=True)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(x))
        return self.out(h[:, -1])


class _AttentionNet(nn.Module):
    """Self-attention (2 heads, batch first) -> mean over tokens -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(4, 2, batch_first=True)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.att(x, x, x)
        return self.out(h.mean(1))


class _GRUCellNet(nn.Module):
    """A GRU cell unrolled over the tokens -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(4, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], 5)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.out(h)


class _LSTMCellNet(nn.Module):
    """An LSTM cell unrolled over the tokens -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(4, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = x.new_zeros(x.shape[0], 5)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.out(h)


class _DeepLSTMNet(nn.Module):
    """A 2-layer bidirectional LSTM, sequence first ``(T, B, F)`` -> last step -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 3, num_layers=2, bidirectional=True)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        return self.out(h[-1])


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)


def _inputs(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    if kind == "lstm":
        return torch.randint(0, 7, (n, 6), generator=g)
    if kind == "lenet":
        return torch.randn(n, 1, 28, 28, generator=g, dtype=DT)
    if kind == "mlp":
        return torch.randn(n, 3, generator=g, dtype=DT)
    if kind == "deep_lstm":  # sequence first, as many steps as examples
        return torch.randn(n, n, 4, generator=g, dtype=DT)
    return torch.randn(n, 5, 4, generator=g, dtype=DT)


def _problem(kind: str, n: int = 8, seed: int = 0, likelihood: str = "classification"):
    torch.manual_seed(seed)
    make = {"lstm": _LSTMNet, "attention": _AttentionNet, "gru_cell": _GRUCellNet,
            "lstm_cell": _LSTMCellNet, "deep_lstm": _DeepLSTMNet, "lenet": LeNet5BN,
            "mlp": _mlp}[kind]  # fmt: skip
    net = make().to(DT).eval()
    g = torch.Generator().manual_seed(seed)
    x = _inputs(kind, n, g)
    c = 10 if kind == "lenet" else 3
    if likelihood == "classification":
        y = torch.randint(0, c, (n,), generator=g)
    else:
        y = torch.randn(n, c, generator=g, dtype=DT)
    if kind == "deep_lstm":  # one batch: the examples are the second dimension
        return net, x, y, [(x, y)]
    half = n // 2
    return net, x, y, [(x[:half], y[:half]), (x[half:], y[half:])]


def _lambda(f: torch.Tensor, likelihood: str = "classification", sigma: float = 1.0):
    if likelihood == "regression":
        return torch.eye(f.shape[-1], dtype=DT) / sigma**2
    p = f.softmax(-1)
    return torch.diag(p) - torch.outer(p, p)


def _brute_force_diag(net: nn.Module, x: torch.Tensor, names: list[str]) -> dict:
    """diag(Σ_n J_nᵀ Λ_n J_n): one example at a time, one output at a time, with
    torch.autograd.grad on the torch model (eval mode), Λ written out."""
    params = dict(net.named_parameters())
    ref = {n: torch.zeros_like(params[n]) for n in names}
    dim = 1 if isinstance(net, _DeepLSTMNet) else 0  # where the examples are
    for i in range(x.shape[dim]):
        f = net(x.narrow(dim, i, 1))[0]  # (C,)
        lam = _lambda(f.detach())
        rows = [torch.autograd.grad(f[c], [params[n] for n in names], retain_graph=True)
                for c in range(f.shape[0])]  # fmt: skip
        for k, n in enumerate(names):
            j = torch.stack([r[k].reshape(-1) for r in rows])  # (C, P)
            ref[n] += torch.einsum("cp,cd,dp->p", j, lam, j).reshape(ref[n].shape)
    return ref


def _check_diag(curv, net: nn.Module, x: torch.Tensor, only: tuple[str, ...] | None = None):
    groups = [(lc, p) for lc, p in curv.groups() if lc.structure == "diag"]
    if only is not None:
        groups = [(lc, p) for lc, p in groups if lc.name.split(".")[0] in only]
    names = [f"{lc.name}.{p}" for lc, p in groups]
    ref = _brute_force_diag(net, x, names)
    for (lc, p), n in zip(groups, names, strict=True):
        torch.testing.assert_close(lc.diag[p], ref[n], rtol=1e-10, atol=1e-12)
    return names


# ------------------------------------------------------------------ (a), (b): layers
@pytest.mark.parametrize("hessian", ["diag", "kron"])
@pytest.mark.parametrize("kind", ["lstm", "attention", "gru_cell", "lstm_cell", "deep_lstm"])
def test_recurrent_attention_embedding_curvature_equals_brute_force(kind: str, hessian: str):
    """Every fitted parameter tensor, converted layers included: the exact GGN diagonal
    (kron: the recurrent, attention and embedding layers keep their diagonal; the last
    Linear gets Kronecker factors) equals the per-example autograd reference to 1e-10;
    predictions are finite, the evidence too, and maximising it raises it."""
    net, x, _, loader = _problem(kind)
    post = bll.fit(net, loader, hessian=hessian, prior_precision=1.0)
    curv = post.laplace_curvature
    fitted = {lc.name: lc.structure for lc in curv.layers}
    expected = {
        "lstm": {"emb": "diag", "lstm": "diag"},
        "attention": {"att": "diag", "att.out_proj": "diag"},
        "gru_cell": {"cell": "diag"},
        "lstm_cell": {"cell": "diag"},
        "deep_lstm": {"lstm": "diag"},
    }[kind]
    assert fitted == {**expected, "out": hessian}
    names = _check_diag(curv, net, x)
    n_diag = {"lstm": 5, "attention": 4, "gru_cell": 4, "lstm_cell": 4, "deep_lstm": 16}[kind]
    assert len(names) == n_diag + (hessian == "diag") * 2
    # the written posterior: scale = (h + τ)^-1/2 for the diagonal groups
    for lc, p in curv.groups():
        if lc.structure == "diag":
            expect = (lc.diag[p] + 1.0).rsqrt()
            torch.testing.assert_close(lc.module.posterior(p).stddev, expect)
    torch_kinds = (nn.LSTM, nn.MultiheadAttention, nn.GRUCell, nn.LSTMCell, nn.Embedding)
    assert not any(isinstance(m, torch_kinds) for m in post.modules())
    xp = x[:, :3] if kind == "deep_lstm" else x[:3]  # 3 examples
    pred = bl.predict(post, xp, 4, vectorized=False)
    assert pred.samples.shape == (4, 3, 3) and torch.isfinite(pred.samples).all()
    probs = bll.glm_predictive(post, xp)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, dtype=DT))
    lml0 = bll.log_marginal_likelihood(post, 1.0)
    assert torch.isfinite(lml0)
    bll.optimize_prior_precision(post, init=1.0)
    assert bll.log_marginal_likelihood(post) > lml0


def test_compute_curvature_on_the_torch_model_equals_the_converted_fit() -> None:
    """Unconverted torch modules are fitted directly (their own parameter names), to the
    same curvature as the converted copy."""
    net, x, _, loader = _problem("lstm", seed=1)
    direct = compute_curvature(net, loader, hessian="diag")
    fitted = bll.fit(net, loader, hessian="diag").laplace_curvature
    assert [(lc.name, p) for lc, p in direct.groups()] == [
        (lc.name, p) for lc, p in fitted.groups()
    ]
    for (a, p), (b, _) in zip(direct.groups(), fitted.groups(), strict=True):
        torch.testing.assert_close(a.diag[p], b.diag[p], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["attention", "lstm"])
def test_per_example_rows_loop_equals_vmap(kind: str) -> None:
    """The vectorised rows (vmap over examples; for the embedding model, which vmap cannot
    run per example, vmap over chunks of 8 examples' outputs) equal the plain loop."""
    from bayesian_layers.laplace._per_example import per_example_rows
    from bayesian_layers.laplace.curvature import hessian_sqrt

    net, x, _, _ = _problem(kind, n=10, seed=2)
    means = {k: v.detach() for k, v in net.named_parameters()}
    s = hessian_sqrt(net(x).detach(), "classification", 1.0)
    a = per_example_rows(net, x, means, s)
    b = per_example_rows(net, x, means, s, vectorize=False)
    for k in means:
        assert a[k].shape == (10, 3, *means[k].shape)
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------ (c): LeNet-5
@pytest.mark.parametrize("hessian", ["diag", "kron"])
def test_lenet5_with_batchnorm(hessian: str) -> None:
    """conv-BN-relu-pool ×2, linear ×3: every conv and linear layer is fitted, BatchNorm
    stays a point estimate with its buffers untouched (eval-mode statistics), the diagonal
    of the linear layers equals the brute force, predictions are finite."""
    net, x, _, loader = _problem("lenet", n=4)
    with torch.no_grad():  # running statistics away from (0, 1): eval mode must use them
        for bn in (net.features[1], net.features[5]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "batches" in k}
    post = bll.fit(net, loader, hessian=hessian, subset="all")
    curv = post.laplace_curvature
    assert [lc.name for lc in curv.layers] == [
        "features.0", "features.4", "head.1", "head.3", "head.5",
    ]  # fmt: skip
    assert [lc.structure for lc in curv.layers] == [hessian] * 5
    for k, v in before.items():
        assert torch.equal(post.state_dict()[k], v) and torch.equal(net.state_dict()[k], v)
    assert isinstance(post.features[1], nn.BatchNorm2d)
    if hessian == "diag":
        names = _check_diag(curv, net, x, only=("head",))
        assert len(names) == 6
    pred = bl.predict(post, x[:2], 3, vectorized=False)
    assert torch.isfinite(pred.samples).all()
    assert torch.isfinite(bll.log_marginal_likelihood(post))


# ------------------------------------------------------------------------ (d): full GGN
def _dense_ggn(net: nn.Module, x: torch.Tensor, likelihood: str, sigma: float) -> torch.Tensor:
    params = {k: v.detach() for k, v in net.named_parameters()}
    h = 0
    for xi in x:
        jac = jacrev(lambda p, xi=xi: functional_call(net, p, (xi[None],))[0])(params)
        j = torch.cat([jac[k].reshape(jac[k].shape[0], -1) for k in params], 1)  # (C, P)
        h = h + j.T @ _lambda(net(xi[None])[0].detach(), likelihood, sigma) @ j
    return h


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_full_ggn_equals_dense_and_its_diagonal_the_diag_fit(likelihood: str) -> None:
    net, x, _, loader = _problem("mlp", n=10, likelihood=likelihood)
    curv = compute_curvature(net, loader, likelihood=likelihood, hessian="full", sigma_noise=0.7)
    assert curv.full is not None and curv.full.shape == (38, 38)
    torch.testing.assert_close(
        curv.full, _dense_ggn(net, x, likelihood, 0.7), rtol=1e-10, atol=1e-12
    )
    diag = compute_curvature(net, loader, likelihood=likelihood, hessian="diag", sigma_noise=0.7)
    ours = torch.cat([lc.diag[p].reshape(-1) for lc, p in diag.groups()])
    torch.testing.assert_close(curv.full.diagonal(), ours, rtol=1e-10, atol=1e-12)


def test_full_marglik_equals_direct_formula_and_optimizes() -> None:
    """log p(D) ≈ log p(D|θ*) - ½ (log det(H + diag τ) - Σ log τ_p + Σ τ_p θ_p²), log det by
    torch.logdet, for a scalar and a per-tensor τ; maximising it raises it."""
    net, x, y, loader = _problem("mlp", n=10)
    post = bll.fit(net, loader, hessian="full")
    curv = post.laplace_curvature
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    sizes = [p.numel() for p in net.parameters()]
    loglik = -nn.functional.cross_entropy(net(x), y, reduction="sum")
    for tau in (torch.tensor(0.7, dtype=DT), torch.tensor([0.5, 2.0, 1.5, 3.0], dtype=DT)):
        t = torch.cat([v.expand(n) for v, n in zip(tau.reshape(-1).expand(4), sizes, strict=True)])
        expect = loglik - 0.5 * (
            torch.logdet(curv.full + torch.diag(t)) - t.log().sum() + (t * theta.square()).sum()
        )
        torch.testing.assert_close(bll.log_marginal_likelihood(post, tau), expect.detach())
    lml0 = bll.log_marginal_likelihood(post, 1.0)
    tau = bll.optimize_prior_precision(post, structure="layerwise", n_steps=200)
    assert tau.shape == (4,) and bll.log_marginal_likelihood(post) > lml0
    # the written posterior is the new one: marginal variances of (H + diag τ)⁻¹
    cov = torch.linalg.inv(curv.full + torch.diag(torch.cat(
        [v.expand(n) for v, n in zip(tau, sizes, strict=True)])))  # fmt: skip
    ours = torch.cat([post[i].posterior(p).variance.reshape(-1)
                      for i in (0, 2) for p in ("weight", "bias")])  # fmt: skip
    torch.testing.assert_close(ours, cov.diagonal())


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_full_against_laplace_torch(likelihood: str) -> None:
    """FullLaplace's GGN, GLM predictive (at τ = 1) and log evidence equal ours to float64
    tolerance (its log_marginal_likelihood(τ) keeps τ, so it comes last)."""
    laplace = pytest.importorskip("laplace")
    net, x, y, _ = _problem("mlp", n=20, likelihood=likelihood, seed=5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    sigma = 0.7 if likelihood == "regression" else 1.0
    ref = laplace.Laplace(
        net, likelihood, subset_of_weights="all", hessian_structure="full", sigma_noise=sigma
    )
    with warnings.catch_warnings():  # torch's forward-mode decompositions load via jit
        warnings.simplefilter("ignore", DeprecationWarning)
        ref.fit(loader)
    post = bll.fit(net, loader, likelihood, "full", sigma_noise=sigma)
    curv = post.laplace_curvature
    torch.testing.assert_close(curv.full, (ref.H * ref._H_factor).to(DT))
    xt = torch.randn(4, 3, dtype=DT)  # the linearised predictive at τ = 1
    expect_pred = ref(xt, pred_type="glm", link_approx="probit")
    ours_pred = bll.glm_predictive(post, xt, likelihood)
    if likelihood == "classification":
        torch.testing.assert_close(ours_pred, expect_pred.to(DT), rtol=1e-8, atol=1e-8)
    else:
        for a, b in zip(ours_pred, expect_pred, strict=True):
            torch.testing.assert_close(a, b.to(DT), rtol=1e-8, atol=1e-8)
    for tau in (0.5, 3.0):
        expect = ref.log_marginal_likelihood(torch.tensor(tau, dtype=DT))
        torch.testing.assert_close(
            bll.log_marginal_likelihood(post, tau), expect.to(DT), rtol=1e-8, atol=1e-8
        )


def _joint_cov(post: nn.Module) -> torch.Tensor:
    curv = post.laplace_curvature
    sizes = [lc.module.point(p).numel() for lc, p in curv.groups()]
    taus = group_precisions(curv, curv.prior_precision)
    t = torch.cat([v.expand(n) for v, n in zip(taus, sizes, strict=True)])
    return torch.linalg.inv(curv.full + torch.diag(t))


def test_full_joint_draws_match_the_covariance() -> None:
    """Cov of n = 20000 vectorised draws of all 38 parameters (one shared z per function
    sample) vs (H + τ I)⁻¹, cross-layer blocks included: each of the k = 741 distinct
    entries within 5 standard errors sqrt((Σ_ii Σ_jj + Σ_ij²) / n) (family-wise α ≈ 4e-4)."""
    net, _, _, loader = _problem("mlp", n=10, seed=3)
    post = bll.fit(net, loader, hessian="full", prior_precision=2.0)
    cov = _joint_cov(post)
    assert cov[:20, 20:].abs().max() > 1e-3  # the layers are correlated
    n = 20000
    torch.manual_seed(11)
    with bl.vectorized_samples(post, n):
        draws = [
            post[i].sample_param(p) - post[i].point(p) for i in (0, 2) for p in ("weight", "bias")
        ]
    w = torch.cat([d.reshape(n, -1) for d in draws], 1)  # (n, 38)
    emp = w.T @ w / n
    se = ((cov.diag()[:, None] * cov.diag()[None, :] + cov.square()) / n).sqrt()
    assert ((emp - cov).abs() < 5 * se).all()
    # a frozen sample is one joint draw too, and predictions run on joint draws
    with bl.frozen_sample(post):
        a = post[0].sample_param("weight")
        assert torch.equal(post[0].sample_param("weight"), a)
    pred = bl.predict(post, torch.randn(5, 3, dtype=DT), 6)
    assert pred.samples.shape == (6, 5, 3) and torch.isfinite(pred.samples).all()


def test_full_glm_predictive_equals_dense_joint_covariance() -> None:
    net, _, _, loader = _problem("mlp", n=10, seed=4, likelihood="regression")
    post = bll.fit(net, loader, "regression", "full", prior_precision=1.5, sigma_noise=0.5)
    xt = torch.randn(4, 3, dtype=DT)
    mean, cov = bll.glm_predictive(post, xt, "regression")
    params = {k: v.detach() for k, v in net.named_parameters()}
    jac = jacrev(lambda p: functional_call(net, p, (xt,)))(params)
    j = torch.cat([jac[k].reshape(4, 3, -1) for k in params], -1)  # (B, C, P)
    torch.testing.assert_close(mean, net(xt))
    torch.testing.assert_close(cov, j @ _joint_cov(post) @ j.transpose(1, 2))


def test_full_state_dict_round_trip_with_weights_only_load() -> None:
    net, _, _, loader = _problem("lstm", n=6, seed=5)
    post = bll.fit(net, loader, hessian="full")
    assert all(isinstance(lc.module.parameter_spec(p).initializer, FullNormal)
               for lc, p in post.laplace_curvature.groups())  # fmt: skip
    buf = io.BytesIO()
    torch.save(post.state_dict(), buf)
    buf.seek(0)
    fresh = bll.restore(_LSTMNet().to(DT), torch.load(buf, weights_only=True))
    x = _inputs("lstm", 5, torch.Generator().manual_seed(0))
    torch.manual_seed(8)
    a = bl.predict(post, x, 4).samples
    torch.manual_seed(8)
    torch.testing.assert_close(bl.predict(fresh, x, 4).samples, a, rtol=0, atol=0)


# ---------------------------------------------------------------------- (e): bad input
def _fit(model: nn.Module, **kwargs: object) -> None:
    bll.fit(model, _problem("mlp")[3], **kwargs)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: _fit(_mlp(), hessian="dense"),
            r"laplace\.fit expected `hessian` in \('diag', 'kron', 'full'\), got 'dense'",
        ),
        (
            lambda: _fit(bl.to_bayesian(_mlp(), "flipout"), hessian="full"),
            r"laplace\.fit with hessian='full' expected reparameterization layers, got "
            r"LinearFlipout \(flipout\) at '0'",
        ),
        (
            lambda: _fit(nn.Sequential(nn.ReLU())),
            r"laplace\.fit expected a model with a Linear, Conv2d, recurrent, attention or "
            r"Embedding layer, got none",
        ),
        (
            lambda: _fit(_mlp(), hessian="full", prior_precision=torch.ones(3)),
            r"laplace\.fit expected `prior_precision` a scalar or 4 values .*got shape \(3,\)",
        ),
        (
            lambda: FullNormal(torch.zeros(1, 3)),
            r"FullNormal expected `factor` of shape \(P, \*shape\) with P >= 2 .*got shape "
            r"\(1, 3\)",
        ),
    ],
)
def test_bad_choices_name_function_argument_expected_and_got(call, message: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=message):
        call()


def test_kron_keeps_a_flipout_lstm_diagonal() -> None:
    """Kronecker factors need whole-weight draws only where they are used: a Flipout LSTM
    in a Kronecker fit keeps its diagonal posterior (no error)."""
    lstm = bl.to_bayesian(_LSTMNet().to(DT), "flipout", include=["lstm"])
    lstm = bl.to_bayesian(lstm, "reparameterization")
    post = bll.fit(lstm, _problem("lstm")[3], hessian="kron", subset="all")
    assert [lc.structure for lc in post.laplace_curvature.layers] == ["diag", "diag", "kron"]
    assert torch.isfinite(bl.predict(post, _problem("lstm")[1][:2], 3).samples).all()


def test_refit_in_place_replaces_a_full_posterior_by_a_diagonal_one() -> None:
    net, x, _, loader = _problem("mlp", seed=6)
    post = bll.fit(net, loader, hessian="full")
    assert isinstance(post[0].weight_initializer, FullNormal)
    again = bll.fit(post, loader, hessian="diag", prior_precision=2.0)
    assert again is post and type(post[0].weight_initializer).__name__ == "TrainableNormal"
    for lc, p in again.laplace_curvature.groups():
        torch.testing.assert_close(lc.module.posterior(p).stddev, (lc.diag[p] + 2.0).rsqrt())
