"""SNGP: the mean-field logits (formula; the probit approximation against quadrature),
the GP head (closed-form variance, variance growing away from the data, precision
bookkeeping, deferred variance in training steps, state), ``sngp`` on an MLP and a CNN,
and bad input."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, special
from torch import nn

import bayesian_layers as bl
from bayesian_layers.layers.gp.sngp_head import MEAN_FIELD_FACTOR, SNGPHead, mean_field_logits
from bayesian_layers.layers.spectral_norm import is_spectral_normalized, spectral_normalization
from bayesian_layers.sngp import sngp

F64 = torch.float64


# ------------------------------------------------------------------ mean field
def test_mean_field_logits_is_the_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=gen, dtype=F64)
    var = torch.rand(4, 3, generator=gen, dtype=F64) * 5
    expected = logits / torch.sqrt(1 + math.pi / 8 * var)
    assert MEAN_FIELD_FACTOR == math.pi / 8
    torch.testing.assert_close(mean_field_logits(logits, var), expected, rtol=1e-15, atol=0)
    torch.testing.assert_close(
        mean_field_logits(logits, var[:, :1], mean_field_factor=2.0),
        logits / torch.sqrt(1 + 2.0 * var[:, :1]),
    )
    assert torch.equal(mean_field_logits(logits, var, mean_field_factor=0.0), logits)
    rv = bl.RandomVariable(torch.distributions.Normal(logits, var.sqrt()), value=logits)
    torch.testing.assert_close(mean_field_logits(rv), expected)


def test_binary_mean_field_approximates_the_expected_sigmoid() -> None:
    """sigmoid(m / sqrt(1 + π v/8)) vs E[sigmoid(z)], z ~ N(m, v), by quadrature: within
    0.015 (its largest error on this grid is 0.0086), where sigmoid(m) is off by > 0.2."""
    worst_adjusted = worst_plain = 0.0
    for m in torch.linspace(-4, 4, 9, dtype=F64):
        for v in (0.1, 1.0, 4.0, 10.0, 30.0):
            mu, sd = float(m), math.sqrt(v)

            def integrand(z: float, mu: float = mu, v: float = v) -> float:
                return (
                    special.expit(z)
                    * math.exp(-((z - mu) ** 2) / (2 * v))
                    / math.sqrt(2 * math.pi * v)
                )

            expected, _ = integrate.quad(integrand, mu - 12 * sd, mu + 12 * sd, epsabs=1e-12)
            adjusted = mean_field_logits(m.reshape(1, 1), torch.full((1, 1), v, dtype=F64))
            worst_adjusted = max(worst_adjusted, abs(float(torch.sigmoid(adjusted)) - expected))
            worst_plain = max(worst_plain, abs(float(torch.sigmoid(m)) - expected))
    assert worst_adjusted < 0.015
    assert worst_plain > 0.2


def test_mean_field_logits_bad_input() -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"mean_field_logits expected a finite `variance` >= 0"):
        mean_field_logits(logits, -torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"mean_field_logits expected a finite `variance` >= 0"):
        mean_field_logits(logits, torch.full((2, 3), math.nan))
    with pytest.raises(ValueError, match=r"broadcasts to the logits' \(2, 3\), got \(4,\)"):
        mean_field_logits(logits, torch.ones(4))
    # (2, 1, 1) broadcasts with (2, 3) to (2, 2, 3): refused, not a silently larger result
    with pytest.raises(ValueError, match=r"broadcasts to the logits' \(2, 3\), got \(2, 1, 1\)"):
        mean_field_logits(logits, torch.ones(2, 1, 1))
    with pytest.raises(ValueError, match="needs a `variance`"):
        mean_field_logits(logits)
    with pytest.raises(TypeError, match="mean_field_logits expected floating `logits`"):
        mean_field_logits(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mean_field_logits expected `mean_field_factor`"):
        mean_field_logits(logits, torch.ones(2, 3), mean_field_factor=-1.0)


# ------------------------------------------------------------------------ head
def _train_precision(head: SNGPHead, x: torch.Tensor, batch: int = 50) -> None:
    head.train()
    for rows in x.split(batch):
        head(rows)  # a training step: P += Σ φ φᵀ


def test_head_variance_is_the_laplace_closed_form() -> None:
    """Value W φ + b; variance φᵀ (I/s² + Σ φ_n φ_nᵀ)⁻¹ φ by an independent solve."""
    torch.manual_seed(0)
    head = SNGPHead(3, 2, num_features=32, prior_scale=0.7, dtype=F64)
    data = torch.randn(40, 3, dtype=F64)
    _train_precision(head, data, batch=16)
    head.eval()
    x = torch.randn(6, 3, dtype=F64)
    out = head(x)
    phi, train_phi = head.features(x), head.features(data)
    precision = torch.eye(32, dtype=F64) / 0.7**2 + train_phi.mT @ train_phi
    var = (phi * torch.linalg.solve(precision, phi.mT).mT).sum(-1)  # (6,)
    torch.testing.assert_close(out.distribution.variance, var[:, None].expand(6, 2))
    torch.testing.assert_close(out.value, F.linear(phi, head.gp.weight, head.gp.bias))
    torch.testing.assert_close(head.precision, precision)


def test_head_variance_grows_away_from_the_training_data() -> None:
    """1-D data on [-1, 1], length scale 0.5: the variance is small there, rises
    monotonically over the first two length scales outside, and beyond them stays near
    the prior's φᵀφ ≈ 1 (its random-feature fluctuation at M = 256 is about ±0.06)."""
    torch.manual_seed(0)
    head = SNGPHead(1, 2, num_features=256, length_scale=0.5, dtype=F64)
    _train_precision(head, torch.rand(400, 1, dtype=F64) * 2 - 1)
    head.eval()
    inside = head(torch.linspace(-0.9, 0.9, 19, dtype=F64)[:, None]).distribution.variance[:, 0]
    assert inside.max() < 0.03
    for side in (1.0, -1.0):
        near = side * torch.linspace(1.0, 2.0, 11, dtype=F64)[:, None]
        var = head(near).distribution.variance[:, 0]
        assert (var.diff() > 0).all(), var
        far = side * torch.linspace(2.5, 6.0, 15, dtype=F64)[:, None]
        assert (head(far).distribution.variance > 0.8).all()


def test_precision_changes_only_in_training_steps_and_resets() -> None:
    torch.manual_seed(0)
    head = SNGPHead(3, 2, num_features=16, prior_scale=2.0)
    prior = torch.eye(16) / 4.0
    torch.testing.assert_close(head.precision, prior)
    x = torch.randn(5, 3)
    with torch.no_grad():
        head(x)
    head.eval()
    head(x)
    torch.testing.assert_close(head.precision, prior, rtol=0, atol=0)
    head.train()
    head(x)
    phi = head.features(x).detach()
    torch.testing.assert_close(head.precision, prior + phi.mT @ phi)
    head.reset_precision()
    torch.testing.assert_close(head.precision, prior, rtol=0, atol=0)
    head.update_precision(phi, torch.full((5,), 0.25))  # a weighted (e.g. logistic) update
    torch.testing.assert_close(head.precision, prior + 0.25 * phi.mT @ phi)


def test_training_step_defers_the_variance_until_it_is_read() -> None:
    torch.manual_seed(0)
    head = SNGPHead(3, 2, num_features=16)
    factor = head.gp.posterior_covariance_tril
    calls = []
    head.gp.posterior_covariance_tril = lambda: calls.append(1) or factor()  # type: ignore[method-assign]
    x = torch.randn(5, 3)
    out = head(x)
    F.cross_entropy(out, torch.tensor([0, 1, 0, 1, 1])).backward()
    assert not calls and head.gp.weight.grad is not None
    deferred = out.distribution.variance
    assert calls == [1]
    head.eval()
    torch.testing.assert_close(deferred, head(x).distribution.variance)
    assert out.distribution.expand((2, 5, 2)).variance.shape == (2, 5, 2)


def test_head_gradients_input_norm_and_frozen_kernel() -> None:
    torch.manual_seed(0)
    head = SNGPHead(4, 3, num_features=16, normalize_input=True)
    x = torch.randn(6, 4) * 5 + 2
    assert head.input_norm is not None
    torch.testing.assert_close(head.features(x), head.gp.features(head.input_norm(x)))
    out = head(x)
    (out.sum() + sum(bl.losses(head))).backward()
    trained = {n for n, p in head.named_parameters() if p.grad is not None}
    assert trained == {"gp.weight", "gp.bias", "input_norm.weight", "input_norm.bias"}
    assert not any(p.requires_grad for p in head.gp.kernel.parameters())
    torch.testing.assert_close(bl.losses(head)[0], 0.5 * head.gp.weight.square().sum())


def test_head_state_dict_round_trip_with_weights_only() -> None:
    torch.manual_seed(0)
    head = SNGPHead(3, 2, num_features=16)
    _train_precision(head, torch.randn(20, 3))
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    fresh = SNGPHead(3, 2, num_features=16)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    head.eval(), fresh.eval()
    x = torch.randn(4, 3)
    a, b = head(x), fresh(x)
    assert torch.equal(a.value, b.value)
    assert torch.equal(a.distribution.variance, b.distribution.variance)


def test_head_loading_a_precision_after_predicting_uses_the_loaded_one() -> None:
    """A head that predicted (and cached the factor of its prior precision) and then
    loads a trained state gives the trained head's variance, also after ``.double()``."""
    torch.manual_seed(0)
    head = SNGPHead(3, 2, num_features=16)
    _train_precision(head, torch.randn(20, 3))
    head.eval()
    x = torch.randn(4, 3)
    fresh = SNGPHead(3, 2, num_features=16).eval()
    fresh(x)  # caches the Cholesky factor of the prior precision I
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh(x).distribution.variance, head(x).distribution.variance)
    fresh.double()  # the cached factor was float32
    want = head.double()(x.double()).distribution.variance
    torch.testing.assert_close(fresh(x.double()).distribution.variance, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_features": 0}, ValueError, "`in_features` >= 1"),
        ({"num_classes": 2.5}, TypeError, "`num_classes` to be an int"),
        ({"num_features": 0}, ValueError, "`num_features` >= 1"),
        ({"length_scale": 0.0}, ValueError, "`length_scale`"),
        ({"prior_scale": -1.0}, ValueError, "`prior_scale`"),
        ({"mean_field_factor": -0.1}, ValueError, "`mean_field_factor`"),
        ({"normalize_input": "yes"}, TypeError, "`normalize_input` to be a bool"),
        ({"bias": 1}, TypeError, "`bias` to be a bool"),
        ({"name": 3}, TypeError, "`name` to be a str"),
    ],
)
def test_head_bad_arguments_raise_naming_the_head(kwargs, error, match) -> None:
    args = {"in_features": 3, "num_classes": 2} | kwargs
    with pytest.raises(error, match=f"SNGPHead.*{match}"):
        SNGPHead(args.pop("in_features"), args.pop("num_classes"), **args)


def test_head_bad_input_raises() -> None:
    head = SNGPHead(3, 2, num_features=8)
    with pytest.raises(
        ValueError, match=r"SNGPHead expected input of shape \(\*, 3\), got \(5, 4\)"
    ):
        head(torch.randn(5, 4))
    with pytest.raises(TypeError, match="SNGPHead expected input `x` of dtype torch.float32"):
        head(torch.randn(5, 3, dtype=F64))
    before = head.precision.clone()
    with pytest.raises(ValueError, match="SNGPHead: .*expected finite"):
        head(torch.full((2, 3), math.nan))
    assert torch.equal(head.precision, before)


# ------------------------------------------------------------------------ sngp
def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


class _CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2))
        self.fc = nn.Linear(8 * 2 * 2, 16)
        self.bn = nn.BatchNorm1d(16)
        self.out = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).flatten(1)  # (B, 32)
        return self.out(F.relu(self.bn(self.fc(h))))


def test_sngp_on_an_mlp_normalizes_hidden_layers_and_replaces_the_last() -> None:
    torch.manual_seed(0)
    model = _mlp()
    with torch.no_grad():
        for i in (0, 2):
            model[i].weight.mul_(10)  # norms well above the bound
    assert sngp(model, norm_bound=0.9, num_features=64) is model
    assert is_spectral_normalized(model[0]) and is_spectral_normalized(model[2])
    assert isinstance(model[4], SNGPHead) and model[4].in_features == 16
    assert model[4].num_classes == 3
    x = torch.randn(32, 2)
    for _ in range(20):
        out = model(x)
        F.cross_entropy(out, torch.randint(0, 3, (32,))).backward()
    for i in (0, 2):
        norm = torch.linalg.matrix_norm(model[i].weight.detach(), 2)
        assert float(norm) <= 0.9 * (1 + 1e-5)
    assert out.shape == (32, 3) and isinstance(out, bl.RandomVariable)
    model.eval()
    probs = model[4].mean_field_logits(model(x)).softmax(-1)
    assert probs.shape == (32, 3) and torch.isfinite(probs).all()
    assert len(bl.losses(model)) == 1  # the head's prior penalty
    pred = bl.predict(model, x, 2)
    assert pred.samples.shape == (2, 32, 3) and pred.function_space


def test_sngp_on_a_cnn_with_a_named_head() -> None:
    torch.manual_seed(0)
    model = _CNN().double().eval()
    sngp(model, head="out", num_features=32, normalize_input=True)
    assert all(is_spectral_normalized(m) for m in (model.features[0], model.features[2]))
    assert is_spectral_normalized(model.fc) and not hasattr(model.bn, "parametrizations")
    head = model.out
    assert isinstance(head, SNGPHead) and not head.training
    assert head.precision.dtype == F64 and head.input_norm is not None
    out = model(torch.randn(3, 1, 8, 8, dtype=F64))
    assert out.shape == (3, 10) and out.distribution.variance.shape == (3, 10)


def test_sngp_dotted_head_path_and_a_bare_linear() -> None:
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Sequential(nn.Linear(8, 5)))
    sngp(model, head="2.0", num_features=8)
    assert isinstance(model[2][0], SNGPHead) and is_spectral_normalized(model[0])
    assert model(torch.randn(3, 2, 4)).shape == (3, 5)
    head = sngp(nn.Linear(4, 2), num_features=8)
    assert isinstance(head, SNGPHead) and head.in_features == 4


def test_sngp_leaves_layers_already_normalized_alone() -> None:
    model = _mlp()
    spectral_normalization(model[0], norm_bound=2.0)
    sngp(model, num_features=8)
    assert model[0].parametrizations.weight[0].norm_bound == 2.0
    assert model[2].parametrizations.weight[0].norm_bound == 0.95


def test_sngp_bad_input_raises_and_changes_nothing() -> None:
    with pytest.raises(TypeError, match="sngp expected an nn.Module"):
        sngp("model")  # type: ignore[arg-type]
    model = _mlp()
    with pytest.raises(ValueError, match=r"sngp: Sequential has no submodule 'fc' .*'0', '2', '4'"):
        sngp(model, head="fc")
    with pytest.raises(TypeError, match="sngp expected `head` '1' to be an nn.Linear, got ReLU"):
        sngp(model, head="1")
    with pytest.raises(TypeError, match="sngp expected `head` to be a dotted module path"):
        sngp(model, head=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sngp expected `norm_bound`"):
        sngp(model, norm_bound=0.0)
    with pytest.raises(ValueError, match="sngp expected `num_features` >= 1"):
        sngp(model, num_features=0)
    assert not any(is_spectral_normalized(m) for m in model if isinstance(m, nn.Linear))
    with pytest.raises(ValueError, match="sngp found no nn.Linear"):
        sngp(nn.Sequential(nn.Conv2d(1, 2, 3)))
    lazy = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="sngp: 0 is a lazy layer"):
        sngp(lazy)
    assert isinstance(lazy[2], nn.Linear) and not is_spectral_normalized(lazy[2])
    sngp(model, num_features=8)
    with pytest.raises(ValueError, match="already has an SNGPHead"):
        sngp(model)


# Torch 2.13's Dynamo warns while it resumes across graph breaks (reads `.grad` of
# non-leaf tensors): torch's warnings, as in tests/test_compile_gp.py.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_compiled_sngp_model_matches_eager() -> None:
    """torch.compile (eager backend; the head's finiteness check and Cholesky jitter
    check break the graph, as for the Laplace RFF): training steps give the eager logits
    and precision, evaluation the eager variance."""
    torch.manual_seed(0)
    model = sngp(_mlp(), num_features=32)
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend="eager")
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for step in range(3):
        x = torch.randn(8, 2, generator=torch.Generator().manual_seed(step))
        a, b = eager(x), compiled(x)
        torch.testing.assert_close(b.value, a.value)
        F.cross_entropy(a, y).backward()
        F.cross_entropy(b, y).backward()
    torch.testing.assert_close(model[4].precision, eager[4].precision)
    torch.testing.assert_close(model[0].parametrizations.weight.original.grad,
                               eager[0].parametrizations.weight.original.grad)  # fmt: skip
    model.eval(), eager.eval()
    x = torch.randn(8, 2)
    torch.testing.assert_close(compiled(x).distribution.variance, eager(x).distribution.variance)
