"""Rank-1 Bayesian layers (``bayesian_layers.layers.rank1``) and the member template
(``layers.estimators.rank1``): member ``m`` is the plain layer with the effective weight
``W ∘ (r_m s_mᵀ)`` exactly, the KL is the members' average of the closed form, the pure
kernel and the forward pass pass ``gradcheck``, bad inputs raise naming the layer,
``from_torch``, ``state_dict`` and ``bl.predict`` over members."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Cauchy, Normal, kl_divergence

import bayesian_layers as bl
from bayesian_layers.layers.conv_base import ConvOp
from bayesian_layers.layers.estimators.rank1 import FactorNormalKLDivergence, rank1_output
from bayesian_layers.layers.functional.convolution import ConvSpec
from bayesian_layers.layers.linear import LINEAR
from bayesian_layers.layers.rank1 import Conv2dRank1, LinearRank1
from bayesian_layers.regularizers import MonteCarloKLDivergence, NormalKLDivergence

E = 3
RANDOM_BIAS = {"bias_initializer": "trainable_normal", "bias_regularizer": "normal_kl_divergence"}


def random_params(layer: nn.Module) -> None:
    """Locs ~ N(0, 1), scales ~ U(0.3, 0.8)."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                p.copy_(torch.empty_like(p).uniform_(0.3, 0.8).expm1().log())  # softplus⁻¹
            else:
                p.normal_()


def conv_effective_weight(w: torch.Tensor, r: torch.Tensor, s: torch.Tensor, groups: int):
    """``W[o, j] r[o] s[c(o, j)]``, ``c`` the input channel weight ``(o, j)`` meets."""
    out, per_group = w.shape[0], w.shape[1]
    s_of = s.view(groups, per_group)[torch.arange(out) // (out // groups)]  # (out, in/g)
    return w * r.view(-1, 1, 1, 1) * s_of[..., None, None]


@pytest.mark.parametrize("bias", [True, False])
def test_linear_member_is_f_linear_with_the_effective_weight(bias: bool) -> None:
    layer = LinearRank1(4, 5, bias, ensemble_size=E, dtype=torch.float64, **RANDOM_BIAS)
    random_params(layer)
    x = torch.randn(E * 2, 7, 4, dtype=torch.float64)  # extra dims between batch and features
    y = layer(x)
    r, s = layer.r.value, layer.s.value  # this call's draws, (E, out), (E, in)
    assert r.shape == (E, 5) and s.shape == (E, 4)
    b = layer.bias.value if bias else None
    for m, (xm, ym) in enumerate(zip(x.chunk(E), y.chunk(E), strict=True)):
        w = layer.weight * torch.outer(r[m], s[m])
        expected = F.linear(xm, w, None if b is None else b[m])
        torch.testing.assert_close(ym, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs", [{"padding": 1}, {"stride": 2, "groups": 2, "padding_mode": "reflect", "padding": 1}]
)
def test_conv_member_is_f_conv2d_with_the_effective_weight(kwargs: dict) -> None:
    layer = Conv2dRank1(4, 6, 3, ensemble_size=E, dtype=torch.float64, **kwargs, **RANDOM_BIAS)
    random_params(layer)
    reference = nn.Conv2d(4, 6, 3, **kwargs, dtype=torch.float64)
    x = torch.randn(E * 2, 4, 7, 7, dtype=torch.float64)
    y = layer(x)
    r, s, b = layer.r.value, layer.s.value, layer.bias.value
    for m, (xm, ym) in enumerate(zip(x.chunk(E), y.chunk(E), strict=True)):
        groups = kwargs.get("groups", 1)
        w = conv_effective_weight(layer.weight, r[m], s[m], groups)
        expected = reference._conv_forward(xm, w, b[m])
        torch.testing.assert_close(ym, expected, rtol=1e-12, atol=1e-12)


def test_members_draw_afresh_each_call_and_frozen_mode_keeps_one_draw() -> None:
    layer = LinearRank1(3, 2, ensemble_size=E)
    x = torch.randn(E, 3)
    assert not torch.equal(layer(x), layer(x))
    with bl.frozen_sample(layer):
        first = layer(x)
        assert torch.equal(layer(x), first)
        bl.resample(layer)
        assert not torch.equal(layer(x), first)
    with bl.posterior_mean(layer):
        mean = layer(x)
        w = layer.weight * torch.outer(layer.r_loc[1], layer.s_loc[1])
        torch.testing.assert_close(mean[1], F.linear(x[1], w, layer.bias[1]))


@pytest.mark.parametrize("cls", [LinearRank1, Conv2dRank1])
def test_kl_is_the_members_average_of_the_closed_form(cls: type) -> None:
    args = (3, 4) if cls is LinearRank1 else (3, 4, 3)
    prior = NormalKLDivergence(0.5, 2.0)
    layer = cls(*args, ensemble_size=E, s_regularizer=prior, **RANDOM_BIAS)
    random_params(layer)
    terms = layer.kl_terms()
    assert sorted(terms) == ["bias", "r", "s"]
    priors = {"r": Normal(1.0, 1.0), "s": Normal(0.5, 2.0), "bias": Normal(0.0, 1.0)}
    for name, p in priors.items():
        loc, scale = layer.posterior_loc_scale(name)  # (E, d)
        per_member = [kl_divergence(Normal(loc[m], scale[m]), p).sum() for m in range(E)]
        torch.testing.assert_close(terms[name], torch.stack(per_member).mean(), rtol=1e-6, atol=0)
    model = nn.Sequential(layer, nn.ReLU())
    torch.testing.assert_close(sum(bl.losses(model)), sum(terms.values()))


def test_default_prior_is_normal_around_one() -> None:
    layer = LinearRank1(3, 2, ensemble_size=2)
    assert isinstance(layer.r_regularizer, FactorNormalKLDivergence)
    assert layer.r_regularizer.prior_loc.item() == 1.0
    assert layer.r_regularizer.prior_scale.item() == 1.0


def test_a_cauchy_prior_gives_the_monte_carlo_kl_of_the_latest_draw() -> None:
    layer = LinearRank1(
        3, 2, ensemble_size=E, r_regularizer=MonteCarloKLDivergence(Cauchy(1.0, 0.1))
    )
    layer(torch.randn(E, 3))
    value = layer.r.value
    loc, scale = layer.posterior_loc_scale("r")
    q, p = Normal(loc, scale), Cauchy(torch.tensor(1.0), torch.tensor(0.1))
    expected = (q.log_prob(value) - p.log_prob(value)).sum() / E
    torch.testing.assert_close(layer.kl_terms()["r"], expected)


def test_rank1_kernel_passes_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    inputs = (t(4, 3), t(2, 3), t(2, 2), t(2, 3), t(2, 2))  # x, W, r, s, b (G = 2)
    assert torch.autograd.gradcheck(lambda *a: rank1_output(LINEAR, *a, channel_dim=-1), inputs)
    op = ConvOp(ConvSpec((1, 1), (1, 1), (1, 1), 2))  # groups 2
    conv_inputs = (t(2, 4, 3, 3), t(2, 2, 2, 2), t(2, 2), t(2, 4), t(2, 2))
    for whole in (False, True):

        def f(*a: torch.Tensor, whole: bool = whole) -> torch.Tensor:
            return rank1_output(op, *a, channel_dim=1, whole_weights=whole, groups=2)

        assert torch.autograd.gradcheck(f, conv_inputs)


@pytest.mark.parametrize("groups", [1, 2])
def test_the_factor_and_the_whole_weight_forms_agree(groups: int) -> None:
    """Both forms of the kernel (``x ∘ s`` then the op, or the effective weights in one
    grouped call) give the same output, for dense and convolutional ops."""
    x, w = torch.randn(6, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    r, s, b = (torch.randn(3, n, dtype=torch.float64) for n in (2, 4, 2))
    torch.testing.assert_close(
        rank1_output(LINEAR, x, w, r, s, b), rank1_output(LINEAR, x, w, r, s, b, whole_weights=True)
    )
    op = ConvOp(ConvSpec((2, 2), (1, 1), (1, 1), groups))
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, 3, 3, dtype=torch.float64)
    r, s, b = (torch.randn(3, n, dtype=torch.float64) for n in (6, 4, 6))
    factor = rank1_output(op, x, w, r, s, b, 1)
    whole = rank1_output(op, x, w, r, s, b, 1, whole_weights=True, groups=groups)
    torch.testing.assert_close(factor, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [LinearRank1, Conv2dRank1])
def test_frozen_forward_passes_gradcheck(cls: type) -> None:
    args, shape = ((3, 2), (4, 3)) if cls is LinearRank1 else ((2, 2, 2), (2, 2, 3, 3))
    layer = cls(*args, ensemble_size=2, dtype=torch.float64, **RANDOM_BIAS)
    random_params(layer)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())
    with bl.frozen_sample(layer):

        def f(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
            state = dict(zip((n for n, _ in layer.named_parameters()), values, strict=True))
            return torch.func.functional_call(layer, state, (x,))

        assert torch.autograd.gradcheck(f, (x, *(p.detach().requires_grad_() for p in params)))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((3, 2), {"ensemble_size": 0}, r"LinearRank1 expected `ensemble_size` >= 1, got 0"),
        ((3, 2), {"ensemble_size": 2.5}, r"LinearRank1 expected `ensemble_size` to be an int"),
        ((3, 2), {"ensemble_size": True}, r"LinearRank1 expected `ensemble_size` to be an int"),
        ((3, 2), {"factor_init_std": -1.0}, r"LinearRank1 expected `factor_init_std` >= 0"),
        ((3, 2), {"r_initializer": "trainable_log_normal"}, r"LinearRank1 needs a normal"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_layer(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        LinearRank1(*args, **kwargs)
    with pytest.raises((ValueError, TypeError), match=match.replace("LinearRank1", "Conv2dRank1")):
        Conv2dRank1(*args, 3, **kwargs)


def test_bad_inputs_raise_naming_the_layer_and_shapes() -> None:
    layer = LinearRank1(3, 2, ensemble_size=4)
    with pytest.raises(
        ValueError, match=r"LinearRank1 .*ensemble_size=4.*divisible by 4.*\(6, 3\)"
    ):
        layer(torch.randn(6, 3))
    with pytest.raises(
        ValueError, match=r"LinearRank1 expected input of shape \(N, \*, 3\), got \(4, 5\)"
    ):
        layer(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"LinearRank1 expected a batched input"):
        layer(torch.randn(3))
    with pytest.raises(TypeError, match=r"LinearRank1 expected `input` of dtype torch.float32"):
        layer(torch.randn(4, 3, dtype=torch.float64))
    with bl.vectorized_samples(layer, 6), pytest.raises(ValueError, match=r"multiple of 4, got 6"):
        layer(torch.randn(12, 3))
    conv = Conv2dRank1(3, 2, 3, ensemble_size=2)
    with pytest.raises(ValueError, match=r"Conv2dRank1 .*divisible by 2.*\(3, 3, 5, 5\)"):
        conv(torch.randn(3, 3, 5, 5))
    with pytest.raises(ValueError, match=r"Conv2dRank1 expected input of shape \(N, 3, H, W\)"):
        conv(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"Conv2dRank1 expected a batched input"):
        conv(torch.randn(3, 5, 5))


def test_one_member_accepts_any_batch_and_unbatched_inputs() -> None:
    layer = LinearRank1(3, 2, ensemble_size=1)
    assert layer(torch.randn(3)).shape == (2,)
    assert layer(torch.randn(5, 3)).shape == (5, 2)
    assert Conv2dRank1(3, 2, 3, ensemble_size=1)(torch.randn(3, 5, 5)).shape == (2, 3, 3)


@pytest.mark.parametrize("cls", [LinearRank1, Conv2dRank1])
def test_from_torch_starts_at_the_torch_weights(cls: type) -> None:
    module = nn.Linear(3, 4) if cls is LinearRank1 else nn.Conv2d(3, 4, 3, padding=1, stride=2)
    layer = cls.from_torch(module, ensemble_size=E)
    assert torch.equal(layer.weight, module.weight)
    assert all(torch.equal(b, module.bias) for b in layer.bias)
    loc = torch.cat([layer.r_loc.flatten(), layer.s_loc.flatten()]).detach()
    assert 0.0 < float((loc - 1).abs().max()) < 0.6  # 1 + 0.1 ε: small noise around 1
    exact = cls.from_torch(module, ensemble_size=E, factor_init_std=0.0)
    x = torch.randn(E, 3) if cls is LinearRank1 else torch.randn(E, 3, 6, 6)
    with bl.posterior_mean(exact):
        torch.testing.assert_close(exact(x), module(x))
    with pytest.raises(TypeError, match=cls.__name__):
        cls.from_torch(nn.Conv1d(3, 4, 3) if cls is LinearRank1 else nn.Linear(3, 4))


@pytest.mark.parametrize("cls", [LinearRank1, Conv2dRank1])
def test_state_dict_round_trips_through_a_weights_only_load(cls: type) -> None:
    args = (3, 4) if cls is LinearRank1 else (3, 4, 3)
    kwargs = {"ensemble_size": E, "r_regularizer": NormalKLDivergence(0.5, 3.0)}
    layer = cls(*args, **kwargs, **RANDOM_BIAS)
    random_params(layer)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    other = cls(*args, **kwargs, **RANDOM_BIAS)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    for (n, a), (_, b) in zip(layer.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    x = torch.randn(E, 3) if cls is LinearRank1 else torch.randn(E, 3, 5, 5)
    with bl.posterior_mean(layer), bl.posterior_mean(other):
        assert torch.equal(layer(x), other(x))
    torch.testing.assert_close(sum(layer.losses), sum(other.losses))


def test_extra_repr_mirrors_torch_and_names_the_ensemble() -> None:
    assert LinearRank1(3, 2).extra_repr() == (
        "in_features=3, out_features=2, bias=True, ensemble_size=4"
    )
    conv = Conv2dRank1(3, 8, 3, padding=1, bias=False, ensemble_size=2)
    assert conv.extra_repr() == (
        "3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False, ensemble_size=2"
    )
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (3, 8, (3, 3))


def test_predict_takes_sample_k_from_member_k_mod_e() -> None:
    layer = LinearRank1(3, 2, ensemble_size=E)
    random_params(layer)
    x = torch.randn(5, 3)
    pred = bl.predict(layer, x, num_samples=2 * E)
    assert pred.samples.shape == (2 * E, 5, 2)
    assert not torch.equal(pred.samples[0], pred.samples[E])  # own draws per sample
    with torch.no_grad():
        layer.r_rho.fill_(-100.0)  # scale ≈ 0: each member is its posterior mean
        layer.s_rho.fill_(-100.0)
    pred = bl.predict(layer, x, num_samples=2 * E, chunk_size=E)
    with bl.posterior_mean(layer), torch.no_grad():
        members = layer(x.repeat(E, 1)).view(E, 5, 2)
    torch.testing.assert_close(pred.samples, members.repeat(2, 1, 1))
    with pytest.raises(ValueError, match=r"multiple of 3, got 4"):
        bl.predict(layer, x, num_samples=4)
    with pytest.raises(ValueError, match=r"vectorized=False"):
        bl.predict(layer, x, num_samples=E, vectorized=False)
