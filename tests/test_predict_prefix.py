"""``bl.predict(..., trunk="prefix")``: any model's modules before its first draw run once
(issue 21, cheap sampling of adapted models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers._trunk import TrunkError


class Counted(nn.Module):
    """A deterministic block that counts its forward calls."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin, self.calls = nn.Linear(dim, dim), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(self.lin(x))


class Tower(nn.Module):
    """Blocks in a loop with residuals (not an nn.Sequential); Bayesian from ``first``."""

    def __init__(self, first: int, depth: int = 4, dim: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, dim)
        self.blocks = nn.ModuleList(
            Counted(dim) if i < first else layers.LinearFlipout(dim, dim) for i in range(depth)
        )
        self.head = nn.Linear(dim, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def _samples(model: nn.Module, x: torch.Tensor, trunk: object, k: int = 5) -> torch.Tensor:
    torch.manual_seed(3)
    return bl.predict(model, x, num_samples=k, trunk=trunk).samples


@pytest.mark.parametrize("first", [0, 1, 3])
def test_prefix_equals_uncached_for_a_fixed_seed(first: int) -> None:
    torch.manual_seed(0)
    model = Tower(first)
    x = torch.randint(0, 11, (4, 7))
    ref = _samples(model, x, None)
    calls = [b.calls for b in model.blocks if isinstance(b, Counted)]
    out = _samples(model, x, "prefix")
    assert torch.equal(out, ref)
    assert out.shape == (5, 4, 7, 3) and out.std(0).min() > 0  # K distinct function samples
    # each deterministic block before the first draw ran once (recorded), not on K copies
    assert [b.calls for b in model.blocks if isinstance(b, Counted)] == [c + 1 for c in calls]


def test_lora_model_shares_the_blocks_before_the_bayesian_adapters() -> None:
    torch.manual_seed(0)
    model = Tower(first=4)  # all deterministic
    bl.lora(model, target=["blocks.0.lin", "blocks.1.lin"], rank=2, posterior=None)
    bl.lora(model, target=["blocks.2.lin", "blocks.3.lin"], rank=2, posterior="flipout")
    for _, a in bl.adapters.adapters(model):
        nn.init.normal_(a.lora_B.weight)
    x = torch.randint(0, 11, (4, 7))
    ref = _samples(model, x, None)
    before = [b.calls for b in model.blocks]
    assert torch.equal(_samples(model, x, "prefix"), ref)
    # blocks 0-1 ran once (recorded); block 2 was entered by the recording call, which
    # stopped at its Bayesian adapter, and ran in the folded call; block 3 only there
    after = [b.calls for b in model.blocks]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 2, 1]


def test_nothing_stochastic_runs_once() -> None:
    torch.manual_seed(0)
    model = Tower(first=4)
    x = torch.randint(0, 11, (2, 5))
    out = bl.predict(model, x, num_samples=3, trunk="prefix").samples
    assert [b.calls for b in model.blocks] == [1, 1, 1, 1]
    assert torch.equal(out, model(x).unsqueeze(0).expand(3, -1, -1, -1))


def test_a_bayesian_layer_as_the_model() -> None:
    layer = layers.LinearReparameterization(4, 2)
    x = torch.randn(3, 4)
    assert torch.equal(_samples(layer, x, "prefix"), _samples(layer, x, None))


class Branching(nn.Module):
    """Calls ``gate`` only for small batches: the folded call skips it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.out = nn.Linear(4, 4), layers.LinearFlipout(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 5:
            x = self.gate(x)
        return self.out(x)


def test_a_prefix_module_the_folded_call_skips_is_an_error() -> None:
    with pytest.raises(TrunkError, match="ran before the first draw"):
        bl.predict(Branching(), torch.randn(3, 4), num_samples=4, trunk="prefix")


def test_unknown_trunk_names_prefix() -> None:
    with pytest.raises(ValueError, match="'auto', 'prefix', None or an nn.Module, got 'first'"):
        bl.predict(Tower(1), torch.randint(0, 11, (2, 3)), trunk="first")


def test_gpt2_with_bayesian_adapters_in_its_last_block() -> None:
    """A transformers model's output (a mapping with ``logits``); the prefix (embeddings
    and the first block, whose adapters are plain) runs once."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=2, n_embd=16, n_head=2, vocab_size=32, n_positions=16, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    bl.lora(model, target="h.0.attn.c_attn", rank=2, posterior=None)
    bl.lora(model, target="h.1.attn.c_attn", rank=2, posterior="flipout")
    for _, a in bl.adapters.adapters(model):
        nn.init.normal_(a.lora_B.weight)
    x = torch.randint(0, 32, (3, 8))
    ref = _samples(model, x, None, k=4)
    assert ref.shape == (4, 3, 8, 32) and ref.std(0).min() > 0
    rows: list[int] = []  # the batch rows every call of the first block's MLP saw
    model.transformer.h[0].mlp.c_fc.register_forward_hook(
        lambda m, a, out: rows.append(a[0].shape[0])
    )
    assert torch.equal(_samples(model, x, "prefix", k=4), ref)
    assert rows == [3]  # the first block ran once, at the unfolded input


class NoisyPrefix(nn.Module):
    """Draws noise in its own code before its first Bayesian layer."""

    def __init__(self, functional_dropout: bool = False) -> None:
        super().__init__()
        self.first, self.out = nn.Linear(4, 4), layers.LinearReparameterization(4, 2)
        self.functional_dropout = functional_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        if self.functional_dropout:
            h = nn.functional.dropout(h, 0.5, training=True)
        else:
            h = h + torch.randn_like(h)
        return self.out(h)


@pytest.mark.parametrize("functional_dropout", [False, True])
def test_noise_in_the_models_own_code_is_not_shared(functional_dropout: bool) -> None:
    model = NoisyPrefix(functional_dropout)
    x = torch.randn(3, 4)
    with bl.posterior_mean(model.out):  # only the model's own noise differs between samples
        ref = _samples(model, x, None)
        out = _samples(model, x, "prefix")
    assert torch.equal(out, ref)  # the recording's draws were put back
    assert (out[0] != out[1]).any()  # each sample its own noise


class Deterministic(nn.Module):
    def __init__(self, noisy: bool = False) -> None:
        super().__init__()
        self.lin, self.calls, self.noisy = nn.Linear(4, 2), 0, noisy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        y = self.lin(x)
        return y + torch.randn_like(y) if self.noisy else y


def test_a_model_with_nothing_stochastic_runs_once_by_default() -> None:
    model = Deterministic()
    x = torch.randn(3, 4)
    out = bl.predict(model, x, num_samples=6).samples
    assert model.calls == 1 and torch.equal(out, model(x).expand(6, 3, 2))
    noisy = Deterministic(noisy=True)  # its own code draws: K folded copies, K draws
    out = _samples(noisy, x, "auto", k=6)
    assert torch.equal(out, _samples(noisy, x, None, k=6)) and (out[0] != out[1]).all()


class InPlace(nn.Module):
    """Changes a prefix module's output in place after it returns (``h += ...``)."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.out = nn.Linear(4, 4), layers.LinearFlipout(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        h += 1.0  # the recorded output is no longer what `first` returned
        return self.out(h)


@pytest.mark.parametrize("k", [1, 4])
def test_an_output_changed_in_place_is_not_shared(k: int) -> None:
    model, x = InPlace(), torch.randn(3, 4)
    assert torch.equal(_samples(model, x, "prefix", k=k), _samples(model, x, None, k=k))


class Attending(nn.Module):
    """``nn.MultiheadAttention`` (it answers a tuple) before a Bayesian feed-forward;
    counts the attention's calls."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.ff = layers.LinearReparameterization(dim, dim)
        self.head = nn.Linear(dim, 3)
        self.calls = 0
        self.attn.register_forward_pre_hook(lambda m, a, k: self._count(), with_kwargs=True)

    def _count(self) -> None:
        self.calls += 1

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(h + self.ff(h))


def test_a_module_answering_a_tuple_is_recorded() -> None:
    """Attention's ``(output, None)`` is recorded: it runs once for K samples (the folded
    call's substitute is called, its own forward is not), and the samples are
    ``trunk=None``'s for a fixed seed."""
    torch.manual_seed(0)
    model, x = Attending().eval(), torch.randint(0, 11, (4, 7))
    ref = _samples(model, x, None, k=6)
    model.calls = 0
    calls = []
    forward = model.attn.forward

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return forward(*args, **kwargs)

    model.attn.forward = counting  # type: ignore[method-assign]
    out = _samples(model, x, "prefix", k=6)
    assert torch.equal(out, ref) and out.std(0).min() > 0
    assert len(calls) == 1  # the recording; the folded call got the record


class ChangesAfterTheDraw(nn.Module):
    """Changes the recorded output of ``first`` in place after its first draw."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.out = nn.Linear(4, 4), layers.LinearReparameterization(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        y = self.out(h)
        h.mul_(2.0)  # on the record itself when a one-sample call shares it
        return y + h.sum(-1, keepdim=True)


@pytest.mark.parametrize("chunk", [1, 3])
def test_a_record_changed_in_place_by_a_sample_is_recorded_afresh(chunk: int) -> None:
    """One-sample chunks hand the recorded outputs over without copying; a model that
    changes one in place is caught by its version counter, the prefix is recorded
    afresh and the chunk drawn again from the same generator state: the samples stay
    ``trunk=None``'s for a fixed seed, chunk after chunk."""
    torch.manual_seed(0)
    model, x = ChangesAfterTheDraw(), torch.randn(3, 4)

    def run(trunk: object) -> torch.Tensor:
        torch.manual_seed(5)
        return bl.predict(model, x, 7, trunk=trunk, chunk_size=chunk).samples

    ref = run(None)
    assert torch.equal(run("prefix"), ref) and ref.std(0).min() > 0


def test_one_sample_chunks_share_the_records_without_copies() -> None:
    """A chunk of one sample answers the recorded tensor itself (no copy); chunks of
    more samples answer fresh folded copies."""
    from bayesian_layers._prefix import record_prefix

    torch.manual_seed(0)
    model, x = Tower(2), torch.randint(0, 11, (4, 7))
    prefix = record_prefix(model, x)
    (module, out), *_ = prefix.outputs
    seen: list[torch.Tensor] = []
    module.register_forward_hook(lambda m, a, o: seen.append(o))
    for k in (1, 3):
        with torch.no_grad():
            prefix.call(model, x, k)
    assert seen[0] is out
    assert seen[1].shape == (3 * out.shape[0], *out.shape[1:])
    assert seen[1].data_ptr() != out.data_ptr()


def test_prefix_chunk_size_counts_the_recorded_outputs() -> None:
    """Per sample: a copy of every record, four activations the size of the largest and
    the largest random parameter's draw, against the byte budget."""
    from bayesian_layers._prefix import Prefix

    small, large = torch.zeros(2, 10), torch.zeros(2, 100)  # 80 and 800 bytes
    prefix = Prefix([(nn.Identity(), small), (nn.Identity(), (large, None))], None)
    per_sample = 80 + 800 + 4 * 800 + 50 * 4
    assert prefix.chunk_size(50, 10 * per_sample) == 10
    assert prefix.chunk_size(50, 10 * per_sample - 1) == 9
    assert prefix.chunk_size(50, 1) == 1
