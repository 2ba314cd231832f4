"""bfloat16 autocast on CPU for every registered layer that supports it: matmuls in
bf16 while sampling noise, softplus scales and KL terms stay float32. The output has
the dtype torch's counterpart gives under the same autocast; losses are the float32
values computed without autocast; the posterior-mean output and its gradients are
the float32 ones to bf16 precision; sampled gradients of ``loc``/``rho`` are finite
float32; a bf16 input (a previous layer's output) is accepted, a float16 one is not."""

from __future__ import annotations

import pytest
import torch
from contract.cases import CASES, Case, names
from contract.util import first
from torch import Tensor, nn

import bayesian_layers as bl

BF16 = torch.bfloat16
AUTOCAST = [n for n in names(autocast=True) if CASES[n].counterpart is not None]


def _build(case: Case) -> tuple[nn.Module, tuple[Tensor, ...]]:
    layer = case.build()
    return layer, case.all_inputs(case.input())


def _cast_first(args: tuple, dtype: torch.dtype) -> tuple:
    x = args[0]
    return (x.to(dtype) if x.is_floating_point() else x, *args[1:])


@pytest.mark.parametrize("mode", ["sample", "mean"])
@pytest.mark.parametrize("name", AUTOCAST)
def test_output_dtype_is_torchs_and_losses_stay_float32(name: str, mode: str) -> None:
    case = CASES[name]
    layer, args = _build(case)
    reference = case.build_torch()
    plain_losses = bl.losses(layer)
    bl.set_sampling(layer, mode)
    with torch.autocast("cpu", dtype=BF16):
        expected = first(reference(*args)).dtype
        out = first(layer(*args))
        losses = bl.losses(layer)
    assert out.dtype == expected, (out.dtype, expected)
    assert losses and all(t.dtype == torch.float32 for t in losses)
    for a, b in zip(losses, plain_losses, strict=True):  # KL from the float32 parameters
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", AUTOCAST)
def test_posterior_mean_output_and_gradients_are_float32_to_bf16_precision(name: str) -> None:
    """bf16 keeps 8 significant bits (relative rounding 2⁻⁹); a length-K dot product
    in bf16 inputs with float32 accumulation errs by about sqrt(K)·2⁻⁸·|x||w| at most
    for these tiny K ≤ 54, so the tolerance is 2⁻⁵ of the output's scale."""
    case = CASES[name]
    layer, args = _build(case)
    params = [p for n, p in layer.named_parameters() if n.endswith(("_loc", "_rho", "_log_sigma2"))]
    with bl.posterior_mean(layer):
        full = first(layer(*args))
        full_grads = torch.autograd.grad(
            full.square().sum() + sum(bl.losses(layer)), params, allow_unused=True
        )
        with torch.autocast("cpu", dtype=BF16):
            half = first(layer(*args))
            loss = half.float().square().sum() + sum(bl.losses(layer))
        assert loss.dtype == torch.float32
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    tol = 2**-5 * full.abs().max().item()
    torch.testing.assert_close(half.float(), full, rtol=0, atol=tol)
    for p, g, f in zip(params, grads, full_grads, strict=True):
        if f is None:  # rho gets no gradient from a posterior-mean output, only from the KL
            continue
        assert g is not None and g.dtype == p.dtype == torch.float32
        torch.testing.assert_close(g, f, rtol=0, atol=2**-4 * f.abs().max().item() + 1e-6)


@pytest.mark.parametrize("name", AUTOCAST)
def test_sampled_backward_gives_finite_float32_gradients(name: str) -> None:
    case = CASES[name]
    layer, args = _build(case)
    with torch.autocast("cpu", dtype=BF16):
        loss = first(layer(*args)).float().sum() + sum(bl.losses(layer))
    loss.backward()
    assert any(n.endswith(("_rho", "_log_sigma2")) for n, _ in layer.named_parameters())
    for n, p in layer.named_parameters():
        if n.endswith(("_loc", "_rho", "_log_sigma2")):
            assert p.grad is not None and p.grad.dtype == torch.float32, n
            assert torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", names(autocast=True, checks_dtype=True))
def test_a_bf16_input_is_accepted_under_autocast_and_float16_is_not(name: str) -> None:
    """Mixed precision: a bf16 output of a previous layer may feed a float32 layer."""
    case = CASES[name]
    layer, args = _build(case)
    args = _cast_first(args, BF16)
    with torch.autocast("cpu", dtype=BF16):
        out = first(layer(*args))
        with pytest.raises(TypeError, match=rf"{case.cls.__name__} expected `.*`.*float16"):
            layer(*_cast_first(args, torch.float16))  # neither the parameters' nor autocast's
    assert torch.isfinite(out.float()).all()
