"""The recorded prefix of any model: the outputs of the modules that finish before its
first stochastic module draws, computed once and handed to the K folded samples
(private: ``bl.predict(..., trunk="prefix")`` is the API).

One call of the model on the ``(B, ...)`` input runs until the first module that draws
(a Bayesian layer not in ``"mean"`` mode, dropout in training mode, ...) is about to
run; the largest modules that finished before it, each called once and answering a
``(B, ...)`` tensor (or a tuple of them and ``None``: ``nn.MultiheadAttention``'s
``(output, weights)``), are the prefix. The folded call of the model then finds each of
them answering its recorded output, repeated K times. Exact when those modules are
deterministic functions of their input, which ``trunk="prefix"`` asks of the caller;
code that draws from torch's default generator before the first draw is detected (the
generator moved) and nothing is shared then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ._trunk import TrunkError, _substituted, drawing_modules

__all__ = ["Prefix", "record_prefix", "fold_samples", "folded_copy"]


class _Stop(BaseException):
    """Raised by the first drawing module's pre-hook: the prefix is over (a
    ``BaseException``, so that a model's ``except Exception`` does not catch it)."""


class Prefix:
    """The recorded prefix of one model at one input.

    Attributes:
        outputs: ``(module, output)`` of the largest modules that finished before the
            first draw, each called once, answering a ``(B, ...)`` tensor (or a tuple of
            them and ``None``, as attention layers answer).
        output: the model's output when it finished without drawing (nothing
            stochastic ran), else ``None``.
    """

    def __init__(self, outputs: list[tuple[nn.Module, Any]], output: Any) -> None:
        self.outputs, self.output = outputs, output
        #: whether a call for one sample may hand the recorded outputs themselves (no
        #: copy); cleared by :meth:`call` once the model changed one in place
        self.share = True

    @contextmanager
    def substituted(self, k: int) -> Iterator[None]:
        """Meanwhile every recorded module answers its output folded K times (for K = 1
        with :attr:`share`, the recorded output itself)."""

        def answer(out: Any) -> Callable[[], Any]:
            return (lambda: out) if k == 1 and self.share else partial(folded_copy, out, k)

        with ExitStack() as stack:
            counters = [
                (m, stack.enter_context(_substituted(m, answer(out)))) for m, out in self.outputs
            ]
            yield
            for m, calls in counters:
                if calls[0] != 1:
                    raise TrunkError(
                        f"predict(trunk='prefix'): {type(m).__name__} ran before the first "
                        "draw at the input but not in the folded call; pass trunk=None"
                    )

    def chunk_size(self, largest: int, budget: int) -> int:
        """Samples per folded call whose temporaries fit ``budget`` bytes: per sample,
        a copy of every recorded output, four activations the size of the largest one
        and a draw of the ``largest`` random parameter (in the outputs' item size)."""
        tensors = [t for _, out in self.outputs for t in _tensors(out)]
        sizes = [t.numel() * t.element_size() for t in tensors]
        itemsize = max((t.element_size() for t in tensors), default=4)
        per_sample = sum(sizes) + 4 * max(sizes, default=0) + largest * itemsize
        return max(1, budget // max(per_sample, 1))

    def call(self, model: nn.Module, x: Tensor, k: int) -> Any:
        """``model`` on ``x`` folded K times, the recorded modules answering. A call for
        one sample hands the records themselves; if the model changed one in place, the
        prefix is recorded afresh, the default generators are put back, and the call is
        made again with copies (from then on), so the samples stay exact."""
        shared = k == 1 and self.share
        before = _rng_state(x) if shared else None
        versions = [_versions(out) for _, out in self.outputs] if shared else None
        with self.substituted(k):
            result = model(fold_samples(x, k))
        if versions is None or versions == [_versions(out) for _, out in self.outputs]:
            return result
        assert before is not None
        self.share = False
        _set_rng_state(before, x)
        fresh = record_prefix(model, x)
        _set_rng_state(before, x)
        self.outputs = fresh.outputs
        with self.substituted(k):
            return model(fold_samples(x, k))


def folded_copy(out: Any, k: int) -> Any:
    """K copies of a recorded or trunk output (a tensor, or a tuple of tensors and
    ``None``, as ``nn.MultiheadAttention`` answers), sample-major: new memory each call
    (also for K = 1), so code after it that changes its input in place leaves the
    original, which later chunks read, alone."""
    if isinstance(out, tuple):
        return tuple(None if o is None else folded_copy(o, k) for o in out)
    return out.clone() if k == 1 else fold_samples(out, k)  # K > 1: new memory


def _batched(out: Any, batch: int) -> bool:
    """Whether ``out`` is a ``(B, ...)`` tensor, or a non-empty tuple of such tensors and
    ``None`` (at least one tensor)."""
    if isinstance(out, Tensor):
        return out.dim() > 0 and out.shape[0] == batch
    return (
        isinstance(out, tuple)
        and any(isinstance(o, Tensor) for o in out)
        and all(o is None or (isinstance(o, Tensor) and _batched(o, batch)) for o in out)
    )


def _tensors(out: Any) -> list[Tensor]:
    """The tensors of a recorded output (a tensor, or a tuple with ``None``)."""
    return [out] if isinstance(out, Tensor) else [o for o in out if isinstance(o, Tensor)]


def _versions(out: Any) -> tuple[int, ...]:
    """The in-place version counters of the tensors of a recorded output."""
    return tuple(t._version for t in _tensors(out))


def _rng_state(x: Tensor) -> list[Tensor]:
    """The states of the default generators that code in a forward could draw from."""
    states = [torch.random.get_rng_state()]
    if x.is_cuda:
        states.append(torch.cuda.get_rng_state(x.device))
    return states


def _set_rng_state(states: list[Tensor], x: Tensor) -> None:
    """Put back the default generators' ``states`` (of :func:`_rng_state`)."""
    torch.random.set_rng_state(states[0])
    if x.is_cuda:
        torch.cuda.set_rng_state(states[1], x.device)


def _drew(before: list[Tensor], x: Tensor) -> bool:
    """Whether the default generators moved since ``before``: code outside the modules
    that :func:`~bayesian_layers._trunk.draws` sees drew random numbers. If so they are
    put back, so the folded call that replaces the recording draws what it would have."""
    moved = any(not torch.equal(a, b) for a, b in zip(before, _rng_state(x), strict=True))
    if moved:
        _set_rng_state(before, x)
    return moved


def fold_samples(x: Tensor, k: int) -> Tensor:
    """K copies of ``x`` folded into its first dimension, sample-major ``(K * B, ...)``
    (``x`` itself, a view, for K = 1). For K > 1 always new, contiguous memory: for
    ``B = 1`` (or an expanded ``x``) the reshape alone would be a view with a zero stride,
    which ``.view(-1, d)`` and in-place code of the model reject."""
    if k == 1:
        return x
    return x.unsqueeze(0).expand(k, *x.shape).reshape(-1, *x.shape[1:]).contiguous()


def record_prefix(model: nn.Module, x: Tensor) -> Prefix:
    """Run ``model(x)`` up to its first draw and record the prefix (see the module).

    Nothing is shared (an empty prefix, no output) when the default random generator
    moved before the first draw: code of the model's own, outside the modules
    :func:`~bayesian_layers._trunk.draws` sees, drew random numbers (functional dropout
    in training mode, noise of its own), and all K samples must see their own draws.
    """
    batch = x.shape[0]
    before = _rng_state(x)
    parents: dict[int, nn.Module] = {}
    for m in model.modules():
        for child in m.children():
            parents.setdefault(id(child), m)
    calls: dict[int, int] = {}
    finished: list[tuple[nn.Module, Any, tuple[int, ...]]] = []

    def pre(module: nn.Module, args: Any) -> None:
        raise _Stop

    def post(module: nn.Module, args: Any, out: Any) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        if any(isinstance(a, Tensor) and _batched(a, batch) for a in args) and _batched(out, batch):
            finished.append((module, out, _versions(out)))

    drawing = {id(m) for m in drawing_modules(model)}
    with ExitStack() as stack:
        for m in model.modules():
            if m is model:
                continue
            if id(m) in drawing:
                stack.callback(m.register_forward_pre_hook(pre).remove)
            else:
                stack.callback(m.register_forward_hook(post).remove)
        try:
            output = model(x)
        except _Stop:
            output = None
        else:
            return Prefix([], None if _drew(before, x) else output)
    if _drew(before, x):
        return Prefix([], None)
    usable = {  # called once, and not changed in place since (then it is not its output)
        id(m): (m, out)
        for m, out, version in finished
        if calls[id(m)] == 1 and _versions(out) == version
    }

    def inside_another(m: nn.Module) -> bool:
        p = parents.get(id(m))
        while p is not None and p is not model:
            if id(p) in usable:
                return True
            p = parents.get(id(p))
        return False

    return Prefix([v for v in usable.values() if not inside_another(v[0])], None)
