"""The public seam of BayesianLayer: parameter specs, posteriors, KL terms, noise hooks
and set_initializer, checked against what the layers hold and against torch's own
closed forms, over a linear, a convolutional, a recurrent, an attention and an
embedding layer."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers.initializers import (
    TrainableDeterministic,
    TrainableHeNormal,
    TrainableLogNormal,
)
from bayesian_layers.layers.base import BayesianLayer, ParameterSpec
from bayesian_layers.regularizers import NormalKLDivergence

PRIOR_LOC, PRIOR_SCALE = 0.1, 0.5


def _prior() -> NormalKLDivergence:
    return NormalKLDivergence(loc=PRIOR_LOC, scale=PRIOR_SCALE)


def _kwargs(bias: bool = True) -> dict:
    """A random bias with a KL of its own as well as the weight's, in float64."""
    out: dict = {"weight_regularizer": _prior(), "dtype": torch.float64}
    if bias:
        out.update(bias_initializer="trainable_normal", bias_regularizer=_prior())
    return out


#: name -> factory of a layer with random weights and random biases (where it has biases)
LAYERS: dict[str, Callable[[], BayesianLayer]] = {
    "linear": lambda: layers.LinearFlipout(3, 2, **_kwargs()),
    "conv2d": lambda: layers.Conv2dReparameterization(2, 4, 3, **_kwargs()),
    "lstm": lambda: layers.LSTMFlipout(3, 4, num_layers=2, **_kwargs()),
    "lstm_cell": lambda: layers.LSTMCellFlipout(3, 4, **_kwargs()),
    "attention": lambda: layers.MultiheadAttentionReparameterization(8, 2, **_kwargs()),
    "embedding": lambda: layers.EmbeddingReparameterization(10, 4, **_kwargs(bias=False)),
}


def _own_parameters(layer: nn.Module) -> dict[str, torch.Tensor]:
    return dict(layer.named_parameters(recurse=False))


def _expected(layer: nn.Module) -> tuple[dict[str, torch.Size], dict[str, torch.Size]]:
    """(random, deterministic) parameter names and shapes read off the layer's tensors:
    a random ``w`` is stored as ``w_loc`` and ``w_rho``, a point estimate as itself."""
    own = _own_parameters(layer)
    random = {n[: -len("_loc")]: p.shape for n, p in own.items() if n.endswith("_loc")}
    stored = {f"{n}_{s}" for n in random for s in ("loc", "rho")}
    deterministic = {n: p.shape for n, p in own.items() if n not in stored}
    return random, deterministic


@pytest.fixture(params=sorted(LAYERS))
def layer(request: pytest.FixtureRequest) -> BayesianLayer:
    torch.manual_seed(0)
    return LAYERS[request.param]()


def test_named_random_parameters_lists_exactly_the_random_ones(layer: BayesianLayer) -> None:
    random, _ = _expected(layer)
    listed = dict(layer.named_random_parameters())
    assert list(listed) == [n for n in listed if n in random] and set(listed) == set(random)
    for name, spec in listed.items():
        assert isinstance(spec, ParameterSpec)
        assert spec.name == name and spec.is_random
        assert spec.shape == random[name]
        assert spec.initializer is getattr(layer, f"{name}_initializer")
        assert spec.regularizer is getattr(layer, f"{name}_regularizer")
        assert spec == layer.parameter_spec(name)


def test_include_deterministic_adds_the_point_estimates() -> None:
    layer = layers.LSTMCellFlipout(3, 4)  # deterministic biases by default
    specs = dict(layer.named_random_parameters(include_deterministic=True))
    random, deterministic = _expected(layer)
    assert set(specs) == set(random) | set(deterministic)
    for name, shape in deterministic.items():
        assert not specs[name].is_random and specs[name].shape == shape
        assert specs[name].regularizer is None
    assert [n for n, _ in layer.named_random_parameters()] == ["weight_ih", "weight_hh"]


def test_parameter_spec_is_frozen() -> None:
    spec = layers.LinearFlipout(3, 2).parameter_spec("weight")
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


def test_kl_terms_equal_torch_kl_against_the_prior(layer: BayesianLayer) -> None:
    random, _ = _expected(layer)
    terms = layer.kl_terms()
    assert set(terms) == set(random)
    own = _own_parameters(layer)
    for name, term in terms.items():
        q = Normal(own[f"{name}_loc"], F.softplus(own[f"{name}_rho"]))
        p = Normal(torch.tensor(PRIOR_LOC, dtype=torch.float64), PRIOR_SCALE)
        assert term.shape == ()
        torch.testing.assert_close(term, kl_divergence(q, p).sum())


def test_losses_are_the_kl_terms_in_order(layer: BayesianLayer) -> None:
    losses, terms = layer.losses, list(layer.kl_terms().values())
    assert len(losses) == len(terms)
    for a, b in zip(losses, terms, strict=True):
        assert torch.equal(a, b)


def test_posterior_mean_and_stddev_are_loc_and_softplus_rho(layer: BayesianLayer) -> None:
    own = _own_parameters(layer)
    for name, _ in layer.named_random_parameters():
        q = layer.posterior(name)
        loc, scale = layer.posterior_loc_scale(name)
        assert torch.equal(q.mean, own[f"{name}_loc"])
        torch.testing.assert_close(q.stddev, F.softplus(own[f"{name}_rho"]))
        assert loc is own[f"{name}_loc"] or torch.equal(loc, own[f"{name}_loc"])
        assert scale is not None
        torch.testing.assert_close(scale, F.softplus(own[f"{name}_rho"]))


def test_posterior_of_a_point_estimate_is_deterministic() -> None:
    layer = layers.LinearFlipout(3, 2)
    q = layer.posterior("bias")
    assert isinstance(q, bl.DeterministicDistribution)
    assert torch.equal(q.mean, layer.bias)
    value, scale = layer.posterior_loc_scale("bias")
    assert scale is None and torch.equal(value, layer.bias)


def test_posterior_loc_scale_rejects_non_normal_families() -> None:
    layer = layers.LinearReparameterization(3, 2, weight_initializer="trainable_log_normal")
    with pytest.raises(ValueError, match="LinearReparameterization.*TrainableLogNormal"):
        layer.posterior_loc_scale("weight")
    assert layer.posterior("weight").mean.shape == (2, 3)  # any family has a posterior


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.parameter_spec("nope"),
        lambda m: m.posterior("nope"),
        lambda m: m.posterior_loc_scale("nope"),
        lambda m: m.set_initializer("nope", "trainable_normal"),
    ],
    ids=["parameter_spec", "posterior", "posterior_loc_scale", "set_initializer"],
)
def test_unknown_names_raise_value_error_naming_the_layer(call: Callable) -> None:
    layer = layers.Conv2dFlipout(2, 3, 3)
    with pytest.raises(ValueError, match=r"Conv2dFlipout has no parameter 'nope'.*'weight'"):
        call(layer)


# ------------------------------------------------------------------- initializers
def test_set_initializer_keeps_the_attribute_and_the_spec_consistent() -> None:
    torch.manual_seed(0)
    layer = layers.LinearReparameterization(3, 2)
    before = {n: p.clone() for n, p in layer.named_parameters()}
    new = TrainableHeNormal()
    layer.set_initializer("weight", new)
    assert layer.weight_initializer is new
    assert layer.parameter_spec("weight").initializer is new
    assert [n for n, _ in layer.named_parameters()] == list(before)
    for n, p in layer.named_parameters():
        assert torch.equal(p, before[n])  # values kept
    assert layer(torch.randn(4, 3)).shape == (4, 2)
    assert "weight_initializer.0" not in layer.state_dict()  # no parameters of its own


def test_set_initializer_may_change_the_law_over_the_same_parameters() -> None:
    layer = layers.LinearReparameterization(3, 2)
    layer.set_initializer("weight", "trainable_log_normal")
    assert isinstance(layer.weight_initializer, TrainableLogNormal)
    assert (layer.sample_param("weight") > 0).all()


@pytest.mark.parametrize(
    ("name", "family"),
    [("weight", TrainableDeterministic()), ("bias", TrainableHeNormal())],
    ids=["random-to-point", "point-to-random"],
)
def test_set_initializer_rejects_families_with_other_parameters(name: str, family) -> None:
    layer = layers.LinearFlipout(3, 2)
    old = getattr(layer, f"{name}_initializer")
    with pytest.raises(ValueError, match=rf"LinearFlipout.set_initializer.*{name!r}"):
        layer.set_initializer(name, family)
    assert getattr(layer, f"{name}_initializer") is old
    assert layer.parameter_spec(name).initializer is old


# ------------------------------------------------------------------------ noise
def _zeros(layer, name, kind, shape, make):  # noqa: ANN001, ANN202 - a noise hook
    return torch.zeros(shape, dtype=torch.float64)


ESTIMATOR_LAYERS: dict[str, Callable[[], BayesianLayer]] = {
    "linear_reparameterization": lambda: layers.LinearReparameterization(3, 2, **_kwargs()),
    "linear_flipout": lambda: layers.LinearFlipout(3, 2, **_kwargs()),
    "linear_local_reparameterization": lambda: layers.LinearLocalReparameterization(
        3, 2, **_kwargs()
    ),
    "conv2d_reparameterization": lambda: layers.Conv2dReparameterization(2, 3, 3, **_kwargs()),
    "conv2d_flipout": lambda: layers.Conv2dFlipout(2, 3, 3, **_kwargs()),
    "conv2d_local_reparameterization": lambda: layers.Conv2dLocalReparameterization(
        2, 3, 3, **_kwargs()
    ),
}


def _input(name: str) -> torch.Tensor:
    shape = (5, 3) if name.startswith("linear") else (5, 2, 6, 6)
    return torch.randn(shape, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(ESTIMATOR_LAYERS))
def test_zero_noise_gives_the_posterior_mean_output(name: str) -> None:
    torch.manual_seed(0)
    layer = ESTIMATOR_LAYERS[name]()
    x = _input(name)
    with bl.posterior_mean(layer):
        expected = layer(x)
    handle = layer.register_noise_hook(_zeros)
    torch.testing.assert_close(layer(x), expected)
    with bl.vectorized_samples(layer, 3):
        out = layer(x.repeat(3, *([1] * (x.dim() - 1))))
    torch.testing.assert_close(out, expected.repeat(3, *([1] * (x.dim() - 1))))
    handle.remove()
    assert not torch.allclose(layer(x), layer(x))  # random again once the hook is gone


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("linear_reparameterization", {("weight", "parameter"), ("bias", "parameter")}),
        (
            "linear_flipout",
            {
                ("weight_sign_in", "sign"),
                ("weight_sign_out", "sign"),
                ("weight", "normal"),
                ("bias", "parameter"),
            },
        ),
        # the bias's variance enters the output noise: no draw of its own
        ("linear_local_reparameterization", {("weight_output", "normal")}),
    ],
)
def test_noise_hooks_see_every_draw_by_name_and_kind(name: str, expected: set) -> None:
    layer = ESTIMATOR_LAYERS[name]()
    seen: list[tuple[str, str, torch.Size]] = []

    def record(layer, name, kind, shape, make):  # noqa: ANN001, ANN202
        seen.append((name, kind, shape))
        return None  # the default draw

    layer.register_noise_hook(record)
    layer(_input(name))
    assert {(n, k) for n, k, _ in seen} == expected
    shapes = {n: s for n, k, s in seen if k == "parameter"}
    for n, s in shapes.items():
        assert s == layer.parameter_spec(n).shape


def test_noise_hooks_run_in_registration_order_and_none_passes_on() -> None:
    layer = layers.LinearReparameterization(3, 2)
    calls: list[str] = []

    def first(layer, name, kind, shape, make):  # noqa: ANN001, ANN202
        calls.append("first")
        return None

    def second(layer, name, kind, shape, make):  # noqa: ANN001, ANN202
        calls.append("second")
        return make(shape) * 0.0

    h1, h2 = layer.register_noise_hook(first), layer.register_noise_hook(second)
    x = torch.randn(4, 3)
    with bl.posterior_mean(layer):
        expected = layer(x)
    torch.testing.assert_close(layer(x), expected)
    assert calls == ["first", "second"]
    h1.remove()
    h2.remove()
    assert not torch.allclose(layer(x), layer(x))


def test_check_samples_is_public_and_checks_the_folded_batch() -> None:
    layer = layers.LinearFlipout(3, 2)
    assert layer.check_samples(torch.zeros(5, 3)) == 1
    with bl.vectorized_samples(layer, 2):
        assert layer.check_samples(torch.zeros(4, 3)) == 2
        with pytest.raises(ValueError, match="LinearFlipout is drawing 2 function samples"):
            layer.check_samples(torch.zeros(5, 3))


def test_frozen_state_is_the_store_of_the_frozen_sample_in_effect() -> None:
    layer = layers.LinearReparameterization(3, 2)
    own = layer.frozen_state
    with bl.frozen_sample(layer):
        inner = layer.frozen_state
        assert inner is not own and set(inner) == {"weight"}
        inner["mine"] = torch.ones(())  # a subclass's own draw, kept until resample
        x = torch.randn(4, 3)
        assert torch.equal(layer(x), layer(x))
        layer.resample()
        assert "mine" not in layer.frozen_state and set(layer.frozen_state) == {"weight"}
    assert layer.frozen_state is own


def test_mc_dropout_masks_go_through_the_noise_hook() -> None:
    """With a hook the mask's uniforms come from ``noise("mask", kind="uniform")``: all
    ones keep every unit (scaled by 1/(1-p)), all zeros drop every unit; the default
    uniforms keep each unit with probability 1 - p. n = 200 000 units, one check at
    5 standard errors (family-wise failure rate < 1e-6)."""
    drop, x = layers.MCDropout(0.25), torch.randn(3, 4)
    seen: list[tuple[str, str, tuple[int, ...]]] = []

    def ones(layer, name, kind, shape, make):
        seen.append((name, kind, tuple(shape)))
        return torch.ones(shape)

    handle = drop.register_noise_hook(ones)
    assert drop.has_noise_hooks
    torch.testing.assert_close(drop(x), x / 0.75)
    assert seen == [("mask", "uniform", (3, 4))]
    handle.remove()
    handle = drop.register_noise_hook(lambda layer, name, kind, shape, make: torch.zeros(shape))
    assert torch.equal(drop(x), torch.zeros_like(x))
    handle.remove()
    handle = drop.register_noise_hook(lambda layer, name, kind, shape, make: make(shape))
    torch.manual_seed(0)
    kept = (drop(torch.ones(200_000)) != 0).double().mean().item()
    handle.remove()
    assert not drop.has_noise_hooks
    assert abs(kept - 0.75) < 5 * (0.75 * 0.25 / 200_000) ** 0.5


def test_noise_rejects_an_unknown_kind() -> None:
    layer = layers.LinearReparameterization(3, 2)
    with pytest.raises(ValueError, match="LinearReparameterization.noise expected `kind` in"):
        layer.noise("weight", (2, 3), torch.zeros(()), kind="gamma")
    assert layer.noise("u", (5,), torch.zeros(()), kind="uniform").shape == (5,)


def test_set_initializer_keeps_the_estimator_s_needs() -> None:
    """Flipout and local reparameterization need a normal weight posterior: a
    log-normal one is refused at once (nothing changed), reparameterization takes it."""
    log_normal = bl.initializers.get_initializer("trainable_log_normal")
    for cls in (layers.LinearFlipout, layers.LinearLocalReparameterization):
        layer = cls(3, 2)
        before = layer.weight_initializer
        with pytest.raises(
            ValueError, match=f"{cls.__name__}.set_initializer: the .* needs a normal"
        ):
            layer.set_initializer("weight", log_normal)
        assert layer.weight_initializer is before
    layer = layers.LinearReparameterization(3, 2)
    layer.set_initializer("weight", log_normal)
    assert layer.parameter_spec("weight").initializer is log_normal
    assert (layer(torch.randn(4, 3)) != 0).any()
