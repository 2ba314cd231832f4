"""Laplace-LoRA (Yang et al. 2024): ``bl.laplace.fit(..., subset="lora")`` over the adapters'
``lora_A`` and ``lora_B`` only, on token-level ``(B, T, V)`` and pooled ``(B, C)`` outputs.

References are independent of the Laplace code: ``torch.func`` Jacobians of the logits with
respect to the adapter weights (the exact GGN ``Σ_{n,t} J_ntᵀ Λ_nt J_nt``), and with
respect to a factor's output (the KFAC factors from their definition); dense Kronecker
covariances for the predictive moments and the evidence (float64 throughout).
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from stats_util import z_bonferroni
from torch import Tensor, nn
from torch.func import functional_call, jacrev

import bayesian_layers as bl
from bayesian_layers import laplace as bll
from bayesian_layers.adapters import lora
from bayesian_layers.initializers.kron_normal import KroneckerNormal
from bayesian_layers.laplace.curvature import compute_curvature
from bayesian_layers.layers.base import BayesianLayer
from bayesian_layers.layers.linear import LinearReparameterization

DT = torch.float64
V, D, T, N = 5, 4, 3, 6
FACTORS = ("q_proj.lora_A", "q_proj.lora_B", "v_proj.lora_A", "v_proj.lora_B")


class TinyLM(nn.Module):
    """Embedding -> q_proj -> causal mean over positions -> v_proj -> head: ``(B, T)``
    token ids -> ``(B, T, V)`` logits (``pool``: their mean over T, ``(B, V)``)."""

    def __init__(self, pool: bool = False) -> None:
        super().__init__()
        self.pool = pool
        self.emb = nn.Embedding(V, D)
        self.q_proj = nn.Linear(D, D)
        self.v_proj = nn.Linear(D, D)
        self.head = nn.Linear(D, V)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.q_proj(self.emb(x)))
        steps = torch.arange(1, h.shape[1] + 1, dtype=h.dtype, device=h.device)
        h = h.cumsum(1) / steps[:, None]  # position t mixes positions <= t
        out = self.head(torch.tanh(self.v_proj(h)))
        return out.mean(1) if self.pool else out


def _adapted(pool: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = lora(
        TinyLM(pool).to(DT), target=("q_proj", "v_proj"), rank=2, alpha=4.0, posterior="laplace"
    )
    with torch.no_grad():  # B away from its zero start: every factor has curvature
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.normal_(0.0, 0.7)
    return model


def _data(pool: bool, seed: int = 1) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (N, T), generator=g)
    y = torch.randint(0, V, (N,) if pool else (N, T), generator=g)
    return x, y, [(x[:3], y[:3]), (x[3:], y[3:])]


def _weights(model: nn.Module, names: tuple[str, ...] = FACTORS) -> dict[str, Tensor]:
    return {f"{n}.weight": model.get_submodule(n).weight.detach().clone() for n in names}


def _sqrt_lambda(logits: Tensor) -> Tensor:
    """``S[..., d, c] = sqrt(p_c)(δ_dc - p_d)``: ``Λ = diag(p) - p pᵀ = S Sᵀ``."""
    p = torch.softmax(logits, -1)
    return (torch.eye(V, dtype=DT) - p[..., :, None]) * p.sqrt()[..., None, :]


def _reference_ggn(
    model: nn.Module, x: Tensor, y: Tensor, names: tuple[str, ...] = FACTORS
) -> Tensor:
    """The exact GGN over the adapter weights (in ``names`` order), tokens with target
    ``-100`` left out: ``Σ_{n,t} J_ntᵀ (diag(p) - p pᵀ) J_nt`` from ``jacrev``."""
    params = _weights(model, names)
    f = functional_call(model, params, (x,))
    with warnings.catch_warnings():  # torch.func's fallback for attention (still exact)
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    c = f.shape[-1]
    j = torch.cat([jac[k].reshape(-1, c, params[k].numel()) for k in params], -1)  # (rows, C, P)
    p = torch.softmax(f.reshape(-1, c), -1)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    lam = lam * (y.reshape(-1) != -100).to(DT)[:, None, None]
    return torch.einsum("rcp,rcd,rdq->pq", j, lam, j)


def _fitted(pool: bool, hessian: str, y_edit=None, **kwargs):
    model = _adapted(pool)
    x, y, loader = _data(pool)
    if y_edit is not None:
        y = y_edit(y)
        loader = [(x[:3], y[:3]), (x[3:], y[3:])]
    ref = copy.deepcopy(model)
    post = bll.fit(model, loader, hessian=hessian, subset="lora", **kwargs)
    return post, ref, x, y


def test_subset_lora_writes_the_posterior_into_the_adapter_factors_only():
    model = _adapted()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bases = {n: model.get_submodule(n).base for n in ("q_proj", "v_proj")}
    x, y, loader = _data(False)
    post = bll.fit(model, loader, hessian="kron", subset="lora")
    assert post is model  # in place: no copy of the frozen base
    bayes = [n for n, m in post.named_modules() if isinstance(m, BayesianLayer)]
    assert tuple(bayes) == FACTORS
    for name in FACTORS:
        layer = post.get_submodule(name)
        assert isinstance(layer, LinearReparameterization)
        assert isinstance(layer.parameter_spec("weight").initializer, KroneckerNormal)
        assert torch.equal(layer.point("weight"), before[f"{name}.weight"])
    for name, base in bases.items():
        assert post.get_submodule(name).base is base and type(base) is nn.Linear
    assert type(post.emb) is nn.Embedding and type(post.head) is nn.Linear
    frozen = {n: p for n, p in post.named_parameters() if "lora_" not in n}
    assert set(frozen) == {n for n in before if "lora_" not in n}
    # sampling and a backward through the samples leave the base without gradient
    out = bl.predict(post, x, 4, grad=True).samples
    torch.nn.functional.cross_entropy(out.reshape(-1, V), y.repeat(4, 1).reshape(-1)).backward()
    for n, p in frozen.items():
        assert not p.requires_grad and p.grad is None and torch.equal(p, before[n])


@pytest.mark.parametrize("pool", [False, True], ids=["tokens_BTV", "pooled_BC"])
def test_diag_and_full_curvature_equal_the_exact_ggn_of_the_adapters(pool):
    # a token with target -100 is ignored (as by F.cross_entropy); a pooled output has none
    def edit(y: Tensor) -> Tensor:
        if pool:
            return y
        y = y.clone()
        y[0, 1] = y[4, 2] = -100
        return y

    post, ref, x, y = _fitted(pool, "diag", edit)
    h = _reference_ggn(ref, x, y)
    diag = torch.cat([lc.diag["weight"].reshape(-1) for lc in post.laplace_curvature.layers])
    assert [lc.name for lc in post.laplace_curvature.layers] == list(FACTORS)
    torch.testing.assert_close(diag, h.diagonal(), rtol=1e-10, atol=1e-12)
    full, *_ = _fitted(pool, "full", edit)
    torch.testing.assert_close(full.laplace_curvature.full, h, rtol=1e-10, atol=1e-12)


def _kfac_reference(model: nn.Module, x: Tensor, name: str) -> tuple[Tensor, ...]:
    """``(Σ a aᵀ, rows, G_expand, G_token)`` of factor ``name`` on batch ``x``: its inputs
    ``a`` by a forward hook; ``∂f/∂z`` of its output ``z`` by ``jacrev`` through a zero
    offset added to ``z``. ``G_expand = Σ_c Σ_{n',t'} g gᵀ`` with
    ``g_c[n',t'] = Σ_{n,t,d} S_nt[d,c] ∂f_ntd/∂z_n't'`` (every token's column c at once);
    ``G_token`` sums each token's column alone."""
    layer = model.get_submodule(name)
    seen: dict[str, Tensor] = {}
    offset: dict[str, Tensor] = {}

    def hook(module, inputs, out):
        seen["a"] = inputs[0].detach()
        return out + offset["z"] if "z" in offset else out

    handle = layer.register_forward_hook(hook)
    try:
        f = model(x).detach()
        zero = torch.zeros(*seen["a"].shape[:-1], layer.out_features, dtype=DT)

        def through(z: Tensor) -> Tensor:
            offset["z"] = z
            try:
                return model(x)
            finally:
                offset.clear()

        jz = jacrev(through)(zero)  # (B, *out[:-1], V, B, T', O)
    finally:
        handle.remove()
    b = x.shape[0]
    f = f.reshape(b, -1, V)  # (B, To, V)
    jz = jz.reshape(b, f.shape[1], V, b, -1, layer.out_features)
    s = _sqrt_lambda(f)  # (B, To, V, V)
    a = seen["a"].reshape(-1, seen["a"].shape[-1])
    g = torch.einsum("ntdc,ntdmuo->cmuo", s, jz).reshape(V, -1, layer.out_features)
    g_expand = torch.einsum("cro,crq->oq", g, g)
    g_tok = torch.einsum("ntdc,ntdmuo->ntcmuo", s, jz)
    g_token = torch.einsum("ntcmuo,ntcmuq->oq", g_tok, g_tok)
    return a.T @ a, torch.tensor(a.shape[0]), g_expand, g_token


@pytest.mark.parametrize("pool", [False, True], ids=["tokens_BTV", "pooled_BC"])
def test_kron_factors_match_their_definition(pool):
    post, ref, x, _ = _fitted(pool, "kron")
    curv = post.laplace_curvature
    for lc in curv.layers:
        aa, rows, g_expand, g_token = (torch.zeros(()),) * 4
        for xb in (x[:3], x[3:]):
            parts = _kfac_reference(ref, xb, lc.name)
            aa, rows, g_expand, g_token = (
                u + v for u, v in zip((aa, rows, g_expand, g_token), parts, strict=True)
            )
        assert lc.structure == "kron" and rows == N * T
        torch.testing.assert_close(lc.A, aa / rows, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(lc.G, g_expand, rtol=1e-10, atol=1e-12)
        if lc.name.startswith("v_proj") or pool:
            # nothing mixes positions after v_proj (and a pooled output is one row):
            # the expand factor is the per-token sum
            torch.testing.assert_close(lc.G, g_token, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hessian", ["kron", "diag", "full"])
def test_posterior_mean_output_equals_the_map_lora_model_exactly(hessian):
    post, ref, x, _ = _fitted(False, hessian)
    with bl.posterior_mean(post), torch.no_grad():
        out = post(x)
    assert torch.equal(out, ref(x))
    mean, _ = bll.glm_predictive(post, x, "regression")
    torch.testing.assert_close(mean, ref(x), rtol=0, atol=1e-14)


def _dense_cov(lc, tau: float) -> Tensor:
    """``(G ⊗ A + τ I)⁻¹`` over the row-major weight ``(O, I)``."""
    prec = torch.kron(lc.G, lc.A) + tau * torch.eye(lc.G.shape[0] * lc.A.shape[0], dtype=DT)
    return torch.linalg.inv(prec)


def test_glm_predictive_on_tokens_is_each_positions_jacobian_covariance():
    tau = 0.7
    post, ref, x, _ = _fitted(False, "kron", prior_precision=tau)
    params = _weights(ref)
    jac = jacrev(lambda p: functional_call(ref, p, (x,)))(params)
    j = torch.cat([jac[k].reshape(N, T, V, -1) for k in params], -1)  # (N, T, V, P)
    sigma = torch.block_diag(*[_dense_cov(lc, tau) for lc in post.laplace_curvature.layers])
    expected = torch.einsum("ntcp,pq,ntdq->ntcd", j, sigma, j)
    mean, cov = bll.glm_predictive(post, x, "regression")
    assert mean.shape == (N, T, V) and cov.shape == (N, T, V, V)
    torch.testing.assert_close(cov, expected, rtol=1e-9, atol=1e-12)
    probs = bll.glm_predictive(post, x)
    kappa = (1 + math.pi / 8 * expected.diagonal(dim1=-2, dim2=-1)).rsqrt()
    torch.testing.assert_close(probs, torch.softmax(kappa * ref(x), -1), rtol=1e-9, atol=1e-12)


def test_sampled_predictive_moments_match_the_closed_form_kronecker_covariance():
    # one adapted layer f = W0 x + b + s B A x with independent Kronecker posteriors on A
    # and B: E f = W0 x + b + s μ_B μ_u and Cov f = s² (μ_B Σ_u μ_Bᵀ + Σ_kl Σ_B[(i,k),(j,l)]
    # M_kl), u = A x, M = Σ_u + μ_u μ_uᵀ; the linearised (GLM) covariance has M = μ_u μ_uᵀ
    torch.manual_seed(3)
    model = lora(
        nn.Sequential(nn.Linear(3, 4)).to(DT), target="0", rank=2, alpha=3.0, posterior="laplace"
    )
    with torch.no_grad():
        model[0].lora_B.weight.normal_(0.0, 0.7)
    xs = torch.randn(16, 3, dtype=DT)
    ys = torch.randint(0, 4, (16,))
    tau = 2.0
    post = bll.fit(model, [(xs, ys)], hessian="kron", subset="lora", prior_precision=tau)
    lc_a, lc_b = post.laplace_curvature.layers
    cov_a, cov_b = _dense_cov(lc_a, tau), _dense_cov(lc_b, tau)  # (2·3)², (4·2)²
    layer = post[0]
    mu_a, mu_b, s = layer.lora_A.point("weight"), layer.lora_B.point("weight"), layer.scaling
    xq = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]], dtype=DT)
    with torch.no_grad():
        base = layer.base(xq)
    mean, cov, glm = [], [], []
    for xv, bv in zip(xq, base, strict=True):
        mu_u = mu_a @ xv
        cov_u = torch.einsum("kilj,i,j->kl", cov_a.reshape(2, 3, 2, 3), xv, xv)
        cb = cov_b.reshape(4, 2, 4, 2)
        mean.append(bv + s * mu_b @ mu_u)
        m2 = cov_u + torch.outer(mu_u, mu_u)
        cov.append(s**2 * (mu_b @ cov_u @ mu_b.T + torch.einsum("ikjl,kl->ij", cb, m2)))
        glm.append(
            s**2
            * (mu_b @ cov_u @ mu_b.T + torch.einsum("ikjl,kl->ij", cb, torch.outer(mu_u, mu_u)))
        )
    mean_t, cov_t = torch.stack(mean), torch.stack(cov)
    # the GLM predictive is the linearised part of the same covariance, exactly
    _, glm_cov = bll.glm_predictive(post, xq, "regression")
    torch.testing.assert_close(glm_cov, torch.stack(glm), rtol=1e-10, atol=1e-12)

    k = 20000
    torch.manual_seed(4)
    samples = bl.predict(post, xq, k).samples.detach()  # (K, 2, 4)
    dev = samples - samples.mean(0)
    prods = dev[..., :, None] * dev[..., None, :]  # (K, 2, 4, 4)
    iu = torch.triu_indices(4, 4)
    checks = mean_t.numel() + 2 * iu.shape[1]
    z = z_bonferroni(checks)
    se_mean = (cov_t.diagonal(dim1=-2, dim2=-1) / k).sqrt()
    assert ((samples.mean(0) - mean_t).abs() <= z * se_mean).all()
    # sample covariance: the standard error from the products' own spread (4th moments)
    emp, se = prods.mean(0), prods.std(0) / math.sqrt(k)
    diff = (emp - cov_t)[:, iu[0], iu[1]]
    assert (diff.abs() <= z * se[:, iu[0], iu[1]]).all()
    # and the test has power: the linearised covariance alone is told apart
    gap = (torch.stack(cov) - torch.stack(glm)).diagonal(dim1=-2, dim2=-1)
    assert (gap > 5 * se.diagonal(dim1=-2, dim2=-1)).any()


def test_marginal_likelihood_over_the_adapters_and_its_optimum():
    post, ref, x, y = _fitted(False, "kron")
    curv = post.laplace_curvature
    theta = torch.cat([w.reshape(-1) for w in _weights(ref).values()])
    nll = torch.nn.functional.cross_entropy(ref(x).reshape(-1, V), y.reshape(-1), reduction="sum")
    h = torch.block_diag(*[torch.kron(lc.G, lc.A) for lc in curv.layers])

    def dense_lml(tau: float) -> Tensor:
        p = theta.numel()
        logdet = torch.linalg.slogdet(h + tau * torch.eye(p, dtype=DT))[1]
        return -nll - 0.5 * (logdet - p * math.log(tau) + tau * theta.square().sum())

    for tau in (0.3, 2.0):
        torch.testing.assert_close(
            bll.log_marginal_likelihood(post, tau), dense_lml(tau), rtol=1e-9, atol=1e-9
        )
    best = float(bll.optimize_prior_precision(post, n_steps=400, lr=0.05))
    assert dense_lml(best) >= max(dense_lml(best * 1.2), dense_lml(best / 1.2))
    assert float(post.laplace_curvature.prior_precision) == best
    # the posterior written with it: the adapters' scales are those of (G ⊗ A + τ* I)⁻¹
    for lc in curv.layers:
        std = _dense_cov(lc, best).diagonal().sqrt().reshape(lc.G.shape[0], -1)
        torch.testing.assert_close(
            post.get_submodule(lc.name).posterior("weight").stddev, std, rtol=1e-8, atol=1e-12
        )


def test_bad_subset_likelihood_and_targets_name_what_is_wrong():
    x, y, loader = _data(False)
    with pytest.raises(ValueError, match=r"subset.*'lora'.*'loras'"):
        bll.fit(_adapted(), loader, subset="loras")
    with pytest.raises(ValueError, match=r"likelihood.*'poisson'"):
        bll.fit(_adapted(), loader, likelihood="poisson", subset="lora")
    with pytest.raises(ValueError, match=r"subset='lora'.*LoRA adapters.*TinyLM"):
        bll.fit(TinyLM().to(DT), loader, subset="lora")
    with pytest.raises(ValueError, match=r"classification targets of shape \(3, 3\).*got \(3, 4\)"):
        bll.fit(_adapted(), [(x[:3], torch.zeros(3, 4, dtype=torch.long))], subset="lora")
    with pytest.raises(ValueError, match=r"classification targets.*got \(3, 3\) \(torch.float64\)"):
        bll.fit(_adapted(), [(x[:3], torch.zeros(3, 3, dtype=DT))], subset="lora")
    with pytest.raises(ValueError, match=r"regression targets of the output's shape \(3, 3, 5\)"):
        bll.fit(_adapted(), [(x[:3], torch.zeros(3, 3, dtype=DT))], "regression", subset="lora")
    rank1 = lora(TinyLM().to(DT), target="q_proj", rank=2, posterior="rank1", ensemble_size=2)
    with pytest.raises(ValueError, match=r"'q_proj.lora_A'.*nn.Linear.*LinearRank1"):
        bll.fit(rank1, loader, subset="lora")
    flip = lora(TinyLM().to(DT), target="q_proj", rank=2, posterior="flipout")
    with pytest.raises(ValueError, match=r"hessian='kron'.*reparameterization.*'q_proj.lora_A'"):
        bll.fit(flip, loader, hessian="kron", subset="lora")
    with pytest.raises(ValueError, match=r"\(B, C\) or \(B, \.\.\., C\).*got \(15,\)"):
        bll.fit(nn.Sequential(_adapted(True), nn.Flatten(0)), [(x[:3], y[:3, 0])], subset="lora")


class _Logits(nn.Module):
    """A Hugging Face causal LM as ``ids (B, T) -> logits (B, T, V)``."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: Tensor) -> Tensor:
        return self.lm(input_ids=ids).logits


def test_hf_gpt2_token_level_laplace_lora_is_the_exact_ggn_and_keeps_the_map_mean():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    cfg = transformers.GPT2Config(
        vocab_size=7, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    lm = transformers.GPT2LMHeadModel(cfg).to(DT).eval()  # dropout off, as from_pretrained
    bl.lora(lm, target="c_attn", rank=2, posterior="laplace")
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if ".lora_B" in name:
                p.normal_(0.0, 0.3)
    model = _Logits(lm)  # a wrapper in training mode around the eval-mode model
    ids = torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(6))
    y = torch.cat([ids[:, 1:], torch.full((4, 1), -100)], 1)  # next token; the last ignored
    names = ("lm.transformer.h.0.attn.c_attn.lora_A", "lm.transformer.h.0.attn.c_attn.lora_B")
    ref = copy.deepcopy(model)
    h = _reference_ggn(ref, ids, y, names)
    post = bll.fit(copy.deepcopy(model), [(ids[:2], y[:2]), (ids[2:], y[2:])], subset="lora")
    curv = post.laplace_curvature
    assert tuple(lc.name for lc in curv.layers) == names
    diag = torch.cat([lc.diag["weight"].reshape(-1) for lc in curv.layers])
    torch.testing.assert_close(diag, h.diagonal(), rtol=1e-9, atol=1e-12)
    post = bll.fit(model, [(ids, y)], hessian="kron", subset="lora")
    assert post.training and not post.lm.training  # each module's own mode restored
    with bl.posterior_mean(post), torch.no_grad():
        assert torch.equal(post(ids), ref(ids))
    assert bl.predict(post, ids, 3).samples.shape == (3, 4, 5, 7)
    probs = bll.glm_predictive(post, ids)  # through jacrev (its fallback warnings silenced)
    assert probs.shape == (4, 5, 7) and torch.allclose(probs.sum(-1), torch.ones(4, 5, dtype=DT))


def test_state_dict_round_trip_restores_the_adapter_posterior_and_merging_gives_its_mean():
    post, ref, x, _ = _fitted(False, "kron", prior_precision=0.5)
    buf = io.BytesIO()
    torch.save(post.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    again = bll.restore(_adapted(), state)
    assert tuple(n for n, m in again.named_modules() if isinstance(m, BayesianLayer)) == FACTORS
    with bl.posterior_mean(again), torch.no_grad():
        assert torch.equal(again(x), ref(x))
    torch.manual_seed(7)
    draws = bl.predict(post, x, 3).samples
    torch.manual_seed(7)
    assert torch.equal(bl.predict(again, x, 3).samples, draws)
    # merging (on a model that has not drawn yet) gives the posterior-mean model
    merged = bl.merge_lora(bll.restore(_adapted(), state))
    assert not any(isinstance(m, BayesianLayer) for m in merged.modules())
    torch.testing.assert_close(merged(x), ref(x), rtol=1e-12, atol=1e-12)


def test_monte_carlo_curvature_is_unbiased_for_the_per_token_ggn():
    # K = mc_samples sampled labels per token, one backward pass each from every token at
    # once: E[diag] is the exact diagonal and E[G] the per-token KFAC factor (the
    # cross-token products of the expand columns vanish in expectation); A is exact
    model = _adapted()
    x, y, loader = _data(False)
    exact_diag = _reference_ggn(model, x, y).diagonal()
    refs = {}
    for name in FACTORS:
        parts = [_kfac_reference(model, xb, name) for xb in (x[:3], x[3:])]
        refs[name] = [sum(p[i] for p in parts) for i in range(4)]
    torch.manual_seed(8)
    r, k = 40, 8  # r independent estimates, each the mean of k sampled labels per token
    diags, gs = [], []
    for _ in range(r):
        curv = compute_curvature(model, loader, hessian="diag", subset="lora", mc_samples=k)
        diags.append(torch.cat([lc.diag["weight"].reshape(-1) for lc in curv.layers]))
        curv = compute_curvature(model, loader, hessian="kron", subset="lora", mc_samples=k)
        gs.append(torch.cat([lc.G.reshape(-1) for lc in curv.layers]))
        for lc in curv.layers:
            aa, rows, _, _ = refs[lc.name]
            torch.testing.assert_close(lc.A, aa / rows, rtol=1e-10, atol=1e-12)
    g_token = torch.cat([refs[n][3].reshape(-1) for n in FACTORS])
    g_expand = torch.cat([refs[n][2].reshape(-1) for n in FACTORS])
    # the standard error is estimated from r = 40 estimates: the Student t quantile with
    # 39 degrees of freedom at the Bonferroni level of these 72 checks (4.97) is below
    # 1.2 z (5.21)
    z = 1.2 * z_bonferroni(exact_diag.numel() + g_token.numel())
    for est, exact in ((torch.stack(diags), exact_diag), (torch.stack(gs), g_token)):
        se = est.std(0) / math.sqrt(r)
        assert ((est.mean(0) - exact).abs() <= z * se + 1e-12).all()
    se = torch.stack(gs).std(0) / math.sqrt(r)  # power: the expand factor is told apart
    assert ((torch.stack(gs).mean(0) - g_expand).abs() > 5 * se).any()
    with pytest.raises(ValueError, match=r"`mc_samples` an int >= 0.*-1"):
        bll.fit(model, loader, subset="lora", mc_samples=-1)
    assert not any(isinstance(m, BayesianLayer) for m in model.modules())  # checked first
