"""SWAG (bayesian_layers.swag): moments against the iterates recorded by hand, the
written posterior, draws against the closed-form Gaussian, BatchNorm per draw, saving
and loading, bad inputs."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from stats_util import z_bonferroni
from torch import nn
from torch.nn import functional as F

import bayesian_layers as bl
from bayesian_layers import layers, swag
from bayesian_layers.initializers.swag_normal import SWAGNormal

F64 = torch.float64


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    return nn.Sequential(
        layers.LinearReparameterization(3, 4, bias_initializer="trainable_normal", dtype=dtype),
        nn.Tanh(),
        layers.LinearReparameterization(4, 1, dtype=dtype),  # deterministic bias
    )


def _data(n_batches: int = 4, dtype: torch.dtype = torch.float32) -> list:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n_batches):
        x = torch.randn(8, 3, generator=g, dtype=dtype)
        out.append((x, x[:, :1].sin() + 0.1 * torch.randn(8, 1, generator=g, dtype=dtype)))
    return out


# ------------------------------------------------------------------ moments
def test_moments_and_written_posterior_match_the_recorded_iterates() -> None:
    """Plain SGD written here (p -= lr·grad on the means and point estimates, float64)
    records the iterate after each epoch; mean, diagonal variance, the last K deviations
    θ_i - mean(θ_1..θ_i) and the written loc/scale/D equal those to float64 rounding."""
    model = _mlp(F64)
    ref = copy.deepcopy(model)
    data = _data(dtype=F64)
    lr, epochs, max_rank = 0.1, 7, 4
    moments = swag.collect(
        model, data, F.mse_loss, lr=lr, epochs=epochs, max_rank=max_rank, bn_update=False
    )

    trained = {k: p for k, p in ref.named_parameters() if not k.endswith("_rho")}
    assert set(trained) == {"0.weight_loc", "0.bias_loc", "2.weight_loc", "2.bias"}
    iterates: dict[str, list[torch.Tensor]] = {k: [] for k in trained}
    with bl.posterior_mean(ref):
        for _ in range(epochs):
            for x, y in data:
                for p in trained.values():
                    p.grad = None
                F.mse_loss(ref(x), y).backward()
                with torch.no_grad():
                    for p in trained.values():
                        p -= lr * p.grad
            for k, p in trained.items():
                iterates[k].append(p.detach().clone())

    assert moments.num_snapshots == epochs and moments.rank == max_rank
    for k, its in iterates.items():
        th = torch.stack(its)  # (n, *shape)
        mean = th.mean(0)
        var = (th.square().mean(0) - mean.square()).clamp_min(0)
        running = th.cumsum(0) / torch.arange(1, epochs + 1, dtype=F64).view(-1, *[1] * mean.dim())
        dev = (th - running)[-max_rank:]
        torch.testing.assert_close(moments.mean[k], mean, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(moments.variance[k], var, rtol=1e-9, atol=1e-13)
        torch.testing.assert_close(moments.deviations[k], dev, rtol=1e-9, atol=1e-13)
        assert var.max() > 1e-8  # the iterates moved: the check can fail

    params = dict(model.named_parameters())
    torch.testing.assert_close(params["2.bias"], moments.mean["2.bias"])  # SWA point estimate
    for path, layer, name in (
        ("0", model[0], "weight"),
        ("0", model[0], "bias"),
        ("2", model[2], "weight"),
    ):
        key = f"{path}.{name}_loc"
        init = layer.parameter_spec(name).initializer
        assert isinstance(init, SWAGNormal) and init.rank == max_rank
        torch.testing.assert_close(getattr(layer, f"{name}_loc"), moments.mean[key])
        scale = F.softplus(getattr(layer, f"{name}_rho"))
        torch.testing.assert_close(
            scale, (0.5 * moments.variance[key]).sqrt(), rtol=1e-10, atol=1e-150
        )
        torch.testing.assert_close(init.deviations, moments.deviations[key])


def test_cyclic_schedule_and_diagonal_covariance_on_flipout() -> None:
    """With ``lr_min`` each step of a period of c steps uses (1 - j/c)·lr + (j/c)·lr_min;
    SWAG-Diag keeps the normal family with scale sqrt(Σ_diag) (Flipout accepts it)."""
    model = nn.Sequential(layers.LinearFlipout(3, 1))
    seen: list[float] = []
    opt = torch.optim.SGD(
        swag._targets.trained_parameters(model, swag._targets.random_normals(model, "t")).values(),
        lr=1.0,
    )
    orig_step = opt.step

    def step(*args: object, **kwargs: object) -> None:
        seen.append(opt.param_groups[0]["lr"])
        orig_step()

    opt.step = step  # type: ignore[method-assign]
    moments = swag.collect(
        model,
        _data(2),
        F.mse_loss,
        opt,
        lr=0.2,
        lr_min=0.05,
        epochs=3,
        covariance="diagonal",
        collect_every=2,
        collect_unit="step",
    )
    expected = [(1 - j / 2) * 0.2 + (j / 2) * 0.05 for j in (1, 2)] * 3
    assert seen == pytest.approx(expected)
    assert moments.num_snapshots == 3
    assert type(model[0].weight_initializer).__name__ == "TrainableNormal"
    torch.testing.assert_close(
        model[0].posterior_loc_scale("weight")[1],
        moments.variance["0.weight_loc"].sqrt().float(),
    )


# ------------------------------------------------------------------ draws
def _swag_model(rank: int = 3) -> nn.Sequential:
    model = nn.Sequential(
        layers.LinearReparameterization(2, 2, bias_initializer="trainable_normal", dtype=F64),
        layers.LinearReparameterization(2, 1, bias_initializer="trainable_normal", dtype=F64),
    )
    swag.prepare(model, rank)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in model:
            for name, spec in layer.named_random_parameters():
                loc = getattr(layer, f"{name}_loc")
                loc.copy_(torch.randn(loc.shape, generator=g, dtype=F64))
                getattr(layer, f"{name}_rho").copy_(
                    bl.initializers.inverse_softplus(
                        0.2 + torch.rand(loc.shape, generator=g, dtype=F64)
                    )
                )
                init = spec.initializer
                init.deviations.copy_(torch.randn(init.deviations.shape, generator=g, dtype=F64))
    return model


def _closed_form(model: nn.Sequential, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    locs, scales, devs = [], [], []
    for layer in model:
        for name, spec in layer.named_random_parameters():
            locs.append(getattr(layer, f"{name}_loc").flatten())
            scales.append(F.softplus(getattr(layer, f"{name}_rho")).flatten())
            devs.append(spec.initializer.deviations.flatten(1))  # (K, n)
    d = torch.cat(devs, 1).T  # (P, K)
    cov = torch.diag(torch.cat(scales).square()) + d @ d.T / (2 * (rank - 1))
    return torch.cat(locs), cov


def _draws(model: nn.Sequential, n: int) -> torch.Tensor:
    with bl.vectorized_samples(model, n):
        parts = [
            layer.sample_param(name).flatten(1) for layer in model for name in ("weight", "bias")
        ]
    return torch.cat(parts, 1).detach()  # (n, P)


def test_diagonal_posterior_after_a_low_rank_one_drops_the_old_deviations() -> None:
    """SWAG-Diag written over a SWAG (low-rank) posterior is N(θ_SWA, Σ_diag): the earlier
    fit's deviations D no longer widen the marginals."""
    torch.manual_seed(0)
    model = _mlp()
    swag.collect(model, _data(), F.mse_loss, lr=0.05, epochs=4, max_rank=3)
    assert isinstance(model[0].weight_initializer, SWAGNormal)
    moments = swag.collect(model, _data(), F.mse_loss, lr=0.05, epochs=4, covariance="diagonal")
    assert type(model[0].weight_initializer).__name__ == "TrainableNormal"
    want = moments.variance["0.weight_loc"].sqrt().float()
    torch.testing.assert_close(model[0].weight.stddev, want)


def test_joint_draws_match_the_closed_form_gaussian() -> None:
    """Inside joint_low_rank, vectorised draws of all 9 parameters have mean θ_SWA and
    covariance diag(scale²) + D Dᵀ / (2 (K - 1)), cross-layer entries included.
    n = 40000; k = 9 means + 45 covariances at family-wise α = 1e-3; the standard error
    of a covariance entry is sqrt((Σ_ii Σ_jj + Σ_ij²) / n)."""
    rank, n = 3, 40_000
    model = _swag_model(rank)
    loc, cov = _closed_form(model, rank)
    assert cov[:6, 6:].abs().max() > 0.1  # layers are correlated: the check can fail
    with swag.joint_low_rank(model):
        x = _draws(model, n)
    z = z_bonferroni(54)
    d = torch.diagonal(cov)
    assert ((x.mean(0) - loc).abs() <= z * (d / n).sqrt()).all()
    emp = torch.cov(x.T)
    se = ((d[:, None] * d[None, :] + cov.square()) / n).sqrt()
    iu = torch.triu_indices(9, 9)
    assert ((emp - cov).abs()[iu[0], iu[1]] <= z * se[iu[0], iu[1]]).all()


def test_draws_outside_joint_low_rank_are_block_diagonal() -> None:
    """Without the shared noise each tensor draws its own z₂: within-tensor covariance is
    SWAG's, across tensors zero (n = 40000, the 4·2 + ... cross entries at α = 1e-3)."""
    rank, n = 3, 40_000
    model = _swag_model(rank)
    _, cov = _closed_form(model, rank)
    x = _draws(model, n)
    emp = torch.cov(x.T)
    blocks = [range(0, 4), range(4, 6), range(6, 8), range(8, 9)]
    mask = torch.ones(9, 9, dtype=torch.bool)
    for b in blocks:
        mask[b.start : b.stop, b.start : b.stop] = False
    d = torch.diagonal(cov)
    se = (d[:, None] * d[None, :] / n).sqrt()
    z = z_bonferroni(int(mask.sum()) + 1)
    assert ((emp.abs() <= z * se) | ~mask).all()
    assert (cov.abs() > 10 * z * se)[mask].any()  # the joint law would fail this


def test_marginal_distribution_and_kl_are_finite() -> None:
    """layer.weight.stddev is the exact marginal sqrt(scale² + Σ_k D_k² / (2(K-1))); the
    KL to the prior is that marginal's closed form."""
    rank = 3
    model = _swag_model(rank)
    layer = model[0]
    _, cov = _closed_form(model, rank)
    torch.testing.assert_close(layer.weight.stddev.flatten(), torch.diagonal(cov)[:4].sqrt())
    q = layer.posterior("weight")
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum()
    torch.testing.assert_close(layer.kl_terms()["weight"], expected)


def test_frozen_sample_keeps_the_low_rank_noise() -> None:
    model = _swag_model()
    x = torch.randn(5, 2, dtype=F64)
    with swag.joint_low_rank(model), bl.frozen_sample(model):
        a, b = model(x), model(x)
        bl.resample(model)
        c = model(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------ BatchNorm
def _lenet() -> nn.Sequential:
    return nn.Sequential(
        layers.Conv2dReparameterization(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(),
        nn.MaxPool2d(2),
        layers.Conv2dReparameterization(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        layers.LinearReparameterization(16 * 5 * 5, 120), nn.ReLU(),
        layers.LinearReparameterization(120, 84), nn.ReLU(),
        layers.LinearReparameterization(84, 10),
    )  # fmt: skip


def _images(n_batches: int = 2) -> list:
    g = torch.Generator().manual_seed(2)
    return [
        (torch.randn(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g))
        for _ in range(n_batches)
    ]


def test_lenet5_with_batchnorm_smoke() -> None:
    """collect on LeNet-5 with BatchNorm, then update_bn per draw changes the running
    statistics, and swag.predict restores them and gives finite samples."""
    model, data = _lenet(), _images()
    moments = swag.collect(
        model, data, F.cross_entropy, lr=0.01, epochs=2, max_rank=2, momentum=0.9
    )
    assert moments.rank == 2
    bn = model[1]
    at_swa = bn.running_mean.clone()
    with swag.joint_low_rank(model), bl.frozen_sample(model):
        swag.update_bn(model, data)
        first = bn.running_mean.clone()
        bl.resample(model)
        swag.update_bn(model, data)
        second = bn.running_mean.clone()
    assert not torch.allclose(first, second) and not torch.allclose(first, at_swa)
    with torch.no_grad(), bl.posterior_mean(model):  # update_bn at θ_SWA is reproducible
        swag.update_bn(model, data)
    torch.testing.assert_close(bn.running_mean, at_swa)

    pred = swag.predict(model, data[0][0], 3, bn_loader=data, transform=lambda z: z.softmax(-1))
    assert pred.samples.shape == (3, 4, 10) and torch.isfinite(pred.samples).all()
    assert not torch.allclose(pred.samples[0], pred.samples[1])
    torch.testing.assert_close(bn.running_mean, at_swa)


def test_converted_network_starts_from_its_trained_weights() -> None:
    """bl.to_bayesian(net, "reparameterization") keeps the trained weights as means; with
    a tiny lr SWAG's θ_SWA stays within lr·epochs·|grad| of them and BatchNorm's affine
    parameters are averaged too."""
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
    model = bl.to_bayesian(copy.deepcopy(net), "reparameterization")
    moments = swag.collect(model, _data(), F.mse_loss, lr=1e-4, epochs=3, max_rank=3)
    assert "1.weight" in moments.mean  # BatchNorm's gamma, a point estimate
    torch.testing.assert_close(model[0].weight_loc, net[0].weight, atol=1e-3, rtol=0)
    assert isinstance(model[3].weight_initializer, SWAGNormal)
    assert model[0].weight_loc.sub(net[0].weight).abs().max() > 0  # it did move


# ------------------------------------------------------------------ state
def test_state_dict_loads_weights_only_into_a_prepared_fresh_model() -> None:
    model = _mlp()
    moments = swag.collect(model, _data(), F.mse_loss, lr=0.05, epochs=4, max_rank=3)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = swag.prepare(_mlp(), moments.rank)
    fresh.load_state_dict(state)
    x = torch.randn(6, 3)
    outs = []
    for m in (model, fresh):
        torch.manual_seed(7)
        with swag.joint_low_rank(m):
            outs.append(bl.predict(m, x, 5).samples)
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0][0], outs[0][1])


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_rank": 0}, r"bl\.swag\.collect expected `max_rank` an int >= 1, got 0"),
        ({"max_rank": 1}, r"covariance='low_rank'\) expected `max_rank` >= 2.*got 1"),
        ({"epochs": 0}, r"`epochs` an int >= 1, got 0"),
        ({"lr": -1.0}, r"`lr` a finite number > 0, got -1.0"),
        ({"momentum": math.nan}, r"`momentum` a finite number >= 0, got nan"),
        ({"weight_decay": -1.0}, r"`weight_decay` a finite number >= 0, got -1.0"),
        ({"covariance": "full"}, r"`covariance` in \('low_rank', 'diagonal'\), got 'full'"),
        ({"collect_every": 9}, r"at least 2 snapshots, got 0"),
    ],
)
def test_collect_rejects_bad_hyperparameters(kwargs: dict, match: str) -> None:
    args = {"lr": 0.01, "epochs": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        swag.collect(_mlp(), _data(), F.mse_loss, **args)


def test_collect_rejects_bad_models_and_loaders() -> None:
    with pytest.raises(
        ValueError, match=r"bl\.swag\.collect expected a non-empty `loader`, got no batches"
    ):
        swag.collect(_mlp(), [], F.mse_loss, lr=0.01, epochs=2)
    with pytest.raises(
        ValueError,
        match=r"bl\.swag\.collect expected `model` with Bayesian layers.*got a Linear with none",
    ):
        swag.collect(nn.Linear(3, 1), _data(), F.mse_loss, lr=0.01, epochs=2)
    with pytest.raises(
        ValueError,
        match=r"expected layers that draw whole weights.*LinearFlipout \(flipout\) for '0.weight'",
    ):
        swag.collect(
            nn.Sequential(layers.LinearFlipout(3, 1)), _data(), F.mse_loss, lr=0.01, epochs=2
        )
    with pytest.raises(ValueError, match=r"\(input, target\) pairs, got a tuple of length 3"):
        swag.collect(_mlp(), [(1, 2, 3)], F.mse_loss, lr=0.01, epochs=2)
    with pytest.raises(ValueError, match=r"bl\.swag\.update_bn expected a non-empty `loader`"):
        swag.update_bn(nn.Sequential(nn.BatchNorm1d(2)), [])
    with pytest.raises(ValueError, match=r"bl\.swag\.prepare expected `rank` an int >= 2, got 1"):
        swag.prepare(_mlp(), 1)
    with pytest.raises(
        ValueError, match=r"bl\.swag\.predict expected `num_samples` an int >= 1, got 0"
    ):
        swag.predict(_swag_model(), torch.zeros(1, 2, dtype=F64), 0)
    with pytest.raises(
        ValueError,
        match=r"SWAGNormal expected `deviations` .* K >= 2.*got shape \(1, 3\)",
    ):
        SWAGNormal(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"the loss became nan"):
        swag.collect(
            _mlp(),
            [(torch.full((2, 3), math.nan), torch.zeros(2, 1))],
            F.mse_loss,
            lr=0.01,
            epochs=2,
        )
