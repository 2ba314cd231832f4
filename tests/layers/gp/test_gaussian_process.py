"""Tests for the exact GP layer (``layers/gaussian_process.py``) and its output
distribution (``layers/gp_distribution.py``).

1. Posterior mean, covariance and log marginal likelihood equal scikit-learn's
   ``GaussianProcessRegressor(kernel, alpha=noise, optimizer=None)`` to 1e-6 in
   float64, for each kernel and for a sum/product composite, with two units.
2. The prior, a constant mean function (against the zero-mean GP on shifted data),
   gradcheck of the log marginal likelihood, a short type-II ML fit, the Cholesky
   cache under training, the jitter error path.
3. ``MultivariateNormalColumns`` against ``torch.distributions.MultivariateNormal``
   unit by unit; sample moments of its draws (k = 2 × 3 × 2 = 12 checks at
   family-wise α = 1e-3, n = 4000 draws; tolerance z · sd / sqrt(n)).
4. Bad input raises errors naming the layer, the argument and what came.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process import kernels as sk
from stats_util import z_bonferroni
from torch.func import functional_call

import bayesian_layers as bl
from bayesian_layers import layers as L
from bayesian_layers.layers.gp.linalg import JitterWarning

D64 = {"dtype": torch.float64}

GP_KERNELS = {
    "eq": (
        lambda: L.ExponentiatedQuadratic(1.2, [0.8, 1.5], **D64),
        lambda: sk.ConstantKernel(1.44) * sk.RBF([0.8, 1.5]),
    ),
    "matern12": (lambda: L.Matern12(1.0, 0.9, **D64), lambda: sk.Matern(0.9, nu=0.5)),
    "matern32": (
        lambda: L.Matern32(0.7, [0.6, 1.1], **D64),
        lambda: sk.ConstantKernel(0.49) * sk.Matern([0.6, 1.1], nu=1.5),
    ),
    "matern52": (lambda: L.Matern52(1.0, 1.3, **D64), lambda: sk.Matern(1.3, nu=2.5)),
    "rational_quadratic": (
        lambda: L.RationalQuadratic(1.1, 0.9, 1.7, **D64),
        lambda: sk.ConstantKernel(1.21) * sk.RationalQuadratic(0.9, 1.7),
    ),
    "periodic": (
        lambda: L.Periodic(1.0, 1.1, 2.0, **D64),
        lambda: sk.ExpSineSquared(1.1, 2.0),
    ),
    "linear": (
        lambda: L.LinearKernel(0.5, **D64),
        lambda: sk.ConstantKernel(0.5) * sk.DotProduct(0.0, sigma_0_bounds="fixed"),
    ),
    "white_plus_eq": (
        lambda: L.ExponentiatedQuadratic(**D64) + L.WhiteNoise(0.2, **D64),
        lambda: sk.RBF(1.0) + sk.WhiteKernel(0.2),
    ),
    "sum_product": (
        lambda: (
            L.ExponentiatedQuadratic(1.0, 2.0, **D64) * L.Periodic(1.0, 1.0, 1.5, **D64)
            + L.Matern32(0.5, 0.7, **D64)
            + L.LinearKernel(0.1, **D64)
        ),
        lambda: (
            sk.RBF(2.0) * sk.ExpSineSquared(1.0, 1.5)
            + sk.ConstantKernel(0.25) * sk.Matern(0.7, nu=1.5)
            + sk.ConstantKernel(0.1) * sk.DotProduct(0.0, sigma_0_bounds="fixed")
        ),
    ),
}
NOISE = 0.05


def _data(n: int = 15, m: int = 6, dim: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, dim))
    y = np.stack([np.sin(2 * x[:, 0]) + x[:, -1], np.cos(x.sum(1))], 1)
    y = y + 0.2 * rng.normal(size=y.shape)
    return x, y, rng.uniform(-2.5, 2.5, size=(m, dim))


def _gp(kernel: L.Kernel, x: np.ndarray, y: np.ndarray, **kwargs) -> L.GaussianProcess:
    return L.GaussianProcess(
        y.shape[1],
        covariance_fn=kernel,
        conditional_inputs=torch.tensor(x),
        conditional_outputs=torch.tensor(y),
        observation_noise=kwargs.pop("observation_noise", NOISE),
        **D64,
        **kwargs,
    )


@pytest.mark.parametrize("name", GP_KERNELS)
def test_posterior_and_lml_match_sklearn(name: str):
    dim = 1 if name in ("periodic", "sum_product") else 2  # exp-sine-squared: PSD in 1-d
    x, y, xs = _data(dim=dim)
    ref = GaussianProcessRegressor(GP_KERNELS[name][1](), alpha=NOISE, optimizer=None).fit(x, y)
    mean_ref, cov_ref = ref.predict(xs, return_cov=True)
    gp = _gp(GP_KERNELS[name][0](), x, y)
    with torch.no_grad():
        rv = gp(torch.tensor(xs))
        lml = gp.log_marginal_likelihood()
    assert rv.shape == (6, 2) and rv.dtype == torch.float64
    np.testing.assert_allclose(rv.mean.numpy(), mean_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        rv.distribution.covariance_matrix.numpy(), cov_ref[..., 0], atol=1e-6
    )
    np.testing.assert_allclose(
        rv.variance.numpy(), np.diagonal(cov_ref, axis1=0, axis2=1).T, atol=1e-6
    )
    assert lml.item() == pytest.approx(ref.log_marginal_likelihood_value_, abs=1e-6)


def test_prior_without_conditioning():
    kernel = L.Matern52(1.3, 0.7, **D64)
    gp = L.GaussianProcess(
        3, mean_fn=L.ConstantMean(torch.tensor([1.0, 2.0, 3.0])), covariance_fn=kernel, **D64
    )
    x = torch.randn(2, 5, 2, **D64)  # a batch of two independent input sets
    rv = gp(x)
    assert rv.shape == (2, 5, 3)
    torch.testing.assert_close(rv.mean, torch.tensor([1.0, 2.0, 3.0], **D64).expand(2, 5, 3))
    torch.testing.assert_close(rv.distribution.covariance_matrix, kernel(x))
    assert bl.losses(gp) == [] and gp.losses == []


def test_constant_mean_equals_shifted_zero_mean():
    x, y, xs = _data()
    shift = torch.tensor([3.0, -1.0], **D64)
    with_mean = _gp(L.Matern32(**D64), x, y + shift.numpy(), mean_fn=L.ConstantMean(shift))
    zero_mean = _gp(L.Matern32(**D64), x, y)
    a, b = with_mean(torch.tensor(xs)), zero_mean(torch.tensor(xs))
    torch.testing.assert_close(a.mean, b.mean + shift)
    torch.testing.assert_close(a.distribution.covariance_matrix, b.distribution.covariance_matrix)
    torch.testing.assert_close(
        with_mean.log_marginal_likelihood(), zero_mean.log_marginal_likelihood()
    )


def test_random_variable_input_and_value_is_a_draw():
    x, y, xs = _data()
    gp = _gp(L.ExponentiatedQuadratic(**D64), x, y)
    inp = bl.RandomVariable(
        torch.distributions.Normal(torch.tensor(xs), 1.0), value=torch.tensor(xs)
    )
    rv = gp(inp)
    torch.testing.assert_close(rv.mean, gp(torch.tensor(xs)).mean)
    assert rv.value.shape == (6, 2) and torch.isfinite(rv.log_prob(rv.value))


def test_gradcheck_log_marginal_likelihood():
    x, y, _ = _data(n=8)
    kernel = L.Matern52(1.0, [0.7, 1.2], **D64) + L.Periodic(0.5, 1.0, 2.0, **D64)
    gp = _gp(
        kernel, x, y, mean_fn=L.LinearMean(2, 2, dtype=torch.float64), trainable_conditioning=True
    )
    named = dict(gp.named_parameters())
    names = list(named)
    assert {"observation_noise_rho", "conditional_inputs", "mean_fn.weight"} <= set(names)

    class LogMarginalLikelihood(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gp = gp

        def forward(self) -> torch.Tensor:
            return self.gp.log_marginal_likelihood()

    wrapper = LogMarginalLikelihood()

    def lml(*values: torch.Tensor) -> torch.Tensor:
        params = {f"gp.{n}": v for n, v in zip(names, values, strict=True)}
        return functional_call(wrapper, params, ())

    values = tuple(p.detach().clone().requires_grad_(True) for p in named.values())
    assert torch.autograd.gradcheck(lml, values)


def test_type2_maximum_likelihood_increases_lml_and_cache_stays_correct():
    x, y, xs = _data(n=30)
    gp = _gp(L.ExponentiatedQuadratic(**D64), x, y, observation_noise=1.0)
    opt = torch.optim.Adam(gp.parameters(), lr=0.05)
    with torch.no_grad():
        start = gp.log_marginal_likelihood().item()
        before = gp(torch.tensor(xs)).mean
    for _ in range(40):
        opt.zero_grad()
        loss = -gp.log_marginal_likelihood()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = gp.log_marginal_likelihood().item()
        after = gp(torch.tensor(xs)).mean
        after_again = gp(torch.tensor(xs)).mean  # from the cached factor
    assert end > start + 5.0
    assert not torch.allclose(before, after)
    fresh = _gp(
        L.ExponentiatedQuadratic(
            gp.covariance_fn.amplitude.item(), gp.covariance_fn.length_scale.item(), **D64
        ),
        x,
        y,
        observation_noise=gp.observation_noise.item(),
    )
    torch.testing.assert_close(after, fresh(torch.tensor(xs)).mean)
    torch.testing.assert_close(after_again, after, rtol=0, atol=0)
    assert gp._cache is not None


def test_state_dict_round_trip(tmp_path):
    x, y, xs = _data()
    gp = _gp(L.Matern32(0.7, 1.3, **D64), x, y, observation_noise=0.2)
    torch.save(gp.state_dict(), tmp_path / "gp.pt")
    fresh = L.GaussianProcess(2, covariance_fn=L.Matern32(**D64), **D64)  # no data yet
    fresh.load_state_dict(torch.load(tmp_path / "gp.pt", weights_only=True))
    torch.testing.assert_close(fresh(torch.tensor(xs)).mean, gp(torch.tensor(xs)).mean)
    torch.testing.assert_close(fresh.observation_noise, gp.observation_noise)


def test_opaque_covariance_callable():
    x, y, xs = _data()
    kernel = L.ExponentiatedQuadratic(**D64)
    gp_fn = _gp(lambda a, b: kernel(a, b), x, y)
    gp_mod = _gp(kernel, x, y)
    torch.testing.assert_close(gp_fn(torch.tensor(xs)).mean, gp_mod(torch.tensor(xs)).mean)


def test_not_positive_definite_raises_clear_error():
    x, y, xs = _data()
    gp = _gp(lambda a, b: -L.Matern12(**D64)(a, b), x, y, observation_noise=1e-6)
    with pytest.raises(
        L.NotPositiveDefiniteError, match=r"GaussianProcess: .*smallest eigenvalue -"
    ):
        gp(torch.tensor(xs))


def test_float32_by_default():
    x = torch.linspace(0, 1, 20)[:, None]
    gp = L.GaussianProcess(
        1, conditional_inputs=x, conditional_outputs=torch.sin(6 * x), observation_noise=1e-3
    )
    rv = gp(torch.rand(7, 1))
    assert rv.dtype == torch.float32 and torch.isfinite(rv.value).all()
    assert torch.isfinite(gp.log_marginal_likelihood())


def test_bad_input():
    x, y, xs = _data()
    with pytest.raises(ValueError, match="same length N, got 15 inputs and 14 outputs"):
        _gp(L.Matern12(**D64), x, y[:-1])
    with pytest.raises(
        ValueError, match=r"input of shape \(\*, B, 2\) like its conditional_inputs, got \(6, 3\)"
    ):
        _gp(L.Matern12(**D64), x, y)(torch.randn(6, 3, **D64))
    with pytest.raises(ValueError, match="positive scalar observation_noise .* got 0.0"):
        _gp(L.Matern12(**D64), x, y, observation_noise=0.0)
    with pytest.raises(ValueError, match=r"conditional_outputs of shape \(N, 3\), got \(15, 2\)"):
        L.GaussianProcess(
            3, conditional_inputs=torch.tensor(x), conditional_outputs=torch.tensor(y)
        )
    with pytest.raises(ValueError, match="both conditional_inputs and conditional_outputs"):
        L.GaussianProcess(2, conditional_inputs=torch.tensor(x))
    with pytest.raises(ValueError, match="positive int `units`, got 0"):
        L.GaussianProcess(0)
    with pytest.raises(ValueError, match="needs conditioning data"):
        L.GaussianProcess(1).log_marginal_likelihood()
    with pytest.raises(
        ValueError, match=r"mean_fn to return \(\*, B, 2\) or \(\*, B, 1\), got \(6, 3\)"
    ):
        L.GaussianProcess(2, mean_fn=L.LinearMean(2, 3))(torch.randn(6, 2))
    with pytest.raises(TypeError, match="GaussianProcess expected a Tensor input"):
        L.GaussianProcess(1)([[0.0]])


# ------------------------------------------------------------ the distribution
@pytest.mark.parametrize("shared", [True, False])
def test_columns_distribution_matches_torch_mvn(shared: bool):
    b, units = 4, 3
    loc = torch.randn(2, b, units, **D64)
    a = torch.randn(2, units, b, b, **D64)
    cov = a @ a.mT + torch.eye(b, **D64)
    if shared:
        cov = cov[:, 0]
    dist = L.gp.MultivariateNormalColumns(loc, cov)
    mvn = torch.distributions.MultivariateNormal(loc.mT, cov[:, None] if shared else cov)
    value = torch.randn(5, 2, b, units, **D64)
    torch.testing.assert_close(dist.log_prob(value), mvn.log_prob(value.mT).sum(-1))
    torch.testing.assert_close(dist.entropy(), mvn.entropy().sum(-1))
    torch.testing.assert_close(dist.variance, mvn.variance.mT)
    assert dist.batch_shape == (2,) and dist.event_shape == (b, units)
    assert dist.rsample((7,)).shape == (7, 2, b, units)


@pytest.mark.parametrize("shared", [True, False])
def test_columns_distribution_sample_moments(shared: bool):
    """k = 12 checks per case (2 cases share the family-wise rate through k = 24)."""
    torch.manual_seed(1)
    b, units, n = 3, 2, 4000
    loc = torch.randn(b, units, **D64)
    a = torch.randn(units, b, b, **D64)
    cov = a @ a.mT + 0.5 * torch.eye(b, **D64)
    if shared:
        cov = cov[0]
    draws = L.gp.MultivariateNormalColumns(loc, cov).sample((n,))  # (n, B, units)
    z = z_bonferroni(24)
    var = L.gp.MultivariateNormalColumns(loc, cov).variance
    assert ((draws.mean(0) - loc).abs() <= z * (var / n).sqrt()).all()
    # covariance of rows 0 and 1 in each unit: its estimator has variance (s01² + s00 s11) / n
    c = cov.expand(units, b, b) if shared else cov
    emp = ((draws[:, 0] - loc[0]) * (draws[:, 1] - loc[1])).mean(0)  # (units,)
    sd = ((c[:, 0, 1] ** 2 + c[:, 0, 0] * c[:, 1, 1]) / n).sqrt()
    assert ((emp - c[:, 0, 1]).abs() <= z * sd).all()
    assert math.isfinite(float(z))


def test_columns_distribution_bad_covariance():
    with pytest.raises(
        ValueError, match=r"covariance_matrix of shape \(3, 3\) or \(2, 3, 3\), got \(2, 2\)"
    ):
        L.gp.MultivariateNormalColumns(torch.zeros(3, 2), torch.eye(2))


def test_white_noise_enters_self_covariances_only_whatever_the_input_object():
    """WhiteNoise adds to K_cc and K_XX (as scikit-learn's WhiteKernel) and never to the
    cross-covariance K_Xc, also when the test inputs are the conditioning tensor itself:
    at the training inputs the predictive variance keeps the noise (about 0.108)."""
    x, y, _ = _data()
    ref = GaussianProcessRegressor(sk.RBF(1.0) + sk.WhiteKernel(0.1), alpha=1e-6, optimizer=None)
    ref.fit(x, y)
    mean_ref, std_ref = ref.predict(x, return_std=True)
    gp = _gp(
        L.ExponentiatedQuadratic(**D64) + L.WhiteNoise(0.1, **D64), x, y, observation_noise=1e-6
    )
    with torch.no_grad():
        for inputs in (gp.conditional_inputs, gp.conditional_inputs.clone()):
            rv = gp(inputs)
            np.testing.assert_allclose(rv.mean.numpy(), mean_ref, atol=1e-6)
            np.testing.assert_allclose(rv.variance.numpy(), std_ref**2, atol=1e-6)
            mean, var = gp.predictive_moments(inputs)
            np.testing.assert_allclose(var.numpy(), std_ref**2, atol=1e-6)
    assert (std_ref**2 > 0.1).all()


class _LazyMatrix:
    """A stand-in for a lazy tensor (GPyTorch's ``LazyEvaluatedKernelTensor``)."""

    def __init__(self, matrix: torch.Tensor, method: str) -> None:
        setattr(self, method, lambda: matrix)


@pytest.mark.parametrize("method", ["to_dense", "evaluate"])
def test_lazy_kernel_matrices_are_densified(method: str):
    x, y, xs = _data()
    kernel = L.Matern32(**D64)
    lazy = _gp(lambda a, b: _LazyMatrix(kernel(a, b), method), x, y)
    dense = _gp(kernel, x, y)
    with torch.no_grad():
        got, want = lazy(torch.tensor(xs)), dense(torch.tensor(xs))
        torch.testing.assert_close(
            got.distribution.covariance_matrix, want.distribution.covariance_matrix
        )
        torch.testing.assert_close(
            lazy.predictive_moments(torch.tensor(xs)), (want.mean, want.variance)
        )
    torch.testing.assert_close(lazy.log_marginal_likelihood(), dense.log_marginal_likelihood())
    with pytest.raises(
        TypeError, match="GaussianProcess expected covariance_fn to return a Tensor"
    ):
        _gp(lambda a, b: "not a matrix", x, y).log_marginal_likelihood()


def test_gpytorch_kernel_as_covariance_fn():
    gpytorch = pytest.importorskip("gpytorch")
    x, y, xs = _data()
    kernel = gpytorch.kernels.RBFKernel().double()
    ref = L.ExponentiatedQuadratic(1.0, float(kernel.lengthscale), **D64)
    with torch.no_grad():
        got = _gp(kernel, x, y)(torch.tensor(xs)).mean
        torch.testing.assert_close(got, _gp(ref, x, y)(torch.tensor(xs)).mean)


def test_needed_jitter_is_reported_once_per_layer():
    x, y, xs = _data(n=6)
    x = np.concatenate([x, x])  # duplicated inputs, almost no noise: K_cc is singular
    y = np.concatenate([y, y])
    gp = _gp(L.ExponentiatedQuadratic(**D64), x, y, observation_noise=1e-30)
    with pytest.warns(JitterWarning, match="GaussianProcess: .* needed jitter") as record:
        gp(torch.tensor(xs))
        gp.log_marginal_likelihood()
        gp(torch.tensor(xs))
    assert len([w for w in record if issubclass(w.category, JitterWarning)]) == 1


@pytest.mark.parametrize("which", ["conditional_inputs", "conditional_outputs"])
def test_non_finite_conditioning_data_is_rejected(which: str):
    x, y, _ = _data()
    data = {"conditional_inputs": torch.tensor(x), "conditional_outputs": torch.tensor(y)}
    data[which][3, 0] = float("nan")
    with pytest.raises(ValueError, match=f"GaussianProcess expected finite {which}.*1 NaN"):
        L.GaussianProcess(2, **data, **D64)


@pytest.mark.parametrize("dtype", [torch.long, torch.float32, torch.bfloat16])
def test_inputs_of_another_dtype_are_type_errors_naming_both_dtypes(dtype: torch.dtype):
    """One rule for the GP layers (as the sparse GP and the weight layers): the input is
    in the layer's dtype, or in autocast's dtype while autocast is on."""
    x, y, xs = _data()
    gp = _gp(L.Matern32(**D64), x, y)
    bad = torch.tensor(xs).to(dtype)
    match = rf"GaussianProcess expected .*input `x` of dtype torch.float64.*got {dtype}"
    with pytest.raises(TypeError, match=match):
        gp(bad)
    with pytest.raises(TypeError, match=match):
        gp.predictive_moments(bad)


def test_autocast_dtype_inputs_are_computed_in_the_layer_dtype():
    x, y, _ = _data()
    gp = L.GaussianProcess(
        2, conditional_inputs=torch.tensor(x), conditional_outputs=torch.tensor(y)
    )  # float32
    x16 = torch.randn(5, 2).to(torch.bfloat16)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = gp(x16)
        want = gp(x16.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.mean, want.mean, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["sample", "mean", "frozen"])
def test_empty_batch_gives_an_empty_result(mode: str):
    x, y, _ = _data()
    gp = _gp(L.Matern32(**D64), x, y)
    bl.set_sampling(gp, mode)
    rv = gp(torch.empty(0, 2, **D64))
    assert rv.shape == (0, 2) and rv.value.shape == (0, 2)
    assert rv.distribution.covariance_matrix.shape == (0, 0)
    mean, var = gp.predictive_moments(torch.empty(0, 2, **D64))
    assert mean.shape == var.shape == (0, 2)
    assert bl.predict(gp, torch.empty(0, 2, **D64), 4).samples.shape == (4, 0, 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_rejected_with_the_layers_name(bad: float):
    x, y, xs = _data()
    inputs = torch.tensor(xs)
    inputs[1, 0] = bad
    with pytest.raises(ValueError, match=r"GaussianProcess expected finite inputs, got"):
        _gp(L.Matern32(**D64), x, y)(inputs)


def test_inference_mode_conditioning_and_prediction() -> None:
    """The factor's cache key read ``_version`` of the conditioning data and parameters,
    which inference tensors (made under ``torch.inference_mode``) lack: conditioning or
    building the layer there and predicting raised an internal ``RuntimeError``."""
    torch.manual_seed(0)
    x, y, xs = torch.randn(5, 2), torch.randn(5), torch.randn(3, 2)
    reference = L.GaussianProcess(1, conditional_inputs=x, conditional_outputs=y)
    want = reference.predictive_moments(xs)
    with torch.inference_mode():
        gp = L.GaussianProcess(1, conditional_inputs=x, conditional_outputs=y)
        assert gp(xs).value.shape == (3, 1)
        torch.testing.assert_close(
            gp.log_marginal_likelihood(), reference.log_marginal_likelihood().detach()
        )
        later = L.GaussianProcess(1)
        later.condition_on(x, y)
        for got, expected in zip(later.predictive_moments(xs), want, strict=True):
            torch.testing.assert_close(got, expected.detach())
