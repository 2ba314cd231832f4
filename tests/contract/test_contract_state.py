"""State of every registered layer: ``state_dict`` round trips through a file loaded
with ``weights_only=True`` (priors included); a Bayesian layer's failed load changes
nothing in it; copies (``deepcopy``, ``pickle``) of a layer whose graph is alive are
the same function and independent of the original."""

from __future__ import annotations

import copy
import io
import pickle
import re
import warnings

import pytest
import torch
from contract.cases import CASES, Case, names
from contract.util import tensors
from torch import Tensor, nn

import bayesian_layers as bl


def _run(case: Case, layer: nn.Module, x: Tensor, seed: int = 5) -> list[Tensor]:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. jitter added to a GP's Cholesky factor
        return [t.detach() for t in tensors(case.call(layer, x))]


def _same(a: list[Tensor], b: list[Tensor]) -> None:
    for s, t in zip(a, b, strict=True):
        torch.testing.assert_close(s, t, rtol=0, atol=0)


def _perturb(layer: nn.Module) -> None:
    """Every parameter and prior away from its initial value (scales stay positive)."""
    with torch.no_grad():
        for n, p in layer.named_parameters():
            p.add_(0.1 * torch.randn_like(p)) if not n.endswith("_rho") else p.sub_(0.5)
        for n, b in layer.named_buffers():
            if n.endswith("prior_loc"):
                b.add_(0.5)
            elif n.endswith("prior_scale"):
                b.mul_(2.0)


def _snapshot(layer: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_round_trips_through_a_weights_only_load(name: str) -> None:
    case = CASES[name]
    src, x = case.warmed(), case.input()
    _perturb(src)
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    dst = case.warmed(seed=1)
    dst.load_state_dict(state)
    assert dst.state_dict().keys() == state.keys()
    for k, v in dst.state_dict().items():
        assert torch.equal(v, state[k]), k
    _same(_run(case, dst, x), _run(case, src, x))  # the same function under one seed
    if case.bayesian:
        torch.testing.assert_close(bl.losses(dst), bl.losses(src), rtol=0, atol=0)
        with bl.posterior_mean(src), bl.posterior_mean(dst):
            _same(_run(case, dst, x), _run(case, src, x))


def _other(case: Case) -> dict[str, Tensor]:
    """The state of a second, differently initialised layer of the case."""
    layer = case.warmed(seed=1)
    _perturb(layer)
    return _snapshot(layer)


#: Bayesian layers with state (MCDropout has none)
STATEFUL = [n for n in names(bayesian=True) if CASES[n].build().state_dict()]


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("name", STATEFUL)
def test_a_wrong_shape_raises_naming_the_key_and_changes_nothing(name: str, where: str) -> None:
    case = CASES[name]
    layer = case.warmed()
    before, state = _snapshot(layer), _other(case)
    good = dict(state)
    floating = [k for k, v in state.items() if v.is_floating_point()]
    key = floating[0 if where == "first" else -1]
    state[key] = torch.zeros(*state[key].shape, 2)  # one more dimension
    expected = f"size mismatch for {re.escape(key)}.*{case.cls.__name__}"
    with pytest.raises(RuntimeError, match=expected):
        layer.load_state_dict(state)
    for k, v in _snapshot(layer).items():
        assert torch.equal(v, before[k]), f"{k} changed by a failed load"
    layer.load_state_dict(good)  # a good state dict still loads, every key
    for k, v in layer.state_dict().items():
        assert torch.equal(v, good[k]), k


@pytest.mark.parametrize("name", STATEFUL)
def test_a_missing_key_raises_and_changes_nothing(name: str) -> None:
    case = CASES[name]
    layer = case.warmed()
    before, state = _snapshot(layer), _other(case)
    missing = next(reversed(state))
    del state[missing]
    with pytest.raises(RuntimeError, match=f'Missing key.*"{re.escape(missing)}"'):
        layer.load_state_dict(state)
    for k, v in _snapshot(layer).items():
        assert torch.equal(v, before[k]), f"{k} changed by a failed load"


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", list(CASES))
def test_copies_of_a_used_layer_are_the_same_function(name: str, how: str) -> None:
    """Copies (EMA, ensembles, workers) right after a forward whose graph is alive."""
    case = CASES[name]
    layer, x = case.warmed(), case.input()
    _perturb(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        case.call(layer, x)  # its graph is still alive
    clone = copy.deepcopy(layer) if how == "deepcopy" else pickle.loads(pickle.dumps(layer))
    _same(_run(case, clone, x), _run(case, layer, x))
    if case.bayesian:
        torch.testing.assert_close(bl.losses(clone), bl.losses(layer), rtol=0, atol=0)
        with bl.posterior_mean(layer), bl.posterior_mean(clone):
            _same(_run(case, clone, x), _run(case, layer, x))
    params = list(clone.parameters())
    if params:  # independent of the original
        with torch.no_grad():
            params[0].add_(1.0)
        assert not torch.equal(params[0], next(iter(layer.parameters())))
