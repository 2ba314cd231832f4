"""Tests for the Bayesian multi-head attention layers (``bayesian_layers.layers.attention``).

Contract suite over both estimators against ``nn.MultiheadAttention``: shapes,
posterior scale 0 equals torch holding the posterior means (outputs and attention
weights, with masks, ``bias_kv``, ``add_zero_attn``, ``batch_first``), calls
differ, finite gradients, closed-form KL, ``state_dict`` round trip, errors,
sampling modes, vectorised samples, and a tiny pre-norm transformer block training.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers.layers.attention import (
    MultiheadAttentionFlipout,
    MultiheadAttentionReparameterization,
)

CLASSES = [MultiheadAttentionReparameterization, MultiheadAttentionFlipout]
parametrize = pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
E, H, L, S, N = 8, 2, 5, 4, 3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny tensors: intra-op thread hand-off would dominate.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def zero_scale(layer: nn.Module) -> None:
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                p.fill_(-100.0)  # softplus(-100) ≈ 4e-44


def torch_twin(layer: nn.Module, **kwargs: object) -> nn.MultiheadAttention:
    """``nn.MultiheadAttention`` holding ``layer``'s posterior means."""
    ref = nn.MultiheadAttention(E, H, **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        ref.in_proj_weight.copy_(layer.in_proj_weight_loc)
        if ref.in_proj_bias is not None:
            ref.in_proj_bias.copy_(layer.in_proj_bias)
            ref.out_proj.bias.copy_(layer.out_proj.bias)
        ref.out_proj.weight.copy_(layer.out_proj.weight_loc)
        if ref.bias_k is not None:
            ref.bias_k.copy_(layer.bias_k)
            ref.bias_v.copy_(layer.bias_v)
    return ref


def inputs(batch_first: bool, batched: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    if not batched:
        return torch.randn(L, E), torch.randn(S, E), torch.randn(S, E)
    shape = (lambda t: (N, t, E)) if batch_first else (lambda t: (t, N, E))
    return torch.randn(shape(L)), torch.randn(shape(S)), torch.randn(shape(S))


def masks(kind: str) -> dict[str, Tensor]:
    if kind == "none":
        return {}
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[0, -1] = kpm[2, 0] = True
    am = torch.zeros(L, S, dtype=torch.bool)
    am[1, 2] = True
    if kind == "padding":
        return {"key_padding_mask": kpm}
    if kind == "attn3d":
        return {"attn_mask": torch.randn(N * H, L, S)}
    return {"key_padding_mask": kpm, "attn_mask": am}


@parametrize
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mask", ["none", "padding", "both", "attn3d"])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("average", [True, False])
def test_zero_scale_equals_torch(cls, batch_first, mask, need_weights, average) -> None:
    layer = cls(E, H, batch_first=batch_first)
    zero_scale(layer)
    ref = torch_twin(layer, batch_first=batch_first)
    q, k, v = inputs(batch_first)
    kw = dict(masks(mask), need_weights=need_weights, average_attn_weights=average)
    out, w = layer(q, k, v, **kw)
    ref_out, ref_w = ref(q, k, v, **kw)
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    torch.testing.assert_close(out, ref_out)
    if need_weights:
        torch.testing.assert_close(w, ref_w)
    else:
        assert w is None and ref_w is None


@parametrize
@pytest.mark.parametrize("options", ["bias_kv", "zero_attn", "no_bias", "unbatched", "self"])
def test_zero_scale_equals_torch_options(cls, options) -> None:
    kwargs: dict = {
        "bias_kv": {"add_bias_kv": True},
        "zero_attn": {"add_zero_attn": True},
        "no_bias": {"bias": False},
    }.get(options, {})
    layer = cls(E, H, **kwargs)
    zero_scale(layer)
    ref = torch_twin(layer, **kwargs)
    q, k, v = inputs(False, batched=options != "unbatched")
    if options == "self":
        k = v = q
    kpm = {} if options == "unbatched" else masks("padding")
    if options == "self":
        kpm = {"key_padding_mask": torch.rand(N, L) < 0.3}
    for need_weights in (True, False):
        out, w = layer(q, k, v, need_weights=need_weights, **kpm)
        ref_out, ref_w = ref(q, k, v, need_weights=need_weights, **kpm)
        torch.testing.assert_close(out, ref_out)
        if need_weights:
            torch.testing.assert_close(w, ref_w)


@parametrize
def test_causal_mask_matches_torch(cls) -> None:
    layer = cls(E, H)
    zero_scale(layer)
    ref = torch_twin(layer)
    x = torch.randn(L, N, E)
    am = nn.Transformer.generate_square_subsequent_mask(L)
    for need_weights in (True, False):
        out, _ = layer(x, x, x, attn_mask=am, is_causal=True, need_weights=need_weights)
        ref_out, _ = ref(x, x, x, attn_mask=am, is_causal=True, need_weights=need_weights)
        torch.testing.assert_close(out, ref_out)


def test_flipout_decorrelates_examples() -> None:
    """Identical sequences in one batch get different outputs; the reparameterization
    layer (one draw per call) gives them identical outputs."""
    x = torch.randn(L, 1, E).expand(L, 4, E)
    pairs = ((MultiheadAttentionReparameterization, True), (MultiheadAttentionFlipout, False))
    for cls, same in pairs:
        layer = cls(E, H)
        with torch.no_grad():
            layer.in_proj_weight_rho.fill_(0.0)
        out = layer(x, x, x)[0]
        assert torch.allclose(out[:, 0], out[:, 1]) == same


@parametrize
def test_every_parameter_gets_a_finite_gradient(cls) -> None:
    layer = cls(E, H, add_bias_kv=True, bias_initializer="trainable_normal")
    q, k, v = inputs(False)
    out, w = layer(q, k, v, **masks("padding"))
    (out.sum() + w.sum() + sum(bl.losses(layer))).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@parametrize
def test_state_dict_round_trip_with_weights_only(cls) -> None:
    src = cls(E, H, add_bias_kv=True)
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    names = "in_proj_weight_loc in_proj_weight_rho in_proj_bias bias_k bias_v out_proj.bias"
    assert {*names.split(), "out_proj.weight_loc", "out_proj.weight_rho"} <= set(state)
    dst = cls(E, H, add_bias_kv=True)
    dst.load_state_dict(state)
    q, k, v = inputs(False)
    torch.manual_seed(3)
    expected = src(q, k, v)[0]
    torch.manual_seed(3)
    torch.testing.assert_close(dst(q, k, v)[0], expected, rtol=0, atol=0)


@parametrize
def test_float64_and_vectorized_samples(cls) -> None:
    layer = cls(E, H, batch_first=True, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    x = torch.randn(N, L, E, dtype=torch.float64)
    assert layer(x, x, x)[0].dtype == torch.float64
    with bl.vectorized_samples(layer, 2):
        xs = x.repeat(2, 1, 1)
        out, w = layer(xs, xs, xs, key_padding_mask=torch.zeros(2 * N, L, dtype=torch.bool))
    assert out.shape == (2 * N, L, E) and w.shape == (2 * N, L, L)
    with bl.posterior_mean(layer):
        zero_scale(layer)
    with bl.vectorized_samples(layer, 2):
        out = layer(xs, xs, xs)[0]
    torch.testing.assert_close(out[:N], out[N:])  # scale 0: both samples are the mean


@parametrize
def test_bad_input_raises(cls) -> None:
    with pytest.raises(ValueError, match="divisible"):
        cls(7, 2)
    with pytest.raises(NotImplementedError, match="kdim"):
        cls(E, H, kdim=4)
    layer = cls(E, H)
    with pytest.raises(ValueError, match=rf"{cls.__name__}.*embed_dim=8.*\(5, 3, 6\)"):
        x = torch.randn(L, N, 6)
        layer(x, x, x)
    q, k, v = inputs(False)
    with pytest.raises(ValueError, match="key_padding_mask"):
        layer(q, k, v, key_padding_mask=torch.zeros(N, S + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask"):
        layer(q, k, v, attn_mask=torch.zeros(L, L, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_causal"):
        layer(q, k, v, is_causal=True)
    with pytest.raises(
        TypeError, match=r"expected `query` of dtype torch.float32, got torch.int64"
    ):
        layer(q.long(), k, v)


class PreNormBlock(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(E), nn.LayerNorm(E)
        self.attn = attn
        self.mlp = nn.Sequential(nn.Linear(E, 16), nn.GELU(), nn.Linear(16, E))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False, is_causal=True)[0]
        return x + self.mlp(self.norm2(x))


@parametrize
def test_prenorm_transformer_block_trains(cls) -> None:
    """Copy task on random tokens: the loss falls over 60 Adam steps."""
    model = PreNormBlock(cls(E, H, dropout=0.1, batch_first=True))
    emb, head = nn.Embedding(5, E), nn.Linear(E, 5)
    params = [*model.parameters(), *emb.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    tokens = torch.randint(0, 5, (16, 6))
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    first = last = 0.0
    for step in range(60):
        logits = head(model(emb(tokens), mask))
        nll = F.cross_entropy(logits.reshape(-1, 5), tokens.reshape(-1))
        loss = bl.elbo_loss(nll, model, 1000)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = nll.item() if step == 0 else first
        last = nll.item()
    assert last < 0.5 * first, (first, last)


@parametrize
def test_from_torch_copies_weights_and_is_registered(cls) -> None:
    ref = nn.MultiheadAttention(E, H, add_bias_kv=True, batch_first=True, dtype=torch.float64)
    layer = cls.from_torch(ref)
    assert (
        type(layer) is cls
        and layer.batch_first
        and layer.in_proj_weight_loc.dtype == ref.in_proj_weight.dtype
    )
    for name in ("in_proj_weight", "in_proj_bias"):
        torch.testing.assert_close(layer.point(name), getattr(ref, name), rtol=0, atol=0)
    torch.testing.assert_close(layer.out_proj.point("weight"), ref.out_proj.weight, rtol=0, atol=0)
    torch.testing.assert_close(layer.bias_k, ref.bias_k, rtol=0, atol=0)
    x = torch.randn(N, L, E, dtype=torch.float64)
    with bl.posterior_mean(layer):
        torch.testing.assert_close(layer(x, x, x), ref(x, x, x))
    with pytest.raises(TypeError, match="nn.MultiheadAttention"):
        cls.from_torch(nn.Linear(E, E))
    from bayesian_layers.layers.registry import counterparts

    assert counterparts(nn.MultiheadAttention)[cls.estimator.name] is cls


def _shard(layer: nn.Module, index: int, count: int, partials: list) -> nn.Module:
    """A copy of ``layer`` holding the parameters of shard ``index`` of ``count`` of its
    heads, whose ``reduce`` records the partial results."""
    from bayesian_layers.layers.attention import HeadShard

    shard = copy.deepcopy(layer)
    e = E // count
    cols = slice(index * e, (index + 1) * e)
    rows = torch.cat([torch.arange(E)[cols] + i * E for i in range(3)])
    with torch.no_grad():
        shard.in_proj_weight_loc = nn.Parameter(layer.in_proj_weight_loc[rows])
        shard.in_proj_bias = nn.Parameter(layer.in_proj_bias[rows])
        shard.bias_k = nn.Parameter(layer.bias_k[..., cols])
        shard.bias_v = nn.Parameter(layer.bias_v[..., cols])
        shard.out_proj.weight_loc = nn.Parameter(layer.out_proj.weight_loc[:, cols])

    def reduce(t: Tensor) -> Tensor:
        partials.append(t)
        return t

    shard.head_shard = HeadShard(index, count, reduce)
    return shard


@parametrize
def test_head_shards_sum_to_the_whole_layer(cls) -> None:
    """The public extension point of tensor parallelism, in one process: two shards of
    the heads (posterior means), their partial outputs and averaged weights summed,
    plus the output bias once, equal the whole layer (cross-attention, 3-d mask)."""
    layer = cls(E, H, add_bias_kv=True)
    with torch.no_grad():
        layer.in_proj_bias.normal_()
        layer.out_proj.bias.normal_()
    q, k, v = inputs(False)
    kw = {"attn_mask": torch.randn(N * H, L, S)}
    with bl.posterior_mean(layer):
        expected, expected_w = layer(q, k, v, **kw)
        outs, weights = [], []
        for i in range(2):
            partials: list[Tensor] = []
            shard = _shard(layer, i, 2, partials)
            with bl.posterior_mean(shard):
                shard(q, k, v, **kw)
            outs.append(partials[0])
            weights.append(partials[1])
        with pytest.raises(NotImplementedError, match="averaged over heads"):
            shard(q, k, v, average_attn_weights=False)
    torch.testing.assert_close(outs[0] + outs[1] + layer.out_proj.bias, expected)
    torch.testing.assert_close(weights[0] + weights[1], expected_w)
