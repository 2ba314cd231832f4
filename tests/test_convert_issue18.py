"""``bl.to_bayesian(model, "variational_dropout")``: the sparse variational dropout layers
as the converter's counterparts of ``nn.Linear`` and ``nn.Conv2d`` (issue 18)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import bayesian_layers as bl
from bayesian_layers.convert import to_bayesian
from bayesian_layers.layers import registry
from bayesian_layers.layers.variational_dropout import (
    Conv2dVariationalDropout,
    LinearVariationalDropout,
    variational_dropout_sparsity,
)

VD = "variational_dropout"


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2, bias=False),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 5), nn.ReLU(), nn.Linear(5, 2),
    ).double()  # fmt: skip


def _log_uniform_kl(loc: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """Molchanov et al. (2017), eq. 14, written out here as an independent reference."""
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    log_alpha = log_sigma2 - torch.log(loc**2)
    neg_kl = k1 * torch.sigmoid(k2 + k3 * log_alpha) - 0.5 * torch.log1p(torch.exp(-log_alpha))
    return -(neg_kl - k1).sum()


def test_the_registry_holds_the_variational_dropout_layers() -> None:
    assert VD in registry.ESTIMATORS and VD in bl.convert.ESTIMATORS
    assert registry.counterparts(nn.Linear)[VD] is LinearVariationalDropout
    assert registry.counterparts(nn.Conv2d)[VD] is Conv2dVariationalDropout


def test_conversion_types_report_and_weights() -> None:
    torch_net = _cnn()
    net, report = to_bayesian(_cnn(), VD, return_report=True)
    kinds = [type(m).__name__ for m in net]
    assert kinds == [
        "Conv2dVariationalDropout", "ReLU", "Conv2dVariationalDropout", "Flatten",
        "LinearVariationalDropout", "ReLU", "LinearVariationalDropout",
    ]  # fmt: skip
    assert [(s.name, s.estimator) for s in report] == [(n, VD) for n in ("0", "2", "4", "6")]
    for i in (0, 2, 4, 6):
        new, old = net[i], torch_net[i]
        assert new.weight_loc.dtype == torch.float64
        assert torch.equal(new.weight_loc, old.weight)  # θ = the torch weight
        assert torch.equal(new.weight_log_sigma2, torch.full_like(old.weight, -10.0))
        assert new.use_bias == (old.bias is not None)
        if old.bias is not None:
            assert torch.equal(new.bias, old.bias)
    assert net[2].stride == (2, 2) and net[0].padding == (1, 1)


def test_posterior_mean_with_no_threshold_is_the_torch_network_exactly() -> None:
    torch_net = _cnn()
    net = to_bayesian(_cnn(), VD, threshold=math.inf)
    assert {m.threshold for m in bl.bayesian_modules(net)} == {math.inf}
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    with bl.posterior_mean(net), torch.no_grad():
        assert torch.equal(net(x), torch_net(x))


def test_posterior_mean_prunes_the_weights_below_the_threshold() -> None:
    """With the default threshold 3 and log σ² = -10, log α > 3 exactly where
    |θ| < exp(-6.5) ≈ 1.5e-3: the mean network is the torch one with those set to 0."""
    torch.manual_seed(0)
    torch_net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        torch_net[0].weight[1, 2] = 1e-4  # log α = -10 + 18.4 = 8.4: pruned
        torch_net[0].weight[0, 0] = 3e-3  # log α = -10 + 11.6 = 1.6: kept
        torch_net[2].weight.clamp_(min=0.01)  # none pruned in the last layer
    pruned = copy.deepcopy(torch_net)  # the reference: the torch network, pruned
    with torch.no_grad():
        pruned[0].weight[1, 2] = 0.0
    net = to_bayesian(torch_net, VD)
    assert {m.threshold for m in bl.bayesian_modules(net)} == {3.0}
    assert variational_dropout_sparsity(net).counts == {"0": (1, 12), "2": (0, 6)}
    x = torch.randn(6, 4, dtype=torch.float64)
    with bl.posterior_mean(net), torch.no_grad():
        out = net(x)
    assert torch.equal(out, pruned(x))


def test_losses_are_the_log_uniform_kl_and_every_parameter_trains() -> None:
    net = to_bayesian(_cnn(), VD)
    terms = bl.losses(net)
    layers = list(bl.bayesian_modules(net))
    assert len(terms) == len(layers) == 4
    for term, layer in zip(terms, layers, strict=True):
        expected = _log_uniform_kl(layer.weight_loc.detach(), layer.weight_log_sigma2.detach())
        torch.testing.assert_close(term.detach(), expected, rtol=1e-9, atol=0)
        assert term.item() > 0
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    (net(x).sum() + sum(terms)).backward()
    for layer in layers:
        for name in ("weight_loc", "weight_log_sigma2"):
            grad = getattr(layer, name).grad
            assert grad is not None and grad.isfinite().all() and grad.abs().sum() > 0, name


def test_samples_have_the_local_reparameterization_variance() -> None:
    """One layer, x fixed: y_j ~ N(x θ_jᵀ + b_j, x² σ²_jᵀ). n = 4000 draws, k = 2 outputs,
    each variance within 5 standard errors (sd of a sample variance: σ² sqrt(2/(n-1)))."""
    torch.manual_seed(0)
    layer = to_bayesian(nn.Linear(3, 2).double(), VD)
    with torch.no_grad():
        layer.weight_log_sigma2.fill_(math.log(0.04))  # σ = 0.2
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    with torch.no_grad():
        y = layer(x.expand(4000, 3))
    theta, sigma2 = layer.weight_loc.detach(), layer.weight_log_sigma2.detach().exp()
    mean, var = x @ theta.T + layer.bias.detach(), (x**2) @ sigma2.T
    n = y.shape[0]
    assert ((y.mean(0) - mean[0]).abs() <= 5 * (var[0] / n).sqrt()).all()
    assert ((y.var(0) - var[0]).abs() <= 5 * var[0] * math.sqrt(2 / (n - 1))).all()


def test_other_layers_fall_back_to_reparameterization() -> None:
    net = nn.Sequential(nn.Conv1d(2, 3, 1), nn.Flatten(), nn.Linear(3, 1))
    net, report = to_bayesian(net, VD, return_report=True)
    assert [(s.target, s.estimator) for s in report] == [
        ("Conv1dReparameterization", "reparameterization"),
        ("LinearVariationalDropout", VD),
    ]


def test_pretrained_scale_needs_a_softplus_normal_posterior() -> None:
    with pytest.raises(ValueError, match="needs normal .*VariationalDropoutNormal"):
        to_bayesian(nn.Linear(2, 2), VD, pretrained_scale=0.1)


def test_from_torch_checks_the_module_type() -> None:
    with pytest.raises(TypeError, match="LinearVariationalDropout.from_torch expected nn.Linear"):
        LinearVariationalDropout.from_torch(nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="Conv2dVariationalDropout.from_torch expected nn.Conv2d"):
        Conv2dVariationalDropout.from_torch(nn.Linear(1, 1))


@pytest.mark.parametrize("spelling", ["dropout", "VariationalDropout", "rank1"])
def test_an_unknown_estimator_lists_every_name(spelling: str) -> None:
    with pytest.raises(ValueError, match="to_bayesian expected `estimator`") as info:
        to_bayesian(nn.Linear(2, 2), spelling)
    for name in registry.ESTIMATORS:
        assert repr(name) in str(info.value)
