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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..base import BayesianLayer

__all__ = ["SequenceDraw", "SequenceDraws", "cache_key", "graph_alive", "parameter_version"]

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
    ``torch.func`` wrapper) or without a version counter (an inference tensor), whose
    weights are then never cached."""
    if p is None:
        return ()
    if p.is_inference():
        return None  # made in torch.inference_mode: no in-place version to key on
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


def cache_key(params: Iterable[Tensor | None]) -> tuple | None:
    """The key under which weights built from ``params`` are cached in this thread
    (None: do not cache; compiled code has no version counters, it rebuilds)."""
    if torch.compiler.is_compiling():
        return None
    versions = [parameter_version(p) for p in params]
    if None in versions:
        return None
    # per thread: one thread's backward pass must not free another's weights
    return (torch.is_grad_enabled(), threading.get_ident(), *versions)


#: a cell's (weight_ih, weight_hh, bias_ih, bias_hh), a bias None when it has none
Names = tuple[str, str, str | None, str | None]


class SequenceDraws:
    """The draw of a cell's current sequence and the weights built from it.

    A cell holds one and reads it at every step; :meth:`forget` starts a new
    sequence. It reads the cell through the layer's public seam only
    (``noise``, ``named_random_parameters``, ``draw_param``, ``sample_param``, ``forget_draw``,
    ``posterior_loc_scale``).

    Args:
        names: the cell's ``(weight_ih, weight_hh, bias_ih, bias_hh)`` (a bias None
            when the cell has none).
    """

    def __init__(self, names: Names) -> None:
        self.names = names
        self.draw: SequenceDraw | None = None
        self.cache: tuple | None = None  # (draw, parameter versions, weights, built tensors)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "cache": None}  # the cache holds autograd graphs

    def forget(self, cache: bool = False) -> None:
        """Start a new sequence (and drop the built weights too with ``cache``)."""
        self.draw = None
        if cache:
            self.cache = None

    def current(self, layer: BayesianLayer, x: Tensor, k: int, per_example: bool) -> SequenceDraw:
        """The sequence's draw, made now if there is none for this mode/K/dtype; with
        Flipout signs for ``x``'s rows when ``per_example``.

        Noise: ``kind="parameter"`` per random parameter (``kind="normal"`` for
        Flipout's shared weight perturbation), signs ``kind="sign"`` named
        ``"<weight>_sign_in"``/``"<weight>_sign_out"``, all through ``layer.noise``.
        """
        like = layer.point(self.names[0])
        key = (layer.sampling, k, like.dtype, like.device)
        draw = self.draw
        if draw is None or draw.key != key:
            noise = {}
            if layer.sampling == "sample":  # "frozen": the layer's frozen sample
                for name, spec in layer.named_random_parameters():
                    shape = spec.shape if k == 1 else torch.Size((k, *spec.shape))
                    kind = "normal" if per_example and name in self.names[:2] else "parameter"
                    noise[name] = layer.noise(name, shape, layer.point(name), kind=kind)
            draw = SequenceDraw(key, noise)
        if per_example and draw.batch != x.shape[0]:
            signs = []
            for name in self.names[:2]:
                rows, cols = layer.parameter_spec(name).shape  # type: ignore[misc]
                for side, size in (("in", cols), ("out", rows)):
                    signs.append(
                        layer.noise(f"{name}_sign_{side}", (x.shape[0], size), x, kind="sign")
                    )
            draw = draw.with_signs(x.shape[0], tuple(signs))
        self.draw = draw
        return draw

    def weights(
        self,
        layer: BayesianLayer,
        x: Tensor,
        k: int,
        per_example: bool,
        params: Iterable[Tensor | None],
    ) -> tuple[tuple, tuple[Tensor, ...] | None]:
        """``(weights, signs)``: whole weights and no signs, or Flipout's ``(μ, Δ)`` pairs
        for the two matrices, with the biases; ``params`` are the layer's own parameter
        tensors (their versions key the cache).

        Built from the sequence's noise once per draw and parameter version (an
        optimizer step or ``load_state_dict`` changes the version), and again when a
        backward pass has freed their graph; otherwise every step reuses them.
        """
        draw = self.current(layer, x, k, per_example)
        signs = draw.signs or None
        key = cache_key(params)
        hit = self.cache
        if (
            key is not None and hit is not None and hit[0] is draw and hit[1] == key
            and all(map(graph_alive, hit[3]))
        ):  # fmt: skip
            return hit[2], signs
        built: list[Tensor] = []

        def whole(name: str | None) -> Tensor | None:
            if name is None or not layer.parameter_spec(name).is_random:
                return None if name is None else layer.point(name)
            noise = draw.noise.get(name)
            # traced while a tracer is active; "frozen": the frozen sample
            value = layer.sample_param(name) if noise is None else layer.draw_param(name, noise)
            built.append(value)
            return value

        def loc_delta(name: str) -> tuple[Tensor, Tensor]:
            loc, scale = layer.posterior_loc_scale(name)
            built.append(scale * draw.noise[name])  # type: ignore[operator]
            return loc, built[-1]

        w_ih, w_hh, b_ih, b_hh = self.names
        if signs:
            layer.forget_draw(w_ih, w_hh)  # Flipout's (μ, Δ): no whole draw
        mats = (loc_delta(w_ih), loc_delta(w_hh)) if signs else (whole(w_ih), whole(w_hh))
        weights = (*mats, whole(b_ih), whole(b_hh))
        if key is not None:
            self.cache = (draw, key, weights, built)
        return weights, signs
