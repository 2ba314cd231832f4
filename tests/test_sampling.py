"""Tests for ``bayesian_layers.sampling`` (sampling modes of a whole model) and for
``layers.MCDropout``, whose behaviour is those modes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from stats_util import z_bonferroni
from torch import nn

import bayesian_layers as bl
from bayesian_layers import layers


def make_model() -> nn.Sequential:
    return nn.Sequential(
        layers.LinearReparameterization(3, 8, bias_initializer="trainable_normal"),
        nn.ReLU(),
        layers.LinearFlipout(8, 8),
        layers.MCDropout(0.3),
        layers.LinearLocalReparameterization(8, 2),
    )


def modes(model: nn.Module) -> list[str]:
    return [m.sampling for m in bl.bayesian_modules(model)]


def posterior_mean_output(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The model run on posterior means, by hand."""
    for m in model:
        if isinstance(m, layers.MCDropout):
            continue
        if isinstance(m, layers.BayesianLayer):
            bias = m.bias_loc if isinstance(m.bias, bl.RandomVariable) else m.bias
            x = F.linear(x, m.weight_loc, bias)
        else:
            x = m(x)
    return x


# ======================================================================== modes
def test_bayesian_modules_each_once() -> None:
    shared = layers.LinearFlipout(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, layers.MCDropout(), nn.Linear(4, 4))
    found = list(bl.bayesian_modules(model))
    assert len(found) == 2 and found[0] is shared
    assert list(bl.bayesian_modules(shared)) == [shared]
    assert list(bl.bayesian_modules(nn.Linear(2, 2))) == []
    with pytest.raises(TypeError, match="nn.Module"):
        list(bl.bayesian_modules("model"))  # type: ignore[arg-type]


def test_set_sampling_sets_every_layer_and_returns_previous() -> None:
    model = make_model()
    assert modes(model) == ["sample"] * 4
    model[0].sampling = "frozen"
    previous = bl.set_sampling(model, "mean")
    assert modes(model) == ["mean"] * 4
    assert list(previous.values()) == ["frozen", "sample", "sample", "sample"]
    assert list(previous) == list(bl.bayesian_modules(model))
    with pytest.raises(ValueError, match="set_sampling.*'means'"):
        bl.set_sampling(model, "means")
    assert modes(model) == ["mean"] * 4  # unchanged by the failed call


def test_posterior_mean_context() -> None:
    model = make_model()
    model[2].sampling = "frozen"
    before = modes(model)
    x = torch.randn(5, 3)
    with bl.posterior_mean(model) as inner:
        assert inner is model
        assert modes(model) == ["mean"] * 4
        out = model(x)
        torch.testing.assert_close(model(x), out, rtol=0, atol=0)
        torch.testing.assert_close(out, posterior_mean_output(model, x))
    assert modes(model) == before
    with pytest.raises(RuntimeError, match="boom"), bl.posterior_mean(model):
        raise RuntimeError("boom")
    assert modes(model) == before


def test_frozen_sample_context() -> None:
    model = make_model()
    x = torch.randn(5, 3)
    with bl.frozen_sample(model):
        assert modes(model) == ["frozen"] * 4
        first = model(x)
        torch.testing.assert_close(model(x), first, rtol=0, atol=0)
        with bl.posterior_mean(model):  # nesting: restores "frozen" on exit
            torch.testing.assert_close(model(x), posterior_mean_output(model, x))
        assert modes(model) == ["frozen"] * 4
        torch.testing.assert_close(model(x), first, rtol=0, atol=0)
        bl.resample(model)
        second = model(x)
        assert not torch.allclose(second, first)
        torch.testing.assert_close(model(x), second, rtol=0, atol=0)
    assert modes(model) == ["sample"] * 4
    with bl.frozen_sample(model):  # a new context is a new function
        third = model(x)
    assert not torch.allclose(third, second)
    with pytest.raises(RuntimeError, match="boom"), bl.frozen_sample(model):
        raise RuntimeError("boom")
    assert modes(model) == ["sample"] * 4


def test_frozen_sample_gradients_reach_posterior_parameters() -> None:
    model = make_model()
    with bl.frozen_sample(model):
        model(torch.randn(5, 3)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_vectorized_samples_context() -> None:
    model = make_model()
    with bl.vectorized_samples(model, 4):
        assert [m.num_function_samples for m in bl.bayesian_modules(model)] == [4] * 4
        assert model(torch.randn(4 * 5, 3)).shape == (20, 2)
    assert [m.num_function_samples for m in bl.bayesian_modules(model)] == [1] * 4
    with pytest.raises(RuntimeError, match="boom"), bl.vectorized_samples(model, 3):
        raise RuntimeError("boom")
    assert [m.num_function_samples for m in bl.bayesian_modules(model)] == [1] * 4
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="num_samples"), bl.vectorized_samples(model, bad):
            pass


# ==================================================================== MCDropout
@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_mc_dropout_rejects_p_outside_unit_interval(p: float) -> None:
    with pytest.raises(ValueError, match=r"MCDropout.*\[0, 1\)"):
        layers.MCDropout(p)


def test_mc_dropout_rejects_non_numbers() -> None:
    for bad in (True, "0.5", None):
        with pytest.raises(TypeError, match="MCDropout"):
            layers.MCDropout(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="MCDropout"):
        layers.MCDropout()([1.0, 2.0])  # type: ignore[arg-type]


def test_mc_dropout_stays_on_in_eval_and_mean_is_identity() -> None:
    drop = layers.MCDropout(0.5).eval()
    x = torch.randn(1000) + 5.0
    out = drop(x)
    assert (out == 0).any() and not torch.equal(drop(x), out)
    model = nn.Sequential(nn.Linear(4, 4), drop).eval()
    assert not torch.equal(model(torch.ones(2, 4)), model(torch.ones(2, 4)))
    with bl.posterior_mean(drop):
        assert drop(x) is x or torch.equal(drop(x), x)
    assert torch.equal(layers.MCDropout(0.0)(x), x)
    assert drop.losses == [] and list(drop.parameters()) == []
    assert "p=0.5" in repr(drop)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mc_dropout_rate_matches_p(p: float) -> None:
    """Fraction of zeros among N = 200 000 elements vs p: half-width
    z(1 - α/2k)·sqrt(p(1-p)/N), k = 3 rates, α = 1e-3. Kept elements are scaled
    by 1/(1-p) so that the mean is preserved."""
    n = 200_000
    out = layers.MCDropout(p)(torch.ones(n))
    dropped = (out == 0).double().mean().item()
    assert abs(dropped - p) <= z_bonferroni(3) * math.sqrt(p * (1 - p) / n)
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))


def test_mc_dropout_frozen_mask_is_one_function() -> None:
    """Frozen: one mask over the non-batch dims, the same units dropped for every example."""
    drop = layers.MCDropout(0.5)
    x = torch.rand(6, 4, 50) + 1.0
    with bl.frozen_sample(drop):
        first = drop(x)
        torch.testing.assert_close(drop(x), first, rtol=0, atol=0)
        zero = first == 0
        assert zero.any() and (zero == zero[:1]).all()  # same pattern for every example
        torch.testing.assert_close(drop(x[:2]), first[:2])  # another batch size
        bl.resample(drop)
        assert not torch.equal(drop(x) == 0, zero)
    with bl.frozen_sample(drop), bl.vectorized_samples(drop, 3):
        out = drop(torch.ones(3 * 4, 50)).view(3, 4, 50)
        zero = out == 0
        assert (zero == zero[:, :1]).all()  # one mask per function sample...
        assert not torch.equal(zero[0], zero[1])  # ...different across samples
        with pytest.raises(ValueError, match="multiple of 3"):
            drop(torch.ones(4, 50))
