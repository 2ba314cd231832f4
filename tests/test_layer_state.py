"""A failed ``load_state_dict`` leaves a Bayesian layer as it was: each layer checks all
of its keys (its parameters and buffers and those of its initializer and regularizer
submodules) before copying any, so a wrong shape anywhere in it changes nothing in it;
the error names the key, both shapes and the layer (for every layer:
``tests/contract/test_contract_state.py``). Here: what is reported, layers inside a
model, non-tensor values, strict and non-strict loads with a missing key."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from bayesian_layers import layers
from bayesian_layers.regularizers import NormalKLDivergence


def _prior() -> dict[str, object]:
    return {"weight_regularizer": NormalKLDivergence(0.5, 2.0)}


DENSE: dict[str, Callable[..., nn.Module]] = {
    "LinearReparameterization": lambda **kw: layers.LinearReparameterization(
        3, 2, bias_initializer="trainable_normal", **kw
    ),
    "LinearFlipout": lambda **kw: layers.LinearFlipout(3, 2, **kw),
}


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    target = DENSE[name]()
    torch.manual_seed(1)
    source = DENSE[name](**_prior())
    with torch.no_grad():  # every source value differs from the target's
        for t in source.state_dict().values():
            t.add_(0.25)
    return target, source


def _corrupt(state: dict[str, Tensor], key: str) -> dict[str, Tensor]:
    bad = dict(state)
    bad[key] = torch.zeros(*state[key].shape, 2)  # one more dimension: a wrong shape
    return bad


def test_failed_load_reports_only_the_real_problem() -> None:
    """The keys held back from the layer's submodules are not reported as missing."""
    target, source = _pair("LinearReparameterization")
    state = source.state_dict()
    with pytest.raises(RuntimeError) as info:
        target.load_state_dict(_corrupt(state, "weight_loc"))
    assert "Missing key" not in str(info.value)
    assert "size mismatch for weight_loc" in str(info.value)


def test_in_a_model_only_the_failing_layer_is_held_back() -> None:
    """Layers are checked one by one: a good layer in the same model loads, the bad one
    stays as it was (and the load raises)."""
    torch.manual_seed(0)
    target = nn.Sequential(layers.LinearReparameterization(3, 3), layers.LinearFlipout(3, 2))
    torch.manual_seed(1)
    source = nn.Sequential(
        layers.LinearReparameterization(3, 3), layers.LinearFlipout(3, 2, **_prior())
    )
    state = source.state_dict()
    before = _snapshot(target[1])
    with pytest.raises(RuntimeError, match="size mismatch for 1.weight_rho"):
        target.load_state_dict(_corrupt(state, "1.weight_rho"))
    assert torch.equal(target[0].weight_loc, state["0.weight_loc"])
    for k, v in _snapshot(target[1]).items():
        assert torch.equal(v, before[k]), k


def test_non_tensor_value_is_refused_before_any_copy() -> None:
    target, source = _pair("LinearFlipout")
    state = dict(source.state_dict())
    before = _snapshot(target)
    state["weight_regularizer.prior_scale"] = 2.0  # not a tensor
    with pytest.raises(RuntimeError, match="weight_regularizer.prior_scale"):
        target.load_state_dict(state)
    for k, v in _snapshot(target).items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("inside", [False, True])
def test_strict_load_with_a_missing_key_changes_nothing(inside: bool) -> None:
    """strict=True (the default) and a key missing: nothing in the layer is copied and
    only the truly missing key is reported, whether the layer is loaded directly or
    inside a model."""
    target, source = _pair("LinearFlipout")
    model = nn.Sequential(target) if inside else target
    prefix = "0." if inside else ""
    state = {prefix + k: v for k, v in source.state_dict().items()}
    del state[prefix + "weight_regularizer.prior_scale"]
    before = _snapshot(target)
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(state)
    msg = str(info.value)
    assert f'Missing key(s) in state_dict: "{prefix}weight_regularizer.prior_scale"' in msg
    assert "weight_loc" not in msg
    for k, v in _snapshot(target).items():
        assert torch.equal(v, before[k]), k


def test_non_strict_load_with_a_missing_key_loads_the_rest() -> None:
    """strict=False keeps torch's meaning: present keys load, absent ones are listed."""
    target, source = _pair("LinearReparameterization")
    state = dict(source.state_dict())
    del state["weight_regularizer.prior_loc"]
    result = target.load_state_dict(state, strict=False)
    assert result.missing_keys == ["weight_regularizer.prior_loc"]
    for k, v in state.items():
        assert torch.equal(target.state_dict()[k], v), k
