"""PoissonProcess: closed-form densities, exact integrals, thinning statistics, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from stats_util import ALPHA, z_bonferroni
from torch import nn

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers.layers.point_process import PoissonProcessDistribution

F64 = torch.float64


def constant(value: float):
    return lambda x: torch.full(x.shape[:-1], value, dtype=x.dtype)


def exp_rate(a: float, b: float):
    """λ(x) = a exp(b x₀); on [0, T] its integral is a (e^{bT} - 1) / b."""
    return lambda x: a * torch.exp(b * x[..., 0])


BOXES = [[(0.0, 3.0)], [(-1.0, 1.0), (0.0, 0.5)], [(0.0, 1.0), (0.0, 2.0), (1.0, 1.5)]]


@pytest.mark.parametrize("domain", BOXES, ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("n", [0, 1, 7])
def test_constant_rate_log_prob_is_closed_form(domain, n):
    rate, volume = 2.5, math.prod(hi - lo for lo, hi in domain)
    process = layers.PoissonProcess(constant(rate), domain)
    low = torch.tensor([lo for lo, _ in domain], dtype=F64)
    high = torch.tensor([hi for _, hi in domain], dtype=F64)
    x = low + (high - low) * torch.rand(n, len(domain), dtype=F64)
    rv = process(x)
    assert torch.equal(rv.value, x)
    expected = n * math.log(rate) - rate * volume
    assert float(rv.log_prob(x)) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_known_rate_matches_exact_integral():
    """λ = 3 e^{x/2} on [0, 2] (∫ = 6(e - 1)) and λ = 1 + x y² on [0,1]×[0,2] (∫ = 10/3)."""
    x = torch.tensor([[0.1], [1.5], [1.9]], dtype=F64)
    process = layers.PoissonProcess(exp_rate(3.0, 0.5), [(0.0, 2.0)], num_points=16)
    exact = torch.log(3.0 * torch.exp(0.5 * x[:, 0])).sum() - 6.0 * (math.e - 1.0)
    assert float(process(x).log_prob(x)) == pytest.approx(float(exact), rel=1e-12)

    def poly(p):
        return 1.0 + p[..., 0] * p[..., 1] ** 2

    # ∫₀¹∫₀² (1 + x y²) dy dx = 2 + (1/2)(8/3) = 10/3; Gauss-Legendre with 2 nodes is exact
    process = layers.PoissonProcess(poly, [(0.0, 1.0), (0.0, 2.0)], num_points=2)
    pts = torch.tensor([[0.5, 1.0], [0.2, 1.7]], dtype=F64)
    exact = torch.log(poly(pts)).sum() - 10.0 / 3.0
    assert float(process(pts).log_prob(pts)) == pytest.approx(float(exact), rel=1e-12)


def test_monte_carlo_integral_is_unbiased():
    """R = 200 estimates of ∫λ with n = 256 nodes each; their mean is within
    z(1 - α/2) · sd / sqrt(R) of the exact integral (α = 1e-3, one check)."""
    torch.manual_seed(4)
    process = PoissonProcessDistribution(
        exp_rate(3.0, 0.5), [(0.0, 2.0)], integration="monte_carlo", num_points=256, dtype=F64
    )
    estimates = torch.stack([process.integral() for _ in range(200)])
    exact = 6.0 * (math.e - 1.0)
    half_width = z_bonferroni(1) * float(estimates.std()) / math.sqrt(200)
    assert abs(float(estimates.mean()) - exact) < half_width
    # its spread matches the stated standard error |A| sd(λ(U)) / sqrt(n)
    u = torch.rand(200_000, dtype=F64) * 2
    stated = 2.0 * float((3.0 * torch.exp(0.5 * u)).std()) / math.sqrt(256)
    assert float(estimates.std()) == pytest.approx(stated, rel=0.25)


@pytest.mark.parametrize("upper_bound", [None, 3.0 * math.e + 0.1], ids=["estimated", "given"])
def test_thinning_mean_count_and_spatial_density(upper_bound):
    """S = 400 samples of λ = 3 e^{x/2} on [0, 2] (Λ = 6(e-1) ≈ 10.3).

    Mean count: within z · sqrt(Λ / S) of Λ (Poisson variance); the pooled points
    follow the density λ/Λ: Kolmogorov-Smirnov against its exact CDF
    (e^{x/2} - 1)/(e - 1). Two checks at family-wise α = 1e-3 (Bonferroni)."""
    torch.manual_seed(5)
    process = layers.PoissonProcess(exp_rate(3.0, 0.5), [(0.0, 2.0)], upper_bound=upper_bound)
    dist = process.process(dtype=F64)
    samples = dist.sample((400,))
    counts = torch.tensor([len(s) for s in samples], dtype=F64)
    big_lambda = 6.0 * (math.e - 1.0)
    assert abs(float(counts.mean()) - big_lambda) < z_bonferroni(2) * math.sqrt(big_lambda / 400)
    pooled = torch.cat(samples)[:, 0].numpy()
    ks = stats.kstest(pooled, lambda t: math.e ** (t / 2) / (math.e - 1) - 1 / (math.e - 1))
    assert ks.pvalue > ALPHA / 2


def test_thinning_in_two_dimensions_matches_the_density_mean():
    """λ = 4(1 + x y) on [0,1]²: Λ = 4 · 5/4 = 5; E[x] under λ/Λ = (1/2 + 1/3·1/2)/(5/4) = 8/15."""
    torch.manual_seed(6)
    dist = layers.PoissonProcess(
        lambda p: 4.0 * (1.0 + p[..., 0] * p[..., 1]), [(0.0, 1.0), (0.0, 1.0)]
    ).process(dtype=F64)
    samples = dist.sample((600,))
    counts = torch.tensor([len(s) for s in samples], dtype=F64)
    pooled = torch.cat(samples)
    z = z_bonferroni(2)
    assert abs(float(counts.mean()) - 5.0) < z * math.sqrt(5.0 / 600)
    x = pooled[:, 0]
    assert abs(float(x.mean()) - 8 / 15) < z * float(x.std()) / math.sqrt(len(x))


def test_variable_size_point_sets_list_and_padding():
    dist = layers.PoissonProcess(exp_rate(1.0, 0.3), [(0.0, 2.0)]).process(dtype=F64)
    sets = [torch.rand(n, 1, dtype=F64) * 2 for n in (3, 0, 5)]
    singles = torch.stack([dist.log_prob(s) for s in sets])
    torch.testing.assert_close(dist.log_prob(sets), singles)
    padded = torch.zeros(3, 5, 1, dtype=F64)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    for i, s in enumerate(sets):
        padded[i, : len(s)] = s
        mask[i, : len(s)] = True
    torch.testing.assert_close(dist.log_prob(padded, mask=mask), singles)
    points, mask = dist.sample_padded(4)
    assert points.shape[:2] == mask.shape and points.shape[0] == 4
    assert torch.isfinite(dist.log_prob(points, mask=mask)).all()


def test_gradients_reach_the_rate_parameters():
    theta = torch.tensor([0.3, -0.7], dtype=F64, requires_grad=True)
    x = torch.tensor([[0.2], [0.9], [1.4]], dtype=F64)

    def log_prob(t):
        rate = lambda p: nn.functional.softplus(t[0] + t[1] * p[..., 0])  # noqa: E731
        return layers.PoissonProcess(rate, [(0.0, 2.0)])(x).log_prob(x)

    assert torch.autograd.gradcheck(log_prob, (theta,))


def test_rate_is_called_once_per_density_and_its_module_registered():
    calls = []

    class Rate(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = layers.LinearReparameterization(1, 1)

        def forward(self, p):
            calls.append(p.shape[0])
            return nn.functional.softplus(self.net(p))  # (M, 1): the trailing 1 is accepted

    process = layers.PoissonProcess(Rate(), [(0.0, 1.0)], num_points=8)
    x = torch.rand(4, 1)
    process(x).log_prob(x)
    assert calls == [4 + 8]  # events and nodes in one call: one function sample
    assert len(bl.losses(process)) == 1  # the rate's KL is found through the process


def test_traced_and_conditioned_as_a_named_variable():
    process = layers.PoissonProcess(constant(2.0), [(0.0, 1.0)], name="events")
    observed = torch.tensor([[0.25], [0.75]])

    def program():
        return process()  # no points given: drawn by thinning unless conditioned

    with bl.tape() as t, bl.condition(events=observed):
        rv = program()
    assert torch.equal(rv.value, observed) and list(t) == ["events"]
    got = bl.make_log_joint_fn(program)(events=observed)
    assert float(got) == pytest.approx(2 * math.log(2.0) - 2.0, rel=1e-6)
    torch.manual_seed(0)
    assert process().value.shape[-1] == 1


def test_bad_input_raises_clear_errors():
    process = layers.PoissonProcess(constant(1.0), [(0.0, 1.0)])
    with pytest.raises(ValueError, match="outside the domain"):
        process(torch.tensor([[0.5], [1.5]]))
    with pytest.raises(ValueError, match="shape \\[N, 1\\]"):
        process(torch.rand(3, 2))
    with pytest.raises(TypeError, match="floating-point"):
        process(torch.zeros(2, 1, dtype=torch.long))
    negative = layers.PoissonProcess(lambda p: p[..., 0] - 0.5, [(0.0, 1.0)])
    with pytest.raises(ValueError, match="non-negative.*softplus"):
        negative(torch.rand(2, 1)).log_prob(torch.rand(2, 1))
    wrong = layers.PoissonProcess(lambda p: torch.ones(p.shape[0], 3), [(0.0, 1.0)])
    with pytest.raises(ValueError, match="expected \\(.*\\)"):
        wrong(torch.rand(2, 1)).log_prob(torch.rand(2, 1))
    with pytest.raises(ValueError, match="1 to 3 dimensions"):
        layers.PoissonProcess(constant(1.0), [(0.0, 1.0)] * 4)
    with pytest.raises(ValueError, match="low < high"):
        layers.PoissonProcess(constant(1.0), [(1.0, 0.0)])
    with pytest.raises(TypeError, match="\\(low, high\\) pairs"):
        layers.PoissonProcess(constant(1.0), 3.0)
    with pytest.raises(ValueError, match="integration"):
        layers.PoissonProcess(constant(1.0), [(0.0, 1.0)], integration="simpson")
    with pytest.raises(TypeError, match="module or callable"):
        layers.PoissonProcess(2.0, [(0.0, 1.0)])
    too_low = layers.PoissonProcess(constant(5.0), [(0.0, 1.0)], upper_bound=1.0)
    with pytest.raises(ValueError, match="larger upper_bound"):
        too_low()
    with pytest.raises(ValueError, match="outside the domain"):
        with bl.condition(events=torch.tensor([[2.0]])):
            layers.PoissonProcess(constant(1.0), [(0.0, 1.0)], name="events")()


@pytest.mark.parametrize("domain", BOXES[:2], ids=["1d", "2d"])
def test_tensors_are_made_on_the_distributions_device(domain):
    """With another default device (meta), every tensor the process makes for a CPU box
    must still land on the CPU: sampling, padding and scoring run unchanged."""
    dist = PoissonProcessDistribution(lambda x: 1.0 + x.sum(-1) ** 2, domain, dtype=F64)
    torch.manual_seed(0)
    with torch.device("meta"):
        points, mask = dist.sample_padded(3)
        log_prob = dist.log_prob(points, mask=mask)
    assert points.device == mask.device == log_prob.device == torch.device("cpu")
    assert torch.isfinite(log_prob).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rate_on_cuda_samples_and_scores_on_its_device():
    torch.manual_seed(0)
    rate = nn.Sequential(nn.Linear(1, 1), nn.Softplus()).cuda()
    process = layers.PoissonProcess(rate, [(0.0, 2.0)], name="events")
    drawn = process()  # thinning on the rate's device
    assert drawn.value.device.type == "cuda"
    log_prob = drawn.log_prob(drawn)
    assert log_prob.device.type == "cuda" and bool(torch.isfinite(log_prob))
    points, mask = process.process(device="cuda").sample_padded(2)
    assert points.device.type == mask.device.type == "cuda"


def test_points_are_checked_once_per_call(monkeypatch):
    calls = []
    check = PoissonProcessDistribution.check_points

    def counting(self, x, what="events"):
        calls.append(x.shape)
        return check(self, x, what)

    monkeypatch.setattr(PoissonProcessDistribution, "check_points", counting)
    layers.PoissonProcess(constant(1.0), [(0.0, 1.0)])(torch.rand(3, 1))
    assert len(calls) == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_event_times_are_a_value_error_naming_layer_and_argument(bad):
    """A NaN time compares false with both ends of the box: it must not be scored as an
    event (it was: log λ(NaN) entered the sum)."""
    process = layers.PoissonProcess(constant(1.0), [(0.0, 1.0)], name="events")
    x = torch.tensor([[0.25], [bad], [0.75]])
    with pytest.raises(ValueError, match=r"PoissonProcess expected .*finite.*`events`"):
        process(x)
    dist = PoissonProcessDistribution(constant(1.0), [(0.0, 1.0)])
    with pytest.raises(ValueError, match=r"PoissonProcessDistribution expected .*finite"):
        dist.log_prob(x)
    with pytest.raises(ValueError, match=r"finite"):
        dist.log_prob([torch.tensor([[0.5]]), x])
    padded, mask = x.unsqueeze(0), torch.tensor([[True, False, True]])
    with pytest.raises(ValueError, match=r"finite"):  # masked-out rows must still be points
        dist.log_prob(padded, mask=mask)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_points_in_another_dtype_than_the_rate_module_are_a_type_error(dtype):
    rate = nn.Sequential(nn.Linear(1, 1), nn.Softplus())
    process = layers.PoissonProcess(rate, [(0.0, 1.0)])
    with pytest.raises(
        TypeError, match=rf"PoissonProcess expected `events` of dtype torch.float32, got {dtype}"
    ):
        process(torch.rand(3, 1, dtype=dtype))
    assert torch.isfinite(process(torch.rand(3, 1)).log_prob(torch.rand(3, 1)))


@pytest.mark.parametrize(
    ("option", "value"),
    [("bound_factor", math.inf), ("bound_factor", math.nan), ("bound_factor", 0.5),
     ("upper_bound", math.inf), ("upper_bound", math.nan), ("num_points", 0),
     ("num_points", True)],
)  # fmt: skip
def test_bad_options_are_value_errors_naming_layer_and_option(option, value):
    with pytest.raises(ValueError, match=rf"PoissonProcess.*`{option}`"):
        layers.PoissonProcess(constant(1.0), [(0.0, 1.0)], **{option: value})


def test_padding_where_the_rate_is_zero_leaves_the_gradient_finite():
    """Padding rows sit at the box's lower corner (``sample_padded``'s too); a rate that is
    0 there (``λ(t) = a t`` on ``[0, 1]``) gave ``log 0`` at the padding, and although the
    mask dropped its value, the gradient was ``0 · inf = NaN``."""
    a = torch.tensor(2.0, dtype=F64, requires_grad=True)
    dist = layers.PoissonProcess(lambda x: a * x[..., 0], [(0.0, 1.0)]).process(dtype=F64)
    padded = torch.tensor([[[0.5], [0.7]], [[0.3], [0.0]]], dtype=F64)
    mask = torch.tensor([[True, True], [True, False]])
    log_prob = dist.log_prob(padded, mask=mask)
    (grad,) = torch.autograd.grad(log_prob.sum(), a)
    sets = [padded[0], padded[1, :1]]
    (want,) = torch.autograd.grad(dist.log_prob(sets).sum(), a)
    torch.testing.assert_close(log_prob, dist.log_prob(sets))
    torch.testing.assert_close(grad, want)  # 3 events / a - 2 ∫ t dt = 1.5 - 1
