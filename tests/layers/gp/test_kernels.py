"""Tests for the covariance functions (``layers/gp/kernels/``).

1. A registry of (our kernel, scikit-learn's equivalent) pairs, ARD where both
   support it; every kernel matrix, its diagonal, batched inputs (our batch
   against a loop of scikit-learn calls) and sums/products agree to 1e-10 in float64.
2. gradcheck (float64) of every kernel in its raw hyperparameters and inputs;
   finite gradients at zero distance for the non-smooth Matérn kernels.
3. Symmetry and positive semi-definiteness over random inputs.
4. Bad hyperparameters and inputs raise errors that name kernel, argument and value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from sklearn.gaussian_process import kernels as sk
from torch.func import functional_call

from bayesian_layers import layers as L

D64 = {"dtype": torch.float64}
ARD = [0.6, 1.3, 2.0]

# name -> (factory of ours, factory of scikit-learn's); amplitude 1.5 <-> C(2.25)
KERNELS: dict[str, tuple[Callable[[], L.Kernel], Callable[[], sk.Kernel]]] = {
    "eq_ard": (
        lambda: L.ExponentiatedQuadratic(1.5, ARD, **D64),
        lambda: sk.ConstantKernel(2.25) * sk.RBF(ARD),
    ),
    "eq": (lambda: L.ExponentiatedQuadratic(**D64), lambda: sk.RBF(1.0)),
    "matern12_ard": (
        lambda: L.Matern12(1.5, ARD, **D64),
        lambda: sk.ConstantKernel(2.25) * sk.Matern(ARD, nu=0.5),
    ),
    "matern32_ard": (
        lambda: L.Matern32(0.8, ARD, **D64),
        lambda: sk.ConstantKernel(0.64) * sk.Matern(ARD, nu=1.5),
    ),
    "matern52": (
        lambda: L.Matern52(1.5, 0.9, **D64),
        lambda: sk.ConstantKernel(2.25) * sk.Matern(0.9, nu=2.5),
    ),
    "rational_quadratic": (
        lambda: L.RationalQuadratic(1.5, 0.9, 0.7, **D64),
        lambda: sk.ConstantKernel(2.25) * sk.RationalQuadratic(0.9, 0.7),
    ),
    "periodic": (
        lambda: L.Periodic(1.5, 0.8, 2.5, **D64),
        lambda: sk.ConstantKernel(2.25) * sk.ExpSineSquared(0.8, 2.5),
    ),
    "linear": (
        lambda: L.LinearKernel(0.7, **D64),
        lambda: sk.ConstantKernel(0.7) * sk.DotProduct(0.0, sigma_0_bounds="fixed"),
    ),
    "linear_plus_constant": (
        lambda: L.LinearKernel(1.0, **D64) + L.ConstantKernel(0.49, **D64),
        lambda: sk.DotProduct(0.7),
    ),
    "white": (lambda: L.WhiteNoise(0.3, **D64), lambda: sk.WhiteKernel(0.3)),
    "constant": (lambda: L.ConstantKernel(0.3, **D64), lambda: sk.ConstantKernel(0.3)),
    "sum_product": (
        lambda: (
            L.Matern32(1.0, 0.9, **D64) * L.Periodic(1.0, 1.2, 3.0, **D64)
            + 2.0 * L.RationalQuadratic(1.0, 1.5, 2.0, **D64)
            + L.WhiteNoise(0.1, **D64)
        ),
        lambda: (
            sk.Matern(0.9, nu=1.5) * sk.ExpSineSquared(1.2, 3.0)
            + sk.ConstantKernel(2.0) * sk.RationalQuadratic(1.5, 2.0)
            + sk.WhiteKernel(0.1)
        ),
    ),
}


def _data(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("name", KERNELS)
def test_matches_sklearn(name: str):
    ours, ref = KERNELS[name][0](), KERNELS[name][1]()
    x, y = _data(0, 7, 3), _data(1, 5, 3)
    tx, ty = torch.tensor(x), torch.tensor(y)
    with torch.no_grad():
        np.testing.assert_allclose(ours(tx, ty).numpy(), ref(x, y), rtol=0, atol=1e-10)
        np.testing.assert_allclose(ours(tx).numpy(), ref(x), rtol=0, atol=1e-10)
        np.testing.assert_allclose(ours(tx, tx).numpy(), ref(x), rtol=0, atol=1e-10)
        np.testing.assert_allclose(ours.diag(tx).numpy(), ref.diag(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", KERNELS)
def test_batched_matches_loop(name: str):
    """Leading batch dimensions (broadcast between x1 and x2) agree with one sklearn call each."""
    ours, ref = KERNELS[name][0](), KERNELS[name][1]()
    x, y = _data(2, 2, 3, 6, 3), _data(3, 3, 4, 3)  # (2, 3, N, D) against (3, M, D)
    with torch.no_grad():
        out = ours(torch.tensor(x), torch.tensor(y))
        same = ours(torch.tensor(x))
        diag = ours.diag(torch.tensor(x))
    assert out.shape == (2, 3, 6, 4) and same.shape == (2, 3, 6, 6) and diag.shape == (2, 3, 6)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(out[i, j].numpy(), ref(x[i, j], y[j]), atol=1e-10, rtol=0)
            np.testing.assert_allclose(same[i, j].numpy(), ref(x[i, j]), atol=1e-10, rtol=0)
            np.testing.assert_allclose(diag[i, j].numpy(), ref.diag(x[i, j]), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", KERNELS)
def test_symmetric_positive_semidefinite(name: str):
    """Periodic (exp-sine-squared of a Euclidean distance) is PSD for 1-d inputs only."""
    kernel = KERNELS[name][0]()
    dim = 1 if name in ("periodic", "sum_product") else 3
    for seed in range(3):
        x = torch.tensor(_data(10 + seed, 12, dim))
        with torch.no_grad():
            k = kernel(x)
        torch.testing.assert_close(k, k.mT, rtol=0, atol=1e-12)
        scale = k.diagonal().mean()
        assert torch.linalg.eigvalsh(k).min() > -1e-10 * scale


@pytest.mark.parametrize("name", KERNELS)
def test_gradcheck_hyperparameters_and_inputs(name: str):
    kernel = KERNELS[name][0]()
    names = [n for n, _ in kernel.named_parameters()]
    values = [p.detach().clone().requires_grad_(True) for p in kernel.parameters()]
    x1 = torch.tensor(_data(4, 4, 3), requires_grad=True)
    x2 = torch.tensor(_data(5, 3, 3), requires_grad=True)

    def cross(*args: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, args[:-2], strict=True))
        return functional_call(kernel, params, (args[-2], args[-1]))

    def same(*args: torch.Tensor) -> torch.Tensor:  # includes zero distances
        params = dict(zip(names, args, strict=True))
        return functional_call(kernel, params, (x1.detach(),))

    assert torch.autograd.gradcheck(cross, (*values, x1, x2))
    assert torch.autograd.gradcheck(same, tuple(values))


@pytest.mark.parametrize("kernel_cls", [L.ExponentiatedQuadratic, L.RationalQuadratic])
def test_gradcheck_broadcast_batches(kernel_cls: type[L.Kernel]):
    """The fused distance backward sums gradients back to broadcast batch shapes."""
    kernel = kernel_cls(1.3, [0.7, 1.4], **D64)
    x1 = torch.randn(2, 1, 4, 2, **D64, requires_grad=True)
    x2 = torch.randn(3, 5, 2, **D64, requires_grad=True)
    amp = kernel.amplitude_rho.detach().clone().requires_grad_(True)
    ls = kernel.length_scale_rho.detach().clone().requires_grad_(True)

    def f(a: torch.Tensor, b: torch.Tensor, rho: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
        params = {"amplitude_rho": rho, "length_scale_rho": ls}
        return functional_call(kernel, params, (a, b))

    assert torch.autograd.gradcheck(f, (x1, x2, amp, ls))


@pytest.mark.parametrize("kernel_cls", [L.Matern12, L.Matern32, L.Matern52, L.Periodic])
def test_finite_gradient_at_zero_distance(kernel_cls: type[L.Kernel]):
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    kernel = kernel_cls(**D64)
    kernel(x, x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in kernel.parameters())


def test_hyperparameters_positive_trainable_and_settable():
    k = L.ExponentiatedQuadratic(2.0, torch.tensor([0.5, 30.0]), **D64)
    torch.testing.assert_close(k.amplitude, torch.tensor(2.0, **D64), rtol=1e-14, atol=0)
    torch.testing.assert_close(k.length_scale, torch.tensor([0.5, 30.0], **D64), rtol=1e-14, atol=0)
    assert {n for n, _ in k.named_parameters()} == {"amplitude_rho", "length_scale_rho"}
    with torch.no_grad():
        k.length_scale_rho.fill_(-50.0)  # any real raw value stays positive
    assert (k.length_scale > 0).all()


def test_white_noise_equality_modes():
    x = torch.tensor([[0.0], [1.0], [0.0]], **D64)
    white = L.WhiteNoise(0.5, **D64)
    torch.testing.assert_close(white(x), 0.5 * torch.eye(3, **D64))
    assert white(x, x.clone()).abs().max() == 0  # "object": different tensors never match
    by_value = L.WhiteNoise(0.5, match="value", **D64)
    expected = 0.5 * torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]], **D64)
    torch.testing.assert_close(by_value(x, x.clone()), expected)


def test_algebra_builds_flat_sums_and_products():
    a, b, c = L.Matern12(), L.Matern32(), L.Matern52()
    assert len((a + b + c).kernels) == 3 and isinstance(a + b, L.SumKernel)
    assert len((a * b * c).kernels) == 3 and isinstance(a * b, L.ProductKernel)
    assert sum([a, b]).kernels[0] is a  # sum() starts at 0
    x = torch.randn(4, 2)
    torch.testing.assert_close((3.0 * a)(x), 3.0 * a(x))
    torch.testing.assert_close((a + 1.0)(x), a(x) + 1.0)
    with pytest.raises(TypeError):
        _ = a + "b"


def test_follows_dtype():
    k = (L.ExponentiatedQuadratic() * L.Periodic()).to(torch.float64)
    assert k(torch.randn(3, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (
            lambda: L.ExponentiatedQuadratic(length_scale=0.0),
            ["ExponentiatedQuadratic", "length_scale", "0.0"],
        ),
        (lambda: L.Matern32(amplitude=-1.0), ["Matern32", "amplitude", "-1.0"]),
        (lambda: L.RationalQuadratic(alpha=float("nan")), ["RationalQuadratic", "alpha", "nan"]),
        (lambda: L.Periodic(period=0), ["Periodic", "period"]),
        (lambda: L.WhiteNoise(-0.1), ["WhiteNoise", "variance", "-0.1"]),
        (lambda: L.LinearKernel(0.0), ["LinearKernel", "variance"]),
        (lambda: L.Matern52(length_scale=torch.tensor([1.0, -2.0])), ["Matern52", "length_scale"]),
        (lambda: L.Periodic(length_scale=torch.ones(2)), ["Periodic", "length_scale", "scalar"]),
        (lambda: L.WhiteNoise(1.0, match="close"), ["WhiteNoise", "match", "close"]),
    ],
)
def test_bad_hyperparameters(make: Callable[[], L.Kernel], words: list[str]):
    with pytest.raises(ValueError) as info:
        make()
    for word in words:
        assert word in str(info.value)


def test_bad_inputs():
    k = L.ExponentiatedQuadratic(length_scale=torch.ones(3))
    with pytest.raises(ValueError, match=r"3 length scales .* D = 2"):
        k(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"same D, got \(4, 3\) and \(2, 2\)"):
        L.Matern12()(torch.randn(4, 3), torch.randn(2, 2))
    with pytest.raises(ValueError, match=r"shape \(\*, N, D\), got torch.float32 of shape \(4,\)"):
        L.Matern12()(torch.randn(4))
    with pytest.raises(TypeError, match="x2 to be a Tensor"):
        L.Matern12()(torch.randn(4, 1), [[1.0]])
    with pytest.raises(ValueError, match="LinearKernel has 2 shifts"):
        L.LinearKernel(shift=torch.zeros(2)).diag(torch.randn(4, 3))
