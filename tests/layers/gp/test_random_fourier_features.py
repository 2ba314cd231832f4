"""RandomFourierFeatures: the kernel estimate's error rate, spectral sampling per kernel,
the variational marginal, the Laplace posterior as Bayesian linear regression, errors."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from stats_util import z_bonferroni
from torch import nn

import bayesian_layers as bl
from bayesian_layers import layers

F64 = torch.float64
AMP, LS = 1.3, 0.8
PAIRS = torch.tensor([[0.0, 0.0], [0.3, -0.2], [1.0, 0.5], [-0.4, 1.6]], dtype=F64)  # x0 vs rest


def _block_estimates(layer: layers.RandomFourierFeatures, block: int) -> torch.Tensor:
    """``(R, P)``: independent kernel estimates k(x0, x_p) from R disjoint feature blocks."""
    phi = layer.features(PAIRS)  # (1 + P, R * block)
    r = layer.num_features // block
    prods = (phi[:1] * phi[1:]).reshape(len(PAIRS) - 1, r, block)  # (P, R, block)
    return prods.sum(-1).mT * (layer.num_features / block)  # rescale √(2/M) to √(2/block)


def _estimator_variance(kernel: layers.StationaryKernel) -> torch.Tensor:
    """Per-feature variance ``amp⁴ (1 + k̃(2δ)/2 - k̃(δ)²)`` (k̃ = k / amp²), per pair ``(P,)``."""
    amp2 = kernel.amplitude.detach() ** 2
    x0, xs = PAIRS[:1], PAIRS[1:]
    k1 = kernel(x0, xs).detach()[0] / amp2
    k2 = kernel(x0, x0 + 2 * (xs - x0)).detach()[0] / amp2
    return amp2**2 * (1 + k2 / 2 - k1.square())


def test_kernel_estimate_error_shrinks_like_inverse_sqrt_features():
    """MSE of φ(x)ᵀφ(x') equals v/M at M = 16 and M = 256: R = 400 disjoint blocks, 3 pairs,
    2 feature counts (k = 6 checks, α = 1e-3), half-width z · sd(e²) / √R."""
    r = 400
    z = z_bonferroni(6)
    layer = layers.RandomFourierFeatures(
        1, 256 * r, in_features=2, amplitude=AMP, length_scale=LS, dtype=F64
    )
    exact = layer.kernel(PAIRS[:1], PAIRS[1:]).detach()[0]  # (P,)
    v = _estimator_variance(layer.kernel)
    mses = {}
    for m in (16, 256):
        sq_err = (_block_estimates(layer, m) - exact).square()  # (R, P)
        mse, se = sq_err.mean(0), sq_err.std(0) / math.sqrt(r)
        assert ((mse - v / m).abs() < z * se).all(), (m, mse, v / m, se)
        mses[m] = mse
    ratio = (mses[16] / mses[256]).mean().item()  # RMSE ratio 4 = √(256/16)
    assert 10 < ratio < 25, ratio


@pytest.mark.parametrize(
    "name", ["exponentiated_quadratic", "matern12", "matern32", "matern52", "rational_quadratic"]
)
def test_spectral_sampling_is_unbiased_for_each_kernel(name):
    """M = 60000 features: each estimate within z · √(v/M) of the exact kernel (3 pairs,
    5 kernels: k = 15 checks, α = 1e-3). Matérn uses Student-t frequencies."""
    m = 60_000
    kwargs = {"alpha": 0.7} if name == "rational_quadratic" else {}
    kernel = {
        "exponentiated_quadratic": layers.ExponentiatedQuadratic,
        "matern12": layers.Matern12,
        "matern32": layers.Matern32,
        "matern52": layers.Matern52,
        "rational_quadratic": layers.RationalQuadratic,
    }[name](AMP, torch.tensor([LS, 1.5 * LS]), dtype=F64, **kwargs)
    layer = layers.RandomFourierFeatures(1, m, kernel=kernel, dtype=F64)
    with torch.no_grad():
        phi = layer.features(PAIRS)
        est = (phi[:1] * phi[1:]).sum(-1)
        exact = kernel(PAIRS[:1], PAIRS[1:])[0]
    half_width = z_bonferroni(15) * (_estimator_variance(kernel) / m).sqrt()
    assert ((est - exact).abs() < half_width).all(), (est, exact, half_width)


def test_variational_output_is_the_exact_marginal_and_kl_in_losses():
    """K = 4000 function samples (vectorised): mean and variance match N(Wμ φ + b, σ_W² φ²)
    at 3 points x 2 units (k = 12 checks, α = 1e-3); the KL equals torch's closed form."""
    layer = layers.RandomFourierFeatures(2, 32, in_features=3, dtype=F64)
    with torch.no_grad():
        layer.weight_rho.fill_(-0.5)  # σ ≈ 0.47: a visible spread
    x = torch.randn(3, 3, dtype=F64)
    model = nn.Sequential(layer)
    pred = bl.predict(model, x, 4000)
    dist = layer(x).distribution
    phi = layer.features(x)
    loc, scale = layer.weight.distribution.mean, layer.weight.distribution.stddev
    torch.testing.assert_close(dist.mean, phi @ loc.mT + layer.bias)
    torch.testing.assert_close(dist.variance, phi.square() @ scale.square().mT)
    z = z_bonferroni(12)
    assert ((pred.mean - dist.mean).abs() < z * dist.stddev / math.sqrt(4000)).all()
    assert ((pred.variance - dist.variance).abs() < z * dist.variance * math.sqrt(2 / 4000)).all()
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0)
    ).sum()
    (term,) = bl.losses(model)
    torch.testing.assert_close(term, kl)


def test_laplace_variance_equals_bayesian_linear_regression():
    """P = I/s² + ΦᵀΦ accumulated over two training batches; the predictive variance
    φ*ᵀ P⁻¹ φ* equals the function-space (GP) form with kernel s² φᵀφ'."""
    s = 0.7
    layer = layers.RandomFourierFeatures(
        2, 24, in_features=2, posterior="laplace", prior_scale=s, dtype=F64
    )
    x = torch.randn(30, 2, dtype=F64)
    layer.train()
    layer(x[:13])
    layer(x[13:])
    layer.eval()
    xs = torch.randn(7, 2, dtype=F64)
    out = layer(xs)
    with torch.no_grad():
        phi, phis = layer.features(x), layer.features(xs)
        k_train = s**2 * phi @ phi.mT + torch.eye(30, dtype=F64)  # unit noise
        k_cross = s**2 * phis @ phi.mT
        ref = s**2 * phis.square().sum(-1) - (
            k_cross * torch.linalg.solve(k_train, k_cross.mT).mT
        ).sum(-1)
    torch.testing.assert_close(out.distribution.variance, ref.unsqueeze(-1).expand(7, 2))
    torch.testing.assert_close(out.value, phis @ layer.weight.mT + layer.bias)  # MAP value
    (penalty,) = layer.losses
    torch.testing.assert_close(penalty, 0.5 * layer.weight.square().sum() / s**2)
    layer.reset_precision()
    prior_var = layer(xs).distribution.variance[:, 0]
    torch.testing.assert_close(prior_var, s**2 * phis.square().sum(-1))
    layer.update_precision(phi, weights=torch.full((30,), 2.0, dtype=F64))  # noise var 1/2
    torch.testing.assert_close(layer.precision, torch.eye(24, dtype=F64) / s**2 + 2 * phi.mT @ phi)


def test_gradcheck_features_and_state_dict_round_trip():
    layer = layers.RandomFourierFeatures(2, 8, kernel="matern52", dtype=F64)
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    layer(x)  # lazy: draws the frequencies
    assert torch.autograd.gradcheck(layer.features, [x])
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    fresh = layers.RandomFourierFeatures(2, 8, kernel="matern52", dtype=F64)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(fresh.features(x), layer.features(x))


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="length_scale > 0"):
        layers.RandomFourierFeatures(1, 8, length_scale=0.0)
    with pytest.raises(ValueError, match="num_features` >= 1, got 0"):
        layers.RandomFourierFeatures(1, 0)
    with pytest.raises(ValueError, match="kernel.*'cosine'"):
        layers.RandomFourierFeatures(1, 8, kernel="cosine")
    with pytest.raises(TypeError, match="Periodic"):
        layers.RandomFourierFeatures(1, 8, kernel=layers.Periodic())
    with pytest.raises(ValueError, match="posterior"):
        layers.RandomFourierFeatures(1, 8, posterior="ensemble")
    with pytest.raises(ValueError, match="3 length scales for in_features=2"):
        layers.RandomFourierFeatures(1, 8, in_features=2, length_scale=torch.ones(3))
    layer = layers.RandomFourierFeatures(1, 8, in_features=2)
    with pytest.raises(ValueError, match=r"\(\*, 2\).*\(5, 3\)"):
        layer(torch.randn(5, 3))
    with pytest.raises(RuntimeError, match="reset_precision needs posterior='laplace'"):
        layer.reset_precision()


def _laplace(**kw) -> layers.RandomFourierFeatures:
    torch.manual_seed(0)
    return layers.RandomFourierFeatures(2, 16, in_features=3, posterior="laplace", **kw)


def test_laplace_precision_changes_only_in_training_steps():
    """Train-mode calls under no_grad, posterior_mean, vectorized_samples or bl.predict
    leave P alone; a training forward (grad enabled, sampling) adds its batch once."""
    layer = _laplace()
    model = nn.Sequential(layer)
    x = torch.randn(5, 3)
    prior = layer.precision.clone()
    with torch.no_grad():
        layer(x)
    with bl.posterior_mean(model):
        layer(x)
    with bl.vectorized_samples(model, 4):
        layer(x.repeat(4, 1))
    bl.predict(model, x, 8)
    bl.predict(model, x, 3, vectorized=False)
    torch.testing.assert_close(layer.precision, prior, rtol=0, atol=0)
    out = layer(x)  # a training step
    phi = layer.features(x).detach()
    torch.testing.assert_close(layer.precision, prior + phi.mT @ phi)
    layer.eval()
    layer(x)
    torch.testing.assert_close(layer.precision, prior + phi.mT @ phi)
    assert out.value.requires_grad


@pytest.mark.parametrize("posterior", ["variational", "laplace"])
def test_output_is_marked_as_function_values_named_and_traced(posterior):
    from bayesian_layers._function_space import is_function_space

    layer = layers.RandomFourierFeatures(2, 16, posterior=posterior, name="g")
    x = torch.randn(5, 3)
    out = layer(x)
    assert is_function_space(out) and out.name == "g"
    with bl.tape() as t:
        out = layer(x)
    assert "g" in t and t["g"] is out
    fixed = torch.ones(5, 2)
    with bl.condition(g=fixed):
        torch.testing.assert_close(layer(x).value, fixed)
    assert "name='g'" in repr(layer)
    pred = bl.predict(nn.Sequential(layer), x, 4)  # the GP variance is epistemic
    assert pred.samples.shape == (4, 5, 2)


def test_nan_features_raise_before_the_precision_changes():
    layer = _laplace()
    x = torch.randn(5, 3)
    before = layer.precision.clone()
    with pytest.raises(ValueError, match="RandomFourierFeatures.update_precision expected finite"):
        layer.update_precision(torch.full((2, 16), math.nan))
    with pytest.raises(ValueError, match="RandomFourierFeatures.*finite.*weights"):
        layer.update_precision(layer.features(x).detach(), torch.tensor([1.0, -1, 1, 1, 1]))
    with pytest.raises(ValueError, match="RandomFourierFeatures.*finite"):
        layer(torch.full((4, 3), math.nan))  # a training step on NaN input
    torch.testing.assert_close(layer.precision, before, rtol=0, atol=0)
    assert torch.isfinite(layer(x).distribution.variance).all()  # later calls still work


@pytest.mark.parametrize("posterior", ["variational", "laplace"])
def test_empty_batch_gives_an_empty_result(posterior):
    layer = layers.RandomFourierFeatures(2, 16, posterior=posterior)  # lazy: first call
    out = layer(torch.randn(0, 3))
    assert out.shape == (0, 2) and out.distribution.mean.shape == (0, 2)
    assert layer(torch.randn(4, 3)).shape == (4, 2)
    with bl.vectorized_samples(layer, 3):
        assert layer(torch.randn(0, 3)).shape == (0, 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.int64])
def test_wrong_input_dtype_raises_type_error(dtype):
    layer = layers.RandomFourierFeatures(2, 16, in_features=3)
    with pytest.raises(TypeError, match=f"RandomFourierFeatures expected .*`x`.*got {dtype}"):
        layer(torch.ones(4, 3, dtype=dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's dtype is accepted
        if dtype == torch.bfloat16:
            assert torch.isfinite(layer(torch.ones(4, 3, dtype=dtype)).value).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prior_scale": math.inf}, ValueError, "prior_scale` to be a finite number > 0"),
        ({"prior_scale": math.nan}, ValueError, "prior_scale"),
        ({"name": 1}, TypeError, "name` to be a str or None"),
        ({"bias": "no"}, TypeError, "bias` to be a bool"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=f"RandomFourierFeatures expected `{match}"):
        layers.RandomFourierFeatures(2, 8, **kwargs)


@pytest.mark.parametrize("posterior", ["variational", "laplace"])
def test_torch_func_grad_equals_autograd(posterior):
    torch.manual_seed(0)
    layer = layers.RandomFourierFeatures(2, 8, in_features=3, posterior=posterior, dtype=F64)
    layer.eval()
    x = torch.randn(5, 3, dtype=F64)

    def objective(params: dict[str, torch.Tensor]) -> torch.Tensor:
        with bl.posterior_mean(layer):
            d = torch.func.functional_call(layer, params, (x,)).distribution
        return (d.mean.sin() + d.variance).sum()

    got = torch.func.grad(objective)({k: v.detach() for k, v in layer.named_parameters()})
    names, params = zip(*layer.named_parameters(), strict=True)
    want = torch.autograd.grad(objective(dict(layer.named_parameters())), params)
    for name, w in zip(names, want, strict=True):
        torch.testing.assert_close(got[name], w, rtol=1e-10, atol=1e-12)


def test_laplace_precision_that_needed_jitter_is_reported_once() -> None:
    layer = layers.RandomFourierFeatures(1, num_features=4, posterior="laplace")
    layer(torch.randn(3, 2))
    with torch.no_grad():
        layer.precision.zero_()  # singular: the factor needs jitter
        layer.precision[0, 0] = 1.0
        layer._precision_version += 1
    with pytest.warns(layers.JitterWarning, match=r"RandomFourierFeatures: the Laplace precision"):
        chol = layer.posterior_covariance_tril()
    assert torch.isfinite(chol).all()


@pytest.mark.parametrize("posterior", ["variational", "laplace"])
def test_output_log_prob_refuses_a_target_that_broadcasts_against_the_batch(posterior):
    """A ``(B,)`` target for ``(B, 1)`` outputs was scored as ``(B, B)`` terms, silently."""
    layer = layers.RandomFourierFeatures(1, 16, in_features=2, posterior=posterior)
    f = layer(torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"log_prob expected a target of shape \(5, 1\)"):
        f.log_prob(torch.randn(5))
    assert f.log_prob(torch.randn(5, 1)).shape == (5, 1)


def test_laplace_variance_follows_a_loaded_or_converted_precision() -> None:
    """The Cholesky factor of ``P`` was cached by a counter of this layer's own updates, so
    after ``load_state_dict`` (restoring a checkpoint into a layer that had predicted) the
    variance came from the old ``P``, and after ``.double()`` from a float32 factor."""
    torch.manual_seed(0)
    trained = layers.RandomFourierFeatures(1, 16, in_features=2, posterior="laplace")
    fresh = layers.RandomFourierFeatures(1, 16, in_features=2, posterior="laplace")
    fresh.load_state_dict(trained.state_dict())
    trained(torch.randn(50, 2))  # a training step: P gains 50 rows
    trained.eval()
    fresh.eval()
    x = torch.randn(4, 2)
    prior = fresh(x).distribution.variance  # factor of the prior P, cached
    fresh.load_state_dict(trained.state_dict())
    want = trained(x).distribution.variance
    assert not torch.allclose(prior, want)
    torch.testing.assert_close(fresh(x).distribution.variance, want)
    fresh.double()
    assert fresh.posterior_covariance_tril().dtype == torch.float64
    with torch.inference_mode():  # inference tensors have no version: no cache, no error
        layer = layers.RandomFourierFeatures(1, 8, in_features=2, posterior="laplace")
        assert torch.isfinite(layer(x).distribution.variance).all()


def test_numpy_integer_sizes_are_stored_as_python_ints() -> None:
    """Sizes given as numpy integers (``np.prod(shape)``) are kept as Python ints, so
    the layer's attributes serialise (``json``) like those of a layer built from ints."""
    layer = layers.RandomFourierFeatures(
        np.int64(2), num_features=np.int64(8), in_features=np.int32(3)
    )
    sizes = {"units": layer.units, "num_features": layer.num_features, "in": layer.in_features}
    assert json.loads(json.dumps(sizes)) == {"units": 2, "num_features": 8, "in": 3}
    assert all(type(v) is int for v in sizes.values())
