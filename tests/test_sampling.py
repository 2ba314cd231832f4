"""Tests for ``bayesian_layers.sampling`` (sampling modes of a whole model) and for
``layers.MCDropout``, whose behaviour is those modes."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from stats_util import z_bonferroni
from torch import nn

import bayesian_layers as bl
from bayesian_layers import layers


def make_model() -> nn.Sequential:
    return nn.Sequential(
        layers.LinearReparameterization(3, 8, bias_initializer="trainable_normal"),
        nn.ReLU(),
        layers.LinearFlipout(8, 8),
        layers.MCDropout(0.3),
        layers.LinearLocalReparameterization(8, 2),
    )


def modes(model: nn.Module) -> list[str]:
    return [m.sampling for m in bl.bayesian_modules(model)]


def posterior_mean_output(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The model run on posterior means, by hand."""
    for m in model:
        if isinstance(m, layers.MCDropout):
            continue
        if isinstance(m, layers.BayesianLayer):
            bias = m.bias_loc if isinstance(m.bias, bl.RandomVariable) else m.bias
            x = F.linear(x, m.weight_loc, bias)
        else:
            x = m(x)
    return x


# ======================================================================== modes
def test_bayesian_modules_each_once() -> None:
    shared = layers.LinearFlipout(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, layers.MCDropout(), nn.Linear(4, 4))
    found = list(bl.bayesian_modules(model))
    assert len(found) == 2 and found[0] is shared
    assert list(bl.bayesian_modules(shared)) == [shared]
    assert list(bl.bayesian_modules(nn.Linear(2, 2))) == []
    with pytest.raises(TypeError, match="nn.Module"):
        list(bl.bayesian_modules("model"))  # type: ignore[arg-type]


def test_set_sampling_sets_every_layer_and_returns_previous() -> None:
    model = make_model()
    assert modes(model) == ["sample"] * 4
    model[0].sampling = "frozen"
    previous = bl.set_sampling(model, "mean")
    assert modes(model) == ["mean"] * 4
    assert list(previous.values()) == ["frozen", "sample", "sample", "sample"]
    assert list(previous) == list(bl.bayesian_modules(model))
    with pytest.raises(ValueError, match="set_sampling.*'means'"):
        bl.set_sampling(model, "means")
    assert modes(model) == ["mean"] * 4  # unchanged by the failed call


def test_posterior_mean_context() -> None:
    model = make_model()
    model[2].sampling = "frozen"
    before = modes(model)
    x = torch.randn(5, 3)
    with bl.posterior_mean(model) as inner:
        assert inner is model
        assert modes(model) == ["mean"] * 4
        out = model(x)
        torch.testing.assert_close(model(x), out, rtol=0, atol=0)
        torch.testing.assert_close(out, posterior_mean_output(model, x))
    assert modes(model) == before
    with pytest.raises(RuntimeError, match="boom"), bl.posterior_mean(model):
        raise RuntimeError("boom")
    assert modes(model) == before


def test_frozen_sample_context() -> None:
    model = make_model()
    x = torch.randn(5, 3)
    with bl.frozen_sample(model):
        assert modes(model) == ["frozen"] * 4
        first = model(x)
        torch.testing.assert_close(model(x), first, rtol=0, atol=0)
        with bl.posterior_mean(model):  # nesting: restores "frozen" on exit
            torch.testing.assert_close(model(x), posterior_mean_output(model, x))
        assert modes(model) == ["frozen"] * 4
        torch.testing.assert_close(model(x), first, rtol=0, atol=0)
        bl.resample(model)
        second = model(x)
        assert not torch.allclose(second, first)
        torch.testing.assert_close(model(x), second, rtol=0, atol=0)
    assert modes(model) == ["sample"] * 4
    with bl.frozen_sample(model):  # a new context is a new function
        third = model(x)
    assert not torch.allclose(third, second)
    with pytest.raises(RuntimeError, match="boom"), bl.frozen_sample(model):
        raise RuntimeError("boom")
    assert modes(model) == ["sample"] * 4


def test_frozen_sample_gradients_reach_posterior_parameters() -> None:
    model = make_model()
    with bl.frozen_sample(model):
        model(torch.randn(5, 3)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_vectorized_samples_context() -> None:
    model = make_model()
    with bl.vectorized_samples(model, 4):
        assert [m.num_function_samples for m in bl.bayesian_modules(model)] == [4] * 4
        assert model(torch.randn(4 * 5, 3)).shape == (20, 2)
    assert [m.num_function_samples for m in bl.bayesian_modules(model)] == [1] * 4
    with pytest.raises(RuntimeError, match="boom"), bl.vectorized_samples(model, 3):
        raise RuntimeError("boom")
    assert [m.num_function_samples for m in bl.bayesian_modules(model)] == [1] * 4
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="num_samples"), bl.vectorized_samples(model, bad):
            pass


# ==================================================================== MCDropout
@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_mc_dropout_rejects_p_outside_unit_interval(p: float) -> None:
    with pytest.raises(ValueError, match=r"MCDropout.*\[0, 1\)"):
        layers.MCDropout(p)


def test_mc_dropout_rejects_non_numbers() -> None:
    for bad in (True, "0.5", None):
        with pytest.raises(TypeError, match="MCDropout"):
            layers.MCDropout(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="MCDropout"):
        layers.MCDropout()([1.0, 2.0])  # type: ignore[arg-type]


def test_mc_dropout_stays_on_in_eval_and_mean_is_identity() -> None:
    drop = layers.MCDropout(0.5).eval()
    x = torch.randn(1000) + 5.0
    out = drop(x)
    assert (out == 0).any() and not torch.equal(drop(x), out)
    model = nn.Sequential(nn.Linear(4, 4), drop).eval()
    assert not torch.equal(model(torch.ones(2, 4)), model(torch.ones(2, 4)))
    with bl.posterior_mean(drop):
        assert drop(x) is x or torch.equal(drop(x), x)
    assert torch.equal(layers.MCDropout(0.0)(x), x)
    assert drop.losses == [] and list(drop.parameters()) == []
    assert "p=0.5" in repr(drop)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mc_dropout_rate_matches_p(p: float) -> None:
    """Fraction of zeros among N = 200 000 elements vs p: half-width
    z(1 - α/2k)·sqrt(p(1-p)/N), k = 3 rates, α = 1e-3. Kept elements are scaled
    by 1/(1-p) so that the mean is preserved."""
    n = 200_000
    out = layers.MCDropout(p)(torch.ones(n))
    dropped = (out == 0).double().mean().item()
    assert abs(dropped - p) <= z_bonferroni(3) * math.sqrt(p * (1 - p) / n)
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))


def test_mc_dropout_frozen_mask_is_one_function() -> None:
    """Frozen: one mask over the non-batch dims, the same units dropped for every example."""
    drop = layers.MCDropout(0.5)
    x = torch.rand(6, 4, 50) + 1.0
    with bl.frozen_sample(drop):
        first = drop(x)
        torch.testing.assert_close(drop(x), first, rtol=0, atol=0)
        zero = first == 0
        assert zero.any() and (zero == zero[:1]).all()  # same pattern for every example
        torch.testing.assert_close(drop(x[:2]), first[:2])  # another batch size
        bl.resample(drop)
        assert not torch.equal(drop(x) == 0, zero)
    with bl.frozen_sample(drop), bl.vectorized_samples(drop, 3):
        out = drop(torch.ones(3 * 4, 50)).view(3, 4, 50)
        zero = out == 0
        assert (zero == zero[:, :1]).all()  # one mask per function sample...
        assert not torch.equal(zero[0], zero[1])  # ...different across samples
        with pytest.raises(ValueError, match="multiple of 3"):
            drop(torch.ones(4, 50))


# ====================================================== contexts and threads
def _two_threads(first: Callable[[Step], None], second: Callable[[Step], None]) -> None:
    """Run ``first`` and ``second`` in two threads, stepping in the order the ``Step``
    calls give (a condition variable hands the turn over), and re-raise any error."""
    turn = threading.Condition()
    state = {"step": 0}
    errors: list[BaseException] = []

    def step(n: int) -> None:  # wait until it is step n, then run it and pass on
        with turn:
            if not turn.wait_for(lambda: state["step"] == n, timeout=10):
                raise TimeoutError(f"step {n} never came")

    def done(n: int) -> None:
        with turn:
            state["step"] = n + 1
            turn.notify_all()

    def run(fn: Callable[[Step], None]) -> None:
        try:
            fn(Step(step, done))
        except BaseException as error:  # noqa: BLE001 - re-raised below
            errors.append(error)
            with turn:
                state["step"] = -1
                turn.notify_all()

    threads = [threading.Thread(target=run, args=(f,)) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class Step:
    def __init__(self, wait: Callable[[int], None], done: Callable[[int], None]) -> None:
        self.wait, self.done = wait, done


def test_contexts_in_two_threads_exit_out_of_order() -> None:
    """Thread A enters posterior_mean, B enters frozen_sample, A exits, B exits (the
    order that used to leave the model in "mean" for good). Each thread sees only its
    own context, and afterwards every layer samples again, in both threads."""
    torch.manual_seed(0)
    model = make_model()
    x = torch.randn(4, 3)
    mean_out = posterior_mean_output(model, x)
    seen: dict[str, object] = {}

    def a(s: Step) -> None:
        s.wait(0)
        with bl.posterior_mean(model):
            s.done(0)
            s.wait(2)  # B is inside frozen_sample now
            seen["a_modes"] = modes(model)
            seen["a_out"] = model(x)
        s.done(2)

    def b(s: Step) -> None:
        s.wait(1)
        with bl.frozen_sample(model):
            seen["b_modes"] = modes(model)
            s.done(1)
            s.wait(3)  # A has left its context
            seen["b_same"] = torch.equal(model(x), model(x))
        s.done(3)

    _two_threads(a, b)
    assert seen["a_modes"] == ["mean"] * 4
    assert seen["b_modes"] == ["frozen"] * 4
    torch.testing.assert_close(seen["a_out"], mean_out)
    assert seen["b_same"] is True
    assert modes(model) == ["sample"] * 4
    assert not torch.equal(model(x), model(x))


def test_contexts_exit_out_of_order_in_one_thread() -> None:
    """Contexts left in a different order than entered (e.g. by generators) remove only
    their own override: the innermost remaining context decides."""
    model = make_model()
    mean = bl.posterior_mean(model)
    frozen = bl.frozen_sample(model)
    mean.__enter__()
    frozen.__enter__()
    assert modes(model) == ["frozen"] * 4
    mean.__exit__(None, None, None)
    assert modes(model) == ["frozen"] * 4
    frozen.__exit__(None, None, None)
    assert modes(model) == ["sample"] * 4


def test_vectorized_samples_is_per_thread() -> None:
    model = make_model()
    seen: dict[str, list[int]] = {}

    def a(s: Step) -> None:
        s.wait(0)
        with bl.vectorized_samples(model, 3):
            s.done(0)
            s.wait(2)
            seen["a"] = [m.num_function_samples for m in bl.bayesian_modules(model)]
        s.done(2)

    def b(s: Step) -> None:
        s.wait(1)
        seen["b"] = [m.num_function_samples for m in bl.bayesian_modules(model)]
        with bl.vectorized_samples(model, 2):
            s.done(1)
            s.wait(3)
            seen["b_inner"] = [m.num_function_samples for m in bl.bayesian_modules(model)]
        s.done(3)

    _two_threads(a, b)
    assert seen == {"a": [3] * 4, "b": [1] * 4, "b_inner": [2] * 4}
    assert [m.num_function_samples for m in bl.bayesian_modules(model)] == [1] * 4


def test_assignment_and_set_sampling_still_set_every_thread() -> None:
    model = make_model()
    layer = model[0]
    layer.sampling = "mean"
    seen: list[str] = []
    worker = threading.Thread(target=lambda: seen.append(layer.sampling))
    worker.start()
    worker.join()
    assert seen == ["mean"]
    bl.set_sampling(model, "sample")
    with bl.posterior_mean(model):
        layer.sampling = "frozen"  # the layer's own mode; the context still decides here
        assert layer.sampling == "mean"
    assert layer.sampling == "frozen"
    with pytest.raises(ValueError, match=r"LinearReparameterization expected `sampling` in"):
        layer.sampling = "means"
    with pytest.raises(ValueError, match=r"expected `num_function_samples` >= 1, got 0"):
        layer.num_function_samples = 0


def test_frozen_sample_contexts_in_two_threads_are_separate_samples() -> None:
    """Each frozen_sample context keeps its own function sample, even while another
    thread's frozen_sample context starts and ends."""
    torch.manual_seed(0)
    model = make_model()
    x = torch.randn(4, 3)
    seen: dict[str, bool] = {}

    def a(s: Step) -> None:
        s.wait(0)
        with bl.frozen_sample(model):
            first = model(x)
            s.done(0)
            s.wait(2)  # B entered, called and left its own frozen context
            seen["a_kept"] = torch.equal(model(x), first)
        s.done(2)

    def b(s: Step) -> None:
        s.wait(1)
        with bl.frozen_sample(model):
            model(x)
        s.done(1)

    _two_threads(a, b)
    assert seen == {"a_kept": True}
