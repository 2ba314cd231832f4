"""``diagnose``: quiet on a healthy digits MLP, loud on the usual broken setups.

Setups (scikit-learn's digits, standardised, 1437 training / 360 validation images; MLP
64-64-10 of ``LinearFlipout``; Adam 1e-2, batch 64, 40 epochs, seed 0; loss
``cross_entropy + sum(bl.losses) / divisor``), trained once each:

* healthy: divisor ``N = 1437`` and the default ``N(0, 1)`` prior;
* ``kl_by_batch``: divisor 64, the batch size (the KL weighs 22 times too much);
* ``narrow_prior``: ``NormalKLDivergence(scale=1e-3)`` on every weight;
* untrained: the model as built.

Measured (these seeds): the healthy model's first layer has 12% of its weights at the
prior (threshold 50%), confidence 0.959 against accuracy 0.975 (2.3 standard errors of
the gap: not flagged, and not asserted: too close to the 3-s.e. threshold); the
KL-by-batch model's first layer 81%, confidence 0.794 against accuracy 0.936 (12 s.e.).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bayesian_layers as bl
from bayesian_layers.diagnostics import (
    COLLAPSE_FRACTION,
    ELEMENT_KL_AT_PRIOR,
    Diagnosis,
    LayerDiagnosis,
    diagnose,
)

LAYER_CODES = {"collapsed_to_prior", "scales_at_init", "prior_too_narrow", "weights_shrunk"}
EPOCHS, LR, BATCH = 40, 1e-2, 64


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, val = perm[:1437], perm[1437:]
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / torch.where(std > 0, std, torch.ones_like(std))
    return x[train], y[train], x[val], y[val]


def _mlp(**kwargs: object) -> nn.Sequential:
    return nn.Sequential(
        bl.layers.LinearFlipout(64, 64, **kwargs),
        nn.ReLU(),
        bl.layers.LinearFlipout(64, 10, **kwargs),
    )


def _train(digits, divisor: float, epochs: int = EPOCHS, **kwargs: object) -> nn.Module:
    x, y, _, _ = digits
    torch.manual_seed(0)
    model = _mlp(**kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx]) + sum(bl.losses(model)) / divisor
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def _val_loader(digits) -> DataLoader:
    _, _, xv, yv = digits
    return DataLoader(TensorDataset(xv, yv), batch_size=128)


@pytest.fixture(scope="module")
def reports(digits) -> dict[str, Diagnosis]:
    torch.manual_seed(0)
    setups = {
        "healthy": _train(digits, 1437),
        "kl_by_batch": _train(digits, BATCH),
        "narrow_prior": _train(
            digits, 1437, weight_regularizer=bl.regularizers.NormalKLDivergence(scale=1e-3)
        ),
        "untrained": _mlp(),
    }
    out = {}
    for name, model in setups.items():
        torch.manual_seed(1)
        out[name] = diagnose(model, _val_loader(digits))
    return out


# ---------------------------------------------------------------- the four setups
def test_healthy_model_raises_no_layer_warning(reports):
    report = reports["healthy"]
    assert not LAYER_CODES & set(report.codes), str(report)
    assert report.calibration is not None and report.calibration["accuracy"] > 0.9
    for layer in report.layers:
        assert layer.frac_at_prior < COLLAPSE_FRACTION / 2
        assert layer.frac_scale_at_init == 0.0
        assert layer.prior_scale == 1.0


def test_kl_divided_by_the_batch_size_is_flagged(reports):
    report, healthy = reports["kl_by_batch"], reports["healthy"]
    assert "0" in report.flags.get("collapsed_to_prior", []), str(report)
    assert report.layers[0].frac_at_prior > healthy.layers[0].frac_at_prior
    assert report.layers[0].snr_median < healthy.layers[0].snr_median
    cal = report.calibration
    assert "underconfident" in report.codes, str(report)
    assert cal["accuracy"] - cal["confidence"] > 5 * cal["gap_se"]
    assert any("N, not the batch size" in w for w in report.warnings)


def test_prior_scale_far_too_small_is_flagged(reports):
    report = reports["narrow_prior"]
    assert report.flags.get("prior_too_narrow") == ["0", "2"], str(report)
    assert "weights_shrunk" in report.codes
    assert "collapsed_to_prior" not in report.codes  # the narrow prior is named instead
    for layer in report.layers:
        assert layer.prior_scale == pytest.approx(1e-3)
        assert layer.natural_scale == pytest.approx(1 / 8)
        assert layer.loc_rms < 1e-3


def test_untrained_model_has_scales_at_init(reports):
    report = reports["untrained"]
    assert report.flags.get("scales_at_init") == ["0", "2"], str(report)
    assert {layer.frac_scale_at_init for layer in report.layers} == {1.0}
    assert not (LAYER_CODES - {"scales_at_init"}) & set(report.codes)


def test_briefly_trained_scales_are_not_stuck(digits):
    report = diagnose(_train(digits, 1437, epochs=1))
    assert "scales_at_init" not in report.codes, str(report)


# ---------------------------------------------------------- thresholds in closed form
def _set_posterior(layer: nn.Module, loc: float, scale: float) -> None:
    with torch.no_grad():
        layer.weight_loc.fill_(loc)
        layer.weight_rho.fill_(math.log(math.expm1(scale)))


@pytest.mark.parametrize(
    ("loc", "scale", "at_prior"),
    [(0.0, 1.0, True), (0.3, 1.0, True), (0.0, 0.5, False), (0.5, 1.0, False)],
)
def test_element_at_prior_follows_the_closed_form_kl(loc, scale, at_prior):
    """KL(N(μ, σ²) || N(0, 1)) = -log σ + (σ² + μ²)/2 - 1/2: 0, 0.045, 0.318, 0.125."""
    kl = -math.log(scale) + (scale**2 + loc**2) / 2 - 0.5
    assert (kl < ELEMENT_KL_AT_PRIOR) == at_prior
    model = _mlp()
    _set_posterior(model[0], loc, scale)
    layer = diagnose(model).layers[0]
    assert layer.frac_at_prior == (1.0 if at_prior else 0.0)
    assert layer.kl_per_param == pytest.approx(kl, abs=1e-5)
    assert ("collapsed_to_prior" in layer.codes) == at_prior
    assert layer.snr_mean == pytest.approx(abs(loc) / scale, rel=1e-5)


def test_calibration_figures_equal_the_metrics(digits):
    model = _mlp()
    _, _, xv, yv = digits
    torch.manual_seed(3)
    cal = diagnose(model, [(xv, yv)], num_samples=8).calibration
    torch.manual_seed(3)
    probs = bl.predict(model, xv, 8).samples.softmax(-1).mean(0)
    assert cal["accuracy"] == pytest.approx(float(bl.metrics.accuracy(probs, yv)))
    assert cal["confidence"] == pytest.approx(float(probs.max(-1).values.mean()))
    assert cal["ece"] == pytest.approx(float(bl.metrics.expected_calibration_error(probs, yv)))
    assert cal["nll"] == pytest.approx(float(bl.metrics.negative_log_likelihood(probs, yv)))
    assert cal["num_examples"] == 360 and cal["num_samples"] == 8


def test_overconfident_predictive_is_flagged():
    """Labels independent of confident predictions: accuracy 1/3, confidence ~1."""
    torch.manual_seed(0)
    layer = bl.layers.LinearFlipout(
        4, 3, weight_initializer=bl.initializers.TrainableNormal(loc_std=10.0, scale_init=1e-4)
    )
    x, y = torch.randn(600, 4), torch.randint(0, 3, (600,))
    report = diagnose(layer, [(x, y)])
    assert report.codes == ["scales_at_init", "overconfident"]
    assert report.flags["overconfident"] == ["predictive"]


# ------------------------------------------------------------------------ the report
class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out = bl.layers.LinearReparameterization(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x)


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(bl.layers.Conv2dFlipout(1, 4, 3), nn.ReLU(), nn.Flatten())
        self.head = _Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_nested_conv_model_report():
    model = _ConvNet()
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 3, (20,))
    report = diagnose(model, DataLoader(TensorDataset(x, y), batch_size=8), num_samples=4)
    assert [d.name for d in report.layers] == ["features.0", "head.out"]
    conv, head = report.layers
    assert conv.kind == "Conv2dFlipout" and conv.num_params == 4 * 1 * 3 * 3
    assert conv.natural_scale == pytest.approx(1 / 3)  # fan_in = 1 * 3 * 3
    assert head.natural_scale == pytest.approx(1 / 12)  # fan_in = 144
    expected_kl = sum(float(t.detach()) for t in model.features[0].losses)
    assert conv.kl == pytest.approx(expected_kl, rel=1e-5)
    for d in report.layers:
        values = [d.kl, d.kl_per_param, d.snr_mean, d.snr_median, d.scale_mean, d.loc_rms]
        assert all(math.isfinite(v) for v in values)
        assert d.scale_mean == pytest.approx(1e-2, rel=1e-4)  # the default scale_init
    text = str(report)
    assert "features.0" in text and "head.out" in text and "Conv2dFlipout" in text
    assert "calibration (20 examples, K=4)" in text
    assert len(text.splitlines()) <= 15
    assert json.loads(json.dumps(report.to_dict()))["layers"][0]["name"] == "features.0"


def test_report_without_problems_says_so():
    report = Diagnosis([LayerDiagnosis("enc.0", "LinearFlipout", 12, kl=1.0, kl_per_param=1 / 12)])
    text = str(report)
    assert "enc.0" in text and "no problems found" in text and "no loader" in text
    assert report.ok and report.codes == []


def test_to_dict_is_plain_json(reports):
    d = reports["kl_by_batch"].to_dict()
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back["codes"] == reports["kl_by_batch"].codes
    assert back["calibration"]["task"] == "classification"
    assert {"name", "kl", "snr_median", "prior_scale", "codes"} <= set(back["layers"][0])


def test_other_priors_report_their_scale():
    learned = bl.regularizers.LearnedScaleNormalKLDivergence(scale=0.5)
    layer = bl.layers.LinearFlipout(16, 4, weight_regularizer=learned)
    assert diagnose(layer).layers[0].prior_scale == pytest.approx(0.5)
    eb = bl.regularizers.NormalKLDivergence(scale="empirical_bayes")
    layer = bl.layers.LinearFlipout(16, 4, weight_regularizer=eb)
    d = diagnose(layer).layers[0]
    loc, scale = layer.posterior_loc_scale("weight")
    assert d.prior_scale == pytest.approx(
        float((loc**2 + scale**2).mean().sqrt().detach()), rel=1e-5
    )
    log_uniform = bl.regularizers.LogUniformKLDivergence()  # no prior_scale, not a normal
    d = diagnose(bl.layers.LinearFlipout(16, 4, weight_regularizer=log_uniform)).layers[0]
    assert d.prior_scale is None and d.frac_at_prior is None
    assert math.isfinite(d.kl_per_param) and "collapsed_to_prior" not in d.codes
    layer = bl.layers.LinearFlipout(16, 4, weight_regularizer=None)
    d = diagnose(layer).layers[0]
    assert d.prior_scale is None and d.kl is None and d.frac_at_prior is None


def test_categorical_output_layer():
    model = nn.Sequential(bl.layers.LinearFlipout(4, 3), bl.layers.Categorical())
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    cal = diagnose(model, [(x, y)], num_samples=4).calibration
    assert cal["task"] == "classification" and 0.0 <= cal["ece"] <= 1.0


@pytest.mark.parametrize(("noise", "code"), [(1.0, None), (3.0, "intervals_too_narrow")])
def test_regression_coverage(noise, code):
    """A posterior at w = 2 (σ tiny) and an output N(wx, 1): targets with noise sd 1 are
    covered 90% of the time (3 s.e. at n = 2000: 0.02), with sd 3 only 41%."""
    model = nn.Sequential(bl.layers.LinearReparameterization(1, 1), bl.layers.Normal())
    _set_posterior(model[0], 2.0, 1e-6)
    x = torch.randn(2000, 1)
    y = 2 * x + noise * torch.randn(2000, 1)
    cal = diagnose(model, [(x, y)], num_samples=2).calibration
    expected = math.erf(1.6448536 / noise / math.sqrt(2))
    assert cal["coverage90"] == pytest.approx(expected, abs=5 * math.sqrt(0.09 / 2000))
    assert cal.get("code") == code
    tensor_model = nn.Sequential(bl.layers.LinearReparameterization(1, 1))
    cal = diagnose(tensor_model, [(x, y)], num_samples=2).calibration
    assert "calibration skipped" in cal["note"] and math.isfinite(cal["rmse"])


# ------------------------------------------------------------------------ bad input
def test_bad_model():
    with pytest.raises(TypeError, match="diagnose expected `model` to be an nn.Module"):
        diagnose("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="diagnose found no Bayesian layer.*Sequential"):
        diagnose(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="diagnose found no Bayesian layer"):
        diagnose(bl.layers.MCDropout(0.1))


@pytest.mark.parametrize(
    ("loader", "error", "match"),
    [
        (torch.randn(4, 3), TypeError, "`loader` to be an iterable"),
        (5, TypeError, "`loader` to be an iterable"),
        ([torch.randn(4, 3)], TypeError, r"yield \(x, y\) pairs, got a Tensor"),
        (DataLoader(TensorDataset(torch.randn(4, 3))), TypeError, "pairs, got a list of length 1"),
        ([(torch.randn(4, 3), [0, 1, 0, 1])], TypeError, r"\(Tensor, list\)"),
        ([(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))], ValueError, r"x \(4, 3\)"),
        ([], ValueError, "empty `loader`"),
        ([(torch.randn(4, 3), torch.randn(4, 3))], ValueError, r"targets \(4, 3\) for outputs"),
        ([(torch.randn(4, 3), torch.tensor([0, 1, 2, 5]))], ValueError, r"in \[0, 2\)"),
        ([(torch.randn(4, 3), torch.ones(4, dtype=torch.bool))], TypeError, "torch.bool"),
    ],
)
def test_bad_loader(loader, error, match):
    layer = bl.layers.LinearFlipout(3, 2)
    with pytest.raises(error, match=match):
        diagnose(layer, loader, num_samples=2)


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_bad_num_samples(value):
    with pytest.raises(ValueError, match="diagnose expected `num_samples`"):
        diagnose(bl.layers.LinearFlipout(3, 2), num_samples=value)
