"""Tests for the Bayesian convolutions (``bayesian_layers.layers.conv``, ``conv_base``)
and their pure kernels (``bayesian_layers.layers.functional.convolution``).

1. A contract suite over a registry of every convolution (one line per layer),
   including a hypothesis grid of configurations checked against the torch layer.
2. Closed-form output moments of each estimator; Flipout/LRT decorrelation.
3. Vectorised K samples against loops; ``gradcheck`` on the kernels.
"""

from __future__ import annotations

import inspect
import io
import math
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stats_util import z_bonferroni
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

import bayesian_layers as bl
from bayesian_layers.layers import conv as C
from bayesian_layers.layers import conv_base
from bayesian_layers.layers.functional import convolution as K
from bayesian_layers.regularizers import NormalKLDivergence

# The registry: a new convolution is one line here.
LAYERS: list[type[conv_base.BayesianConvNd]] = [
    C.Conv1dReparameterization,
    C.Conv2dReparameterization,
    C.Conv3dReparameterization,
    C.Conv1dFlipout,
    C.Conv2dFlipout,
    C.Conv3dFlipout,
    C.Conv2dLocalReparameterization,
    C.ConvTranspose1dReparameterization,
    C.ConvTranspose2dReparameterization,
    C.ConvTranspose3dReparameterization,
    C.ConvTranspose1dFlipout,
    C.ConvTranspose2dFlipout,
    C.ConvTranspose3dFlipout,
]
LAYER_IDS = [cls.__name__ for cls in LAYERS]
parametrize_layers = pytest.mark.parametrize("cls", LAYERS, ids=LAYER_IDS)

IN, OUT = 4, 6
SIZE = {1: 9, 2: 6, 3: 4}  # spatial extent of test inputs per dimension count
RANDOM_BIAS = {"bias_initializer": "trainable_normal", "bias_regularizer": "normal_kl_divergence"}
HYPOTHESIS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=12,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    # One intra-op thread: these tensors are tiny and thread hand-off dominates otherwise.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def whole_weight(cls: type) -> bool:
    """One whole weight draw shared by the batch (its value is ``layer.weight.value``)."""
    return cls.estimator.name == "reparameterization"


def make_input(
    cls: type, batch: tuple[int, ...] = (3,), size: int | None = None, **kwargs: Any
) -> Tensor:
    n = cls._dims
    return torch.randn(*batch, IN, *[size or SIZE[n]] * n, **kwargs)


def random_params(layer: nn.Module, scale_low: float = 0.3, scale_high: float = 0.8) -> None:
    """Give every parameter a generic value: locs ~ N(0, 1), scales ~ U(low, high)."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                scale = torch.empty_like(p).uniform_(scale_low, scale_high)
                p.copy_(scale.expm1().log())  # softplus⁻¹
            else:
                p.normal_()


def zero_scales(layer: nn.Module) -> None:
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                p.fill_(-100.0)  # softplus(-100) ≈ 4e-44


def torch_twin(layer: conv_base.BayesianConvNd, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """The torch counterpart with ``layer``'s hyperparameters holding ``weight``/``bias``."""
    kw: dict[str, Any] = {
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "groups": layer.groups,
        "bias": bias is not None,
        "padding_mode": layer.padding_mode,
        "dtype": weight.dtype,
    }
    if layer.transposed:
        kw["output_padding"] = layer.output_padding
    twin = layer._torch_class(layer.in_channels, layer.out_channels, layer.kernel_size, **kw)
    with torch.no_grad():
        twin.weight.copy_(weight)
        if bias is not None:
            twin.bias.copy_(bias)
    return twin


def mean_twin(layer: conv_base.BayesianConvNd) -> nn.Module:
    bias = None
    if layer.use_bias:
        bias = layer.bias_loc if isinstance(layer.bias, bl.RandomVariable) else layer.bias
    return torch_twin(layer, layer.weight_loc.detach(), None if bias is None else bias.detach())


def kl_reference(layer: nn.Module, name: str, prior: Normal) -> Tensor:
    loc, rho = getattr(layer, f"{name}_loc"), getattr(layer, f"{name}_rho")
    return kl_divergence(Normal(loc, F.softplus(rho)), prior).sum()


# ================================================================ hypothesis grid
@st.composite
def configs(draw: st.DrawFn, cls: type) -> dict[str, Any]:
    """Constructor kwargs (ints or tuples), a batch shape, a dtype, and a bias flavour."""
    n = cls._dims

    def size(low: int, high: int) -> st.SearchStrategy:
        return st.one_of(st.integers(low, high), st.tuples(*[st.integers(low, high)] * n))

    def tup(v: int | tuple[int, ...]) -> tuple[int, ...]:
        return (v,) * n if isinstance(v, int) else v

    kw: dict[str, Any] = {
        "kernel_size": draw(size(1, 3)),
        "stride": draw(size(1, 2)),
        "dilation": draw(size(1, 2)),
        "groups": draw(st.sampled_from([1, 2])),
        "bias": draw(st.booleans()),
    }
    if cls._transposed:
        kw["padding"] = draw(size(0, 2))
        stride, dilation = tup(kw["stride"]), tup(kw["dilation"])
        kw["output_padding"] = tuple(
            draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation, strict=True)
        )
    else:
        paddings = [size(0, 2), st.just("valid")]
        if all(s == 1 for s in tup(kw["stride"])):
            paddings.append(st.just("same"))
        kw["padding"] = draw(st.one_of(*paddings))
        kw["padding_mode"] = draw(st.sampled_from(conv_base.PADDING_MODES))
    batch = draw(st.sampled_from([(), (1,), (3,)]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    random_bias = kw["bias"] and draw(st.booleans())
    return {"kw": kw, "batch": batch, "dtype": dtype, "random_bias": random_bias}


@parametrize_layers
@HYPOTHESIS
@given(data=st.data())
def test_matches_torch_layer_across_configurations(cls: type, data: st.DataObject) -> None:
    """Over a grid of kernel sizes, strides, paddings ('same'/'valid' too), dilations,
    groups, bias, padding modes, output paddings, batch shapes and dtypes: the output
    shape and dtype equal the torch layer's; on posterior means, and with posterior scale
    → 0, the values equal the torch layer holding the posterior means."""
    cfg = data.draw(configs(cls))
    extra = RANDOM_BIAS if cfg["random_bias"] else {}
    layer = cls(IN, OUT, **cfg["kw"], dtype=cfg["dtype"], **extra)
    random_params(layer)
    twin = mean_twin(layer)
    # spatial extent 5 ≥ the largest effective kernel (5) and reflect padding (2)
    x = make_input(cls, cfg["batch"], size=5, dtype=cfg["dtype"])
    expected = twin(x)
    out = layer(x)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    if cfg["batch"]:
        spec = layer._spec
        assert K.output_shape(x.shape, OUT, layer.kernel_size, spec) == expected.shape
    with bl.posterior_mean(layer):
        torch.testing.assert_close(layer(x), expected)
    zero_scales(layer)
    torch.testing.assert_close(layer(x), expected)


@parametrize_layers
@HYPOTHESIS
@given(data=st.data())
def test_batched_conv_equals_a_loop_across_configurations(cls: type, data: st.DataObject) -> None:
    """``batched_conv`` (K weights in one grouped call) equals K separate ``conv`` calls."""
    cfg = data.draw(configs(cls))
    layer = cls(IN, OUT, **cfg["kw"], dtype=torch.float64)
    k, batch = 3, 2
    x = make_input(cls, (k * batch,), size=5, dtype=torch.float64)
    weight = torch.randn((k, *layer.weight_loc.shape), dtype=torch.float64)
    biases = [torch.randn(k, OUT, dtype=torch.float64), torch.randn(OUT, dtype=torch.float64)]
    rows = [slice(i * batch, (i + 1) * batch) for i in range(k)]
    for bias in [*biases, None]:
        out = K.batched_conv(x, weight, bias, k, layer._spec)
        per_sample = [None] * k if bias is None else list(bias) if bias.dim() == 2 else [bias] * k
        loop = [K.conv(x[r], weight[i], per_sample[i], layer._spec) for i, r in enumerate(rows)]
        torch.testing.assert_close(out, torch.cat(loop))


# ========================================================================== contract
def test_signatures_mirror_torch() -> None:
    """Same positional arguments, order and defaults as the torch layer; extras keyword-only."""
    for cls in LAYERS:
        ours = inspect.signature(cls.__init__).parameters
        theirs = inspect.signature(cls._torch_class.__init__).parameters
        positional = [p for p in ours.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
        expected = [p for p in theirs.values() if p.name not in ("device", "dtype")]
        assert [(p.name, p.default) for p in positional] == [
            (p.name, p.default) for p in expected
        ], cls.__name__
        keyword_only = {p.name for p in ours.values() if p.kind is p.KEYWORD_ONLY}
        assert {"device", "dtype", "weight_initializer", "weight_regularizer"} <= keyword_only
    forward = inspect.signature(C.ConvTranspose2dFlipout.forward).parameters
    assert list(forward) == ["self", "x", "output_size"]


@parametrize_layers
def test_attributes_and_extra_repr_mirror_torch(cls: type) -> None:
    kw: dict[str, Any] = {"stride": 2, "padding": 1, "dilation": 2, "groups": 2, "bias": False}
    if cls._transposed:
        kw["output_padding"] = 1
    else:
        kw["padding_mode"] = "circular"
    ours, theirs = cls(IN, OUT, 3, **kw), cls._torch_class(IN, OUT, 3, **kw)
    names = [
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
        "output_padding",
        "transposed",
        "_reversed_padding_repeated_twice",
    ]
    for name in names:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.extra_repr() == theirs.extra_repr()
    assert ours.bias is None and ours.weight.shape == theirs.weight.shape
    if not cls._transposed:
        same = cls(IN, OUT, (2, 3, 4)[: cls._dims], padding="same", dilation=2)
        twin = cls._torch_class(IN, OUT, (2, 3, 4)[: cls._dims], padding="same", dilation=2)
        assert same._reversed_padding_repeated_twice == twin._reversed_padding_repeated_twice
        assert same.extra_repr() == twin.extra_repr()


@parametrize_layers
@pytest.mark.parametrize("bias_kwargs", [{}, RANDOM_BIAS], ids=["fixed_bias", "random_bias"])
def test_every_parameter_gets_a_finite_gradient(cls: type, bias_kwargs: dict) -> None:
    layer = cls(IN, OUT, 3, padding=1, **bias_kwargs)
    out = layer(make_input(cls))
    (out.sum() + sum(layer.losses)).backward()
    names = {name for name, _ in layer.named_parameters()}
    assert {"weight_loc", "weight_rho"} <= names
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@parametrize_layers
@pytest.mark.parametrize("bias_kwargs", [{}, RANDOM_BIAS], ids=["fixed_bias", "random_bias"])
def test_losses_are_the_closed_form_kl(cls: type, bias_kwargs: dict) -> None:
    layer = cls(IN, OUT, 3, **bias_kwargs)
    random_params(layer)
    terms = layer.losses
    assert len(terms) == (2 if bias_kwargs else 1)
    for term in terms:
        assert term.shape == () and torch.isfinite(term) and term >= 0
    prior = Normal(0.0, 1.0)
    torch.testing.assert_close(terms[0], kl_reference(layer, "weight", prior))
    if bias_kwargs:
        torch.testing.assert_close(terms[1], kl_reference(layer, "bias", prior))
    for _ in range(3):  # on demand: never stale, never accumulated over calls
        layer(make_input(cls))
    torch.testing.assert_close(layer.losses, terms)


@parametrize_layers
def test_state_dict_round_trip_with_weights_only(cls: type) -> None:
    """Priors included: a fresh layer built with default priors gets them from the file."""
    src = cls(
        IN,
        OUT,
        3,
        padding=1,
        bias_initializer="trainable_normal",
        weight_regularizer=NormalKLDivergence(0.5, 2.0),
        bias_regularizer=NormalKLDivergence(-0.25, 3.0),
    )
    random_params(src)
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {
        "weight_loc",
        "weight_rho",
        "bias_loc",
        "bias_rho",
        "weight_regularizer.prior_loc",
        "weight_regularizer.prior_scale",
        "bias_regularizer.prior_loc",
        "bias_regularizer.prior_scale",
    }
    dst = cls(IN, OUT, 3, padding=1, **RANDOM_BIAS)
    dst.load_state_dict(state)
    assert float(dst.weight_regularizer.prior_scale) == 2.0
    assert float(dst.bias_regularizer.prior_loc) == -0.25
    torch.testing.assert_close(dst.losses, src.losses)
    x = make_input(cls)
    torch.manual_seed(5)
    expected = src(x)
    torch.manual_seed(5)
    torch.testing.assert_close(dst(x), expected, rtol=0, atol=0)
    # without a bias, nothing is saved for it (as torch's `bias=None`)
    assert set(cls(IN, OUT, 3, bias=False).state_dict()) == {
        "weight_loc",
        "weight_rho",
        "weight_regularizer.prior_loc",
        "weight_regularizer.prior_scale",
    }


@parametrize_layers
def test_autocast_output_dtype_equals_torch(cls: type) -> None:
    layer = cls(IN, OUT, 3, **RANDOM_BIAS)
    x = make_input(cls)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = mean_twin(layer)(x).dtype
        assert expected == torch.bfloat16
        assert layer(x).dtype == expected
        with bl.vectorized_samples(layer, 3):
            assert layer(x).dtype == expected


@parametrize_layers
def test_wrong_channel_count_or_rank_names_both(cls: type) -> None:
    layer = cls(IN, OUT, 3)
    spatial = [SIZE[cls._dims]] * cls._dims
    for shape in [(2, IN + 1, *spatial), (IN - 1, *spatial), (2, 1, IN, *spatial), (IN,)]:
        with pytest.raises(ValueError) as info:
            layer(torch.randn(shape))
        message = str(info.value)
        assert cls.__name__ in message and str(tuple(shape)) in message, message
        assert f"(N, {IN}, " in message and f"in_channels={IN}" in message, message


@parametrize_layers
def test_bad_input_types_raise_type_error(cls: type) -> None:
    layer = cls(IN, OUT, 3)
    with pytest.raises(TypeError, match=f"{cls.__name__}.*int64"):
        layer(make_input(cls).long())
    with pytest.raises(TypeError, match=cls.__name__):
        layer(make_input(cls).tolist())
    rv = bl.RandomVariable(Normal(make_input(cls), 1.0))  # acts as its value
    with bl.posterior_mean(layer):
        torch.testing.assert_close(layer(rv), layer(rv.value))


@parametrize_layers
def test_bad_hyperparameters_raise(cls: type) -> None:
    name = cls.__name__
    bad: list[tuple[dict, type, str]] = [
        ({"groups": 3}, ValueError, "divisible by groups=3"),
        ({"groups": 0}, ValueError, "groups"),
        ({"kernel_size": 0}, ValueError, "kernel_size"),
        ({"kernel_size": (3,) * (cls._dims + 1)}, TypeError, "kernel_size"),
        ({"stride": 0}, ValueError, "stride"),
        ({"dilation": 1.5}, TypeError, "dilation"),
        ({"padding": -1}, ValueError, "padding"),
        ({"padding": "full"}, ValueError, "padding"),
        ({"padding_mode": "mirror"}, ValueError, "padding_mode"),
    ]
    if cls._transposed:
        bad += [
            ({"padding": "same"}, ValueError, "padding"),
            ({"padding_mode": "reflect"}, ValueError, "padding_mode"),
            ({"stride": 2, "output_padding": 2}, ValueError, "output_padding"),
        ]
    else:
        bad.append(({"padding": "same", "stride": 2}, ValueError, "strided"))
    for kw, error, pattern in bad:
        args = {"kernel_size": 3} | kw
        with pytest.raises(error, match=f"{name}.*{pattern}"):
            cls(IN, OUT, **args)
    with pytest.raises(ValueError, match="in_channels"):
        cls(0, OUT, 3)
    with pytest.raises(TypeError, match="out_channels"):
        cls(IN, 2.0, 3)


@parametrize_layers
def test_from_torch_copies_weights(cls: type) -> None:
    kw: dict[str, Any] = {"stride": 2, "padding": 1, "groups": 2}
    if not cls._transposed:
        kw["padding_mode"] = "reflect"
    src = cls._torch_class(IN, OUT, 3, **kw, dtype=torch.float64)
    layer = cls.from_torch(src)
    assert type(layer) is cls and layer.extra_repr() == src.extra_repr()
    assert layer.weight_loc.dtype == torch.float64
    torch.testing.assert_close(layer.weight_loc, src.weight, rtol=0, atol=0)
    torch.testing.assert_close(layer.bias, src.bias, rtol=0, atol=0)
    x = make_input(cls, dtype=torch.float64)
    with bl.posterior_mean(layer):
        torch.testing.assert_close(layer(x), src(x))
    with torch.no_grad():  # copies, not aliases
        src.weight.add_(1.0)
    assert not torch.equal(layer.weight_loc, src.weight)
    random_bias = cls.from_torch(src, bias_initializer="trainable_normal")
    torch.testing.assert_close(random_bias.bias_loc, src.bias, rtol=0, atol=0)
    assert cls.from_torch(cls._torch_class(IN, OUT, 3, bias=False)).bias is None
    other = nn.Conv2d if cls._torch_class is not nn.Conv2d else nn.ConvTranspose2d
    with pytest.raises(TypeError, match=f"nn.{cls._torch_class.__name__}"):
        cls.from_torch(other(IN, OUT, 3))
    with pytest.raises(TypeError, match="got Linear"):
        cls.from_torch(nn.Linear(IN, OUT))


def test_non_normal_posteriors_are_rejected_where_needed() -> None:
    with pytest.raises(ValueError, match="TrainableLogNormal"):
        C.Conv2dReparameterization.from_torch(
            nn.Conv2d(IN, OUT, 3), weight_initializer="trainable_log_normal"
        )
    for cls in (C.Conv2dFlipout, C.ConvTranspose2dFlipout, C.Conv2dLocalReparameterization):
        with pytest.raises(ValueError, match=cls.__name__):
            cls(IN, OUT, 3, weight_initializer="trainable_log_normal")
    with pytest.raises(ValueError, match="Conv2dLocalReparameterization"):
        C.Conv2dLocalReparameterization(IN, OUT, 3, bias_initializer="trainable_half_cauchy")
    # the old constructor name still works, with a DeprecationWarning
    with pytest.warns(DeprecationWarning, match="from_torch"):
        old = C.Conv2dFlipout.from_module(nn.Conv2d(IN, OUT, 3))
    assert type(old) is C.Conv2dFlipout
    # Reparameterization takes any family; a deterministic weight makes Flipout a plain conv
    x = make_input(C.Conv2dFlipout)
    C.Conv2dReparameterization(IN, OUT, 3, weight_initializer="trainable_log_normal")(x)
    point = C.Conv2dFlipout(
        IN, OUT, 3, weight_initializer="trainable_deterministic", weight_regularizer=None
    )
    torch.testing.assert_close(point(x), F.conv2d(x, point.weight, point.bias))


@parametrize_layers
@pytest.mark.parametrize("bias_kwargs", [{}, RANDOM_BIAS], ids=["fixed_bias", "random_bias"])
def test_weight_is_a_random_variable_of_the_posterior(cls: type, bias_kwargs: dict) -> None:
    layer = cls(IN, OUT, 3, **bias_kwargs)
    random_params(layer)
    weight = layer.weight
    assert isinstance(weight, bl.RandomVariable)
    torch.testing.assert_close(weight.distribution.mean, layer.weight_loc)
    torch.testing.assert_close(weight.distribution.stddev, F.softplus(layer.weight_rho))
    torch.testing.assert_close(weight.value, layer.weight_loc)  # before any draw
    x = make_input(cls)
    out = layer(x)
    value = layer.weight.value
    if whole_weight(cls):
        assert not torch.equal(value, layer.weight_loc)
        bias = layer.bias.value if bias_kwargs else layer.bias
        torch.testing.assert_close(out, K.conv(x, value, bias, layer._spec))
    else:
        torch.testing.assert_close(value, layer.weight_loc, rtol=0, atol=0)


@parametrize_layers
def test_frozen_mode_is_one_function(cls: type) -> None:
    layer = cls(IN, OUT, 3, **RANDOM_BIAS)
    random_params(layer)
    x = make_input(cls, (4,))
    x[1] = x[0]
    layer.sampling = "frozen"
    first = layer(x)
    torch.testing.assert_close(layer(x), first, rtol=0, atol=0)
    torch.testing.assert_close(first[0], first[1], rtol=0, atol=0)  # one function
    torch.testing.assert_close(layer(x[2:]), first[2:])  # a sub-batch sees it too
    torch.testing.assert_close(layer(x[3]), first[3])  # and an unbatched input
    layer.resample()
    second = layer(x)
    assert not torch.allclose(second, first)
    second.sum().backward()
    assert layer.weight_rho.grad is not None and layer.weight_rho.grad.abs().sum() > 0


def test_transposed_output_size_as_torch() -> None:
    """``output_size`` of d, d + 1 (unbatched) or d + 2 elements picks the output padding."""
    for cls in [c for c in LAYERS if c._transposed]:
        layer = cls(IN, OUT, 3, stride=2, padding=1)  # valid sizes 2L - 1 and 2L
        twin = mean_twin(layer)
        n, length = cls._dims, SIZE[cls._dims]
        x = make_input(cls, (2,))
        with bl.posterior_mean(layer):
            for size in [(2 * length,) * n, (2, OUT) + (2 * length - 1,) * n]:
                torch.testing.assert_close(layer(x, output_size=size), twin(x, output_size=size))
            unbatched = (OUT,) + (2 * length,) * n
            torch.testing.assert_close(
                layer(x[0], output_size=unbatched), twin(x[0], output_size=unbatched)
            )
        with pytest.raises(ValueError, match=f"{cls.__name__}.*output_size"):
            layer(x, output_size=unbatched)  # d + 1 elements for a batched input
        with pytest.raises(ValueError, match=f"{cls.__name__}.*output_size"):
            layer(x, output_size=(2 * length + 1,) * n)


# ============================================================= vectorised samples
@parametrize_layers
def test_vectorized_mode_shapes_and_errors(cls: type) -> None:
    layer = cls(IN, OUT, 3, **RANDOM_BIAS)
    x = make_input(cls, (3 * 2,))
    expected = layer(x).shape
    with bl.vectorized_samples(layer, 3):
        assert layer(x).shape == expected
        with pytest.raises(ValueError, match=f"{cls.__name__}.*multiple of 3"):
            layer(make_input(cls, (4,)))
        with pytest.raises(ValueError, match=f"{cls.__name__}.*batched input"):
            layer(make_input(cls, ()))


@parametrize_layers
def test_vectorized_call_equals_separate_calls_given_the_same_noise(cls: type) -> None:
    """K samples in one call: rows ``k * B:(k + 1) * B`` equal the estimator's kernel
    run alone with the k-th slice of the same noise (weights, signs, output noise)."""
    drawn: list[Tensor] = []

    def record(layer, name, kind, shape, make):  # noqa: ANN001, ANN202
        if kind != "parameter":  # signs, Flipout's weight noise, output noise
            drawn.append(make(shape))
            return drawn[-1]
        return None

    layer = cls(IN, OUT, 3, padding=1, groups=2, dtype=torch.float64, **RANDOM_BIAS)
    layer.register_noise_hook(record)
    random_params(layer)
    k, batch = 4, 3
    x = make_input(cls, (k * batch,), dtype=torch.float64)
    with bl.vectorized_samples(layer, k):
        out = layer(x)
    loc, scale = layer.weight_loc, F.softplus(layer.weight_rho)
    bias_loc, bias_scale = layer.bias_loc, F.softplus(layer.bias_rho)
    spec = layer._spec
    for i in range(k):
        rows = slice(i * batch, (i + 1) * batch)
        if whole_weight(cls):
            w, b = layer.weight.value[i], layer.bias.value[i]
            expected = K.conv(x[rows], w, b, spec)
        elif cls.estimator.name == "flipout":
            sign_in, sign_out, noise = drawn
            b = layer.bias.value[i]
            expected = K.flipout_conv(
                x[rows], loc, scale, noise[i], sign_in[rows], sign_out[rows], b, spec
            )
        else:
            (noise,) = drawn
            expected = K.local_reparameterization_conv(
                x[rows], loc, scale, noise[rows], bias_loc, bias_scale, spec
            )
        torch.testing.assert_close(out[rows], expected)


# ================================================================ closed-form moments
N_PASSES = 4000
ROWS = 3  # rows 0 and 1 identical (for the decorrelation test)
MOMENT_KW = {  # one configuration per (dims, transposed), padding modes and groups varied
    (1, False): {"kernel_size": 3, "padding": 1, "padding_mode": "circular"},
    (2, False): {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
    (3, False): {"kernel_size": 2, "padding": 1, "groups": 2},
    (1, True): {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1},
    (2, True): {"kernel_size": 3, "stride": 2, "padding": 1, "groups": 2},
    (3, True): {"kernel_size": 2},
}
MOMENT_SIZE = {1: 6, 2: 4, 3: 3}
LOOPED = [
    C.Conv2dReparameterization,
    C.Conv2dFlipout,
    C.Conv2dLocalReparameterization,
    C.ConvTranspose2dFlipout,
]


def _moment_layer(cls: type, random_bias: bool) -> tuple[conv_base.BayesianConvNd, Tensor]:
    """A float64 layer with generic parameters, and x of ``ROWS`` rows (0 and 1 equal).

    A random bias gets σ_b² = 0.4 · (the largest weight-term variance of its channel),
    so it is ≥ 28 % of every output's variance: a dropped σ_b² fails the check.
    """
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(2024)
    n, channels = cls._dims, 2
    layer = cls(
        channels,
        channels,
        **MOMENT_KW[n, cls._transposed],
        dtype=torch.float64,
        **(RANDOM_BIAS if random_bias else {}),
    )
    random_params(layer)
    x = torch.randn(ROWS, channels, *[MOMENT_SIZE[n]] * n, dtype=torch.float64)
    x[1] = x[0]
    weight_var = torch_twin(layer, F.softplus(layer.weight_rho).square().detach(), None)
    with torch.no_grad():
        if random_bias:
            top = weight_var(x.square()).transpose(0, 1).flatten(1).amax(1)  # (C_out,)
            layer.bias_rho.copy_((0.4 * top).sqrt().expm1().log())
        else:
            layer.bias.normal_()
    torch.random.set_rng_state(gen_state)
    return layer, x


def _closed_form_moments(layer: conv_base.BayesianConvNd, x: Tensor) -> tuple[Tensor, Tensor]:
    """``conv(x, μ_W) + μ_b`` and ``conv(x², σ_W²) + σ_b²`` through the torch layer."""
    bias_var = None
    if isinstance(layer.bias, bl.RandomVariable):
        bias_var = F.softplus(layer.bias_rho).square().detach()
    weight_var = F.softplus(layer.weight_rho).square().detach()
    with torch.no_grad():
        return mean_twin(layer)(x), torch_twin(layer, weight_var, bias_var)(x.square())


@cache
def _passes(cls: type, random_bias: bool, vectorized: bool) -> Tensor:
    """``(N_PASSES, *output_shape)`` outputs of independent forward passes (cached)."""
    layer, x = _moment_layer(cls, random_bias)
    torch.manual_seed(1000 + 10 * LAYERS.index(cls) + 2 * random_bias + vectorized)
    with torch.no_grad():
        if vectorized:
            return bl.predict(layer, x, N_PASSES).samples
        return torch.stack([layer(x) for _ in range(N_PASSES)])


MOMENT_CASES = [(cls, rb, False) for cls in LOOPED for rb in (False, True)] + [
    (cls, rb, True) for cls in LAYERS for rb in (False, True)
]


@pytest.mark.parametrize(
    ("cls", "random_bias", "vectorized"),
    MOMENT_CASES,
    ids=[
        f"{c.__name__}-{'random' if r else 'fixed'}_bias-{'vec' if v else 'loop'}"
        for c, r, v in MOMENT_CASES
    ],
)
def test_output_moments_match_closed_form(cls: type, random_bias: bool, vectorized: bool) -> None:
    """MC mean and variance of n forward passes vs ``conv(x, μ_W) + μ_b`` and
    ``conv(x², σ_W²) + σ_b²`` (a convolution is linear in its weight).

    n = 4000 passes at fixed x; k = 2 · (output elements) simultaneous checks (96 to 768)
    at family-wise α = 1e-3, z = z(1 - α/2k) ≈ 4.3–4.9. Means: half-width z·σ/√n with
    the exact σ (≤ 8 % of σ). Variances: every estimator's output is normal (Flipout:
    normal given the signs, with a variance free of them), so the unbiased sample
    variance has standard error sqrt(2/(n - 1))·σ²: half-width ≤ 11 % of σ², below the
    ≥ 28 % a dropped σ_b² would cause, far below a scale/variance mix-up. Looped calls
    (the Conv2d estimators, ConvTranspose2dFlipout) and one vectorised call with K = n
    (every layer) are checked.
    """
    layer, x = _moment_layer(cls, random_bias)
    mean, var = _closed_form_moments(layer, x)
    samples = _passes(cls, random_bias, vectorized)
    assert samples.shape == (N_PASSES, *mean.shape)
    n, z = N_PASSES, z_bonferroni(2 * mean.numel())
    mean_err = (samples.mean(0) - mean).abs()
    assert (mean_err <= z * var.sqrt() / math.sqrt(n)).all(), (mean_err / var.sqrt()).max()
    var_err = (samples.var(0) - var).abs()
    assert (var_err <= z * math.sqrt(2 / (n - 1)) * var).all(), (var_err / var).max()


@pytest.mark.parametrize(
    ("cls", "vectorized"),
    [(cls, False) for cls in LOOPED] + [(cls, True) for cls in LAYERS],
    ids=[f"{c.__name__}-loop" for c in LOOPED] + [f"{c.__name__}-vec" for c in LAYERS],
)
def test_identical_examples_are_decorrelated_by_flipout_and_lrt(
    cls: type, vectorized: bool
) -> None:
    """Two identical examples in one batch: correlation of their outputs across passes.

    Reparameterization shares the weight draw: r = 1 exactly. Flipout and LRT (a fixed
    bias): the true correlation is 0. For zero correlation the sample r has asymptotic
    variance E[u²v²]/n (u, v standardised); LRT's are independent (E = 1), Flipout's share
    ε and E[u²v²] = 1 + 2Σa⁴/(Σa²)² ≤ 3. Bound z(1 - α/2k)·sqrt(3/n), n = 4000, k = the
    output elements of one example, α = 1e-3.
    """
    samples = _passes(cls, False, vectorized)
    a, b = samples[:, 0].flatten(1), samples[:, 1].flatten(1)  # (n, elements)
    a, b = a - a.mean(0), b - b.mean(0)
    r = (a * b).sum(0) / (a.square().sum(0) * b.square().sum(0)).sqrt()
    if whole_weight(cls):
        torch.testing.assert_close(r, torch.ones_like(r))
    else:
        bound = z_bonferroni(r.numel()) * math.sqrt(3 / N_PASSES)
        assert (r.abs() <= bound).all(), (r.abs().max(), bound)


# ==================================================================== the kernels
KERNEL_CONFIGS = {  # a layer whose ConvSpec and weight shape the kernels are tested with
    "2d_zeros_groups": (C.Conv2dReparameterization, {"kernel_size": (3, 2), "stride": (1, 2),
                                                     "padding": (1, 0), "groups": 2}),
    "1d_reflect_same": (C.Conv1dReparameterization, {"kernel_size": 3, "padding": "same",
                                                     "dilation": 2, "padding_mode": "reflect"}),
    "3d_circular": (C.Conv3dReparameterization, {"kernel_size": 2, "padding": 1,
                                                 "padding_mode": "circular"}),
    "2d_transposed": (C.ConvTranspose2dReparameterization, {"kernel_size": 3, "stride": 2,
                                                            "padding": 1, "groups": 2,
                                                            "output_padding": (1, 0)}),
}  # fmt: skip


def _kernel_inputs(name: str) -> dict[str, Any]:
    cls, kw = KERNEL_CONFIGS[name]
    c_in, c_out, batch = 2, 4, 2
    layer = cls(c_in, c_out, **kw)
    spec, wshape = layer._spec, layer.weight_loc.shape

    def t(*shape: int, positive: bool = False) -> Tensor:
        v = torch.randn(*shape, dtype=torch.float64)
        return (v.abs() + 0.1 if positive else v).requires_grad_()

    def signs(shape: tuple[int, ...]) -> Tensor:
        return torch.randint(0, 2, shape).double() * 2 - 1

    x = t(batch, c_in, *[{1: 5, 2: 4, 3: 3}[cls._dims]] * cls._dims)
    out_shape = K.output_shape(x.shape, c_out, layer.kernel_size, spec)
    return {
        "spec": spec,
        "x": x,
        "loc": t(*wshape),
        "scale": t(*wshape, positive=True),
        "bias": t(c_out),
        "bias_scale": t(c_out, positive=True),
        "weight_noise": torch.randn(wshape, dtype=torch.float64),
        "out_noise": torch.randn(out_shape, dtype=torch.float64),
        "sign_in": signs(tuple(x.shape)),
        "sign_out": signs(tuple(out_shape)),
    }


@pytest.mark.parametrize("name", list(KERNEL_CONFIGS))
def test_gradcheck_pure_kernels(name: str) -> None:
    """``gradcheck`` (float64) on every kernel, noise and signs held fixed."""
    v = _kernel_inputs(name)
    spec, x, loc, scale, bias = v["spec"], v["x"], v["loc"], v["scale"], v["bias"]

    def reparam(x, loc, scale, bias):  # noqa: ANN001, ANN202
        return K.reparameterization_conv(x, loc, scale, v["weight_noise"], bias, spec)

    def flipout(x, loc, scale, bias):  # noqa: ANN001, ANN202
        return K.flipout_conv(
            x, loc, scale, v["weight_noise"], v["sign_in"], v["sign_out"], bias, spec
        )

    def lrt(x, loc, scale, bias, bias_scale):  # noqa: ANN001, ANN202
        return K.local_reparameterization_conv(
            x, loc, scale, v["out_noise"], bias, bias_scale, spec
        )

    assert torch.autograd.gradcheck(reparam, (x, loc, scale, bias))
    assert torch.autograd.gradcheck(flipout, (x, loc, scale, bias))
    assert torch.autograd.gradcheck(lrt, (x, loc, scale, bias, v["bias_scale"]))
    assert torch.autograd.gradcheck(
        lambda x, loc, scale: lrt(x, loc, scale, None, None), (x, loc, scale)
    )

    k = 2
    xk = torch.cat([x.detach()] * k).requires_grad_()
    wk = torch.randn(k, *loc.shape, dtype=torch.float64, requires_grad=True)
    bk = torch.randn(k, bias.shape[0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: K.batched_conv(x, w, b, k, spec), (xk, wk, bk))
    assert torch.autograd.gradcheck(lambda x, w: K.batched_conv(x, w, None, k, spec), (xk, wk))
    y = torch.randn(k * 2, bias.shape[0], 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y, b: K.add_sample_bias(y, b, k), (y, bk))
    assert torch.autograd.gradcheck(lambda y, b: K.add_sample_bias(y, b, k), (y, bias))


@pytest.mark.parametrize("name", list(KERNEL_CONFIGS))
def test_kernels_agree_with_their_definitions(name: str) -> None:
    """Values: each kernel equals the estimator written out with whole weights."""
    v = _kernel_inputs(name)
    spec, x, loc, scale, bias = v["spec"], v["x"], v["loc"], v["scale"], v["bias"]
    eps, out_noise = v["weight_noise"], v["out_noise"]
    with torch.no_grad():
        draw = loc + scale * eps
        torch.testing.assert_close(
            K.reparameterization_conv(x, loc, scale, eps, bias, spec), K.conv(x, draw, bias, spec)
        )
        # Flipout with signs constant per example is a whole draw μ ± σ∘ε for that example
        s = torch.tensor([1.0, -1.0], dtype=torch.float64)
        sign_in = s.view(-1, *[1] * (x.dim() - 1)).expand_as(x)
        sign_out = torch.ones_like(out_noise)
        out = K.flipout_conv(x, loc, scale, eps, sign_in, sign_out, bias, spec)
        torch.testing.assert_close(out[:1], K.conv(x[:1], loc + scale * eps, bias, spec))
        torch.testing.assert_close(out[1:], K.conv(x[1:], loc - scale * eps, bias, spec))
        std = (K.conv(x.square(), scale.square(), v["bias_scale"].square(), spec)).sqrt()
        torch.testing.assert_close(
            K.local_reparameterization_conv(x, loc, scale, out_noise, bias, v["bias_scale"], spec),
            K.conv(x, loc, bias, spec) + std * out_noise,
        )
        y = torch.randn(3 * 2, 4, 5)
        bk = torch.randn(3, 4)
        expected = y + bk.repeat_interleave(2, 0).unsqueeze(-1)
        torch.testing.assert_close(K.add_sample_bias(y, bk, 3), expected)
        assert K.add_sample_bias(y, None, 3) is y


def test_drop_in_a_small_cnn_trains() -> None:
    """The issue's CNN shape with every estimator: one ELBO step lowers nothing to NaN and
    ``bl.losses`` sees every layer."""
    for conv in (C.Conv2dReparameterization, C.Conv2dFlipout, C.Conv2dLocalReparameterization):
        model = nn.Sequential(
            conv(3, 8, 3, padding=1),
            nn.ReLU(),
            conv(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        )
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
        assert len(bl.losses(model)) == 2
        loss = F.cross_entropy(model(x), y) + sum(bl.losses(model)) / 1000
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        assert bl.predict(model, x, 5).samples.shape == (5, 8, 10)
