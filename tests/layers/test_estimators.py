"""The weight-estimator template (``bayesian_layers.layers.estimators``): the by-name
lookup, the pure estimator math against the families' kernels and ``gradcheck``, the
default K-draw op, and the noise every estimator asks of ``layer.noise`` (names,
kinds, shapes) in each sampling mode."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers.layers import estimators as E
from bayesian_layers.layers import registry
from bayesian_layers.layers.functional import linear as KL
from bayesian_layers.layers.linear import LINEAR

RANDOM_BIAS = {"bias_initializer": "trainable_normal", "bias_regularizer": "normal_kl_divergence"}


class _Linear(E.WeightOp):
    """An op with only ``__call__``: the defaults do the rest."""

    def __call__(self, x, weight, bias):  # noqa: ANN001, ANN204
        return F.linear(x, weight, bias)


def test_lookup_by_name() -> None:
    assert E.ESTIMATORS == ("reparameterization", "flipout", "local_reparameterization")
    assert set(E.ESTIMATORS) <= set(registry.ESTIMATORS)
    for name in E.ESTIMATORS:
        estimator = E.get_estimator(name)
        assert estimator.name == name and E.get_estimator(estimator) is estimator
    assert E.get_estimator("reparameterization").exact_function_samples
    assert not E.get_estimator("flipout").exact_function_samples
    assert not E.get_estimator("local_reparameterization").exact_function_samples
    with pytest.raises(ValueError, match="flipout"):
        E.get_estimator("flipflop")


def test_estimators_survive_copy_and_pickle_as_the_module_instances() -> None:
    for estimator in (E.REPARAMETERIZATION, E.FLIPOUT, E.LOCAL_REPARAMETERIZATION):
        assert copy.deepcopy(estimator) is estimator
        assert pickle.loads(pickle.dumps(estimator)) is estimator


def test_pure_math_equals_the_dense_kernels_and_gradchecks() -> None:
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    x, loc, scale, noise, bias = randn(4, 3), randn(2, 3), randn(2, 3), randn(2, 3), randn(2)
    s_in = torch.randint(0, 2, (4, 3), generator=g).double() * 2 - 1
    s_out = torch.randint(0, 2, (4, 2), generator=g).double() * 2 - 1
    out_noise, b_scale = randn(4, 2), randn(2)
    flip = E.flipout_output(LINEAR, x, loc, scale, noise, s_in, s_out, bias)
    torch.testing.assert_close(flip, KL.flipout_linear(x, loc, scale, noise, s_in, s_out, bias))
    local = E.local_reparameterization_output(LINEAR, x, loc, scale, out_noise, bias, b_scale)
    expected = KL.local_reparameterization_linear(x, loc, scale, out_noise, bias, b_scale)
    torch.testing.assert_close(local, expected)
    assert torch.autograd.gradcheck(
        lambda *a: E.flipout_output(_Linear(), *a[:4], s_in, s_out, a[4]),
        (x, loc, scale, noise, bias),
    )
    assert torch.autograd.gradcheck(
        lambda *a: E.local_reparameterization_output(_Linear(), *a),
        (x, loc, scale.abs().add(0.1).detach().requires_grad_(), out_noise, bias, b_scale),
    )


def test_default_batched_op_applies_draw_i_to_block_i() -> None:
    k, batch = 3, 2
    x, w = torch.randn(k * batch, 4), torch.randn(k, 5, 4)
    for bias in (None, torch.randn(5), torch.randn(k, 5)):
        out = _Linear().batched(x, w, bias, k)
        torch.testing.assert_close(out, KL.batched_linear(x, w, bias, k))
    y = torch.zeros(k * batch, 5)
    bias = torch.randn(k, 5)
    torch.testing.assert_close(
        _Linear().add_sample_bias(y, bias, k), bias.repeat_interleave(batch, dim=0)
    )


def _noise_log(layer: layers.BayesianLayer) -> list[tuple[str, str, tuple[int, ...]]]:
    seen: list[tuple[str, str, tuple[int, ...]]] = []

    def hook(layer, name, kind, shape, make):  # noqa: ANN001, ANN202
        seen.append((name, kind, tuple(shape)))

    layer.register_noise_hook(hook)
    return seen


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (layers.LinearReparameterization, [("weight", "parameter", (2, 3))]),
        (
            layers.LinearFlipout,
            [
                ("weight_sign_in", "sign", (4, 3)),
                ("weight_sign_out", "sign", (4, 2)),
                ("weight", "normal", (2, 3)),
            ],
        ),
        (layers.LinearLocalReparameterization, [("weight_output", "normal", (4, 2))]),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_every_draw_goes_through_layer_noise(cls: type, expected: list) -> None:
    """Sample mode: each estimator's own noise; frozen and traced calls: whole draws of
    the weight only; mean mode: no noise at all."""
    layer = cls(3, 2)
    seen = _noise_log(layer)
    x = torch.randn(4, 3)
    layer(x)
    assert seen == expected
    seen.clear()
    with bl.posterior_mean(layer):
        layer(x)
    assert seen == []
    with bl.frozen_sample(layer):
        layer(x)
        layer(x)
    assert seen == [("weight", "parameter", (2, 3))]  # drawn once, kept
    seen.clear()
    with bl.tape():
        layer(x)
    assert [s[:2] for s in seen] == [("weight", "parameter")]


def test_k_samples_draw_k_perturbations_and_k_biases() -> None:
    layer = layers.LinearFlipout(3, 2, **RANDOM_BIAS)
    seen = _noise_log(layer)
    with bl.vectorized_samples(layer, 5):
        assert layer(torch.randn(5 * 4, 3)).shape == (20, 2)
    assert ("bias", "parameter", (5, 2)) in seen and ("weight", "normal", (5, 2, 3)) in seen


def test_a_deterministic_weight_takes_the_whole_weight_path() -> None:
    for cls in (layers.LinearFlipout, layers.LinearLocalReparameterization):
        layer = cls(3, 2, weight_initializer="trainable_deterministic", weight_regularizer=None)
        seen = _noise_log(layer)
        x = torch.randn(4, 3)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        assert seen == []


def test_check_posteriors_names_the_layer_and_family() -> None:
    with pytest.raises(ValueError, match=r"LinearFlipout needs a normal.*TrainableLogNormal"):
        layers.LinearFlipout(3, 2, weight_initializer="trainable_log_normal")
    # reparameterization takes any family; an absent bias is skipped
    layers.LinearReparameterization(3, 2, weight_initializer="trainable_log_normal")
    E.LOCAL_REPARAMETERIZATION.check_posteriors(layers.LinearLocalReparameterization(3, 2, False))


_MC_KL_CASES = {
    "LinearLocalReparameterization": (
        lambda r: layers.LinearLocalReparameterization(3, 2, weight_regularizer=r, **RANDOM_BIAS),
        lambda layer: layer(torch.randn(4, 3)),
    ),
    "Conv2dFlipout": (
        lambda r: layers.Conv2dFlipout(2, 2, 3, weight_regularizer=r),
        lambda layer: layer(torch.randn(2, 2, 4, 4)),
    ),
    "EmbeddingReparameterization": (
        lambda r: layers.EmbeddingReparameterization(6, 3, weight_regularizer=r),
        lambda layer: layer(torch.tensor([0, 2, 2])),
    ),
    "GRUCellFlipout": (
        lambda r: layers.GRUCellFlipout(3, 2, weight_regularizer=r),
        lambda layer: layer(torch.randn(4, 3)),
    ),
    "MultiheadAttentionFlipout": (
        lambda r: layers.MultiheadAttentionFlipout(4, 2, weight_regularizer=r),
        lambda layer: layer(*[torch.randn(3, 2, 4)] * 3)[0],
    ),
}


@pytest.mark.parametrize("name", list(_MC_KL_CASES))
def test_a_monte_carlo_kl_after_a_frozen_call_draws_afresh_in_sample_mode(name: str) -> None:
    """A per-example call draws no whole weight, so the Monte Carlo KL of the next
    training step must not reuse a frozen call's draw (its graph is freed by the first
    backward, and it would never change): training steps after a frozen evaluation run,
    the KL varies between queries, and ``layer.weight`` reads the posterior mean again."""
    torch.manual_seed(0)
    make, call = _MC_KL_CASES[name]
    mc = bl.regularizers.MonteCarloKLDivergence(torch.distributions.Laplace(0.0, 1.0))
    layer = make(mc)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    with bl.frozen_sample(layer):
        call(layer)
    for _ in range(2):
        loss = call(layer).sum() + sum(bl.losses(layer))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        first, second = (float(sum(bl.losses(layer))) for _ in range(2))
    assert first != second
    spec = next(iter(layer.named_random_parameters()), None)
    if spec is not None:  # attention: the projection's own parameters
        rv = getattr(layer, spec[0])
        assert torch.equal(rv.value, layer.point(spec[0]))
