"""Bayesian ``nn.LSTM``: multi-layer, bidirectional LSTM sequence modules that draw one
weight sample per call (one sequence batch): :class:`LSTMReparameterization` (whole
draws, torch's fused kernel) and :class:`LSTMFlipout` (per-example weights, a Python
loop over the steps).

The estimator is the class attribute ``estimator`` (the strategy objects of
:mod:`bayesian_layers.layers.estimators`); each matrix's draw comes from
:meth:`~bayesian_layers.layers.estimators.Estimator.draw` (whole weights, or Flipout's
posterior mean and perturbation) and its signs from ``layer.noise``; the Flipout
recurrence is :func:`~bayesian_layers.layers.functional.recurrent.flipout_lstm_direction`.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ...initializers import TrainableInitializer
from ...regularizers import Regularizer
from .._util import check_features as _check_features
from .._util import deprecated_from_torch
from ..base import BayesianLayer
from ..estimators import FLIPOUT, REPARAMETERIZATION, Estimator
from ..functional.recurrent import flipout_lstm_direction
from ..registry import converts

__all__ = ["LSTMReparameterization", "LSTMFlipout"]

State = tuple[Tensor, Tensor]


class _BayesianLSTM(BayesianLayer):
    """Parameters (torch's names with ``_loc``/``_rho``), validation and the fused path."""

    estimator: Estimator = REPARAMETERIZATION

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
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
        self.num_layers = _check_features(name, "num_layers", num_layers)
        if proj_size != 0:
            raise ValueError(f"{name} does not support `proj_size` (got {proj_size}); use 0")
        if (
            not isinstance(dropout, numbers.Number)
            or isinstance(dropout, bool)
            or not 0 <= dropout <= 1  # type: ignore[operator]
        ):
            raise ValueError(f"{name} expected `dropout` in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:  # type: ignore[operator]
            warnings.warn(
                f"{name}: dropout acts after all but the last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, got dropout={dropout} and "
                f"num_layers={num_layers}",
                stacklevel=2,
            )
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)  # type: ignore[arg-type]
        self.bidirectional = bool(bidirectional)
        self.proj_size = 0
        directions = 2 if bidirectional else 1
        rows = 4 * hidden_size
        factory: dict[str, Any] = {"fan_in": hidden_size, "device": device, "dtype": dtype}
        self._flat_names: list[str] = []  # torch's order: per layer, per direction
        for layer in range(num_layers):
            cols = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                for kind, shape in (("ih", (rows, cols)), ("hh", (rows, hidden_size))):
                    self.add_param(
                        f"weight_{kind}{sfx}", shape, weight_initializer, weight_regularizer,
                        **factory,
                    )  # fmt: skip
                    self._flat_names.append(f"weight_{kind}{sfx}")
                if self.bias:
                    for kind in ("ih", "hh"):
                        self.add_param(
                            f"bias_{kind}{sfx}", (rows,), bias_initializer, bias_regularizer,
                            **factory,
                        )  # fmt: skip
                        self._flat_names.append(f"bias_{kind}{sfx}")
        for n in self._flat_names:
            if n.startswith("weight"):
                self.estimator.check_posteriors(self, n, None)

    @classmethod
    def from_torch(cls, module: nn.LSTM, **kwargs: Any) -> Any:
        """A Bayesian LSTM whose posterior means start at ``module``'s weights.

        Keyword arguments go to the constructor (initializers, regularizers, ...).

        Raises:
            TypeError: ``module`` is not an ``nn.LSTM``.

        Example:
            >>> from torch import nn
            >>> from bayesian_layers.layers.recurrent import LSTMFlipout
            >>> LSTMFlipout.from_torch(nn.LSTM(3, 8, num_layers=2)).num_layers
            2
        """
        if not isinstance(module, nn.LSTM):
            raise TypeError(f"{cls.__name__}.from_torch expected nn.LSTM, got {type(module)}")
        like = next(module.parameters())
        new = cls(
            module.input_size, module.hidden_size, module.num_layers, module.bias,
            module.batch_first, module.dropout, module.bidirectional, module.proj_size,
            device=like.device, dtype=like.dtype, **kwargs,
        )  # fmt: skip
        new.load_point_estimates({name: getattr(module, name) for name in new._flat_names})
        return new

    from_lstm = deprecated_from_torch("from_lstm")

    def flatten_parameters(self) -> None:
        """No-op, for code written against ``nn.LSTM`` (weights are drawn per call)."""

    def extra_repr(self) -> str:  # as nn.LSTM's: the arguments that differ from defaults
        options = [
            (self.num_layers != 1, f"num_layers={self.num_layers}"),
            (not self.bias, "bias=False"), (self.batch_first, "batch_first=True"),
            (self.dropout, f"dropout={self.dropout}"), (self.bidirectional, "bidirectional=True"),
        ]  # fmt: skip
        return ", ".join(
            [f"{self.input_size}, {self.hidden_size}"] + [s for on, s in options if on]
        )

    # ---------------------------------------------------------------- validation
    def _check_input(self, x: object) -> Tensor:
        name = type(self).__name__
        x = self.check_input(x)  # a Tensor of the parameters' (or autocast's) dtype
        layout = "(B, T, {0}) or (T, {0})" if self.batch_first else "(T, B, {0}) or (T, {0})"
        if x.dim() not in (2, 3) or x.shape[-1] != self.input_size:
            raise ValueError(
                f"{name} expected input of shape {layout.format(self.input_size)}, "
                f"got {tuple(x.shape)}"
            )
        return x

    def _initial_state(self, hx: object, x: Tensor, batch: int, batched: bool) -> State:
        name = type(self).__name__
        stack = self.num_layers * (2 if self.bidirectional else 1)
        if hx is None:
            zeros = x.new_zeros(stack, batch, self.hidden_size)
            return zeros, zeros.clone()
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{name} expected hx = (h_0, c_0), got {type(hx).__name__}")
        expected = (stack, batch, self.hidden_size) if batched else (stack, self.hidden_size)
        out = []
        for what, t in zip(("h_0", "c_0"), hx, strict=True):
            t = self.check_input(t, "hx")
            if tuple(t.shape) != expected:
                raise ValueError(
                    f"{name} expected {what} of shape {expected} for input of shape "
                    f"{tuple(x.shape)}, got {tuple(t.shape)}"
                )
            out.append(t if batched else t.unsqueeze(1))
        return out[0], out[1]

    def _samples(self, batch: int) -> int:
        k = self.num_function_samples
        if k > 1 and batch % k:
            raise ValueError(
                f"{type(self).__name__} is drawing {k} function samples at once and expected a "
                f"batch size that is a multiple of {k} (samples folded into the batch, "
                f"sample-major), got {batch}"
            )
        return k

    # ------------------------------------------------------------------- forward
    def forward(
        self, input: Tensor | PackedSequence, hx: State | None = None
    ) -> tuple[Tensor | PackedSequence, State]:
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        x = self._check_input(input)
        batched = x.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not batched:
            x = x.unsqueeze(batch_dim)
        batch = x.shape[batch_dim]
        h0, c0 = self._initial_state(hx, x, batch, batched)
        k = self._samples(batch)
        if self._per_example():
            out, h, c = self._flipout_forward(x, h0, c0, k)
        else:
            out, h, c = self._fused_forward(x, h0, c0, k, batch_dim)
        if not batched:
            return out.squeeze(batch_dim), (h.squeeze(1), c.squeeze(1))
        return out, (h, c)

    def _per_example(self) -> bool:
        """Flipout's per-example path: sampling mode ``"sample"`` and random weights."""
        return (
            self.estimator is FLIPOUT
            and self.per_example_noise()
            and self.parameter_spec("weight_ih_l0").is_random
        )

    def _flat_weights(self) -> list[Tensor]:
        """Whole draws (``"sample"``/``"frozen"``) or posterior means, in torch's order."""
        if self.sampling == "mean":
            return [self.point(n) for n in self._flat_names]
        return [self.sample_param(n) for n in self._flat_names]

    def _lstm(
        self, x: Tensor, h0: Tensor, c0: Tensor, weights: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        return _VF.lstm(  # (output, h_n, c_n)
            x, (h0, c0), weights, self.bias, self.num_layers, self.dropout, self.training,
            self.bidirectional, self.batch_first,
        )  # fmt: skip

    def _fused_forward(
        self, x: Tensor, h0: Tensor, c0: Tensor, k: int, batch_dim: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        weights = self._flat_weights()
        if k == 1 or self.sampling == "mean":
            return self._lstm(x, h0, c0, weights)
        # K function samples: the batch holds K sample-major blocks, one fused call each.
        names = {n for n, _ in self.named_random_parameters()}
        random = [n in names for n in self._flat_names]
        parts = [
            self._lstm(xs, hs, cs, [w[j] if r else w for w, r in zip(weights, random, strict=True)])
            for j, (xs, hs, cs) in enumerate(
                zip(x.chunk(k, batch_dim), h0.chunk(k, 1), c0.chunk(k, 1), strict=True)
            )
        ]
        out, h, c = zip(*parts, strict=True)
        return torch.cat(out, batch_dim), torch.cat(h, 1), torch.cat(c, 1)

    def _forward_packed(
        self, packed: PackedSequence, hx: State | None
    ) -> tuple[PackedSequence, State]:
        name = type(self).__name__
        if self._per_example():
            raise TypeError(
                f"{name} does not take a PackedSequence in 'sample' mode; pad the batch "
                "or use LSTMReparameterization"
            )
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        self._check_input(data.unsqueeze(0))
        if self._samples(int(batch_sizes[0])) > 1:
            raise ValueError(f"{name} takes no PackedSequence with vectorised samples")
        if hx is None:
            h0, c0 = self._initial_state(None, data, int(batch_sizes[0]), True)
        else:
            h0, c0 = self._initial_state(hx, data, int(batch_sizes[0]), True)
            if sorted_indices is not None:
                h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
        out, h, c = _VF.lstm(
            data, batch_sizes, (h0, c0), self._flat_weights(), self.bias, self.num_layers,
            self.dropout, self.training, self.bidirectional,
        )  # fmt: skip
        if unsorted_indices is not None:
            h, c = h.index_select(1, unsorted_indices), c.index_select(1, unsorted_indices)
        return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), (h, c)

    def _flipout_forward(
        self, x: Tensor, h0: Tensor, c0: Tensor, k: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        xb = x if self.batch_first else x.transpose(0, 1)  # (B, T, I)
        batch = xb.shape[0]
        hidden, directions = self.hidden_size, 2 if self.bidirectional else 1
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                ih, hh = (
                    self.estimator.draw(self, f"weight_{kind}{sfx}",
                                        f"bias_{kind}{sfx}" if self.bias else None)
                    for kind in ("ih", "hh")
                )  # fmt: skip
                s_in_x, s_out_x, s_in_h, s_out_h = (
                    self.noise(f"weight_{kind}{sfx}_sign_{side}", (batch, size), xb, kind="sign")
                    for kind, side, size in (
                        ("ih", "in", xb.shape[-1]), ("ih", "out", 4 * hidden),
                        ("hh", "in", hidden), ("hh", "out", 4 * hidden),
                    )
                )  # fmt: skip
                out, h, c = flipout_lstm_direction(
                    xb, h0[index], c0[index], (ih.weight, ih.delta), (hh.weight, hh.delta),  # type: ignore[arg-type]
                    ih.bias, hh.bias, (s_in_x, s_out_x, s_in_h, s_out_h), k, bool(direction),
                )  # fmt: skip
                outputs.append(out)  # (B, T, H)
                h_n.append(h)
                c_n.append(c)
            xb = outputs[0] if directions == 1 else torch.cat(outputs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                xb = F.dropout(xb, self.dropout, training=True)
        out_seq = xb if self.batch_first else xb.transpose(0, 1)
        return out_seq, torch.stack(h_n), torch.stack(c_n)


@converts(nn.LSTM, "reparameterization")
class LSTMReparameterization(_BayesianLSTM):
    """Multi-layer LSTM with a weight posterior: one whole weight draw per call.

    Drop-in for ``nn.LSTM``: the same arguments, call and return values. Every
    weight matrix is drawn once per call (the call is one batch of sequences, so
    one draw per sequence, shared by the batch and by all time steps), then torch's
    fused LSTM kernel (``torch._VF.lstm``, the one ``nn.LSTM`` calls) runs on the
    draws; the extra cost over ``nn.LSTM`` is the draw, the KL and Adam on twice
    the parameters. Dropout between layers, bidirectional
    layers, ``batch_first`` and ``PackedSequence`` inputs work as in ``nn.LSTM``;
    ``proj_size`` is not supported.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional: as ``nn.LSTM``.
        proj_size: must be 0.
        weight_initializer, bias_initializer, weight_regularizer, bias_regularizer,
            device, dtype: as
            :class:`~bayesian_layers.layers.recurrent.LSTMCellReparameterization`.

    Shape:
        - Input: ``(T, B, input_size)`` (``(B, T, input_size)`` with ``batch_first``)
          or unbatched ``(T, input_size)``; ``hx = (h_0, c_0)`` each
          ``(D·num_layers, B, hidden_size)`` (zeros when omitted), ``D = 2`` if
          bidirectional else 1.
        - Output: ``output`` ``(T, B, D·hidden_size)`` and ``(h_n, c_n)`` shaped as
          ``hx``.

    Attributes:
        weight_ih_l{k}, weight_hh_l{k} (``_reverse`` for the backward direction):
            :class:`~bayesian_layers.RandomVariable` weights (posterior, latest draw),
            trainable as ``weight_ih_l{k}_loc``, ``weight_ih_l{k}_rho``, ...
        bias_ih_l{k}, bias_hh_l{k}: deterministic biases by default.
        losses: one KL term per weight matrix.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.recurrent import LSTMReparameterization
        >>> lstm = LSTMReparameterization(3, 8, num_layers=2, batch_first=True)
        >>> out, (h, c) = lstm(torch.randn(4, 10, 3))
        >>> out.shape, h.shape, len(lstm.losses)
        (torch.Size([4, 10, 8]), torch.Size([2, 4, 8]), 4)
    """

    estimator = REPARAMETERIZATION


@converts(nn.LSTM, "flipout")
class LSTMFlipout(_BayesianLSTM):
    """Multi-layer LSTM with the Flipout estimator: per-example weights, fixed per sequence.

    Same constructor, call and shapes as :class:`LSTMReparameterization` (weight
    posteriors normal). Each call draws one perturbation ``Δ = σ ∘ ε`` per weight
    matrix and random signs per example, so every sequence in the batch runs with
    its own pseudo-independent weights for all its steps. No fused kernel takes
    per-example weights, so it loops over time steps in Python (two matmuls per
    step; the input projections of all steps are batched): a training step takes
    about 3x ``nn.LSTM``'s on CPU (input 64, hidden 256, 50 steps, batch 64, 2
    threads; bayesian-torch's ``LSTMFlipout``: 8.1x). A random bias gets one draw
    per call.
    In ``"mean"`` and ``"frozen"`` modes it runs the fused kernel like
    :class:`LSTMReparameterization`; ``PackedSequence`` inputs only there.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.recurrent import LSTMFlipout
        >>> out, (h, c) = LSTMFlipout(3, 8, bidirectional=True)(torch.randn(10, 4, 3))
        >>> out.shape, h.shape
        (torch.Size([10, 4, 16]), torch.Size([2, 4, 8]))
    """

    estimator = FLIPOUT
