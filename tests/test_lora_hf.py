"""Bayesian LoRA on Hugging Face models (issue 21, deliverable 2): GPT-2 (``Conv1D``),
Llama and BERT built offline from tiny configs, and ``peft`` LoRA models converted by
``bl.lora`` and ``bl.to_bayesian``.

Equalities are exact (``torch.equal``) where both sides run the same kernels on the
same values in the same order: at the posterior mean a Bayesian ``A`` computes
``F.linear(x, μ)`` as plain LoRA's ``nn.Linear`` does with weight ``μ``, and the
converted ``peft`` adapter keeps ``peft``'s base layer, ``B`` and scaling and
multiplies in the same order. Merging changes the arithmetic (``(W + sBA) x`` instead
of ``W x + s B (A x)``), so that check runs in float64 with a tolerance of 1e-10 on
logits of order 1 (rounding is about 1e-16 per operation times a few hundred
operations through two blocks).
"""

from __future__ import annotations

import copy
import importlib.util
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")

import bayesian_layers as bl  # noqa: E402
from bayesian_layers.adapters import (  # noqa: E402
    LoRALinear,
    adapters,
    load_lora_state_dict,
    lora,
    lora_state_dict,
    merge_lora,
)
from bayesian_layers.layers import LinearFlipout  # noqa: E402

# peft 0.21 asks transformers 5 for a renamed property (is_gradient_checkpointing).
FILTER = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
pytestmark = pytest.mark.filterwarnings(FILTER)

VOCAB, SEQ, BATCH = 64, 8, 2


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def _llama() -> nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(cfg)


#: name -> (builder, attention projections to adapt, labels for the model's loss)
MODELS: dict[str, tuple[Callable[[], nn.Module], list[str], str]] = {
    "gpt2": (_gpt2, ["c_attn"], "lm"),
    "llama": (_llama, ["q_proj", "v_proj"], "lm"),
    "bert": (_bert, ["query", "value"], "class"),
}


def _build(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[kind][0]().eval()


def _batch(kind: str, seed: int = 2) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=g)
    if MODELS[kind][2] == "lm":
        return {"input_ids": ids, "labels": ids}
    return {"input_ids": ids, "labels": torch.randint(0, 3, (BATCH,), generator=g)}


def _logits(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(input_ids=batch["input_ids"]).logits


def _adapted(kind: str, posterior: str | None, seed: int = 0, **kw: Any) -> nn.Module:
    return lora(
        _build(kind, seed), target=MODELS[kind][1], rank=4, alpha=8.0, posterior=posterior, **kw
    )


def _randomize_b(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, a in adapters(model):
            w = a.lora_B.weight
            w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype))


@pytest.mark.parametrize("kind", list(MODELS))
def test_targets_found_on_hf_models(kind: str) -> None:
    model = _adapted(kind, "flipout")
    names = [n for n, _ in adapters(model)]
    per_layer = 1 if kind == "gpt2" else 2
    assert len(names) == 2 * per_layer
    assert all(n.rsplit(".", 1)[-1] in MODELS[kind][1] for n in names)
    assert all(isinstance(a.lora_A, LinearFlipout) for _, a in adapters(model))
    assert len(bl.losses(model)) == len(names)  # one KL per Bayesian A


@pytest.mark.parametrize("kind", list(MODELS))
def test_posterior_mean_equals_plain_lora_exactly(kind: str) -> None:
    bayes, plain = _adapted(kind, "flipout"), _adapted(kind, None, seed=0)
    _randomize_b(bayes)
    with torch.no_grad():
        for (_, a), (_, b) in zip(adapters(bayes), adapters(plain), strict=True):
            b.lora_A.weight.copy_(a.mean_down())
            b.lora_B.weight.copy_(a.lora_B.weight)
    batch = _batch(kind)
    with torch.no_grad():
        want = _logits(plain, batch)
        with bl.posterior_mean(bayes):
            got = _logits(bayes, batch)
        sampled = _logits(bayes, batch)
        base = _logits(_build(kind), batch)
    assert torch.equal(got, want)
    assert not torch.equal(want, base)  # the adapters change the function
    assert not torch.equal(sampled, want)  # outside posterior_mean, A is sampled


@pytest.mark.parametrize("kind", list(MODELS))
def test_one_step_trains_adapters_only(kind: str) -> None:
    model = _adapted(kind, "flipout").train()
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert base and trained
    assert all(".lora_A." in n or ".lora_B." in n for n in trained)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    n_train = 100
    out = model(**_batch(kind))
    loss = out.loss + sum(bl.losses(model)) / n_train
    opt.zero_grad()
    loss.backward()
    opt.step()
    params = dict(model.named_parameters())
    for n, before in base.items():
        assert params[n].grad is None, n
        assert torch.equal(params[n], before), n
    for n, before in trained.items():
        assert params[n].grad is not None and torch.isfinite(params[n].grad).all(), n
        assert not torch.equal(params[n], before), n


@pytest.mark.parametrize("kind", list(MODELS))
def test_lora_state_dict_round_trips(kind: str) -> None:
    model = _adapted(kind, "flipout")
    _randomize_b(model)
    state = lora_state_dict(model)
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = _adapted(kind, "flipout", init_std=0.5)  # same base, other adapter start
    batch = _batch(kind)
    with torch.no_grad(), bl.posterior_mean(model), bl.posterior_mean(fresh):
        want = _logits(model, batch)
        assert not torch.equal(_logits(fresh, batch), want)
        load_lora_state_dict(fresh, loaded)
        assert torch.equal(_logits(fresh, batch), want)
    for k, v in lora_state_dict(fresh).items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_merge_lora_matches_unmerged_posterior_mean(kind: str) -> None:
    model = _adapted(kind, "flipout").double()
    _randomize_b(model)
    batch = _batch(kind)
    with torch.no_grad():
        with bl.posterior_mean(model):
            want = _logits(model, batch)
        merged = merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        got = _logits(merged, batch)
        base = _logits(_build(kind).double(), batch)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert (want - base).abs().max() > 1e-3  # the merged update is not negligible


# ------------------------------------------------------------------ peft models
peft_mark = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft")


def _peft_model(kind: str, **config: Any) -> nn.Module:
    import peft

    options: dict[str, Any] = dict(
        r=4, lora_alpha=8, target_modules=MODELS[kind][1], init_lora_weights=False
    )
    if kind == "gpt2":
        options["fan_in_fan_out"] = True  # Conv1D stores its weight as (in, out)
    options.update(config)
    torch.manual_seed(3)
    return peft.get_peft_model(_build(kind), peft.LoraConfig(**options)).eval()


def _peft_factors(model: nn.Module) -> dict[str, tuple[Tensor, Tensor, float]]:
    """Qualified name (peft's) -> (A, B, scaling) of every peft LoRA layer."""
    from bayesian_layers.adapters._peft import peft_layers

    out = {}
    for n, m in peft_layers(model):
        mm: Any = m
        out[n] = (mm.lora_A["default"].weight, mm.lora_B["default"].weight, mm.scaling["default"])
    return out


def _convert(how: str, model: nn.Module, posterior: str = "flipout") -> nn.Module:
    if how == "lora":
        return lora(model, target=None, posterior=posterior)
    return bl.to_bayesian(model, posterior)


@peft_mark
@pytest.mark.parametrize("how", ["lora", "to_bayesian"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_peft_model_converts_to_same_posterior_mean(kind: str, how: str) -> None:
    peft_model = _peft_model(kind)
    factors = _peft_factors(peft_model)
    assert all(b.abs().sum() > 0 for _, b, _ in factors.values())  # init_lora_weights=False
    batch = _batch(kind)
    with torch.no_grad():
        want = _logits(peft_model, batch)
        base = _logits(_build(kind), batch)
    assert not torch.equal(want, base)
    model = _convert(how, copy.deepcopy(peft_model))
    made = dict(adapters(model))
    assert set(made) == set(factors)
    for n, (a, b, s) in factors.items():
        assert isinstance(made[n].lora_A, LinearFlipout)
        assert torch.equal(made[n].mean_down(), a) and torch.equal(made[n].lora_B.weight, b)
        assert made[n].scaling == s
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{n}.{k}"
        for n, a in made.items()
        for k in ("lora_A.weight_loc", "lora_A.weight_rho", "lora_B.weight")
    }
    with torch.no_grad():
        with bl.posterior_mean(model):
            got = _logits(model, batch)
        sampled = _logits(model, batch)
    assert torch.equal(got, want)
    assert not torch.equal(sampled, want)
    assert len(bl.losses(model)) == len(factors)


@peft_mark
@pytest.mark.parametrize("posterior", ["reparameterization", "local_reparameterization", None])
def test_peft_conversion_other_posteriors_rslora_and_dropout(posterior: str | None) -> None:
    peft_model = _peft_model("llama", use_rslora=True, lora_dropout=0.25, lora_alpha=6)
    batch = _batch("llama")
    with torch.no_grad():
        want = _logits(peft_model, batch)
        model = lora(copy.deepcopy(peft_model), target=None, posterior=posterior)
        with bl.posterior_mean(model):
            got = _logits(model, batch)
    assert torch.equal(got, want)
    for _, a in adapters(model):
        assert a.scaling == 6 / 2.0  # rsLoRA: alpha / sqrt(r)
        assert isinstance(a.lora_dropout, nn.Dropout) and a.lora_dropout.p == 0.25


@peft_mark
def test_peft_target_selects_and_report_names_adapters() -> None:
    peft_model = _peft_model("llama")
    model = lora(copy.deepcopy(peft_model), target="v_proj", posterior="flipout")
    assert [n.rsplit(".", 1)[-1] for n, _ in adapters(model)] == ["v_proj", "v_proj"]
    with pytest.raises(ValueError, match="'k_proj' names no peft LoRA layer"):
        lora(copy.deepcopy(peft_model), target="k_proj")
    model, report = bl.to_bayesian(
        copy.deepcopy(peft_model), "reparameterization", exclude="q_proj", return_report=True
    )
    assert [(s.name.rsplit(".", 1)[-1], s.target, s.estimator) for s in report.swapped] == [
        ("v_proj", "LinearReparameterization", "reparameterization")
    ] * 2


@peft_mark
def test_peft_conversion_refuses_what_it_cannot_keep() -> None:
    import peft

    with pytest.raises(ValueError, match="estimator in"):
        bl.to_bayesian(_peft_model("llama"), "variational_dropout")
    with pytest.raises(ValueError, match="pretrained_scale"):
        bl.to_bayesian(_peft_model("llama"), "flipout", pretrained_scale=0.1)
    two = _peft_model("llama")
    two.add_adapter("other", peft.LoraConfig(r=2, target_modules=["v_proj"]))
    with pytest.raises(ValueError, match="holds adapters"):
        lora(two, target=None)
    assert not adapters(two)  # the q_proj layers before the refusal were not swapped
    dora = _peft_model("llama", use_dora=True)
    with pytest.raises(ValueError, match="LoRA variant"):
        lora(dora, target=None)
    merged = _peft_model("llama")
    merged.merge_adapter()
    with pytest.raises(ValueError, match="is merged"):
        lora(merged, target=None)
    embedding = _peft_model("gpt2", target_modules=["wte"], fan_in_fan_out=False)
    with pytest.raises(TypeError, match="only peft's lora.Linear"):
        lora(embedding, target=None)


class _Logits(nn.Module):
    """``bl.predict`` takes a model returning a tensor: a transformers model's logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).logits


@pytest.mark.parametrize("kind", list(MODELS))
def test_predict_draws_functions_of_hf_models(kind: str) -> None:
    model = _adapted(kind, "flipout", init_std=0.05)
    _randomize_b(model)
    net, ids = _Logits(model), _batch(kind)["input_ids"]
    with torch.no_grad():
        with bl.posterior_mean(model):
            mean = net(ids)
            at_mean = bl.predict(net, ids, num_samples=3).samples
        samples = bl.predict(net, ids, num_samples=4).samples  # one call, K folded in the batch
    assert samples.shape == (4, *mean.shape) and torch.isfinite(samples).all()
    assert all(not torch.equal(samples[0], s) for s in samples[1:])
    # K samples at the posterior mean are the one mean function; the folded batch of K * B
    # rows may take other kernels than B rows: float32 rounding only
    torch.testing.assert_close(at_mean, mean.expand_as(at_mean), rtol=0, atol=1e-6)


@peft_mark
def test_from_pretrained_path_gpt2_and_peft_adapter(tmp_path: Any, monkeypatch: Any) -> None:
    """The user's path: a base model and a peft adapter read from disk (offline)."""
    import peft

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _build("gpt2").save_pretrained(tmp_path / "base")
    _peft_model("gpt2").save_pretrained(tmp_path / "adapter")
    base = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    batch = _batch("gpt2")
    with torch.no_grad():
        want = _logits(loaded, batch)
        assert torch.equal(want, _logits(_peft_model("gpt2"), batch))
        model = lora(loaded, target=None, posterior="flipout")
        with bl.posterior_mean(model):
            assert torch.equal(_logits(model, batch), want)


def test_to_bayesian_on_adapted_model_converts_only_plain_adapters() -> None:
    plain = _adapted("llama", None)
    _randomize_b(plain)
    batch = _batch("llama")
    with torch.no_grad():
        want = _logits(plain, batch)
    model, report = bl.to_bayesian(copy.deepcopy(plain), "flipout", return_report=True)
    assert [s.target for s in report.swapped] == ["LinearFlipout"] * 4 and not report.skipped
    assert all(isinstance(a.lora_A, LinearFlipout) for _, a in adapters(model))
    bayesian = {n for n, m in model.named_modules() if isinstance(m, bl.layers.BayesianLayer)}
    assert bayesian == {f"{n}.lora_A" for n, _ in adapters(model)}  # the base stays as it was
    with torch.no_grad(), bl.posterior_mean(model):
        assert torch.equal(_logits(model, batch), want)
    # converting twice changes nothing
    again, report = bl.to_bayesian(model, "reparameterization", return_report=True)
    assert not report.swapped and {s.reason for s in report.skipped} == {"already Bayesian"}
    again, report = bl.to_bayesian(model, "flipout", include="v_proj", return_report=True)
    assert not report.swapped and len(report.skipped) == 2
    with pytest.raises(ValueError, match="'k_proj' names no peft LoRA layer or LoRALinear"):
        bl.to_bayesian(model, "flipout", include="k_proj")
    assert all(isinstance(a.lora_A, LinearFlipout) for _, a in adapters(again))


@peft_mark
def test_to_bayesian_twice_on_peft_model_changes_nothing() -> None:
    model = bl.to_bayesian(_peft_model("gpt2"), "flipout")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model, report = bl.to_bayesian(model, "flipout", return_report=True)
    assert not report.swapped and len(report.skipped) == 2
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
