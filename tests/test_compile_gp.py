"""torch.compile on the GP layers and the PoissonProcess: compiled equals eager.

``RandomFourierFeatures`` compiles in one graph; ``GaussianProcess`` and
``SparseGaussianProcess`` compile with graph breaks at the Cholesky jitter check
(``docs/training.md``, "Compiling"). The ``aot_eager`` backend keeps the test fast; it
runs the same Dynamo capture and AOTAutograd as inductor.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesian_layers as bl
from bayesian_layers import layers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("checks_off_as_dynamo_sets_them")]


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()


def _moments(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = module(x)
    return out.distribution.mean, out.distribution.variance


def test_random_fourier_features_compile_in_one_graph() -> None:
    torch.manual_seed(0)
    layer = layers.RandomFourierFeatures(2, 64)
    x = torch.randn(16, 3)
    layer(x)  # build the lazy layer eagerly, then compile
    with bl.posterior_mean(layer):
        eager = layer(x).value
        compiled = torch.compile(lambda t: layer(t).value, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), eager)


# Torch 2.13's Dynamo warns while it resumes across graph breaks (it instantiates
# autograd Functions and reads `.grad` of non-leaf tensors): torch's warnings, not
# ours, and they do not change the results checked here.
DYNAMO_RESUME_WARNINGS = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::UserWarning"
)


@DYNAMO_RESUME_WARNINGS
@pytest.mark.parametrize("kind", ["sparse", "exact"])
def test_gp_layers_compiled_match_eager_moments_and_gradients(kind: str) -> None:
    torch.manual_seed(0)
    x_train, x = torch.randn(20, 3), torch.randn(16, 3)
    if kind == "sparse":
        layer: nn.Module = layers.SparseGaussianProcess(2, 8)
        layer(x_train)  # data-dependent initialisation happens eagerly
    else:
        layer = layers.GaussianProcess(
            2, conditional_inputs=x_train, conditional_outputs=torch.randn(20, 2),
            observation_noise=0.1,
        )  # fmt: skip
    compiled = torch.compile(lambda t: _moments(layer, t), backend="aot_eager")
    got, want = compiled(x), _moments(layer, x)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    grads = []
    for fn in (compiled, lambda t: _moments(layer, t)):
        layer.zero_grad()
        mean, var = fn(x)
        (mean.square().sum() + var.sum()).backward()
        grads.append([p.grad.clone() for p in layer.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for g, w in zip(*grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@DYNAMO_RESUME_WARNINGS
def test_poisson_process_log_prob_compiled_matches_eager() -> None:
    # Compiles with graph breaks at the host-side checks (events inside the domain,
    # a non-negative rate), which raise clear errors in eager and compiled code alike.
    torch.manual_seed(0)
    rate = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1), nn.Softplus(), nn.Flatten(0))
    process = layers.PoissonProcess(rate, domain=[(0.0, 1.0)])
    events = torch.rand(7, 1)

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        return process(x).distribution.log_prob(x)

    compiled = torch.compile(log_prob, backend="aot_eager")
    got, want = compiled(events), log_prob(events)
    torch.testing.assert_close(got, want)
    g_got = torch.autograd.grad(got, list(rate.parameters()))
    g_want = torch.autograd.grad(log_prob(events), list(rate.parameters()))
    for g, w in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(g, w)
    with pytest.raises(ValueError, match="domain"):
        compiled(events + 2.0)


def test_laplace_random_fourier_features_compile_in_one_graph() -> None:
    """The Laplace posterior's cached Cholesky factor is keyed on Python values (update
    count, dtype, device), so a compiled graph reads it instead of refactorising (whose
    jitter retry cannot be traced)."""
    torch.manual_seed(0)
    layer = layers.RandomFourierFeatures(2, num_features=16, in_features=3, posterior="laplace")
    layer.eval()
    x = torch.randn(4, 3)
    with bl.posterior_mean(layer):
        eager = _moments(layer, x)
        compiled = torch.compile(lambda t: _moments(layer, t), backend="eager", fullgraph=True)
        for got, want in zip(compiled(x), eager, strict=True):
            torch.testing.assert_close(got, want)
