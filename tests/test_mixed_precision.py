"""bfloat16 autocast on CPU: matmuls run in bf16, while sampling noise, softplus scales
and KL terms stay float32. Every family's output has the dtype torch's deterministic
layer gives under the same autocast, its losses are the float32 values computed
without autocast, its posterior-mean output is the float32 output to bf16 precision,
and gradients of ``loc``/``rho`` are float32. The GP layers instead compute in float32
throughout (autocast off) and equal their float32 results."""

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
Case = tuple[nn.Module, nn.Module, tuple[Tensor, ...]]  # ours, torch's, inputs


def _x(*shape: int) -> tuple[Tensor, ...]:
    return (torch.randn(*shape),)


def _attn() -> tuple[Tensor, ...]:
    q = torch.randn(2, 5, 8)
    return q, q, q


CASES: dict[str, Callable[[], Case]] = {
    **{
        cls: (lambda cls=cls: (getattr(layers, cls)(6, 5, bias_initializer="trainable_normal"),
                               nn.Linear(6, 5), _x(4, 6)))
        for cls in ("LinearReparameterization", "LinearFlipout", "LinearLocalReparameterization")
    },
    **{
        cls: (lambda cls=cls: (getattr(layers, cls)(3, 4, 3), nn.Conv2d(3, 4, 3), _x(2, 3, 6, 6)))
        for cls in ("Conv2dReparameterization", "Conv2dFlipout", "Conv2dLocalReparameterization")
    },
    **{
        cls: (lambda cls=cls: (getattr(layers, cls)(3, 4, 2, stride=2),
                               nn.ConvTranspose2d(3, 4, 2, stride=2), _x(2, 3, 4, 4)))
        for cls in ("ConvTranspose2dReparameterization", "ConvTranspose2dFlipout")
    },
    **{
        cls: (lambda cls=cls, torch_cls=torch_cls: (getattr(layers, cls)(3, 5),
                                                    getattr(nn, torch_cls)(3, 5), _x(4, 3)))
        for est in ("Reparameterization", "Flipout")
        for torch_cls in ("LSTMCell", "GRUCell")
        for cls in (f"{torch_cls}{est}",)
    },
    **{
        cls: (lambda cls=cls: (getattr(layers, cls)(3, 5, num_layers=2, batch_first=True),
                               nn.LSTM(3, 5, num_layers=2, batch_first=True), _x(4, 6, 3)))
        for cls in ("LSTMReparameterization", "LSTMFlipout")
    },
    **{
        cls: (lambda cls=cls: (getattr(layers, cls)(8, 2, batch_first=True),
                               nn.MultiheadAttention(8, 2, batch_first=True), _attn()))
        for cls in ("MultiheadAttentionReparameterization", "MultiheadAttentionFlipout")
    },
    "EmbeddingReparameterization": lambda: (
        layers.EmbeddingReparameterization(10, 4), nn.Embedding(10, 4),
        (torch.randint(0, 10, (3, 5)),),
    ),
}  # fmt: skip


def _first(out: object) -> Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value,index]


def _build(name: str) -> Case:
    torch.manual_seed(0)
    return CASES[name]()


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_output_dtype_matches_torch_and_losses_stay_float32(name: str, mode: str) -> None:
    ours, ref, inputs = _build(name)
    plain_losses = bl.losses(ours)
    bl.set_sampling(ours, mode)
    with torch.autocast("cpu", dtype=BF16):
        expected = _first(ref(*inputs)).dtype
        out = _first(ours(*inputs))
        losses = bl.losses(ours)
    assert out.dtype == expected, (out.dtype, expected)
    assert losses and all(t.dtype == torch.float32 for t in losses)
    for a, b in zip(losses, plain_losses, strict=True):  # KL from the float32 parameters
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_posterior_mean_output_and_gradients_match_float32_at_bf16_precision(name: str) -> None:
    """bf16 keeps 8 significant bits (relative rounding 2⁻⁹); a length-K dot product
    in bf16 inputs with float32 accumulation errs by about sqrt(K)·2⁻⁸·|x||w| at most
    for these tiny K ≤ 54, so the tolerance is 2⁻⁵ of the output's scale."""
    ours, _, inputs = _build(name)
    params = [p for n, p in ours.named_parameters() if n.endswith(("_loc", "_rho"))]
    with bl.posterior_mean(ours):
        full = _first(ours(*inputs))
        full_grads = torch.autograd.grad(full.square().sum() + sum(bl.losses(ours)), params,
                                         allow_unused=True)  # fmt: skip
        with torch.autocast("cpu", dtype=BF16):
            half = _first(ours(*inputs))
            loss = half.float().square().sum() + sum(bl.losses(ours))
        assert loss.dtype == torch.float32
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    tol = 2**-5 * full.abs().max().item()
    torch.testing.assert_close(half.float(), full, rtol=0, atol=tol)
    for p, g, f in zip(params, grads, full_grads, strict=True):
        if f is None:  # rho gets no gradient from a posterior-mean output, only from the KL
            continue
        assert g is not None and g.dtype == p.dtype == torch.float32
        torch.testing.assert_close(g, f, rtol=0, atol=2**-4 * f.abs().max().item() + 1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_sampled_backward_gives_float32_gradients(name: str) -> None:
    ours, _, inputs = _build(name)
    with torch.autocast("cpu", dtype=BF16):
        out = _first(ours(*inputs))
        loss = out.float().sum() + sum(bl.losses(ours))
    loss.backward()
    rho = [(n, p) for n, p in ours.named_parameters() if n.endswith("_rho")]
    assert rho
    for n, p in ours.named_parameters():
        if n.endswith(("_loc", "_rho")):
            assert p.grad is not None and p.grad.dtype == torch.float32, n
            assert torch.isfinite(p.grad).all(), n


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
