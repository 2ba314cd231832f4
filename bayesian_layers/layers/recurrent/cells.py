"""Bayesian recurrent cells: drop-in replacements for ``nn.LSTMCell`` and ``nn.GRUCell``.

A cell draws its weights **once per sequence** and reuses them at every time step
(Fortunato et al. 2017): at :meth:`~LSTMCellReparameterization.get_initial_state`,
at a call without a state (``cell(x_0)``: the start of a sequence), or lazily at the
first call after :meth:`~LSTMCellReparameterization.resample`. A call with a state
and no draw yet draws once and keeps that draw until one of those. The draw (noise
made through ``layer.noise``; the frozen sample in ``"frozen"`` mode) and the weights
built from it once per parameter version are a
:class:`~bayesian_layers.layers.recurrent.draw.SequenceDraws`.

The estimator is the class attribute ``estimator`` (the strategy objects of
:mod:`bayesian_layers.layers.estimators`): whole weights and torch's fused cell step
(reparameterization, and Flipout outside ``"sample"`` mode), or Flipout's ``(μ, Δ)``
with signs per example drawn per sequence. The math (noise passed in) is in
:mod:`bayesian_layers.layers.functional.recurrent`; sequence modules in
:mod:`bayesian_layers.layers.recurrent.sequence`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ...initializers import TrainableInitializer
from ...regularizers import Regularizer
from .._util import check_features as _check_features
from .._util import deprecated_from_torch
from ..base import BayesianLayer
from ..estimators import FLIPOUT, REPARAMETERIZATION, Estimator
from ..functional.recurrent import (
    flipout_matmul,
    gru_cell,
    gru_pointwise,
    lstm_cell,
    lstm_pointwise,
)
from ..registry import converts
from .draw import SequenceDraws

__all__ = [
    "LSTMCellReparameterization",
    "LSTMCellFlipout",
    "GRUCellReparameterization",
    "GRUCellFlipout",
]


def _lstm_flipout_update(gi: Tensor, gh: Tensor, state: tuple[Tensor, Tensor]) -> Any:
    return lstm_pointwise(gi + gh, state[1])


class _RecurrentCell(BayesianLayer):
    """Parameters, validation, per-sequence draws and the step shared by the cells.

    A cell family declares its step: ``_gates`` (4 or 3), ``_step`` on whole weights
    (the fused kernel) and ``_flipout_update(gi, gh, state)`` from the two Flipout
    projections ``gi = x W_ihᵀ + b_ih``, ``gh = h W_hhᵀ + b_hh``.
    """

    estimator: Estimator = REPARAMETERIZATION
    _gates: int
    _torch_cls: type[nn.RNNCellBase]
    _step: Callable[..., Any]
    _flipout_update: Callable[..., Any]

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
        for kind in ("ih", "hh"):
            self.estimator.check_posteriors(self, f"weight_{kind}", None)
        # fixed for the layer's life (set_initializer keeps a family's randomness)
        self._random_weights = self.parameter_spec("weight_ih").is_random
        self._draws = SequenceDraws(self._names())

    def __setstate__(self, state: dict[str, Any]) -> None:
        # cells pickled before the per-sequence draw moved to SequenceDraws
        state.pop("_draw", None)
        state.pop("_cache", None)
        super().__setstate__(state)
        if "_draws" not in self.__dict__:
            self._draws = SequenceDraws(self._names())
            self._random_weights = self.parameter_spec("weight_ih").is_random

    @classmethod
    def from_torch(cls, module: nn.RNNCellBase, **kwargs: Any) -> Any:
        """A cell whose posterior means start at ``module``'s weights (a torch cell of
        this family); keyword arguments go to the constructor.

        Raises:
            TypeError: ``module`` is not of the torch cell class this cell replaces.

        Example:
            >>> from torch import nn
            >>> from bayesian_layers.layers.recurrent import GRUCellFlipout
            >>> GRUCellFlipout.from_torch(nn.GRUCell(3, 8)).hidden_size
            8
        """
        if not isinstance(module, cls._torch_cls):
            raise TypeError(
                f"{cls.__name__} expected nn.{cls._torch_cls.__name__}, got {type(module)}"
            )
        new = cls(
            module.input_size, module.hidden_size, bias=module.bias,
            device=module.weight_ih.device, dtype=module.weight_ih.dtype, **kwargs,
        )  # fmt: skip
        names = [n for n, _ in new.named_random_parameters(include_deterministic=True)]
        new.load_point_estimates({name: getattr(module, name) for name in names})
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
        return self.check_samples(x) if batched else 1

    # --------------------------------------------------------------------- draws
    def resample(self) -> None:
        """Forget the current draw (and any frozen one); the next call draws anew."""
        super().resample()
        self._draws.forget(cache=True)

    def _per_example(self) -> bool:
        """Flipout's path: ``"sample"`` mode, no tracer, random weights."""
        return self._random_weights and self.estimator is FLIPOUT and self.per_example_noise()

    def _names(self) -> tuple[str, str, str | None, str | None]:
        b = self.bias
        return ("weight_ih", "weight_hh", "bias_ih" if b else None, "bias_hh" if b else None)

    def _weights(self, x: Tensor, k: int) -> tuple[tuple, tuple[Tensor, ...] | None]:
        """``(weights, signs)`` of this step: posterior means, or the sequence's draw."""
        if self.sampling == "mean":
            return tuple(None if n is None else self.point(n) for n in self._names()), None
        params = self._parameters.values()  # the cache key: their versions
        return self._draws.weights(self, x, k, self._per_example(), params)

    def get_initial_state(self, x: Tensor) -> Any:
        """Draw the weights for a new sequence; return the zero state for input ``x``.

        Args:
            x: one time step of the sequence, ``(B, input_size)`` or ``(input_size,)``.

        Returns:
            zeros of shape ``(*, hidden_size)`` (``(h, c)`` for an LSTM cell).
        """
        x = self._check_input(x)
        self._draws.forget()
        if self.sampling != "mean":
            rows = x if x.dim() == 2 else x.unsqueeze(0)
            self._draws.current(self, rows, self._samples(x, x.dim() == 2), self._per_example())
        return self._zero_state(x)

    def _zero_state(self, x: Tensor) -> Any:
        raise NotImplementedError

    def _check_state(self, hx: Any, batch: int, batched: bool) -> Any:
        raise NotImplementedError

    def forward(self, input: Tensor, hx: Any = None) -> Any:
        x = self._check_input(input)
        batched = x.dim() == 2
        rows = x if batched else x.unsqueeze(0)
        k = self._samples(x, batched)
        if hx is None:  # the start of a sequence: a fresh draw
            self._draws.forget()
            state = self._zero_state(rows)
        else:
            state = self._check_state(hx, rows.shape[0], batched)
        weights, signs = self._weights(rows, k)
        if signs is None:
            state = self._step(rows, state, weights, k)
        else:
            (ih_loc, ih_delta), (hh_loc, hh_delta), b_ih, b_hh = weights
            s_in_x, s_out_x, s_in_h, s_out_h = signs
            h = state[0] if isinstance(state, tuple) else state
            gi = flipout_matmul(rows, ih_loc, ih_delta, s_in_x, s_out_x, b_ih, k)
            gh = flipout_matmul(h, hh_loc, hh_delta, s_in_h, s_out_h, b_hh, k)
            state = self._flipout_update(gi, gh, state)
        if batched:
            return state
        return tuple(s.squeeze(0) for s in state) if isinstance(state, tuple) else state.squeeze(0)


class _LSTMCell(_RecurrentCell):
    _gates = 4
    _torch_cls = nn.LSTMCell
    _step = staticmethod(lstm_cell)
    _flipout_update = staticmethod(_lstm_flipout_update)

    from_lstm_cell = deprecated_from_torch("from_lstm_cell")

    def _zero_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        zeros = x.new_zeros(x.shape[:-1] + (self.hidden_size,))
        return zeros, zeros.clone()

    def _check_state(self, hx: Any, batch: int, batched: bool) -> tuple[Tensor, Tensor]:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{type(self).__name__} expected hx = (h, c), got {type(hx)}")
        h = self._check_hidden(hx[0], "h", batch, batched)
        return h, self._check_hidden(hx[1], "c", batch, batched)


class _GRUCell(_RecurrentCell):
    _gates = 3
    _torch_cls = nn.GRUCell
    _step = staticmethod(gru_cell)
    _flipout_update = staticmethod(gru_pointwise)

    from_gru_cell = deprecated_from_torch("from_gru_cell")

    def _zero_state(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[:-1] + (self.hidden_size,))

    def _check_state(self, hx: Any, batch: int, batched: bool) -> Tensor:
        return self._check_hidden(hx, "h", batch, batched)


@converts(nn.LSTMCell, "reparameterization")
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

    estimator = REPARAMETERIZATION


@converts(nn.LSTMCell, "flipout")
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

    estimator = FLIPOUT


@converts(nn.GRUCell, "reparameterization")
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

    estimator = REPARAMETERIZATION


@converts(nn.GRUCell, "flipout")
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

    estimator = FLIPOUT
