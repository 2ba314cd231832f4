"""Reversible layers: round trips, exact log-determinants, autoregressive masks, densities."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from torch import Tensor, nn
from torch.autograd.functional import jacobian
from torch.distributions import Normal, TransformedDistribution

import bayesian_layers as bl
from bayesian_layers.layers.reversible.base import (
    Reverse,
    ReversibleLayer,
    reverse_sequential,
    sequential_log_det_jacobian,
)
from bayesian_layers.layers.reversible.flows import (
    MADE,
    ActNorm,
    InvertibleConv1x1,
    MaskedAutoregressiveFlow,
    Permute,
    RealNVP,
)

ORDERS = ["left-to-right", "right-to-left", "random"]


def _mlp(d_in: int, d_out: int, hidden: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out))


def _realnvp_made(d: int, seed: int, flip: bool = False) -> nn.Module:
    return RealNVP(MADE(hidden_dims=[8, 8], order=ORDERS[seed % 3], seed=seed), flip=flip)


def _realnvp_mlp(d: int, seed: int, flip: bool = True) -> nn.Module:
    k = d // 2
    n_cond, n_trans = (d - k, k) if flip else (k, d - k)
    return RealNVP(_mlp(n_cond, 2 * n_trans), flip=flip)


def _maf(d: int, seed: int) -> nn.Module:
    return MaskedAutoregressiveFlow(MADE(hidden_dims=[8, 8], order=ORDERS[seed % 3], seed=seed))


def _permute(d: int, seed: int) -> nn.Module:
    return Permute(d, seed=seed)


def _actnorm(d: int, seed: int) -> nn.Module:
    return ActNorm()


def _reverse_seq(d: int, seed: int) -> nn.Module:
    return Reverse(nn.Sequential(_realnvp_mlp(d, seed), _permute(d, seed), _maf(d, seed)))


# Vector layers (..., D): factory(d, seed); MADE needs equal halves, so even d for coupling.
VECTOR_LAYERS: dict[str, Callable[[int, int], nn.Module]] = {
    "realnvp_made": _realnvp_made,
    "realnvp_made_flip": lambda d, s: _realnvp_made(d, s, flip=True),
    "realnvp_mlp": _realnvp_mlp,
    "realnvp_mlp_noflip": lambda d, s: _realnvp_mlp(d, s, flip=False),
    "maf": _maf,
    "permute": _permute,
    "actnorm": _actnorm,
    "reverse_realnvp": lambda d, s: Reverse(_realnvp_mlp(d, s)),
    "reverse_maf": lambda d, s: Reverse(_maf(d, s)),
    "reverse_sequential": _reverse_seq,
}


def _image_layer(name: str, c: int, seed: int) -> nn.Module:
    if name == "conv1x1":
        return InvertibleConv1x1(c, seed=seed)
    if name == "actnorm":
        return ActNorm()
    return Reverse(InvertibleConv1x1(c, seed=seed))


IMAGE_LAYERS = ["conv1x1", "actnorm", "reverse_conv1x1"]


def _prime(layer: nn.Module, x: Tensor) -> nn.Module:
    """Run one forward pass (lazy sizes, ActNorm's data-dependent init), perturb ActNorm."""
    with torch.no_grad():
        layer(x)
        for m in layer.modules():
            if isinstance(m, ActNorm):
                assert m.log_scale is not None
                m.log_scale.add_(0.3)
    return layer


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", sorted(VECTOR_LAYERS))
@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 5), half=st.integers(1, 3), seed=st.integers(0, 2**16), odd=st.booleans()
)
def test_vector_round_trip(name: str, batch: int, half: int, seed: int, odd: bool) -> None:
    d = 2 * half + (1 if odd and "made" not in name else 0)
    torch.manual_seed(seed)
    x = torch.randn(batch, d) * 2
    layer = _prime(VECTOR_LAYERS[name](d, seed), x)
    y = layer(x)
    assert isinstance(y, Tensor) and y.shape == x.shape and y.dtype == torch.float32
    torch.testing.assert_close(layer.reverse(y), x, atol=1e-5, rtol=1e-5)
    x2 = torch.randn(3, batch, d)  # extra leading sample dims
    torch.testing.assert_close(layer.reverse(layer(x2)), x2, atol=1e-5, rtol=1e-5)
    assert layer.log_det_jacobian(x2).shape == (3, batch)


@pytest.mark.parametrize("name", IMAGE_LAYERS)
@settings(max_examples=5, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 3),
    c=st.integers(1, 4),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_image_round_trip(name: str, batch: int, c: int, h: int, w: int, seed: int) -> None:
    torch.manual_seed(seed)
    x = torch.randn(batch, c, h, w)
    layer = _prime(_image_layer(name, c, seed), x)
    y = layer(x)
    assert y.shape == x.shape
    torch.testing.assert_close(layer.reverse(y), x, atol=1e-5, rtol=1e-5)
    assert layer.log_det_jacobian(x).shape == (batch,)


# ------------------------------------------------------------------- exact log-determinants
def _autograd_logdet(layer: nn.Module, x: Tensor) -> Tensor:
    """Per-example ``log|det df/dx|`` from the autograd Jacobian."""
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        jac = jacobian(lambda z: layer(z), xb)
        n = xb.numel()
        out.append(torch.linalg.slogdet(jac.reshape(n, n))[1])
    return torch.stack(out)


@pytest.mark.parametrize("name", sorted(VECTOR_LAYERS))
@pytest.mark.parametrize("d", [2, 5])
def test_vector_log_det_matches_autograd(name: str, d: int) -> None:
    if "made" in name and d % 2:
        d = 4
    torch.manual_seed(d)
    x = torch.randn(3, d, dtype=torch.float64)
    layer = _prime(VECTOR_LAYERS[name](d, 1).double(), x)
    torch.testing.assert_close(layer.log_det_jacobian(x), _autograd_logdet(layer, x))


@pytest.mark.parametrize("name", IMAGE_LAYERS)
def test_image_log_det_matches_autograd(name: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    layer = _prime(_image_layer(name, 3, 0).double(), x)
    torch.testing.assert_close(layer.log_det_jacobian(x), _autograd_logdet(layer, x))


# ---------------------------------------------------------------------------------- MADE
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("units", [1, 2, 3])
def test_made_jacobian_strictly_triangular_in_order(order: str, units: int) -> None:
    d = 5
    made = MADE(units=units, hidden_dims=[16, 16], order=order, activation=nn.Tanh, seed=3)
    made = made.double()
    x = torch.randn(d, dtype=torch.float64)
    out = made(x)
    assert out.shape == (d, units)
    deg = made.input_order(d)
    allowed = deg[None, :] < deg[:, None]  # allowed[i, j]: output i may depend on input j
    jac = jacobian(made, x)  # (d, units, d)
    for u in range(units):
        ju = jac[:, u, :]
        assert torch.all(ju[~allowed] == 0)
        assert torch.all(ju[allowed] != 0)  # tanh: every allowed connection is live


@pytest.mark.parametrize("order", ORDERS)
def test_made_order_and_masks(order: str) -> None:
    made = MADE(hidden_dims=[4, 4], order=order, in_features=6, seed=1)
    deg = made.input_order(6)
    assert sorted(deg.tolist()) == list(range(1, 7))
    if order == "left-to-right":
        assert deg.tolist() == [1, 2, 3, 4, 5, 6]
    if order == "right-to-left":
        assert deg.tolist() == [6, 5, 4, 3, 2, 1]
    masks = [b for n, b in made.named_buffers() if n.startswith("mask_")]
    assert len(masks) == 3
    assert "mask_0" in made.state_dict()


def test_made_lazy_size_and_errors() -> None:
    made = MADE(hidden_dims=[512, 512])  # Figure 8, as written
    assert made.in_features is None and made.has_uninitialized_params()
    assert made(torch.randn(2, 3, 6)).shape == (2, 3, 6, 2)
    with pytest.raises(ValueError, match="MADE"):
        made(torch.randn(2, 5))
    with pytest.raises(ValueError, match="order"):
        MADE(order="up")
    with pytest.raises(ValueError, match="units"):
        MADE(units=0)
    with pytest.raises(TypeError, match="MADE"):
        made(torch.ones(2, 6, dtype=torch.long))


def test_maf_jacobian_is_triangular_with_exp_log_scale_diagonal() -> None:
    torch.manual_seed(0)
    layer = MaskedAutoregressiveFlow(MADE(hidden_dims=[8], order="random", seed=2)).double()
    x = torch.randn(4, dtype=torch.float64)
    jac = jacobian(layer, x)
    deg = layer.network.input_order(4)
    upper = deg[None, :] > deg[:, None]
    assert torch.all(jac[upper] == 0)
    torch.testing.assert_close(torch.log(torch.diagonal(jac)).sum(), layer.log_det_jacobian(x))


# ---------------------------------------------------------------------- random variables
def _density_on_grid(rv_out: bl.RandomVariable, grid: Tensor) -> Tensor:
    with torch.no_grad():
        return rv_out.distribution.log_prob(grid).exp()


def test_transformed_density_integrates_to_one_1d() -> None:
    torch.manual_seed(0)
    flow = nn.Sequential(
        ActNorm(),
        MaskedAutoregressiveFlow(MADE(hidden_dims=[4])),
        Reverse(ActNorm(1)),
    ).double()
    _prime(flow, torch.randn(50, 1, dtype=torch.float64) * 3 + 1)
    base = bl.RandomVariable(Normal(torch.zeros(1, 1, dtype=torch.float64), 1.0))
    out = flow(base)
    assert isinstance(out, bl.RandomVariable)

    def pdf(t: float) -> float:
        with torch.no_grad():
            return float(out.distribution.log_prob(torch.tensor([[t]], dtype=torch.float64)).exp())

    centre = float(flow(torch.zeros(1, 1, dtype=torch.float64)).detach())
    total, _ = integrate.quad(pdf, centre - 60, centre + 60, points=[centre], limit=500)
    assert abs(total - 1.0) < 1e-6


def _flow_2d() -> nn.Sequential:
    return nn.Sequential(
        RealNVP(_mlp(1, 2), flip=False),
        Permute([1, 0]),
        RealNVP(MADE(hidden_dims=[8, 8]), flip=True),
        MaskedAutoregressiveFlow(MADE(hidden_dims=[8, 8], order="right-to-left")),
        ActNorm(2),
    )


def test_transformed_density_integrates_to_one_2d() -> None:
    torch.manual_seed(1)
    flow = _flow_2d().double()
    with torch.no_grad():
        flow[-1].shift.copy_(torch.tensor([0.5, -0.3]))
        flow[-1].log_scale.copy_(torch.tensor([0.2, -0.1]))
        flow[-1].initialized.fill_(True)
    base = bl.RandomVariable(Normal(torch.zeros(1, 2, dtype=torch.float64), 1.0))
    out = flow(base)
    t = torch.linspace(-14.0, 14.0, 701, dtype=torch.float64)
    g = torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1).reshape(-1, 2)
    dens = _density_on_grid(out, g).reshape(701, 701).numpy()
    total = integrate.trapezoid(integrate.trapezoid(dens, t.numpy(), axis=1), t.numpy())
    # The density is below 1e-40 on the box's edge (no tail mass to speak of) and the
    # trapezoid rule converges faster than any power of the spacing for a smooth density
    # vanishing at both ends, so only float64 rounding is left: at most n * eps =
    # 701**2 * 2.2e-16 ≈ 1.1e-10 for the 491,401 summed terms. 1e-9 allows ten times that.
    assert abs(total - 1.0) < 1e-9


def test_transformed_density_equals_change_of_variables_by_hand() -> None:
    torch.manual_seed(2)
    net = _mlp(2, 4)
    layer = RealNVP(net, log_scale_bound=2.0).double()
    net.double()
    base = bl.RandomVariable(Normal(torch.zeros(6, 4, dtype=torch.float64), 1.0))
    out = layer(base)
    y = torch.randn(6, 4, dtype=torch.float64) * 2
    # by hand: x1 = y1; x2 = (y2 - t(y1)) * exp(-s(y1)); log p = log N(x) - sum s
    raw = net(y[:, :2])
    shift, s = raw[:, :2], 2.0 * torch.tanh(raw[:, 2:] / 2.0)
    x = torch.cat([y[:, :2], (y[:, 2:] - shift) * torch.exp(-s)], dim=-1)
    expected = Normal(0.0, 1.0).log_prob(x).sum(-1) - s.sum(-1)
    torch.testing.assert_close(out.distribution.log_prob(y), expected)
    torch.testing.assert_close(out.log_prob(y), expected)

    # and a whole sequence, with the Jacobian from autograd
    flow = _flow_2d().double()
    _prime(flow, torch.randn(20, 2, dtype=torch.float64))
    out2 = flow(bl.RandomVariable(Normal(torch.zeros(5, 2, dtype=torch.float64), 1.0)))
    y2 = torch.randn(5, 2, dtype=torch.float64)
    x2 = reverse_sequential(flow, y2)
    expected2 = Normal(0.0, 1.0).log_prob(x2).sum(-1) - _autograd_logdet(flow, x2)
    torch.testing.assert_close(out2.distribution.log_prob(y2), expected2)
    torch.testing.assert_close(sequential_log_det_jacobian(flow, x2), _autograd_logdet(flow, x2))


def test_figure8_sequential_on_random_variables_and_gradients() -> None:
    torch.manual_seed(0)
    batch_size, dim = 16, 6
    features = torch.randn(batch_size, dim) * 0.5 + 1.0
    model = nn.Sequential(
        RealNVP(MADE(hidden_dims=[16, 16])),
        RealNVP(MADE(hidden_dims=[16, 16], order="right-to-left"), flip=True),
        RealNVP(MADE(hidden_dims=[16, 16])),
    )
    base = bl.Normal(torch.zeros([batch_size, dim]), 1.0)
    outputs = model(base)
    assert isinstance(outputs, bl.RandomVariable)
    assert isinstance(outputs.distribution, TransformedDistribution)
    assert outputs.distribution.transforms[0].bijective
    assert outputs.distribution.event_shape == (dim,)
    assert outputs.shape == (batch_size, dim)
    torch.testing.assert_close(outputs.value, model(base.value))
    log_prob = outputs.distribution.log_prob(features)
    assert log_prob.shape == (batch_size,)
    loss = -torch.sum(log_prob)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if "mask" not in name and name.endswith("weight"):
            assert p.grad.abs().sum() > 0, name
    # log_prob agrees with reverse + log-det
    with torch.no_grad():
        x = reverse_sequential(model, features)
        expected = Normal(0.0, 1.0).log_prob(x).sum(-1) - sequential_log_det_jacobian(model, x)
    torch.testing.assert_close(log_prob.detach(), expected, atol=1e-5, rtol=1e-5)
    # sample and rsample
    draws = outputs.distribution.rsample((3,))
    assert draws.shape == (3, batch_size, dim)
    model.zero_grad()
    draws.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert outputs.distribution.sample().shape == (batch_size, dim)
    assert outputs.sample((2,)).shape == (2, batch_size, dim)


def test_random_variable_with_sample_shape_and_image_event() -> None:
    base = bl.RandomVariable(Normal(torch.zeros(2, 3, 4, 4), 1.0), sample_shape=(5,))
    layer = InvertibleConv1x1(3)
    out = layer(base)
    assert out.sample_shape == (5,) and out.shape == (5, 2, 3, 4, 4)
    assert out.distribution.event_shape == (3, 4, 4)
    lp = out.distribution.log_prob(out.value)
    assert lp.shape == (5, 2)
    expected = base.distribution.log_prob(base.value).sum((-3, -2, -1))
    torch.testing.assert_close(lp, expected - layer.log_det_jacobian(base.value))


# ------------------------------------------------------------------------------- Reverse
def test_reverse_swaps_directions_and_negates_log_det() -> None:
    torch.manual_seed(0)
    inner = _maf(3, 1).double()
    layer = Reverse(inner)
    y = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(y), inner.reverse(y))
    torch.testing.assert_close(layer.reverse(y), inner(y))
    torch.testing.assert_close(layer.log_det_jacobian(y), -inner.log_det_jacobian(inner.reverse(y)))
    twice = Reverse(Reverse(inner))
    torch.testing.assert_close(twice(y), inner(y))
    torch.testing.assert_close(twice.log_det_jacobian(y), inner.log_det_jacobian(y))
    out = layer(bl.RandomVariable(Normal(torch.zeros(4, 3, dtype=torch.float64), 1.0)))
    expected = Normal(0.0, 1.0).log_prob(inner(y)).sum(-1) + inner.log_det_jacobian(y)
    torch.testing.assert_close(out.log_prob(y), expected)


def test_nested_sequential_blocks_are_inverted_as_a_whole() -> None:
    """A flow of blocks (each an nn.Sequential) inverts like the flat flow: its forward,
    log-det and log_prob already recurse into the blocks, and so do reverse_sequential,
    Reverse and Reverse's random variable."""
    torch.manual_seed(0)
    blocks = [nn.Sequential(_maf(3, s), Permute([2, 0, 1])).double() for s in (1, 2)]
    nested, flat = nn.Sequential(*blocks), nn.Sequential(*blocks[0], *blocks[1])
    x = torch.randn(4, 3, dtype=torch.float64)
    y = nested(x)
    torch.testing.assert_close(reverse_sequential(nested, y), reverse_sequential(flat, y))
    torch.testing.assert_close(Reverse(nested)(y), x)
    base = bl.RandomVariable(Normal(torch.zeros(4, 3, dtype=torch.float64), 1.0))
    want = Reverse(flat)(base).distribution.log_prob(x)
    torch.testing.assert_close(Reverse(nested)(base).distribution.log_prob(x), want)


def test_reverse_of_nested_image_blocks_has_their_three_event_dims() -> None:
    """Reverse of a Sequential of image blocks reads the blocks' event dims (3), so its
    random variable's log_prob is the flat flow's ((B,), not a mis-broadcast error)."""
    torch.manual_seed(0)
    flat = nn.Sequential(ActNorm(3), InvertibleConv1x1(3), ActNorm(3), InvertibleConv1x1(3, seed=1))
    x = torch.randn(2, 3, 4, 4)
    flat(x)  # ActNorm's data-dependent initialisation
    nested = nn.Sequential(nn.Sequential(*flat[:2]), nn.Sequential(*flat[2:]))
    assert Reverse(nested).event_dim_for(x) == 3
    base = bl.RandomVariable(Normal(torch.zeros(2, 3, 4, 4), 1.0))
    want = Reverse(flat)(base).distribution.log_prob(x)
    torch.testing.assert_close(Reverse(nested)(base).distribution.log_prob(x), want)


def test_reverse_of_layer_without_reverse_raises_only_when_called() -> None:
    layer = Reverse(nn.Linear(3, 3))  # constructs fine (duck typing)
    assert isinstance(layer, ReversibleLayer)
    with pytest.raises(NotImplementedError, match="Linear"):
        layer(torch.randn(2, 3))
    with pytest.raises(NotImplementedError, match="Linear"):
        layer.log_det_jacobian(torch.randn(2, 3))
    with pytest.raises(NotImplementedError, match="Linear"):
        layer(bl.RandomVariable(Normal(torch.zeros(2, 3), 1.0)))
    with pytest.raises(NotImplementedError, match="ReLU"):
        reverse_sequential(nn.Sequential(Permute(3), nn.ReLU()), torch.randn(2, 3))


# ----------------------------------------------------------------- ActNorm, Permute, errors
@pytest.mark.parametrize("shape", [(64, 3), (16, 3, 4, 5)])
def test_actnorm_data_dependent_init(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = ActNorm()
    with pytest.raises(RuntimeError, match="ActNorm"):
        layer.reverse(torch.randn(*shape))
    x = torch.randn(*shape) * 4 - 2
    y = layer(x)
    cdim = 1
    dims = [i for i in range(len(shape)) if i != cdim]
    torch.testing.assert_close(y.mean(dims), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dims, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    assert bool(layer.initialized)
    state = layer.state_dict()
    assert {"shift", "log_scale", "initialized"} <= set(state)
    shift, log_scale = layer.shift.detach().clone(), layer.log_scale.detach().clone()
    layer(x * 10 + 3)  # later calls keep the parameters: no re-initialisation
    assert torch.equal(layer.shift, shift) and torch.equal(layer.log_scale, log_scale)
    fresh = ActNorm(3)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x), y)


def test_bad_inputs_name_the_layer() -> None:
    with pytest.raises(ValueError, match="Permute"):
        Permute([0, 0, 1])
    with pytest.raises(ValueError, match="Permute"):
        Permute(3)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="RealNVP"):
        RealNVP(_mlp(2, 3))(torch.randn(2, 4))
    with pytest.raises(ValueError, match="RealNVP"):
        RealNVP(MADE(hidden_dims=[4]))(torch.randn(2, 5))  # MADE needs equal halves
    with pytest.raises(ValueError, match="InvertibleConv1x1"):
        InvertibleConv1x1(3)(torch.randn(2, 4, 2, 2))
    with pytest.raises(ValueError, match="RealNVP"):
        RealNVP(_mlp(2, 4))(bl.RandomVariable(Normal(torch.tensor(0.0), 1.0)))


def test_tensor_in_tensor_out_and_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    flow = nn.Sequential(
        RealNVP(MADE(hidden_dims=[8], in_features=2)), Permute(4), ActNorm(4), Reverse(Permute(4))
    )
    x = torch.randn(8, 4)
    y = flow(x)
    assert type(y) is Tensor
    fresh = nn.Sequential(
        RealNVP(MADE(hidden_dims=[8], in_features=2)), Permute(4), ActNorm(4), Reverse(Permute(4))
    )
    fresh.load_state_dict(flow.state_dict())
    torch.testing.assert_close(fresh(x), y)
    torch.testing.assert_close(Reverse(flow)(y), x, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------- one network pass per log_prob
class _CountingMADE(MADE):
    calls = 0

    def forward(self, x: Tensor) -> Tensor:
        type(self).calls += 1
        return super().forward(x)


@pytest.mark.parametrize("kind", ["maf", "realnvp"])
def test_transformed_log_prob_takes_one_network_pass_and_no_sampling_pass(kind: str) -> None:
    torch.manual_seed(0)
    d, n_layers = 6, 3
    orders = ("left-to-right", "right-to-left")

    def build(i: int) -> nn.Module:
        if kind == "maf":
            return MaskedAutoregressiveFlow(_CountingMADE(hidden_dims=[16], order=orders[i % 2]))
        return RealNVP(_CountingMADE(hidden_dims=[16]), flip=bool(i % 2))

    model = nn.Sequential(*[build(i) for i in range(n_layers)]).double()
    x = torch.randn(5, d, dtype=torch.float64)
    model(x)  # build the lazily sized networks
    base = bl.Normal(torch.zeros(5, d, dtype=torch.float64), 1.0)
    _CountingMADE.calls = 0
    out = model(base)
    lp = out.distribution.log_prob(x)
    assert _CountingMADE.calls == n_layers  # one pass per layer: no sampling, no 2nd pass
    # The same density by the change of variables written out layer by layer.
    z, log_det = x, torch.zeros(5, dtype=torch.float64)
    for layer in reversed(list(model)):
        z = layer.reverse(z)
        log_det = log_det + layer.log_det_jacobian(z)
    expected = Normal(0.0, 1.0).log_prob(z).sum(-1) - log_det
    torch.testing.assert_close(lp, expected)
    # The value is computed only when read, and then equals the eager forward pass.
    torch.testing.assert_close(out.value, model(base.value))


def test_reverse_of_sequential_log_prob_takes_one_sweep() -> None:
    """``Reverse(Sequential(RealNVP, MAF))``: the density inverts ``Reverse`` by the
    sequence's forward sweep (1 RealNVP pass, ``d`` MAF passes) and reads each
    log-det from the outputs (one pass each): ``d + 3`` network passes in all."""
    torch.manual_seed(0)
    d = 6
    seq = nn.Sequential(
        RealNVP(_CountingMADE(hidden_dims=[16])),
        MaskedAutoregressiveFlow(_CountingMADE(hidden_dims=[16], order="right-to-left")),
    ).double()
    layer = Reverse(seq)
    y = torch.randn(5, d, dtype=torch.float64)
    seq(y)  # build the lazily sized networks
    base = bl.Normal(torch.zeros(5, d, dtype=torch.float64), 1.0)
    out = layer(base)
    _CountingMADE.calls = 0
    lp = out.distribution.log_prob(y)
    assert _CountingMADE.calls == d + 3
    # change of variables: Reverse(seq) maps x to y = seq^{-1}(x), so p(y) = N(seq(y)) |J_seq(y)|
    expected = Normal(0.0, 1.0).log_prob(seq(y)).sum(-1) + _autograd_logdet(seq, y)
    torch.testing.assert_close(lp, expected)
    # the helpers sweep once too: log-dets read from outputs, no second sequential pass
    _CountingMADE.calls = 0
    seq_ldj = sequential_log_det_jacobian(seq, y)
    assert _CountingMADE.calls == d + 3
    torch.testing.assert_close(seq_ldj, _autograd_logdet(seq, y))
    x = layer(y)
    _CountingMADE.calls = 0
    ldj = layer.log_det_jacobian(y)  # one reverse sweep: one pass per layer
    assert _CountingMADE.calls == 2
    torch.testing.assert_close(ldj, -_autograd_logdet(seq, x))


# ------------------------------------------- sizes read on the first call, bad arguments
def _lazy_flow() -> nn.Sequential:
    return nn.Sequential(
        ActNorm(),
        RealNVP(MADE(hidden_dims=[8])),
        MaskedAutoregressiveFlow(MADE(hidden_dims=[8], order="right-to-left")),
    )


def test_optimizer_built_before_the_first_call_trains_every_parameter() -> None:
    """The sizes are read on the first call, yet an optimizer built before it holds
    every parameter (torch's lazy parameters, materialised in place)."""
    torch.manual_seed(0)
    flow = _lazy_flow()
    params = list(flow.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    x = torch.randn(16, 4) * 2 + 1
    base = bl.Normal(torch.zeros(16, 4), 1.0)
    before: list[Tensor] = []
    for step in range(2):  # the first call sizes the layers and initialises ActNorm
        if step == 1:
            before = [p.detach().clone() for p in params]
        opt.zero_grad()
        (-flow(base).distribution.log_prob(x).mean()).backward()
        opt.step()
    assert {id(p) for p in flow.parameters()} == {id(p) for p in params}
    assert len(params) == 2 + 2 * 2 + 2 * 2  # ActNorm 2; each MADE 2 linears x (weight, bias)
    for p, b in zip(params, before, strict=True):
        assert not torch.equal(p.detach(), b)


def test_checkpoint_loads_into_a_freshly_built_twin() -> None:
    torch.manual_seed(0)
    flow = _lazy_flow()
    x = torch.randn(8, 4)
    y = flow(x)
    twin = _lazy_flow()
    twin.load_state_dict(flow.state_dict())  # strict: no unexpected keys
    torch.testing.assert_close(twin(x), y)
    assert twin[1].network.in_features == 2 and twin[0].num_features == 4
    assert bool(twin[0].initialized)  # no second data-dependent initialisation
    assert list(twin.state_dict()) == list(flow.state_dict())


def test_made_in_features_builds_now_and_input_dim_is_a_deprecated_alias() -> None:
    made = MADE(hidden_dims=[4], in_features=3)
    assert made.in_features == 3 and len(list(made.parameters())) == 4
    with pytest.warns(DeprecationWarning, match="in_features"):
        old = MADE(hidden_dims=[4], input_dim=3)
    assert old.in_features == 3
    with pytest.raises(ValueError, match="MADE.*in_features"):
        MADE(hidden_dims=[4], in_features=3, input_dim=4)


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: MADE(in_features=0), "in_features"),
        (lambda: MADE(in_features=-2), "in_features"),
        (lambda: MADE(in_features=2.5), "in_features"),
        (lambda: MADE(hidden_dims=[8, 0]), "hidden_dims"),
        (lambda: MADE(hidden_dims=[8, -1]), "hidden_dims"),
        (lambda: MADE(hidden_dims=[2.5]), "hidden_dims"),
        (lambda: MADE(hidden_dims=8), "hidden_dims"),
        (lambda: MADE(order=3), "order"),
        (lambda: MADE(units=True), "units"),
        (lambda: ActNorm(0), "num_features"),
        (lambda: ActNorm(-3), "num_features"),
        (lambda: ActNorm(2.0), "num_features"),
        (lambda: ActNorm(True), "num_features"),
        (lambda: ActNorm(3, eps=0.0), "eps"),
        (lambda: ActNorm(3, eps=-1e-6), "eps"),
        (lambda: ActNorm(3, eps=float("nan")), "eps"),
        (lambda: ActNorm(3, eps=float("inf")), "eps"),
        (lambda: Permute(0), "permutation"),
        (lambda: Permute([]), "permutation"),
        (lambda: InvertibleConv1x1(0), "num_channels"),
    ],
)
def test_bad_constructor_arguments_name_the_layer_and_argument(build, argument) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        build()
    message = str(info.value)
    assert argument in message
    assert message.split(" ")[0] in {"MADE", "ActNorm", "Permute", "InvertibleConv1x1"}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("num_features", [None, 3])
def test_actnorm_rejects_a_non_finite_first_batch_and_stays_uninitialised(
    bad: float, num_features: int | None
) -> None:
    torch.manual_seed(0)
    layer = ActNorm(num_features)
    x = torch.randn(8, 3) * 2 + 1
    x_bad = x.clone()
    x_bad[3, 1] = bad
    with pytest.raises(ValueError, match="ActNorm.*finite"):
        layer(x_bad)
    assert not bool(layer.initialized)
    y = layer(x)  # a clean batch then initialises as if the bad one never came
    reference = ActNorm(num_features)
    torch.testing.assert_close(y, reference(x))
    assert torch.isfinite(y).all()


def test_actnorm_rejects_an_empty_first_batch() -> None:
    layer = ActNorm(3)
    with pytest.raises(ValueError, match="ActNorm.*empty"):
        layer(torch.randn(0, 3))
    assert not bool(layer.initialized)
    layer(torch.randn(4, 3))
    assert layer(torch.randn(0, 3)).shape == (0, 3)  # after initialisation: an empty result


def test_permute_repr_shows_the_permutation() -> None:
    assert "permutation=[2, 0, 1]" in repr(Permute([2, 0, 1]))
    long = repr(Permute(100, seed=1))
    perm = Permute(100, seed=1).permutation.tolist()
    assert f"[{perm[0]}, {perm[1]}, {perm[2]}, ..., {perm[-1]}]" in long and "D=100" in long


@pytest.mark.parametrize(
    "layer",
    [
        MADE(hidden_dims=[4], in_features=3),
        ActNorm(3),
        InvertibleConv1x1(3),
        RealNVP(MADE(hidden_dims=[4], in_features=1)),
        MaskedAutoregressiveFlow(MADE(hidden_dims=[4], in_features=3)),
    ],
    ids=lambda m: type(m).__name__,
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.long])
def test_wrong_dtype_input_is_a_type_error_naming_layer_and_dtypes(
    layer: nn.Module, dtype: torch.dtype
) -> None:
    shape = (2, 3, 2, 2) if isinstance(layer, InvertibleConv1x1) else (2, 3)
    if isinstance(layer, RealNVP):
        shape = (2, 2)
    x = torch.ones(shape, dtype=dtype)
    with pytest.raises(TypeError) as info:
        layer(x)
    message = str(info.value)
    assert message.startswith(type(layer).__name__)
    assert "input" in message and "torch.float32" in message and str(dtype) in message


def test_lazy_made_is_built_in_the_first_inputs_dtype() -> None:
    made = MADE(hidden_dims=[4])
    assert made(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in made.parameters())
    with pytest.raises(TypeError, match="MADE expected `input` of dtype torch.float64"):
        made(torch.randn(2, 3))


def test_a_flow_not_yet_called_deep_copies_and_saves() -> None:
    flow = _lazy_flow()
    twin = copy.deepcopy(flow)  # e.g. an ensemble built from one template
    fresh = _lazy_flow()
    fresh.load_state_dict(flow.state_dict())  # the sizes are still unknown: nothing to load
    x = torch.randn(6, 4)
    for model in (flow, twin, fresh):
        assert model(x).shape == (6, 4)
        assert model[1].network.in_features == 2


@pytest.mark.parametrize(
    ("layer", "x", "inner"),
    [
        (Reverse(Permute(3)), torch.randn(2, 4), "Permute"),
        (Reverse(ActNorm(3)), torch.randn(2, 3, dtype=torch.float64), "ActNorm"),
        (RealNVP(bl.layers.LinearReparameterization(3, 4)), torch.randn(2, 4), "Linear"),
        (MaskedAutoregressiveFlow(MADE(hidden_dims=[4], in_features=3)), torch.randn(2, 4), "MADE"),
    ],
    ids=["reverse-width", "reverse-dtype", "realnvp-network", "maf-network"],
)
def test_errors_of_a_wrapped_layer_or_network_name_the_layer_called(
    layer: nn.Module, x: Tensor, inner: str
) -> None:
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        layer(x)
    assert isinstance(info.value, (ValueError, TypeError))
    assert str(info.value).startswith(type(layer).__name__)
    assert inner in str(info.value)


def test_lazy_sizes_follow_the_first_inputs_device_and_dtype() -> None:
    """Sized like the first input: built under meta (standing in for an accelerator;
    a parameter cannot move between CPU and meta in place) and called in float64."""
    with torch.device("meta"):
        flow = nn.Sequential(RealNVP(MADE(hidden_dims=[4])), ActNorm())
    flow[0](torch.randn(2, 4, device="meta", dtype=torch.float64))
    assert all(p.device.type == "meta" for p in flow[0].parameters())
    assert all(b.device.type == "meta" for b in flow[0].buffers())
    assert all(p.dtype == torch.float64 for p in flow[0].parameters())
    flow[1].initialize_parameters(torch.randn(2, 4, device="meta"))  # the hook's step alone
    assert flow[1].shift.device.type == "meta" and flow[1].num_features == 4
