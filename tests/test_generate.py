"""``bl.generate``: tokens from the token-level posterior predictive, with each step's
uncertainty decomposed (issue 21, deliverable 4).

References are computed apart from the function: the mixture of the K samples' softmax
is formed here from ``bl.predict``'s samples (the path without a cache) or from one
full forward of the finished sequence under the same K frozen function samples (the
cached path: the key-value caches must give the logits that the whole sequence gives).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers.initializers import TrainableNormal
from bayesian_layers.layers import LinearFlipout, LinearReparameterization

VOCAB = 7


class TinyLM(nn.Module):
    """A causal toy language model: a running mean of token embeddings, a deterministic
    mixing layer and a ``head`` (Bayesian or not); ``positions`` caps the length."""

    def __init__(self, head: type[nn.Module] = LinearFlipout, positions: int = 64) -> None:
        super().__init__()
        self.positions = positions
        self.embed = nn.Embedding(VOCAB, 6)
        self.mix = nn.Linear(6, 6)
        kw = {} if head is nn.Linear else {"weight_initializer": TrainableNormal(scale_init=0.5)}
        self.head = head(6, VOCAB, **kw)  # a wide posterior: the samples disagree

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.shape[1] > self.positions:
            raise IndexError(f"TinyLM takes at most {self.positions} positions")
        steps = torch.arange(1, tokens.shape[1] + 1, dtype=torch.float32)
        h = self.embed(tokens).cumsum(1) / steps[:, None]  # (B, T, 6), causal
        return self.head(torch.tanh(self.mix(h)))  # (B, T, V)


def _lm(head: type[nn.Module] = LinearFlipout, **kw: int) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(head, **kw).eval()


PROMPT = torch.tensor([[0, 3, 1], [2, 2, 5]])


def _mixture_record(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> dict:
    """Per step: the mixture's log probability of ``tokens`` and the three entropies,
    from K samples' logits ``(K, B, n, V)`` and the chosen ``tokens`` ``(B, n)``."""
    probs = torch.softmax(logits.double() / temperature, -1)  # (K, B, n, V)
    mix = probs.mean(0)
    total = -(mix * mix.log()).sum(-1)
    aleatoric = -(probs * probs.log()).sum(-1).mean(0)
    return {
        "log_probs": mix.gather(-1, tokens[..., None]).squeeze(-1).log(),
        "total": total,
        "aleatoric": aleatoric,
        "epistemic": total - aleatoric,
    }


def _assert_record(out: bl.Generation, expected: dict, atol: float) -> None:
    for name, value in expected.items():
        torch.testing.assert_close(getattr(out, name).double(), value, rtol=0, atol=atol)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_uncached_steps_are_predict_mixtures(temperature: float) -> None:
    """Without a cache each step is ``bl.predict`` on the sequence so far: the same
    global seed gives the same function samples, and a generator of the same seed
    the same token draws from the mixture formed here."""
    model, n, k = _lm(), 4, 5
    torch.manual_seed(11)
    out = bl.generate(model, PROMPT, n, k, temperature=temperature, cache=False,
                      generator=torch.Generator().manual_seed(3))  # fmt: skip
    torch.manual_seed(11)
    g, seq, logits = torch.Generator().manual_seed(3), PROMPT, []
    for _ in range(n):
        last = bl.predict(model, seq, num_samples=k).samples[:, :, -1]  # (K, B, V)
        mix = torch.softmax(last / temperature, -1).mean(0)
        seq = torch.cat([seq, torch.multinomial(mix, 1, generator=g)], 1)
        logits.append(last)
    assert torch.equal(out.tokens, seq)
    expected = _mixture_record(torch.stack(logits, 2), seq[:, PROMPT.shape[1] :], temperature)
    _assert_record(out, expected, atol=1e-5)
    assert (out.epistemic > 1e-4).all()  # the samples differ: a Bayesian head


def test_greedy_takes_the_mixtures_mode_and_decomposes() -> None:
    model = _lm(LinearReparameterization)
    torch.manual_seed(5)
    out = bl.generate(model, PROMPT, 3, 6, greedy=True, cache=False)
    torch.manual_seed(5)
    seq = PROMPT
    for _ in range(3):
        mix = bl.predict(model, seq, num_samples=6).samples[:, :, -1].softmax(-1).mean(0)
        seq = torch.cat([seq, mix.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out.tokens, seq)
    torch.testing.assert_close(out.total, out.aleatoric + out.epistemic, rtol=0, atol=1e-6)
    assert (out.epistemic >= 0).all() and (out.log_probs <= 0).all()
    torch.manual_seed(5)
    narrow = bl.generate(model, PROMPT.int(), 3, 6, greedy=True, cache=False)
    assert narrow.tokens.dtype == torch.int32 and torch.equal(narrow.tokens, seq.int())


def test_draws_follow_the_predictive_law() -> None:
    """A model with nothing random: each new token is drawn from softmax(z / T). With
    n = 20000 prompts, each of the V frequencies is within 5 standard errors (Bonferroni
    over V = 7 at a family-wise rate far below 1e-3) of its probability; the mixture
    of K equal samples has no epistemic part."""
    torch.manual_seed(0)
    model = TinyLM(nn.Linear).eval()
    rows, temperature = 20_000, 0.6
    prompt = torch.tensor([[4, 1]]).expand(rows, 2)
    out = bl.generate(model, prompt, 1, 3, temperature=temperature,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.no_grad():
        p = torch.softmax(model(prompt[:1])[0, -1].double() / temperature, -1)  # (V,)
    freq = torch.bincount(out.tokens[:, -1], minlength=VOCAB).double() / rows
    bound = 5 * (p * (1 - p) / rows).sqrt()
    assert ((freq - p).abs() <= bound).all(), (freq, p)
    assert torch.equal(out.epistemic, torch.zeros_like(out.epistemic))
    entropy = -(p * p.log()).sum()
    torch.testing.assert_close(out.total[0, 0].double(), entropy, rtol=0, atol=1e-6)


def test_prefix_trunk_shares_and_keeps_the_samples() -> None:
    """``trunk="prefix"`` (the deterministic embedding and mixing run once per step for
    the K samples) generates what ``trunk=None`` generates for a fixed seed."""
    model, outs = _lm(), []
    for trunk in ("prefix", None):
        torch.manual_seed(2)
        outs.append(bl.generate(model, PROMPT, 3, 4, trunk=trunk, cache=False,
                                generator=torch.Generator().manual_seed(1)))  # fmt: skip
    assert torch.equal(outs[0].tokens, outs[1].tokens)
    torch.testing.assert_close(outs[0].epistemic, outs[1].epistemic, rtol=0, atol=1e-6)


def test_context_window_bounds_the_model_input() -> None:
    model = _lm(positions=4)
    out = bl.generate(model, PROMPT, 5, 2, context=4, cache=False)
    assert out.tokens.shape == (2, 8) and out.epistemic.shape == (2, 5)
    with pytest.raises(IndexError, match="at most 4 positions"):
        bl.generate(model, PROMPT, 5, 2, cache=False)


def test_a_categorical_output_is_read_by_its_class_probabilities() -> None:
    """A model ending in ``layers.Categorical`` returns a drawn token per position (its
    value): a step mixes the K samples' class probabilities, as for the logits that give
    them, not the drawn labels (one step: the labels' draws move the global generator)."""
    torch.manual_seed(0)
    logits_lm = TinyLM().eval()
    model = nn.Sequential(logits_lm, bl.layers.Categorical()).eval()
    n, k = 1, 4
    for temperature in (1.0, 0.5):
        torch.manual_seed(7)
        out = bl.generate(model, PROMPT, n, k, temperature=temperature, cache=False,
                          generator=torch.Generator().manual_seed(1))  # fmt: skip
        torch.manual_seed(7)
        ref = bl.generate(logits_lm, PROMPT, n, k, temperature=temperature, cache=False,
                          generator=torch.Generator().manual_seed(1))  # fmt: skip
        assert torch.equal(out.tokens, ref.tokens)
        for name in ("log_probs", "total", "aleatoric", "epistemic"):
            torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"logits of shape \(B, T, vocab\).*\(2, 7\)"):
        bl.generate(nn.Sequential(nn.Embedding(VOCAB, 4), nn.Flatten(), nn.Linear(12, VOCAB)),
                    PROMPT, 1, 2, cache=False)  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tokens=PROMPT.float()), TypeError, "integer tensor"),
        (dict(tokens=PROMPT.bool()), TypeError, "integer tensor"),
        (dict(tokens=PROMPT[0]), ValueError, r"shape \(B, T\)"),
        (dict(tokens=PROMPT[:, :0]), ValueError, r"shape \(B, T\)"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
        (dict(num_samples=True), ValueError, "num_samples"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=math.inf), ValueError, "temperature"),
        (dict(temperature="1"), TypeError, "temperature"),
        (dict(context=0), ValueError, "context"),
        (dict(cache="yes"), TypeError, "cache"),
        (dict(cache=True), TypeError, "use_cache"),
        (dict(greedy=1), TypeError, "greedy"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"tokens": PROMPT, "max_new_tokens": 2, **kwargs}
    with pytest.raises(error, match=match):
        bl.generate(_lm(), args.pop("tokens"), args.pop("max_new_tokens"), **args)


# ------------------------------------------------------------- transformers, KV cache
transformers = pytest.importorskip("transformers")


def _hf_base(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(
            n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def _hf_targets(kind: str, block: int | None = None) -> list[str]:
    """The adapted projections (of one ``block``, or name patterns for every block)."""
    names = ["attn.c_attn", "attn.c_proj"] if kind == "gpt2" else ["q_proj", "v_proj", "o_proj"]
    if block is None:
        return [n.split(".")[-1] for n in names]
    prefix = f"transformer.h.{block}" if kind == "gpt2" else f"model.layers.{block}.self_attn"
    return [f"{prefix}.{n}" for n in names]


def _hf(kind: str, posterior: str) -> nn.Module:
    model = bl.lora(_hf_base(kind), target=_hf_targets(kind), rank=4, posterior=posterior,
                    init_std=0.3)  # fmt: skip
    for _, adapter in bl.adapters.adapters(model):
        nn.init.normal_(adapter.lora_B.weight, std=0.5)  # B starts at 0: let A matter
    return model


@pytest.mark.parametrize(
    "kind, posterior",
    [("gpt2", "flipout"), ("gpt2", "reparameterization"),
     ("gpt2", "local_reparameterization"), ("llama", "flipout")],
)  # fmt: skip
def test_cached_generation_equals_whole_sequence_forward(kind: str, posterior: str) -> None:
    """The cached path: K frozen function samples, each with its own key-value cache.
    Under the same K frozen samples (same global seed), one forward of the finished
    sequence gives every step's logits; the recorded mixture's log probabilities and
    entropies must match them (float32 rounding through two blocks: 2e-5)."""
    model, n, k = _hf(kind, posterior), 5, 4
    torch.manual_seed(7)
    out = bl.generate(model, PROMPT, n, k, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    with torch.no_grad(), bl.frozen_sample(model), bl.vectorized_samples(model, k):
        logits = model(out.tokens[:, :-1].repeat(k, 1)).logits  # (K B, T + n - 1, V)
    t = PROMPT.shape[1]
    logits = logits.view(k, PROMPT.shape[0], -1, VOCAB)[:, :, t - 1 :]  # (K, B, n, V)
    _assert_record(out, _mixture_record(logits, out.tokens[:, t:]), atol=2e-5)
    assert (out.epistemic > 1e-4).any()


def test_cached_generation_runs_one_position_per_step() -> None:
    """After the prompt each call of the model gets one new position per sample."""
    model, lengths = _hf("gpt2", "flipout"), []
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: lengths.append(tuple(args[0].shape)), with_kwargs=True
    )
    try:
        bl.generate(model, PROMPT, 4, 3)
    finally:
        handle.remove()
    assert lengths == [(6, 3), (6, 1), (6, 1), (6, 1)]


def _tail(kind: str, posterior: str = "flipout") -> nn.Module:
    """Plain adapters in the first block, Bayesian ones in the last (the prefix: block 0)."""
    plain = bl.lora(_hf_base(kind), target=_hf_targets(kind, 0), rank=4, posterior=None)
    model = bl.lora(plain, target=_hf_targets(kind, 1), rank=4, posterior=posterior, init_std=0.3)
    for _, adapter in bl.adapters.adapters(model):
        nn.init.normal_(adapter.lora_B.weight, std=0.5)
    return model


def _blocks(model: nn.Module) -> nn.ModuleList:
    inner = model.transformer if hasattr(model, "transformer") else model.model
    return inner.h if hasattr(inner, "h") else inner.layers


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_prefix_sharing_runs_the_first_block_once_and_keeps_the_samples(kind: str) -> None:
    """With Bayesian adapters only in the last block, ``trunk="prefix"`` runs block 0
    (and keeps its cache) once per step on the B sequences, the last block on the K B
    folded ones, and generates what the unshared cache generates for a fixed seed."""
    model, k, rows = _tail(kind), 4, {0: [], 1: []}
    hooks = [
        _blocks(model)[i].mlp.register_forward_pre_hook(  # runs only if its block runs
            lambda m, args, i=i: rows[i].append(args[0].shape[0])
        )
        for i in (0, 1)
    ]
    outs = []
    try:
        for trunk in ("prefix", None):
            torch.manual_seed(3)
            outs.append(bl.generate(model, PROMPT, 5, k, trunk=trunk,
                                    generator=torch.Generator().manual_seed(4)))  # fmt: skip
            if trunk == "prefix":
                assert rows == {0: [2] * 5, 1: [2 * k] * 5}
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(outs[0].tokens, outs[1].tokens)
    for name in ("log_probs", "total", "epistemic"):
        torch.testing.assert_close(getattr(outs[0], name), getattr(outs[1], name),
                                   rtol=0, atol=2e-5)  # fmt: skip
    assert (outs[0].epistemic > 1e-4).any()


def test_prefix_sharing_with_one_prompt() -> None:
    """``B = 1``: the recorded block outputs folded K times are new contiguous memory (a
    reshape of the expanded ``(K, 1, ...)`` copies would be a zero-stride view, which
    GPT-2's ``Conv1D`` cannot ``view``); the tokens are the unshared cache's."""
    model, outs = _tail("gpt2"), []
    for trunk in ("prefix", None):
        torch.manual_seed(3)
        outs.append(bl.generate(model, PROMPT[:1], 3, 3, trunk=trunk, greedy=True))
    assert torch.equal(outs[0].tokens, outs[1].tokens)
    torch.testing.assert_close(outs[0].total, outs[1].total, rtol=0, atol=2e-5)


def test_generation_under_inference_mode_equals_no_grad() -> None:
    """Inside ``torch.inference_mode`` (inference tensors keep no in-place version, which
    the shared prefix checks) both the shared cache and the uncached path generate what
    they generate under ``torch.no_grad``, for a fixed seed."""
    model, lm = _tail("gpt2"), _lm()
    for net, kw in ((model, {"trunk": "prefix"}), (lm, {"trunk": "prefix", "cache": False})):
        outs = []
        for mode in (torch.no_grad, torch.inference_mode):
            torch.manual_seed(3)
            with mode():
                outs.append(bl.generate(net, PROMPT.clone(), 3, 3, **kw,
                                        generator=torch.Generator().manual_seed(4)))  # fmt: skip
        assert torch.equal(outs[0].tokens, outs[1].tokens)
        torch.testing.assert_close(outs[1].total, outs[0].total, rtol=0, atol=0)


@pytest.mark.parametrize("posterior", ["flipout", None])
def test_prefix_without_a_shared_block_generates_as_unshared(posterior: str | None) -> None:
    """Bayesian adapters in every block leave no cache layer to share (the first draw is
    in block 0's attention): ``trunk="prefix"`` runs as ``trunk=None``. Plain LoRA has
    nothing that draws: the model runs once per step, all K samples equal (no epistemic
    part) and the tokens are the plain model's greedy ones."""
    model, outs = _hf("gpt2", posterior), []
    for trunk in ("prefix", None):
        torch.manual_seed(3)
        outs.append(bl.generate(model, PROMPT, 4, 3, trunk=trunk, greedy=True))
    assert torch.equal(outs[0].tokens, outs[1].tokens)
    torch.testing.assert_close(outs[0].total, outs[1].total, rtol=0, atol=2e-5)
    if posterior is None:  # K equal samples: zero up to the rounding of their mean
        assert (outs[0].epistemic.abs() <= 1e-6).all()
        seq = PROMPT
        with torch.no_grad():
            for _ in range(4):
                seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], 1)
        assert torch.equal(outs[0].tokens, seq)


def test_prefix_with_a_sliding_window_cache_warns_and_runs_unshared() -> None:
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
        sliding_window=4, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    model = bl.lora(transformers.MistralForCausalLM(cfg).eval(), target=["q_proj"], rank=2,
                    posterior="flipout")  # fmt: skip
    with pytest.warns(UserWarning, match="one cache per function sample"):
        out = bl.generate(model, PROMPT, 3, 2, trunk="prefix")
    assert out.tokens.shape == (2, 6)


def test_cached_path_rejects_a_module_trunk_and_a_context() -> None:
    model = _hf("gpt2", "flipout")
    with pytest.raises(ValueError, match="'prefix', 'auto' or None"):
        bl.generate(model, PROMPT, 2, trunk=model.transformer.h[0])
    with pytest.raises(ValueError, match="takes no `context`"):
        bl.generate(model, PROMPT, 2, context=4)


def test_prefix_that_stops_sharing_midway_raises() -> None:
    """A model whose code draws from torch's generator before the first Bayesian layer
    from the second step on (nothing left to share then) gets a clear error, not a cache
    of the wrong batch."""
    model, calls = _tail("gpt2"), [0]

    def draw_after_first(m: nn.Module, args: tuple) -> None:
        calls[0] += 1
        if calls[0] > 2:  # the first step's two calls (record, folded) draw nothing
            torch.rand(1)

    handle = model.transformer.wte.register_forward_pre_hook(draw_after_first)
    try:
        with pytest.raises(RuntimeError, match="left nothing to share"):
            bl.generate(model, PROMPT, 3, 2, trunk="prefix")
    finally:
        handle.remove()


def test_a_transformers_model_without_its_cache_generates_through_predict() -> None:
    """``cache=False`` on a ``transformers`` model: ``bl.predict`` reads the output's
    logits at every step; the steps equal a hand-written ``bl.predict`` loop."""
    model, n, k = _hf("gpt2", "flipout"), 3, 4
    torch.manual_seed(2)
    out = bl.generate(model, PROMPT, n, k, cache=False, greedy=True)
    torch.manual_seed(2)
    seq = PROMPT
    for _ in range(n):
        last = bl.predict(model, seq, num_samples=k).samples[:, :, -1]  # (K, B, V)
        seq = torch.cat([seq, last.softmax(-1).mean(0).argmax(-1, keepdim=True)], 1)
    assert torch.equal(out.tokens, seq) and (out.epistemic > 1e-4).any()


def test_whole_continuations_recipe_with_the_models_own_generate() -> None:
    """The documented recipe for K whole continuations: ``transformers``' own
    ``generate`` on the prompt repeated K times inside ``frozen_sample`` and
    ``vectorized_samples``. Each row continues greedily under its own function sample:
    one forward of the finished rows, under the same frozen samples, takes every new
    token as its argmax, and the samples' continuations differ."""
    model, k, n = _hf("gpt2", "flipout"), 4, 5
    with torch.no_grad(), bl.frozen_sample(model), bl.vectorized_samples(model, k):
        rows = model.generate(PROMPT.repeat(k, 1), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0,
                              attention_mask=torch.ones(k * 2, 3))  # fmt: skip
        logits = model(rows[:, :-1]).logits  # (K B, T + n - 1, V), the same K samples
    t = PROMPT.shape[1]
    assert rows.shape == (k * 2, t + n)
    logits[..., 0] = -torch.inf  # min_new_tokens: the end token (0) is barred until n
    assert torch.equal(logits[:, t - 1 :].argmax(-1), rows[:, t:])
    per_sample = rows.view(k, 2, -1)
    assert any(not torch.equal(per_sample[0], per_sample[j]) for j in range(1, k))
