"""Moves keep the public path: old module paths, old names and whole-module checkpoints
saved before the package was laid out by family (version 0.1.0 layout) still work."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers._moved import MOVED_MODULES

CHECKPOINT = Path(__file__).parent / "data" / "checkpoints" / "modules_0.1.0.pt"


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_module_path_warns_and_is_the_new_module(old: str) -> None:
    name = f"bayesian_layers.{old}"
    sys.modules.pop(name, None)
    with pytest.warns(
        DeprecationWarning, match=f"{name} moved to bayesian_layers.{MOVED_MODULES[old]}"
    ):
        module = importlib.import_module(name)
    assert module is importlib.import_module(f"bayesian_layers.{MOVED_MODULES[old]}")


def test_unknown_old_path_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("bayesian_layers.layers.no_such_module")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Zeros", layers.gp.ZeroMean),
        ("Constant", layers.gp.ConstantMean),
        ("cholesky_with_jitter", layers.gp.cholesky_with_jitter),
        ("MultivariateNormalColumns", layers.gp.MultivariateNormalColumns),
    ],
)
def test_old_layer_names_warn_and_resolve(old: str, new: object) -> None:
    with pytest.warns(DeprecationWarning, match=f"layers.{old} is deprecated"):
        assert getattr(layers, old) is new
    assert old not in layers.__all__


def test_a_checkpoint_of_whole_modules_from_the_old_layout_loads_and_runs() -> None:
    """Pickled with every class at its old module path (``layers.linear``,
    ``layers.gaussian_process``, ``layers.flows``, ...) and the base's load hook."""
    for old in MOVED_MODULES:  # as in a fresh process
        sys.modules.pop(f"bayesian_layers.{old}", None)
    with pytest.warns(DeprecationWarning) as caught:
        saved = torch.load(CHECKPOINT, weights_only=False)
    messages = " ".join(str(w.message) for w in caught)
    assert "layers.linear" not in messages  # still a module of its own: no warning
    assert "bayesian_layers.layers.gaussian_process moved to" in messages
    assert "means.Constant is deprecated" in messages
    mlp, x = saved["mlp"], saved["x"]
    with bl.posterior_mean(mlp):
        torch.testing.assert_close(mlp(x), saved["mlp_mean_output"], rtol=0, atol=0)
    assert isinstance(mlp[0], layers.LinearFlipout)
    assert mlp(x).shape == (5, 2) and torch.isfinite(mlp(x)).all()
    assert [t.shape for t in bl.losses(mlp)] == [torch.Size([]), torch.Size([])]
    # the state dict round-trips into freshly built layers of the new layout
    fresh = torch.nn.Sequential(
        layers.LinearFlipout(3, 4), torch.nn.ReLU(), layers.LinearReparameterization(4, 2)
    )
    fresh.load_state_dict(mlp.state_dict())
    with bl.posterior_mean(fresh):
        torch.testing.assert_close(fresh(x), saved["mlp_mean_output"], rtol=0, atol=0)
    assert saved["conv"](torch.randn(2, 1, 5, 5)).shape == (2, 2, 3, 3)
    h, c = saved["lstm"](torch.randn(2, 3))
    assert h.shape == c.shape == (2, 4)
    out, _ = saved["att"](*(torch.randn(3, 2, 4),) * 3)
    assert out.shape == (3, 2, 4)
    assert isinstance(saved["flow"], layers.RealNVP) and isinstance(
        saved["flow"].network, layers.MADE
    )
    assert saved["out"](torch.randn(2, 3)).sample().shape == (2, 2)
    gp = saved["gp"]
    assert isinstance(gp.mean_fn, layers.gp.ConstantMean)
    assert gp(torch.randn(4, 1)).shape == (4, 1)
