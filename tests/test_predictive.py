"""Tests for ``bayesian_layers.predictive`` (``bl.predict``) and
``bayesian_layers.objectives`` (``bl.losses``, ``bl.elbo_loss``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from stats_util import z_bonferroni
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

import bayesian_layers as bl
from bayesian_layers import layers

ESTIMATORS = [
    layers.LinearReparameterization,
    layers.LinearFlipout,
    layers.LinearLocalReparameterization,
]


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-off would dominate
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def make_mlp(estimator: type = layers.LinearFlipout, scale: float = 0.3) -> nn.Sequential:
    """(B, 2, 3) -> Flatten -> Bayesian 6->8 -> ReLU -> MCDropout -> Bayesian 8->2."""
    kw = {"weight_initializer": bl.initializers.TrainableNormal(scale_init=scale)}
    return nn.Sequential(
        nn.Flatten(),
        layers.LinearReparameterization(6, 8, bias_initializer="trainable_normal", **kw),
        nn.ReLU(),
        layers.MCDropout(0.2),
        estimator(8, 2, **kw),
    )


# ==================================================================== bl.predict
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda c: c.__name__)
def test_vectorized_equals_looped_in_distribution(estimator: type) -> None:
    """Per output element, mean and variance of K = 4000 vectorised samples vs K = 4000
    looped ones (independent): difference of means within z·sqrt(v₁/K + v₂/K);
    difference of variances within z·sqrt(SE₁² + SE₂²) with SE² = (m₄ - s⁴)/K (the
    outputs are not normal). k = 2 × 3 × 2 = 12 checks, α = 1e-3."""
    model = make_mlp(estimator)
    x = torch.randn(3, 2, 3)
    num = 4000
    vec = bl.predict(model, x, num).samples
    loop = bl.predict(model, x, num, vectorized=False).samples
    assert vec.shape == loop.shape == (num, 3, 2)
    z = z_bonferroni(12)

    def moments(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        var = s.var(0)
        m4 = (s - s.mean(0)).pow(4).mean(0)
        return s.mean(0), var, (m4 - var.square()) / num

    (m1, v1, se1), (m2, v2, se2) = moments(vec), moments(loop)
    assert ((m1 - m2).abs() <= z * ((v1 + v2) / num).sqrt()).all(), (m1, m2)
    assert ((v1 - v2).abs() <= z * (se1 + se2).sqrt()).all(), (v1, v2)
    # the test has power: the spread between samples is material
    assert (v1.sqrt() > 0.05 * m1.abs()).any()


@pytest.mark.parametrize("vectorized", [True, False])
def test_mean_mode_gives_k_equal_posterior_mean_samples(vectorized: bool) -> None:
    model = make_mlp()
    x = torch.randn(4, 2, 3)
    with bl.posterior_mean(model):
        expected = model(x)
        pred = bl.predict(model, x, 5, vectorized=vectorized)
    assert pred.samples.shape == (5, 4, 2)
    for k in range(5):
        torch.testing.assert_close(pred.samples[k], expected)
    torch.testing.assert_close(pred.mean, expected)
    assert pred.variance.abs().max() < 1e-10


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda c: c.__name__)
def test_vectorized_call_in_sequential_with_relu_flatten_dropout(estimator: type) -> None:
    """K function samples in one call; under a frozen sample, sample k is one function:
    identical input rows give identical outputs, repeated calls repeat the K samples."""
    model = make_mlp(estimator)
    x = torch.randn(4, 2, 3)
    x[1] = x[0]
    pred = bl.predict(model, x, 6)
    assert pred.samples.shape == (6, 4, 2)
    assert not torch.allclose(pred.samples[0], pred.samples[1])
    assert [m.num_function_samples for m in bl.bayesian_modules(model)] == [1, 1, 1]
    with bl.frozen_sample(model):
        first = bl.predict(model, x, 6).samples
        torch.testing.assert_close(bl.predict(model, x, 6).samples, first, rtol=0, atol=0)
        torch.testing.assert_close(first[:, 0], first[:, 1])  # equal up to BLAS rounding
        assert not torch.allclose(first[0], first[1])
        # a plain call under the same frozen mode is also one function
        single = model(x)
        torch.testing.assert_close(single[0], single[1])


def test_vectorized_samples_of_a_reparameterized_layer_use_their_own_weights() -> None:
    layer = layers.LinearReparameterization(3, 2)
    x = torch.randn(5, 3)
    pred = bl.predict(layer, x, 4)
    weights = layer.weight.value  # (4, 2, 3): the K draws of the call
    for k in range(4):
        torch.testing.assert_close(pred.samples[k], F.linear(x, weights[k], layer.bias))


def test_predictive_moments_transform_and_grad() -> None:
    model = make_mlp()
    x = torch.randn(3, 2, 3)
    pred = bl.predict(model, x, 7, transform=lambda z: z.softmax(-1))
    assert pred.num_samples == 7
    torch.testing.assert_close(pred.samples.sum(-1), torch.ones(7, 3))
    torch.testing.assert_close(pred.mean, pred.samples.mean(0))
    torch.testing.assert_close(pred.variance, pred.samples.var(0, correction=0))
    assert not pred.samples.requires_grad
    pred = bl.predict(model, x, 7, grad=True)
    assert pred.samples.requires_grad
    pred.mean.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert not bl.predict(model, x, 2, grad=True).samples.requires_grad


def test_predict_accepts_random_variables() -> None:
    class Head(nn.Module):
        def forward(self, x: Tensor) -> bl.RandomVariable:
            return bl.RandomVariable(Normal(x, 1.0), value=2 * x)

    rv = bl.RandomVariable(Normal(torch.zeros(3, 2), 1.0))
    pred = bl.predict(Head(), rv, 2)
    torch.testing.assert_close(pred.samples, 2 * rv.value.expand(2, 3, 2))


def test_predict_errors_restore_state() -> None:
    model = make_mlp()
    x = torch.randn(3, 2, 3)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="num_samples"):
            bl.predict(model, x, bad)
    for bad in (torch.tensor(1.0), [[1.0, 2.0]]):
        with pytest.raises(TypeError, match="predict"):
            bl.predict(model, bad)
    with pytest.raises(TypeError, match="predict.*tuple"):
        bl.predict(lambda_module(lambda z: (z, z)), x, 2)

    class Broken(nn.Module):
        def forward(self, z: Tensor) -> Tensor:
            raise RuntimeError("boom")

    wrapped = nn.Sequential(model, Broken())
    with pytest.raises(RuntimeError, match="boom"):
        bl.predict(wrapped, x, 3)
    assert [m.num_function_samples for m in bl.bayesian_modules(model)] == [1, 1, 1]


def lambda_module(fn) -> nn.Module:
    class Wrapped(nn.Module):
        def forward(self, x: Tensor):
            return fn(x)

    return Wrapped()


# ============================================================ bl.losses / elbo_loss
def test_losses_counts_a_layer_once() -> None:
    shared = layers.LinearReparameterization(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(bl.losses(model)) == 1
    torch.testing.assert_close(bl.losses(model)[0], shared.losses[0])
    nested = nn.ModuleDict({"a": model, "b": nn.Sequential(shared, layers.MCDropout())})
    assert len(bl.losses(nested)) == 1
    assert bl.losses(nn.Linear(2, 2)) == [] and bl.losses(layers.MCDropout()) == []
    with pytest.raises(TypeError, match="nn.Module"):
        bl.losses([shared])  # type: ignore[arg-type]


def test_losses_collects_every_term_of_a_model() -> None:
    model = make_mlp()
    terms = bl.losses(model)
    first, last = model[1], model[4]
    prior = Normal(0.0, 1.0)

    def kl(layer: nn.Module, name: str) -> Tensor:
        q = Normal(getattr(layer, f"{name}_loc"), F.softplus(getattr(layer, f"{name}_rho")))
        return kl_divergence(q, prior).sum()

    # the random bias of the first layer has no regularizer by default
    assert len(terms) == 2
    torch.testing.assert_close(terms, [kl(first, "weight"), kl(last, "weight")])


def test_elbo_loss_formula() -> None:
    model = make_mlp()
    nll = torch.tensor(1.25)
    total = torch.stack(bl.losses(model)).sum()
    torch.testing.assert_close(bl.elbo_loss(nll, model, 100), nll + total / 100)
    torch.testing.assert_close(
        bl.elbo_loss(nll, model, 100, kl_weight=0.1), nll + 0.1 * total / 100
    )
    assert bl.elbo_loss(nll, nn.Linear(2, 2), 10) is nll
    for bad in (0, -5):
        with pytest.raises(ValueError, match="num_examples"):
            bl.elbo_loss(nll, model, bad)
    with pytest.raises(ValueError, match="kl_weight"):
        bl.elbo_loss(nll, model, 10, kl_weight=-1.0)
    # the loss backpropagates into the posterior scales through the KL
    bl.elbo_loss(nll, model, 10).backward()
    assert model[1].weight_rho.grad is not None


def test_elbo_scaling_sums_to_the_negative_elbo_over_an_epoch() -> None:
    """The convention ``nll_mean + KL / N``: over an epoch of B equal batches of an
    N-example set, N × (mean of the batch losses) = Σ_n nll_n + KL, the negative ELBO."""
    model = layers.LinearReparameterization(3, 1)
    n, batches = 12, 3
    nll_per_example = torch.rand(n)
    kl = torch.stack(bl.losses(model)).sum()
    per_batch = [bl.elbo_loss(chunk.mean(), model, n) for chunk in nll_per_example.chunk(batches)]
    total = torch.stack(per_batch).mean() * n
    torch.testing.assert_close(total, nll_per_example.sum() + kl)


def test_chunked_vectorised_predict_matches_one_call_and_the_loop_under_the_mean() -> None:
    """In posterior-mean mode every chunking gives the same samples as the loop."""
    import bayesian_layers as bl
    from bayesian_layers import layers

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        layers.LinearReparameterization(5, 7), torch.nn.ReLU(), layers.LinearFlipout(7, 3)
    )
    x = torch.randn(4, 5)
    with bl.posterior_mean(model):
        ref = bl.predict(model, x, 7, vectorized=False).samples
        for chunk in (1, 2, 3, 7, 100):
            got = bl.predict(model, x, 7, chunk_size=chunk).samples
            assert got.shape == (7, 4, 3)
            torch.testing.assert_close(got, ref)


def test_chunks_draw_distinct_functions_and_auto_chunk_respects_budget() -> None:
    import bayesian_layers as bl
    from bayesian_layers import layers
    from bayesian_layers.predictive import CHUNK_BYTES, auto_chunk_size

    torch.manual_seed(0)
    model = torch.nn.Sequential(layers.LinearReparameterization(512, 512))
    x = torch.ones(1, 512)
    samples = bl.predict(model, x, 6, chunk_size=2).samples[:, 0]  # (6, 512)
    # every pair of function samples differs (a chunk boundary does not repeat noise)
    assert torch.cdist(samples, samples).add(torch.eye(6)).min() > 0
    k = auto_chunk_size(model, x)
    assert k * 4 * (512 * 512 + 4 * 512) <= CHUNK_BYTES < (k + 1) * 4 * (512 * 512 + 4 * 512)
    with pytest.raises(ValueError, match="chunk_size"):
        bl.predict(model, x, 3, chunk_size=0)
