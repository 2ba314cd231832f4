"""Tests for ``bayesian_layers.predictive`` (``bl.predict``) and
``bayesian_layers.objectives`` (``bl.losses``, ``bl.elbo_loss``)."""

from __future__ import annotations

import math
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


@pytest.mark.parametrize("chunk_size", [None, 2, 3])
def test_frozen_mode_chunks_do_not_repeat_functions(chunk_size: int | None) -> None:
    """Under a frozen sample the K functions are distinct whatever the chunking: a chunk
    would otherwise reuse the frozen draws an earlier chunk of its size made (the
    Bayesian layers' and MCDropout's masks), giving K samples of fewer functions."""
    model = make_mlp(layers.LinearReparameterization)
    x = torch.randn(4, 2, 3)
    with bl.frozen_sample(model):
        samples = bl.predict(model, x, 8, chunk_size=chunk_size, trunk=None).samples
        again = bl.predict(model, x, 8, chunk_size=chunk_size, trunk=None).samples
    torch.testing.assert_close(again, samples, rtol=0, atol=0)  # the K frozen functions
    distinct = {tuple(s.flatten().tolist()) for s in samples}
    assert len(distinct) == 8


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda c: c.__name__)
def test_predict_keeps_the_frozen_function_of_plain_calls(estimator: type) -> None:
    """Inside ``frozen_sample`` a plain call is one function until the context exits:
    ``predict``'s K frozen draws are kept apart from it (they replaced it, so the calls
    after ``predict`` computed another function), and they too are kept across calls."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), estimator(4, 2))
    x = torch.randn(5, 3)
    with bl.frozen_sample(model):
        before = model(x)
        first = bl.predict(model, x, 4, trunk=None).samples
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
        again = bl.predict(model, x, 4, trunk=None).samples
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        for k in (3, 5, 7):  # one entry for the vectorised draws, whatever K: bounded
            bl.predict(model, x, k, trunk=None)
        assert sorted(model[2].frozen_state) == ["weight", "weight@K"]


def test_predict_keeps_the_frozen_function_of_a_sparse_gp_and_a_swag_layer() -> None:
    """The frozen draws of their own (a sparse GP's function draws, SWAG's low-rank
    noise) are kept apart for predict's K functions too: a plain call inside
    ``frozen_sample`` computes the same function before and after ``predict``."""
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    gp_model = nn.Sequential(nn.Linear(3, 3), layers.SparseGaussianProcess(2, 4, in_features=3))
    swag_model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), layers.LinearReparameterization(8, 2))
    data = [(torch.randn(16, 3), torch.randn(16, 2)) for _ in range(4)]
    bl.swag.collect(swag_model, data, F.mse_loss, lr=0.05, epochs=3, max_rank=3)
    for model in (gp_model, swag_model):

        def value(m: nn.Module = model) -> Tensor:
            out = m(x)
            return out.value if isinstance(out, bl.RandomVariable) else out

        with bl.frozen_sample(model):
            before = value()
            samples = bl.predict(model, x, 4, trunk=None).samples
            torch.testing.assert_close(value(), before, rtol=0, atol=0)
        assert samples.std(0).min() > 0  # K different functions


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
    with pytest.raises(ValueError, match=r"`num_samples` an int >= 1, got 2\.5"):
        bl.predict(model, x, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`chunk_size` an int >= 1 or None, got True"):
        bl.predict(model, x, 2, chunk_size=True)
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


def test_auto_chunk_of_token_inputs_counts_the_widest_layer() -> None:
    """Token ids are not activations: each becomes a vector as wide as the widest layer
    (here the 300-wide hidden layer), in the default float dtype."""
    from bayesian_layers import layers
    from bayesian_layers.predictive import CHUNK_BYTES, auto_chunk_size

    model = nn.Sequential(
        nn.Embedding(50, 16), layers.LinearFlipout(16, 300), nn.ReLU(), nn.Linear(300, 50)
    )
    tokens = torch.randint(0, 50, (32, 64))
    k = auto_chunk_size(model, tokens)
    per_sample = 4 * (16 * 300 + 4 * 32 * 64 * 300)
    assert k * per_sample <= CHUNK_BYTES < (k + 1) * per_sample
    assert k < auto_chunk_size(model, tokens.float())  # as floats: 4·x.numel() only


# ===================================================== uncertainty decomposition
class NormalHead(nn.Module):
    """(*, 2) -> Normal(loc = h₀, scale = softplus(h₁) + 0.1), a stochastic output head."""

    def forward(self, h: Tensor) -> bl.RandomVariable:
        return bl.RandomVariable(Normal(h[..., :1], F.softplus(h[..., 1:]) + 0.1))


class CategoricalHead(nn.Module):
    def forward(self, h: Tensor) -> bl.RandomVariable:
        return bl.RandomVariable(torch.distributions.Categorical(logits=h))


class BernoulliHead(nn.Module):
    def forward(self, h: Tensor) -> bl.RandomVariable:
        return bl.RandomVariable(
            torch.distributions.Independent(torch.distributions.Bernoulli(logits=h), 1)
        )


def record_hidden(layer: nn.Module) -> list[Tensor]:
    """Record every output of ``layer``: the function samples before the head."""
    seen: list[Tensor] = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    return seen


@pytest.mark.parametrize("vectorized", [True, False])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_regression_decomposition_matches_known_function_samples(
    vectorized: bool, chunk_size: int | None
) -> None:
    """With the K hidden outputs h_k recorded, the output distribution under sample k is
    N(h_k0, (softplus(h_k1) + 0.1)²), so exactly aleatoric = mean_k s_k²,
    epistemic = var_k h_k0 (divisor K), total = their sum."""
    bayes = layers.LinearReparameterization(
        3, 2, weight_initializer=bl.initializers.TrainableNormal(scale_init=0.5)
    )
    model = nn.Sequential(bayes, NormalHead()).double()
    seen = record_hidden(bayes)
    x = torch.randn(4, 3, dtype=torch.float64)
    k = 7
    pred = bl.predict(model, x, k, vectorized=vectorized, chunk_size=chunk_size)
    h = torch.cat(seen).reshape(k, 4, 2)  # sample-major in both paths
    loc, scale = h[..., :1], F.softplus(h[..., 1:]) + 0.1
    assert pred.output_mean is not None and pred.output_variance is not None
    assert pred.output_mean.shape == pred.output_variance.shape == (k, 4, 1)
    assert pred.output_probs is None
    torch.testing.assert_close(pred.output_mean, loc, rtol=0, atol=0)
    torch.testing.assert_close(pred.output_variance, scale.square())
    torch.testing.assert_close(pred.aleatoric, scale.square().mean(0))
    torch.testing.assert_close(pred.epistemic, loc.var(0, correction=0))
    torch.testing.assert_close(pred.total, pred.aleatoric + pred.epistemic)
    assert (pred.epistemic > 1e-3).all()  # the function samples do disagree
    if vectorized and chunk_size is None:  # the K weights of the one call, independently
        w = bayes.weight.value  # (K, 2, 3)
        h_w = torch.einsum("bi,koi->kbo", x, w) + bayes.bias  # (K, B, 2)
        torch.testing.assert_close(pred.output_mean, h_w[..., :1])


def test_total_variance_equals_the_monte_carlo_variance_of_y() -> None:
    """Given the K function samples, y_k = μ_k + σ_k ε_k and D = (1/K) Σ_k (y_k - ȳ)²
    (``pred.variance``) has E[D | θ] = epistemic + (1 - 1/K) aleatoric = total - aleatoric/K
    and Var[D | θ] ≈ (1/K²) Σ_k (4 (μ_k - μ̄)² σ_k² + 2 σ_k⁴) (normal ε). Checked per
    element within z(1 - α/2k)·sqrt(Var): α = 1e-3, k = 5 elements, n = K = 20000."""
    bayes = layers.LinearFlipout(
        3, 2, weight_initializer=bl.initializers.TrainableNormal(scale_init=0.7)
    )
    model = nn.Sequential(bayes, NormalHead()).double()
    x = 2 * torch.randn(5, 3, dtype=torch.float64)  # inputs far enough out to spread h
    k = 20000
    pred = bl.predict(model, x, k)
    assert pred.samples.shape == (k, 5, 1)
    mu, var = pred.output_mean, pred.output_variance
    assert mu is not None and var is not None
    expected = pred.total - pred.aleatoric / k
    se = ((4 * (mu - mu.mean(0)).square() * var + 2 * var.square()).sum(0) / k**2).sqrt()
    z = z_bonferroni(5)
    assert ((pred.variance - expected).abs() <= z * se).all()
    # power: each part exceeds twice the half-width somewhere, so a decomposition that
    # dropped either part would be off there by more than 2 z·se
    assert (pred.epistemic > 2 * z * se).any() and (pred.aleatoric > 2 * z * se).any()


def test_deterministic_network_has_no_epistemic_uncertainty() -> None:
    """nn.Linear before the head: K identical function samples, epistemic 0, and the
    aleatoric part is the output variance itself."""
    net = nn.Linear(3, 2).double()
    model = nn.Sequential(net, NormalHead())
    x = torch.randn(6, 3, dtype=torch.float64)
    for vectorized in (True, False):
        pred = bl.predict(model, x, 9, vectorized=vectorized)
        assert pred.epistemic.abs().max() <= 1e-24
        with torch.no_grad():
            scale = F.softplus(net(x)[:, 1:]) + 0.1
        torch.testing.assert_close(pred.aleatoric, scale.square())
        torch.testing.assert_close(pred.total, scale.square())


def test_posterior_mean_mode_has_no_epistemic_uncertainty() -> None:
    model = nn.Sequential(make_mlp(), NormalHead())
    x = torch.randn(4, 2, 3)
    with bl.posterior_mean(model):
        pred = bl.predict(model, x, 6)
        probs = bl.predict(nn.Sequential(make_mlp(), CategoricalHead()), x, 6)
    assert pred.epistemic.abs().max() < 1e-12
    assert pred.samples.shape == (6, 4, 1)
    # the head still samples y: the spread of the samples is aleatoric
    assert pred.variance.min() > 0
    assert probs.mutual_information.shape == (4,)


@pytest.mark.parametrize("vectorized", [True, False])
def test_classification_decomposition_from_categorical_output(vectorized: bool) -> None:
    """Probabilities of each function sample are softmax of the recorded logits; the
    entropy terms equal the metrics on them, and H[p̄] = E_k H[p_k] + MI."""
    model = make_mlp(scale=0.5)
    seen = record_hidden(model)
    full = nn.Sequential(model, CategoricalHead()).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    pred = bl.predict(full, x, 8, vectorized=vectorized)
    probs = torch.cat(seen).reshape(8, 5, 2).softmax(-1)
    assert pred.output_mean is None and pred.output_variance is None
    assert pred.output_probs is not None and pred.output_probs.shape == (8, 5, 2)
    torch.testing.assert_close(pred.output_probs, probs)
    torch.testing.assert_close(pred.predictive_probs, probs.mean(0))
    torch.testing.assert_close(
        pred.predictive_entropy, bl.metrics.predictive_entropy(probs.mean(0))
    )
    torch.testing.assert_close(pred.expected_entropy, bl.metrics.expected_entropy(probs))
    torch.testing.assert_close(pred.mutual_information, bl.metrics.mutual_information(probs))
    torch.testing.assert_close(
        pred.predictive_entropy, pred.expected_entropy + pred.mutual_information
    )
    assert (pred.mutual_information > 0).all()
    # the samples are class labels; their moments are taken as floats
    assert pred.samples.dtype == torch.long and pred.samples.shape == (8, 5)
    assert pred.mean.is_floating_point()


def test_mutual_information_is_zero_when_all_samples_agree() -> None:
    """A deterministic network before a Categorical head: every function sample gives the
    same probabilities, so MI = 0 and the predictive entropy is the expected entropy."""
    model = nn.Sequential(nn.Linear(3, 4), CategoricalHead()).double()
    pred = bl.predict(model, torch.randn(6, 3, dtype=torch.float64), 10)
    assert pred.mutual_information.abs().max() <= 1e-12
    torch.testing.assert_close(pred.predictive_entropy, pred.expected_entropy)
    assert (pred.predictive_entropy > 0.1).all()


def test_bernoulli_output_gives_two_class_probabilities_per_unit() -> None:
    """Independent Bernoulli units: probabilities (1 - p, p) per unit, entropies per unit."""
    layer = layers.LinearFlipout(3, 4)
    model = nn.Sequential(layer, BernoulliHead())
    seen = record_hidden(layer)
    pred = bl.predict(model, torch.randn(5, 3), 6)
    p = torch.cat(seen).reshape(6, 5, 4).sigmoid()
    assert pred.output_probs is not None and pred.output_probs.shape == (6, 5, 4, 2)
    torch.testing.assert_close(pred.output_probs, torch.stack([1 - p, p], -1))
    assert pred.mutual_information.shape == (5, 4)
    binary = -(p * p.log() + (1 - p) * (1 - p).log())
    torch.testing.assert_close(pred.expected_entropy, binary.mean(0))


def test_decomposition_needs_the_right_kind_of_output() -> None:
    x = torch.randn(3, 2, 3)
    tensor_pred = bl.predict(make_mlp(), x, 4)
    assert tensor_pred.output_mean is None and tensor_pred.output_probs is None
    with pytest.raises(ValueError, match=r"Predictive.aleatoric needs.*RandomVariable"):
        _ = tensor_pred.aleatoric
    with pytest.raises(ValueError, match=r"Predictive.mutual_information needs.*Categorical"):
        _ = tensor_pred.mutual_information
    normal_pred = bl.predict(nn.Sequential(make_mlp(), NormalHead()), x, 4)
    with pytest.raises(ValueError, match="predictive_entropy"):
        _ = normal_pred.predictive_entropy
    cat_pred = bl.predict(nn.Sequential(make_mlp(), CategoricalHead()), x, 4)
    with pytest.raises(ValueError, match=r"epistemic.*class probabilities"):
        _ = cat_pred.epistemic

    class NoMoments(nn.Module):  # a family without closed-form moments
        def forward(self, h: Tensor) -> bl.RandomVariable:
            base = Normal(h, 1.0)
            return bl.RandomVariable(
                torch.distributions.TransformedDistribution(
                    base, [torch.distributions.transforms.TanhTransform()]
                )
            )

    pred = bl.predict(nn.Sequential(make_mlp(), NoMoments()), x, 4)
    assert pred.output_mean is None and pred.samples.shape == (4, 3, 2)


def test_vectorised_call_rejects_a_distribution_without_the_folded_batch() -> None:
    """A head whose distribution does not carry the K·B rows (here: one distribution shared
    by the batch, the rows only in the value's sample shape) cannot be read as (K, B, ...)."""

    class SharedHead(nn.Module):
        def forward(self, h: Tensor) -> bl.RandomVariable:
            return bl.RandomVariable(Normal(h.mean(0), 1.0), sample_shape=(h.shape[0],))

    model = nn.Sequential(make_mlp(), SharedHead())
    with pytest.raises(ValueError, match=r"predict expected the output distribution's mean.*"
                       r"vectorized=False"):  # fmt: skip
        bl.predict(model, torch.randn(3, 2, 3), 4)


# ------------------------------------------- with the library's stochastic output layers
def test_decomposition_through_layers_normal_after_bayesian_layers() -> None:
    """Flipout MLP -> layers.Normal(units=1): the vectorised call's distribution (K·B rows,
    one event dimension) folds to (K, B, 1); with the head's input h_k recorded, the moments
    are its documented layout ``[loc | scale_raw]``, scale = softplus(scale_raw) + min_scale.
    Under posterior means the vectorised and looped calls agree and epistemic is 0."""
    head = layers.Normal(units=1, in_features=8)
    model = nn.Sequential(
        layers.LinearFlipout(3, 8), nn.Tanh(), layers.LinearFlipout(8, 8), nn.Tanh(), head
    ).double()
    seen: list[Tensor] = []
    head.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    x = torch.randn(5, 3, dtype=torch.float64)
    pred = bl.predict(model, x, 6, chunk_size=4)  # two chunks: 4 + 2 function samples
    h = torch.cat(seen).reshape(6, 5, 8)
    assert head.projection is not None
    raw = head.projection(h).detach()  # (K, B, 2)
    scale = F.softplus(raw[..., 1:]) + head.min_scale
    assert pred.output_mean is not None and pred.output_variance is not None
    torch.testing.assert_close(pred.output_mean, raw[..., :1])
    torch.testing.assert_close(pred.output_variance, scale.square())
    assert pred.samples.shape == (6, 5, 1)
    assert pred.aleatoric.shape == pred.epistemic.shape == pred.total.shape == (5, 1)
    assert (pred.epistemic > 0).all()
    with bl.posterior_mean(model):
        vec = bl.predict(model, x, 3)
        loop = bl.predict(model, x, 3, vectorized=False)
    torch.testing.assert_close(vec.output_mean, loop.output_mean)
    torch.testing.assert_close(vec.aleatoric, loop.aleatoric)
    assert vec.epistemic.abs().max() < 1e-20


@pytest.mark.parametrize("event_dims", [0, 1])
def test_decomposition_through_layers_categorical_and_bernoulli(event_dims: int) -> None:
    """layers.Categorical (probabilities over the last input dim) and layers.Bernoulli
    (two classes per unit), with and without wrapping the event in Independent."""
    x = torch.randn(4, 3)
    cat = nn.Sequential(
        layers.LinearFlipout(3, 6),
        nn.Unflatten(1, (2, 3)),  # (B, 2, 3): two labels with three classes each
        layers.Categorical(event_dims=event_dims),
    )
    pred = bl.predict(cat, x, 5)
    assert pred.samples.shape == (5, 4, 2) and pred.samples.dtype == torch.long
    assert pred.output_probs is not None and pred.output_probs.shape == (5, 4, 2, 3)
    torch.testing.assert_close(pred.output_probs.sum(-1), torch.ones(5, 4, 2))
    assert pred.mutual_information.shape == (4, 2) and (pred.mutual_information > 0).all()
    torch.testing.assert_close(
        pred.predictive_entropy, pred.expected_entropy + pred.mutual_information
    )
    bern = nn.Sequential(layers.LinearFlipout(3, 2), layers.Bernoulli(event_dims=event_dims))
    pred = bl.predict(bern, x, 5)
    assert pred.output_probs is not None and pred.output_probs.shape == (5, 4, 2, 2)
    assert pred.predictive_entropy.shape == (4, 2)
    assert (pred.predictive_entropy <= math.log(2) + 1e-6).all()


# ============================================ layers joint over the batch (GPs)
def _readme_gp(noise: float | None = None) -> tuple[layers.GaussianProcess, Tensor]:
    """The README's GP (ARD kernel + WhiteNoise(0.1)) on 30 points in 8-d, float64; test
    inputs: two near the data, two far away."""
    gen = torch.Generator().manual_seed(3)
    x_train = torch.rand(30, 8, generator=gen, dtype=torch.float64)
    y_train = torch.sin(3 * x_train.sum(1, keepdim=True))
    kernel = layers.ExponentiatedQuadratic(length_scale=[1.0] * 8, dtype=torch.float64)
    if noise is None:
        kernel = kernel + layers.WhiteNoise(0.1, dtype=torch.float64)
    gp = layers.GaussianProcess(
        1,
        covariance_fn=kernel,
        conditional_inputs=x_train,
        conditional_outputs=y_train,
        observation_noise=1e-6 if noise is None else noise,
        dtype=torch.float64,
    )
    x = torch.cat([x_train[:2] + 0.01, x_train[:2] + 10.0])  # (4, 8)
    return gp, x


@pytest.mark.parametrize("white_noise", [True, False], ids=["white", "default-noise"])
@pytest.mark.parametrize("vectorized", [True, False])
def test_predict_on_an_exact_gp_gives_its_marginal_predictive(
    white_noise: bool, vectorized: bool
) -> None:
    """Mean and variance of K predictive samples (4000 vectorised, 500 looped) against
    the layer's exact marginals: mean within z·sqrt(v/K), variance within z·v·sqrt(2/K)
    (normal samples);
    k = 4 points × 2 moments × 4 cases = 32 checks at α = 1e-3. The folded copies used
    to be one joint draw (variance ≈ 0.1 everywhere, or a singular 240 × 240 Cholesky)."""
    gp, x = _readme_gp(None if white_noise else 1e-6)
    with torch.no_grad():
        exact = gp(x).distribution
    mean, var = exact.mean, exact.variance  # (4, 1)
    k = 4000 if vectorized else 500
    pred = bl.predict(gp, x, k, vectorized=vectorized)
    z = z_bonferroni(32)
    assert pred.samples.shape == (k, 4, 1)
    assert ((pred.mean - mean).abs() <= z * (var / k).sqrt()).all(), (pred.mean, mean)
    assert ((pred.variance - var).abs() <= z * var * math.sqrt(2 / k)).all(), (pred.variance, var)
    assert var[2:].min() > 5 * var[:2].max()  # the test has power: far points are uncertain


def test_predict_reports_function_space_variance_as_epistemic() -> None:
    """A GP's output is a distribution over function values: its variance is epistemic."""
    gp, x = _readme_gp()
    with torch.no_grad():
        var = gp(x).distribution.variance
    pred = bl.predict(gp, x, 64)
    torch.testing.assert_close(pred.total, var)
    torch.testing.assert_close(pred.epistemic, var)
    assert torch.equal(pred.aleatoric, torch.zeros_like(var))


class _SharedShift(nn.Module):
    """``x + z`` with one ``z ~ N(0, 1)`` for the whole batch: joint over the batch."""

    joint_over_batch = True

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.randn((), dtype=x.dtype)


def test_predict_on_any_joint_over_batch_module_samples_independent_functions() -> None:
    """Folding K copies into one batch would give them one shared z (variance 0);
    predict must give K independent draws: variance of K = 4000 N(0, 1) within
    z · sqrt(2/K) of 1 (k = 3 checks, α = 1e-3)."""
    k = 4000
    pred = bl.predict(_SharedShift(), torch.zeros(3, 1), k)
    assert ((pred.variance - 1.0).abs() <= z_bonferroni(3) * math.sqrt(2 / k)).all()


# ============================================================ predict: usability
def test_predict_error_names_the_users_shapes() -> None:
    """A 6-input model given one unbatched example: the folded call fails on K × 6
    rows, a size the user never passed; the error names (6,) and the fix."""
    model = nn.Sequential(layers.LinearFlipout(6, 2))
    with pytest.raises(ValueError, match=r"x of shape \(6,\).*\(1, 6\)") as info:
        bl.predict(model, torch.randn(6), 4)
    assert "(24,)" not in str(info.value)
    with pytest.raises(ValueError, match=r"got \(5, 3\)"):  # the model's own error, user shapes
        bl.predict(model, torch.randn(5, 3), 4)


@pytest.mark.parametrize("vectorized", [True, False])
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda c: c.__name__)
def test_predict_on_an_empty_batch(estimator: type, vectorized: bool) -> None:
    """``B = 0``: K empty samples, whatever draws at the trunk's shared output (the
    batch-joint form of a reparameterization layer has no ``0 x 0`` factor to take)."""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), estimator(6, 2))
    for trunk in ("auto", None):
        pred = bl.predict(model, torch.randn(0, 4), 3, trunk=trunk, vectorized=vectorized)
        assert pred.samples.shape == (3, 0, 2) and pred.variance.shape == (0, 2)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda c: c.__name__)
def test_predict_under_inference_mode_equals_no_grad(estimator: type) -> None:
    """Inside ``torch.inference_mode`` (a usual evaluation loop) ``predict`` gives the
    samples of ``torch.no_grad`` for a fixed seed, for every trunk: the recorded prefix
    and the per-call moments store read in-place versions, which inference tensors
    lack; the identity at the front hands the inference input itself to the recorder."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), nn.Linear(4, 6), nn.ReLU(), estimator(6, 3))
    x = torch.randn(5, 4)
    for trunk in ("auto", "prefix", None):
        torch.manual_seed(1)
        with torch.no_grad():
            want = bl.predict(model, x, 4, trunk=trunk).samples
        torch.manual_seed(1)
        with torch.inference_mode():
            got = bl.predict(model, x.clone(), 4, trunk=trunk).samples
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("trunk", ["auto", "prefix", None])
def test_predict_on_one_example_folds_into_contiguous_memory(trunk: str | None) -> None:
    """``B = 1``: the folded input is K contiguous copies (not a zero-stride view of
    ``x``), so a model that calls ``.view(-1, d)`` on it runs."""

    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = layers.LinearReparameterization(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            b, t, d = x.shape
            return self.linear(x.view(-1, d)).view(b, t, -1)

    x = torch.randn(1, 3, 4)
    assert bl.predict(Flat(), x, 4, trunk=trunk).samples.shape == (4, 1, 3, 2)


def test_predictive_repr_is_short() -> None:
    model = nn.Sequential(layers.LinearFlipout(3, 2), layers.Normal(event_dims=1))
    pred = bl.predict(model, torch.randn(5, 3), 16)
    text = repr(pred)
    assert text.startswith("Predictive(num_samples=16") and len(text) < 300, text
    assert "samples=(16, 5, 2)" in text and "aleatoric" in text and "tensor(" not in text
    assert "output_probs" not in text  # absent fields are not listed


def test_predict_runs_batch_norm_in_eval_and_restores_its_mode() -> None:
    bn = nn.BatchNorm1d(3)
    model = nn.Sequential(bn, layers.LinearFlipout(3, 2))
    model.train()
    x = torch.randn(8, 3) * 4 + 2
    with bl.posterior_mean(model):
        pred = bl.predict(model, x, 4)
        model.eval()
        expected = model(x)
        model.train()
    assert bn.training and int(bn.num_batches_tracked) == 0
    torch.testing.assert_close(bn.running_mean, torch.zeros(3))
    torch.testing.assert_close(pred.mean, expected)


class _MarkedNormal(nn.Module):
    """Returns ``N(x, 2²)`` marked as a distribution over function values (what the
    sparse GP and random-feature layers do)."""

    def forward(self, x: Tensor) -> bl.RandomVariable:
        from bayesian_layers._function_space import mark_function_space

        return mark_function_space(bl.RandomVariable(Normal(x, 2.0 * torch.ones_like(x))))


def test_batch_norm_without_running_statistics_normalises_each_sample_alone() -> None:
    """A batch norm with ``track_running_stats=False`` normalises with the statistics of
    the batch it sees, in eval mode too: after a Bayesian layer each function sample's
    batch ``x`` is normalised alone, as in a loop of K calls (the folded ``K × B`` batch
    would mix the samples), so its output averages to the bias over the batch."""
    model = nn.Sequential(
        layers.LinearReparameterization(3, 4, dtype=torch.float64),
        nn.BatchNorm1d(4, track_running_stats=False, affine=False, dtype=torch.float64),
        nn.Linear(4, 1, dtype=torch.float64),
    ).eval()
    x = torch.randn(6, 3, dtype=torch.float64)
    for vectorized in (True, False):
        samples = bl.predict(model, x, 8, vectorized=vectorized).samples  # (K, B, 1)
        bias = model[2].bias.detach().expand(8, 1)
        torch.testing.assert_close(samples.mean(1), bias, rtol=0, atol=1e-12)
    # in the trunk it sees only x: the folded call stays, ensemble members included
    norm = nn.BatchNorm1d(3, track_running_stats=False, dtype=torch.float64)
    members = layers.LinearBatchEnsemble(3, 2, ensemble_size=2, dtype=torch.float64)
    model = nn.Sequential(norm, members).eval()
    for trunk in ("auto", "prefix", norm):
        bl.predict(model, x, 4, trunk=trunk)
    with pytest.raises(ValueError, match="BatchNorm1d without running statistics"):
        bl.predict(nn.Sequential(members, nn.BatchNorm1d(2, track_running_stats=False)), x, 4)


@pytest.mark.parametrize("vectorized", [True, False])
def test_a_marked_output_has_all_its_variance_epistemic(vectorized: bool) -> None:
    pred = bl.predict(_MarkedNormal(), torch.zeros(3, 1), 8, vectorized=vectorized)
    assert pred.function_space
    torch.testing.assert_close(pred.epistemic, torch.full((3, 1), 4.0))
    torch.testing.assert_close(pred.aleatoric, torch.zeros(3, 1))
