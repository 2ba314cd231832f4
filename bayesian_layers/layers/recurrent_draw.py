"""One draw per sequence for the Bayesian recurrent cells.

A cell draws its noise once per sequence (:class:`SequenceDraw`, never mutated:
autograd may have saved its tensors) and builds its weights from it once per
parameter version; :func:`graph_alive` tells when a backward pass has freed the
built weights' graph (truncated backpropagation through time), so they are rebuilt
from the same noise, and :func:`parameter_version` keys the weights by the
parameters they were built from (an optimizer step or ``load_state_dict`` changes
it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["SequenceDraw", "cache_key", "graph_alive", "parameter_version"]

_SAVED_NAMES: dict[type, tuple[str, ...]] = {}


def graph_alive(t: Tensor) -> bool:
    """Whether a backward pass through ``t`` is still possible (no saved tensor freed).

    Walks ``t``'s autograd graph down to the leaves (a few nodes for a weight
    built from its parameters).

    Example:
        >>> import torch
        >>> loc = torch.zeros(2, requires_grad=True)
        >>> w = loc.exp()
        >>> graph_alive(w)
        True
        >>> w.sum().backward()
        >>> graph_alive(w)
        False
    """
    stack = [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        names = _SAVED_NAMES.get(type(node))
        if names is None:
            names = tuple(a for a in dir(node) if a.startswith("_saved_"))
            _SAVED_NAMES[type(node)] = names
        for name in names:
            try:
                getattr(node, name)
            except RuntimeError:  # freed by a backward pass without retain_graph
                return False
        stack.extend(fn for fn, _ in node.next_functions)
    return True


def parameter_version(p: Tensor | None) -> tuple | None:
    """The cache key part of parameter ``p`` (identity, in-place version, storage,
    dtype, device); ``()`` for None; ``None`` for a tensor without storage (a
    ``torch.func`` wrapper), whose weights are then never cached."""
    if p is None:
        return ()
    try:
        ptr = p.data_ptr()
    except RuntimeError:
        return None
    return (id(p), p._version, ptr, p.dtype, p.device)


@dataclass(frozen=True)
class SequenceDraw:
    """One sequence's draw; never mutated (autograd may have saved it).

    Attributes:
        key: ``(sampling mode, K, dtype, device)`` it was drawn for.
        noise: standard noise of each random parameter (``"sample"`` mode; empty in
            ``"frozen"`` mode, where the layer's frozen sample is used).
        batch: the rows the Flipout signs were drawn for (None: no signs).
        signs: Flipout's ``(s_in_x, s_out_x, s_in_h, s_out_h)``.
    """

    key: tuple
    noise: dict[str, Tensor] = field(default_factory=dict)
    batch: int | None = None
    signs: tuple[Tensor, ...] = field(default=())

    def with_signs(self, batch: int, signs: tuple[Tensor, ...]) -> SequenceDraw:
        """This draw with Flipout signs for ``batch`` rows (the noise is kept)."""
        return SequenceDraw(self.key, self.noise, batch, signs)


def cache_key(params: list[Tensor]) -> tuple | None:
    """The key under which weights built from ``params`` are cached in this thread
    (None: do not cache; compiled code has no version counters, it rebuilds)."""
    if torch.compiler.is_compiling():
        return None
    versions = [parameter_version(p) for p in params]
    if None in versions:
        return None
    # per thread: one thread's backward pass must not free another's weights
    return (torch.is_grad_enabled(), threading.get_ident(), *versions)
