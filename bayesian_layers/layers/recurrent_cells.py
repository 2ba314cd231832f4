"""Bayesian recurrent cells: drop-in replacements for ``nn.LSTMCell`` and ``nn.GRUCell``.

A cell draws its weights **once per sequence** and reuses them at every time step
(Fortunato et al. 2017): at :meth:`~_RecurrentCell.get_initial_state`, at a call
without a state (``cell(x_0)``: the start of a sequence), or lazily at the first
call after :meth:`~_RecurrentCell.resample`. A call with a state and no draw yet
draws once and keeps that draw until one of those. The draw is a set of standard
noise tensors that are never modified in place (autograd may have saved them);
each new draw is a new tensor. Weights are built from the noise once per sequence
and parameter version, and rebuilt from the same noise when a backward pass has
freed their graph (truncated backpropagation through time).

The math (noise passed in, ``gradcheck``-able) is in
:mod:`bayesian_layers.layers.functional.recurrent`; these modules hold parameters and
draws. Sequence modules are in :mod:`bayesian_layers.layers.recurrent`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..initializers import TrainableInitializer
from ..regularizers import Regularizer
from ._util import check_features as _check_features
from ._util import rademacher as _rademacher
from .base import BayesianLayer
from .functional.recurrent import flipout_matmul, gru_cell, gru_pointwise, lstm_cell, lstm_pointwise

__all__ = [
    "LSTMCellReparameterization",
    "LSTMCellFlipout",
    "GRUCellReparameterization",
    "GRUCellFlipout",
]


# ====================================================================== draw plumbing
_SAVED_NAMES: dict[type, tuple[str, ...]] = {}


def graph_alive(t: Tensor) -> bool:
    """Whether a backward pass through ``t`` is still possible (no saved tensor freed).

    Walks ``t``'s autograd graph down to the leaves (a few nodes for a weight
    built from its parameters).
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


def _version(p: Tensor | None) -> tuple | None:
    """The cache key part of ``p``; ``None`` for a tensor without storage (a
    ``torch.func`` wrapper), whose weights are then never cached."""
    if p is None:
        return ()
    try:
        ptr = p.data_ptr()
    except RuntimeError:
        return None
    return (id(p), p._version, ptr, p.dtype, p.device)


@dataclass(frozen=True)
class _Draw:
    """One sequence's noise; never mutated (autograd may have saved it)."""

    key: tuple  # (sampling mode, K, dtype, device)
    noise: dict[str, Tensor | None]
    batch: int | None = None  # rows the Flipout signs were drawn for
    signs: tuple[Tensor, ...] = field(default=())  # (s_in_x, s_out_x, s_in_h, s_out_h)


class _RecurrentCell(BayesianLayer):
    """Parameters, validation and per-sequence draws shared by the four cells."""

    _gates: int  # 4 (LSTM) or 3 (GRU)
    _flipout: bool = False
    _torch_cls: type[nn.RNNCellBase]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        weight_initializer: str | TrainableInitializer = "trainable_normal",
        bias_initializer: str | TrainableInitializer = "zeros",
        weight_regularizer: str | Regularizer | None = "normal_kl_divergence",
        bias_regularizer: str | Regularizer | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.input_size = _check_features(name, "input_size", input_size)
        self.hidden_size = _check_features(name, "hidden_size", hidden_size)
        self.bias = bool(bias)
        rows = self._gates * hidden_size
        # fan_in = hidden_size for every tensor: locs start U(±1/sqrt(H)) as in torch's cells.
        factory: dict[str, Any] = {"fan_in": hidden_size, "device": device, "dtype": dtype}
        for kind, cols in (("ih", input_size), ("hh", hidden_size)):
            self.add_param(
                f"weight_{kind}", (rows, cols), weight_initializer, weight_regularizer, **factory
            )
        if self.bias:
            for kind in ("ih", "hh"):
                self.add_param(
                    f"bias_{kind}", (rows,), bias_initializer, bias_regularizer, **factory
                )
        if self._flipout:
            for kind in ("ih", "hh"):
                init = self._inits[f"weight_{kind}"]
                if not (init.is_normal or init.is_deterministic):
                    raise ValueError(
                        f"{name} needs a normal (or deterministic) weight posterior, got "
                        f"{type(init).__name__}; use the Reparameterization cell for other families"
                    )
        self._draw: _Draw | None = None
        self._cache: tuple | None = None  # (draw, parameter versions, weights, built tensors)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_cache"] = None  # holds autograd graphs
        return state

    @classmethod
    def _from_torch(cls, cell: torch.nn.Module, **kwargs: Any) -> Any:
        if not isinstance(cell, cls._torch_cls):
            raise TypeError(
                f"{cls.__name__} expected nn.{cls._torch_cls.__name__}, got {type(cell)}"
            )
        new = cls(
            cell.input_size, cell.hidden_size, bias=cell.bias,
            device=cell.weight_ih.device, dtype=cell.weight_ih.dtype, **kwargs,
        )  # fmt: skip
        new.load_point_estimates({name: getattr(cell, name) for name in new._inits})
        return new

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        return s if self.bias else s + ", bias=False"

    # ---------------------------------------------------------------- validation
    def _check_input(self, x: object) -> Tensor:
        name = type(self).__name__
        x = self.check_input(x)  # a Tensor of the parameters' (or autocast's) dtype
        if x.dim() not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(
                f"{name} expected input of shape (B, {self.input_size}) or "
                f"({self.input_size},), got {tuple(x.shape)}"
            )
        return x

    def _check_hidden(self, h: object, what: str, batch: int, batched: bool) -> Tensor:
        name = type(self).__name__
        h = self.check_input(h, "hx")
        expected = (batch, self.hidden_size) if batched else (self.hidden_size,)
        if tuple(h.shape) != expected:
            raise ValueError(
                f"{name} expected hidden state {what} of shape {expected} (input of shape "
                f"{(batch, self.input_size) if batched else (self.input_size,)}), "
                f"got {tuple(h.shape)}"
            )
        return h if batched else h.unsqueeze(0)

    def _samples(self, x: Tensor, batched: bool) -> int:
        if not batched and self.num_function_samples > 1:
            raise ValueError(
                f"{type(self).__name__} is drawing {self.num_function_samples} function samples "
                f"at once and expected a batched input, got shape {tuple(x.shape)}"
            )
        return self._check_samples(x) if batched else 1

    # --------------------------------------------------------------------- draws
    def resample(self) -> None:
        """Forget the current draw (and any frozen one); the next call draws anew."""
        super().resample()
        self._draw = None
        self._cache = None

    def _needs_signs(self) -> bool:
        return self._flipout and self.per_example_noise() and "weight_ih" in self._random

    def _sequence_draw(self, x: Tensor, k: int) -> _Draw:
        """The current sequence's draw, made now if there is none for this mode/K/dtype."""
        like = cast(Tensor, next(iter(self._parameters.values())))  # weight_ih's first tensor
        key = (self.sampling, k, like.dtype, like.device)
        draw = self._draw
        if draw is None or draw.key != key:
            noise = {}
            for name, init in self._inits.items():
                if name in self._random:
                    first = next(iter(init.params(self, name).values()))
                    noise[name] = self._noise(name, init, first)
            draw = _Draw(key, noise)
        if self._needs_signs() and draw.batch != x.shape[0]:
            rows, h = self._gates * self.hidden_size, self.hidden_size
            signs = _rademacher(torch.Size((x.shape[0], self.input_size + h + 2 * rows)), x)
            draw = replace(
                draw, batch=x.shape[0], signs=signs.split([self.input_size, rows, h, rows], -1)
            )
        self._draw = draw
        return draw

    def _names(self) -> tuple[str, str, str | None, str | None]:
        b = self.bias
        return ("weight_ih", "weight_hh", "bias_ih" if b else None, "bias_hh" if b else None)

    def _weights(self, x: Tensor, k: int) -> tuple[tuple, tuple[Tensor, ...] | None]:
        """``(weights, signs)``: whole weights and no signs, or Flipout's ``(μ, Δ)`` pairs.

        Built from the sequence's noise once per draw and parameter version (an
        optimizer step or ``load_state_dict`` changes the version), and again when a
        backward pass has freed their graph; otherwise every step reuses them.
        """
        if self.sampling == "mean":
            return tuple(None if n is None else self.point(n) for n in self._names()), None
        draw = self._sequence_draw(x, k)
        signs = draw.signs or None
        key: tuple | None = None
        if not torch.compiler.is_compiling():  # (compiled: no version counters; rebuild)
            # per thread: one thread's backward pass must not free another's weights
            versions = [_version(p) for p in self._parameters.values()]
            key = (torch.is_grad_enabled(), threading.get_ident(), *versions)
            if None in versions:
                key = None
        if key is not None:
            hit = self._cache
            if (
                hit is not None and hit[0] is draw and hit[1] == key
                and all(map(graph_alive, hit[3]))
            ):  # fmt: skip
                return hit[2], signs
        built: list[Tensor] = []

        def whole(name: str | None) -> Tensor | None:
            if name is None:
                return None
            noise = draw.noise.get(name)
            if noise is None:
                return self.point(name)
            value = self.draw_param(name, noise)  # traced while a tracer is active
            built.append(value)
            return value

        def loc_delta(name: str) -> tuple[Tensor, Tensor]:
            loc, scale = self._inits[name].loc_scale(self, name)
            built.append(scale * draw.noise[name])  # type: ignore[operator]
            return loc, built[-1]

        w_ih, w_hh, b_ih, b_hh = self._names()
        mats = (loc_delta(w_ih), loc_delta(w_hh)) if signs else (whole(w_ih), whole(w_hh))
        weights = (*mats, whole(b_ih), whole(b_hh))
        if key is not None:
            self._cache = (draw, key, weights, built)
        return weights, signs

    def get_initial_state(self, x: Tensor) -> Any:
        """Draw the weights for a new sequence; return the zero state for input ``x``.

        Args:
            x: one time step of the sequence, ``(B, input_size)`` or ``(input_size,)``.

        Returns:
            zeros of shape ``(*, hidden_size)`` (``(h, c)`` for an LSTM cell).
        """
        x = self._check_input(x)
        self._draw = None
        if self.sampling != "mean":
            rows = x if x.dim() == 2 else x.unsqueeze(0)
            self._sequence_draw(rows, self._samples(x, x.dim() == 2))
        return self._zero_state(x)

    def _zero_state(self, x: Tensor) -> Any:
        raise NotImplementedError


class _LSTMCell(_RecurrentCell):
    _gates = 4
    _torch_cls = nn.LSTMCell

    @classmethod
    def from_lstm_cell(cls, cell: torch.nn.LSTMCell, **kwargs: Any) -> Any:
        """A cell whose posterior means start at ``cell``'s weights (kwargs: constructor)."""
        return cls._from_torch(cell, **kwargs)

    def _zero_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        zeros = x.new_zeros(x.shape[:-1] + (self.hidden_size,))
        return zeros, zeros.clone()

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        x = self._check_input(input)
        batched = x.dim() == 2
        rows = x if batched else x.unsqueeze(0)
        k = self._samples(x, batched)
        if hx is None:  # the start of a sequence: a fresh draw
            self._draw = None
            h, c = self._zero_state(rows)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{type(self).__name__} expected hx = (h, c), got {type(hx)}")
            h = self._check_hidden(hx[0], "h", rows.shape[0], batched)
            c = self._check_hidden(hx[1], "c", rows.shape[0], batched)
        weights, signs = self._weights(rows, k)
        if signs is None:
            h, c = lstm_cell(rows, (h, c), weights, k)
        else:
            (ih_loc, ih_delta), (hh_loc, hh_delta), b_ih, b_hh = weights
            s_in_x, s_out_x, s_in_h, s_out_h = signs
            gates = flipout_matmul(rows, ih_loc, ih_delta, s_in_x, s_out_x, b_ih, k)
            gates = gates + flipout_matmul(h, hh_loc, hh_delta, s_in_h, s_out_h, b_hh, k)
            h, c = lstm_pointwise(gates, c)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class _GRUCell(_RecurrentCell):
    _gates = 3
    _torch_cls = nn.GRUCell

    @classmethod
    def from_gru_cell(cls, cell: torch.nn.GRUCell, **kwargs: Any) -> Any:
        """A cell whose posterior means start at ``cell``'s weights (kwargs: constructor)."""
        return cls._from_torch(cell, **kwargs)

    def _zero_state(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[:-1] + (self.hidden_size,))

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x = self._check_input(input)
        batched = x.dim() == 2
        rows = x if batched else x.unsqueeze(0)
        k = self._samples(x, batched)
        if hx is None:  # the start of a sequence: a fresh draw
            self._draw = None
            h = self._zero_state(rows)
        else:
            h = self._check_hidden(hx, "h", rows.shape[0], batched)
        weights, signs = self._weights(rows, k)
        if signs is None:
            h = gru_cell(rows, h, weights, k)
        else:
            (ih_loc, ih_delta), (hh_loc, hh_delta), b_ih, b_hh = weights
            s_in_x, s_out_x, s_in_h, s_out_h = signs
            gi = flipout_matmul(rows, ih_loc, ih_delta, s_in_x, s_out_x, b_ih, k)
            gh = flipout_matmul(h, hh_loc, hh_delta, s_in_h, s_out_h, b_hh, k)
            h = gru_pointwise(gi, gh, h)
        return h if batched else h.squeeze(0)


class LSTMCellReparameterization(_LSTMCell):
    """LSTM cell with a weight posterior: one whole weight draw per sequence.

    Drop-in for ``nn.LSTMCell``: ``h', c' = cell(x_t, (h, c))`` with torch's gate
    equations and ``W ~ q(W)`` drawn once per sequence, shared by the batch, reused
    at every step (see the module docstring for when it draws). Cost per step: that
    of ``nn.LSTMCell`` (torch's fused cell kernel on the drawn weights).

    Args:
        input_size: features of each input ``x_t``.
        hidden_size: features of the hidden state.
        bias: whether to add the biases ``bias_ih``, ``bias_hh`` (deterministic
            zeros-initialised ``nn.Parameter`` by default).
        weight_initializer: the posterior of each weight matrix (a name or a
            :class:`~bayesian_layers.initializers.TrainableInitializer`); locs start
            ``U(±1/sqrt(hidden_size))`` like torch's cells.
        bias_initializer: the bias posterior; ``"zeros"`` keeps deterministic biases.
        weight_regularizer: penalty on each weight matrix (KL to ``N(0, 1)``).
        bias_regularizer: penalty on each bias (None).
        device, dtype: factory arguments.

    Shape:
        - Input: ``(B, input_size)`` or ``(input_size,)``; state ``(h, c)`` each
          ``(B, hidden_size)`` or ``(hidden_size,)``, zeros when omitted.
        - Output: ``(h', c')`` shaped like the state.

    Attributes:
        weight_ih, weight_hh: :class:`~bayesian_layers.RandomVariable` over the
            ``(4·hidden_size, input_size)`` and ``(4·hidden_size, hidden_size)``
            matrices (gates ``i, f, g, o`` as torch): ``q(W)`` and the latest draw.
        weight_ih_loc, weight_ih_rho, weight_hh_loc, weight_hh_rho: the trainable
            tensors (``scale = softplus(rho)``).
        losses: one KL term per weight matrix, the same after one step or fifty.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.recurrent import LSTMCellReparameterization
        >>> cell = LSTMCellReparameterization(3, 8)
        >>> x = torch.randn(10, 4, 3)  # (T, B, input_size)
        >>> state = cell.get_initial_state(x[0])  # draws this sequence's weights
        >>> for x_t in x:
        ...     h, c = state = cell(x_t, state)
        >>> h.shape, len(cell.losses)
        (torch.Size([4, 8]), 2)
    """


class LSTMCellFlipout(_LSTMCell):
    """LSTM cell with the Flipout estimator (Wen et al. 2018), fixed per sequence.

    Same constructor as :class:`LSTMCellReparameterization` (weight posteriors
    normal). One perturbation ``Δ = σ ∘ ε`` and per-example random signs are
    drawn per sequence, so example ``b`` runs the whole sequence with its own
    pseudo-independent weights ``μ + Δ ∘ (s_out,b s_in,bᵀ)``; about twice the
    matmul cost of ``nn.LSTMCell``. In ``"frozen"`` mode it uses whole weight
    draws (one function). New signs are drawn when the batch size changes.

    Shape: as :class:`LSTMCellReparameterization`.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.recurrent import LSTMCellFlipout
        >>> cell = LSTMCellFlipout(3, 8)
        >>> h, c = cell(torch.randn(4, 3))
        >>> h.shape
        torch.Size([4, 8])
    """

    _flipout = True


class GRUCellReparameterization(_GRUCell):
    """GRU cell with a weight posterior: one whole weight draw per sequence.

    Drop-in for ``nn.GRUCell``: ``h' = cell(x_t, h)``; draws as
    :class:`LSTMCellReparameterization`, whose constructor it shares (weights
    ``weight_ih``: ``(3·hidden_size, input_size)``, gates ``r, z, n`` as torch).

    Shape:
        - Input: ``(B, input_size)`` or ``(input_size,)``; state ``h`` of shape
          ``(B, hidden_size)`` or ``(hidden_size,)``, zeros when omitted.
        - Output: ``h'`` shaped like the state.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.recurrent import GRUCellReparameterization
        >>> cell = GRUCellReparameterization(3, 8)
        >>> h = cell.get_initial_state(torch.randn(4, 3))
        >>> cell(torch.randn(4, 3), h).shape
        torch.Size([4, 8])
    """


class GRUCellFlipout(_GRUCell):
    """GRU cell with the Flipout estimator, perturbation and signs fixed per sequence.

    Drop-in for ``nn.GRUCell`` with the constructor of :class:`LSTMCellReparameterization`;
    draws as :class:`LSTMCellFlipout`.
    Shape: as :class:`GRUCellReparameterization`.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.recurrent import GRUCellFlipout
        >>> GRUCellFlipout(3, 8)(torch.randn(3)).shape
        torch.Size([8])
    """

    _flipout = True
