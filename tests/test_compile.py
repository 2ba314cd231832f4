"""``torch.compile`` (inductor, CPU, ``fullgraph=True``) of a Bayesian model: the three
dense estimators and MCDropout compile without graph breaks, match eager on posterior
means, and sample with the right moments."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch._dynamo
import torch._inductor.config as inductor_config
from stats_util import z_bonferroni
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounterWithBackend

import bayesian_layers as bl
from bayesian_layers import layers

BACKEND = "inductor"  # works on the CPU machine (needs a C++ compiler); cold start ≈ 20 s

pytestmark = [
    pytest.mark.slow,
    # importing inductor triggers a deprecation warning inside torch itself
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()  # no cache-size limit carried over between tests
    torch.manual_seed(0)
    # in-process compilation: a worker pool costs more than it saves for these small graphs
    with inductor_config.patch(compile_threads=1):
        yield
    torch._dynamo.reset()


def make_model() -> nn.Sequential:
    """A linear chain: E[output] over function samples is exactly the posterior-mean
    output (the layers are independent and E[dropout(h)] = h)."""
    return nn.Sequential(
        layers.LinearReparameterization(4, 16, bias_initializer="trainable_normal"),
        layers.MCDropout(0.2),
        layers.LinearFlipout(16, 16),
        layers.LinearLocalReparameterization(16, 3),
    )


def make_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        layers.LinearReparameterization(4, 16),
        nn.ReLU(),
        layers.MCDropout(0.2),
        layers.LinearFlipout(16, 16),
        nn.ReLU(),
        layers.LinearLocalReparameterization(16, 3),
    )


def compile_model(
    model: nn.Module, backend: str = BACKEND
) -> tuple[nn.Module, CompileCounterWithBackend]:
    counter = CompileCounterWithBackend(backend)
    return torch.compile(model, backend=counter, fullgraph=True), counter


def test_compiled_matches_eager_in_posterior_mean_mode() -> None:
    model = make_mlp()
    compiled, counter = compile_model(model)
    x = torch.randn(8, 2, 2)
    with bl.posterior_mean(model):
        out = compiled(x)
        torch.testing.assert_close(out, model(x))
        (out.sum() + sum(bl.losses(model))).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        (model(x).sum() + sum(bl.losses(model))).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, msg=name)
        # parameters are inputs of the graph, not baked-in constants
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
        torch.testing.assert_close(compiled(x), model(x))
    assert counter.frame_count >= 1


def test_compiled_sampling_has_the_right_moments() -> None:
    """n = 2000 compiled calls vs the posterior-mean output (exact for this linear
    chain) and vs 2000 eager calls. Means: half-width z·s/√n. Variances, compiled vs
    eager: z·sqrt(SE₁² + SE₂²) with SE² = (m₄ - s⁴)/n (the outputs are not normal).
    k = 2 × 5 × 3 = 30 checks, α = 1e-3."""
    model = make_model()
    with torch.no_grad():  # posterior scales large enough that the spread is material
        for name, p in model.named_parameters():
            if name.endswith("rho"):
                p.fill_(math.log(math.expm1(0.2)))
    compiled, counter = compile_model(model)
    x = torch.randn(5, 4)
    n, z = 2000, z_bonferroni(30)
    with torch.no_grad():
        with bl.posterior_mean(model):
            expected = model(x)
        compiled_samples = torch.stack([compiled(x) for _ in range(n)])
        eager_samples = torch.stack([model(x) for _ in range(n)])
    assert not torch.allclose(compiled_samples[0], compiled_samples[1])

    def moments(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        var = s.var(0)
        m4 = (s - s.mean(0)).pow(4).mean(0)
        return s.mean(0), var, (m4 - var.square()) / n

    mean, var, se = moments(compiled_samples)
    _, eager_var, eager_se = moments(eager_samples)
    assert ((mean - expected).abs() <= z * (var / n).sqrt()).all(), (mean, expected)
    assert ((var - eager_var).abs() <= z * (se + eager_se).sqrt()).all(), (var, eager_var)
    assert (var.sqrt() > 0.1 * expected.abs()).any()  # power: the spread is material
    assert counter.frame_count >= 1


def test_compiled_frozen_and_vectorized_modes() -> None:
    """Mode switches are Python-level control flow that dynamo must guard on; the
    backend does not matter for that, and aot_eager keeps the cold start short."""
    model = make_mlp()
    compiled, counter = compile_model(model, backend="aot_eager")
    x = torch.randn(6, 2, 2)
    with torch.no_grad():
        assert not torch.allclose(compiled(x), compiled(x))
        with bl.frozen_sample(model):
            first = compiled(x)
            torch.testing.assert_close(compiled(x), first, rtol=0, atol=0)
            bl.resample(model)
            assert not torch.allclose(compiled(x), first)
        pred = bl.predict(compiled, x, 5)
    assert pred.samples.shape == (5, 6, 3)
    assert not torch.allclose(pred.samples[0], pred.samples[1])
    assert [m.num_function_samples for m in bl.bayesian_modules(model)] == [1] * 4
    assert counter.frame_count >= 1
