"""``torch.compile(fullgraph=True)`` of every registered layer: its posterior-mean call
(a plain call for layers without posterior) traces into one graph, without graph
breaks, and gives the eager output. Dynamo only (the counting backend runs the graph
eagerly); ``tests/test_compile.py`` compiles families with real backends, checks
sampled moments and recompilation."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
import torch._dynamo
from contract.cases import CASES, names
from contract.util import tensors
from torch._dynamo.testing import CompileCounter

import bayesian_layers as bl

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("checks_off_as_dynamo_sets_them"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", names(compile=True))
def test_posterior_mean_call_compiles_in_one_graph_and_matches_eager(name: str) -> None:
    case = CASES[name]
    layer, x = case.warmed(), case.input()

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tensors(case.call(layer, x)))

    counter = CompileCounter()
    compiled = torch.compile(run, backend=counter, fullgraph=True)
    with bl.posterior_mean(layer), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. jitter added to a GP's Cholesky factor
        if case.random and not case.bayesian:  # a random output: the same seed
            torch.manual_seed(3)
        got = compiled(x)
        if case.random and not case.bayesian:
            torch.manual_seed(3)
        expected = run(x)
    assert counter.frame_count <= 1  # one graph (none for an identity: MCDropout in "mean")
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
