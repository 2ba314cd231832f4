"""Spectral normalisation with a norm bound (SNGP): the bound against
``torch.linalg.matrix_norm(·, 2)``, identity below it, power-iteration convergence,
state dict, ``torch.compile``, gradients, bad input."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesian_layers import layers
from bayesian_layers.layers.spectral_norm import (
    SpectralNormalization,
    is_spectral_normalized,
    power_iteration,
    spectral_normalization,
)

F64 = torch.float64


def _layer(kind: str) -> nn.Module:
    return {
        "linear": lambda: nn.Linear(6, 5, dtype=F64),
        "conv1d": lambda: nn.Conv1d(3, 4, 3, dtype=F64),
        "conv2d": lambda: nn.Conv2d(3, 4, 3, padding=1, dtype=F64),
        "conv_transpose2d": lambda: nn.ConvTranspose2d(3, 4, 3, dtype=F64),
    }[kind]()


def _input(kind: str) -> torch.Tensor:
    shape = {"linear": (7, 6), "conv1d": (2, 3, 8)}.get(kind, (2, 3, 5, 5))
    return torch.randn(shape, dtype=F64)


def _sn(layer: nn.Module) -> SpectralNormalization:
    return layer.parametrizations.weight[0]


def _norm(layer: nn.Module) -> float:
    """Largest singular value of the effective weight as the normalised matrix."""
    with torch.no_grad():
        return float(torch.linalg.matrix_norm(_sn(layer).matrix(layer.weight), 2))


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("bound", [0.5, 0.95, 3.0])
def test_spectral_norm_is_at_most_the_bound_after_power_iterations(kind, bound) -> None:
    """A weight of norm 5c is scaled to norm c (to 1e-6) after 30 training calls of one
    iteration each; the conv layer computes with that weight."""
    torch.manual_seed(0)
    layer = spectral_normalization(_layer(kind), norm_bound=bound)
    with torch.no_grad():
        w = layer.parametrizations.weight.original
        w.mul_(5 * bound / torch.linalg.matrix_norm(_sn(layer).matrix(w), 2))
    for _ in range(30):
        layer(_input(kind))
    assert _norm(layer) <= bound * (1 + 1e-6)
    assert _norm(layer) == pytest.approx(bound, rel=1e-6)
    layer.eval()
    x = _input(kind)
    if kind == "linear":
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    elif kind == "conv2d":
        torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, layer.bias, padding=1))


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_weight_below_the_bound_is_unchanged_exactly(kind) -> None:
    torch.manual_seed(0)
    layer = spectral_normalization(_layer(kind), norm_bound=0.95)
    with torch.no_grad():
        w = layer.parametrizations.weight.original
        w.mul_(0.9 / torch.linalg.matrix_norm(_sn(layer).matrix(w), 2))
    for mode in (True, False):
        layer.train(mode)
        for _ in range(3):
            layer(_input(kind))
        assert torch.equal(layer.weight, layer.parametrizations.weight.original)


def test_power_iteration_converges_to_the_largest_singular_value_at_its_rate() -> None:
    """σ = (2, 1, 0.5, 0.1): the estimate never exceeds σ_max, its error falls by at least
    (σ₂/σ₁)² = 1/4 per step once the start has faded, and reaches 1e-12 in 25 steps."""
    gen = torch.Generator().manual_seed(0)
    q1, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=F64))
    q2, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=F64))
    s = torch.tensor([2.0, 1.0, 0.5, 0.1], dtype=F64)
    w = q1[:, :4] @ torch.diag(s) @ q2.mT  # (6, 4)
    assert float(torch.linalg.matrix_norm(w, 2)) == pytest.approx(2.0, rel=1e-12)
    u = F.normalize(torch.randn(6, generator=gen, dtype=F64), dim=0)
    errors = []
    for _ in range(25):
        u, v, sigma = power_iteration(w, u, 1)
        assert float(sigma) <= 2.0 * (1 + 1e-14)
        errors.append(2.0 - float(sigma))
    assert errors[-1] < 1e-12
    for a, b in zip(errors[3:12], errors[4:13], strict=True):
        assert b <= a / 4
    torch.testing.assert_close(u @ w @ v, sigma)


def test_module_estimate_converges_to_the_true_norm_of_a_random_weight() -> None:
    torch.manual_seed(1)
    layer = spectral_normalization(nn.Linear(20, 30, dtype=F64), norm_bound=100.0)
    x = torch.randn(4, 20, dtype=F64)
    for _ in range(300):
        layer(x)
    original = layer.parametrizations.weight.original
    true = torch.linalg.matrix_norm(original.detach(), 2)
    torch.testing.assert_close(_sn(layer).spectral_norm_estimate(original.detach()), true)


def test_evaluation_mode_reads_u_and_v_without_updating_them() -> None:
    torch.manual_seed(0)
    layer = spectral_normalization(nn.Linear(6, 5))
    layer.eval()
    u, v = _sn(layer).u.clone(), _sn(layer).v.clone()
    layer(torch.randn(3, 6))
    assert torch.equal(_sn(layer).u, u) and torch.equal(_sn(layer).v, v)
    layer.train()
    layer(torch.randn(3, 6))
    assert not torch.equal(_sn(layer).v, v)


def test_state_dict_round_trip_keeps_u_and_v() -> None:
    torch.manual_seed(0)
    layer = spectral_normalization(nn.Conv2d(3, 4, 3), norm_bound=0.5)
    for _ in range(3):
        layer(torch.randn(2, 3, 6, 6))
    state = layer.state_dict()
    assert {"parametrizations.weight.0.u", "parametrizations.weight.0.v"} <= state.keys()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.manual_seed(1)  # other u, v and weights
    fresh = spectral_normalization(nn.Conv2d(3, 4, 3), norm_bound=0.5)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(_sn(fresh).u, _sn(layer).u) and torch.equal(_sn(fresh).v, _sn(layer).v)
    layer.eval(), fresh.eval()
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(fresh(x), layer(x))
    clone = copy.deepcopy(layer)  # and deep copies
    assert torch.equal(clone(x), layer(x))


def test_buffers_follow_to() -> None:
    layer = spectral_normalization(nn.Linear(3, 2)).to(F64)
    assert _sn(layer).u.dtype == F64 and _sn(layer).v.dtype == F64
    assert layer(torch.randn(4, 3, dtype=F64)).dtype == F64


def test_torch_compile_matches_eager_in_training_and_evaluation() -> None:
    """Three training steps: compiled outputs, gradients and the u, v buffers equal eager."""
    torch.manual_seed(0)

    def model() -> nn.Module:
        hidden = [spectral_normalization(nn.Linear(4, 8), norm_bound=0.5), nn.Tanh()]
        return nn.Sequential(*hidden, spectral_normalization(nn.Linear(8, 3), norm_bound=0.5))

    eager = model()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    for step in range(3):
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        a, b = eager(x), compiled(x)
        torch.testing.assert_close(b, a)
        a.square().sum().backward()
        b.square().sum().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for (name, p), q in zip(eager.named_buffers(), compiled_model.buffers(), strict=True):
        torch.testing.assert_close(q, p, msg=name)
    eager.eval(), compiled_model.eval()
    x = torch.randn(5, 4)
    torch.testing.assert_close(compiled(x), eager(x))


def test_gradient_of_the_parametrization_passes_gradcheck() -> None:
    """Evaluation mode (u, v fixed): W ↦ W c / max(uᵀWv, c) above and below the bound."""
    torch.manual_seed(0)
    weight = torch.randn(4, 3, dtype=F64)
    sn = SpectralNormalization(weight, norm_bound=1.0).eval()
    assert float(sn.spectral_norm_estimate(weight)) > 1.0
    torch.autograd.gradcheck(sn, (weight.clone().requires_grad_(),))
    torch.autograd.gradcheck(sn, ((weight / 10).requires_grad_(),))


def test_training_step_gives_finite_gradients() -> None:
    torch.manual_seed(0)
    layer = spectral_normalization(nn.Linear(3, 2), norm_bound=0.1)
    layer(torch.randn(4, 3)).sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert grad is not None and torch.isfinite(grad).all()


def test_transposed_convolution_bounds_the_output_dimension() -> None:
    layer = spectral_normalization(nn.ConvTranspose2d(3, 4, 3))
    assert _sn(layer).dim == 1 and _sn(layer).u.shape == (4,) and _sn(layer).v.shape == (27,)
    assert is_spectral_normalized(layer) and not is_spectral_normalized(nn.Linear(2, 2))


def test_bad_input_raises_naming_the_function_and_the_argument() -> None:
    with pytest.raises(TypeError, match="spectral_normalization expected an nn.Module"):
        spectral_normalization(torch.randn(3, 3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"LinearReparameterization\.weight to be an nn.Param"):
        spectral_normalization(layers.LinearReparameterization(3, 2))
    with pytest.raises(ValueError, match="Linear has no parameter 'kernel'"):
        spectral_normalization(nn.Linear(3, 2), name="kernel")
    with pytest.raises(ValueError, match=r"Linear\.bias with at least 2 dims, got shape \(2,\)"):
        spectral_normalization(nn.Linear(3, 2), name="bias")
    with pytest.raises(ValueError, match="already spectral-normalized"):
        spectral_normalization(spectral_normalization(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="lazy layer"):
        spectral_normalization(nn.LazyLinear(2))
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="SpectralNormalization expected `norm_bound`"):
            spectral_normalization(nn.Linear(3, 2), norm_bound=bad)
    for bad_type in ("a", True, None):
        with pytest.raises(TypeError, match="SpectralNormalization expected `norm_bound`"):
            spectral_normalization(nn.Linear(3, 2), norm_bound=bad_type)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`num_power_iterations` >= 1, got 0"):
        spectral_normalization(nn.Linear(3, 2), num_power_iterations=0)
    with pytest.raises(TypeError, match="`num_power_iterations` to be an int"):
        spectral_normalization(nn.Linear(3, 2), num_power_iterations=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`dim` in \[-2, 2\) .* got 2"):
        spectral_normalization(nn.Linear(3, 2), dim=2)
    with pytest.raises(ValueError, match="floating weight with at least 2 dims"):
        SpectralNormalization(torch.ones(3))
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError):
        spectral_normalization(layer, norm_bound=-1.0)
    assert not is_spectral_normalized(layer) and isinstance(layer.weight, nn.Parameter)
