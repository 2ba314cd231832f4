"""layers.Discretize: bin masses match quadrature, sum to one, Figure 6 pipeline, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributions as td
from scipy import integrate

import bayesian_layers as bl
from bayesian_layers.layers.outputs.logistic import Logistic
from bayesian_layers.layers.outputs.mixtures import MixtureLogistic
from bayesian_layers.layers.reversible.discretize import Discretize, DiscretizedDistribution


def _mixture(dtype: torch.dtype = torch.float64) -> td.MixtureSameFamily:
    logits = torch.tensor([0.3, -1.0, 0.5], dtype=dtype)
    loc = torch.tensor([1.2, 4.0, 6.5], dtype=dtype)
    scale = torch.tensor([0.7, 1.5, 0.4], dtype=dtype)
    return td.MixtureSameFamily(td.Categorical(logits=logits), Logistic(loc, scale))


FAMILIES = {
    "logistic": lambda: Logistic(torch.tensor(3.3, dtype=torch.float64), torch.tensor(1.1)),
    "normal": lambda: td.Normal(torch.tensor(2.6, dtype=torch.float64), torch.tensor(1.7)),
    "laplace": lambda: td.Laplace(torch.tensor(4.1, dtype=torch.float64), torch.tensor(0.9)),
    "logistic_mixture": _mixture,
    "normal_mixture": lambda: td.MixtureSameFamily(
        td.Categorical(logits=torch.tensor([0.0, 1.0], dtype=torch.float64)),
        td.Normal(torch.tensor([1.0, 5.0], dtype=torch.float64), torch.tensor([0.5, 2.0])),
    ),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bin_masses_match_quadrature_including_open_edges(family):
    base = FAMILIES[family]()
    low, high = 0, 8
    rv = Discretize(low, high)(bl.RandomVariable(base))
    values = torch.arange(low, high + 1, dtype=torch.float64)
    got = rv.distribution.log_prob(values).exp().numpy()

    def pdf(x: float) -> float:
        return float(base.log_prob(torch.tensor(x, dtype=torch.float64)).exp())

    want = []
    for v in values.tolist():
        a = -np.inf if v == low else v - 0.5
        b = np.inf if v == high else v + 0.5
        want.append(integrate.quad(pdf, a, b, epsabs=1e-12, epsrel=1e-10)[0])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert abs(got.sum() - 1) < 1e-5


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bin_probs_sum_to_one_in_float32(family):
    base = FAMILIES[family]()
    base = base.expand(torch.Size([3]))
    d = DiscretizedDistribution(base, 0, 255, 256)
    p = d.bin_probs()
    assert p.shape == (3, 256)
    torch.testing.assert_close(p.sum(-1), torch.ones(3, dtype=p.dtype), atol=1e-5, rtol=0)


def test_default_bins_are_the_256_pixel_values():
    layer = Discretize()
    assert (layer.low, layer.high, layer.num_bins) == (0.0, 255.0, 256)
    d = layer(bl.RandomVariable(Logistic(torch.tensor([127.0]), torch.tensor([30.0])))).distribution
    torch.testing.assert_close(d.bin_centers, torch.arange(256.0))


def test_custom_bin_grid():
    d = DiscretizedDistribution(td.Normal(torch.tensor(0.0), 1.0), low=-1, high=1, num_bins=5)
    torch.testing.assert_close(d.bin_centers, torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    n = td.Normal(0.0, 1.0)
    want = n.cdf(torch.tensor(0.25)) - n.cdf(torch.tensor(-0.25))
    torch.testing.assert_close(d.log_prob(torch.tensor(0.0)).exp(), want)
    torch.testing.assert_close(d.log_prob(torch.tensor(-1.0)).exp(), n.cdf(torch.tensor(-0.75)))
    assert float(d.bin_probs().sum()) == pytest.approx(1.0, abs=1e-6)


def test_far_tail_log_prob_is_finite_and_accurate():
    """Bins 40 scales from the mode: log-space differences keep the mass (no -inf)."""
    logistic = Logistic(torch.tensor(0.0), torch.tensor(1.0))
    normal = td.Normal(torch.tensor(0.0), torch.tensor(1.0))
    for base in (logistic, normal):
        d = DiscretizedDistribution(base, -100, 100, 201)
        lp = d.log_prob(torch.tensor([-40.0, 40.0, 12.0]))
        assert torch.isfinite(lp).all()
    # logistic: mass of [39.5, 40.5] ~ exp(-39.5) - exp(-40.5)
    want = math.log(math.exp(-39.5) - math.exp(-40.5))
    got = DiscretizedDistribution(logistic, -100, 100, 201).log_prob(torch.tensor(40.0))
    assert float(got) == pytest.approx(want, rel=1e-4)
    # normal: log(Φ(-11.5) - Φ(-12.5)) in float64 via scipy
    from scipy.stats import norm

    want_n = math.log(norm.cdf(-11.5) - norm.cdf(-12.5))
    got_n = DiscretizedDistribution(normal, -100, 100, 201).log_prob(torch.tensor(12.0))
    assert float(got_n) == pytest.approx(want_n, rel=1e-4)


def test_gradients_flow_to_the_parameters():
    loc = torch.tensor([3.0, 7.0], requires_grad=True)
    scale = torch.tensor([1.0, 2.0], requires_grad=True)
    rv = Discretize(0, 10)(bl.RandomVariable(Logistic(loc, scale)))
    rv.distribution.log_prob(torch.tensor([0.0, 10.0])).sum().backward()
    assert loc.grad is not None and torch.isfinite(loc.grad).all() and (loc.grad != 0).all()
    assert scale.grad is not None and torch.isfinite(scale.grad).all()


def test_figure6_after_mixture_logistic():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), MixtureLogistic(1, num_components=5), Discretize(low=0, high=16)
    )
    x = torch.randn(6, 64, 8)
    features = torch.randint(0, 17, (6, 64, 1)).float()
    rv = model(x)
    assert isinstance(rv, bl.RandomVariable)
    lp = rv.distribution.log_prob(features)
    assert lp.shape == (6, 64)
    loss = -lp.sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # enumerating the 17 values of every pixel sums to one
    grid = torch.arange(17.0).reshape(17, 1, 1, 1).expand(17, 6, 64, 1)
    with torch.no_grad():
        total = rv.distribution.log_prob(grid).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(6, 64), atol=1e-5, rtol=0)
    # the value and samples are on the grid
    for v in (rv.value, rv.distribution.sample(), rv.distribution.sample((3,))):
        assert ((v >= 0) & (v <= 16) & (v == v.round())).all()


def test_sample_is_rounded_and_clamped_continuous_sample_with_bin_frequencies():
    torch.manual_seed(1)
    base = Logistic(torch.tensor(1.0), torch.tensor(1.5))
    d = Discretize(0, 4)(bl.RandomVariable(base)).distribution
    draws = d.sample((200_000,))
    freq = torch.stack([(draws == v).float().mean() for v in range(5)])
    torch.testing.assert_close(freq, d.bin_probs(), atol=5e-3, rtol=0)
    # the same draws from the base, rounded and clamped
    torch.manual_seed(2)
    cont = base.sample((10,))
    torch.manual_seed(2)
    torch.testing.assert_close(d.sample((10,)), cont.round().clamp(0, 4))


def test_rv_value_is_the_snapped_input_value():
    base = td.Normal(torch.zeros(5), 3.0)
    value = torch.tensor([-7.2, -0.4, 0.6, 2.5001, 99.0])
    out = Discretize(-2, 3)(bl.RandomVariable(base, value=value))
    torch.testing.assert_close(out.value, torch.tensor([-2.0, 0.0, 1.0, 3.0, 3.0]))


def test_moments_enumerate_bins():
    d = DiscretizedDistribution(td.Normal(torch.tensor(5.0), 0.01), 0, 10, 11)
    assert float(d.mean) == pytest.approx(5.0, abs=1e-4)
    assert float(d.mode) == 5.0
    assert float(d.variance) == pytest.approx(0.0, abs=1e-4)
    assert float(d.entropy()) == pytest.approx(0.0, abs=1e-3)


def test_rejects_non_random_variable_input():
    with pytest.raises(TypeError, match="expected a RandomVariable"):
        Discretize()(torch.randn(3))
    with pytest.raises(TypeError, match="expected a RandomVariable"):
        Discretize()(td.Normal(0.0, 1.0))


@pytest.mark.parametrize(
    "dist, match",
    [
        (td.Poisson(torch.tensor(3.0)), "real support"),
        (td.Gamma(torch.tensor(2.0), torch.tensor(1.0)), "real support"),
        (td.MultivariateNormal(torch.zeros(2), torch.eye(2)), "scalar-event"),
        (td.StudentT(torch.tensor(3.0)), "has none"),
    ],
)
def test_unsupported_families_raise_type_error(dist, match):
    with pytest.raises(TypeError, match=match):
        Discretize(0, 10)(bl.RandomVariable(dist))


def test_non_integer_values_raise_when_validating():
    rv = Discretize(0, 16, validate_args=True)(bl.RandomVariable(td.Normal(torch.zeros(3), 4.0)))
    with pytest.raises(ValueError, match=r"the integers 0\.\.16, got 1\.5"):
        rv.distribution.log_prob(torch.tensor([1.0, 1.5, 2.0]))
    with pytest.raises(ValueError, match="got 17"):
        rv.distribution.log_prob(torch.tensor([1.0, 17.0, 2.0]))
    with pytest.raises(TypeError, match="Tensor"):
        rv.distribution.log_prob([1.0, 2.0, 3.0])
    # through an Independent wrapper too
    indep = bl.RandomVariable(td.Independent(td.Normal(torch.zeros(2, 3), 1.0), 1))
    out = Discretize(0, 16, validate_args=True)(indep)
    assert out.distribution.log_prob(torch.ones(2, 3)).shape == (2,)
    with pytest.raises(ValueError, match="got 0.25"):
        out.distribution.log_prob(torch.full((2, 3), 0.25))
    # without validation values are snapped to the nearest bin
    loose = Discretize(0, 16, validate_args=False)(
        bl.RandomVariable(td.Normal(torch.zeros(3), 4.0))
    )
    torch.testing.assert_close(
        loose.distribution.log_prob(torch.tensor([1.2, 1.2, 1.2])),
        loose.distribution.log_prob(torch.tensor([1.0, 1.0, 1.0])),
    )
    # integer tensors are accepted
    assert loose.distribution.log_prob(torch.tensor([1, 2, 3])).shape == (3,)


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match="low"):
        Discretize(5, 5)
    with pytest.raises(ValueError, match="num_bins"):
        Discretize(0, 1, num_bins=1)
    with pytest.raises(ValueError, match="pass `num_bins`"):
        Discretize(-1.0, 0.5)
    with pytest.raises(TypeError, match="finite number"):
        Discretize(0, float("inf"))
    assert Discretize(-1.0, 1.0, num_bins=256).num_bins == 256


def test_no_rsample():
    d = Discretize(0, 4)(bl.RandomVariable(td.Normal(torch.zeros(2), 1.0))).distribution
    with pytest.raises(NotImplementedError, match="rsample"):
        d.rsample()


def _pixels_model(units, name=None):
    torch.manual_seed(0)
    head = MixtureLogistic(units, num_components=3)
    return torch.nn.Sequential(torch.nn.Linear(4, 9), head, Discretize(0, 16, name=name))


@pytest.mark.parametrize("units", [1, None], ids=["column", "flat"])
def test_a_target_that_would_broadcast_against_the_batch_is_refused(units):
    rv = _pixels_model(units)(torch.randn(5, 4))
    y = rv.distribution.sample()  # (5, 1) or (5,)
    wrong = y[:, 0] if units else y[:, None]
    shapes = rf"{tuple(y.shape)}.*got {tuple(wrong.shape)}".replace("(", r"\(").replace(")", r"\)")
    for log_prob in (rv.log_prob, rv.distribution.log_prob):
        with pytest.raises(ValueError, match=shapes):
            log_prob(wrong)
    assert rv.log_prob(y).shape == (5,)


def test_an_empty_batch_gives_an_empty_result():
    rv = _pixels_model(1)(torch.randn(0, 4))
    assert rv.shape == (0, 1) and rv.log_prob(torch.zeros(0, 1)).shape == (0,)
    assert rv.sample((2,)).shape == (2, 0, 1)


def test_a_named_discretized_output_is_conditioned_recorded_and_scored():
    model = _pixels_model(1, name="pixels")
    x = torch.randn(3, 4)
    given = torch.tensor([[0.0], [7.0], [16.0]])
    with bl.condition(pixels=given):
        assert torch.equal(model(x).value, given)
    with bl.tape() as tape:
        out = model(x)
    assert list(tape) == ["pixels"] and tape["pixels"] is out
    log_joint = bl.make_log_joint_fn(lambda inputs: model(inputs))(x, pixels=given)
    torch.testing.assert_close(log_joint, model(x).log_prob(given).sum())
    # unnamed: the input's name is kept, and the variable is not traced a second time
    head = torch.nn.Sequential(torch.nn.Linear(4, 9), MixtureLogistic(1, 3, name="z"))
    with bl.tape() as tape:
        out = Discretize(0, 16)(head(x))
    assert list(tape) == ["z"] and out.name == "z" and tape["z"] is not out


def test_name_and_validate_args_are_checked():
    with pytest.raises(TypeError, match=r"Discretize expected `name` to be a str or None, got 3"):
        Discretize(name=3)
    with pytest.raises(TypeError, match=r"Discretize expected `validate_args` .*got 'no'"):
        Discretize(validate_args="no")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal_bin_log_mass_keeps_its_precision_on_narrow_intervals(dtype: torch.dtype) -> None:
    """``log(Φ(b) - Φ(a))`` of the normal bins against a 50-digit reference, from 2⁻²⁰-wide
    bins (the narrow bins of a wide normal: a difference of two rounded log-CDFs was off
    by up to 0.2 nats in float32) to wide ones, in both tails; gradients by gradcheck."""
    mpmath = pytest.importorskip("mpmath")
    from bayesian_layers.layers.reversible.discretize import _log_ndtr_diff

    mpmath.mp.dps = 50
    starts = [0.0, 1.0, -3.0, 0.5, 8.0, -30.0]
    widths = [2.0**-20, 2.0**-10, 1e-3, 0.05, 0.2, 1.0, 3.0]
    a = torch.tensor([s for s in starts for _ in widths], dtype=dtype)
    b = a + torch.tensor(widths * len(starts), dtype=dtype)
    pairs = zip(a.tolist(), b.tolist(), strict=True)
    want = [float(mpmath.log(mpmath.ncdf(q) - mpmath.ncdf(p))) for p, q in pairs]
    tol = {torch.float32: (2e-6, 2e-5), torch.float64: (1e-13, 1e-12)}[dtype]
    got = _log_ndtr_diff(a, b).double()
    torch.testing.assert_close(
        got, torch.tensor(want, dtype=torch.float64), rtol=tol[0], atol=tol[1]
    )
    if dtype == torch.float64:
        lo = torch.tensor([0.0, 1.0, -3.0, 8.0, -30.0], dtype=dtype, requires_grad=True)
        for w in (1e-3, 0.5):
            hi = (lo + w).detach().requires_grad_()
            assert torch.autograd.gradcheck(_log_ndtr_diff, (lo, hi))
