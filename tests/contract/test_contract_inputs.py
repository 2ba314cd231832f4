"""Inputs of every registered layer: dtypes and devices, wrong sizes, empty batches.

- ``dtype=torch.float64`` and ``device="meta"`` reach every parameter and buffer, the
  output and the losses; ``.to(torch.float64)`` moves the whole state;
- a floating argument of another dtype than the parameters' raises ``TypeError``
  naming the layer, the argument, the expected and the received dtype (a float32
  input to a float64 layer too);
- a wrong width, too few or too many dims raise ``ValueError`` naming the layer;
- an empty batch gives torch's (empty) output shape in every sampling mode.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
import torch
from contract.cases import CASES, Case, names, params
from contract.util import first, resized, tensors, total
from torch import Tensor, nn

import bayesian_layers as bl

FLOATING = torch.float64, torch.bfloat16, torch.float16


def _floating(module: nn.Module) -> dict[str, Tensor]:
    state = dict(module.named_parameters()) | dict(module.named_buffers())
    return {n: t for n, t in state.items() if t.is_floating_point()}


def _call(case: Case, layer: nn.Module, x: Tensor) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. jitter added to a GP's Cholesky factor
        return case.call(layer, x)


@pytest.mark.parametrize("name", names(factory=True))
def test_float64_reaches_every_parameter_buffer_output_and_loss(name: str) -> None:
    case = CASES[name]
    layer = case.warmed(dtype=torch.float64)
    state = _floating(layer)
    assert state and all(t.dtype == torch.float64 for t in state.values()), state.keys()
    out = _call(case, layer, case.input(dtype=torch.float64))
    assert all(t.dtype == torch.float64 for t in tensors(out) if t.is_floating_point())
    assert all(t.dtype == torch.float64 for t in bl.losses(layer))
    moved = case.warmed()
    _call(case, moved, case.input())  # a forward whose graph is alive, then convert
    moved.double()
    assert all(t.dtype == torch.float64 for t in _floating(moved).values())
    out = _call(case, moved, case.input(dtype=torch.float64))
    (total(out) + sum(bl.losses(moved), torch.zeros((), dtype=torch.float64))).backward()
    for n, p in moved.named_parameters():
        assert p.grad is None or p.grad.dtype == torch.float64, n
    for m in bl.bayesian_modules(moved):  # the posteriors follow
        for n, _ in m.named_random_parameters():
            assert m.posterior(n).mean.dtype == torch.float64, n


@pytest.mark.parametrize(
    "name",
    params("test_meta_device_reaches_every_parameter_and_the_output", names(vectorized=True)),
)
def test_meta_device_reaches_every_parameter_and_the_output(name: str) -> None:
    case = CASES[name]
    layer = case.build(device="meta")
    state = dict(layer.named_parameters()) | dict(layer.named_buffers())
    assert all(t.device.type == "meta" for t in state.values()), state.keys()
    out = first(case.call(layer, case.input(device="meta")))
    assert out.device.type == "meta"
    assert out.shape == first(case.call(case.build(), case.input())).shape


def _cast(args: tuple[Any, ...], position: int, dtype: torch.dtype) -> tuple[Any, ...]:
    """``args`` with the tensor(s) at ``position`` cast to ``dtype``."""

    def cast(a: Any) -> Any:
        return tuple(t.to(dtype) for t in a) if isinstance(a, tuple) else a.to(dtype)

    return tuple(cast(a) if i == position else a for i, a in enumerate(args))


def _dtype_message(case: Case, argument: str, expected: torch.dtype, got: torch.dtype) -> str:
    return rf"{re.escape(case.cls.__name__)} expected `{argument}` of dtype {expected}.*got {got}"


@pytest.mark.parametrize("got", FLOATING, ids=str)
@pytest.mark.parametrize("name", names(checks_dtype=True))
def test_an_argument_of_another_dtype_raises_naming_layer_argument_and_dtypes(
    name: str, got: torch.dtype
) -> None:
    case = CASES[name]
    layer = case.build()
    args = case.all_inputs(case.input())
    layer(*args)  # the right dtype works
    for position, argument in enumerate(case.arguments):
        with pytest.raises(TypeError, match=_dtype_message(case, argument, torch.float32, got)):
            layer(*_cast(args, position, got))


@pytest.mark.parametrize("name", names(checks_dtype=True))
def test_a_float32_input_to_a_float64_layer_raises(name: str) -> None:
    case = CASES[name]
    layer = case.build(dtype=torch.float64)
    args = case.all_inputs(case.input(dtype=torch.float64))
    assert first(layer(*args)).dtype == torch.float64
    expected = _dtype_message(case, case.arguments[0], torch.float64, torch.float32)
    with pytest.raises(TypeError, match=expected):
        layer(*_cast(args, 0, torch.float32))


def _wrong_shapes(case: Case) -> list[tuple[int, ...]]:
    shapes = []
    if case.feature_dim is not None and case.kind == "float":
        dim = case.feature_dim
        shapes.append(resized(case.shape, dim, case.shape[dim] + 1))
    if case.min_rank:
        shapes.append(case.shape[len(case.shape) - case.min_rank + 1 :])
    if case.max_rank is not None:
        shapes.append((*case.shape, 1) if case.max_rank == len(case.shape) else (2, *case.shape))
    return shapes


@pytest.mark.parametrize("name", names(checks_dtype=True))
def test_a_wrong_width_or_rank_raises_value_error_naming_the_layer(name: str) -> None:
    case = CASES[name]
    layer = case.build()
    for shape in _wrong_shapes(case):
        with pytest.raises(ValueError, match=rf"^{case.cls.__name__} expected .*got \(?"):
            case.call(layer, case.input(shape))


@pytest.mark.parametrize("mode", ["sample", "mean", "frozen"])
@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.counterpart is not None])
def test_an_empty_batch_gives_the_torch_layers_empty_output(name: str, mode: str) -> None:
    case = CASES[name]
    layer, reference = case.build(), case.build_torch()
    bl.set_sampling(layer, mode)
    args = case.all_inputs(case.input(case.batch(0)))  # states too: empty as well
    out, expected = first(layer(*args)), first(reference(*args))
    assert out.shape == expected.shape and out.numel() == 0
    assert out.dtype == expected.dtype
