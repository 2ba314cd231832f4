"""The recorded prefix of any model: the outputs of the modules that finish before its
first stochastic module draws, computed once and handed to the K folded samples
(private: ``bl.predict(..., trunk="prefix")`` is the API).

One call of the model on the ``(B, ...)`` input runs until the first module that draws
(a Bayesian layer not in ``"mean"`` mode, dropout in training mode, ...) is about to
run; the largest modules that finished before it, each called once and answering a
``(B, ...)`` tensor, are the prefix. The folded call of the model then finds each of
them answering its recorded output, repeated K times. Exact when those modules are
deterministic functions of their input, which ``trunk="prefix"`` asks of the caller;
code that draws from torch's default generator before the first draw is detected (the
generator moved) and nothing is shared then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ._trunk import TrunkError, _substituted, drawing_modules

__all__ = ["Prefix", "record_prefix"]


class _Stop(BaseException):
    """Raised by the first drawing module's pre-hook: the prefix is over (a
    ``BaseException``, so that a model's ``except Exception`` does not catch it)."""


class Prefix:
    """The recorded prefix of one model at one input.

    Attributes:
        outputs: ``(module, output)`` of the largest modules that finished before the
            first draw, each called once, answering a ``(B, ...)`` tensor.
        output: the model's output when it finished without drawing (nothing
            stochastic ran), else ``None``.
    """

    def __init__(self, outputs: list[tuple[nn.Module, Tensor]], output: Any) -> None:
        self.outputs, self.output = outputs, output

    @contextmanager
    def substituted(self, k: int) -> Iterator[None]:
        """Meanwhile every recorded module answers its output folded K times."""
        with ExitStack() as stack:
            counters = [
                (m, stack.enter_context(_substituted(m, partial(_folded_copy, out, k))))
                for m, out in self.outputs
            ]
            yield
            for m, calls in counters:
                if calls[0] != 1:
                    raise TrunkError(
                        f"predict(trunk='prefix'): {type(m).__name__} ran before the first "
                        "draw at the input but not in the folded call; pass trunk=None"
                    )


def _folded_copy(out: Tensor, k: int) -> Tensor:
    """K copies of a recorded output, sample-major: new memory each call (also for K = 1),
    so code after the prefix that changes it in place leaves the record alone."""
    return out.repeat(k, *(1,) * (out.dim() - 1))


def _rng_state(x: Tensor) -> list[Tensor]:
    """The states of the default generators that code in a forward could draw from."""
    states = [torch.random.get_rng_state()]
    if x.is_cuda:
        states.append(torch.cuda.get_rng_state(x.device))
    return states


def _drew(before: list[Tensor], x: Tensor) -> bool:
    """Whether the default generators moved since ``before``: code outside the modules
    that :func:`~bayesian_layers._trunk.draws` sees drew random numbers. If so they are
    put back, so the folded call that replaces the recording draws what it would have."""
    moved = any(not torch.equal(a, b) for a, b in zip(before, _rng_state(x), strict=True))
    if moved:
        torch.random.set_rng_state(before[0])
        if x.is_cuda:
            torch.cuda.set_rng_state(before[1], x.device)
    return moved


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
    finished: list[tuple[nn.Module, Tensor, int]] = []

    def pre(module: nn.Module, args: Any) -> None:
        raise _Stop

    def post(module: nn.Module, args: Any, out: Any) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        batched = any(isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch for a in args)
        if batched and isinstance(out, Tensor) and out.dim() > 0 and out.shape[0] == batch:
            finished.append((module, out, out._version))

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
        if calls[id(m)] == 1 and out._version == version
    }

    def inside_another(m: nn.Module) -> bool:
        p = parents.get(id(m))
        while p is not None and p is not model:
            if id(p) in usable:
                return True
            p = parents.get(id(p))
        return False

    return Prefix([v for v in usable.values() if not inside_another(v[0])], None)
