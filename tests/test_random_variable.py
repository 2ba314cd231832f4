"""Tests for ``bayesian_layers.random_variables.variable.RandomVariable``."""

from __future__ import annotations

import copy
import math
import operator
import pickle

import numpy as np
import pytest
import torch
import torch.distributions as td
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers.random_variables.variable import RandomVariable


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def normal_rv(*shape: int, name: str | None = None, **kwargs) -> RandomVariable:
    return RandomVariable(td.Normal(torch.zeros(shape), torch.ones(shape)), name=name, **kwargs)


# --------------------------------------------------------------------- tensor protocol
class TestActsAsItsValue:
    def test_torch_functions(self) -> None:
        rv = normal_rv(3)
        out = torch.exp(rv)
        assert type(out) is Tensor
        torch.testing.assert_close(out, torch.exp(rv.value))
        torch.testing.assert_close(torch.where(rv > 0, rv, 0.0), rv.value.clamp(min=0))

    def test_cat_of_list_with_random_variables(self) -> None:
        a, b = normal_rv(2, 3), normal_rv(1, 3)
        t = torch.ones(4, 3)
        out = torch.cat([a, t, b], dim=0)
        assert type(out) is Tensor
        torch.testing.assert_close(out, torch.cat([a.value, t, b.value], dim=0))
        c = normal_rv(1, 3)
        stacked = torch.stack((b, c))
        assert type(stacked) is Tensor
        torch.testing.assert_close(stacked, torch.stack((b.value, c.value)))

    def test_functional_linear_positional_and_keyword(self) -> None:
        x, weight = normal_rv(4, 3), normal_rv(2, 3)
        bias = torch.randn(2)
        expected = x.value @ weight.value.T + bias
        torch.testing.assert_close(F.linear(x, weight, bias), expected)
        out = F.linear(x, weight=weight, bias=bias)
        assert type(out) is Tensor
        torch.testing.assert_close(out, expected)

    def test_modules(self) -> None:
        x = normal_rv(5, 3)
        linear = nn.Linear(3, 2)
        out = linear(x)
        assert type(out) is Tensor
        torch.testing.assert_close(out, linear(x.value))
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        out = model(x)
        assert type(out) is Tensor
        torch.testing.assert_close(out, model(x.value))

    @pytest.mark.parametrize(
        "op",
        [
            operator.add,
            operator.sub,
            operator.mul,
            operator.truediv,
            operator.pow,
            operator.lt,
            operator.le,
            operator.gt,
            operator.ge,
            operator.eq,
            operator.ne,
        ],
        ids=lambda op: op.__name__,
    )
    def test_binary_operators_both_sides(self, op) -> None:
        rv = RandomVariable(td.Gamma(torch.full((3,), 2.0), 1.0))  # positive, for pow
        t = torch.tensor([0.5, 1.0, 2.0])
        for out, expected in [(op(rv, t), op(rv.value, t)), (op(t, rv), op(t, rv.value))]:
            assert type(out) is Tensor
            torch.testing.assert_close(out, expected)
        assert type(op(rv, 2.0)) is Tensor
        torch.testing.assert_close(op(2.0, rv), op(2.0, rv.value))

    def test_two_random_variables(self) -> None:
        a, b = normal_rv(3), normal_rv(3)
        torch.testing.assert_close(a * b - a, a.value * b.value - a.value)
        assert type(a == a) is Tensor and bool((a == a).all())

    def test_matmul_both_sides(self) -> None:
        rv = normal_rv(2, 3)
        w_right, w_left = torch.randn(3, 4), torch.randn(5, 2)
        out = rv @ w_right
        assert type(out) is Tensor
        torch.testing.assert_close(out, rv.value @ w_right)
        out = w_left @ rv
        assert type(out) is Tensor
        torch.testing.assert_close(out, w_left @ rv.value)

    def test_unary_operators(self) -> None:
        rv = normal_rv(3)
        torch.testing.assert_close(-rv, -rv.value)
        torch.testing.assert_close(abs(rv), rv.value.abs())
        torch.testing.assert_close(+rv, rv.value)
        mask = RandomVariable(td.Bernoulli(0.5), value=torch.tensor(True))
        assert type(~mask) is Tensor and not bool(~mask)

    def test_tensor_methods_and_attributes(self) -> None:
        rv = normal_rv(2, 3)
        assert rv.dtype == torch.float32
        assert rv.device == torch.device("cpu")
        assert rv.shape == torch.Size([2, 3])
        assert rv.ndim == 2
        torch.testing.assert_close(rv.sum(), rv.value.sum())
        torch.testing.assert_close(rv.view(-1), rv.value.view(-1))
        torch.testing.assert_close(rv.reshape(3, 2).T, rv.value.reshape(3, 2).T)
        assert type(rv.sum(dim=0)) is Tensor

    def test_indexing_length_iteration_conversion(self) -> None:
        rv = normal_rv(4, 2)
        assert len(rv) == 4
        torch.testing.assert_close(rv[1:3], rv.value[1:3])
        index = RandomVariable(td.Categorical(logits=torch.zeros(4)), value=torch.tensor(2))
        torch.testing.assert_close(rv[index], rv.value[2])
        assert [tuple(r.shape) for r in rv] == [(2,)] * 4
        scalar = RandomVariable(td.Normal(0.0, 1.0), value=torch.tensor(1.5))
        assert float(scalar) == 1.5 and int(scalar) == 1 and bool(scalar)
        np.testing.assert_array_equal(np.asarray(rv), rv.value.numpy())

    def test_missing_attribute_raises_attribute_error(self) -> None:
        rv = normal_rv(2)
        with pytest.raises(AttributeError, match="no_such_thing"):
            rv.no_such_thing  # noqa: B018
        with pytest.raises(AttributeError):
            rv._private  # noqa: B018

    def test_copy_and_pickle(self) -> None:
        rv = normal_rv(3, name="x")
        for clone in (copy.deepcopy(rv), pickle.loads(pickle.dumps(rv))):
            assert clone.name == "x"
            torch.testing.assert_close(clone.value, rv.value)


@settings(derandomize=True, database=None, max_examples=60, deadline=None)
@given(
    shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3),
    op=st.sampled_from([operator.add, operator.sub, operator.mul, operator.truediv]),
    seed=st.integers(0, 2**16),
)
def test_operators_match_value_for_broadcastable_shapes(shapes, op, seed) -> None:
    """``rv (op) x == rv.value (op) x`` and ``x (op) rv == x (op) rv.value``."""
    generator = torch.Generator().manual_seed(seed)
    rv_shape, x_shape = shapes.input_shapes
    rv = RandomVariable(td.Normal(torch.zeros(rv_shape), 1.0))
    x = torch.rand(x_shape, generator=generator) + 0.5
    out = op(rv, x)
    assert type(out) is Tensor and out.shape == shapes.result_shape
    torch.testing.assert_close(out, op(rv.value, x))
    torch.testing.assert_close(op(x, rv), op(x, rv.value))


# --------------------------------------------------------------------------- gradients
def test_gradient_flows_to_reparameterized_parameters() -> None:
    """value = loc + scale * eps, so d sum(value^2) / d loc = 2 value, / d scale = 2 value eps."""
    loc = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    scale = torch.tensor([1.0, 0.5, 2.0], requires_grad=True)
    rv = RandomVariable(td.Normal(loc, scale))
    (rv**2).sum().backward()
    value = rv.value.detach()
    eps = (value - loc.detach()) / scale.detach()
    torch.testing.assert_close(loc.grad, 2 * value)
    torch.testing.assert_close(scale.grad, 2 * value * eps)


def test_gradient_through_module() -> None:
    loc = torch.zeros(4, 3, requires_grad=True)
    rv = RandomVariable(td.Normal(loc, 1.0))
    linear = nn.Linear(3, 2)
    linear(rv).sum().backward()
    # d sum(x W^T + b) / dx = column sums of W, for every row.
    torch.testing.assert_close(loc.grad, linear.weight.detach().sum(0).expand(4, 3))


def test_sample_is_reparameterized() -> None:
    loc = torch.tensor(1.0, requires_grad=True)
    rv = RandomVariable(td.Normal(loc, 2.0))
    (grad,) = torch.autograd.grad(rv.sample((5,)).sum(), loc)
    torch.testing.assert_close(grad, torch.tensor(5.0))


def test_non_reparameterizable_value_has_no_grad() -> None:
    probs = torch.tensor([0.2, 0.7], requires_grad=True)
    rv = RandomVariable(td.Bernoulli(probs=probs))
    assert not rv.value.requires_grad
    assert not rv.sample((3,)).requires_grad
    # The score-function path still reaches the parameters.
    (grad,) = torch.autograd.grad(rv.log_prob(rv.value).sum(), probs)
    expected = torch.where(rv.value == 1, 1 / probs, -1 / (1 - probs)).detach()
    torch.testing.assert_close(grad, expected)


# ------------------------------------------------------------------------ distribution
@pytest.mark.parametrize("sample_shape", [(), (4,), (2, 5)])
def test_sample_shape(sample_shape: tuple[int, ...]) -> None:
    """value: sample_shape + batch + event; ``sample(s)``: s + value shape."""
    dist = td.MultivariateNormal(torch.zeros(2, 3), scale_tril=torch.eye(3))
    rv = RandomVariable(dist, sample_shape=sample_shape)
    assert rv.shape == torch.Size(sample_shape) + dist.batch_shape + dist.event_shape
    assert rv.sample_shape == torch.Size(sample_shape)
    assert rv.sample().shape == rv.shape
    assert rv.sample((7,)).shape == torch.Size((7, *sample_shape, 2, 3))


@pytest.mark.parametrize(
    "dist",
    [
        td.Normal(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])),
        td.Dirichlet(torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])),
        td.Bernoulli(probs=torch.tensor([0.1, 0.6])),
        td.MultivariateNormal(torch.zeros(3), torch.eye(3) * 2),
    ],
    ids=lambda d: type(d).__name__,
)
def test_distribution_quantities(dist: td.Distribution) -> None:
    rv = RandomVariable(dist, sample_shape=(3,))
    torch.testing.assert_close(rv.log_prob(rv.value), dist.log_prob(rv.value))
    torch.testing.assert_close(rv.log_prob(rv), dist.log_prob(rv.value))
    torch.testing.assert_close(rv.mean, dist.mean)
    torch.testing.assert_close(rv.variance, dist.variance)
    torch.testing.assert_close(rv.stddev, dist.stddev)
    torch.testing.assert_close(rv.entropy(), dist.entropy())


def test_kl_divergence_with_random_variable_or_distribution() -> None:
    p = td.Normal(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5]))
    q = td.Normal(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.5]))
    rv_p, rv_q = RandomVariable(p), RandomVariable(q)
    expected = td.kl_divergence(p, q)
    torch.testing.assert_close(rv_p.kl_divergence(rv_q), expected)
    torch.testing.assert_close(rv_p.kl_divergence(q), expected)
    # log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2
    closed = torch.tensor([math.log(2.0) + (1.0 + 1.0) / 8.0 - 0.5, 0.0])
    torch.testing.assert_close(expected, closed)
    with pytest.raises(TypeError, match="Tensor"):
        rv_p.kl_divergence(torch.zeros(2))


# ----------------------------------------------------------------------- construction
def test_value_is_respected() -> None:
    value = torch.tensor([0.25, -0.5])
    rv = normal_rv(2, value=value)
    assert rv.value is value
    torch.testing.assert_close(torch.exp(rv), torch.exp(value))
    listed = normal_rv(2, value=[0.25, -0.5])
    assert listed.value.dtype == torch.get_default_dtype()
    torch.testing.assert_close(listed.value, value)
    from_rv = normal_rv(2, value=rv)
    assert from_rv.value is value
    with_sample = normal_rv(2, value=torch.zeros(3, 2), sample_shape=(3,))
    assert with_sample.shape == (3, 2)


def test_number_values_take_the_parameters_dtype_without_rounding() -> None:
    """A number or list value became a default-dtype (float32) tensor first: a float64
    program conditioned with ``condition(z=0.1)`` (or a log joint given numbers) silently
    scored float32-rounded values."""
    f64 = torch.float64
    rv = RandomVariable(td.Normal(torch.zeros(2, dtype=f64), 1.0), value=[0.1, 0.2])
    assert rv.value.dtype == f64
    assert rv.value.tolist() == [0.1, 0.2]

    def program() -> RandomVariable:
        z = bl.Normal(torch.tensor(0.0, dtype=f64), torch.tensor(1.0, dtype=f64), name="z")
        return bl.Normal(z, torch.tensor(1e-4, dtype=f64), name="x")

    log_joint = bl.make_log_joint_fn(program)
    got = log_joint(z=0.1, x=0.1 + 1e-5)
    want = log_joint(z=torch.tensor(0.1, dtype=f64), x=torch.tensor(0.1 + 1e-5, dtype=f64))
    assert got.item() == want.item()
    categorical = RandomVariable(td.Categorical(logits=torch.zeros(3, dtype=f64)), value=2)
    assert categorical.value.dtype == torch.int64  # integer classes stay integers


def test_wrong_value_shape_raises_value_error_with_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)") as info:
        normal_rv(2, 3, value=torch.zeros(3, 2), name="w")
    assert "'w'" in str(info.value)
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(2,\)"):
        normal_rv(2, value=torch.zeros(2), sample_shape=(4,))


def test_non_distribution_raises_type_error() -> None:
    with pytest.raises(TypeError, match="Tensor"):
        RandomVariable(torch.zeros(3))  # type: ignore[arg-type]


def test_repr_names_variable_and_distribution() -> None:
    text = repr(normal_rv(2, 3, name="weight"))
    assert "'weight'" in text and "Normal" in text and "(2, 3)" in text
    assert "Bernoulli" in repr(RandomVariable(td.Bernoulli(0.5)))


# ------------------------------------------------------------------ deferred value
def test_deferred_value_is_computed_once_on_first_read() -> None:
    calls: list[int] = []
    dist = td.Normal(torch.zeros(2, 3), 1.0)

    def compute() -> Tensor:
        calls.append(1)
        return torch.full((2, 3), 7.0)

    rv = RandomVariable.deferred(dist, compute, name="y")
    assert rv.shape == (2, 3) and not calls  # shape is known without computing
    assert rv.log_prob(torch.zeros(2, 3)).shape == (2, 3) and not calls
    torch.testing.assert_close(rv + 1, torch.full((2, 3), 8.0))
    torch.testing.assert_close(rv.value, torch.full((2, 3), 7.0))
    assert len(calls) == 1


def test_deferred_value_of_wrong_shape_raises_naming_the_variable() -> None:
    rv = RandomVariable.deferred(td.Normal(torch.zeros(3), 1.0), lambda: torch.zeros(4), name="z")
    with pytest.raises(ValueError, match=r"RandomVariable\('z'\).*\(3,\), got \(4,\)"):
        _ = rv.value
    with pytest.raises(TypeError, match="Distribution"):
        RandomVariable.deferred(torch.zeros(3), lambda: torch.zeros(3))  # type: ignore[arg-type]


# ------------------------------------------------- moments that are also tensor methods
class TestMomentsAreCallable:
    """``rv.mean`` is the distribution's mean as a tensor; ``rv.mean(...)`` reduces the
    value, as ``Tensor.mean`` does (``model(x).mean()`` is ordinary tensor code)."""

    def test_mean_call_reduces_the_value(self) -> None:
        rv = normal_rv(4, 3)
        torch.testing.assert_close(rv.mean(), rv.value.mean())
        torch.testing.assert_close(rv.mean(0), rv.value.mean(0))
        torch.testing.assert_close(rv.mean(dim=-1, keepdim=True), rv.value.mean(-1, keepdim=True))
        torch.testing.assert_close(rv.variance(0), rv.value.var(0))
        torch.testing.assert_close(rv.stddev(), rv.value.std())
        torch.testing.assert_close(rv.std(), rv.value.std())

    def test_moments_act_as_the_distribution_moments(self) -> None:
        dist = td.Normal(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0]))
        rv = RandomVariable(dist)
        assert torch.equal(rv.mean, dist.mean) and torch.equal(rv.stddev, dist.stddev)
        assert torch.equal(rv.variance, dist.variance)
        assert rv.mean.shape == (2,) and rv.mean.dtype == torch.float32
        out = rv.mean * 2 + rv.variance
        assert type(out) is Tensor
        torch.testing.assert_close(out, torch.tensor([2.25, 5.0]))
        assert type(torch.exp(rv.mean)) is Tensor and type(rv.mean[0]) is Tensor
        assert rv.mean.tolist() == [1.0, -2.0]
        np.testing.assert_allclose(np.asarray(rv.stddev), [0.5, 3.0])
        torch.testing.assert_close(rv.distribution.mean, dist.mean)

    def test_gradients_flow_through_the_moment_and_its_call(self) -> None:
        loc = torch.tensor([0.3, -0.1], requires_grad=True)
        rv = RandomVariable(td.Normal(loc, 1.0))
        (rv.mean.sin().sum() + rv.mean()).backward()
        torch.testing.assert_close(loc.grad, loc.detach().cos() + 0.5)

    def test_a_deferred_value_is_computed_only_when_called(self) -> None:
        calls = []

        def compute() -> Tensor:
            calls.append(1)
            return torch.full((3,), 2.0)

        rv = RandomVariable.deferred(td.Normal(torch.zeros(3), 1.0), compute)
        assert torch.equal(rv.mean, torch.zeros(3)) and not calls
        assert float(rv.mean()) == 2.0 and calls == [1]

    def test_copies_and_pickles_are_plain_tensors(self) -> None:
        rv = normal_rv(2)
        for out in (copy.deepcopy(rv.mean), pickle.loads(pickle.dumps(rv.variance))):
            assert type(out) is Tensor and torch.equal(out, torch.zeros(2) + (out != 0))
        assert repr(rv.mean) == "tensor([0., 0.])"

    def test_a_distribution_without_the_moment_still_reduces_the_value(self) -> None:
        rv = RandomVariable(td.LKJCholesky(3, 1.0))
        torch.testing.assert_close(rv.mean(), rv.value.mean())
        with pytest.raises(NotImplementedError):
            rv.mean.shape  # noqa: B018
