"""Tests for ``bayesian_layers.layers.embedding.EmbeddingReparameterization``.

Contract suite against ``nn.Embedding`` (shapes, posterior scale 0 equals torch
holding the means, padding rows, calls differ, gradients, closed-form KL,
``state_dict`` round trip, errors, sampling modes, vectorised samples) and the
Monte Carlo moments of a looked-up row.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from stats_util import ALPHA, z_bonferroni
from torch import nn
from torch.distributions import Normal, kl_divergence

import bayesian_layers as bl
from bayesian_layers.layers.embedding import EmbeddingReparameterization as Emb

V, D = 10, 4


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny tensors: intra-op thread hand-off would dominate.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def zero_scale(layer: nn.Module) -> None:
    with torch.no_grad():
        layer.weight_rho.fill_(-100.0)


@pytest.mark.parametrize("shape", [(), (5,), (2, 3)], ids=str)
@pytest.mark.parametrize("padding_idx", [None, 0, -1])
def test_zero_scale_equals_torch(shape, padding_idx) -> None:
    layer = Emb(V, D, padding_idx=padding_idx)
    zero_scale(layer)
    ref = nn.Embedding(V, D, padding_idx=padding_idx)
    with torch.no_grad():
        ref.weight.copy_(layer.weight_loc)
    idx = torch.randint(0, V, shape)
    out = layer(idx)
    assert out.shape == ref(idx).shape and out.dtype == ref(idx).dtype
    torch.testing.assert_close(out, ref(idx))
    with bl.posterior_mean(layer):
        torch.testing.assert_close(layer(idx), ref(idx), rtol=0, atol=0)


def test_padding_row_is_zero_noise_free_and_gets_no_gradient() -> None:
    layer = Emb(V, D, padding_idx=2)
    with torch.no_grad():
        layer.weight_rho.fill_(0.0)
    idx = torch.tensor([[2, 1, 2, 3]])
    out = layer(idx)
    assert (out[0, 0] == 0).all() and (out[0, 2] == 0).all()
    out.sum().backward()
    assert (layer.weight_loc.grad[2] == 0).all() and (layer.weight_rho.grad[2] == 0).all()
    assert (layer.weight_loc.grad[1] != 0).all()
    with bl.vectorized_samples(layer, 2):
        out = layer(idx.repeat(2, 1))
    assert (out[:, 0] == 0).all()


def test_one_function_per_call() -> None:
    """Repeated tokens share one vector within a call; two calls differ."""
    layer = Emb(V, D)
    idx = torch.tensor([[1, 4, 1], [4, 1, 7]])
    out = layer(idx)
    torch.testing.assert_close(out[0, 0], out[0, 2], rtol=0, atol=0)
    torch.testing.assert_close(out[0, 0], out[1, 1], rtol=0, atol=0)
    torch.testing.assert_close(out[0, 1], out[1, 0], rtol=0, atol=0)
    assert not torch.allclose(layer(idx), out)
    torch.manual_seed(3)
    a = layer(idx)
    torch.manual_seed(3)
    torch.testing.assert_close(layer(idx), a, rtol=0, atol=0)
    with bl.frozen_sample(layer):
        f = layer(torch.tensor([1, 4]))
        torch.testing.assert_close(layer(torch.tensor([7, 4, 1]))[1:], f.flip(0), rtol=0, atol=0)


def test_moments_of_a_looked_up_row() -> None:
    """MC mean and variance of row 3 match loc and scale².

    k = 2D simultaneous checks (D means, D variances) at family-wise α = 1e-3,
    n = 20000 calls; half-widths z(1 - α/2k)·σ/√n for the means and
    z(1 - α/2k)·σ²·√(2/(n-1)) for the variances (normal sample variance).
    """
    layer = Emb(V, D)
    with torch.no_grad():
        layer.weight_rho.copy_(torch.rand(V, D).add(0.5).expm1().log())
    n, k = 20000, 2 * D
    z = z_bonferroni(k, ALPHA)
    with bl.vectorized_samples(layer, n), torch.no_grad():
        rows = layer(torch.tensor([3, 3]).repeat(n)).view(n, 2, D)[:, 0]
    loc, scale = layer.weight_loc[3].detach(), F.softplus(layer.weight_rho[3]).detach()
    assert ((rows.mean(0) - loc).abs() <= z * scale / math.sqrt(n)).all()
    var_tol = z * scale.square() * math.sqrt(2 / (n - 1))
    assert ((rows.var(0) - scale.square()).abs() <= var_tol).all()


def test_gradients_and_closed_form_kl() -> None:
    layer = Emb(V, D, scale_grad_by_freq=True, max_norm=1.0)
    out = layer(torch.arange(V).repeat(2))
    (out.sum() + sum(layer.losses)).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert (out.norm(dim=-1) <= 1.0 + 1e-5).all()
    (kl,) = layer.losses
    q = Normal(layer.weight_loc, F.softplus(layer.weight_rho))
    torch.testing.assert_close(kl, kl_divergence(q, Normal(0.0, 1.0)).sum())


def test_state_dict_round_trip_with_weights_only() -> None:
    src = Emb(V, D, padding_idx=0, weight_regularizer=bl.regularizers.NormalKLDivergence(0.5, 2.0))
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {
        "weight_loc",
        "weight_rho",
        "weight_regularizer.prior_loc",
        "weight_regularizer.prior_scale",
    }
    dst = Emb(V, D, padding_idx=0)
    dst.load_state_dict(state)
    torch.testing.assert_close(dst.losses, src.losses)
    idx = torch.randint(0, V, (3, 4))
    torch.manual_seed(5)
    expected = src(idx)
    torch.manual_seed(5)
    torch.testing.assert_close(dst(idx), expected, rtol=0, atol=0)


def test_bad_input_raises() -> None:
    layer = Emb(V, D)
    with pytest.raises(ValueError, match=r"EmbeddingReparameterization.*\[0, 10\).*\[0, 10\]"):
        layer(torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="indices in"):
        layer(torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer indices"):
        layer(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="padding_idx"):
        Emb(V, D, padding_idx=V)
    with pytest.raises(NotImplementedError, match="sparse"):
        Emb(V, D, sparse=True)
    with pytest.raises(ValueError, match="normal"):
        Emb(V, D, weight_initializer="trainable_log_normal")


def test_from_torch_copies_the_table_and_registers() -> None:
    from bayesian_layers.layers import registry

    assert Emb.from_torch(nn.Embedding(V, D, max_norm=2.0)).max_norm == 2.0
    src = nn.Embedding(V, D, padding_idx=1, dtype=torch.float64)
    layer = Emb.from_torch(src)
    assert layer.extra_repr() == f"{V}, {D}, padding_idx=1"
    torch.testing.assert_close(layer.weight_loc, src.weight, rtol=0, atol=0)
    idx = torch.tensor([[0, 1, 2]])
    with bl.posterior_mean(layer):
        torch.testing.assert_close(layer(idx), F.embedding(idx, src.weight, 1), rtol=0, atol=0)
    with pytest.raises(TypeError, match="nn.Embedding"):
        Emb.from_torch(nn.Linear(2, 3))
    assert registry.counterparts(nn.Embedding)["reparameterization"] is Emb


def test_row_noise_goes_through_the_noise_hook() -> None:
    """Sample mode draws the looked-up rows through ``layer.noise``; frozen mode draws
    the whole table (zero noise from the hook gives the posterior means either way)."""
    layer = Emb(V, D)
    seen: list[tuple[str, str, tuple[int, ...]]] = []

    def zeros(layer, name, kind, shape, make):  # noqa: ANN001, ANN202
        seen.append((name, kind, tuple(shape)))
        return torch.zeros(shape)

    layer.register_noise_hook(zeros)
    idx = torch.tensor([3, 5, 3])
    torch.testing.assert_close(layer(idx), layer.weight_loc[idx].detach(), rtol=0, atol=0)
    assert seen == [("weight", "parameter", (2, D))]
    with bl.frozen_sample(layer):
        torch.testing.assert_close(layer(idx), layer.weight_loc[idx].detach(), rtol=0, atol=0)
    assert seen[-1] == ("weight", "parameter", (V, D))
