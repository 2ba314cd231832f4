"""Tests for ``layers/mean_functions.py``: shapes, values, trainability and bad input."""

from __future__ import annotations

import pytest
import torch

from bayesian_layers.layers import ConstantMean, LinearMean, ZeroMean


def test_zeros_broadcastable():
    out = ZeroMean()(torch.randn(2, 5, 3))
    assert out.shape == (2, 5, 1) and out.abs().max() == 0


def test_constant_scalar_and_per_unit():
    x = torch.randn(4, 3)
    assert ConstantMean(1.5)(x).shape == (4, 1) and (ConstantMean(1.5)(x) == 1.5).all()
    per_unit = ConstantMean(torch.tensor([1.0, -2.0]))(x)
    assert per_unit.shape == (4, 2)
    torch.testing.assert_close(per_unit, torch.tensor([1.0, -2.0]).expand(4, 2))
    assert [n for n, _ in ConstantMean(1.0).named_parameters()] == ["value"]
    assert list(ConstantMean(1.0, trainable=False).parameters()) == []


def test_linear_mean_identity_and_rectangular():
    x = torch.randn(6, 3, dtype=torch.float64)
    assert torch.equal(LinearMean(3, 3, init="identity", dtype=torch.float64)(x), x)
    narrow = LinearMean(3, 2, init="identity", dtype=torch.float64)(x)
    torch.testing.assert_close(narrow, x[:, :2])
    zero = LinearMean(3, 4)(x.float())
    assert zero.shape == (6, 4) and zero.abs().max() == 0


def test_linear_mean_trains_to_least_squares():
    torch.manual_seed(0)
    x = torch.randn(64, 2, dtype=torch.float64)
    y = x @ torch.tensor([[2.0], [-1.0]], dtype=torch.float64) + 0.5
    m = LinearMean(2, 1, dtype=torch.float64)
    opt = torch.optim.LBFGS(
        m.parameters(),
        max_iter=100,
        tolerance_grad=1e-12,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (m(x) - y).pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(m.weight, torch.tensor([[2.0, -1.0]], dtype=torch.float64))
    torch.testing.assert_close(m.bias, torch.tensor([0.5], dtype=torch.float64))
    frozen = LinearMean(2, 1, trainable=False)
    assert list(frozen.parameters()) == [] and len(list(frozen.buffers())) == 2


def test_bad_input():
    with pytest.raises(ValueError, match=r"LinearMean expected input of shape \(\*, N, 3\)"):
        LinearMean(3, 1)(torch.randn(4, 2))
    with pytest.raises(ValueError, match="positive int in_features, got 0"):
        LinearMean(0, 1)
    with pytest.raises(ValueError, match="init 'zeros' or 'identity', got 'eye'"):
        LinearMean(2, 2, init="eye")
    with pytest.raises(TypeError, match="ZeroMean expected a Tensor"):
        ZeroMean()([1.0])
    with pytest.raises(ValueError, match=r"ConstantMean expected input of shape \(\*, N, D\)"):
        ConstantMean()(torch.randn(3))
    with pytest.raises(ValueError, match="scalar or 1-d value"):
        ConstantMean(torch.ones(2, 2))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1.0, float("nan")]])
def test_constant_rejects_non_finite_values(value) -> None:
    with pytest.raises(ValueError, match=r"ConstantMean expected `value` to be finite, got"):
        ConstantMean(torch.tensor(value) if isinstance(value, list) else value)
