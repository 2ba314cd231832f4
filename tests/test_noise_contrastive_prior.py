"""The noise-contrastive prior (bayesian_layers/regularizers/noise_contrastive.py).

Monte Carlo checks use 5 standard errors (two-sided tail 5.7e-7 per check, 2 checks).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers.regularizers.noise_contrastive import NoiseContrastivePrior


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # One intra-op thread: these tensors are tiny and thread hand-off dominates otherwise.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(in_features: int = 2, units: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, 8), nn.Tanh(), layers.Normal(units=units, in_features=8)
    )


def _normal_kl(p_loc, p_scale, q_loc, q_scale):  # type: ignore[no-untyped-def]
    """KL(N(p_loc, p_scale²) || N(q_loc, q_scale²)) elementwise, written out."""
    return (
        torch.log(q_scale / p_scale) + (p_scale**2 + (p_loc - q_loc) ** 2) / (2 * q_scale**2) - 0.5
    )


@pytest.mark.parametrize("center_at_target", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_penalty_equals_closed_form_kl_at_perturbed_inputs(
    center_at_target: bool, reduction: str
) -> None:
    model = _model().double()
    x = torch.randn(5, 2, dtype=torch.float64)
    y = torch.randn(5, 3, dtype=torch.float64)
    eps = torch.randn(5, 2, dtype=torch.float64)
    sigma_x = torch.tensor([0.3, 1.5])  # one per input feature
    ncp = NoiseContrastivePrior(
        input_noise=sigma_x,
        output_loc=0.4,
        output_scale=2.0,
        center_at_target=center_at_target,
        reduction=reduction,
        scale_factor=0.7,
    )
    got = ncp(model, x, y if center_at_target else None, noise=eps)
    # independent reference: the network by hand
    linear, head = model[0], model[2].projection
    raw = head(torch.tanh(linear(x + sigma_x.double() * eps)))  # (5, 6)
    q_loc, q_scale = raw[:, :3], F.softplus(raw[:, 3:]) + 1e-3
    p_loc = y if center_at_target else torch.full_like(q_loc, 0.4)
    kl = _normal_kl(p_loc, torch.tensor(2.0, dtype=torch.float64), q_loc, q_scale).sum()
    expected = 0.7 * (kl / 5 if reduction == "mean" else kl)
    torch.testing.assert_close(got, expected)


def test_penalty_is_zero_when_the_output_distribution_equals_the_prior() -> None:
    # a constant network: loc = 0.3 everywhere, scale = 1 (layers.Normal's initial scale)
    linear = nn.Linear(2, 1)
    nn.init.zeros_(linear.weight)
    nn.init.constant_(linear.bias, 0.3)
    model = nn.Sequential(linear, layers.Normal(in_features=1))
    x = torch.randn(7, 2)
    ncp = NoiseContrastivePrior(input_noise=2.0, output_loc=0.3, output_scale=1.0)
    with torch.no_grad():
        assert abs(float(ncp(model, x))) < 1e-6
        wider = NoiseContrastivePrior(input_noise=2.0, output_loc=0.3, output_scale=3.0)
        assert float(wider(model, x)) > 1.0  # a prior wider than the output costs


def test_gradients_reach_the_model_and_a_bayesian_model_works() -> None:
    model = nn.Sequential(
        layers.LinearReparameterization(2, 8), nn.Tanh(), layers.Normal(units=1, in_features=8)
    )
    x = torch.randn(6, 2)
    loss = NoiseContrastivePrior()(model, x) + sum(bl.losses(model)) / 100
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


def test_monte_carlo_families_against_an_independent_estimate() -> None:
    """StudentT has no registered KL from a normal: the penalty is a Monte Carlo mean."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), layers.StudentT(units=2, in_features=4))
    x, eps = torch.randn(3, 2), torch.randn(3, 2)
    n = 20_000
    ncp = NoiseContrastivePrior(output_scale=1.5, num_samples=n, reduction="sum")
    with torch.no_grad():
        got = ncp(model, x, noise=eps)
        q = model(ncp.perturb(x, eps)).distribution.base_dist
        prior = torch.distributions.Normal(0.0, 1.5)
        draws = prior.sample((n,) + q.batch_shape)  # (n, 3, 2)
        per = (prior.log_prob(draws) - q.log_prob(draws)).sum((-2, -1))
    se = per.std() / math.sqrt(n)
    assert abs(float(got - per.mean())) < 5 * float(se) * math.sqrt(2)  # two independent means
    for layer in (layers.MixtureNormal(2, 3, in_features=2), layers.MultivariateNormalTriL(2)):
        value = NoiseContrastivePrior(num_samples=8)(layer, x)
        assert value.shape == () and bool(torch.isfinite(value))


def test_training_with_ncp_widens_the_predictive_far_from_the_data() -> None:
    """1-D regression on [-1, 1] (fixed seed); at |x| in [2.5, 3.5] the predictive std
    with NCP is near the output prior's scale and at least 1.5x (geometric mean) the one
    trained without it, while the fit on the data keeps its accuracy. (Seeds 0-4 give
    geometric-mean ratios 1.6-10; NCP's perturbed inputs overlap the data, so the std
    there grows too: about 0.35 against 0.1.)"""

    def train(ncp: NoiseContrastivePrior | None) -> tuple[torch.Tensor, float]:
        torch.manual_seed(0)
        x = torch.rand(64, 1) * 2 - 1
        y = torch.sin(3 * x) + 0.1 * torch.randn_like(x)
        model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), layers.Normal(units=1, in_features=32))
        opt = torch.optim.Adam(model.parameters(), lr=2e-2)
        for _ in range(200):
            opt.zero_grad()
            loss = -model(x).log_prob(y).mean()
            if ncp is not None:
                loss = loss + ncp(model, x, y)
            loss.backward()
            opt.step()
        far = torch.cat([torch.linspace(-3.5, -2.5, 6), torch.linspace(2.5, 3.5, 6)])
        near = torch.linspace(-0.9, 0.9, 19)
        with torch.no_grad():
            far_std = model(far.unsqueeze(-1)).stddev.squeeze(-1)
            near_error = model(near.unsqueeze(-1)).mean.squeeze(-1) - torch.sin(3 * near)
            return far_std, float(near_error.square().mean().sqrt())

    ncp = NoiseContrastivePrior(
        input_noise=0.5, output_scale=1.0, center_at_target=True, scale_factor=0.1
    )
    plain_std, plain_rmse = train(None)
    ncp_std, ncp_rmse = train(ncp)
    assert float(ncp_std.min()) > 0.5  # near the prior's scale 1 everywhere far away
    assert float(ncp_std.log().mean()) > float(plain_std.log().mean()) + math.log(1.5)
    assert ncp_rmse < 0.1 and plain_rmse < 0.1  # data noise 0.1


def test_empty_batch_and_float64_model_with_float32_buffers() -> None:
    model = _model().double()
    ncp = NoiseContrastivePrior()
    empty = ncp(model, torch.zeros(0, 2, dtype=torch.float64)).detach()
    assert float(empty) == 0.0 and not bool(torch.isnan(empty))
    assert ncp(model, torch.randn(4, 2, dtype=torch.float64)).dtype == torch.float64


def test_state_dict_round_trip_with_weights_only() -> None:
    ncp = NoiseContrastivePrior(
        input_noise=torch.tensor([0.2, 0.9]), output_loc=1.0, output_scale=3.0
    )
    buffer = io.BytesIO()
    torch.save(ncp.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert sorted(state) == ["input_noise", "output_loc", "output_scale"]
    fresh = NoiseContrastivePrior(input_noise=torch.ones(2))
    fresh.load_state_dict(state)
    model, x, eps = _model(), torch.randn(4, 2), torch.randn(4, 2)
    torch.testing.assert_close(fresh(model, x, noise=eps), ncp(model, x, noise=eps))


def test_bad_hyperparameters_raise() -> None:
    ncp = NoiseContrastivePrior
    with pytest.raises(ValueError, match="NoiseContrastivePrior.*`input_noise`.*> 0"):
        ncp(input_noise=0.0)
    with pytest.raises(ValueError, match="NoiseContrastivePrior.*`output_scale`.*> 0"):
        ncp(output_scale=-1.0)
    with pytest.raises(ValueError, match="NoiseContrastivePrior.*`output_loc`.*finite"):
        ncp(output_loc=float("inf"))
    with pytest.raises(TypeError, match="NoiseContrastivePrior.*`input_noise`.*number or tensor"):
        ncp(input_noise="0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NoiseContrastivePrior.*`reduction`.*'none'"):
        ncp(reduction="none")
    with pytest.raises(ValueError, match="NoiseContrastivePrior.*`num_samples`.*0"):
        ncp(num_samples=0)
    with pytest.raises(TypeError, match="NoiseContrastivePrior.*`center_at_target`"):
        ncp(center_at_target=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NoiseContrastivePrior.*`scale_factor`"):
        ncp(scale_factor=-0.1)


def test_bad_inputs_raise() -> None:
    ncp, model, x = NoiseContrastivePrior(), _model(), torch.randn(4, 2)
    with pytest.raises(TypeError, match="NoiseContrastivePrior.*floating-point.*torch.int64"):
        ncp(model, torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="NoiseContrastivePrior.*`x` to be a tensor.*list"):
        ncp(model, [[1.0, 2.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NoiseContrastivePrior.*scalar"):
        ncp(model, torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"NoiseContrastivePrior.*`noise`.*\(4, 2\).*\(4, 3\)"):
        ncp(model, x, noise=torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"NoiseContrastivePrior.*\(3,\).*\(4, 2\)"):
        NoiseContrastivePrior(input_noise=torch.ones(3))(model, x)
    with pytest.raises(TypeError, match="NoiseContrastivePrior.*RandomVariable.*Tensor"):
        ncp(nn.Linear(2, 3), x)
    with pytest.raises(TypeError, match="NoiseContrastivePrior.*real line.*Poisson"):
        ncp(layers.Poisson(units=3, in_features=2), x)
    with pytest.raises(TypeError, match="NoiseContrastivePrior.*real line.*LogNormal"):
        ncp(layers.LogNormal(units=3, in_features=2), x)
    with pytest.raises(ValueError, match="NoiseContrastivePrior.*center_at_target=False"):
        ncp(model, x, torch.zeros(4, 3))
    centred = NoiseContrastivePrior(center_at_target=True)
    with pytest.raises(TypeError, match="NoiseContrastivePrior.*`target` tensor.*NoneType"):
        centred(model, x)
    with pytest.raises(ValueError, match=r"NoiseContrastivePrior.*`target`.*\(4, 3\).*\(4, 2\)"):
        centred(model, x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"NoiseContrastivePrior.*`output_loc`.*\(4, 3\).*\(2,\)"):
        NoiseContrastivePrior(output_loc=torch.zeros(2))(model, x)
