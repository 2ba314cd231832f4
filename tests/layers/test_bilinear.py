"""The Bayesian bilinear family (``bayesian_layers.layers.bilinear``): the family's own
math. Output moments against the closed form, posterior scale 0 against
``nn.Bilinear``, ``from_torch`` and its registration, bad inputs, the batched op."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesian_layers as bl
from bayesian_layers.layers import bilinear as B
from bayesian_layers.layers import registry

LAYERS = [B.BilinearReparameterization, B.BilinearFlipout, B.BilinearLocalReparameterization]
parametrize_layers = pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
IN1, IN2, OUT = 3, 4, 2
RANDOM_BIAS = {"bias_initializer": "trainable_normal", "bias_regularizer": "normal_kl_divergence"}


def random_params(layer: nn.Module) -> None:
    """Locs ~ N(0, 1), scales ~ U(0.3, 0.8)."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                p.copy_(torch.empty_like(p).uniform_(0.3, 0.8).expm1().log())  # softplus⁻¹
            else:
                p.normal_()


@parametrize_layers
def test_output_moments_match_the_closed_form(cls: type) -> None:
    """Mean ``bilinear(x1, x2, μ, μ_b)``, variance ``bilinear(x1², x2², σ², σ_b²)``.

    Every estimator's output element is normal with these moments (a whole draw, its
    Flipout marginal, or the local reparameterization draw). n = 4000 function samples
    at once; each of the k = 2·B·OUT checks allows 5 standard errors: σ/√n for a mean,
    σ²·√(2/(n-1)) for a variance (normal sample variance), so a false failure has
    probability below k·6e-7 ≈ 1e-5.
    """
    torch.manual_seed(0)
    layer = cls(IN1, IN2, OUT, dtype=torch.float64, **RANDOM_BIAS)
    random_params(layer)
    batch, n = 3, 4000
    x1 = torch.randn(batch, IN1, dtype=torch.float64)
    x2 = torch.randn(batch, IN2, dtype=torch.float64)
    with torch.no_grad(), bl.vectorized_samples(layer, n):
        y = layer(x1.repeat(n, 1), x2.repeat(n, 1)).view(n, batch, OUT)
    loc, scale = layer.weight_loc, F.softplus(layer.weight_rho)
    b_loc, b_scale = layer.bias_loc, F.softplus(layer.bias_rho)
    with torch.no_grad():
        mean = F.bilinear(x1, x2, loc, b_loc)
        var = F.bilinear(x1.square(), x2.square(), scale.square(), b_scale.square())
    assert ((y.mean(0) - mean).abs() <= 5 * var.sqrt() / math.sqrt(n)).all()
    assert ((y.var(0) - var).abs() <= 5 * var * math.sqrt(2 / (n - 1))).all()


@parametrize_layers
@pytest.mark.parametrize("shape", [(), (5,), (2, 3)], ids=str)
def test_zero_scale_equals_torch_on_the_means(cls: type, shape: tuple[int, ...]) -> None:
    layer = cls(IN1, IN2, OUT, **RANDOM_BIAS)
    random_params(layer)
    with torch.no_grad():
        layer.weight_rho.fill_(-100.0)  # softplus(-100) ≈ 4e-44
        layer.bias_rho.fill_(-100.0)
    twin = nn.Bilinear(IN1, IN2, OUT)
    with torch.no_grad():
        twin.weight.copy_(layer.weight_loc)
        twin.bias.copy_(layer.bias_loc)
    x1, x2 = torch.randn(*shape, IN1), torch.randn(*shape, IN2)
    torch.testing.assert_close(layer(x1, x2), twin(x1, x2))
    with bl.posterior_mean(layer):
        torch.testing.assert_close(layer(x1, x2), twin(x1, x2), rtol=0, atol=0)


@parametrize_layers
def test_from_torch_round_trip_and_registration(cls: type) -> None:
    src = nn.Bilinear(IN1, IN2, OUT, dtype=torch.float64)
    layer = cls.from_torch(src)
    assert type(layer) is cls and layer.extra_repr() == src.extra_repr()
    assert layer.weight_loc.dtype == torch.float64
    torch.testing.assert_close(layer.weight_loc, src.weight, rtol=0, atol=0)
    x1 = torch.randn(4, IN1, dtype=torch.float64)
    x2 = torch.randn(4, IN2, dtype=torch.float64)
    with bl.posterior_mean(layer):
        torch.testing.assert_close(layer(x1, x2), src(x1, x2))
    assert cls.from_torch(nn.Bilinear(IN1, IN2, OUT, bias=False)).bias is None
    with pytest.raises(TypeError, match="nn.Bilinear"):
        cls.from_torch(nn.Linear(IN1, OUT))
    assert registry.counterparts(nn.Bilinear)[cls.estimator.name] is cls
    # to_bayesian's entry point reaches it through the registry alone
    converted = bl.to_bayesian(nn.Sequential(src), cls.estimator.name)
    assert type(converted[0]) is cls


@parametrize_layers
def test_bad_inputs_and_arguments_raise(cls: type) -> None:
    layer = cls(IN1, IN2, OUT)
    x1, x2 = torch.randn(5, IN1), torch.randn(5, IN2)
    for a, b in [(x2, x2), (x1, x1), (x1, x2[:4]), (x1[0], x2), (torch.randn(()), x2)]:
        with pytest.raises(ValueError, match=f"{cls.__name__}.*{tuple(a.shape)}"):
            layer(a, b)
    with pytest.raises(TypeError, match=f"{cls.__name__}.*input2.*float64"):
        layer(x1, x2.double())
    with pytest.raises(ValueError, match="in2_features"):
        cls(IN1, 0, OUT)
    with pytest.raises(ValueError, match=f"{cls.__name__}.*multiple of 2"):
        with bl.vectorized_samples(layer, 2):
            layer(x1, x2)
    if cls is not B.BilinearReparameterization:
        with pytest.raises(ValueError, match=cls.__name__):
            cls(IN1, IN2, OUT, weight_initializer="trainable_log_normal")


def test_batched_op_equals_one_call_per_draw() -> None:
    """The op's K-draw path: block i of the input with draw i of weight and bias."""
    op = B.BilinearOp(IN1)
    k, batch = 3, 2
    x = torch.randn(k * batch, 2, IN1 + IN2, dtype=torch.float64)
    w = torch.randn(k, OUT, IN1, IN2, dtype=torch.float64)
    b = torch.randn(k, OUT, dtype=torch.float64)
    out = op.batched(x, w, b, k)
    blocks = x.view(k, batch, 2, -1)
    loop = torch.cat([op(blocks[i], w[i], b[i]) for i in range(k)])
    torch.testing.assert_close(out, loop)


def test_frozen_sample_is_one_function_and_flipout_decorrelates_examples() -> None:
    layer = B.BilinearFlipout(IN1, IN2, OUT)
    random_params(layer)
    x1, x2 = torch.randn(1, IN1).repeat(2, 1), torch.randn(1, IN2).repeat(2, 1)
    y = layer(x1, x2)
    assert not torch.allclose(y[0], y[1])  # two examples, pseudo-independent weights
    with bl.frozen_sample(layer):
        a = layer(x1, x2)
        torch.testing.assert_close(a[0], a[1], rtol=0, atol=0)
        torch.testing.assert_close(layer(x1, x2), a, rtol=0, atol=0)
