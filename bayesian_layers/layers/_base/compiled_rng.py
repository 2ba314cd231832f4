"""Draws of a ``torch.compile``'d graph on CPU made by torch's eager generator (private).

Why. Inductor lowers ``randn``/``rand``/``randint``/``bernoulli`` on CPU to a Philox
loop per element, about 4.6x slower than the eager generator (``loc + softplus(rho) *
randn(512, 784)``: 2.0 ms eager, 9.4 ms compiled), which made compiled training of the
sampled layers slower than eager. Here a compiled draw on a CPU tensor is an opaque
custom op that fills a fresh tensor with the eager generator: inductor emits one extern
call per draw. Eager mode never comes here (same random stream, no op overhead); on
other devices inductor's own generator is kept (fast on CUDA).

How the ops stay correct in a graph:

- Each op *mutates* a fresh ``torch.empty`` (``mutates_args=("out",)``) instead of
  returning a new tensor: AOTAutograd's common-subexpression elimination merges calls of
  a pure op with equal arguments (it exempts only aten's random ops and ``empty``), which
  would give two same-shape draws (Flipout's two signs, two layers of one width, the
  steps of a recurrent cell) one and the same noise. Two ``empty`` nodes are never
  merged, so neither are the fills. The ops are also tagged
  ``torch.Tag.nondeterministic_seeded`` where ``custom_op`` takes ``tags``.
- The partitioner does not recompute a custom op in the backward (it is not in its
  recomputable allow-list): the backward reads the noise the forward drew.

The noise's dtype is the requested one; the generator is torch's default CPU generator
(``torch.manual_seed`` seeds compiled draws as it does eager ones).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.torch_version import TorchVersion

__all__ = [
    "routes",
    "normal",
    "uniform",
    "signs",
    "dropout_mask",
    "table_signs",
    "EagerGenerator",
    "eager_generator",
]

_NAMESPACE = "bayesian_layers"
# ``tags=`` came to ``custom_op`` after torch 2.4, the package's floor: degrade to untagged
_TAGS: dict[str, Any] = (
    {"tags": (torch.Tag.nondeterministic_seeded,)}
    if "tags" in inspect.signature(torch.library.custom_op).parameters
    else {}
)


def _fill_op(name: str, fn: Callable[..., None]) -> Any:
    return torch.library.custom_op(f"{_NAMESPACE}::{name}", fn, mutates_args=("out",), **_TAGS)


def _normal_(out: Tensor) -> None:
    out.normal_()


def _uniform_(out: Tensor) -> None:
    out.uniform_()


def _signs_(out: Tensor) -> None:
    out.copy_(table_signs(out.shape, out))


def _keep_(out: Tensor, p: float) -> None:
    # kept where u >= p (uniforms in float32 at least: a bf16 uniform is too coarse),
    # scaled by 1 / (1 - p); a float mask, as a bool one costs inductor a slow store
    if out.dtype in (torch.float32, torch.float64):
        out.uniform_().ge_(p).div_(1 - p)
    else:
        out.copy_(torch.rand(out.shape).ge_(p)).div_(1 - p)


_normal_op = _fill_op("fill_normal_", _normal_)
_uniform_op = _fill_op("fill_uniform_", _uniform_)
_signs_op = _fill_op("fill_signs_", _signs_)
_keep_op = _fill_op("fill_dropout_mask_", _keep_)


def routes(like: Tensor) -> bool:
    """Whether a draw for ``like`` goes through these ops: inside ``torch.compile`` and
    on CPU. Not under ``torch.export``: an exported program keeps aten's random ops, so
    it runs where this package is not imported.

    Example:
        >>> routes(torch.zeros(3))  # eager: torch's own factories draw
        False
    """
    return torch.compiler.is_compiling() and like.device.type == "cpu" and not _exporting()


def _exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return bool(is_exporting and is_exporting())


def _filled(
    op: Any, shape: Sequence[int], dtype: torch.dtype, device: torch.device, *args: Any
) -> Tensor:
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    op(out, *args)
    return out


def normal(shape: Sequence[int], like: Tensor) -> Tensor:
    """Standard normal noise of ``shape`` with ``like``'s dtype and device (one extern
    call in a compiled graph; the values of ``torch.randn`` under the same seed).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> eps = normal((2, 3), torch.zeros((), dtype=torch.float64))
        >>> _ = torch.manual_seed(0)
        >>> torch.equal(eps, torch.randn(2, 3, dtype=torch.float64))
        True
    """
    return _filled(_normal_op, shape, like.dtype, like.device)


def uniform(shape: Sequence[int], like: Tensor) -> Tensor:
    """Uniform noise on ``[0, 1)`` of ``shape``, ``like``'s dtype and device."""
    return _filled(_uniform_op, shape, like.dtype, like.device)


def signs(shape: Sequence[int], like: Tensor) -> Tensor:
    """Random signs ±1 of ``shape``, ``like``'s dtype and device (the byte table of
    :func:`table_signs` inside the op)."""
    return _filled(_signs_op, shape, like.dtype, like.device)


def dropout_mask(like: Tensor, p: float) -> Tensor:
    """A dropout mask of ``like``'s shape, dtype and device: ``1 / (1 - p)`` where a
    uniform ``u >= p`` (probability ``1 - p``), else 0, so ``x * mask`` is
    ``F.dropout(x, p, training=True)`` in law. A float mask: inductor on CPU stores a
    bool tensor for the backward about 5x slower than a float one."""
    return _filled(_keep_op, like.shape, like.dtype, like.device, float(p))


_SIGN_TABLES: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def table_signs(shape: torch.Size, like: Tensor) -> Tensor:
    """Random signs ±1 in eager mode: eight signs from each random byte through a
    (256, 8) lookup table, the bytes eight to a random 64-bit word (one generator call
    per 64 signs; on CPU about 2x faster than a generator call per byte and 80x faster
    than ``bernoulli_``). The table is cached per dtype and device (never call it while
    tracing: a cache filled then would be guarded on)."""
    key = (like.dtype, like.device)
    table = _SIGN_TABLES.get(key)
    if table is None:
        bits = (torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1  # (256, 8)
        table = (bits * 2 - 1).to(dtype=like.dtype, device=like.device)
        _SIGN_TABLES[key] = table
    n = shape.numel()
    # every 64-bit pattern but one equally likely (a factory, which vmap batches)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 63) // 64,), device=like.device)
    index = words.view(torch.uint8)[: (n + 7) // 8].int()  # (ceil(n / 8),) uniform bytes
    return table.index_select(0, index).view(-1)[:n].view(shape)


_FACTORIES = {torch.randn: _normal_op, torch.rand: _uniform_op}
_LIKE_FACTORIES = {torch.randn_like: _normal_op, torch.rand_like: _uniform_op}
_PLAIN_KWARGS = {"dtype", "device", "layout", "requires_grad", "pin_memory"}


def _factory_draw(
    func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[Any, Sequence[int], torch.dtype, torch.device] | None:
    """``(op, shape, dtype, device)`` of a ``randn``/``rand``(``_like``) call, else None."""
    dtype, device = kwargs.get("dtype"), kwargs.get("device")
    if func in _FACTORIES and args:
        shape = args[0] if len(args) == 1 and not isinstance(args[0], int) else args
        dtype = dtype or torch.get_default_dtype()
        return _FACTORIES[func], shape, dtype, torch.device(device or "cpu")
    if func in _LIKE_FACTORIES and len(args) == 1 and isinstance(args[0], Tensor):
        (base,) = args
        return (
            _LIKE_FACTORIES[func],
            base.shape,
            dtype or base.dtype,
            torch.device(device or base.device),
        )
    return None


class EagerGenerator(TorchFunctionMode):
    """While active, ``torch.randn``/``torch.rand`` (and ``*_like``) on CPU draw
    through the ops of :func:`normal`/:func:`uniform`: for code that is not ours (a
    posterior family's ``noise``), entered only where :func:`routes` holds. A call with
    a ``generator``, ``out``, another layout or ``requires_grad`` is left to torch."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        plain = (
            set(kwargs) <= _PLAIN_KWARGS
            and kwargs.get("layout", torch.strided) == torch.strided
            and not kwargs.get("requires_grad", False)
        )
        draw = _factory_draw(func, args, kwargs) if plain else None
        if draw is not None:
            op, shape, dtype, device = draw
            if device.type == "cpu" and dtype.is_floating_point:
                return _filled(op, shape, dtype, device)
        return func(*args, **kwargs)


# Dynamo traces a torch-function mode entered inside the compiled region from torch 2.6
_MODE_TRACEABLE = TorchVersion(torch.__version__) >= "2.6"


def eager_generator() -> contextlib.AbstractContextManager[Any]:
    """:class:`EagerGenerator`, or a no-op context where this torch's Dynamo cannot trace
    a mode entered in a compiled region (inductor's generator then draws, slower)."""
    return EagerGenerator() if _MODE_TRACEABLE else contextlib.nullcontext()
