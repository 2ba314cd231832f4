"""Pure functions for the recurrent estimators: all noise and signs are passed in.

These hold the math of each cell step so that ``gradcheck`` can test it; the
modules in :mod:`bayesian_layers.layers.recurrent.cells` and
:mod:`bayesian_layers.layers.recurrent` hold parameters and draw noise. Gate
order and equations are torch's (``nn.LSTMCell``: ``i, f, g, o``; ``nn.GRUCell``:
``r, z, n``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import flipout_project
from .linear import add_sample_bias, batched_linear

__all__ = [
    "flipout_matmul",
    "lstm_pointwise",
    "gru_pointwise",
    "lstm_cell",
    "gru_cell",
    "flipout_lstm_direction",
]


def flipout_matmul(
    x: Tensor,
    loc: Tensor,
    delta: Tensor,
    sign_in: Tensor,
    sign_out: Tensor,
    bias: Tensor | None,
    num_samples: int = 1,
) -> Tensor:
    """Flipout product ``x μᵀ + ((x ∘ s_in) Δᵀ) ∘ s_out + b`` with ``Δ = σ ∘ ε``.

    Shape:
        x, sign_in: ``(N, *, in)`` (signs broadcast); loc: ``(out, in)``; delta:
        ``(out, in)`` or ``(K, out, in)`` with ``N = K * B`` sample-major; sign_out:
        broadcastable to ``(N, *, out)``; bias: ``(out,)``, ``(K, out)`` or None.
    """
    # (sign_out.to: under autocast the matmuls run in lower precision; keep their dtype)
    if num_samples == 1:
        return flipout_project(x, loc, delta, bias, sign_in, sign_out)
    perturbation = batched_linear(x * sign_in, delta, None, num_samples)
    mean = add_sample_bias(F.linear(x, loc), bias, num_samples)
    return torch.addcmul(mean, perturbation, sign_out.to(mean.dtype))


def lstm_pointwise(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM state update from pre-activations ``gates = [i, f, g, o]`` (torch's order).

    Shape: gates ``(*, 4H)``; c ``(*, H)``; returns ``(h, c)`` each ``(*, H)``.
    """
    i, f, g, o = gates.chunk(4, -1)
    c = torch.addcmul(f.sigmoid() * c, i.sigmoid(), g.tanh())
    return o.sigmoid() * c.tanh(), c


def gru_pointwise(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """GRU update (torch's convention) from ``gi = x W_ihᵀ + b_ih``, ``gh = h W_hhᵀ + b_hh``.

    Shape: gi, gh ``(*, 3H)`` ordered ``[r, z, n]``; h ``(*, H)``; returns ``(*, H)``.
    """
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r, z = (i_r + h_r).sigmoid(), (i_z + h_z).sigmoid()
    n = torch.addcmul(i_n, r, h_n).tanh()
    # (1 - z) n + z h; autocast: gates may be lower precision than the state (lerp won't mix)
    return torch.lerp(n.to(h.dtype), h, z.to(h.dtype))


def _matmul(x: Tensor, w: Tensor, b: Tensor | None, num_samples: int) -> Tensor:
    return F.linear(x, w, b) if num_samples == 1 else batched_linear(x, w, b, num_samples)


def lstm_cell(
    x: Tensor, state: tuple[Tensor, Tensor], weights: tuple, num_samples: int = 1
) -> tuple[Tensor, Tensor]:
    """One LSTM step with whole weights ``(w_ih, w_hh, b_ih, b_hh)`` (biases may be None).

    ``num_samples = K > 1``: weights carry a leading K and rows of ``x`` are K
    sample-major blocks. Shape: x ``(N, I)``; state ``(N, H)`` each.
    """
    w_ih, w_hh, b_ih, b_hh = weights
    if num_samples == 1:
        return torch.lstm_cell(x, state, w_ih, w_hh, b_ih, b_hh)  # type: ignore[return-value]
    h, c = state
    gates = _matmul(x, w_ih, b_ih, num_samples) + _matmul(h, w_hh, b_hh, num_samples)
    return lstm_pointwise(gates, c)


def gru_cell(x: Tensor, h: Tensor, weights: tuple, num_samples: int = 1) -> Tensor:
    """One GRU step with whole weights; see :func:`lstm_cell`."""
    w_ih, w_hh, b_ih, b_hh = weights
    if num_samples == 1:
        return torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    return gru_pointwise(
        _matmul(x, w_ih, b_ih, num_samples), _matmul(h, w_hh, b_hh, num_samples), h
    )


def flipout_lstm_direction(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    ih: tuple[Tensor, Tensor],
    hh: tuple[Tensor, Tensor],
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    signs: tuple[Tensor, Tensor, Tensor, Tensor],
    num_samples: int = 1,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one LSTM layer with Flipout weights fixed along the sequence.

    The input projections of all steps in two matmuls, then the recurrence step by
    step (two matmuls per step); example ``b`` runs with the weights
    ``μ + Δ ∘ (s_out,b s_in,bᵀ)`` at every step. Under autocast the recurrence runs
    in the matmuls' dtype, as torch's fused LSTM.

    Args:
        x: the inputs of all steps.
        h, c: the initial state.
        ih, hh: ``(μ, Δ)`` of the input and recurrent weights.
        bias_ih, bias_hh: the biases (``(4H,)``, ``(K, 4H)``) or None.
        signs: ``(s_in_x, s_out_x, s_in_h, s_out_h)``, one row per example.
        num_samples: K function samples folded into the batch, sample-major.
        reverse: run from the last step to the first (the backward direction).

    Shape:
        x: ``(B, T, I)``; h, c: ``(B, H)``; μ, Δ: ``(4H, I)`` / ``(4H, H)`` (Δ with a
        leading K when vectorised); signs ``(B, I)``, ``(B, 4H)``, ``(B, H)``,
        ``(B, 4H)``; returns the outputs ``(B, T, H)`` and the last ``h``, ``c``.
    """
    s_in_x, s_out_x, s_in_h, s_out_h = signs
    gx = flipout_matmul(x, *ih, s_in_x[:, None], s_out_x[:, None], bias_ih, num_samples)
    steps = gx.unbind(1)  # one backward node (indexing gx[:, t] would make T): (B, 4H) each
    # the signs (±1, exact in any dtype) are cast once, not at every step
    h, c = h.to(gx.dtype), c.to(gx.dtype)
    s_in_h, s_out_h = s_in_h.to(gx.dtype), s_out_h.to(gx.dtype)
    out: list[Tensor] = [h] * len(steps)
    for t in range(len(steps) - 1, -1, -1) if reverse else range(len(steps)):
        gates = steps[t] + flipout_matmul(h, *hh, s_in_h, s_out_h, bias_hh, num_samples)
        h, c = lstm_pointwise(gates, c)
        out[t] = h
    return torch.stack(out, 1), h, c
