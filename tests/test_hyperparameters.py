"""Every regularizer and initializer hyperparameter, and ``elbo_loss``'s arguments, are
checked at construction: a non-finite or out-of-range number is a ``ValueError`` and a
non-number a ``TypeError``, each naming the class (or function), the argument, what was
expected and what came."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Laplace

import bayesian_layers as bl
from bayesian_layers.initializers import (
    TrainableDeterministic,
    TrainableGlorotNormal,
    TrainableHalfCauchy,
    TrainableHeNormal,
    TrainableLogNormal,
    TrainableNormal,
)
from bayesian_layers.regularizers import (
    HalfCauchyKLDivergence,
    LogUniformKLDivergence,
    MonteCarloKLDivergence,
    NormalKLDivergence,
)

INF, NAN = math.inf, math.nan
NORMALS = (TrainableNormal, TrainableHeNormal, TrainableGlorotNormal)

#: (constructor, argument, bad value, error type): every hyperparameter, each bad kind.
BAD: list[tuple[object, str, object, type[Exception]]] = [
    *[
        (cls, "scale_factor", v, ValueError)
        for cls in (NormalKLDivergence, LogUniformKLDivergence, HalfCauchyKLDivergence)
        for v in (INF, NAN, -1.0)
    ],
    *[(NormalKLDivergence, "scale_factor", v, TypeError) for v in ("1", True, None)],
    *[
        (cls, "loc", v, ValueError)
        for cls in (NormalKLDivergence, HalfCauchyKLDivergence)
        for v in (NAN, INF, -INF, torch.tensor([0.0, NAN]))
    ],
    *[
        (cls, "scale", v, ValueError)
        for cls in (NormalKLDivergence, HalfCauchyKLDivergence)
        for v in (0.0, -1.0, INF, NAN, torch.tensor([1.0, 0.0]))
    ],
    *[(NormalKLDivergence, arg, "a", TypeError) for arg in ("loc", "scale")],
    *[(cls, "scale_init", v, ValueError) for cls in NORMALS for v in (0.0, -1.0, INF, NAN)],
    *[(cls, "scale_init", "0.1", TypeError) for cls in NORMALS],
    *[(cls, "loc_std", v, ValueError) for cls in NORMALS for v in (0.0, INF, NAN)],
    *[
        (cls, "scale_init", v, ValueError)
        for cls in (TrainableLogNormal, TrainableHalfCauchy)
        for v in (0.0, INF, NAN)
    ],
    *[
        (cls, "loc_init", v, ValueError)
        for cls in (TrainableLogNormal, TrainableHalfCauchy)
        for v in (INF, -INF, NAN)
    ],
    *[(cls, "loc_init", "0", TypeError) for cls in (TrainableLogNormal, TrainableHalfCauchy)],
    (TrainableDeterministic, "init", "uniform", ValueError),
    (TrainableDeterministic, "init", 0, ValueError),
]


def _ids(case: tuple) -> str:
    cls, arg, value, _ = case
    return f"{cls.__name__}-{arg}-{value!r}"


@pytest.mark.parametrize("case", BAD, ids=[_ids(c) for c in BAD])
def test_bad_hyperparameter_names_class_argument_and_value(case: tuple) -> None:
    cls, arg, value, error = case
    with pytest.raises(error) as info:
        cls(**{arg: value})
    msg = str(info.value)
    assert cls.__name__ in msg and f"`{arg}`" in msg and "expected" in msg, msg
    shown = repr(value) if not isinstance(value, torch.Tensor) else "tensor"
    assert shown in msg or str(value) in msg, msg


@pytest.mark.parametrize("value", [INF, NAN, -1.0])
def test_monte_carlo_kl_scale_factor_and_prior_parameters(value: float) -> None:
    with pytest.raises(ValueError, match=r"MonteCarloKLDivergence expected `scale_factor`"):
        MonteCarloKLDivergence(Laplace(0.0, 1.0), scale_factor=value)
    with pytest.raises(ValueError, match=r"MonteCarloKLDivergence expected `prior` .*`loc`"):
        MonteCarloKLDivergence(Laplace(torch.tensor(NAN), 1.0, validate_args=False))


def test_shape_must_be_non_negative_integers() -> None:
    for shape in ((2, -1), (2.5,), ("a",)):
        with pytest.raises((ValueError, TypeError), match=r"TrainableNormal expected `shape`"):
            TrainableNormal(shape)  # type: ignore[arg-type]


def test_good_hyperparameters_still_work() -> None:
    NormalKLDivergence(torch.zeros(3), torch.ones(3), scale_factor=0.0)
    HalfCauchyKLDivergence(0, 2, scale_factor=1)
    TrainableNormal((2,), loc_std=0.1, scale_init=1e-3)
    TrainableLogNormal((2,), loc_init=-1, scale_init=0.5)
    TrainableHalfCauchy((2,), loc_init=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"num_examples": 0}, ValueError, r"elbo_loss expected `num_examples` to be a positive"),
        ({"num_examples": 2.5}, TypeError, r"elbo_loss expected `num_examples` to be an int"),
        ({"num_examples": True}, TypeError, r"elbo_loss expected `num_examples` to be an int"),
        ({"num_examples": 10, "kl_weight": INF}, ValueError, r"`kl_weight` to be a finite"),
        ({"num_examples": 10, "kl_weight": NAN}, ValueError, r"`kl_weight` to be a finite"),
        ({"num_examples": 10, "kl_weight": -1.0}, ValueError, r"`kl_weight` to be a finite"),
    ],
)
def test_elbo_loss_arguments(kwargs: dict, error: type[Exception], pattern: str) -> None:
    layer = bl.layers.LinearReparameterization(2, 2)
    with pytest.raises(error, match=pattern):
        bl.elbo_loss(torch.tensor(1.0), layer, **kwargs)
