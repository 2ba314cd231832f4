"""Sampling modes, vectorised samples and tracing of every registered layer.

- two calls differ, two calls under the same seed agree (layers that sample);
- ``"mean"`` is deterministic; ``"frozen"`` repeats one function (also on a
  sub-batch) until ``resample``, and gradients still reach the posterior;
- ``bl.vectorized_samples``: K function samples folded into the batch dim give K
  times the batch; a batch that is not a multiple of K raises ``ValueError`` naming
  the layer; block k of the output equals a plain call given the k-th slice of the
  same noise (every draw goes through ``layer.noise``, so a noise hook replays it);
- ``bl.tape`` records every random parameter by module path, as a draw of its
  posterior, and conditioning on the record reproduces the output exactly.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from contract.cases import CASES, Case, names, params
from contract.util import random_parameter_paths, random_params, tensors
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import tracing


def _run(case: Case, layer: nn.Module, x: Tensor) -> list[Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. jitter added to a GP's Cholesky factor
        return [t.detach() for t in tensors(case.call(layer, x))]


def _equal(a: list[Tensor], b: list[Tensor]) -> bool:
    return all(torch.equal(s, t) for s, t in zip(a, b, strict=True))


@pytest.mark.parametrize("name", names(random=True))
def test_calls_differ_and_the_same_seed_agrees(name: str) -> None:
    case = CASES[name]
    layer, x = case.warmed(), case.input()
    assert not _equal(_run(case, layer, x), _run(case, layer, x))
    torch.manual_seed(123)
    expected = _run(case, layer, x)
    torch.manual_seed(123)
    assert _equal(_run(case, layer, x), expected)


@pytest.mark.parametrize("name", names(bayesian=True))
def test_mean_mode_is_deterministic(name: str) -> None:
    case = CASES[name]
    layer, x = case.warmed(), case.input()
    random_params(layer)
    with bl.posterior_mean(layer):
        assert _equal(_run(case, layer, x), _run(case, layer, x))


@pytest.mark.parametrize("name", names(bayesian=True, random=True))
def test_frozen_mode_is_one_function_until_resample(name: str) -> None:
    case = CASES[name]
    layer, x = case.warmed(), case.input()
    random_params(layer)
    if case.traced:  # two identical examples
        x.select(case.batch_dim, 1).copy_(x.select(case.batch_dim, 0))
    with bl.frozen_sample(layer):
        first = _run(case, layer, x)
        assert _equal(_run(case, layer, x), first)
        if case.traced:  # one function: identical examples, identical outputs
            out = first[0]
            assert torch.equal(out.select(case.batch_dim, 0), out.select(case.batch_dim, 1))
        if case.traced:  # per example: a sub-batch sees the same function
            part = x.narrow(case.batch_dim, 1, x.shape[case.batch_dim] - 1)
            got = _run(case, layer, part)[0]
            expected = first[0].narrow(case.batch_dim, 1, part.shape[case.batch_dim])
            torch.testing.assert_close(got, expected)
        bl.resample(layer)
        second = _run(case, layer, x)
        assert not _equal(second, first)
        assert _equal(_run(case, layer, x), second)
        if case.traced:  # gradients still reach the posterior scales
            out = tensors(case.call(layer, x))
            torch.stack([t.sum() for t in out]).sum().backward()
            scales = ("_rho", "_log_sigma2")  # softplus⁻¹ σ; variational dropout's log σ²
            rho = [p.grad for n, p in layer.named_parameters() if n.endswith(scales)]
            assert rho and any(g is not None and g.abs().sum() > 0 for g in rho)


def _fold(case: Case, x: Tensor, k: int) -> Tensor:
    return torch.cat([x] * k, dim=case.batch_dim)  # sample-major


@contextmanager
def _record(layer: nn.Module) -> Iterator[dict[str, list[Tensor]]]:
    drawn: dict[str, list[Tensor]] = defaultdict(list)
    handles = []
    for m in bl.bayesian_modules(layer):

        def hook(m, name, kind, shape, make):  # noqa: ANN001, ANN202
            drawn[f"{id(m)}.{name}"].append(value := make(shape))
            return value

        handles.append(m.register_noise_hook(hook))
    try:
        yield drawn
    finally:
        for h in handles:
            h.remove()


def _slice(full: Tensor, shape: torch.Size, k: int, n: int) -> Tensor:
    """Sample ``k``'s part of noise drawn for ``n`` samples at once, for a plain draw of
    ``shape``: a leading K (parameter draws) or K folded into one dim (per example)."""
    if full.shape == (n, *shape):
        return full[k]
    for d in range(len(shape)):
        if full.shape == (*shape[:d], n * shape[d], *shape[d + 1 :]):
            return full.unflatten(d, (n, shape[d])).select(d, k)
    if full.shape == shape:
        return full
    raise AssertionError(f"noise of shape {tuple(full.shape)} for {n} samples at once, "
                         f"{tuple(shape)} for one")  # fmt: skip


@contextmanager
def _replay(layer: nn.Module, drawn: dict[str, list[Tensor]], k: int, n: int) -> Iterator[None]:
    seen: dict[str, int] = defaultdict(int)
    handles = []
    for m in bl.bayesian_modules(layer):

        def hook(m, name, kind, shape, make):  # noqa: ANN001, ANN202
            key = f"{id(m)}.{name}"
            entries, i = drawn[key], seen[key]
            seen[key] += 1
            if all(e.shape == shape for e in entries) and len(entries) % n == 0:
                return entries[k * (len(entries) // n) + i]  # drawn sample by sample
            return _slice(entries[i], shape, k, n)

        handles.append(m.register_noise_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize(
    "name", params("test_vectorized_samples_are_k_plain_calls_given_the_same_noise",
                   names(vectorized=True))
)  # fmt: skip
def test_vectorized_samples_are_k_plain_calls_given_the_same_noise(name: str) -> None:
    case = CASES[name]
    like = {"dtype": torch.float64} if case.factory else {}  # float64: exact comparisons
    layer = case.warmed(**like)
    random_params(layer)
    k = 3
    x = case.input(**like)
    with bl.vectorized_samples(layer, k):
        with _record(layer) as drawn:
            out = _run(case, layer, _fold(case, x, k))
        with pytest.raises(ValueError, match=f"{case.cls.__name__}.*multiple of {k}"):
            case.call(layer, case.input(case.batch(k + 1), **like))
    single = _run(case, layer, x)
    dims = [_folded_dim(got, one, k) for got, one in zip(out, single, strict=True)]
    blocks = [o.chunk(k, d) for o, d in zip(out, dims, strict=True)]
    assert not all(torch.equal(b[0], b[1]) for b in blocks)  # K different functions
    for j in range(k):
        with _replay(layer, drawn, j, k):
            expected = _run(case, layer, x)
        for b, e in zip(blocks, expected, strict=True):
            torch.testing.assert_close(b[j], e, msg=f"sample {j}")


def _folded_dim(got: Tensor, one: Tensor, k: int) -> int:
    """The dim of ``got`` that holds K times ``one``'s (e.g. the batch of attention
    weights is dim 0 while the output's is dim 1)."""
    for d in range(one.dim()):
        if got.shape == (*one.shape[:d], k * one.shape[d], *one.shape[d + 1 :]):
            return d
    raise AssertionError(f"output {tuple(got.shape)} for K={k}, {tuple(one.shape)} for one")


class _Parent(nn.Module):
    """A model holding the layer as ``child``: its draws are named ``child.<param>``."""

    def __init__(self, child: nn.Module) -> None:
        super().__init__()
        self.child = child

    def forward(self, *args: object) -> object:
        return self.child(*args)


@pytest.mark.parametrize("name", names(traced=True))
def test_tape_records_every_random_parameter_by_module_path(name: str) -> None:
    case = CASES[name]
    model, x = _Parent(case.build()), case.input()
    with bl.tape() as t:
        out = _run(case, model, x)
    assert sorted(t) == sorted(random_parameter_paths(model))
    for n, rv in t.items():
        assert isinstance(rv, tracing.LayerParameter), n
        path, _, param = n.rpartition(".")
        owner = model.get_submodule(path)
        assert rv.layer is owner and rv.param == param
        assert rv.shape == owner.parameter_spec(param).shape
    with bl.condition({n: rv.value.detach() for n, rv in t.items()}):
        again = _run(case, model, x)
    for a, b in zip(again, out, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
