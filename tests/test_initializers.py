"""Tests for ``bayesian_layers.initializers``: trainable weight distributions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from stats_util import ALPHA, z_bonferroni
from torch import nn
from torch.distributions import HalfCauchy, LogNormal, Normal, TransformedDistribution

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers.initializers import (
    INITIALIZERS,
    TrainableDeterministic,
    TrainableGlorotNormal,
    TrainableHalfCauchy,
    TrainableHeNormal,
    TrainableInitializer,
    TrainableLogNormal,
    TrainableNormal,
    fans,
    get_initializer,
    inverse_softplus,
)


def _is_shifted_half_cauchy(d: object) -> bool:
    return isinstance(d, TransformedDistribution) and isinstance(d.base_dist, HalfCauchy)


FAMILIES = [
    (TrainableNormal, lambda d: type(d) is Normal, {"loc", "rho"}),
    (TrainableHeNormal, lambda d: type(d) is Normal, {"loc", "rho"}),
    (TrainableGlorotNormal, lambda d: type(d) is Normal, {"loc", "rho"}),
    (TrainableLogNormal, lambda d: isinstance(d, LogNormal), {"loc", "rho"}),
    (TrainableHalfCauchy, _is_shifted_half_cauchy, {"loc", "rho"}),
    (TrainableDeterministic, lambda d: isinstance(d, bl.DeterministicDistribution), {"loc"}),
]
FAMILY_IDS = [f[0].__name__ for f in FAMILIES]
# the families with a scale parameter rho
SCALED = [TrainableNormal, TrainableHeNormal, TrainableGlorotNormal]
SCALED += [TrainableLogNormal, TrainableHalfCauchy]


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_standalone_returns_random_variable(family: tuple) -> None:
    cls, is_family, names = family
    init = cls((2, 3))
    rv = init()
    assert isinstance(rv, bl.RandomVariable)
    assert is_family(rv.distribution), type(rv.distribution)
    assert rv.shape == (2, 3) and rv.distribution.batch_shape == (2, 3)
    assert {n for n, _ in init.named_parameters()} == names
    assert all(p.shape == (2, 3) for p in init.parameters())
    # reparameterised: the draw is differentiable in every parameter
    rv.value.sum().backward()
    for name, p in init.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_parameter_names_inside_a_layer(family: tuple) -> None:
    cls, _, names = family
    layer = layers.LinearReparameterization(3, 2, weight_initializer=cls())
    params = {n for n, _ in layer.named_parameters()}
    if cls is TrainableDeterministic:
        assert params == {"weight", "bias"}
        assert isinstance(layer.weight, nn.Parameter)
    else:
        assert params == {f"weight_{s}" for s in names} | {"bias"}
        assert isinstance(layer.weight, bl.RandomVariable)
    assert isinstance(layer.bias, nn.Parameter)  # the default bias: deterministic zeros
    assert torch.equal(layer.bias, torch.zeros(2))
    random_bias = layers.LinearReparameterization(3, 2, bias_initializer=cls())
    expected = {"bias"} if cls is TrainableDeterministic else {f"bias_{s}" for s in names}
    assert {n for n, _ in random_bias.named_parameters()} - {"weight_loc", "weight_rho"} == (
        expected
    )


@pytest.mark.parametrize("cls", SCALED, ids=lambda c: c.__name__)
@pytest.mark.parametrize("scale_init", [1e-3, 0.1, 1.0, 30.0])
def test_initial_scale_equals_scale_init(cls: type, scale_init: float) -> None:
    init = cls((4, 5), scale_init=scale_init, dtype=torch.float64)
    scale = F.softplus(init.rho)
    torch.testing.assert_close(scale, torch.full_like(scale, scale_init))
    q = init().distribution
    if cls is TrainableLogNormal:  # the scale of the log
        torch.testing.assert_close(q.scale, torch.full_like(scale, scale_init))
    elif cls is TrainableHalfCauchy:  # a half-Cauchy has no finite standard deviation
        torch.testing.assert_close(q.base_dist.scale, torch.full_like(scale, scale_init))
    else:
        torch.testing.assert_close(q.stddev, torch.full_like(scale, scale_init))


def _std_half_width(std: float, n: int, kurtosis: float, k: int) -> float:
    """z(1 - α/2k) · SE of the sample std of n iid draws: SE ≈ σ·sqrt((κ - 1)/(4n))."""
    return z_bonferroni(k) * std * math.sqrt((kurtosis - 1) / (4 * n))


@pytest.mark.parametrize(
    "cls, expected_std",
    [
        (TrainableHeNormal, lambda fan_in, fan_out: math.sqrt(2 / fan_in)),
        (TrainableGlorotNormal, lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
    ],
    ids=["he", "glorot"],
)
def test_he_glorot_loc_std(cls: type, expected_std) -> None:
    """Sample std of 400 000 locs vs the nominal std; a truncated normal's kurtosis < 3,
    so κ = 3 bounds the SE; k = 1, α = 1e-3: tolerance ≈ 0.4 %."""
    shape = (800, 500)  # (out, in): fan_in 500, fan_out 800
    std = expected_std(500, 800)
    loc = cls(shape).loc.detach()
    n = loc.numel()
    assert abs(loc.std().item() - std) <= _std_half_width(std, n, 3.0, 1)


def test_default_normal_loc_is_uniform_like_nn_linear() -> None:
    """``loc`` ~ U(±1/sqrt(fan_in)): bounds, and sample std vs bound/√3 (uniform κ = 1.8,
    400 000 draws, k = 1, α = 1e-3)."""
    loc = TrainableNormal((800, 500)).loc.detach()
    bound = 1 / math.sqrt(500)
    assert loc.abs().max() <= bound
    std = bound / math.sqrt(3)
    assert abs(loc.std().item() - std) <= _std_half_width(std, loc.numel(), 1.8, 1)
    assert abs(loc.mean().item()) <= z_bonferroni(1) * std / math.sqrt(loc.numel())
    # an explicit loc_std: a truncated normal (cut at ±2 of its scale s) whose std is
    # loc_std, so s = loc_std / 0.8796 and the cut sits at 2 s
    loc = TrainableNormal((800, 500), loc_std=0.3).loc.detach()
    cut = 2 * 0.3 / 0.87962566103423978
    assert loc.abs().max() <= cut and loc.abs().max() > 0.95 * cut
    assert abs(loc.std().item() - 0.3) <= _std_half_width(0.3, loc.numel(), 3.0, 1)


def test_fans() -> None:
    assert fans((4, 8)) == (8, 4)
    assert fans((16, 3, 5, 5)) == (75, 400)
    assert fans((7,)) == (7, 7)
    assert fans(()) == (1, 1)
    # a layer passes its own fans for the bias: U(±1/sqrt(in_features)) like nn.Linear
    layer = layers.LinearReparameterization(400, 300, bias_initializer="trainable_deterministic")
    assert layer.bias.abs().max() <= 1 / math.sqrt(400)
    assert layer.bias.abs().max() > 0.9 / math.sqrt(400)


def test_positive_families_have_positive_draws() -> None:
    lognormal = TrainableLogNormal((1000,), scale_init=2.0)
    assert (lognormal().sample((10,)) > 0).all()
    assert (lognormal.transform(lognormal, "", torch.randn(10, 1000) * 10) > 0).all()
    cauchy = TrainableHalfCauchy((1000,), loc_init=-1.5, scale_init=3.0)
    assert (cauchy().sample((10,)) >= -1.5).all()
    noise = cauchy.noise(torch.Size((10, 1000)), cauchy.loc)
    assert (noise >= 0).all()
    assert (cauchy.transform(cauchy, "", noise) >= -1.5).all()


def _random_params(init: TrainableInitializer) -> None:
    with torch.no_grad():
        init.loc.normal_()
        init.rho.copy_(torch.empty_like(init.rho).uniform_(0.2, 2.0).expm1().log())


@pytest.mark.parametrize("cls", [TrainableNormal, TrainableLogNormal, TrainableHalfCauchy])
def test_reparameterised_draws_have_the_right_distribution(cls: type) -> None:
    """Draws via ``noise``/``transform`` (20 000 elements, each with its own parameters),
    mapped to the standard family and Kolmogorov-Smirnov tested; also the draws of
    ``distribution.sample``. k = 2 KS tests, each at α/k with α = 1e-3."""
    init = cls((20_000,), dtype=torch.float64)
    _random_params(init)
    loc, scale = init.loc.detach(), F.softplus(init.rho.detach())
    with torch.no_grad():
        via_noise = init.transform(init, "", init.noise(init.loc.shape, init.loc))
        via_distribution = init().distribution.sample()
    for draws in (via_noise, via_distribution):
        if cls is TrainableNormal:
            standard, reference = (draws - loc) / scale, stats.norm.cdf
        elif cls is TrainableLogNormal:
            standard, reference = (draws.log() - loc) / scale, stats.norm.cdf
        else:
            standard, reference = (draws - loc) / scale, stats.halfcauchy.cdf
        assert stats.kstest(standard.numpy(), reference).pvalue > ALPHA / 2


@pytest.mark.parametrize("cls", [TrainableNormal, TrainableLogNormal, TrainableHalfCauchy])
def test_transform_is_the_documented_formula(cls: type) -> None:
    init = cls((2, 3), dtype=torch.float64)
    _random_params(init)
    loc, scale = init.loc, F.softplus(init.rho)
    noise = init.noise(torch.Size((5, 2, 3)), init.loc)  # a leading K: vectorised draws
    assert noise.shape == (5, 2, 3) and noise.dtype == torch.float64
    out = init.transform(init, "", noise)
    assert out.shape == (5, 2, 3)
    expected = loc + scale * noise
    torch.testing.assert_close(out, expected.exp() if cls is TrainableLogNormal else expected)
    # the point used by the posterior-mean mode
    point = init.point(init, "")
    if cls is TrainableLogNormal:
        torch.testing.assert_close(point, (loc + scale.square() / 2).exp())
    else:  # the normal's mean; the half-Cauchy's location (its mean is infinite)
        torch.testing.assert_close(point, loc)


def test_deterministic_initializer() -> None:
    assert torch.equal(TrainableDeterministic((3,), init="zeros")().value, torch.zeros(3))
    assert torch.equal(TrainableDeterministic((3,), init="ones")().value, torch.ones(3))
    init = TrainableDeterministic((2, 3))
    assert init.noise(torch.Size((2, 3)), init.loc) is None
    assert init.transform(init, "", None) is init.loc
    assert init().distribution.variance.abs().sum() == 0
    with pytest.raises(ValueError, match="init"):
        TrainableDeterministic((3,), init="normal")


@pytest.mark.parametrize(
    "cls",
    [layers.LinearReparameterization, layers.LinearFlipout, layers.LinearLocalReparameterization],
)
def test_deterministic_weight_makes_a_plain_linear_layer(cls: type) -> None:
    layer = cls(3, 2, weight_initializer="trainable_deterministic")
    x = torch.randn(4, 3)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    torch.testing.assert_close(layer(x), layer(x), rtol=0, atol=0)
    # the KL to N(0, 1) of a point mass is infinite; the regularizer reports MAP instead
    torch.testing.assert_close(layer.losses[0], -Normal(0.0, 1.0).log_prob(layer.weight).sum())


def test_aliases_resolve() -> None:
    expected = {
        "trainable_normal": TrainableNormal,
        "trainable_he_normal": TrainableHeNormal,
        "trainable_glorot_normal": TrainableGlorotNormal,
        "trainable_log_normal": TrainableLogNormal,
        "trainable_half_cauchy": TrainableHalfCauchy,
        "trainable_deterministic": TrainableDeterministic,
        "zeros": TrainableDeterministic,
        "ones": TrainableDeterministic,
    }
    assert set(INITIALIZERS) == set(expected)
    for name, cls in expected.items():
        assert type(get_initializer(name)) is cls, name
    assert get_initializer("zeros").init == "zeros"
    assert get_initializer("ones").init == "ones"
    # fresh instances: two layers never share a recipe by accident
    assert get_initializer("trainable_normal") is not get_initializer("trainable_normal")
    init = TrainableNormal(scale_init=0.5)
    assert get_initializer(init) is init
    assert type(get_initializer(TrainableLogNormal)) is TrainableLogNormal


def test_unknown_alias_and_wrong_type() -> None:
    with pytest.raises(ValueError) as info:
        get_initializer("he_normal", owner="LinearFlipout(weight_initializer)")
    message = str(info.value)
    assert "LinearFlipout(weight_initializer)" in message and "'he_normal'" in message
    assert all(name in message for name in INITIALIZERS)
    for bad in (None, 0.1, torch.zeros(3), Normal(0.0, 1.0), nn.Linear):
        with pytest.raises(TypeError, match="initializer"):
            get_initializer(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="LinearReparameterization.*bias_initializer"):
        layers.LinearReparameterization(3, 2, bias_initializer="normal")


@pytest.mark.parametrize("cls", SCALED, ids=lambda c: c.__name__)
def test_bad_scale_init(cls: type) -> None:
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=f"{cls.__name__}.*scale_init"):
            cls(scale_init=bad)
    for bad in ("0.1", None, True):
        with pytest.raises(TypeError, match="scale_init"):
            cls(scale_init=bad)


def test_bad_loc_std() -> None:
    for bad in (0.0, -0.1, math.inf):
        with pytest.raises(ValueError, match="loc_std"):
            TrainableNormal(loc_std=bad)


def test_an_initializer_with_its_own_shape_is_refused_by_a_layer() -> None:
    """A standalone initializer (built with ``shape``) owns parameters; a layer given it
    would carry them unused (no gradient, in the state dict) beside its own."""
    for make in (
        lambda: layers.LinearFlipout(3, 2, weight_initializer=TrainableNormal((2, 3))),
        lambda: layers.Conv2dReparameterization(
            2, 2, 3, bias_initializer=TrainableNormal((2,)), bias_regularizer=None
        ),
        lambda: layers.LinearFlipout(3, 2).set_initializer("weight", TrainableHeNormal((2, 3))),
    ):
        with pytest.raises(ValueError, match=r"_initializer\) expected .* without `shape`"):
            make()


def test_forward_without_shape_raises() -> None:
    with pytest.raises(RuntimeError, match="shape"):
        TrainableNormal()()


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_dtype_and_device_factory_arguments(family: tuple) -> None:
    cls = family[0]
    assert all(p.dtype == torch.float64 for p in cls((2,), dtype=torch.float64).parameters())
    meta = cls((2,), device="meta")
    assert all(p.device.type == "meta" for p in meta.parameters())


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.floats(1e-6, 50.0))
def test_inverse_softplus_round_trip(y: float) -> None:
    rho = inverse_softplus(y)
    assert F.softplus(torch.tensor(rho, dtype=torch.float64)).item() == pytest.approx(y, rel=1e-9)
