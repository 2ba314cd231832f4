"""Tests for the Bayesian dense layers (``bayesian_layers.layers.linear``) and their
pure kernels (``bayesian_layers.layers.functional.linear``).

1. A contract suite over a registry of estimators (one line per new layer).
2. Closed-form output moments of each estimator, and Flipout/LRT decorrelation.
3. Conjugate Bayesian linear regression, where mean-field VI is exact.
4. Gradients when a layer is used several times before one backward, against
   central finite differences of the seeded forward; ``gradcheck`` on the kernels.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterator
from functools import cache
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from stats_util import finite_difference, z_bonferroni
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers.layers.functional import linear as K
from bayesian_layers.regularizers import MonteCarloKLDivergence, NormalKLDivergence


class Spec(NamedTuple):
    cls: type[layers.BayesianLayer]
    #: one whole weight draw shared by the batch (its value is ``layer.weight.value``)
    whole_weight: bool


# The registry: a new dense estimator is one line here.
LAYERS = [
    Spec(layers.LinearReparameterization, whole_weight=True),
    Spec(layers.LinearFlipout, whole_weight=False),
    Spec(layers.LinearLocalReparameterization, whole_weight=False),
]
LAYER_IDS = [s.cls.__name__ for s in LAYERS]
parametrize_layers = pytest.mark.parametrize("spec", LAYERS, ids=LAYER_IDS)

IN, OUT = 3, 2
RANDOM_BIAS = {"bias_initializer": "trainable_normal", "bias_regularizer": "normal_kl_divergence"}


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    # One intra-op thread: these tensors are tiny and thread hand-off dominates otherwise.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def random_params(layer: nn.Module, scale_low: float = 0.3, scale_high: float = 0.8) -> None:
    """Give every parameter a generic value: locs ~ N(0, 1), scales ~ U(low, high)."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                scale = torch.empty_like(p).uniform_(scale_low, scale_high)
                p.copy_(scale.expm1().log())  # softplus⁻¹
            else:
                p.normal_()


def kl_reference(layer: nn.Module, name: str, prior: Normal) -> Tensor:
    loc, rho = getattr(layer, f"{name}_loc"), getattr(layer, f"{name}_rho")
    return kl_divergence(Normal(loc, F.softplus(rho)), prior).sum()


@parametrize_layers
def test_state_dict_round_trip_with_weights_only(spec: Spec) -> None:
    """Priors included: a fresh model built with default priors gets them from the file."""
    src = spec.cls(
        IN,
        OUT,
        bias_initializer="trainable_normal",
        weight_regularizer=NormalKLDivergence(0.5, 2.0),
        bias_regularizer=NormalKLDivergence(-0.25, 3.0),
    )
    random_params(src)
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {
        "weight_loc",
        "weight_rho",
        "bias_loc",
        "bias_rho",
        "weight_regularizer.prior_loc",
        "weight_regularizer.prior_scale",
        "bias_regularizer.prior_loc",
        "bias_regularizer.prior_scale",
    }
    dst = spec.cls(IN, OUT, **RANDOM_BIAS)
    dst.load_state_dict(state)
    assert float(dst.weight_regularizer.prior_loc) == 0.5
    assert float(dst.weight_regularizer.prior_scale) == 2.0
    assert float(dst.bias_regularizer.prior_loc) == -0.25
    assert float(dst.bias_regularizer.prior_scale) == 3.0
    torch.testing.assert_close(dst.losses, src.losses)
    x = torch.randn(4, IN)
    with bl.posterior_mean(src), bl.posterior_mean(dst):
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    torch.manual_seed(5)
    expected = src(x)
    torch.manual_seed(5)
    torch.testing.assert_close(dst(x), expected, rtol=0, atol=0)


@parametrize_layers
@pytest.mark.parametrize("shape", [(4, IN + 1), (IN + 1,), (2, 3, 1)], ids=str)
def test_wrong_input_size_names_both_shapes(spec: Spec, shape: tuple[int, ...]) -> None:
    layer = spec.cls(IN, OUT)
    with pytest.raises(ValueError) as info:
        layer(torch.randn(shape))
    message = str(info.value)
    assert spec.cls.__name__ in message
    assert f"(*, {IN})" in message
    assert re.search(re.escape(str(tuple(shape))), message), message
    with pytest.raises(ValueError, match=spec.cls.__name__):
        layer(torch.tensor(1.0))


@parametrize_layers
def test_bad_input_types_raise_type_error(spec: Spec) -> None:
    layer = spec.cls(IN, OUT)
    with pytest.raises(TypeError, match=f"{spec.cls.__name__}.*int64"):
        layer(torch.ones(4, IN, dtype=torch.int64))
    with pytest.raises(TypeError, match=spec.cls.__name__):
        layer([[1.0, 2.0, 3.0]])
    # a random variable acts as its value
    rv = bl.RandomVariable(Normal(torch.zeros(4, IN), 1.0))
    with bl.posterior_mean(layer):
        torch.testing.assert_close(layer(rv), layer(rv.value))


@parametrize_layers
@pytest.mark.parametrize("value", [0, -2, 2.0, True], ids=str)
def test_bad_feature_counts(spec: Spec, value: object) -> None:
    error = ValueError if isinstance(value, int) and not isinstance(value, bool) else TypeError
    with pytest.raises(error, match="in_features"):
        spec.cls(value, OUT)
    with pytest.raises(error, match="out_features"):
        spec.cls(IN, value)


@parametrize_layers
def test_from_torch_copies_weights(spec: Spec) -> None:
    linear = nn.Linear(IN, OUT, dtype=torch.float64)
    layer = spec.cls.from_torch(linear)
    assert type(layer) is spec.cls
    assert (layer.in_features, layer.out_features) == (IN, OUT)
    assert layer.weight_loc.dtype == torch.float64
    torch.testing.assert_close(layer.weight_loc, linear.weight, rtol=0, atol=0)
    torch.testing.assert_close(layer.bias, linear.bias, rtol=0, atol=0)
    x = torch.randn(5, IN, dtype=torch.float64)
    with bl.posterior_mean(layer):
        torch.testing.assert_close(layer(x), linear(x))
    # copies, not aliases
    with torch.no_grad():
        linear.weight.add_(1.0)
    assert not torch.equal(layer.weight_loc, linear.weight)

    random_bias = spec.cls.from_torch(linear, bias_initializer="trainable_normal")
    torch.testing.assert_close(random_bias.bias_loc, linear.bias, rtol=0, atol=0)
    assert spec.cls.from_torch(nn.Linear(IN, OUT, bias=False)).use_bias is False
    with pytest.raises(TypeError, match="nn.Linear"):
        spec.cls.from_torch(nn.Conv1d(IN, OUT, 1))


def test_from_torch_rejects_non_normal_posteriors() -> None:
    with pytest.raises(ValueError, match="TrainableLogNormal"):
        layers.LinearReparameterization.from_torch(
            nn.Linear(IN, OUT), weight_initializer="trainable_log_normal"
        )
    for cls in (layers.LinearFlipout, layers.LinearLocalReparameterization):
        with pytest.raises(ValueError, match=cls.__name__):
            cls(IN, OUT, weight_initializer="trainable_log_normal")
    with pytest.raises(ValueError, match="LinearLocalReparameterization"):
        layers.LinearLocalReparameterization(IN, OUT, bias_initializer="trainable_half_cauchy")


def test_from_linear_is_a_deprecated_alias_of_from_torch() -> None:
    linear = nn.Linear(IN, OUT)
    with pytest.warns(DeprecationWarning, match="from_torch"):
        layer = layers.LinearFlipout.from_linear(linear)
    assert type(layer) is layers.LinearFlipout
    torch.testing.assert_close(layer.weight_loc, linear.weight, rtol=0, atol=0)


def test_registry_maps_nn_linear_to_every_estimator() -> None:
    from bayesian_layers.layers import registry

    assert dict(registry.counterparts(nn.Linear)) == {
        "reparameterization": layers.LinearReparameterization,
        "flipout": layers.LinearFlipout,
        "local_reparameterization": layers.LinearLocalReparameterization,
        "variational_dropout": layers.LinearVariationalDropout,  # a family with its posterior
    }


@parametrize_layers
@pytest.mark.parametrize("bias_kwargs", [{}, RANDOM_BIAS], ids=["fixed_bias", "random_bias"])
def test_weight_is_a_random_variable_of_the_posterior(spec: Spec, bias_kwargs: dict) -> None:
    layer = spec.cls(IN, OUT, **bias_kwargs)
    random_params(layer)
    weight = layer.weight
    assert isinstance(weight, bl.RandomVariable)
    torch.testing.assert_close(weight.distribution.mean, layer.weight_loc)
    torch.testing.assert_close(weight.distribution.stddev, F.softplus(layer.weight_rho))
    torch.testing.assert_close(weight.value, layer.weight_loc)  # before any draw
    if bias_kwargs:
        assert isinstance(layer.bias, bl.RandomVariable)
        torch.testing.assert_close(layer.bias.distribution.mean, layer.bias_loc)
    else:
        assert isinstance(layer.bias, nn.Parameter)

    x = torch.randn(4, IN)
    out = layer(x)
    value = layer.weight.value
    if spec.whole_weight:
        assert not torch.equal(value, layer.weight_loc)
        bias = layer.bias.value if bias_kwargs else layer.bias
        torch.testing.assert_close(out, F.linear(x, value, bias))
        # the value is a draw from q(W): differentiable in the posterior parameters
        value.sum().backward()
        assert layer.weight_rho.grad is not None
    else:
        torch.testing.assert_close(value, layer.weight_loc, rtol=0, atol=0)


def test_vectorized_reparameterization_uses_one_weight_per_sample() -> None:
    """Sample-major folding: rows ``k * B:(k + 1) * B`` see the k-th weight draw."""
    layer = layers.LinearReparameterization(IN, OUT, **RANDOM_BIAS)
    random_params(layer)
    n_samples, batch = 4, 5
    x = torch.randn(batch, IN)
    with bl.vectorized_samples(layer, n_samples):
        out = layer(x.repeat(n_samples, 1)).view(n_samples, batch, OUT)
    weights, biases = layer.weight.value, layer.bias.value
    assert weights.shape == (n_samples, OUT, IN) and biases.shape == (n_samples, OUT)
    assert layer.weight.sample_shape == (n_samples,)
    for k in range(n_samples):
        torch.testing.assert_close(out[k], F.linear(x, weights[k], biases[k]))


def test_monte_carlo_losses_average_over_vectorized_samples() -> None:
    """With a Monte Carlo regularizer the loss is the mean single-sample estimate over K."""
    prior = Normal(torch.tensor(0.0), torch.tensor(1.0))
    layer = layers.LinearReparameterization(
        IN, OUT, weight_regularizer=MonteCarloKLDivergence(prior)
    )
    with bl.vectorized_samples(layer, 4):
        layer(torch.randn(8, IN))
    w = layer.weight.value  # (4, OUT, IN)
    q = Normal(layer.weight_loc, F.softplus(layer.weight_rho))
    expected = (q.log_prob(w) - prior.log_prob(w)).sum() / 4
    torch.testing.assert_close(layer.losses[0], expected)
    layer(torch.randn(2, IN))  # a plain call: the estimate follows the latest single draw
    w = layer.weight.value
    torch.testing.assert_close(layer.losses[0], (q.log_prob(w) - prior.log_prob(w)).sum())


_STALE_SCALE = (
    "initializers.py cached_softplus: the softplus(rho) cache is keyed on (id(rho), "
    "rho._version, requires_grad, grad mode); replacing or editing a parameter's data "
    "outside autograd (param.data = ..., as torch.nn.utils.vector_to_parameters and "
    "Module.double()/.to() do) changes neither, so a stale scale is returned"
)


@parametrize_layers
def test_posterior_follows_parameters_set_by_vector_to_parameters(spec: Spec) -> None:
    layer = spec.cls(IN, OUT)
    x = torch.randn(4, IN)
    with torch.no_grad():
        layer(x)  # an evaluation pass first
        vec = parameters_to_vector(layer.parameters()).clone()
        vec[OUT * IN : 2 * OUT * IN] = -100.0  # weight_rho: posterior scale ≈ 0
        vector_to_parameters(vec, layer.parameters())
        assert layer.weight_rho.max() == -100.0
        torch.testing.assert_close(
            layer.weight.distribution.stddev, F.softplus(layer.weight_rho), atol=1e-30, rtol=0
        )
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight_loc, layer.bias))


def test_extra_repr_mirrors_nn_linear() -> None:
    text = repr(layers.LinearFlipout(IN, OUT, bias=False))
    assert f"in_features={IN}, out_features={OUT}, bias=False" in text


# ================================================================ closed-form moments
N_PASSES = 10_000
# x: four rows, rows 0 and 1 identical (for the decorrelation test)
_ROWS = 4


def _moment_layer(spec: Spec, random_bias: bool) -> tuple[nn.Module, Tensor]:
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(2024)
    kwargs = RANDOM_BIAS if random_bias else {}
    layer = spec.cls(IN, OUT, dtype=torch.float64, **kwargs)
    random_params(layer, 0.3, 0.8)
    if random_bias:
        with torch.no_grad():  # a bias scale comparable to the weight term: σ_b matters
            layer.bias_rho.copy_(torch.tensor([0.7, 1.0], dtype=torch.float64).expm1().log())
    else:
        with torch.no_grad():
            layer.bias.normal_()
    x = torch.randn(_ROWS, IN, dtype=torch.float64)
    x[1] = x[0]
    torch.random.set_rng_state(gen_state)
    return layer, x


def _closed_form_moments(layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    weight_scale = F.softplus(layer.weight_rho)
    if isinstance(layer.bias, bl.RandomVariable):
        bias_loc, bias_var = layer.bias_loc, F.softplus(layer.bias_rho).square()
    else:
        bias_loc, bias_var = layer.bias, None
    mean = F.linear(x, layer.weight_loc, bias_loc)
    var = F.linear(x.square(), weight_scale.square(), bias_var)
    return mean.detach(), var.detach()


@cache
def _passes(index: int, random_bias: bool, vectorized: bool) -> Tensor:
    """``(N_PASSES, rows, OUT)`` outputs of independent forward passes (cached)."""
    layer, x = _moment_layer(LAYERS[index], random_bias)
    torch.manual_seed(1000 + 10 * index + 2 * random_bias + vectorized)
    with torch.no_grad():
        if vectorized:
            return bl.predict(layer, x, N_PASSES).samples
        return torch.stack([layer(x) for _ in range(N_PASSES)])


@pytest.mark.parametrize("vectorized", [False, True], ids=["looped", "vectorized"])
@pytest.mark.parametrize("random_bias", [False, True], ids=["fixed_bias", "random_bias"])
@pytest.mark.parametrize("index", range(len(LAYERS)), ids=LAYER_IDS)
def test_output_moments_match_closed_form(index: int, random_bias: bool, vectorized: bool) -> None:
    """MC mean and variance of n forward passes vs ``F.linear(x, μ_W, μ_b)`` and
    ``F.linear(x², σ_W², σ_b²)``.

    n = 10 000 passes at fixed x (4 rows × 2 outputs); k = 16 simultaneous checks
    (8 means, 8 variances) at family-wise α = 1e-3, z = z(1 - α/2k) ≈ 4.2. Means:
    half-width z·σ/√n with the exact σ. Variances (the output is normal for all three
    estimators): the unbiased sample variance has standard error sqrt(2σ⁴/(n - 1)),
    half-width z·sqrt(2/(n - 1))·σ² ≈ 6 % of σ², so a missing σ_b² (≥ 10 % of the
    variance here) or a scale/variance mix-up fails. Looped calls and one
    vectorised call with K = n are both checked.
    """
    layer, x = _moment_layer(LAYERS[index], random_bias)
    mean, var = _closed_form_moments(layer, x)
    if random_bias:  # the bias term is a material part of the variance
        assert (F.softplus(layer.bias_rho).square() / var).min() > 0.1
    samples = _passes(index, random_bias, vectorized)
    assert samples.shape == (N_PASSES, _ROWS, OUT)
    n, z = N_PASSES, z_bonferroni(16)
    mean_err = (samples.mean(0) - mean).abs()
    assert (mean_err <= z * var.sqrt() / math.sqrt(n)).all(), (mean_err, var)
    var_err = (samples.var(0) - var).abs()
    assert (var_err <= z * math.sqrt(2 / (n - 1)) * var).all(), var_err / var


@pytest.mark.parametrize("vectorized", [False, True], ids=["looped", "vectorized"])
@pytest.mark.parametrize("index", range(len(LAYERS)), ids=LAYER_IDS)
def test_identical_rows_are_decorrelated_by_flipout_and_lrt(index: int, vectorized: bool) -> None:
    """Two identical input rows in one batch, correlation of their outputs across passes.

    Reparameterization shares the weight draw across the batch: r = 1 exactly.
    Flipout and LRT: the true correlation is 0 (a fixed bias here; Flipout's one bias
    draw per call would correlate them). For zero correlation the sample r has
    asymptotic variance E[u²v²]/n (u, v standardised); for LRT u, v are independent
    (E = 1), for Flipout they share ε and E[u²v²] = 1 + 2Σa⁴/(Σa²)² ≤ 3. Bound
    z·sqrt(3/n) with n = 10 000, k = 2 outputs, α = 1e-3: |r| ≤ 0.056.
    """
    samples = _passes(index, False, vectorized)
    a, b = samples[:, 0], samples[:, 1]  # (n, OUT) each
    a, b = a - a.mean(0), b - b.mean(0)
    r = (a * b).sum(0) / (a.square().sum(0) * b.square().sum(0)).sqrt()
    if LAYERS[index].whole_weight:
        torch.testing.assert_close(r, torch.ones_like(r))
    else:
        bound = z_bonferroni(OUT) * math.sqrt(3 / N_PASSES)
        assert (r.abs() <= bound).all(), (r, bound)


# ====================================================== conjugate Bayesian regression
def _regression_problem() -> dict[str, Tensor | float]:
    """Orthogonal design XᵀX = c·I: the exact posterior is diagonal, so mean-field is exact."""
    g = torch.Generator().manual_seed(7)
    n, d, c, noise_scale, prior_scale = 64, 4, 16.0, 1.0, 0.25
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    x = q * math.sqrt(c)
    w = torch.tensor([2.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    y = x @ w + noise_scale * torch.randn(n, generator=g, dtype=torch.float64)
    precision = c / noise_scale**2 + 1 / prior_scale**2
    return {
        "x": x,
        "y": y,
        "noise_scale": noise_scale,
        "prior_scale": prior_scale,
        "post_mean": (x.T @ y / noise_scale**2) / precision,
        "post_std": precision**-0.5,
    }


def _negative_elbo_terms(layer: nn.Module, prob: dict, num_samples: int) -> tuple[Tensor, Tensor]:
    """Mean Gaussian NLL over K function samples and n rows, and ``sum(bl.losses)``."""
    x, y = prob["x"], prob["y"]
    pred = bl.predict(layer, x, num_samples, grad=True).samples.squeeze(-1)  # (K, n)
    var = torch.full_like(pred, prob["noise_scale"] ** 2)
    nll = F.gaussian_nll_loss(pred, y.expand_as(pred), var, full=True)
    return nll, torch.stack(bl.losses(layer)).sum()


@pytest.mark.slow
@parametrize_layers
def test_conjugate_linear_regression_recovers_exact_posterior(spec: Spec) -> None:
    """Fit q(w) by minimising ``nll_mean + sum(bl.losses) / n`` (n·loss = -ELBO + const).

    Design: n = 64, d = 4, XᵀX = 16·I, noise σ = 1, prior N(0, 0.25²): the exact
    posterior is N(m, 0.177²·I), prior and likelihood precisions equal (16 each), so
    a KL scaled wrongly by any factor ≥ 1.5, a dropped prior, or scale mistaken for
    variance moves the optimum by ≥ 20 % of a posterior std. Adam (lr 0.05·(1+t/50)⁻¹,
    800 steps, K = 64 vectorised function samples per step, iterates averaged over the
    last 200) leaves an optimisation error ≲ 1 % (measured over seeds); tolerances:
    |loc - m| ≤ 0.05·std and |scale/std - 1| ≤ 0.03.
    """
    prob = _regression_problem()
    n, d = prob["x"].shape
    layer = spec.cls(
        d,
        1,
        bias=False,
        weight_regularizer=NormalKLDivergence(0.0, prob["prior_scale"]),
        dtype=torch.float64,
    )
    steps, num_samples, averaged = 800, 64, 200
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t / 50))
    loc_avg = torch.zeros(d, dtype=torch.float64)
    scale_avg = torch.zeros(d, dtype=torch.float64)
    for step in range(steps):
        opt.zero_grad()
        nll, kl = _negative_elbo_terms(layer, prob, num_samples)
        (nll + kl / n).backward()
        opt.step()
        sched.step()
        if step >= steps - averaged:
            loc_avg += layer.weight_loc.detach()[0] / averaged
            scale_avg += F.softplus(layer.weight_rho.detach())[0] / averaged
    post_mean, post_std = prob["post_mean"], prob["post_std"]
    assert ((loc_avg - post_mean).abs() <= 0.05 * post_std).all(), (loc_avg, post_mean)
    assert ((scale_avg / post_std - 1).abs() <= 0.03).all(), (scale_avg, post_std)


@parametrize_layers
def test_elbo_at_exact_posterior_equals_log_evidence(spec: Spec) -> None:
    """At q = exact posterior the ELBO equals log p(y): checks the ELBO scaling at once.

    ``n·(nll_mean + sum(losses)/n)`` estimated with K = 4096 function samples (through
    the layer and ``bl.losses``) vs ``-log N(y; 0, σ²I + s²XXᵀ)``. The estimate is a
    mean over K per-sample sums; half-width z(1 - α/2)·sd/√K with α = 1e-3 (k = 1).
    """
    prob = _regression_problem()
    x, y = prob["x"], prob["y"]
    n, d = x.shape
    layer = spec.cls(
        d,
        1,
        bias=False,
        weight_regularizer=NormalKLDivergence(0.0, prob["prior_scale"]),
        dtype=torch.float64,
    )
    with torch.no_grad():
        layer.weight_loc.copy_(prob["post_mean"])
        layer.weight_rho.fill_(math.log(math.expm1(prob["post_std"])))
    num_samples = 4096
    with torch.no_grad():
        pred = bl.predict(layer, x, num_samples).samples.squeeze(-1)  # (K, n)
        nll = F.gaussian_nll_loss(
            pred, y.expand_as(pred), torch.ones_like(pred), full=True, reduction="none"
        )
        per_sample = nll.sum(1)  # (K,): n · nll_mean for each function sample
        kl = torch.stack(bl.losses(layer)).sum()
    estimate = per_sample.mean() + kl
    cov = prob["noise_scale"] ** 2 * torch.eye(n, dtype=torch.float64)
    cov = cov + prob["prior_scale"] ** 2 * x @ x.T
    log_evidence = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=x.dtype), cov)
    expected = -log_evidence.log_prob(y)
    half_width = z_bonferroni(1) * per_sample.std() / math.sqrt(num_samples)
    assert abs(float(estimate - expected)) <= float(half_width), (estimate, expected)


# ============================================================= gradients under reuse


def _several_samples(layer: nn.Module, x: Tensor) -> Tensor:
    return sum((layer(x).tanh() * (i + 1)).sum() for i in range(3))


def _composed(layer: nn.Module, x: Tensor) -> Tensor:
    return layer(layer(x)).sin().sum()


def _composed_frozen(layer: nn.Module, x: Tensor) -> Tensor:
    with bl.frozen_sample(layer):
        return layer(layer(x)).sin().sum() + layer(x).square().sum()


def _vectorized(layer: nn.Module, x: Tensor) -> Tensor:
    return bl.predict(layer, x, 3, grad=True).samples.tanh().sum()


@parametrize_layers
@pytest.mark.parametrize(
    "use", [_several_samples, _composed, _composed_frozen, _vectorized], ids=lambda f: f.__name__
)
def test_gradients_under_reuse_match_finite_differences(spec: Spec, use: Callable) -> None:
    """One backward through several uses of a layer (summed MC samples, ``layer(layer(x))``,
    frozen reuse, vectorised K = 3) equals central finite differences of the same
    seeded computation (noise is a function of the seed only), in float64."""
    layer = spec.cls(IN, IN, dtype=torch.float64, **RANDOM_BIAS)
    random_params(layer)
    x = torch.randn(2, IN, dtype=torch.float64)

    def loss_fn() -> Tensor:
        torch.manual_seed(99)
        return use(layer, x) + torch.stack(layer.losses).sum()

    loss_fn().backward()
    params = list(layer.parameters())
    expected = finite_difference(loss_fn, params)
    for (name, p), g in zip(layer.named_parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7, msg=name)


def _gradcheck_inputs() -> dict[str, Tensor]:
    def t(*shape: int, positive: bool = False) -> Tensor:
        v = torch.randn(*shape, dtype=torch.float64)
        return (v.abs() + 0.1 if positive else v).requires_grad_()

    def signs(*shape: int) -> Tensor:
        return torch.randint(0, 2, shape).double() * 2 - 1

    return {
        "x": t(2, 3, IN),
        "loc": t(OUT, IN),
        "scale": t(OUT, IN, positive=True),
        "bias": t(OUT),
        "bias_scale": t(OUT, positive=True),
        "weight_noise": torch.randn(OUT, IN, dtype=torch.float64),
        "out_noise": torch.randn(2, 3, OUT, dtype=torch.float64),
        "sign_in": signs(2, 3, IN),
        "sign_out": signs(2, 3, OUT),
    }


def test_gradcheck_pure_kernels() -> None:
    """``gradcheck`` (float64) on every kernel, noise and signs held fixed."""
    v = _gradcheck_inputs()
    x, loc, scale, bias, bias_scale = v["x"], v["loc"], v["scale"], v["bias"], v["bias_scale"]

    def reparam(x, loc, scale, bias):
        return K.reparameterization_linear(x, loc, scale, v["weight_noise"], bias)

    def flipout(x, loc, scale, bias):
        return K.flipout_linear(x, loc, scale, v["weight_noise"], v["sign_in"], v["sign_out"], bias)

    def lrt(x, loc, scale, bias, bias_scale):
        return K.local_reparameterization_linear(x, loc, scale, v["out_noise"], bias, bias_scale)

    def lrt_fixed_bias(x, loc, scale, bias):
        return K.local_reparameterization_linear(x, loc, scale, v["out_noise"], bias)

    assert torch.autograd.gradcheck(reparam, (x, loc, scale, bias))
    assert torch.autograd.gradcheck(flipout, (x, loc, scale, bias))
    assert torch.autograd.gradcheck(lrt, (x, loc, scale, bias, bias_scale))
    assert torch.autograd.gradcheck(lrt_fixed_bias, (x, loc, scale, bias))

    k = 3
    xk = torch.randn(k * 4, 2, IN, dtype=torch.float64, requires_grad=True)
    wk = torch.randn(k, OUT, IN, dtype=torch.float64, requires_grad=True)
    bk = torch.randn(k, OUT, dtype=torch.float64, requires_grad=True)
    yk = torch.randn(k * 4, 2, OUT, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: K.batched_linear(x, w, b, k), (xk, wk, bk))
    assert torch.autograd.gradcheck(lambda x, w, b: K.batched_linear(x, w, b, k), (xk, wk, bias))
    assert torch.autograd.gradcheck(lambda x, w: K.batched_linear(x, w, None, k), (xk, wk))
    assert torch.autograd.gradcheck(lambda y, b: K.add_sample_bias(y, b, k), (yk, bk))
    assert torch.autograd.gradcheck(lambda y, b: K.add_sample_bias(y, b, k), (yk, bias))


def test_kernels_agree_with_their_definitions() -> None:
    """Values: each kernel equals the estimator written out by hand."""
    v = _gradcheck_inputs()
    x, loc, scale, bias, bias_scale = v["x"], v["loc"], v["scale"], v["bias"], v["bias_scale"]
    eps, s_in, s_out = v["weight_noise"], v["sign_in"], v["sign_out"]
    torch.testing.assert_close(
        K.reparameterization_linear(x, loc, scale, eps, bias), x @ (loc + scale * eps).T + bias
    )
    # Flipout: example b sees the weight μ + (σ∘ε)∘(s_out[b] s_in[b]ᵀ)
    out = K.flipout_linear(x, loc, scale, eps, s_in, s_out, bias)
    for idx in [(0, 0), (1, 2)]:
        w = loc + scale * eps * torch.outer(s_out[idx], s_in[idx])
        torch.testing.assert_close(out[idx], w @ x[idx] + bias)
    noise = v["out_noise"]
    std = (x.square() @ scale.square().T + bias_scale.square()).sqrt()
    torch.testing.assert_close(
        K.local_reparameterization_linear(x, loc, scale, noise, bias, bias_scale),
        x @ loc.T + bias + std * noise,
    )
    k = 3
    xk, wk, bk = torch.randn(k * 4, IN), torch.randn(k, OUT, IN), torch.randn(k, OUT)
    expected = torch.cat([F.linear(xk[4 * i : 4 * i + 4], wk[i], bk[i]) for i in range(k)])
    torch.testing.assert_close(K.batched_linear(xk, wk, bk, k), expected)
    y = torch.randn(k * 4, OUT)
    torch.testing.assert_close(K.add_sample_bias(y, bk, k), y + bk.repeat_interleave(4, 0))
    assert K.add_sample_bias(y, None, k) is y


@pytest.mark.parametrize("cls", [layers.LinearReparameterization, layers.LinearFlipout,
                                 layers.LinearLocalReparameterization])  # fmt: skip
def test_no_bias_reads_as_none_like_nn_linear(cls) -> None:
    layer = cls(3, 2, bias=False)
    assert layer.bias is None and nn.Linear(3, 2, bias=False).bias is None
    assert "bias" not in dict(layer.named_parameters())
    with bl.posterior_mean(layer):
        x = torch.randn(4, 3)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight_loc))
