"""Tests for the Bayesian recurrent layers (``bayesian_layers.layers.recurrent``,
``recurrent_cells``, ``recurrent_sequence``) and their pure functions
(``functional.recurrent``).

1. A contract suite over a registry of cells, and one over the sequence modules,
   each checked against the torch module holding the posterior means (or a draw),
   including a hypothesis grid of configurations.
2. One draw per sequence: reuse across steps, ``get_initial_state``/``resample``,
   sampling modes, ``losses`` counted once per sequence.
3. Gradients after 50 steps against central finite differences in float64 (the
   noise is never overwritten in place, unlike bayesian-torch's LSTM), and under
   truncated backpropagation through time.
4. Flipout decorrelates identical examples; vectorised samples; ``gradcheck``.
"""

from __future__ import annotations

import copy
import io
import math
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stats_util import finite_difference, z_bonferroni
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import bayesian_layers as bl
from bayesian_layers.layers.functional import recurrent as K
from bayesian_layers.layers.recurrent import (
    GRUCellFlipout,
    GRUCellReparameterization,
    LSTMCellFlipout,
    LSTMCellReparameterization,
    LSTMFlipout,
    LSTMReparameterization,
)
from bayesian_layers.regularizers import MonteCarloKLDivergence, NormalKLDivergence


class CellSpec(NamedTuple):
    cls: type
    torch_cls: type[nn.RNNCellBase]
    flipout: bool


# The registries: a new recurrent layer is one line here.
CELLS = [
    CellSpec(LSTMCellReparameterization, nn.LSTMCell, flipout=False),
    CellSpec(LSTMCellFlipout, nn.LSTMCell, flipout=True),
    CellSpec(GRUCellReparameterization, nn.GRUCell, flipout=False),
    CellSpec(GRUCellFlipout, nn.GRUCell, flipout=True),
]
SEQUENCES = [LSTMReparameterization, LSTMFlipout]
parametrize_cells = pytest.mark.parametrize("spec", CELLS, ids=[s.cls.__name__ for s in CELLS])
parametrize_sequences = pytest.mark.parametrize("cls", SEQUENCES, ids=lambda c: c.__name__)

IN, HID = 3, 4
RANDOM_BIAS = {"bias_initializer": "trainable_normal", "bias_regularizer": "normal_kl_divergence"}
BIAS_KWARGS = pytest.mark.parametrize(
    "bias_kwargs", [{}, RANDOM_BIAS], ids=["fixed_bias", "random_bias"]
)
SEQ_CONFIGS = [
    {},
    {"num_layers": 2, "bidirectional": True},
    {"num_layers": 2, "batch_first": True, "bias": False},
    {"num_layers": 3, "dropout": 0.5, "bidirectional": True, "batch_first": True},
]


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-off would dominate
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def random_params(layer: nn.Module, scale_low: float = 0.3, scale_high: float = 0.8) -> None:
    """Generic values: locs ~ N(0, 0.5²), scales ~ U(low, high)."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                p.copy_(torch.empty_like(p).uniform_(scale_low, scale_high).expm1().log())
            else:
                p.normal_(0.0, 0.5)


def zero_scales(layer: nn.Module) -> None:
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                p.fill_(-100.0)  # softplus(-100) ≈ 4e-44


def hidden(state: Any) -> Tensor:
    return state[0] if isinstance(state, tuple) else state


def run_cell(cell: nn.Module, xs: Tensor, state: Any = None) -> tuple[Tensor, Any]:
    """Loop ``cell`` over ``xs`` of shape ``(T, *, I)``; the stacked ``h`` and the last state."""
    outs = []
    for x_t in xs:
        state = cell(x_t, state)
        outs.append(hidden(state))
    return torch.stack(outs), state


def torch_cell(spec: CellSpec, cell: nn.Module, weights: dict[str, Tensor] | None = None):
    """``spec.torch_cls`` holding ``weights`` (default: ``cell``'s posterior means)."""
    ref = spec.torch_cls(IN, HID, bias=cell.bias, dtype=cell.weight_ih_loc.dtype)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(cell.point(name) if weights is None else weights[name])
    return ref


def torch_lstm(lstm: nn.Module, weights: dict[str, Tensor] | None = None) -> nn.LSTM:
    ref = nn.LSTM(
        lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, lstm.batch_first,
        lstm.dropout, lstm.bidirectional, dtype=lstm.weight_ih_l0_loc.dtype,
    )  # fmt: skip
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(lstm.point(name) if weights is None else weights[name])
    return ref.train(lstm.training)


def kl_reference(layer: nn.Module, name: str, prior: Normal) -> Tensor:
    loc, rho = getattr(layer, f"{name}_loc"), getattr(layer, f"{name}_rho")
    return kl_divergence(Normal(loc, F.softplus(rho)), prior).sum()


def random_names(layer: nn.Module) -> list[str]:
    return [n[: -len("_loc")] for n, _ in layer.named_parameters() if n.endswith("_loc")]


# ===================================================================== cell contract
@parametrize_cells
@pytest.mark.parametrize("bias", [True, False])
def test_cell_shapes_and_dtypes_equal_torch(spec: CellSpec, bias: bool) -> None:
    cell, ref = spec.cls(IN, HID, bias=bias), spec.torch_cls(IN, HID, bias=bias)
    for x in (torch.randn(5, IN), torch.randn(IN)):
        for state in (None, ref(x)):
            got, expected = cell(x, state), ref(x, state)
            pairs = zip(
                *(s if isinstance(s, tuple) else (s,) for s in (got, expected)), strict=True
            )
            for a, b in pairs:
                assert a.shape == b.shape and a.dtype == b.dtype
        zero = cell.get_initial_state(x)
        for a in zero if isinstance(zero, tuple) else (zero,):
            assert a.shape == x.shape[:-1] + (HID,) and not a.any()


@parametrize_cells
def test_cell_built_and_run_in_inference_mode(spec: CellSpec) -> None:
    """A cell built inside ``torch.inference_mode`` (its parameters are inference tensors,
    without the version counter its draw cache keys on) runs there, and gives the
    outputs of the same cell built outside it, for a fixed seed."""
    x = torch.randn(5, IN)
    outs = []
    for inference in (False, True):
        with torch.inference_mode(inference):
            torch.manual_seed(0)
            cell = spec.cls(IN, HID)
            state = cell.get_initial_state(x)
            out = cell(x, cell(x, state))
            outs.append(torch.cat(out if isinstance(out, tuple) else (out,), -1).clone())
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)


@parametrize_cells
@BIAS_KWARGS
def test_cell_zero_posterior_scale_is_the_torch_cell(spec: CellSpec, bias_kwargs: dict) -> None:
    cell = spec.cls(IN, HID, **bias_kwargs)
    random_params(cell)
    zero_scales(cell)
    ref = torch_cell(spec, cell)
    xs = torch.randn(6, 5, IN)
    torch.testing.assert_close(run_cell(cell, xs)[0], run_cell(ref, xs)[0])
    torch.testing.assert_close(run_cell(cell, xs[:, 0])[0], run_cell(ref, xs[:, 0])[0])


@parametrize_cells
@BIAS_KWARGS
def test_cell_every_parameter_gets_a_finite_gradient(spec: CellSpec, bias_kwargs: dict) -> None:
    cell = spec.cls(IN, HID, **bias_kwargs)
    xs = torch.randn(5, 4, IN)
    out, _ = run_cell(cell, xs, cell.get_initial_state(xs[0]))
    (out.sum() + sum(cell.losses)).backward()
    for name, p in cell.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@parametrize_cells
@BIAS_KWARGS
def test_cell_losses_are_the_closed_form_kl(spec: CellSpec, bias_kwargs: dict) -> None:
    cell = spec.cls(IN, HID, **bias_kwargs)
    random_params(cell)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias_kwargs else [])
    assert random_names(cell) == names
    prior = Normal(0.0, 1.0)
    terms = cell.losses
    assert len(terms) == len(names)
    for term, name in zip(terms, names, strict=True):
        assert term.shape == () and term >= 0
        torch.testing.assert_close(term, kl_reference(cell, name, prior))


@parametrize_cells
def test_cell_state_dict_round_trip_with_weights_only(spec: CellSpec) -> None:
    src = spec.cls(
        IN, HID, bias_initializer="trainable_normal",
        weight_regularizer=NormalKLDivergence(0.5, 2.0), bias_regularizer=NormalKLDivergence(),
    )  # fmt: skip
    random_params(src)
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    params = {
        f"{w}_{k}_{s}" for w in ("weight", "bias") for k in ("ih", "hh") for s in ("loc", "rho")
    }
    priors = {f"{w}_{k}_regularizer.prior_{s}" for w in ("weight", "bias") for k in ("ih", "hh")
              for s in ("loc", "scale")}  # fmt: skip
    assert set(state) == params | priors
    dst = spec.cls(IN, HID, **RANDOM_BIAS)
    dst.load_state_dict(state)
    assert float(dst.weight_hh_regularizer.prior_scale) == 2.0
    torch.testing.assert_close(dst.losses, src.losses)
    xs = torch.randn(4, 2, IN)
    with bl.posterior_mean(src), bl.posterior_mean(dst):
        torch.testing.assert_close(run_cell(dst, xs)[0], run_cell(src, xs)[0], rtol=0, atol=0)
    torch.manual_seed(5)
    expected = run_cell(src, xs)[0]
    torch.manual_seed(5)
    torch.testing.assert_close(run_cell(dst, xs)[0], expected, rtol=0, atol=0)


@parametrize_cells
@pytest.mark.parametrize("shape", [(4, IN + 1), (IN + 1,), (2, 3, IN), ()], ids=str)
def test_cell_wrong_input_size_names_both_shapes(spec: CellSpec, shape: tuple) -> None:
    cell = spec.cls(IN, HID)
    for call in (cell, cell.get_initial_state):
        with pytest.raises(ValueError) as info:
            call(torch.randn(shape))
        message = str(info.value)
        assert spec.cls.__name__ in message and f"(B, {IN})" in message
        assert re.search(re.escape(str(tuple(shape))), message), message
    with pytest.raises(TypeError, match=f"{spec.cls.__name__}.*int64"):
        cell(torch.ones(4, IN, dtype=torch.int64))


@parametrize_cells
@pytest.mark.parametrize(
    ("x_shape", "h_shape"),
    [((4, IN), (4, HID + 1)), ((4, IN), (5, HID)), ((IN,), (1, HID)), ((4, IN), (HID,))],
    ids=str,
)
def test_cell_wrong_hidden_state_shape_names_both(spec: CellSpec, x_shape, h_shape) -> None:
    cell = spec.cls(IN, HID)
    x, h = torch.randn(x_shape), torch.randn(h_shape)
    good = torch.zeros(x_shape[:-1] + (HID,))
    states = [(h, good), (good, h)] if spec.torch_cls is nn.LSTMCell else [h]
    expected = str(x_shape[:-1] + (HID,))
    for state in states:
        with pytest.raises(ValueError) as info:
            cell(x, state)
        message = str(info.value)
        assert spec.cls.__name__ in message and expected in message, message
        assert str(tuple(h_shape)) in message, message
    if spec.torch_cls is nn.LSTMCell:
        with pytest.raises(TypeError, match="hx = \\(h, c\\)"):
            cell(x, good)


@parametrize_cells
@pytest.mark.parametrize("value", [0, -2, 2.0, True], ids=str)
def test_cell_bad_sizes(spec: CellSpec, value: object) -> None:
    error = ValueError if isinstance(value, int) and not isinstance(value, bool) else TypeError
    with pytest.raises(error, match="input_size"):
        spec.cls(value, HID)
    with pytest.raises(error, match="hidden_size"):
        spec.cls(IN, value)


def test_flipout_cells_need_normal_weights() -> None:
    for cls in (LSTMCellFlipout, GRUCellFlipout):
        with pytest.raises(ValueError, match=cls.__name__):
            cls(IN, HID, weight_initializer="trainable_log_normal")
    cell = LSTMCellReparameterization(IN, HID, weight_initializer="trainable_log_normal")
    assert (run_cell(cell, torch.randn(3, 2, IN))[0].abs() <= 1).all()


@parametrize_cells
def test_cell_from_torch_copies_weights(spec: CellSpec) -> None:
    ref = spec.torch_cls(IN, HID, dtype=torch.float64)
    make = spec.cls.from_torch
    cell = make(ref)
    assert type(cell) is spec.cls and cell.weight_ih_loc.dtype == torch.float64
    for name, p in ref.named_parameters():
        torch.testing.assert_close(cell.point(name), p, rtol=0, atol=0)
    xs = torch.randn(3, 2, IN, dtype=torch.float64)
    with bl.posterior_mean(cell):
        torch.testing.assert_close(run_cell(cell, xs)[0], run_cell(ref, xs)[0])
    with pytest.raises(TypeError, match=spec.torch_cls.__name__):
        make(nn.Linear(IN, HID))


@parametrize_cells
def test_cell_repr_and_attributes_mirror_torch(spec: CellSpec) -> None:
    cell = spec.cls(IN, HID, bias=False)
    assert (cell.input_size, cell.hidden_size, cell.bias) == (IN, HID, False)
    assert f"{IN}, {HID}, bias=False" in repr(cell)
    assert isinstance(cell.weight_ih, bl.RandomVariable)


@parametrize_cells
def test_cell_copies_of_a_used_cell(spec: CellSpec) -> None:
    cell = spec.cls(IN, HID)
    random_params(cell)
    xs = torch.randn(3, 2, IN)
    run_cell(cell, xs)  # its graph is alive
    clone = copy.deepcopy(cell)
    with bl.posterior_mean(cell), bl.posterior_mean(clone):
        torch.testing.assert_close(run_cell(clone, xs)[0], run_cell(cell, xs)[0])
    out, _ = run_cell(clone, xs)
    out.sum().backward()
    assert clone.weight_hh_rho.grad is not None and cell.weight_hh_rho.grad is None


# ========================================================== one draw per sequence
@parametrize_cells
def test_cell_reuses_one_draw_within_a_sequence(spec: CellSpec) -> None:
    """Same input and state at two steps give the same output; a new sequence does not."""
    cell = spec.cls(IN, HID, **RANDOM_BIAS)
    random_params(cell)
    x = torch.randn(4, IN)
    state = cell.get_initial_state(x)
    mid = cell(x, state)
    for _ in range(3):
        torch.testing.assert_close(cell(x, state), mid, rtol=0, atol=0)
        cell(torch.randn(4, IN), mid)
    if not spec.flipout:
        value = cell.weight_ih.value
        cell(x, state)
        assert cell.weight_ih.value is value  # built once per sequence
        torch.testing.assert_close(hidden(mid), hidden(torch_cell(spec, cell, {
            n: getattr(cell, n).value for n in random_names(cell)})(x, state)))  # fmt: skip
    assert not torch.allclose(hidden(cell(x, cell.get_initial_state(x))), hidden(mid))
    # get_initial_state, resample and a call without a state each start a new draw
    first = cell(x, state)
    cell.resample()
    second = cell(x, state)
    assert not torch.allclose(hidden(second), hidden(first))
    torch.testing.assert_close(cell(x, state), second, rtol=0, atol=0)
    fresh = cell(x)
    assert not torch.allclose(hidden(fresh), hidden(cell(x)))
    # two sequences under the same seed agree
    torch.manual_seed(7)
    a = run_cell(cell, torch.ones(3, 4, IN), cell.get_initial_state(x))[0]
    torch.manual_seed(7)
    torch.testing.assert_close(
        run_cell(cell, torch.ones(3, 4, IN), cell.get_initial_state(x))[0], a
    )


@parametrize_cells
def test_cell_sampling_modes(spec: CellSpec) -> None:
    cell = spec.cls(IN, HID, **RANDOM_BIAS)
    random_params(cell)
    xs = torch.randn(5, 4, IN)
    xs[:, 1] = xs[:, 0]
    with bl.posterior_mean(cell):
        mean = run_cell(cell, xs)[0]
        torch.testing.assert_close(run_cell(cell, xs)[0], mean, rtol=0, atol=0)
    torch.testing.assert_close(mean, run_cell(torch_cell(spec, cell), xs)[0])
    with bl.frozen_sample(cell):
        frozen = run_cell(cell, xs, cell.get_initial_state(xs[0]))[0]
        torch.testing.assert_close(frozen[:, 0], frozen[:, 1], rtol=0, atol=0)  # one function
        again = run_cell(cell, xs, cell.get_initial_state(xs[0]))[0]  # a new sequence
        torch.testing.assert_close(again, frozen, rtol=0, atol=0)
        torch.testing.assert_close(run_cell(cell, xs[:, 2:])[0], frozen[:, 2:])  # sub-batch
        bl.resample(cell)
        assert not torch.allclose(run_cell(cell, xs)[0], frozen)
    (frozen.sum() + sum(cell.losses)).backward()
    assert cell.weight_hh_rho.grad.abs().sum() > 0


@parametrize_cells
def test_cell_losses_after_50_steps_equal_one_step(spec: CellSpec) -> None:
    """KL is counted once per sequence: reading ``losses`` after 1 or 50 steps agrees,
    for the closed form and (whole-draw cells) for a Monte Carlo KL at the draw."""
    regs = [NormalKLDivergence()]
    if not spec.flipout:
        regs.append(MonteCarloKLDivergence(Normal(torch.tensor(0.0), torch.tensor(1.0))))
    for reg in regs:
        cell = spec.cls(IN, HID, weight_regularizer=reg)
        random_params(cell)
        xs = torch.randn(50, 2, IN)
        state = cell(xs[0], cell.get_initial_state(xs[0]))
        after_one = [t.detach() for t in cell.losses]
        assert len(after_one) == 2
        for x_t in xs[1:]:
            state = cell(x_t, state)
        torch.testing.assert_close(cell.losses, after_one, rtol=0, atol=0)
        total = torch.stack(bl.losses(nn.ModuleList([cell]))).sum()
        torch.testing.assert_close(total, sum(after_one))


# ======================================================================== gradients


def _check_gradients(layer: nn.Module, loss_fn: Callable[[], Tensor]) -> None:
    loss_fn().backward()
    expected = finite_difference(loss_fn, list(layer.parameters()))
    for (name, p), g in zip(layer.named_parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7, msg=name)


@parametrize_cells
@pytest.mark.parametrize("resample_midway", [False, True], ids=["one_draw", "resample_midway"])
def test_cell_gradients_after_50_steps_match_finite_differences(
    spec: CellSpec, resample_midway: bool
) -> None:
    """One backward through 50 steps of one draw (or two draws, ``resample()`` after step
    25 while the graph of the first 25 steps is alive) equals central finite differences
    of the same seeded computation in float64. A cell that overwrote its saved noise in
    place at each step (as bayesian-torch's LSTM does) fails this."""
    cell = spec.cls(2, 2, dtype=torch.float64, **RANDOM_BIAS)
    random_params(cell)
    xs = torch.randn(50, 2, 2, dtype=torch.float64)
    weights = torch.randn(50, 2, 2, dtype=torch.float64)

    def loss_fn() -> Tensor:
        torch.manual_seed(99)
        state = cell.get_initial_state(xs[0])
        total = torch.zeros((), dtype=torch.float64)
        for t in range(50):
            if resample_midway and t == 25:
                cell.resample()
            state = cell(xs[t], state)
            total = total + (hidden(state) * weights[t]).sum()
        return total + torch.stack(cell.losses).sum()

    _check_gradients(cell, loss_fn)


@parametrize_cells
def test_cell_truncated_bptt_reuses_the_draw(spec: CellSpec) -> None:
    """Backward after 10 steps frees the weights' graph; the next 10 steps rebuild them from
    the same noise. Gradients equal one backward through both chunks (state detached)."""
    cell = spec.cls(IN, HID, dtype=torch.float64, **RANDOM_BIAS)
    random_params(cell)
    xs = torch.randn(20, 3, IN, dtype=torch.float64)

    def chunks(backward_each: bool) -> list[Tensor]:
        cell.zero_grad()
        torch.manual_seed(3)
        state, total = cell.get_initial_state(xs[0]), 0.0
        for part in (xs[:10], xs[10:]):
            out, state = run_cell(cell, part, state)
            loss = out.square().sum() + sum(cell.losses)
            if backward_each:
                loss.backward()
            total = total + loss
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        if not backward_each:
            total.backward()
        return [p.grad.clone() for p in cell.parameters()]

    for a, b in zip(chunks(True), chunks(False), strict=True):
        torch.testing.assert_close(a, b)


# ============================================================ decorrelation, vectorised
N_PASSES = 10_000


@parametrize_cells
def test_flipout_cells_decorrelate_identical_examples(spec: CellSpec) -> None:
    """Two identical sequences in one batch; correlation of their last hidden states over
    n = 10 000 independent draws (one vectorised call, K = n), per hidden unit.

    Reparameterization shares one draw across the batch: r = 1 exactly. Flipout: the two
    examples' weight perturbations Δ ∘ s_b are uncorrelated (independent random signs)
    but share Δ, so after the nonlinearities r = Var(E[h | Δ]) / Var(h) ≥ 0 is O(σ²);
    at posterior scale 0.02 here it is below what n = 10⁶ draws resolve (|r̂| ≤ 0.002 for
    two parameter seeds, all Flipout layers), negligible against the bound (≈ 0.045).
    The sample r has variance E[u²v²]/n under r = 0 (u, v standardised; estimated from
    the data). k = 4 units, family-wise α = 1e-3: |r| ≤ z(1 - α/2k)·sqrt(E[u²v²]/n).
    """
    cell = spec.cls(IN, HID, dtype=torch.float64)
    random_params(cell, 0.02, 0.02)
    xs = torch.randn(3, 1, IN, dtype=torch.float64).expand(3, 2, IN)  # rows identical
    with torch.no_grad(), bl.vectorized_samples(cell, N_PASSES):
        out, _ = run_cell(cell, xs.repeat(1, N_PASSES, 1))  # (T, n * 2, H), sample-major
    last = out[-1].view(N_PASSES, 2, HID)
    u, v = last[:, 0] - last[:, 0].mean(0), last[:, 1] - last[:, 1].mean(0)
    u, v = u / u.square().mean(0).sqrt(), v / v.square().mean(0).sqrt()
    r = (u * v).mean(0)
    if not spec.flipout:
        torch.testing.assert_close(r, torch.ones_like(r))
    else:
        bound = z_bonferroni(HID) * ((u * v).square().mean(0) / N_PASSES).sqrt()
        assert (r.abs() <= bound).all(), (r, bound)


@parametrize_cells
def test_cell_vectorized_samples(spec: CellSpec) -> None:
    """K = 3 draws at once: block k of the batch sees the k-th draw; the same K draws are
    reused at every step; an unbatched or non-multiple input is rejected."""
    cell = spec.cls(IN, HID, **RANDOM_BIAS)
    random_params(cell)
    k, batch = 3, 2
    xs = torch.randn(4, batch, IN)
    with bl.vectorized_samples(cell, k):
        out, _ = run_cell(cell, xs.repeat(1, k, 1), cell.get_initial_state(xs[0].repeat(k, 1)))
        with pytest.raises(ValueError, match="multiple of 3"):
            cell(torch.randn(4, IN))
        with pytest.raises(ValueError, match="batched"):
            cell(torch.randn(IN))
    out = out.view(4, k, batch, HID)
    assert not torch.allclose(out[:, 0], out[:, 1])
    if not spec.flipout:
        for j in range(k):
            weights = {n: getattr(cell, n).value[j] for n in random_names(cell)}
            torch.testing.assert_close(out[:, j], run_cell(torch_cell(spec, cell, weights), xs)[0])


# ================================================================== sequence modules
@parametrize_sequences
@pytest.mark.parametrize("config", SEQ_CONFIGS, ids=str)
def test_lstm_shapes_equal_torch(cls: type, config: dict) -> None:
    lstm, ref = cls(IN, HID, **config), nn.LSTM(IN, HID, **config)
    batch_first = config.get("batch_first", False)
    for x in (torch.randn(5, 7, IN), torch.randn(7, IN)):
        expected_out, (expected_h, expected_c) = ref(x)
        out, (h, c) = lstm(x)
        assert (out.shape, h.shape, c.shape) == (
            expected_out.shape, expected_h.shape, expected_c.shape,
        )  # fmt: skip
        out2, _ = lstm(x, (h, c))  # an explicit state
        assert out2.shape == out.shape and out2.dtype == x.dtype
    assert lstm.batch_first == batch_first
    assert lstm.extra_repr() == ref.extra_repr()


HYPOTHESIS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=15,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@parametrize_sequences
@HYPOTHESIS
@given(
    sizes=st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 3), st.integers(1, 4)),
    flags=st.tuples(*[st.booleans()] * 5),
    batch=st.sampled_from([(), (1,), (3,)]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_lstm_matches_nn_lstm_across_configurations(
    cls: type, sizes: tuple, flags: tuple, batch: tuple, dtype: torch.dtype
) -> None:
    """Over input/hidden sizes, layers, sequence lengths, bias, batch_first, bidirectional,
    random biases, hx given or not, batched and unbatched inputs, float32/64: outputs and
    states have nn.LSTM's shapes and dtypes, and on posterior means nn.LSTM's values."""
    in_size, hid, layers_, steps = sizes
    bias, batch_first, bidirectional, random_bias, with_hx = flags
    config = {"num_layers": layers_, "bias": bias, "batch_first": batch_first,
              "bidirectional": bidirectional}  # fmt: skip
    lstm = cls(in_size, hid, **config, dtype=dtype, **(RANDOM_BIAS if random_bias and bias else {}))
    random_params(lstm)
    ref = torch_lstm(lstm)
    shape = (*batch, steps, in_size) if batch_first else (steps, *batch, in_size)
    x = torch.randn(shape, dtype=dtype)
    hx = None
    if with_hx:
        state = (layers_ * (1 + bidirectional), *batch, hid)
        hx = (torch.randn(state, dtype=dtype), torch.randn(state, dtype=dtype))
    expected = ref(x, hx)
    out, (h, c) = lstm(x, hx)
    for a, b in zip((out, h, c), (expected[0], *expected[1]), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    with bl.posterior_mean(lstm):
        torch.testing.assert_close(lstm(x, hx), expected)


@parametrize_cells
@HYPOTHESIS
@given(
    sizes=st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4)),
    flags=st.tuples(st.booleans(), st.booleans()),
    batch=st.sampled_from([(), (1,), (3,)]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_cell_matches_torch_cell_across_configurations(
    spec: CellSpec, sizes: tuple, flags: tuple, batch: tuple, dtype: torch.dtype
) -> None:
    """Cells over sizes, bias, random biases, batch shapes and dtypes: torch's shapes and
    dtypes; on posterior means, and with posterior scale → 0, torch's values."""
    in_size, hid, steps = sizes
    bias, random_bias = flags
    cell = spec.cls(in_size, hid, bias=bias, dtype=dtype,
                    **(RANDOM_BIAS if random_bias and bias else {}))  # fmt: skip
    random_params(cell)
    ref = spec.torch_cls(in_size, hid, bias=bias, dtype=dtype)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(cell.point(name))
    xs = torch.randn(steps, *batch, in_size, dtype=dtype)
    expected = run_cell(ref, xs)[0]
    out = run_cell(cell, xs)[0]
    assert out.shape == expected.shape and out.dtype == expected.dtype
    with bl.posterior_mean(cell):
        torch.testing.assert_close(run_cell(cell, xs)[0], expected)
    zero_scales(cell)
    torch.testing.assert_close(run_cell(cell, xs)[0], expected)


@parametrize_sequences
@pytest.mark.parametrize("config", SEQ_CONFIGS[:3], ids=str)
@BIAS_KWARGS
def test_lstm_zero_posterior_scale_is_nn_lstm(cls: type, config: dict, bias_kwargs: dict) -> None:
    lstm = cls(IN, HID, **config, **bias_kwargs)
    random_params(lstm)
    zero_scales(lstm)
    ref = torch_lstm(lstm)
    x = torch.randn(5, 6, IN)
    shape = (lstm.num_layers * (1 + lstm.bidirectional), x.shape[1 - lstm.batch_first], HID)
    hx = (torch.randn(shape), torch.randn(shape))
    torch.testing.assert_close(lstm(x, hx), ref(x, hx))
    with bl.posterior_mean(lstm):
        random_params(lstm)
        torch.testing.assert_close(lstm(x), torch_lstm(lstm)(x))


@parametrize_sequences
@pytest.mark.parametrize("config", SEQ_CONFIGS[:3], ids=str)
def test_lstm_draw_runs_nn_lstm_with_the_drawn_weights(cls: type, config: dict) -> None:
    """``LSTMReparameterization`` (and LSTMFlipout when frozen) is ``nn.LSTM`` run on one
    whole draw of every matrix, in torch's flat-weight order; calls draw afresh."""
    lstm = cls(IN, HID, **config, **RANDOM_BIAS)
    random_params(lstm)
    x = torch.randn(5, 6, IN)
    with bl.frozen_sample(lstm) if cls is LSTMFlipout else bl.posterior_mean(nn.Identity()):
        out, (h, c) = lstm(x)
        weights = {n: getattr(lstm, n).value for n in random_names(lstm)}
        weights |= {n: p for n, p in lstm.named_parameters() if n.startswith("bias_")}
        expected = torch_lstm(lstm, weights)(x)
        torch.testing.assert_close((out, (h, c)), expected)
        if cls is LSTMFlipout:
            torch.testing.assert_close(lstm(x)[0], out, rtol=0, atol=0)
    assert not torch.allclose(lstm(x)[0], lstm(x)[0])
    torch.manual_seed(3)
    a = lstm(x)[0]
    torch.manual_seed(3)
    torch.testing.assert_close(lstm(x)[0], a, rtol=0, atol=0)


def test_lstm_equals_looping_the_cell_with_the_same_draw() -> None:
    """Same posterior parameters, same seed: the same noise for (weight_ih, weight_hh), so
    LSTMReparameterization's output is LSTMCellReparameterization looped over time."""
    lstm = LSTMReparameterization(IN, HID, dtype=torch.float64)
    cell = LSTMCellReparameterization(IN, HID, dtype=torch.float64)
    random_params(lstm)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            p.copy_(getattr(lstm, name.replace("_ih", "_ih_l0").replace("_hh", "_hh_l0")))
    xs = torch.randn(8, 5, IN, dtype=torch.float64)
    torch.manual_seed(11)
    out, (h, c) = lstm(xs)
    torch.manual_seed(11)
    looped, (h_cell, c_cell) = run_cell(cell, xs, cell.get_initial_state(xs[0]))
    torch.testing.assert_close(out, looped)
    torch.testing.assert_close((h[0], c[0]), (h_cell, c_cell))
    torch.testing.assert_close(lstm.weight_hh_l0.value, cell.weight_hh.value)


@parametrize_sequences
@BIAS_KWARGS
def test_lstm_every_parameter_gets_a_finite_gradient(cls: type, bias_kwargs: dict) -> None:
    lstm = cls(IN, HID, num_layers=2, bidirectional=True, dropout=0.3, **bias_kwargs)
    out, (h, c) = lstm(torch.randn(5, 4, IN))
    (out.sum() + h.sum() + c.sum() + sum(lstm.losses)).backward()
    for name, p in lstm.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@parametrize_sequences
def test_lstm_losses_state_dict_and_dtype(cls: type) -> None:
    lstm = cls(IN, HID, num_layers=2, bidirectional=True, **RANDOM_BIAS)
    random_params(lstm)
    ref_names = {
        n for n, _ in nn.LSTM(IN, HID, num_layers=2, bidirectional=True).named_parameters()
    }
    assert set(random_names(lstm)) == ref_names
    prior = Normal(0.0, 1.0)
    terms = lstm.losses
    assert len(terms) == len(ref_names)
    for term, name in zip(terms, random_names(lstm), strict=True):
        torch.testing.assert_close(term, kl_reference(lstm, name, prior))
    lstm(torch.randn(50, 2, IN))  # 50 steps: the KL is still once per matrix
    torch.testing.assert_close(lstm.losses, terms)

    buffer = io.BytesIO()
    torch.save(lstm.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert {k for k in state if "regularizer" not in k} == {
        f"{n}_{s}" for n in ref_names for s in ("loc", "rho")
    }
    dst = cls(IN, HID, num_layers=2, bidirectional=True, **RANDOM_BIAS)
    dst.load_state_dict(state)
    x = torch.randn(4, 2, IN)
    with bl.posterior_mean(lstm), bl.posterior_mean(dst):
        torch.testing.assert_close(dst(x), lstm(x), rtol=0, atol=0)

    wide = cls(IN, HID, num_layers=2, dtype=torch.float64, **RANDOM_BIAS)
    assert all(p.dtype == torch.float64 for p in wide.state_dict().values())
    out, (h, c) = wide(torch.randn(4, 2, IN, dtype=torch.float64))
    assert out.dtype == h.dtype == c.dtype == torch.float64
    meta = cls(IN, HID, num_layers=2, device="meta")
    assert all(p.device.type == "meta" for p in meta.parameters())


@parametrize_sequences
@pytest.mark.parametrize("config", [{}, {"num_layers": 2, "bidirectional": True}], ids=str)
def test_lstm_gradients_match_finite_differences(cls: type, config: dict) -> None:
    """One backward through a seeded call (12 steps) equals central finite differences."""
    lstm = cls(2, 2, dtype=torch.float64, **config, **RANDOM_BIAS)
    random_params(lstm)
    x = torch.randn(12, 2, 2, dtype=torch.float64)
    weights = torch.randn(12, 2, lstm.hidden_size * (1 + lstm.bidirectional), dtype=x.dtype)

    def loss_fn() -> Tensor:
        torch.manual_seed(99)
        out, (h, c) = lstm(x)
        return (out * weights).sum() + c.sum() + torch.stack(lstm.losses).sum()

    _check_gradients(lstm, loss_fn)


@parametrize_sequences
def test_lstm_bad_input_names_both_shapes(cls: type) -> None:
    lstm = cls(IN, HID, num_layers=2)
    for shape in [(5, 2, IN + 1), (IN,), (1, 5, 2, IN)]:
        with pytest.raises(ValueError) as info:
            lstm(torch.randn(shape))
        message = str(info.value)
        assert cls.__name__ in message and f"(T, B, {IN})" in message and str(shape) in message
    x = torch.randn(5, 2, IN)
    good = torch.zeros(2, 2, HID)
    for bad in [(2, 3, HID), (1, 2, HID), (2, 2, HID + 1), (2, HID)]:
        for hx in ((torch.zeros(bad), good), (good, torch.zeros(bad))):
            with pytest.raises(ValueError) as info:
                lstm(x, hx)
            assert "(2, 2, 4)" in str(info.value) and str(bad) in str(info.value)
    with pytest.raises(TypeError, match="h_0, c_0"):
        lstm(x, good)
    with pytest.raises(ValueError, match="proj_size"):
        cls(IN, HID, proj_size=2)
    with pytest.raises(ValueError, match="dropout"):
        cls(IN, HID, dropout=1.5)
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        cls(IN, HID, dropout=0.2)
    if cls is LSTMFlipout:
        with pytest.raises(ValueError, match="LSTMFlipout"):
            cls(IN, HID, weight_initializer="trainable_log_normal")


@parametrize_sequences
def test_lstm_dropout_between_layers(cls: type) -> None:
    lstm = cls(IN, HID, num_layers=2, dropout=0.5, batch_first=True)
    random_params(lstm)
    x = torch.randn(3, 6, IN)
    with bl.posterior_mean(lstm):
        lstm.eval()
        torch.testing.assert_close(lstm(x)[0], lstm(x)[0], rtol=0, atol=0)
        lstm.train()
        assert not torch.allclose(lstm(x)[0], lstm(x)[0])
        torch.manual_seed(4)
        a = lstm(x)[0]
        ref = torch_lstm(lstm)
        torch.manual_seed(4)
        torch.testing.assert_close(a, ref(x)[0])


@parametrize_sequences
def test_lstm_packed_sequences(cls: type) -> None:
    lstm = cls(IN, HID, num_layers=2, bidirectional=True)
    random_params(lstm)
    ref = torch_lstm(lstm)
    x, lengths = torch.randn(6, 3, IN), torch.tensor([4, 6, 2])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    hx = (torch.randn(4, 3, HID), torch.randn(4, 3, HID))
    with bl.posterior_mean(lstm):
        out, (h, c) = lstm(packed, hx)
    expected, (h_ref, c_ref) = ref(packed, hx)
    torch.testing.assert_close(pad_packed_sequence(out)[0], pad_packed_sequence(expected)[0])
    torch.testing.assert_close((h, c), (h_ref, c_ref))
    if cls is LSTMFlipout:
        with pytest.raises(TypeError, match="PackedSequence"):
            lstm(packed)
    else:
        assert pad_packed_sequence(lstm(packed)[0])[0].shape == (6, 3, 2 * HID)


@parametrize_sequences
@pytest.mark.parametrize("batch_first", [False, True])
def test_lstm_vectorized_samples(cls: type, batch_first: bool) -> None:
    lstm = cls(IN, HID, num_layers=2, batch_first=batch_first, **RANDOM_BIAS)
    random_params(lstm)
    k, batch, bdim = 3, 2, 0 if batch_first else 1
    x = torch.randn(batch, 5, IN) if batch_first else torch.randn(5, batch, IN)
    xk = x.repeat(k, 1, 1) if batch_first else x.repeat(1, k, 1)
    with bl.vectorized_samples(lstm, k):
        out, (h, c) = lstm(xk)
        draws = {n: getattr(lstm, n).value for n in random_names(lstm)}
        with pytest.raises(ValueError, match="multiple of 3"):
            lstm(x)
    assert out.shape == lstm(xk)[0].shape and h.shape == (2, k * batch, HID)
    blocks = out.chunk(k, bdim)
    assert not torch.allclose(blocks[0], blocks[1])
    if cls is LSTMReparameterization:
        for j in range(k):
            weights = {n: w[j] for n, w in draws.items()}
            torch.testing.assert_close(blocks[j], torch_lstm(lstm, weights)(x)[0])


def test_lstm_flipout_decorrelates_identical_sequences() -> None:
    """As for the cells: identical sequences in one batch, n = 10 000 draws (K = n in one
    vectorised call), k = 4 units of the last output, α = 1e-3, bound from E[u²v²]/n."""
    lstm = LSTMFlipout(IN, HID, dtype=torch.float64)
    random_params(lstm, 0.02, 0.02)
    x = torch.randn(3, 1, IN, dtype=torch.float64).expand(3, 2, IN)
    with torch.no_grad(), bl.vectorized_samples(lstm, N_PASSES):
        out, _ = lstm(x.repeat(1, N_PASSES, 1))
    last = out[-1].view(N_PASSES, 2, HID)
    u, v = last[:, 0] - last[:, 0].mean(0), last[:, 1] - last[:, 1].mean(0)
    u, v = u / u.square().mean(0).sqrt(), v / v.square().mean(0).sqrt()
    r = (u * v).mean(0)
    bound = z_bonferroni(HID) * ((u * v).square().mean(0) / N_PASSES).sqrt()
    assert (r.abs() <= bound).all(), (r, bound)


def test_lstm_from_torch_copies_weights() -> None:
    ref = nn.LSTM(IN, HID, num_layers=2, bidirectional=True, batch_first=True)
    lstm = LSTMFlipout.from_torch(ref)
    assert (lstm.num_layers, lstm.bidirectional, lstm.batch_first) == (2, True, True)
    x = torch.randn(2, 5, IN)
    with bl.posterior_mean(lstm):
        torch.testing.assert_close(lstm(x), ref(x))
    with pytest.raises(TypeError, match="nn.LSTM"):
        LSTMReparameterization.from_torch(nn.GRU(IN, HID))
    lstm.flatten_parameters()  # accepted for code written against nn.LSTM


@pytest.mark.parametrize(
    ("cls", "old", "torch_layer"),
    [
        (LSTMFlipout, "from_lstm", lambda: nn.LSTM(IN, HID)),
        (LSTMCellReparameterization, "from_lstm_cell", lambda: nn.LSTMCell(IN, HID)),
        (GRUCellFlipout, "from_gru_cell", lambda: nn.GRUCell(IN, HID)),
    ],
    ids=["from_lstm", "from_lstm_cell", "from_gru_cell"],
)
def test_old_converter_names_warn_and_work(cls: type, old: str, torch_layer: Callable) -> None:
    ref = torch_layer()
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use .*from_torch"):
        layer = getattr(cls, old)(ref)
    assert type(layer) is cls
    for name, p in ref.named_parameters():
        torch.testing.assert_close(layer.point(name), p, rtol=0, atol=0)


def test_converters_are_registered() -> None:
    from bayesian_layers.layers.registry import counterparts

    for torch_cls, flipout, rep in [
        (nn.LSTM, LSTMFlipout, LSTMReparameterization),
        (nn.LSTMCell, LSTMCellFlipout, LSTMCellReparameterization),
        (nn.GRUCell, GRUCellFlipout, GRUCellReparameterization),
    ]:
        assert dict(counterparts(torch_cls)) == {"flipout": flipout, "reparameterization": rep}


# ======================================================================= pure kernels
def test_gradcheck_recurrent_kernels() -> None:
    """``gradcheck`` (float64) on every kernel, noise and signs held fixed."""

    def t(*shape: int) -> Tensor:
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    def signs(*shape: int) -> Tensor:
        return torch.randint(0, 2, shape).double() * 2 - 1

    k, rows, hid = 3, 2, 2
    x, h, c = t(k * rows, IN), t(k * rows, hid), t(k * rows, hid)
    s_in, s_out = signs(k * rows, IN), signs(k * rows, 4 * hid)
    loc, delta, bias = t(4 * hid, IN), t(4 * hid, IN), t(4 * hid)
    delta_k, bias_k = t(k, 4 * hid, IN), t(k, 4 * hid)
    assert torch.autograd.gradcheck(
        lambda *a: K.flipout_matmul(*a[:3], s_in, s_out, a[3]), (x, loc, delta, bias)
    )
    assert torch.autograd.gradcheck(
        lambda *a: K.flipout_matmul(*a[:3], s_in, s_out, a[3], k), (x, loc, delta_k, bias_k)
    )
    assert torch.autograd.gradcheck(K.lstm_pointwise, (t(rows, 4 * hid), t(rows, hid)))
    assert torch.autograd.gradcheck(
        K.gru_pointwise, (t(rows, 3 * hid), t(rows, 3 * hid), t(rows, hid))
    )
    w_ih, w_hh, b = t(k, 4 * hid, IN), t(k, 4 * hid, hid), t(4 * hid)
    assert torch.autograd.gradcheck(
        lambda *a: K.lstm_cell(a[0], (a[1], a[2]), a[3:], k), (x, h, c, w_ih, w_hh, b, b)
    )
    g_ih, g_hh = t(k, 3 * hid, IN), t(k, 3 * hid, hid)
    assert torch.autograd.gradcheck(
        lambda *a: K.gru_cell(a[0], a[1], (*a[2:], None, None), k), (x, h, g_ih, g_hh)
    )
    # one Flipout LSTM direction over 3 steps, both directions, K = 1
    xs, h0, c0 = t(rows, 3, IN), t(rows, hid), t(rows, hid)
    signs = (signs(rows, IN), signs(rows, 4 * hid), signs(rows, hid), signs(rows, 4 * hid))
    ih, hh = (t(4 * hid, IN), t(4 * hid, IN)), (t(4 * hid, hid), t(4 * hid, hid))
    for reverse in (False, True):
        assert torch.autograd.gradcheck(
            lambda *a, reverse=reverse: K.flipout_lstm_direction(
                a[0], a[1], a[2], a[3:5], a[5:7], a[7], None, signs, 1, reverse
            ),
            (xs, h0, c0, *ih, *hh, t(4 * hid)),
        )


def test_kernels_agree_with_torch_cells() -> None:
    """Values: the pointwise kernels and the K-sample paths equal torch's fused cells."""
    k, rows, hid = 3, 2, 5
    x, h, c = torch.randn(k * rows, IN), torch.randn(k * rows, hid), torch.randn(k * rows, hid)
    for gates, ref in ((4, torch.lstm_cell), (3, torch.gru_cell)):
        w_ih, w_hh = torch.randn(k, gates * hid, IN), torch.randn(k, gates * hid, hid)
        b_ih, b_hh = torch.randn(k, gates * hid), torch.randn(gates * hid)
        state = (h, c) if gates == 4 else h
        kernel = K.lstm_cell if gates == 4 else K.gru_cell
        got = kernel(x, state, (w_ih, w_hh, b_ih, b_hh), k)
        for j in range(k):
            sl = slice(j * rows, (j + 1) * rows)
            part = (h[sl], c[sl]) if gates == 4 else h[sl]
            expected = ref(x[sl], part, w_ih[j], w_hh[j], b_ih[j], b_hh)
            torch.testing.assert_close(
                got[0][sl] if gates == 4 else got[sl], expected[0] if gates == 4 else expected
            )
    # Flipout: example b sees the weight μ + Δ ∘ (s_out[b] s_in[b]ᵀ)
    loc, delta, bias = torch.randn(4, IN), torch.randn(4, IN), torch.randn(4)
    s_in, s_out = torch.randint(0, 2, (6, IN)) * 2.0 - 1, torch.randint(0, 2, (6, 4)) * 2.0 - 1
    out = K.flipout_matmul(x, loc, delta, s_in, s_out, bias)
    for b in range(6):
        w = loc + delta * torch.outer(s_out[b], s_in[b])
        torch.testing.assert_close(out[b], w @ x[b] + bias)
    assert math.isfinite(float(out.sum()))
