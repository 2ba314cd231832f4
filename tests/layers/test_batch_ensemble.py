"""BatchEnsemble layers (``bayesian_layers.layers.batch_ensemble``): member ``m`` is the
plain layer with the effective weight ``W ∘ (r_m s_mᵀ)`` exactly, ``from_torch`` with
``r = s = 1`` is the torch layer, no penalty, ``gradcheck`` of the forward, bad inputs,
``state_dict`` and ``bl.predict`` with the members as function samples."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesian_layers as bl
from bayesian_layers.layers.batch_ensemble import Conv2dBatchEnsemble, LinearBatchEnsemble

E = 4


def _args(cls: type) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Constructor arguments and a valid input shape (batch ``E``)."""
    return ((3, 5), (E, 3)) if cls is LinearBatchEnsemble else ((3, 5, 3), (E, 3, 6, 6))


def _randomize(layer: nn.Module) -> None:
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()


@pytest.mark.parametrize("bias", [True, False])
def test_linear_member_is_f_linear_with_the_effective_weight(bias: bool) -> None:
    layer = LinearBatchEnsemble(3, 5, bias, ensemble_size=E, dtype=torch.float64)
    _randomize(layer)
    x = torch.randn(E * 3, 3, dtype=torch.float64)
    y = layer(x)
    for m, (xm, ym) in enumerate(zip(x.chunk(E), y.chunk(E), strict=True)):
        w = layer.weight * torch.outer(layer.r[m], layer.s[m])
        expected = F.linear(xm, w, layer.bias[m] if bias else None)
        torch.testing.assert_close(ym, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{"padding": 1}, {"stride": 2, "dilation": 2, "groups": 3}])
def test_conv_member_is_f_conv2d_with_the_effective_weight(kwargs: dict) -> None:
    layer = Conv2dBatchEnsemble(3, 6, 3, ensemble_size=E, dtype=torch.float64, **kwargs)
    _randomize(layer)
    reference = nn.Conv2d(3, 6, 3, **kwargs, dtype=torch.float64)
    groups = kwargs.get("groups", 1)
    x = torch.randn(E * 2, 3, 9, 9, dtype=torch.float64)
    y = layer(x)
    for m, (xm, ym) in enumerate(zip(x.chunk(E), y.chunk(E), strict=True)):
        s_of = layer.s[m].view(groups, -1)[torch.arange(6) // (6 // groups)]  # (out, in/g)
        w = layer.weight * layer.r[m].view(-1, 1, 1, 1) * s_of[..., None, None]
        expected = reference._conv_forward(xm, w, layer.bias[m])
        torch.testing.assert_close(ym, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cls", [LinearBatchEnsemble, Conv2dBatchEnsemble])
def test_from_torch_with_unit_factors_is_the_torch_layer(cls: type, bias: bool) -> None:
    args, shape = _args(cls)
    module = (nn.Linear if cls is LinearBatchEnsemble else nn.Conv2d)(*args, bias=bias)
    layer = cls.from_torch(module, ensemble_size=E)
    assert torch.equal(layer.r, torch.ones(E, 5)) and torch.equal(layer.s, torch.ones(E, 3))
    x = torch.randn(shape)
    torch.testing.assert_close(layer(x), module(x), rtol=0, atol=1e-6)
    assert layer.use_bias is bias and (layer.bias is None) is (not bias)
    with pytest.raises(TypeError, match=cls.__name__):
        cls.from_torch(nn.Conv1d(3, 5, 3) if cls is LinearBatchEnsemble else nn.Linear(3, 5))


@pytest.mark.parametrize("cls", [LinearBatchEnsemble, Conv2dBatchEnsemble])
def test_point_estimates_no_losses_and_the_same_function_every_call(cls: type) -> None:
    args, shape = _args(cls)
    layer = cls(*args, ensemble_size=E)
    x = torch.randn(shape)
    assert layer.losses == [] and bl.losses(nn.Sequential(layer)) == []
    assert list(layer.named_random_parameters()) == []
    assert torch.equal(layer(x), layer(x))
    # the members differ from the start (factors 1 + 0.5 ε)
    out = layer(x[:1].repeat(E, *([1] * (x.dim() - 1))))
    assert not torch.equal(out[0], out[1])
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"weight", "bias", "r", "s"}


@pytest.mark.parametrize("cls", [LinearBatchEnsemble, Conv2dBatchEnsemble])
def test_forward_passes_gradcheck(cls: type) -> None:
    args, shape = ((3, 2), (4, 3)) if cls is LinearBatchEnsemble else ((2, 2, 2), (2, 2, 3, 3))
    layer = cls(*args, ensemble_size=2, dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]

    def f(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, dict(zip(names, values, strict=True)), (x,))

    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(f, (x, *params))


def test_bad_inputs_and_hyperparameters_raise_naming_the_layer() -> None:
    with pytest.raises(ValueError, match=r"LinearBatchEnsemble expected `ensemble_size` >= 1"):
        LinearBatchEnsemble(3, 2, ensemble_size=0)
    with pytest.raises(ValueError, match=r"Conv2dBatchEnsemble expected `ensemble_size` >= 1"):
        Conv2dBatchEnsemble(3, 2, 3, ensemble_size=-1)
    layer = LinearBatchEnsemble(3, 2, ensemble_size=E)
    with pytest.raises(ValueError, match=r"LinearBatchEnsemble .*divisible by 4.*\(5, 3\)"):
        layer(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"LinearBatchEnsemble expected input of shape"):
        layer(torch.randn(4, 2))
    conv = Conv2dBatchEnsemble(3, 2, 3, ensemble_size=E)
    with pytest.raises(ValueError, match=r"Conv2dBatchEnsemble .*divisible by 4.*\(2, 3, 5, 5\)"):
        conv(torch.randn(2, 3, 5, 5))


@pytest.mark.parametrize("cls", [LinearBatchEnsemble, Conv2dBatchEnsemble])
def test_state_dict_round_trips_through_a_weights_only_load(cls: type) -> None:
    args, shape = _args(cls)
    layer = cls(*args, ensemble_size=E)
    _randomize(layer)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    other = cls(*args, ensemble_size=E)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(shape)
    assert torch.equal(layer(x), other(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        cls(*args, ensemble_size=2).load_state_dict(layer.state_dict())


@pytest.mark.parametrize("cls", [LinearBatchEnsemble, Conv2dBatchEnsemble])
def test_predict_treats_the_members_as_function_samples(cls: type) -> None:
    args, shape = _args(cls)
    model = nn.Sequential(cls(*args, ensemble_size=E), nn.ReLU())
    x = torch.randn(2, *shape[1:])
    pred = bl.predict(model, x, num_samples=E)
    with torch.no_grad():
        members = model(x.repeat(E, *([1] * (x.dim() - 1)))).view(E, *pred.samples.shape[1:])
    torch.testing.assert_close(pred.samples, members)  # sample m is member m
    torch.testing.assert_close(pred.mean, members.mean(0))
    twice = bl.predict(model, x, num_samples=2 * E, chunk_size=3)  # chunks of E
    torch.testing.assert_close(twice.samples, members.repeat(2, *([1] * (members.dim() - 1))))
    with pytest.raises(ValueError, match=r"ensemble_size 4.*multiple of 4, got 6"):
        bl.predict(model, x, num_samples=6)


def test_predict_with_two_ensemble_sizes_takes_their_least_common_multiple() -> None:
    model = nn.Sequential(LinearBatchEnsemble(3, 4, ensemble_size=2), nn.ReLU(),
                          LinearBatchEnsemble(4, 2, ensemble_size=3))  # fmt: skip
    x = torch.randn(2, 3)
    assert bl.predict(model, x, num_samples=6).samples.shape == (6, 2, 2)
    with pytest.raises(ValueError, match=r"multiple of 6, got 4"):
        bl.predict(model, x, num_samples=4)


@pytest.mark.parametrize("cls", [LinearBatchEnsemble, Conv2dBatchEnsemble])
def test_bf16_autocast_gives_torchs_output_dtype_and_float32_gradients(cls: type) -> None:
    """(The contract suite's autocast checks read posterior scales, which these point
    estimates lack, so the family checks it here.)"""
    args, shape = _args(cls)
    layer, x = cls(*args, ensemble_size=E), torch.randn(shape)
    reference = (nn.Linear if cls is LinearBatchEnsemble else nn.Conv2d)(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = layer(x), reference(x)
    assert out.dtype == expected.dtype == torch.bfloat16
    full = layer(x)
    torch.testing.assert_close(out.float(), full, rtol=0, atol=2**-5 * full.abs().max().item())
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())
