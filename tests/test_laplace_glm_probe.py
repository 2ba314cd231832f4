"""The Jacobian-free linearised covariance (laplace._kron_glm) against the parameter
Jacobians of torch.func (the reference path of glm_predictive), float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesian_layers.laplace import fit, glm_predictive
from bayesian_layers.laplace._kron_glm import probe_moments


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding="same"),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, stride=2, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
    )


def _data(shape: tuple[int, ...], classes: int, n: int = 24) -> list:
    g = torch.Generator().manual_seed(1)
    x = torch.randn((n, *shape), generator=g, dtype=torch.float64)
    return [(x, torch.randint(0, classes, (n,), generator=g))]


@pytest.mark.parametrize("hessian", ["diag", "kron"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_probe_covariance_equals_jacobian_covariance(hessian: str, subset: str, arch: str) -> None:
    torch.manual_seed(0)
    net, shape, classes = (_mlp(), (5,), 3) if arch == "mlp" else (_cnn(), (2, 6, 6), 4)
    net = net.double()
    if arch == "cnn":  # running statistics away from their initial values
        net.train()
        with torch.no_grad():
            net(torch.randn(32, *shape, dtype=torch.float64) * 2 + 1)
    data = _data(shape, classes)
    post = fit(net, data, hessian=hessian, subset=subset, prior_precision=0.7)
    x = torch.randn(9, *shape, dtype=torch.float64)
    moments = probe_moments(post, x)
    assert moments is not None
    mean, cov = moments
    ref_mean, ref_cov = glm_predictive(post, x, likelihood="regression", method="jacobian")
    torch.testing.assert_close(mean, ref_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cov, ref_cov, rtol=1e-10, atol=1e-12)
    assert float(cov.diagonal(dim1=-2, dim2=-1).min()) > 0
    # the default path takes the probes and agrees
    probs = glm_predictive(post, x)
    ref_probs = glm_predictive(post, x, method="jacobian")
    torch.testing.assert_close(probs, ref_probs, rtol=1e-10, atol=1e-12)


def test_other_random_layers_fall_back() -> None:
    emb = nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(6, 2))
    from bayesian_layers import to_bayesian

    model = to_bayesian(emb, "reparameterization")
    assert probe_moments(model, torch.randint(0, 5, (4, 2))) is None


def test_unknown_method_is_named() -> None:
    post = fit(_mlp(), [(torch.randn(8, 5), torch.randint(0, 3, (8,)))])
    with pytest.raises(ValueError, match=r"glm_predictive expected `method` in"):
        glm_predictive(post, torch.randn(2, 5), method="exact")


def test_probe_path_under_no_grad_equals_the_jacobian_path() -> None:
    """Callers predict under ``torch.no_grad()``: the probes still give the covariance."""
    torch.manual_seed(0)
    net = _mlp().double()
    post = fit(net, _data((5,), 3), hessian="kron")
    x = torch.randn(6, 5, dtype=torch.float64)
    with torch.no_grad():
        mean, cov = glm_predictive(post, x, likelihood="regression")
    ref_mean, ref_cov = glm_predictive(post, x, likelihood="regression", method="jacobian")
    torch.testing.assert_close(mean, ref_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cov, ref_cov, rtol=1e-10, atol=1e-12)
