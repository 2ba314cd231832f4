"""The per-call store of ``bl.predict``: output moments that the one-sample chunks of a
recorded prefix reuse (``predictive_moments``), never outside the call, never for
another tensor or a tensor changed in place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers.layers._base.overrides import PredictiveCall, overriding
from bayesian_layers.layers.estimators import op as op_module
from bayesian_layers.layers.linear import LINEAR


class Head(nn.Module):
    """A deterministic trunk whose output is the Bayesian layer's input itself (as a
    LoRA adapter's down projection reads the recorded output of the layers before)."""

    def __init__(self, cls: type[nn.Module]) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.head = cls(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def _count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = op_module.local_reparameterization_moments

    def counted(*args: object) -> object:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(op_module, "local_reparameterization_moments", counted)
    return calls


@pytest.mark.parametrize("cls", [layers.LinearLocalReparameterization, layers.LinearFlipout])
def test_one_sample_chunks_compute_the_moments_once(
    cls: type[nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    """K = 5 one-sample chunks at the recorded trunk output: the moments once, and the
    samples ``trunk=None``'s (which computes them per chunk) for a fixed seed."""
    torch.manual_seed(0)
    model, x = Head(cls), torch.randn(2, 7, 4)  # a sequence: per-position output noise
    calls = _count(monkeypatch)
    runs = {}
    for trunk in (None, "prefix"):
        torch.manual_seed(1)
        before = calls[0]
        runs[trunk] = bl.predict(model, x, 5, trunk=trunk, chunk_size=1).samples
        runs[f"{trunk} calls"] = calls[0] - before
    assert runs["None calls"] == 5 and runs["prefix calls"] == 1
    assert torch.equal(runs["prefix"], runs[None]) and runs[None].std(0).min() > 0


def test_the_store_lives_for_one_call_and_checks_the_tensor() -> None:
    layer = layers.LinearLocalReparameterization(3, 2)
    loc, scale = layer.posterior_loc_scale("weight")
    assert layer.predictive_store is None  # outside predict: no store

    def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return op_module.predictive_moments(layer, "weight", LINEAR, x, loc, scale, None)

    x = torch.randn(4, 3)
    call = PredictiveCall(marginal=False, store={})
    with torch.no_grad(), overriding([layer], "predictive", call):
        first = moments(x)
        assert moments(x)[0] is first[0]  # the same tensor: reused
        assert moments(x.clone())[0] is not first[0]  # an equal other tensor: computed
        again = moments(x)  # the clone replaced the entry: computed anew
        x.mul_(2.0)  # changed in place: its version moved
        changed = moments(x)
        assert changed[0] is not again[0]
        torch.testing.assert_close(changed[0], 2 * again[0])
    assert layer.predictive_store is None
