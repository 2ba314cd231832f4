"""Bayesian LoRA adapters (issue 21): ``bl.lora``, ``LoRALinear``, state dict, merging."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

import bayesian_layers as bl
from bayesian_layers.adapters import LoRALinear, adapters

BAYESIAN = ("flipout", "reparameterization", "local_reparameterization")


def _net(seed: int = 0) -> nn.Module:
    """A small attention + feed-forward model with named projections."""
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.q_proj, self.v_proj = nn.Linear(8, 8), nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.norm(self.q_proj(x) + self.v_proj(x))
            h = h + self.attn(h, h, h, need_weights=False)[0]
            return self.head(h).mean(1)

    return Net()


def _randomize_b(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, a in adapters(model):
            a.lora_B.weight.copy_(torch.randn(a.lora_B.weight.shape, generator=g))


def _copy_means(src: nn.Module, dst: nn.Module) -> None:
    """Make ``dst``'s (plain) adapter factors the posterior means of ``src``'s."""
    with torch.no_grad():
        for (_, a), (_, b) in zip(adapters(src), adapters(dst), strict=True):
            b.lora_A.weight.copy_(a.mean_down())
            b.lora_B.weight.copy_(a.lora_B.weight)


@pytest.mark.parametrize("posterior", BAYESIAN)
def test_posterior_mean_equals_plain_lora_exactly(posterior: str) -> None:
    targets = ["q_proj", "v_proj", "attn.out_proj", "head"]
    bayes = bl.lora(_net(), target=targets, rank=4, posterior=posterior)
    plain = bl.lora(_net(), target=targets, rank=4, posterior=None)
    _randomize_b(bayes)
    _copy_means(bayes, plain)
    x = torch.randn(5, 6, 8)
    with bl.posterior_mean(bayes):
        assert torch.equal(bayes(x), plain(x))
    assert not torch.equal(bayes(x), plain(x))  # sampling does change it


def test_starts_as_base_model_and_freezes_base() -> None:
    base = _net()
    x = torch.randn(4, 6, 8)
    ref = base(x)
    model = bl.lora(copy.deepcopy(base), target=["q_proj", "v_proj", "out_proj"], rank=2)
    torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-6)  # B = 0: the base model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(bl.losses(model)) == 3  # one KL per random A


@pytest.mark.parametrize("posterior", [*BAYESIAN, "rank1", None])
def test_training_leaves_base_unchanged(posterior: str | None) -> None:
    model = bl.lora(_net(), target=["q_proj", "v_proj", "out_proj"], rank=2, posterior=posterior)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(8, 6, 8), torch.randint(0, 3, (8,))
    for _ in range(3):
        opt.zero_grad()
        kl = sum(bl.losses(model), torch.tensor(0.0))
        loss = nn.functional.cross_entropy(model(x), y) + kl / 100
        loss.backward()
        opt.step()
    for n, p in model.named_parameters():
        if ".lora_A." in n or ".lora_B." in n:
            assert not torch.equal(p, before[n]), n  # adapters learn
        else:
            assert p.grad is None and torch.equal(p, before[n]), n


def test_kl_is_the_closed_form() -> None:
    layer = LoRALinear(nn.Linear(6, 3), rank=2, posterior="flipout", prior_std=0.5, init_std=0.1)
    a = layer.lora_A
    mu, sigma = a.point("weight"), a.posterior_loc_scale("weight")[1]
    expected = (torch.log(0.5 / sigma) + (sigma**2 + mu**2) / (2 * 0.25) - 0.5).sum()
    torch.testing.assert_close(sum(bl.losses(layer)), expected)


def test_predictive_moments_match_closed_form() -> None:
    """y = base(x) + s B A x with A ~ N(μ, σ²): mean base(x) + s B μ x and variance
    s² Σ_r B_or² Σ_i x_i² σ_ri² per output (reparameterization: whole draws)."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(5, 2), rank=3, alpha=6.0, posterior="reparameterization",
                       init_std=0.3).double()  # fmt: skip
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(4, 5, dtype=torch.float64)
    k = 4000
    samples = bl.predict(layer, x, num_samples=k).samples  # (K, 4, 2)
    mu, sigma = layer.mean_down(), layer.lora_A.posterior_loc_scale("weight")[1]
    b, s = layer.lora_B.weight.detach(), layer.scaling
    mean = layer.base(x) + s * x @ mu.T @ b.T
    var = s**2 * (x.square() @ sigma.square().T) @ b.square().T  # (4, 2)
    se = (var / k).sqrt()
    assert ((samples.mean(0) - mean).abs() < 5 * se).all()
    # the sample variance's standard error for a normal: var * sqrt(2 / (K - 1))
    assert ((samples.var(0) - var).abs() < 5 * var * math.sqrt(2 / (k - 1))).all()


def test_gradcheck_float64() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(4, 3), rank=2, posterior="flipout").double()
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    b = layer.lora_B.weight.detach().clone().requires_grad_()
    with bl.frozen_sample(layer):  # one A for every call of gradcheck
        assert torch.autograd.gradcheck(lambda x, b: _with_b(layer, x, b), (x, b))


def _with_b(layer: LoRALinear, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    update = nn.functional.linear(layer.lora_A(x), b)
    return layer.base(x) + layer.scaling * update


def test_state_dict_round_trip_weights_only() -> None:
    model = bl.lora(_net(), target=["q_proj", "v_proj", "out_proj"], rank=2)
    _randomize_b(model)
    sd = bl.lora_state_dict(model)
    assert all(".lora_A." in k or ".lora_B." in k for k in sd)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    fresh = bl.lora(_net(), target=["q_proj", "v_proj", "out_proj"], rank=2)
    bl.load_lora_state_dict(fresh, loaded)
    x = torch.randn(3, 6, 8)
    with bl.posterior_mean(model), bl.posterior_mean(fresh):
        assert torch.equal(model(x), fresh(x))
    with pytest.raises(KeyError, match="missing adapter keys"):
        bl.load_lora_state_dict(fresh, {k: v for k, v in loaded.items() if "q_proj" not in k})


@pytest.mark.parametrize("posterior", ["flipout", None])
def test_merge_equals_posterior_mean(posterior: str | None) -> None:
    model = bl.lora(_net(), target=["q_proj", "attn.out_proj", "head"], rank=2,
                    posterior=posterior)  # fmt: skip
    _randomize_b(model)
    x = torch.randn(3, 6, 8)
    with bl.posterior_mean(model):
        ref = model(x)
    merged = bl.merge_lora(model)
    assert not adapters(merged) and type(merged.attn) is nn.MultiheadAttention
    torch.testing.assert_close(merged(x), ref, rtol=1e-5, atol=1e-5)


def test_attention_out_proj_adapter_is_called() -> None:
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 5, 8)
    ref, ref_w = mha(x, x, x)
    model = bl.lora(nn.ModuleDict({"attn": mha}), target="out_proj", rank=2)
    out, w = model["attn"](x, x, x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(w, ref_w)
    _randomize_b(model)
    assert (model["attn"](x, x, x)[0] - ref).abs().max() > 1e-2  # the adapter now counts


def test_bad_arguments_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="target 'nothing' matches no module"):
        bl.lora(_net(), target="nothing")
    with pytest.raises(ValueError, match="target 'norm' matches only LayerNorm"):
        bl.lora(_net(), target="norm")
    with pytest.raises(ValueError, match="posterior must be one of"):
        bl.lora(_net(), target="q_proj", posterior="mcmc")
    with pytest.raises(ValueError, match="LoRALinear expected `rank` >= 1, got 0"):
        bl.lora(_net(), target="q_proj", rank=0)
    with pytest.raises(ValueError, match="LoRALinear expected `dropout` < 1, got 1.5"):
        LoRALinear(nn.Linear(2, 2), dropout=1.5)
    with pytest.raises(TypeError, match="base must be nn.Linear"):
        LoRALinear(nn.Conv2d(2, 2, 1))
    with pytest.raises(TypeError, match="target must be a str"):
        bl.lora(_net(), target=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target must name at least one layer"):
        bl.lora(_net(), target=None)


def test_rank1_adapter_predicts_and_refuses_merge() -> None:
    model = bl.lora(_net(), target=["q_proj"], rank=2, posterior="rank1", ensemble_size=2)
    out = bl.predict(model, torch.randn(3, 6, 8), num_samples=2).samples
    assert out.shape == (2, 3, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="rank-1 adapter"):
        bl.merge_lora(model)
    # a refusal leaves the model as it was: no adapter merged before the rank-1 one
    mixed = bl.lora(_net(), target=["q_proj"], rank=2, posterior="flipout")
    bl.lora(mixed, target=["v_proj"], rank=2, posterior="rank1", ensemble_size=2)
    before = {k: v.clone() for k, v in mixed.state_dict().items()}
    with pytest.raises(ValueError, match="rank-1 adapter"):
        bl.merge_lora(mixed)
    assert len(adapters(mixed)) == 2
    assert all(torch.equal(v, before[k]) for k, v in mixed.state_dict().items())


def test_shared_module_gets_one_adapter() -> None:
    lin = nn.Linear(4, 4)
    model = bl.lora(nn.Sequential(lin, nn.ReLU(), lin), target=["0", "2"], rank=2)
    assert model[0] is model[2] and isinstance(model[0], LoRALinear)


def test_adapters_in_a_torch_transformer_encoder_run_in_eval_mode() -> None:
    """torch's ``nn.TransformerEncoderLayer`` (and ``nn.TransformerEncoder`` with a padding
    mask) runs one fused op on its layers' ``weight``s in eval mode: adapters there must
    switch it off, or they are skipped (the base model's output, no epistemic variance).
    Eval mode then equals the module path (train mode without dropout); merging gives
    the fused op back with the merged weights."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    bl.lora(model, target=["self_attn.out_proj", "linear1"], rank=2, init_std=0.5)
    for _, adapter in adapters(model):
        nn.init.normal_(adapter.lora_B.weight)
    x = torch.randn(3, 5, 16)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, -2:] = True
    kept = ~mask[..., None]
    with bl.posterior_mean(model):
        expected = [model.train()(x, src_key_padding_mask=m) for m in (mask, None)]
        with torch.no_grad():
            got = [model.eval()(x, src_key_padding_mask=m) for m in (mask, None)]
    torch.testing.assert_close(got[0] * kept, expected[0] * kept, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)
    assert bl.predict(model, x, 8).variance.mean() > 1e-3
    bl.merge_lora(model)
    assert model.layers[0].activation_relu_or_gelu == 1  # the fused op is back
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected[1], rtol=1e-4, atol=1e-4)


def test_merge_of_an_output_layer_tied_to_the_embedding_leaves_the_embedding() -> None:
    """An output layer whose weight is the embedding's (a tied language-model head): the
    merged update goes to the output layer alone, so the merged model is the posterior
    mean's (adding it in place to the tied tensor changed the embedding too)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 6), nn.Tanh(), nn.Linear(6, 10, bias=False))
    model[2].weight = model[0].weight
    embedding = model[0].weight.detach().clone()
    bl.lora(model, target="2", rank=2)
    nn.init.normal_(model[2].lora_B.weight)
    tokens = torch.randint(0, 10, (3, 4))
    with bl.posterior_mean(model):
        expected = model(tokens)
    bl.merge_lora(model)
    assert torch.equal(model[0].weight, embedding)
    torch.testing.assert_close(model(tokens), expected, rtol=1e-5, atol=1e-6)


def test_adapters_take_the_mode_of_the_layer_they_wrap() -> None:
    """A model put in eval mode before ``lora`` gets adapters in eval mode (their dropout
    off: posterior-mean calls repeat, and equal the merged model); ``model.train()`` turns
    the dropout on."""
    model = _net().eval()
    bl.lora(model, target=["q_proj", "v_proj"], rank=2, posterior=None, dropout=0.5)
    _randomize_b(model)
    x = torch.randn(16, 5, 8)
    assert all(not a.training for _, a in adapters(model))
    with bl.posterior_mean(model):
        first, second = model(x), model(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(x), model(x))  # dropout on 16 x 5 x 8 inputs: never equal


def test_a_model_that_is_not_a_module_is_a_type_error() -> None:
    def model(x: torch.Tensor) -> torch.Tensor:
        return x

    for call in (
        lambda: bl.lora(model, target="0"),  # type: ignore[arg-type]
        lambda: bl.merge_lora(model),  # type: ignore[arg-type]
        lambda: bl.lora_state_dict(model),  # type: ignore[arg-type]
        lambda: bl.predict(model, torch.randn(2, 3)),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError, match="expected `model` an nn.Module, got function"):
            call()


def test_merge_of_a_shared_adapter_replaces_it_everywhere_once() -> None:
    """A layer used twice gets one adapter; merging adds its update to the shared base
    weight once and puts the base back at both places (the second place kept the adapter
    over the merged weight: the update counted twice there)."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    model = bl.lora(nn.Sequential(lin, nn.ReLU(), lin), target=["0", "2"], rank=2)
    nn.init.normal_(model[0].lora_B.weight)
    x = torch.randn(3, 4)
    with bl.posterior_mean(model):
        expected = model(x)
    bl.merge_lora(model)
    assert model[0] is lin and model[2] is lin
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_merge_after_draws_uses_the_posterior_means() -> None:
    """A Laplace fit makes B random too: merging after a draw uses E[B] E[A]."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(5, 3), rank=2, posterior="flipout")
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    layer.lora_B = bl.layers.LinearReparameterization.from_torch(layer.lora_B)
    x = torch.randn(4, 5)
    bl.predict(layer, x, num_samples=3)  # draws of A and B
    with bl.posterior_mean(layer):
        expected = layer(x)
    torch.testing.assert_close(layer.merged()(x), expected, rtol=1e-5, atol=1e-6)


def test_default_posterior_scale_is_half_of_lorases_start() -> None:
    layer = LoRALinear(nn.Linear(64, 3), rank=2, posterior="flipout")
    sigma = layer.lora_A.posterior_loc_scale("weight")[1]
    torch.testing.assert_close(sigma, torch.full_like(sigma, 0.5 / 8))
    with pytest.raises(
        ValueError, match="LoRALinear expected `init_std` to be a finite number > 0, got -1"
    ):
        LoRALinear(nn.Linear(4, 3), init_std=-1)
