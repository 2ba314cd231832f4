"""BayesianLayer's shared input check: ``check_input`` unwraps random variables and
rejects non-tensors and wrong dtypes with a TypeError naming the layer, the argument,
the expected and the received dtype; under autocast the autocast dtype is accepted."""

from __future__ import annotations

import pytest
import torch

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers.layers.base import check_input


def _layer(dtype: torch.dtype = torch.float32) -> layers.LinearReparameterization:
    torch.manual_seed(0)
    return layers.LinearReparameterization(3, 2, dtype=dtype)


@pytest.mark.parametrize("wrong", [torch.float64, torch.bfloat16, torch.float16])
def test_check_input_wrong_dtype_names_layer_argument_and_dtypes(wrong: torch.dtype) -> None:
    layer = _layer()
    with pytest.raises(TypeError) as info:
        layer.check_input(torch.zeros(4, 3, dtype=wrong), "input")
    msg = str(info.value)
    for part in ("LinearReparameterization", "`input`", "torch.float32", str(wrong)):
        assert part in msg


def test_check_input_follows_the_parameter_dtype() -> None:
    layer = _layer(torch.float64)
    x = torch.zeros(4, 3, dtype=torch.float64)
    assert layer.check_input(x) is x
    with pytest.raises(TypeError, match=r"expected `hx` of dtype torch.float64, got torch.float32"):
        layer.check_input(torch.zeros(4, 3), "hx")


def test_check_input_unwraps_random_variables_and_rejects_non_tensors() -> None:
    layer = _layer()
    rv = bl.Normal(torch.zeros(4, 3), 1.0)
    out = layer.check_input(rv)
    assert type(out) is torch.Tensor and torch.equal(out, rv.value)
    with pytest.raises(
        TypeError, match=r"LinearReparameterization expected `input` to be a Tensor, got list"
    ):
        layer.check_input([[0.0, 1.0, 2.0]])


def test_check_input_index_inputs_skip_the_dtype_check() -> None:
    layer = _layer()
    idx = torch.arange(3)
    assert layer.check_input(idx, "indices", floating=False) is idx


def test_check_input_accepts_the_autocast_dtype_only_under_autocast() -> None:
    layer = _layer()
    x16 = torch.zeros(4, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.check_input(x16) is x16
        assert layer.check_input(torch.zeros(4, 3)).dtype == torch.float32
        with pytest.raises(
            TypeError,
            match=r"torch.float32 \(or torch.bfloat16 under autocast\), got torch.float64",
        ):
            layer.check_input(torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError):
        layer.check_input(x16)


def test_check_input_function_without_dtype_only_unwraps() -> None:
    x = torch.zeros(2, dtype=torch.int64)
    assert check_input(x, "Owner") is x
    with pytest.raises(TypeError, match="Owner expected `query` to be a Tensor, got int"):
        check_input(3, "Owner", "query")


def test_losses_of_a_normal_family_with_its_own_scale() -> None:
    """A normal family that computes its scale otherwise (not softplus(rho)) gets the KL
    of that scale: layers only take the stable softplus path for TrainableNormal's."""
    from torch.distributions import Normal, kl_divergence

    from bayesian_layers.initializers import TrainableNormal

    class ExpNormal(TrainableNormal):
        def loc_scale(self, owner, prefix):  # noqa: ANN001, ANN202
            p = self.params(owner, prefix)
            return p["loc"], p["rho"].exp()

    torch.manual_seed(0)
    layer = layers.LinearReparameterization(3, 2, weight_initializer=ExpNormal())
    expected = kl_divergence(
        Normal(layer.weight_loc, layer.weight_rho.exp()), Normal(0.0, 1.0)
    ).sum()
    torch.testing.assert_close(layer.losses[0], expected)


def test_base_keeps_the_names_its_private_modules_now_hold() -> None:
    """The split of the layer base keeps every name importable from ``layers.base``."""
    from bayesian_layers.layers import base
    from bayesian_layers.layers._base import input as _input
    from bayesian_layers.layers._base import overrides as _overrides
    from bayesian_layers.layers._base import seam as _seam

    assert base.check_input is _input.check_input
    assert base.as_tensor is _input.as_tensor
    assert base.parameter_dtype is _input.parameter_dtype
    assert base.push_override is _overrides.push_override
    assert base.pop_override is _overrides.pop_override
    assert base.ParameterSpec is _seam.ParameterSpec
    assert base.SAMPLING_MODES == ("sample", "mean", "frozen")
