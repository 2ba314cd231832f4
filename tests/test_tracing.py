"""trace / traceable / tape / condition / make_log_joint_fn, and layer weights as traced RVs."""

from __future__ import annotations

import math
import threading
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from test_random_variables import CONSTRUCTORS
from test_random_variables import _args as constructor_args
from torch import nn

import bayesian_layers as bl
from bayesian_layers import layers, tracing
from bayesian_layers import random_variables as rvs

# ------------------------------------------------------------------ programs


def hierarchical(num_groups: int = 3):
    """mu ~ N(0, 2); sigma ~ HalfNormal(1); theta_j ~ N(mu, sigma); y_j ~ N(theta_j, 0.5)."""
    mu = bl.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0, name="mu")
    sigma = bl.HalfNormal(torch.tensor(1.0, dtype=torch.float64), name="sigma")
    theta = bl.Normal(mu, sigma, sample_shape=(num_groups,), name="theta")
    return bl.Normal(theta, 0.5, name="y")


def small():
    z = bl.Normal(0.0, 1.0, name="z")
    w = bl.Normal(z, 2.0, sample_shape=(2,), name="w")
    return bl.Normal(w.sum(), 0.5, name="x")


def test_log_joint_equals_scipy_sum_of_log_densities():
    mu, sigma = 0.3, 0.7
    theta = np.array([-0.2, 0.5, 1.1])
    y = np.array([0.1, 0.4, 2.0])
    log_joint = bl.make_log_joint_fn(hierarchical)
    f64 = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    got = log_joint(mu=f64(mu), sigma=f64(sigma), theta=f64(theta), y=f64(y))
    expected = (
        stats.norm.logpdf(mu, 0.0, 2.0)
        + stats.halfnorm.logpdf(sigma, scale=1.0)
        + stats.norm.logpdf(theta, mu, sigma).sum()
        + stats.norm.logpdf(y, theta, 0.5).sum()
    )
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_log_joint_program_arguments_and_gradients():
    """Arguments named like the program's parameters go to it (here 4 groups); the log
    joint's gradient in mu is the analytic -mu/4 + Σ_j (theta_j - mu)/sigma²."""
    log_joint = bl.make_log_joint_fn(hierarchical)
    mu = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(0.8, dtype=torch.float64)
    theta = torch.tensor([0.1, -0.4, 0.9, 1.2], dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.float64)
    log_joint(num_groups=4, mu=mu, sigma=sigma, theta=theta, y=y).backward()
    expected = -0.3 / 4 + float((theta - 0.3).sum()) / 0.8**2
    assert float(mu.grad) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="shape"):  # 4 groups given, 3 expected
        log_joint(mu=mu, sigma=sigma, theta=theta, y=y)


def test_log_joint_rejects_unknown_names():
    with pytest.raises(ValueError, match="no random variable named \\['nope'\\]"):
        bl.make_log_joint_fn(small)(nope=torch.tensor(0.0))
    with pytest.raises(TypeError, match="callable"):
        bl.make_log_joint_fn(3)


# ------------------------------------------------------------------ condition / tape


def test_condition_fixes_values_and_downstream_parameters():
    z = torch.tensor(1.5)
    with bl.tape() as t, bl.condition(z=z):
        small()
    assert torch.equal(t["z"].value, z)
    assert torch.equal(t["w"].distribution.loc, z)  # w's loc is the fixed z
    x = torch.tensor(-3.0)
    with bl.condition(t["w"], {"x": x}):  # a named RV and a mapping, positionally
        out = small()
    assert torch.equal(out.value, x)


def test_tape_records_names_in_creation_order():
    def program():
        a = bl.Normal(0.0, 1.0, name="a")
        bl.Normal(0.0, 1.0)  # unnamed: not recorded
        c = bl.Bernoulli(probs=0.5, name="c")
        b = bl.Normal(a + c, 1.0, name="b")
        return bl.Normal(b, 1.0, name="a")  # "a" again: keeps its place, latest value

    with bl.tape() as t:
        last = program()
    assert list(t) == ["a", "c", "b"]
    assert t["a"] is last


def test_tracers_nest_innermost_first():
    calls = []

    def logger(tag):
        def tracer(f, *args, **kwargs):
            calls.append(tag)
            return f(*args, **kwargs)

        return tracer

    with bl.trace(logger("outer")), bl.trace(logger("inner")):
        bl.Normal(0.0, 1.0)
    assert calls == ["inner", "outer"]


def test_tracer_changes_arguments_and_traceable_functions():
    @bl.traceable
    def shifted(loc, *, name=None, value=None):
        return bl.Normal(loc, 1.0, name=name, value=value)

    seen = []

    def tracer(f, *args, **kwargs):
        seen.append(f)
        if f is shifted:
            args = (args[0] + 10.0,)
        return f(*args, **kwargs)

    with bl.trace(tracer):
        rv = shifted(torch.tensor(0.0), name="s")
    assert float(rv.distribution.loc) == 10.0
    # while a tracer runs it is off the stack: what its `f` builds goes to outer tracers only
    assert seen == [shifted]


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_every_constructor_survives_a_pass_through_tracer(name):
    """Each public constructor reaches the tracer, and its arguments round-trip through
    it: the taped variable has the log-density of the distribution built directly."""
    args, kwargs, _ = constructor_args()[name]
    constructor = getattr(rvs, name)
    seen = []

    def passthrough(f, *a, **k):
        seen.append(f)
        return f(*a, **k)

    with bl.trace(passthrough), bl.tape() as t:
        rv = constructor(*args, **kwargs, name=name)
    assert seen == [constructor] and list(t) == [name] and t[name] is rv
    direct = type(rv.distribution)(*args, **kwargs)
    assert torch.equal(rv.log_prob(rv.value), direct.log_prob(rv.value))


def test_stack_restored_after_exception():
    def failing():
        bl.Normal(0.0, 1.0, name="z")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with bl.tape(), bl.condition(z=0.0):
            failing()
    assert tracing._stack() == [] and tracing._active == 0 and tracing._hooks == []
    assert not tracing.is_tracing()

    def bad_tracer(f, *args, **kwargs):
        raise KeyError("tracer failed")

    with bl.tape() as outer:
        with pytest.raises(KeyError):
            with bl.trace(bad_tracer):
                bl.Normal(0.0, 1.0, name="lost")
        bl.Normal(0.0, 1.0, name="kept")  # the outer tape still works
    assert list(outer) == ["kept"]
    assert tracing._stack() == [] and tracing._active == 0


def test_condition_rejects_bad_input():
    with pytest.raises(ValueError, match="without a name"):
        with bl.condition(bl.Normal(0.0, 1.0)):
            pass
    with pytest.raises(TypeError, match="str names"):
        with bl.condition({1: 0.0}):
            pass
    with pytest.raises(TypeError, match="for 'z'"):
        with bl.condition(z="zero"):
            pass
    with pytest.raises(TypeError, match="callable tracer"):
        with bl.trace(None):
            pass


def test_tracing_is_thread_local():
    recorded = {}

    def other_thread():
        recorded["traced"] = tracing.is_tracing()
        with bl.tape() as t:
            bl.Normal(0.0, 1.0, name="other")
        recorded["names"] = list(t)

    with bl.tape() as t:
        bl.Normal(0.0, 1.0, name="main")
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert list(t) == ["main"]
    assert recorded == {"traced": False, "names": ["other"]}


# ------------------------------------------------------------------ properties

NAMES = ("z", "w", "x")
SHAPES = {"z": (), "w": (2,), "x": ()}


@st.composite
def value_sets(draw):
    names = draw(st.sets(st.sampled_from(NAMES)))
    out = {}
    for n in sorted(names):
        values = draw(
            st.lists(
                st.floats(-5, 5, allow_nan=False),
                min_size=max(1, int(np.prod(SHAPES[n]))),
                max_size=max(1, int(np.prod(SHAPES[n]))),
            )
        )
        out[n] = torch.tensor(values).reshape(SHAPES[n])
    return out


def _run(*contexts):
    torch.manual_seed(1)
    with bl.tape() as t:
        for c in contexts:
            c.__enter__()
        try:
            small()
        finally:
            for c in reversed(contexts):
                c.__exit__(None, None, None)
    return {n: (rv.value, rv.log_prob(rv.value)) for n, rv in t.items()}


def _same(a, b):
    return list(a) == list(b) and all(
        torch.equal(a[n][0], b[n][0]) and torch.equal(a[n][1], b[n][1]) for n in a
    )


@settings(derandomize=True, database=None, max_examples=25, deadline=None)
@given(values=value_sets())
def test_conditioning_twice_is_idempotent(values):
    once = _run(bl.condition(values))
    twice = _run(bl.condition(values), bl.condition(values))
    assert _same(once, twice)
    for n, v in values.items():
        assert torch.equal(once[n][0], v)


@settings(derandomize=True, database=None, max_examples=25, deadline=None)
@given(values=value_sets())
def test_tracing_commutes_with_conditioning(values):
    """A tape outside or inside ``condition`` records the same variables and values."""
    torch.manual_seed(1)
    with bl.tape() as outer, bl.condition(values):
        small()
    torch.manual_seed(1)
    with bl.condition(values), bl.tape() as inner:
        small()
    a = {n: (rv.value, rv.log_prob(rv.value)) for n, rv in outer.items()}
    b = {n: (rv.value, rv.log_prob(rv.value)) for n, rv in inner.items()}
    assert _same(a, b)
    # and the log joint agrees with the conditioned run when every value is given
    full = {n: rv.value for n, rv in outer.items()}
    expected = sum(rv.log_prob(rv.value).sum() for rv in outer.values())
    assert torch.allclose(bl.make_log_joint_fn(small)(**full), expected)


# ------------------------------------------------------------------ layer weights


def _models():
    torch.manual_seed(3)
    linear_stack = nn.Sequential(
        layers.LinearFlipout(3, 5),
        nn.ReLU(),
        nn.Sequential(
            layers.LinearLocalReparameterization(5, 4, bias_initializer="trainable_normal")
        ),
        layers.LinearReparameterization(4, 2),
    )
    conv = nn.Sequential(
        layers.Conv2dFlipout(2, 3, 3), nn.ReLU(), layers.Conv2dReparameterization(3, 1, 1)
    )
    return [
        (linear_stack, torch.randn(6, 3), ["0.weight", "2.0.weight", "2.0.bias", "3.weight"]),
        (conv, torch.randn(2, 2, 6, 6), ["0.weight", "2.weight"]),
        (layers.LSTMFlipout(3, 4), torch.randn(5, 2, 3), None),
        (layers.MultiheadAttentionFlipout(4, 2), torch.randn(3, 2, 4), None),
    ]


def _out(model, x):
    if isinstance(model, layers.MultiheadAttentionFlipout):
        return model(x, x, x)[0]
    y = model(x)
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("index", range(4), ids=["linear", "conv", "lstm", "attention"])
def test_layer_weights_are_traced_by_module_path(index):
    model, x, names = _models()[index]
    with bl.tape() as t:
        y = _out(model, x)
    assert t, "every whole weight draw is recorded"
    if names is not None:
        assert list(t) == names
    for n, rv in t.items():
        assert isinstance(rv, tracing.LayerParameter), n
        module_name, _, param = n.rpartition(".")
        owner = model.get_submodule(module_name) if module_name else model
        assert rv.layer is owner and rv.param == param
        assert rv.shape == owner.random_variable(param).distribution.mean.shape
    # substituting the recorded draws reproduces the output exactly
    with bl.condition({n: rv.value.detach() for n, rv in t.items()}):
        again = _out(model, x)
    torch.testing.assert_close(again, y.detach(), rtol=0, atol=0)


def test_traced_draws_use_the_noise_the_layer_drew():
    """A recurrent cell draws its weights' noise once per sequence, then each whole
    weight from it: traced, those draws are the random variables, so with the same
    seed the output is the untraced one."""
    x = torch.randn(2, 3)
    torch.manual_seed(4)
    expected = layers.LSTMCellReparameterization(3, 4)(x)[0]
    torch.manual_seed(4)
    cell = layers.LSTMCellReparameterization(3, 4)
    with bl.tape() as t:
        got = cell(x)[0]
    assert list(t) == ["weight_ih", "weight_hh"]
    assert torch.equal(got, expected)


@pytest.mark.parametrize("index", range(4), ids=["linear", "conv", "lstm", "attention"])
def test_posterior_mean_tracer_equals_posterior_mean_mode(index):
    model, x, _ = _models()[index]
    with bl.trace(tracing.mean_weights):
        a, b = _out(model, x), _out(model, x)
    with bl.posterior_mean(model):
        expected = _out(model, x)
    assert torch.equal(a, b)  # deterministic
    assert torch.equal(a, expected)  # the same weights through the same code


def test_substituted_weights_are_used():
    layer = layers.LinearFlipout(3, 2)
    w = torch.randn(2, 3)
    x = torch.randn(4, 3)
    with bl.condition({"weight": w}):
        y = layer(x)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, layer.bias))
    assert torch.equal(layer.weight.value, w)  # the layer's latest draw is the substitute
    with pytest.raises(ValueError, match="LinearFlipout expected a value for 'weight' of shape"):
        with bl.condition({"weight": torch.zeros(3, 2)}):
            layer(x)


def test_vectorized_samples_share_a_substituted_weight():
    layer = layers.LinearReparameterization(3, 2)
    w = torch.randn(2, 3)
    x = torch.randn(4, 3)
    with bl.vectorized_samples(layer, 3), bl.tape() as t:
        layer(x.repeat(3, 1))
    assert t["weight"].shape == (3, 2, 3)
    with bl.vectorized_samples(layer, 3), bl.condition({"weight": w}):
        y = layer(x.repeat(3, 1)).view(3, 4, 2)
    for k in range(3):
        torch.testing.assert_close(y[k], torch.nn.functional.linear(x, w, layer.bias))


def test_recurrent_cell_traces_once_per_sequence():
    cell = layers.LSTMCellFlipout(3, 4)
    xs = torch.randn(5, 2, 3)
    with bl.tape() as t:
        state = cell.get_initial_state(xs[0])
        for x in xs:
            state = cell(x, state)
        first = t["weight_ih"]
        for x in xs:  # the same sequence continues: no new draw
            state = cell(x, state)
    assert t["weight_ih"] is first
    assert set(t) == {"weight_ih", "weight_hh"}
    with bl.condition({n: rv.value.detach() for n, rv in t.items()}), bl.tape() as t2:
        cell.get_initial_state(xs[0])
        cell(xs[0])
    assert all(torch.equal(t2[n].value, t[n].value) for n in t)


def test_frozen_mode_under_tracing_keeps_its_sample():
    layer = layers.LinearFlipout(3, 2)
    x = torch.randn(4, 3)
    with bl.frozen_sample(layer), bl.tape() as t:
        a = layer(x)
        w = t["weight"].value
        b = layer(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(t["weight"].value, w)


def test_fast_path_without_tracer():
    """No tracer: no global hooks, Flipout keeps its per-example noise (rows differ)."""
    layer = layers.LinearFlipout(
        3, 2, weight_initializer=bl.initializers.TrainableNormal(scale_init=1.0)
    )
    assert tracing._hooks == [] and not tracing.is_tracing()
    assert layer.per_example_noise()
    x = torch.ones(2, 3)
    y = layer(x)
    assert not torch.allclose(y[0], y[1])  # two examples, two weight draws
    with bl.tape():
        assert not layer.per_example_noise()
        y = layer(x)
    torch.testing.assert_close(y[0], y[1])  # one whole draw shared by the batch
    assert tracing._hooks == []


def test_mean_mode_layers_draw_nothing_to_trace():
    layer = layers.LinearReparameterization(3, 2)
    with bl.posterior_mean(layer), bl.tape() as t:
        layer(torch.randn(2, 3))
    assert list(t) == []


def test_module_names_root_names_weights_of_several_top_level_modules():
    encoder = nn.Sequential(layers.LinearReparameterization(3, 2))
    decoder = nn.Sequential(layers.LinearReparameterization(2, 3))
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="already drew"):  # both would be "0.weight"
        with bl.tape():
            decoder(encoder(x))
    both = nn.ModuleDict({"encoder": encoder, "decoder": decoder})
    with tracing.module_names(both, prefix="vae"), bl.tape() as t:
        decoder(encoder(x))
    assert list(t) == ["vae.encoder.0.weight", "vae.decoder.0.weight"]
    with pytest.raises(TypeError, match="nn.Module"):
        with tracing.module_names("model"):
            pass


def test_mean_tracer_composes_with_tape_and_condition():
    """Inner tracers act first, so when two set the value the outer one, acting last
    before construction, wins; a tape outside records what the inner tracers chose."""
    layer = layers.LinearReparameterization(3, 2)
    w = torch.randn(2, 3)
    x = torch.randn(1, 3)
    with bl.tape() as t, bl.trace(tracing.mean_weights):
        layer(x)
    assert torch.equal(t["weight"].value, layer.weight_loc)
    with bl.trace(tracing.mean_weights), bl.condition({"weight": w}):
        assert torch.equal(layer(x), nn.functional.linear(x, layer.weight_loc, layer.bias))
    with bl.condition({"weight": w}), bl.trace(tracing.mean_weights):
        assert torch.equal(layer(x), nn.functional.linear(x, w, layer.bias))


# ------------------------------------------------------------------ name collisions


def _encoder_decoder():
    torch.manual_seed(5)
    enc = nn.Sequential(layers.LinearReparameterization(4, 4))
    dec = nn.Sequential(layers.LinearReparameterization(4, 4))
    return enc, dec


def test_weights_of_different_layers_never_share_a_name():
    """``dec(enc(x))``: each top-level module names its weight ``"0.weight"``. Recording
    or conditioning them under one name would merge two random variables: it raises,
    naming the layer and the fix; ``name_scope`` gives distinct names."""
    enc, dec = _encoder_decoder()
    x, w = torch.randn(2, 4), torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"LinearReparameterization.*'0\.weight'.*name_scope"):
        with bl.tape():
            dec(enc(x))
    with pytest.raises(ValueError, match=r"'0\.weight'"):
        with bl.condition({"0.weight": w}):
            dec(enc(x))
    with bl.condition({"dec.0.weight": w}), bl.tape() as t:
        with tracing.name_scope("enc"):
            h = enc(x)
        with tracing.name_scope("dec"):
            y = dec(h)
    assert list(t) == ["enc.0.weight", "dec.0.weight"]
    assert t["enc.0.weight"].layer is enc[0] and t["dec.0.weight"].layer is dec[0]
    assert torch.equal(t["dec.0.weight"].value, w)  # only the decoder's weight replaced
    assert not torch.equal(t["enc.0.weight"].value, w)
    torch.testing.assert_close(y, nn.functional.linear(h, w, dec[0].bias), rtol=0, atol=0)


def test_one_layer_called_twice_keeps_one_name():
    layer = layers.LinearReparameterization(4, 4)
    model = nn.Sequential(layer, nn.ReLU(), layer)  # a shared layer: one path, "0"
    x = torch.randn(2, 4)
    with bl.tape() as t:
        layer(layer(x))
        first = t["weight"]
        layer(x)
    assert list(t) == ["weight"] and t["weight"] is not first
    with bl.tape() as t:
        model(x)
    assert list(t) == ["0.weight"]


def test_name_scopes_nest_and_prefix_module_paths():
    enc, dec = _encoder_decoder()
    both = nn.ModuleDict({"enc": enc, "dec": dec})
    x = torch.randn(2, 4)
    with bl.tape() as t, tracing.name_scope("vae"):
        with tracing.name_scope("a.b"):
            enc(x)
        with tracing.module_names(both):
            dec(x)
    assert list(t) == ["vae.a.b.0.weight", "vae.dec.0.weight"]
    with pytest.raises(ValueError, match="name_scope expected `prefix`.*non-empty.*got ''"):
        with tracing.name_scope(""):
            pass
    with pytest.raises(TypeError, match="name_scope expected `prefix`.*str.*got int"):
        with tracing.name_scope(3):
            pass


# ------------------------------------------------------------------ explicit values, unused names


def two_normals():
    """z ~ N(0, 1); x ~ N(z, 1)."""
    z = bl.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0, name="z")
    return bl.Normal(z, 1.0, name="x")


def test_explicit_log_joint_values_win_over_a_surrounding_condition():
    """log N(0; 0, 1) + log N(0; 0, 1) = -log 2π whatever a surrounding condition says
    about z; a name the call leaves out still takes the surrounding value."""
    log_joint = bl.make_log_joint_fn(two_normals)
    zero = torch.tensor(0.0, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"\['z'\]"), bl.condition(z=5.0), bl.tape() as t:
        got = log_joint(z=zero, x=zero)
    assert float(got) == pytest.approx(-math.log(2 * math.pi), rel=1e-12)
    assert float(t["z"].value) == 0.0  # a surrounding tape records the explicit value
    with bl.condition(z=5.0):
        got = log_joint(x=zero)
    expected = stats.norm.logpdf(5.0) + stats.norm.logpdf(0.0, 5.0)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_condition_warns_once_about_names_no_variable_took():
    """A misspelt name warns once when the context exits, listing the names seen; a
    name used by any of the calls inside does not warn; an exception does not warn."""
    with pytest.warns(UserWarning) as record:
        with bl.condition(zz=1.0, z=0.5):
            small()
            small()
    assert len(record) == 1
    message = str(record[0].message)
    assert "['zz']" in message and "['w', 'x', 'z']" in message and "condition" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with bl.condition(z=0.5, x=1.0):
            bl.Normal(0.0, 1.0, name="z")
            bl.Normal(0.0, 1.0, name="x")
        with pytest.raises(RuntimeError, match="boom"):
            with bl.condition(nope=1.0):
                raise RuntimeError("boom")


# ------------------------------------------------------------------ threads and exceptions


class _Fails(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_tracing_state_is_restored_when_a_traced_call_raises():
    """A module that raises inside a scoped, conditioned trace, then a name collision:
    afterwards no tracer, hook, scope, open module call or recorded name is left, so
    the next traces name weights from their own outermost module again."""
    enc, dec = _encoder_decoder()
    x = torch.randn(2, 4)
    broken = nn.Sequential(enc, _Fails())
    w = torch.zeros(4, 4)
    with pytest.raises(RuntimeError, match="boom"):
        with tracing.name_scope("s"), bl.tape() as t, bl.condition({"s.0.0.weight": w}):
            broken(x)
    assert list(t) == ["s.0.0.weight"]
    with pytest.raises(ValueError, match="name_scope"):
        with bl.tape():
            dec(enc(x))
    assert tracing._stack() == [] and tracing._active == 0 and tracing._hooks == []
    for make in (lambda: dec(x), lambda: enc(x)):  # one trace each: no collision
        with bl.tape() as t:
            make()
        assert list(t) == ["0.weight"]


def test_module_paths_and_scopes_are_thread_local():
    """Two threads trace at once, each pausing inside its outermost module call until
    the other is inside its own: each names its weight from its own module and scope."""
    barrier = threading.Barrier(2, timeout=10)

    class Pause(nn.Module):
        def forward(self, x):
            barrier.wait()
            return x

    results = {}

    def run(tag):
        model = nn.Sequential(Pause(), nn.Sequential(layers.LinearReparameterization(3, 3)))
        try:
            with tracing.name_scope(tag), bl.tape() as t:
                model(torch.randn(1, 3))
            results[tag] = (list(t), t[f"{tag}.1.0.weight"].layer is model[1][0])
        except Exception as error:  # reported below, not lost in the thread
            results[tag] = error

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"a": (["a.1.0.weight"], True), "b": (["b.1.0.weight"], True)}
    assert tracing._active == 0 and tracing._hooks == []
