"""``load_state_dict`` into every weight layer is all or nothing: a state dict with a
wrong shape or a missing key raises and leaves every parameter and buffer as it was
(nested submodules included: attention's ``out_proj``, every recurrent layer), and a
good one loads exactly. One registry line per layer."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from bayesian_layers import layers

BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "LinearFlipout": lambda: layers.LinearFlipout(3, 2, bias_initializer="trainable_normal"),
    "Conv2dReparameterization": lambda: layers.Conv2dReparameterization(2, 3, 3),
    "ConvTranspose1dFlipout": lambda: layers.ConvTranspose1dFlipout(2, 3, 2),
    "LSTMCellFlipout": lambda: layers.LSTMCellFlipout(3, 4),
    "GRUCellReparameterization": lambda: layers.GRUCellReparameterization(3, 4),
    "LSTMReparameterization": lambda: layers.LSTMReparameterization(
        3, 4, num_layers=2, bidirectional=True
    ),
    "LSTMFlipout": lambda: layers.LSTMFlipout(3, 4, num_layers=2),
    "MultiheadAttentionReparameterization": lambda: layers.MultiheadAttentionReparameterization(
        4, 2, add_bias_kv=True
    ),
    "MultiheadAttentionFlipout": lambda: layers.MultiheadAttentionFlipout(4, 2),
    "EmbeddingReparameterization": lambda: layers.EmbeddingReparameterization(5, 3),
}
NAMES = list(BUILDERS)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _other(name: str) -> dict[str, torch.Tensor]:
    """The state of a second, differently initialised layer of the same class."""
    torch.manual_seed(1)
    return _snapshot(BUILDERS[name]())


@pytest.mark.parametrize("name", NAMES)
def test_good_state_dict_loads_exactly(name: str) -> None:
    layer, state = BUILDERS[name](), _other(name)
    layer.load_state_dict(state)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("name", NAMES)
def test_wrong_shape_raises_and_changes_nothing(name: str, where: str) -> None:
    layer = BUILDERS[name]()
    before = _snapshot(layer)
    state = _other(name)
    key = [k for k, v in state.items() if v.is_floating_point()][0 if where == "first" else -1]
    state[key] = torch.zeros(*state[key].shape, 2)
    with pytest.raises(RuntimeError, match=key.replace(".", r"\.")):
        layer.load_state_dict(state)
    for k, value in layer.state_dict().items():
        assert torch.equal(value, before[k]), f"{k} changed by a failed load"


@pytest.mark.parametrize("name", NAMES)
def test_missing_key_raises_and_changes_nothing(name: str) -> None:
    layer = BUILDERS[name]()
    before = _snapshot(layer)
    state = _other(name)
    missing = next(reversed(state))
    del state[missing]
    with pytest.raises(RuntimeError, match="Missing key"):
        layer.load_state_dict(state)
    for k, value in layer.state_dict().items():
        assert torch.equal(value, before[k]), f"{k} changed by a failed load"
