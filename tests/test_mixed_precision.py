"""bfloat16 autocast on CPU: matmuls run in bf16, while sampling noise, softplus scales
and KL terms stay float32 (output dtypes, losses, posterior-mean outputs and gradients
of every weight layer: ``tests/contract/test_contract_autocast.py``). Here: sampled
moments against the float32 closed form, stochastic outputs' distributions, and the GP
layers, which compute in float32 throughout (autocast off) and equal their float32
results."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from stats_util import z_bonferroni
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

BF16 = torch.bfloat16


@pytest.mark.parametrize("cls", ["LinearFlipout", "LinearLocalReparameterization"])
def test_sampled_moments_under_autocast_match_the_float32_closed_form(cls: str) -> None:
    """Per-example estimators under autocast: over n = 2000 calls each output has mean
    ``F.linear(x, μ)`` and variance ``F.linear(x², σ²)`` (closed form, float32). The
    noise is float32 and only the matmuls round; the bf16 error (≤ 2⁻⁶ relative here)
    is added to the MC half-widths z·s/√n and z·s²·sqrt(2/(n-1)). k = 2 × 12, α = 1e-3."""
    torch.manual_seed(1)
    layer = getattr(layers, cls)(6, 3, bias=False)
    with torch.no_grad():
        layer.weight_rho.fill_(math.log(math.expm1(0.5)))
    x = torch.randn(4, 6)
    n = 2000
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        samples = torch.stack([layer(x) for _ in range(n)]).float()
    loc, scale = (
        layer.weight_loc.detach(),
        layer.weight_scale.detach()
        if hasattr(layer, "weight_scale")
        else torch.nn.functional.softplus(layer.weight_rho.detach()),
    )
    mean = torch.nn.functional.linear(x, loc)
    var = torch.nn.functional.linear(x.square(), scale.square())
    z = z_bonferroni(24)
    bf16 = 2**-6 * (mean.abs() + var.sqrt())
    assert ((samples.mean(0) - mean).abs() <= z * (var / n).sqrt() + bf16).all()
    assert ((samples.var(0) - var).abs() <= z * var * math.sqrt(2 / (n - 1)) + 2 * bf16).all()


def test_stochastic_output_distribution_is_float32_under_autocast() -> None:
    """The projection runs in bf16; the distribution (sampling, log_prob, KL) in float32,
    with the log-density of the float32 model to bf16 precision."""
    torch.manual_seed(0)
    head = layers.Normal(2, in_features=5)
    x, y = torch.randn(4, 5), torch.randn(4, 2)
    full = head(x).log_prob(y)
    with torch.autocast("cpu", dtype=BF16):
        rv = head(x)
        lp = rv.log_prob(y)
    assert rv.value.dtype == lp.dtype == rv.distribution.mean.dtype == torch.float32
    torch.testing.assert_close(lp, full, rtol=0, atol=2**-5 * full.abs().max().item())


# --------------------------------------------------------------------- GP layers
def _gp_cases() -> dict[str, Callable[[], tuple[nn.Module, Callable[[nn.Module], Tensor]]]]:
    """Each builds a GP layer (after its data-dependent initialisation) and a function of
    it returning everything a training step reads: moments, and the LML where there is one."""
    x_train, x = torch.randn(40, 3), torch.randn(16, 3)

    def sparse(whiten: bool) -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
        layer = layers.SparseGaussianProcess(2, 12, whiten=whiten)
        layer(x_train)
        with torch.no_grad():  # away from the prior, so the variance has structure
            layer.inducing_loc.normal_()
            layer.inducing_scale_rho.fill_(-2.0)

        def read(m: nn.Module) -> Tensor:
            d = m(x).distribution
            return torch.cat([d.mean.flatten(), d.variance.flatten(), m.losses[0][None]])

        return layer, read

    def exact() -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
        layer = layers.GaussianProcess(
            2,
            conditional_inputs=x_train,
            conditional_outputs=torch.randn(40, 2),
            observation_noise=0.05,
        )

        def read(m: nn.Module) -> Tensor:
            d = m(x).distribution
            lml = m.log_marginal_likelihood()
            return torch.cat([d.mean.flatten(), d.variance.flatten(), lml[None]])

        return layer, read

    return {"sparse": lambda: sparse(True), "sparse-unwhitened": lambda: sparse(False),
            "exact": exact}  # fmt: skip


@pytest.mark.parametrize("name", list(_gp_cases()))
def test_gp_layers_compute_in_float32_under_autocast(name: str) -> None:
    """Kernel matrices and Cholesky factors in bf16 put errors of about 0.1 into the
    marginals of a unit-variance GP (measured before the layers turned autocast off);
    now they match float32 to float32 rounding, with float32 gradients."""
    torch.manual_seed(0)
    layer, read = _gp_cases()[name]()
    params = [p for p in layer.parameters() if p.requires_grad]
    full = read(layer)
    full_grads = torch.autograd.grad(full.sum(), params)
    with torch.autocast("cpu", dtype=BF16):
        half = read(layer)
    grads = torch.autograd.grad(half.sum(), params)  # backward outside autocast, as torch asks
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=1e-5, atol=1e-5)
    for g, f in zip(grads, full_grads, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, f, rtol=1e-4, atol=1e-5)


def test_gp_layer_casts_a_bf16_input_to_its_dtype() -> None:
    torch.manual_seed(0)
    layer = layers.SparseGaussianProcess(2, 8)
    x = torch.randn(10, 3)
    layer(x)
    x16 = x.to(BF16)
    with bl.posterior_mean(layer):
        with torch.autocast("cpu", dtype=BF16):  # outside autocast, bf16 is a TypeError
            got = layer(x16)
        want = layer(x16.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.value, want.value, rtol=0, atol=0)
    gp = layers.GaussianProcess(1, conditional_inputs=x, conditional_outputs=torch.randn(10))
    with torch.autocast("cpu", dtype=BF16):
        got_gp = gp(x16).distribution.mean
    torch.testing.assert_close(got_gp, gp(x16.float()).distribution.mean)
