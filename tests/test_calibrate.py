"""Post-hoc temperature scaling: bayesian_layers.calibration against scipy and scikit-learn.

References are independent: the predictive NLL is recomputed in numpy with
``scipy.special.logsumexp`` (and scikit-learn's ``log_loss``) from the same fixed logit
samples, and minimised with ``scipy.optimize.minimize_scalar`` (bounded, ``xatol = 1e-10``
on ``log T``); the fitted temperature must equal scipy's to 1e-4. The overconfident model
is a deterministic MLP trained without regularisation to zero training loss on 200 of
scikit-learn's digits; the temperature is fitted on 700 held-out digits and evaluated on
the other 897.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bayesian_layers as bl
from bayesian_layers.calibration import (
    TemperatureScaled,
    _objective,
    calibrate,
    collect_logits,
    fit_temperature,
    temperature_nll,
)
from bayesian_layers.ensemble import Ensemble
from bayesian_layers.layers import LinearReparameterization

optimize = pytest.importorskip("scipy.optimize")
special = pytest.importorskip("scipy.special")

BOUNDS = (1e-3, 1e3)


def scipy_nll(z: np.ndarray, y: np.ndarray, log_t: float) -> float:
    """-mean_i log mean_k softmax(z_ik / T)[y_i] in numpy, T = exp(log_t)."""
    s = z / math.exp(log_t)  # (K, N, C)
    logp = s - special.logsumexp(s, axis=-1, keepdims=True)
    logp_y = np.take_along_axis(logp, y[None, :, None], -1)[..., 0]  # (K, N)
    return float(-np.mean(special.logsumexp(logp_y, axis=0) - math.log(z.shape[0])))


def scipy_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    z, y = logits.double().numpy(), labels.numpy()
    res = optimize.minimize_scalar(
        lambda u: scipy_nll(z, y, u),
        bounds=(math.log(BOUNDS[0]), math.log(BOUNDS[1])),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return math.exp(res.x)


# ------------------------------------------------------------------ models and data
@pytest.fixture(scope="module")
def digits():
    """An MLP overfitted (no regularisation, 200 full-batch Adam steps) on 200 digits."""
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=gen)
    x = torch.tensor(x / 16.0, dtype=torch.float64)[perm]
    y = torch.tensor(y)[perm]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    train = slice(0, 200)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    try:
        for _ in range(200):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[train]), y[train])
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 1e-2  # overfitted
    return net, (x[200:900], y[200:900]), (x[900:], y[900:])


#: the true weights of the toy data: y ~ Categorical(logits = x @ TRUE_W)
TRUE_W = torch.randn(5, 3, generator=torch.Generator().manual_seed(42), dtype=torch.float64)


def toy_data(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    probs = torch.softmax(x @ TRUE_W, -1)
    return x, torch.multinomial(probs, 1, generator=gen)[:, 0]


def confident_linear() -> nn.Module:
    """The true logits times 3 plus noise: an overconfident member."""
    layer = nn.Linear(5, 3).double()
    with torch.no_grad():
        layer.weight.copy_(3 * TRUE_W.T + 0.5 * torch.randn(3, 5, dtype=torch.float64))
        layer.bias.zero_()
    return layer


def bayesian_model() -> nn.Module:
    """Posterior mean 3x the true weights, posterior scale softplus(-1) = 0.31."""
    torch.manual_seed(1)
    model = nn.Sequential(LinearReparameterization(5, 3)).double()
    with torch.no_grad():
        model[0].weight_loc.copy_(3 * TRUE_W.T)
        model[0].weight_rho.fill_(-1.0)
    return model


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def sngp_model() -> nn.Module:
    """An SNGP trained briefly on toy data, its precision from one pass over it."""
    torch.manual_seed(2)
    model = bl.sngp(nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 3)),
                    num_features=64).double()  # fmt: skip
    x, y = toy_data(400, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model[2].reset_precision()
    model(x)  # a training-mode call adds the data to the head's precision
    return model.eval()


# ------------------------------------------------------------------------ must show
def test_calibrate_reduces_ece_and_nll_of_overconfident_mlp(digits):
    net, val, (x_test, y_test) = digits
    ece = bl.metrics.expected_calibration_error
    nll = bl.metrics.negative_log_likelihood
    scaled = calibrate(net, val)
    with torch.no_grad():
        before, after = net(x_test).softmax(-1), scaled(x_test).softmax(-1)
    assert scaled.temperature.item() > 1.2  # it was overconfident
    assert scaled.num_samples == 1  # deterministic: K = 1
    ece_before, ece_after = ece(before, y_test).item(), ece(after, y_test).item()
    assert ece_after < 0.6 * ece_before, (ece_before, ece_after)
    assert nll(after, y_test).item() < nll(before, y_test).item() - 0.01
    assert scaled.nll_after < scaled.nll_before - 0.01  # on the held-out split
    assert torch.equal(before.argmax(-1), after.argmax(-1))  # accuracy untouched


def test_temperature_equals_scipy_deterministic(digits):
    net, (x, y), _ = digits
    scaled = calibrate(net, (x, y))
    with torch.no_grad():
        logits = net(x)[None]  # (1, N, C)
    reference = scipy_temperature(logits, y)
    assert scaled.temperature.item() == pytest.approx(reference, rel=1e-4, abs=1e-4)
    assert scaled.nll_after == pytest.approx(scipy_nll(logits.numpy(), y.numpy(),
                                                       math.log(reference)), abs=1e-10)  # fmt: skip
    assert scaled.nll_before == pytest.approx(scipy_nll(logits.numpy(), y.numpy(), 0.0), abs=1e-12)


def test_temperature_equals_scipy_bayesian_samples():
    """K = 16 weight samples: the sample-averaged NLL, scipy on the same draws."""
    model = bayesian_model()
    x, y = toy_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=128)
    torch.manual_seed(5)
    scaled = calibrate(model, loader, num_samples=16)
    torch.manual_seed(5)
    logits, labels = collect_logits(model, loader, num_samples=16)  # the same draws
    assert logits.shape == (16, 400, 3) and scaled.num_samples == 16
    assert not torch.equal(logits[0], logits[1])
    reference = scipy_temperature(logits, labels)
    assert 0.01 < reference < 100  # an interior optimum
    assert abs(math.log(reference)) > 0.1  # and not T = 1
    assert scaled.temperature.item() == pytest.approx(reference, rel=1e-4, abs=1e-4)
    # the single-sample (K = 1) NLL would give another temperature: K matters
    assert abs(scipy_temperature(logits[:1], labels) - reference) > 1e-3


def test_nll_equals_sklearn_log_loss():
    metrics = pytest.importorskip("sklearn.metrics")
    x, y = toy_data()
    torch.manual_seed(4)
    logits, labels = collect_logits(bayesian_model(), (x, y), num_samples=8)
    fit = fit_temperature(logits, labels)
    probs = torch.softmax(logits / fit.temperature, -1).mean(0)  # (N, C) predictive
    reference = metrics.log_loss(labels.numpy(), probs.numpy(), labels=[0, 1, 2])
    assert fit.nll_after == pytest.approx(reference, abs=1e-10)
    assert temperature_nll(logits, labels, fit.temperature) == pytest.approx(reference, abs=1e-10)


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8])
def test_labels_of_any_integer_dtype_fit_as_int64(dtype):
    """Narrow integer labels give the int64 labels' fit (gather takes int32/int64 only)."""
    gen = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(2, 40, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    assert fit_temperature(z, y.to(dtype)) == fit_temperature(z, y)
    assert temperature_nll(z, y.to(dtype), 2.0) == temperature_nll(z, y, 2.0)


def test_objective_derivatives_match_autograd():
    gen = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(4, 50, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (50,), generator=gen)
    for u0 in (-1.0, 0.3, 2.0):
        u = torch.tensor(u0, dtype=torch.float64, requires_grad=True)
        logp_y = torch.log_softmax(z / u.exp(), -1).gather(-1, y.expand(4, -1)[..., None])[..., 0]
        f = -(torch.logsumexp(logp_y, 0) - math.log(4)).mean()
        (g,) = torch.autograd.grad(f, u, create_graph=True)
        (h,) = torch.autograd.grad(g, u)
        ours = _objective(z, y, u0, 2)
        assert ours == pytest.approx((f.item(), g.item(), h.item()), rel=1e-10, abs=1e-12)


# ------------------------------------------------------------------- the wrapper
def test_wrapper_divides_tensor_logits():
    torch.manual_seed(0)
    net = mlp()
    x = torch.randn(7, 5, dtype=torch.float64)
    scaled = TemperatureScaled(net, 2.5)
    assert torch.equal(scaled(x), net(x) / 2.5)
    assert TemperatureScaled(net.float(), 2.5)(x.float()).dtype == torch.float32
    assert "temperature=2.5" in repr(scaled)
    assert scaled.nll_before is None and scaled.num_samples is None


@pytest.mark.parametrize("output", [bl.layers.Categorical, bl.layers.OneHotCategorical])
def test_wrapper_scales_categorical_random_variable(output):
    torch.manual_seed(0)
    net = mlp()
    model = nn.Sequential(net, output())
    x = torch.randn(6, 5, dtype=torch.float64)
    out = TemperatureScaled(model, 3.0)(x)
    assert isinstance(out, bl.RandomVariable)
    assert type(out.distribution) is type(model(x).distribution)
    expected = torch.softmax(net(x) / 3.0, -1)
    torch.testing.assert_close(out.distribution.probs, expected, rtol=1e-12, atol=1e-14)
    assert out.shape == model(x).shape  # a value of the scaled distribution
    assert torch.isfinite(out.distribution.log_prob(out.value)).all()
    probs = bl.predict(TemperatureScaled(model, 3.0), x, 2).output_probs  # (K, B, C)
    torch.testing.assert_close(probs, expected.expand(2, -1, -1), rtol=1e-12, atol=1e-14)


def test_calibrate_categorical_output_equals_tensor_logits():
    torch.manual_seed(0)
    net = confident_linear()
    x, y = toy_data()
    t_logits = calibrate(net, (x, y)).temperature.item()
    t_rv = calibrate(nn.Sequential(net, bl.layers.Categorical()), (x, y)).temperature.item()
    assert t_rv == pytest.approx(t_logits, rel=1e-9)


def test_wrapper_refuses_other_outputs():
    model = nn.Sequential(nn.Linear(5, 2), bl.layers.Normal())  # regression, not logits
    x = torch.randn(3, 5)
    with pytest.raises(TypeError, match="TemperatureScaled.*Categorical.*got a RandomVariable "
                                        "with distribution IndependentEvents"):  # fmt: skip
        TemperatureScaled(model)(x)
    with pytest.raises(TypeError, match="calibrate expected the model to return"):
        calibrate(model, (x, torch.zeros(3, dtype=torch.long)))
    with pytest.raises(TypeError, match="TemperatureScaled.*got a tuple"):
        TemperatureScaled(nn.LSTM(5, 2))(x[None])
    with pytest.raises(TypeError, match="TemperatureScaled.*got a Tensor of dtype torch.int64"):
        TemperatureScaled(nn.Identity())(torch.arange(3))


def test_temperature_is_a_buffer_and_state_dict_round_trips():
    torch.manual_seed(0)
    x, y = toy_data()
    scaled = calibrate(confident_linear(), (x, y))
    assert [n for n, _ in scaled.named_buffers()] == ["temperature"]
    assert all("temperature" not in n for n, _ in scaled.named_parameters())
    scaled(x).sum().backward()
    assert not scaled.temperature.requires_grad and scaled.temperature.grad is None
    buffer = io.BytesIO()
    torch.save(scaled.state_dict(), buffer)
    buffer.seek(0)
    fresh = TemperatureScaled(confident_linear())
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.temperature.item() == scaled.temperature.item() != 1.0
    assert torch.equal(fresh(x), scaled(x))


# ---------------------------------------------------- through bl.predict and friends
def test_predict_through_wrapper_bayesian():
    model = bayesian_model()
    scaled = TemperatureScaled(model, 1.7)
    x = torch.randn(9, 5, dtype=torch.float64)
    torch.manual_seed(3)
    ours = bl.predict(scaled, x, 8).samples
    torch.manual_seed(3)
    reference = bl.predict(model, x, 8).samples / 1.7
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0)
    assert len(bl.losses(scaled)) == len(bl.losses(model)) == 1
    assert torch.equal(bl.losses(scaled)[0], bl.losses(model)[0])
    with bl.posterior_mean(scaled):
        torch.testing.assert_close(scaled(x), model(x) / 1.7, rtol=1e-12, atol=0)
    with bl.frozen_sample(scaled):
        assert torch.equal(scaled(x), scaled(x))
    assert not torch.equal(scaled(x), scaled(x))  # fresh draws again


def test_ensemble_members_are_the_samples():
    torch.manual_seed(0)
    ens = Ensemble(confident_linear, n=4)
    x, y = toy_data()
    scaled = calibrate(ens, (x, y), num_samples=4)
    assert scaled.num_samples == 4
    t = scaled.temperature.item()
    assert t > 1.5  # overconfident members
    logits = torch.stack([ens.member(i)(x) for i in range(4)]).detach()  # (n, N, C)
    assert t == pytest.approx(scipy_temperature(logits, y), rel=1e-4, abs=1e-4)
    torch.testing.assert_close(bl.predict(scaled, x, 4).samples, logits / t, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="calibrate.*ensemble.*multiple of 4, got 6"):
        calibrate(ens, (x, y), num_samples=6)


def test_sngp_head_logit_draws():
    model = sngp_model()
    x, y = toy_data(seed=1)
    scaled = TemperatureScaled(model, 2.0)
    pred, ref = bl.predict(scaled, x, 4), bl.predict(model, x, 4)
    torch.testing.assert_close(pred.samples, ref.samples / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(pred.output_mean, ref.output_mean / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(pred.output_variance, ref.output_variance / 4, rtol=1e-12, atol=0)
    assert pred.function_space
    torch.manual_seed(7)
    fitted = calibrate(model, (x, y), num_samples=8)
    torch.manual_seed(7)
    logits, labels = collect_logits(model, (x, y), num_samples=8)
    assert fitted.num_samples == 8 and not torch.equal(logits[0], logits[1])
    reference = scipy_temperature(logits, labels)
    assert fitted.temperature.item() == pytest.approx(reference, rel=1e-4, abs=1e-4)


def test_mode_restored_and_loader_forms_agree():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.Linear(16, 3)).double()
    net.train()
    net[2].eval()
    x, y = toy_data()
    one = calibrate(net, (x, y))  # eval mode: dropout off, so deterministic (K = 1)
    assert one.num_samples == 1
    assert [m.training for m in net.modules()] == [True, True, True, False]
    batched = calibrate(net, DataLoader(TensorDataset(x, y), batch_size=64))
    assert batched.temperature.item() == pytest.approx(one.temperature.item(), rel=1e-9)
    pairs = calibrate(net, [[x[:100], y[:100]], (x[100:], y[100:])])
    assert pairs.temperature.item() == pytest.approx(one.temperature.item(), rel=1e-9)


def test_sequence_outputs_are_flattened():
    torch.manual_seed(0)
    net = mlp()
    x = torch.randn(4, 6, 5, dtype=torch.float64)  # (B, T, features) -> (B, T, C)
    y = torch.randint(0, 3, (4, 6))
    logits, labels = collect_logits(net, (x, y))
    assert logits.shape == (1, 24, 3) and torch.equal(labels, y.reshape(-1))
    torch.testing.assert_close(logits[0], net(x).reshape(24, 3).detach())


def test_separable_data_warns_at_the_bound():
    z = torch.tensor([[[5.0, 0.0], [0.0, 5.0]]], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="keeps decreasing below the bound T = 0.001"):
        fit = fit_temperature(z, torch.tensor([0, 1]))
    assert fit.temperature == pytest.approx(1e-3)
    with pytest.warns(RuntimeWarning, match="does not depend on the temperature"):
        assert fit_temperature(torch.zeros(1, 3, 2), torch.tensor([0, 1, 1])).temperature == 1


# ---------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    net = mlp()
    x, y = toy_data(20)
    cases = [
        (TypeError, "calibrate expected integer class labels `y`, got dtype torch.float32",
         lambda: calibrate(net, (x, y.float()))),
        (ValueError, r"calibrate expected labels `y` in \[0, 3\), got values from .* to 3",
         lambda: calibrate(net, (x, y + 1))),
        (ValueError, r"calibrate expected labels `y` in \[0, 3\), got values from -1",
         lambda: calibrate(net, (x, y - 1))),
        (ValueError, r"calibrate expected labels `y` of shape \(20,\)",
         lambda: calibrate(net, (x, y[:10]))),
        (TypeError, r"calibrate expected `val_loader` to yield \(x, y\) pairs of tensors; "
                    r"batch 0 is \(Tensor\)", lambda: calibrate(net, [(x,)])),
        (TypeError, "batch 1 is Tensor", lambda: calibrate(net, [(x, y), x])),
        (TypeError, "calibrate expected `val_loader` to be an iterable", lambda: calibrate(net, 3)),
        (ValueError, "calibrate expected `val_loader` to yield at least one batch",
         lambda: calibrate(net, [])),
        (ValueError, "calibrate expected `num_samples` >= 1, got 0",
         lambda: calibrate(net, (x, y), num_samples=0)),
        (TypeError, "calibrate expected `num_samples` to be an int",
         lambda: calibrate(net, (x, y), num_samples=2.0)),
        (TypeError, "calibrate expected `model` to be an nn.Module",
         lambda: calibrate(len, (x, y))),
        (ValueError, r"calibrate expected `bounds` low < high",
         lambda: calibrate(net, (x, y), bounds=(2.0, 1.0))),
        (ValueError, "calibrate expected `bounds\\[0\\]` to be a finite number > 0",
         lambda: calibrate(net, (x, y), bounds=(0.0, 1.0))),
        (ValueError, "calibrate expected `max_iter` >= 1",
         lambda: calibrate(net, (x, y), max_iter=0)),
        (ValueError, r"TemperatureScaled expected `temperature` to be a finite number > 0, got 0",
         lambda: TemperatureScaled(net, 0.0)),
        (ValueError, "TemperatureScaled expected `temperature` to be a finite number > 0",
         lambda: TemperatureScaled(net, math.nan)),
        (ValueError, r"TemperatureScaled expected `temperature` to be one number, got a tensor "
                     r"of shape \(2,\)", lambda: TemperatureScaled(net, torch.ones(2))),
        (TypeError, "TemperatureScaled expected `model` to be an nn.Module, got str",
         lambda: TemperatureScaled("net")),
        (ValueError, r"fit_temperature expected floating-point `logits` of shape \(K, N, C\)",
         lambda: fit_temperature(torch.zeros(4, 3), y[:4])),
        (ValueError, r"fit_temperature expected at least one sample and one example \(K, N "
                     r">= 1\), got logits of shape \(0, 2, 3\)",
         lambda: fit_temperature(torch.zeros(0, 2, 3), y[:2])),
        (ValueError, "temperature_nll expected at least one sample and one example",
         lambda: temperature_nll(torch.zeros(0, 2, 3), y[:2], 1.0)),
        (ValueError, "fit_temperature expected finite `logits`",
         lambda: fit_temperature(torch.full((1, 2, 3), math.inf), y[:2])),
        (ValueError, "temperature_nll expected `temperature` to be a finite number > 0",
         lambda: temperature_nll(torch.zeros(1, 2, 3), y[:2], -1.0)),
    ]  # fmt: skip
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
    broken = mlp()
    with torch.no_grad():
        broken[0].weight[0, 0] = math.nan
    with pytest.raises(ValueError, match="calibrate: the model returned non-finite logits"):
        calibrate(broken, (x, y))
