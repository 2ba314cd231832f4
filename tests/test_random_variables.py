"""Tests for the random-variable constructors in ``bayesian_layers.random_variables``."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributions as td

from bayesian_layers import distributions as bld
from bayesian_layers import layers
from bayesian_layers import random_variables as rvs
from bayesian_layers.random_variables.variable import RandomVariable

# Abstract bases exported by torch.distributions that have no constructor of their own.
ABSTRACT = {"Distribution", "ExponentialFamily"}

TORCH_DISTRIBUTIONS = sorted(
    name
    for name in td.__all__
    if isinstance(getattr(td, name), type)
    and issubclass(getattr(td, name), td.Distribution)
    and name not in ABSTRACT
)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def _args() -> dict[str, tuple[tuple[Any, ...], dict[str, Any], tuple[int, ...]]]:
    """constructor name -> (positional args, keyword args, value shape).

    Built inside a function so each test gets fresh tensors. Batch shape is (2,) throughout.
    """
    probs, logits = _t(0.3, 0.7), torch.zeros(2, 4)
    pos = _t(1.5, 3.0)
    return {
        "Bernoulli": ((), {"probs": probs}, (2,)),
        "Beta": ((pos, _t(2.0, 0.5)), {}, (2,)),
        "Binomial": ((5,), {"probs": probs}, (2,)),
        "Categorical": ((), {"logits": logits}, (2,)),
        "Cauchy": ((0.0, pos), {}, (2,)),
        "Chi2": ((pos,), {}, (2,)),
        "ContinuousBernoulli": ((), {"probs": probs}, (2,)),
        "Deterministic": ((_t(1.0, 2.0),), {}, (2,)),
        "Dirichlet": ((torch.ones(2, 3),), {}, (2, 3)),
        "Exponential": ((pos,), {}, (2,)),
        "FisherSnedecor": ((pos, _t(4.0, 5.0)), {}, (2,)),
        "Gamma": ((pos, 2.0), {}, (2,)),
        "GeneralizedPareto": ((0.0, pos, _t(0.1, -0.2)), {}, (2,)),
        "Geometric": ((), {"probs": probs}, (2,)),
        "Gumbel": ((_t(0.0, 1.0), pos), {}, (2,)),
        "HalfCauchy": ((pos,), {}, (2,)),
        "HalfNormal": ((pos,), {}, (2,)),
        "Independent": ((td.Normal(torch.zeros(2, 3), 1.0), 1), {}, (2, 3)),
        "InverseGamma": ((pos, 1.0), {}, (2,)),
        "Kumaraswamy": ((pos, _t(2.0, 1.0)), {}, (2,)),
        "LKJCholesky": ((3,), {"concentration": pos}, (2, 3, 3)),
        "Laplace": ((_t(0.0, 1.0), pos), {}, (2,)),
        "LogNormal": ((_t(0.0, 1.0), pos), {}, (2,)),
        "LogisticNormal": ((torch.zeros(2, 3), 1.0), {}, (2, 4)),
        "LowRankMultivariateNormal": (
            (torch.zeros(2, 3), torch.full((2, 3, 1), 0.5), torch.ones(2, 3)),
            {},
            (2, 3),
        ),
        "MixtureSameFamily": (
            (td.Categorical(logits=logits), td.Normal(torch.zeros(2, 4), 1.0)),
            {},
            (2,),
        ),
        "Multinomial": ((5,), {"probs": torch.ones(2, 3)}, (2, 3)),
        "MultivariateNormal": ((torch.zeros(2, 3),), {"scale_tril": torch.eye(3)}, (2, 3)),
        "NegativeBinomial": ((pos,), {"probs": probs}, (2,)),
        "Normal": ((_t(0.0, 1.0), pos), {}, (2,)),
        "OneHotCategorical": ((), {"logits": logits}, (2, 4)),
        "OneHotCategoricalStraightThrough": ((), {"logits": logits}, (2, 4)),
        "Pareto": ((1.0, pos), {}, (2,)),
        "Poisson": ((pos,), {}, (2,)),
        "RelaxedBernoulli": ((torch.tensor(0.5),), {"probs": probs}, (2,)),
        "RelaxedOneHotCategorical": ((torch.tensor(0.5),), {"logits": logits}, (2, 4)),
        "StudentT": ((pos,), {}, (2,)),
        "TransformedDistribution": (
            (td.Normal(torch.zeros(2), 1.0), [td.ExpTransform()]),
            {},
            (2,),
        ),
        "Uniform": ((_t(0.0, -1.0), pos), {}, (2,)),
        "VonMises": ((torch.zeros(2), pos), {}, (2,)),
        "Weibull": ((pos, _t(0.5, 2.0)), {}, (2,)),
        "Wishart": ((_t(4.0, 5.0),), {"covariance_matrix": torch.eye(3)}, (2, 3, 3)),
    }


# torch's Wishart.rsample warns "Singular sample detected." on every draw, singular or
# not (pytorch/pytorch#122021: the first singularity check is inverted).
_WISHART_WARNS = pytest.mark.filterwarnings("ignore:Singular sample detected:UserWarning")
CONSTRUCTORS = [
    pytest.param(name, marks=_WISHART_WARNS) if name == "Wishart" else name
    for name in sorted(rvs.__all__)
]


def _torch_class(name: str) -> type[td.Distribution]:
    return bld.Deterministic if name == "Deterministic" else getattr(td, name)


def _constructor(name: str) -> Callable[..., RandomVariable]:
    return getattr(rvs, name)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ------------------------------------------------------------------------------ coverage
def test_every_torch_distribution_has_a_constructor() -> None:
    """Fails loudly when torch adds a distribution we do not cover yet."""
    missing = set(TORCH_DISTRIBUTIONS) - set(rvs.__all__)
    assert not missing, f"no random-variable constructor for {sorted(missing)}"


def test_all_lists_exactly_the_constructors() -> None:
    assert sorted(rvs.__all__) == sorted(set(TORCH_DISTRIBUTIONS) | {"Deterministic"})
    assert set(_args()) == set(rvs.__all__)
    for name in rvs.__all__:
        assert inspect.isfunction(_constructor(name)), name
        assert _constructor(name).__module__ == rvs.__name__, name


# --------------------------------------------------------------------- every constructor
@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_signature_mirrors_torch_class(name: str) -> None:
    """Same positional names and defaults as the torch class, plus name/value/sample_shape."""
    ours = inspect.signature(_constructor(name)).parameters
    theirs = list(inspect.signature(_torch_class(name).__init__).parameters.values())[1:]
    positional = [p for p in ours.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    keyword_only = [p for p in ours.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert [(p.name, p.default) for p in positional] == [(p.name, p.default) for p in theirs]
    assert [(p.name, p.default) for p in keyword_only] == [
        ("name", None),
        ("value", None),
        ("sample_shape", ()),
    ]
    doc = inspect.getdoc(_constructor(name))
    assert doc and _torch_class(name).__name__ in doc


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_constructor_builds_the_distribution(name: str) -> None:
    args, kwargs, shape = _args()[name]
    rv = _constructor(name)(*args, **kwargs, name=f"my_{name}")
    assert isinstance(rv, RandomVariable)
    assert type(rv.distribution) is _torch_class(name)
    assert rv.name == f"my_{name}" and f"my_{name}" in repr(rv)
    assert rv.shape == shape
    assert rv.shape == rv.distribution.batch_shape + rv.distribution.event_shape
    # The same distribution built by torch directly gives the same log-density.
    args, kwargs, _ = _args()[name]
    direct = _torch_class(name)(*args, **kwargs)
    torch.testing.assert_close(rv.log_prob(rv.value), direct.log_prob(rv.value))
    assert torch.isfinite(rv.log_prob(rv.value)).all()


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_constructor_sample_shape(name: str) -> None:
    args, kwargs, shape = _args()[name]
    rv = _constructor(name)(*args, **kwargs, sample_shape=(3, 1))
    assert rv.shape == (3, 1, *shape)
    assert rv.sample_shape == (3, 1)


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_constructor_honours_value(name: str) -> None:
    args, kwargs, shape = _args()[name]
    value = _constructor(name)(*args, **kwargs).distribution.sample()
    rv = _constructor(name)(*args, **kwargs, value=value)
    assert rv.value is value
    with pytest.raises(ValueError, match=re.escape(str(tuple(shape))) + r".*\(7,\)"):
        _constructor(name)(*args, **kwargs, value=torch.zeros(7))


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_constructor_passes_validate_args(name: str) -> None:
    args, kwargs, _ = _args()[name]
    for flag in (True, False):
        rv = _constructor(name)(*args, **kwargs, validate_args=flag)
        assert rv.distribution._validate_args is flag


# --------------------------------------------------------------------------- semantics
def test_invalid_parameters_are_reported_by_torch() -> None:
    with pytest.raises(ValueError, match="scale"):
        rvs.Normal(0.0, -1.0, validate_args=True)


def test_reparameterized_constructor_gradient() -> None:
    """LogNormal value = exp(loc + scale eps): d value / d loc = value."""
    loc = torch.tensor([0.0, 0.5], requires_grad=True)
    rv = rvs.LogNormal(loc, torch.tensor([1.0, 0.2]))
    (grad,) = torch.autograd.grad(rv.sum(), loc)
    torch.testing.assert_close(grad, rv.value.detach())


def test_deterministic_value_is_loc_and_passes_gradients() -> None:
    loc = torch.tensor([1.0, -2.0], requires_grad=True)
    rv = rvs.Deterministic(loc, sample_shape=(3,))
    torch.testing.assert_close(rv.value, loc.detach().expand(3, 2))
    (grad,) = torch.autograd.grad((2 * rv).sum(), loc)
    torch.testing.assert_close(grad, torch.full((2,), 6.0))


def test_random_variable_as_parameter_acts_as_its_value() -> None:
    """Hierarchical: x ~ N(z, 0.1), z ~ N(loc, 1) so x = loc + eps1 + 0.1 eps2."""
    loc = torch.tensor([0.0, 3.0], requires_grad=True)
    z = rvs.Normal(loc, 1.0, name="z")
    x = rvs.Normal(z, 0.1, name="x", sample_shape=(4,))
    assert x.shape == (4, 2)
    torch.testing.assert_close(x.distribution.loc, z.value)
    (grad,) = torch.autograd.grad(x.sum(), loc)
    torch.testing.assert_close(grad, torch.full((2,), 4.0))
    counts = rvs.Poisson(rvs.Gamma(2.0, 1.0), sample_shape=(5,))
    assert counts.shape == (5,)


def test_random_variable_as_distribution_argument_acts_as_its_distribution() -> None:
    base = rvs.Normal(torch.zeros(2, 3), 1.0)
    rv = rvs.Independent(base, 1)
    assert rv.distribution.base_dist is base.distribution
    assert rv.shape == (2, 3) and rv.distribution.event_shape == (3,)
    mix = rvs.MixtureSameFamily(
        rvs.Categorical(logits=torch.zeros(4)), rvs.Normal(torch.arange(4.0), 1.0)
    )
    assert mix.shape == () and mix.distribution.mean.item() == pytest.approx(1.5)
    flow = rvs.TransformedDistribution(rvs.Normal(0.0, 1.0), [td.ExpTransform()])
    assert bool(flow > 0)


@pytest.mark.parametrize("name", ["Bernoulli", "Categorical", "Poisson", "Binomial"])
def test_non_reparameterizable_values_have_no_grad(name: str) -> None:
    args, kwargs, _ = _args()[name]
    kwargs = {
        k: v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v
        for k, v in kwargs.items()
    }
    args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    rv = _constructor(name)(*args, **kwargs)
    assert not rv.value.requires_grad


# ------------------------------------------------------------- names shared with layers
# Nine names are both a constructor here (parameters in) and an output layer in
# bl.layers (features in); each docstring names the other.
SHARED_WITH_OUTPUT_LAYERS = [
    "Bernoulli",
    "Categorical",
    "Laplace",
    "LogNormal",
    "NegativeBinomial",
    "Normal",
    "OneHotCategorical",
    "Poisson",
    "StudentT",
]


def test_names_shared_with_output_layers() -> None:
    assert sorted(set(rvs.__all__) & set(layers.__all__)) == SHARED_WITH_OUTPUT_LAYERS


@pytest.mark.parametrize("name", SHARED_WITH_OUTPUT_LAYERS)
def test_constructor_docstring_names_the_output_layer(name: str) -> None:
    doc = " ".join((inspect.getdoc(_constructor(name)) or "").split())
    assert f"output layer of the same name is ``bl.layers.{name}``" in doc, doc


@pytest.mark.parametrize("name", SHARED_WITH_OUTPUT_LAYERS)
def test_output_layer_docstring_names_the_constructor(name: str) -> None:
    doc = " ".join((inspect.getdoc(getattr(layers, name)) or "").split())
    assert f"constructor of the same name is ``bl.{name}``" in doc, doc
