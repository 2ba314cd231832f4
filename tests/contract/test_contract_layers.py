"""Construction, output shapes, values at posterior scale 0, gradients and losses of
every registered layer (``contract/cases.py``): each contract written once.

- bad constructor arguments (a size 0, negative, a float, a bool, a string) raise
  ``ValueError`` / ``TypeError`` naming the layer;
- output shapes equal torch's deterministic counterpart's for several batch shapes,
  in every sampling mode;
- with every posterior scale 0, the output equals the counterpart run on the
  posterior means;
- every parameter gets a finite gradient from ``out.sum() + sum(losses)``;
- losses are finite scalars >= 0, equal torch's closed-form KL for normal posteriors
  and priors, are computed on demand (never stale, never accumulated over calls),
  and are ``list(layer.kl_terms().values())``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from contract.cases import CASES, names
from contract.util import first, posterior_means, random_params, tensors, total
from torch.distributions import Normal, kl_divergence

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers.regularizers import NormalKLDivergence

SIZED = [n for n, c in CASES.items() if any(type(a) is int for a in c.args) and c.make is None]
BAD_SIZES = [(0, ValueError), (-2, ValueError), (2.5, (TypeError, ValueError)),
             (True, (TypeError, ValueError)), ("a", (TypeError, ValueError))]  # fmt: skip
COUNTERPART = [n for n, c in CASES.items() if c.counterpart is not None]
BAYESIAN = names(bayesian=True)


# Discretize's ints are bounds, not sizes (its `bad` arguments are in the registry)
@pytest.mark.parametrize("name", [n for n in SIZED if CASES[n].cls is not layers.Discretize])
def test_bad_sizes_raise_naming_the_layer(name: str) -> None:
    case = CASES[name]
    for i, size in enumerate(case.args):
        if type(size) is not int:
            continue
        for bad, error in BAD_SIZES:
            args = (*case.args[:i], bad, *case.args[i + 1 :])
            with pytest.raises(error, match=case.cls.__name__):
                case.cls(*args, **case.kwargs)


# the families whose sizes are torch's layer sizes (outputs, flows: sizes of their own)
NUMPY_SIZED = [
    n for n in SIZED
    if not any(f".{p}" in CASES[n].cls.__module__ for p in ("outputs", "reversible", "point_"))
]  # fmt: skip


@pytest.mark.parametrize("name", NUMPY_SIZED)
def test_numpy_integer_sizes_build_the_same_layer(name: str) -> None:
    """Sizes computed with numpy (``np.prod(shape)``) are integers to torch's layers: the
    layer builds with them, with Python ints as attributes and parameter shapes."""
    case = CASES[name]
    args = tuple(np.int64(a) if type(a) is int else a for a in case.args)
    torch.manual_seed(0)
    expected = case.cls(*case.args, **case.kwargs).state_dict()
    torch.manual_seed(0)
    layer = case.cls(*args, **case.kwargs)
    got = layer.state_dict()
    assert list(got) == list(expected)
    assert all(got[k].shape == expected[k].shape for k in got)
    assert all(type(d) is int for t in got.values() for d in t.shape)


def test_numpy_float_hyperparameters_are_numbers() -> None:
    """Real numbers from numpy (``np.float32``, which is not a Python float) are numbers
    to the layers, priors and objectives, as to torch's ``nn.Dropout(p=np.float32(.3))``:
    the same values as the Python floats; a bool or a string is still refused."""
    f32 = np.float32
    assert bl.layers.MCDropout(f32(0.25)).p == 0.25
    prior = bl.regularizers.NormalKLDivergence(scale=f32(0.5))
    layer = bl.layers.LinearReparameterization(3, 2, weight_regularizer=prior)
    assert float(layer.weight_regularizer.prior_scale.flatten()[0]) == 0.5
    loss = bl.elbo_loss(torch.tensor(1.0), layer, 10, kl_weight=f32(0.5))
    torch.testing.assert_close(loss, bl.elbo_loss(torch.tensor(1.0), layer, 10, kl_weight=0.5))
    for bad in (True, "0.3"):
        with pytest.raises(TypeError, match="MCDropout"):
            bl.layers.MCDropout(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.bad])
def test_bad_arguments_raise_naming_the_layer(name: str) -> None:
    case = CASES[name]
    for args, kwargs in case.bad:
        with pytest.raises((TypeError, ValueError), match=case.cls.__name__):
            case.cls(*args, **{**case.kwargs, **kwargs})


def _shapes(out: object) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in tensors(out)]


@pytest.mark.parametrize("mode", ["sample", "mean", "frozen"])
@pytest.mark.parametrize("name", COUNTERPART)
def test_output_shapes_equal_the_torch_counterpart(name: str, mode: str) -> None:
    case = CASES[name]
    layer, reference = case.build(), case.build_torch()
    bl.set_sampling(layer, mode)
    for shape in (case.shape, case.batch(1), *case.more_shapes):
        x = case.input(shape)
        out, expected = case.call(layer, x), case.call(reference, x)
        assert _shapes(out) == _shapes(expected), shape
        assert first(out).dtype == first(expected).dtype


def _zero_scale(layer: torch.nn.Module) -> None:
    random_params(layer)
    with torch.no_grad():
        for n, p in layer.named_parameters():
            if n.endswith("_rho"):
                p.fill_(-100.0)  # softplus(-100) ≈ 4e-44
            elif n.endswith("_log_sigma2"):
                p.fill_(-200.0)  # σ = exp(-100)


@pytest.mark.parametrize(
    "name", [n for n in COUNTERPART if CASES[n].vectorized and CASES[n].counterpart_values]
)
def test_zero_posterior_scale_is_the_counterpart_on_posterior_means(name: str) -> None:
    case = CASES[name]
    layer, reference = case.build(), case.build_torch()
    _zero_scale(layer)
    reference.load_state_dict(posterior_means(layer, reference))
    for shape in (case.shape, *case.more_shapes):
        x = case.input(shape)
        for got, want in zip(
            tensors(case.call(layer, x)), tensors(case.call(reference, x)), strict=True
        ):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "name", [n for n in COUNTERPART if CASES[n].vectorized and CASES[n].counterpart_values]
)
def test_mean_mode_is_the_counterpart_on_posterior_means(name: str) -> None:
    case = CASES[name]
    layer, reference = case.build(), case.build_torch()
    random_params(layer)
    reference.load_state_dict(posterior_means(layer, reference))
    x = case.input()
    with bl.posterior_mean(layer):
        got = list(tensors(case.call(layer, x)))
    for a, b in zip(got, tensors(case.call(reference, x)), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", list(CASES))
def test_every_parameter_gets_a_finite_gradient(name: str) -> None:
    case = CASES[name]
    layer = case.warmed()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. jitter added to a GP's Cholesky factor
        out = case.call(layer, case.input(seed=1))
        loss = total(out) + sum(bl.losses(layer), torch.zeros(()))
    params = {n: p for n, p in layer.named_parameters() if p.requires_grad}
    if not params:
        return
    loss.backward()
    for n, p in params.items():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
    if case.traced:  # a weight layer: every parameter reaches the output or the KL
        assert all(p.grad.abs().sum() > 0 for p in params.values())


def _prior(layer: torch.nn.Module, name: str) -> Normal | None:
    reg = layer.parameter_spec(name).regularizer
    if not isinstance(reg, NormalKLDivergence):
        return None
    return Normal(reg.prior_loc, reg.prior_scale)


@pytest.mark.parametrize("name", BAYESIAN)
def test_losses_are_finite_non_negative_scalars_and_the_closed_form_kl(name: str) -> None:
    case = CASES[name]
    layer = case.warmed()
    random_params(layer)
    terms = layer.kl_terms()
    for term in layer.losses:
        assert term.shape == () and torch.isfinite(term) and term >= 0
    # a layer's losses are its KL terms
    assert len(layer.losses) == len(terms)
    assert all(torch.equal(a, b) for a, b in zip(terms.values(), layer.losses, strict=True))
    if case.traced:
        nested = [t for m in bl.bayesian_modules(layer) for t in m.kl_terms().values()]
        assert len(bl.losses(layer)) == len(nested)  # the model's losses: every layer's
    _check_closed_form(layer, terms)
    # on demand: never stale, never accumulated over calls
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(3):
            case.call(layer, case.input(seed=seed))
    again = layer.kl_terms()
    assert again.keys() == terms.keys()
    for n in terms:
        torch.testing.assert_close(again[n], terms[n], msg=n)
    random_params(layer)  # new posteriors: new terms
    _check_closed_form(layer, layer.kl_terms())


def _check_closed_form(layer: torch.nn.Module, terms: dict[str, torch.Tensor]) -> None:
    """Each normal posterior's term is torch's KL to its normal prior, in the layer and
    in the Bayesian layers nested in it (attention's ``out_proj``)."""
    for m in bl.bayesian_modules(layer):
        own = terms if m is layer else m.kl_terms()
        for n, spec in m.named_random_parameters():
            prior = _prior(m, n)
            if prior is None or not spec.initializer.is_normal:
                continue
            loc, scale = m.posterior_loc_scale(n)
            expected = kl_divergence(Normal(loc, scale), prior).sum()
            torch.testing.assert_close(own[n], expected, msg=n)
