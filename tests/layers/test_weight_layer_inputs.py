"""Bad input to every weight layer (dense, conv, transposed conv, recurrent cells and
sequences, attention, embedding, MCDropout): a wrong dtype raises ``TypeError`` naming
the layer, the argument, the expected and the received dtype; a wrong width or rank
raises ``ValueError`` naming the layer; an empty batch gives the torch counterpart's
(empty) output shape in every sampling mode. One registry line per layer."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

Inputs = Callable[[int, torch.dtype], tuple[Tensor, ...]]


class Case(NamedTuple):
    build: Callable[..., nn.Module]  # (dtype=...) -> layer
    torch_build: Callable[..., nn.Module]  # the deterministic counterpart
    inputs: Inputs  # (batch, dtype) -> positional arguments
    arguments: tuple[str, ...]  # the names of the floating arguments, in order
    wrong_width: Inputs  # (batch, dtype) -> arguments with a wrong last/channel size
    wrong_rank: tuple[Tensor, ...]


def _seq(t: int, b: int, f: int, dt: torch.dtype) -> Tensor:
    return torch.randn(t, b, f, dtype=dt)


def _dense(cls: type) -> Case:
    return Case(
        lambda **kw: cls(3, 2, **kw),
        lambda **kw: nn.Linear(3, 2, **kw),
        lambda b, dt: (torch.randn(b, 3, dtype=dt),),
        ("input",),
        lambda b, dt: (torch.randn(b, 4, dtype=dt),),
        (torch.randn(()),),
    )


def _conv(cls: type, torch_cls: type, dims: int, **extra: object) -> Case:
    spatial = (5,) * dims
    return Case(
        lambda **kw: cls(2, 3, 2, **extra, **kw),
        lambda **kw: torch_cls(2, 3, 2, **extra, **kw),
        lambda b, dt: (torch.randn(b, 2, *spatial, dtype=dt),),
        ("input",),
        lambda b, dt: (torch.randn(b, 3, *spatial, dtype=dt),),
        (torch.randn(2, 2, *spatial, 1),),
    )


def _cell(cls: type, torch_cls: type, lstm: bool) -> Case:
    def inputs(b: int, dt: torch.dtype) -> tuple:
        h = torch.zeros(b, 4, dtype=dt)
        return (torch.randn(b, 3, dtype=dt), (h, h.clone()) if lstm else h)

    return Case(
        lambda **kw: cls(3, 4, **kw),
        lambda **kw: torch_cls(3, 4, **kw),
        inputs,
        ("input", "hx"),
        lambda b, dt: (torch.randn(b, 5, dtype=dt),),
        (torch.randn(2, 2, 3),),
    )


def _lstm(cls: type) -> Case:
    def inputs(b: int, dt: torch.dtype) -> tuple:
        h = torch.zeros(1, b, 4, dtype=dt)
        return (_seq(5, b, 3, dt), (h, h.clone()))

    return Case(
        lambda **kw: cls(3, 4, **kw),
        lambda **kw: nn.LSTM(3, 4, **kw),
        inputs,
        ("input", "hx"),
        lambda b, dt: (_seq(5, b, 2, dt),),
        (torch.randn(3),),
    )


def _attention(cls: type) -> Case:
    return Case(
        lambda **kw: cls(4, 2, **kw),
        lambda **kw: nn.MultiheadAttention(4, 2, **kw),
        lambda b, dt: (_seq(5, b, 4, dt), _seq(6, b, 4, dt), _seq(6, b, 4, dt)),
        ("query", "key", "value"),
        lambda b, dt: (_seq(5, b, 3, dt),) * 3,
        (torch.randn(4),) * 3,
    )


CASES = {
    "LinearReparameterization": _dense(layers.LinearReparameterization),
    "LinearFlipout": _dense(layers.LinearFlipout),
    "LinearLocalReparameterization": _dense(layers.LinearLocalReparameterization),
    "Conv1dReparameterization": _conv(layers.Conv1dReparameterization, nn.Conv1d, 1),
    "Conv1dFlipout": _conv(layers.Conv1dFlipout, nn.Conv1d, 1),
    "Conv2dReparameterization": _conv(layers.Conv2dReparameterization, nn.Conv2d, 2),
    "Conv2dFlipout": _conv(layers.Conv2dFlipout, nn.Conv2d, 2, padding=1),
    "Conv2dLocalReparameterization": _conv(layers.Conv2dLocalReparameterization, nn.Conv2d, 2),
    "Conv3dReparameterization": _conv(layers.Conv3dReparameterization, nn.Conv3d, 3),
    "Conv3dFlipout": _conv(layers.Conv3dFlipout, nn.Conv3d, 3),
    "ConvTranspose1dReparameterization": _conv(
        layers.ConvTranspose1dReparameterization, nn.ConvTranspose1d, 1, stride=2
    ),
    "ConvTranspose1dFlipout": _conv(layers.ConvTranspose1dFlipout, nn.ConvTranspose1d, 1),
    "ConvTranspose2dReparameterization": _conv(
        layers.ConvTranspose2dReparameterization, nn.ConvTranspose2d, 2
    ),
    "ConvTranspose2dFlipout": _conv(layers.ConvTranspose2dFlipout, nn.ConvTranspose2d, 2),
    "ConvTranspose3dReparameterization": _conv(
        layers.ConvTranspose3dReparameterization, nn.ConvTranspose3d, 3
    ),
    "ConvTranspose3dFlipout": _conv(layers.ConvTranspose3dFlipout, nn.ConvTranspose3d, 3),
    "LSTMCellReparameterization": _cell(layers.LSTMCellReparameterization, nn.LSTMCell, True),
    "LSTMCellFlipout": _cell(layers.LSTMCellFlipout, nn.LSTMCell, True),
    "GRUCellReparameterization": _cell(layers.GRUCellReparameterization, nn.GRUCell, False),
    "GRUCellFlipout": _cell(layers.GRUCellFlipout, nn.GRUCell, False),
    "LSTMReparameterization": _lstm(layers.LSTMReparameterization),
    "LSTMFlipout": _lstm(layers.LSTMFlipout),
    "MultiheadAttentionReparameterization": _attention(layers.MultiheadAttentionReparameterization),
    "MultiheadAttentionFlipout": _attention(layers.MultiheadAttentionFlipout),
}
NAMES = list(CASES)


def _first(out: object) -> Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    assert isinstance(out, Tensor)
    return out


def _with(args: tuple, position: int, dtype: torch.dtype) -> tuple:
    """``args`` with the tensor(s) at ``position`` cast to ``dtype``."""

    def cast(a: object) -> object:
        if isinstance(a, tuple):
            return tuple(t.to(dtype) for t in a)
        return a.to(dtype)  # type: ignore[union-attr]

    return tuple(cast(a) if i == position else a for i, a in enumerate(args))


def _dtype_message(name: str, argument: str, expected: torch.dtype, got: torch.dtype) -> str:
    return rf"{name} expected `{argument}` of dtype {re.escape(str(expected))}.*got {got}"


@pytest.mark.parametrize("got", [torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_wrong_dtype_of_every_argument_names_layer_argument_and_dtypes(
    name: str, got: torch.dtype
) -> None:
    case = CASES[name]
    layer = case.build()
    args = case.inputs(2, torch.float32)
    layer(*args)  # the right dtype works
    for position, argument in enumerate(case.arguments):
        with pytest.raises(TypeError, match=_dtype_message(name, argument, torch.float32, got)):
            layer(*_with(args, position, got))


@pytest.mark.parametrize("name", NAMES)
def test_float32_input_to_a_float64_layer_raises(name: str) -> None:
    case = CASES[name]
    layer = case.build(dtype=torch.float64)
    args = case.inputs(2, torch.float64)
    assert _first(layer(*args)).dtype == torch.float64
    expected = _dtype_message(name, case.arguments[0], torch.float64, torch.float32)
    with pytest.raises(TypeError, match=expected):
        layer(*_with(args, 0, torch.float32))


@pytest.mark.parametrize("name", NAMES)
def test_lower_precision_input_is_accepted_under_autocast(name: str) -> None:
    """Mixed precision: a bf16 output of a previous layer may feed a float32 layer."""
    case = CASES[name]
    layer = case.build()
    args = _with(case.inputs(2, torch.float32), 0, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _first(layer(*args))
        with pytest.raises(TypeError, match=rf"{name} expected `.*`.*float16"):
            layer(*_with(args, 0, torch.float16))  # neither the parameters' nor autocast's
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_wrong_width_and_rank_raise_value_error_naming_the_layer(name: str) -> None:
    case = CASES[name]
    layer = case.build()
    for args in (case.wrong_width(2, torch.float32), case.wrong_rank):
        with pytest.raises(ValueError, match=rf"^{name} expected .*got \(?"):
            layer(*args)


@pytest.mark.parametrize("mode", ["sample", "mean", "frozen"])
@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_the_torch_layers_empty_output(name: str, mode: str) -> None:
    case = CASES[name]
    layer, reference = case.build(), case.torch_build()
    args = case.inputs(0, torch.float32)
    bl.set_sampling(layer, mode)
    out, expected = _first(layer(*args)), _first(reference(*args))
    assert out.shape == expected.shape and out.numel() == 0
    assert out.dtype == torch.float32


# ------------------------------------------------------------------ embedding, dropout
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool], ids=str)
def test_embedding_rejects_non_integer_indices(dtype: torch.dtype) -> None:
    layer = layers.EmbeddingReparameterization(5, 3)
    with pytest.raises(
        TypeError, match=rf"EmbeddingReparameterization expected `input` .*integer.*{dtype}"
    ):
        layer(torch.zeros(2, dtype=dtype))


@pytest.mark.parametrize("shape", [(0,), (0, 4), (2, 0)], ids=str)
def test_embedding_empty_index_tensor(shape: tuple[int, ...]) -> None:
    layer = layers.EmbeddingReparameterization(5, 3)
    idx = torch.zeros(shape, dtype=torch.long)
    assert layer(idx).shape == nn.Embedding(5, 3)(idx).shape


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool], ids=str)
def test_mc_dropout_rejects_non_floating_input(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=rf"MCDropout expected `input` .*floating.*{dtype}"):
        layers.MCDropout(0.5)(torch.ones(3, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_mc_dropout_keeps_any_floating_dtype(dtype: torch.dtype) -> None:
    out = layers.MCDropout(0.5)(torch.ones(4, 3, dtype=dtype))
    assert out.dtype == dtype and out.shape == (4, 3)


# ---------------------------------------------------------------------- attention masks
ATTENTION = ["MultiheadAttentionReparameterization", "MultiheadAttentionFlipout"]


@pytest.mark.parametrize("mask", ["attn_mask", "key_padding_mask"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.int64], ids=str)
@pytest.mark.parametrize("name", ATTENTION)
def test_attention_mask_of_a_wrong_dtype_raises(name: str, dtype: torch.dtype, mask: str) -> None:
    layer = CASES[name].build()
    q = _seq(5, 2, 4, torch.float32)
    shape = (5, 5) if mask == "attn_mask" else (2, 5)
    for ok in (torch.bool, torch.float32):  # torch's two kinds of mask
        layer(q, q, q, **{mask: torch.zeros(shape, dtype=ok)})
    expected = rf"{name} expected `{mask}` of dtype torch.bool or torch.float32.*got {dtype}"
    with pytest.raises(TypeError, match=expected):
        layer(q, q, q, **{mask: torch.zeros(shape, dtype=dtype)})


@pytest.mark.parametrize("name", ATTENTION)
def test_attention_float_mask_under_autocast(name: str) -> None:
    layer = CASES[name].build()
    q = _seq(5, 2, 4, torch.bfloat16)
    causal = torch.triu(torch.full((5, 5), float("-inf")), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(q, q, q, attn_mask=causal)
        out_bf16, _ = layer(q, q, q, attn_mask=causal.bfloat16())
    assert torch.isfinite(out.float()).all() and torch.isfinite(out_bf16.float()).all()
